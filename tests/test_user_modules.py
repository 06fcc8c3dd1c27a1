"""Certificates on models users build: every module either has an exact rule or is refused by
name, and what is certified holds for the exact equilibrium and for the model as it runs.

Each case is one a QA probe found certified wrongly (issue #39): padding modes, pooling options,
in-place ReLUs, subclasses and hooks, an unconverged MON solve, thin margins of the model as it
runs. The fuzz at the end builds random encoders from all of these.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import mnist_dir, requires_mnist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nemon
from nemon.data import load_dataset
from nemon.explicit import (
    ModuleRule,
    UnsupportedModule,
    linf_lipschitz,
    propagate_interval,
    register_rule,
    rule_for,
)
from nemon.linear_bounds import encoder_linear_bounds, supports_linear_bounds

DT = torch.float64


def classifier(encoder: nn.Module, shape=(1, 6, 6), hidden=6, seed=0, **layer) -> nemon.Classifier:
    """A float64 model around ``encoder``, its solves tight."""
    torch.manual_seed(seed)
    encoder = encoder.double()
    with torch.no_grad():
        features = encoder.eval()(torch.zeros(1, *shape, dtype=DT)).flatten(1).shape[1]
    settings = dict(gamma=0.5, tol=1e-12, max_iter=5000, error_tol=1e-9) | layer
    dense = nemon.NEMONDense(features, hidden, **settings)
    model = nemon.Classifier(dense, 3, encoder=encoder, input_shape=shape).double().eval()
    with torch.no_grad():
        model.readout.weight.mul_(4.0)
    return model


def corners_and_samples(u: torch.Tensor, eps: float, count: int, seed: int = 0):
    """Both corners ``u -+ eps`` and random vertices and interior points of the ball."""
    g = torch.Generator().manual_seed(seed)
    yield u - eps
    yield u + eps
    for i in range(count):
        noise = torch.rand(u.shape, generator=g, dtype=u.dtype) * 2 - 1
        yield u + eps * (torch.sign(noise) if i % 2 else noise)


def assert_box_holds(module: nn.Module, u: torch.Tensor, eps: float, count: int = 30) -> None:
    lo, hi = propagate_interval(module, u - eps, u + eps)
    L = float(linf_lipschitz(module))
    with torch.no_grad():
        centre = module(u.clone())
        for v in corners_and_samples(u, eps, count):
            out = module(v.clone())
            assert torch.all(out >= lo - 1e-12) and torch.all(out <= hi + 1e-12)
            moved = float((out - centre).flatten(1).abs().amax())
            assert moved <= L * eps * (1 + 1e-9) + 1e-12


def assert_sound(model: nemon.Classifier, u, labels, eps: float, method: str, count: int = 40):
    """No certified input is misclassified at a corner or a sampled point of its ball."""
    certified = nemon.certify(model, u, labels, eps, method, input_range=None)
    with torch.no_grad():
        for v in corners_and_samples(u, eps, count):
            wrong = model(v).argmax(1) != labels
            assert not bool((certified & wrong).any()), method
    return certified


def points(shape=(1, 6, 6), batch=12, seed=3) -> torch.Tensor:
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def labelled(model, u):
    with torch.no_grad():
        return model(u).argmax(1)


# -- 1. padding modes ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "replicate"])
def test_conv_padding_modes_have_exact_boxes(mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode=mode).double()
    u = points((2, 5, 5), batch=4)
    assert_box_holds(conv, u, 0.3)
    lo, hi = propagate_interval(conv, u - 0.3, u + 0.3)
    with torch.no_grad():  # the corner u - eps: its border copies must be charged the radius
        signs = torch.sign(conv.weight)
        worst = conv(u - 0.3 * signs.new_ones(u.shape))
    assert torch.all(worst >= lo - 1e-12)


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate"])
def test_padding_modes_certify_only_what_holds(mode):
    encoder = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, padding_mode=mode), nn.ReLU(), nn.Flatten()
    )
    model = classifier(encoder)
    u = points()
    for method in ("interval", "linear", "pairwise"):
        assert_sound(model, u, labelled(model, u), 0.3, method)


# -- 2. pooling options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "pool",
    [
        nn.AvgPool2d(2, divisor_override=1),
        nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        nn.AvgPool2d(2, divisor_override=3),
        nn.MaxPool2d(3, stride=1, padding=1, dilation=2),
        nn.MaxPool2d(2, ceil_mode=True),
    ],
    ids=["avg-sum", "avg-ceil", "avg-div3", "max-dilated", "max-ceil"],
)
def test_pooling_options_have_exact_boxes_and_lipschitz_constants(pool):
    assert_box_holds(pool, points((2, 7, 7), batch=4), 0.2)


def test_a_scaled_sum_pool_is_not_one_lipschitz():
    pool = nn.AvgPool2d(2, divisor_override=1)  # the sum of 4 inputs
    assert float(linf_lipschitz(pool)) == 4.0
    encoder = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), pool, nn.Flatten())
    model = classifier(encoder)
    assert float(linf_lipschitz(encoder)) == pytest.approx(
        4 * float(encoder[0].weight.abs().sum(dim=(1, 2, 3)).amax())
    )
    u = points()
    for method in ("interval", "linear", "pairwise", "lipschitz"):
        assert_sound(model, u, labelled(model, u), 0.2, method)


def test_max_pool_returning_indices_is_refused_by_name():
    with pytest.raises(UnsupportedModule, match="return_indices"):
        rule_for(nn.MaxPool2d(2, return_indices=True))


# -- 3. in-place ReLUs -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["interval", "linear"])
def test_in_place_relus_give_the_same_bounds(method):
    def encoder(inplace):
        torch.manual_seed(5)
        return nn.Sequential(
            nn.ReLU(inplace=inplace),  # first: it must not change the caller's input either
            nn.Conv2d(1, 4, 3, stride=2, padding=1),
            nn.ReLU(inplace=inplace),
            nn.Flatten(),
            nn.Linear(36, 10),
            nn.ReLU(inplace=inplace),
        )

    plain, inplace = classifier(encoder(False)), classifier(encoder(True))
    u = points() * 2 - 1
    kept = u.clone()
    labels = labelled(plain, u)
    a = nemon.margin_bounds(plain, u, labels, 0.1, method, input_range=None)[1]
    b = nemon.margin_bounds(inplace, u, labels, 0.1, method, input_range=None)[1]
    assert torch.equal(a, b) and torch.equal(u, kept)
    lo, hi = u - 0.1, u + 0.1
    spec = torch.eye(10, dtype=DT)
    before = encoder_linear_bounds(plain.encoder, lo, hi, spec)
    after = encoder_linear_bounds(inplace.encoder, lo, hi, spec)
    assert all(torch.equal(x, y) for x, y in zip(before, after))


# -- 4. subclasses and hooks -----------------------------------------------------------------


class Residual(nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return 3 * super().forward(x)


def _encoders_that_rules_do_not_describe():
    hooked = nn.Conv2d(1, 2, 3, padding=1)
    hooked.register_forward_hook(lambda m, i, o: 2 * o)
    pre = nn.Conv2d(1, 2, 3, padding=1)
    pre.register_forward_pre_hook(lambda m, i: (i[0] * 5,))
    patched = nn.Conv2d(1, 2, 3, padding=1)
    patched.forward = lambda x: 7 * nn.Conv2d.forward(patched, x)
    return {
        "sequential subclass": (
            nn.Sequential(Residual(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU()), nn.Flatten()),
            "Residual is a subclass of Sequential",
        ),
        "linear subclass": (
            nn.Sequential(nn.Flatten(), ScaledLinear(36, 8)),
            "ScaledLinear is a subclass of Linear",
        ),
        "forward hook": (nn.Sequential(hooked, nn.Flatten()), "forward hooks"),
        "forward pre-hook": (nn.Sequential(pre, nn.Flatten()), "forward hooks"),
        "patched forward": (nn.Sequential(patched, nn.Flatten()), "forward replaced"),
    }


@pytest.mark.parametrize("case", sorted(_encoders_that_rules_do_not_describe()))
def test_subclasses_and_hooks_are_refused_by_name(case):
    encoder, message = _encoders_that_rules_do_not_describe()[case]
    model = classifier(encoder)
    u = points(batch=2)
    for method in ("interval", "linear", "pairwise", "lipschitz"):
        with pytest.raises(UnsupportedModule, match=message):
            nemon.certify(model, u, labelled(model, u), 0.1, method, input_range=None)
    with pytest.raises(UnsupportedModule, match=message):
        model.lipschitz_bound()


def test_global_hooks_and_classifier_subclasses_are_refused():
    model = classifier(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten()))
    u = points(batch=2)
    labels = labelled(model, u)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    try:
        with pytest.raises(UnsupportedModule, match="global forward hooks"):
            nemon.certify(model, u, labels, 0.1)
    finally:
        handle.remove()
    model.readout.register_forward_hook(lambda m, i, o: -o)
    with pytest.raises(UnsupportedModule, match="forward hooks"):
        nemon.certify(model, u, labels, 0.1)

    class Mine(nemon.Classifier):
        pass

    mine = Mine(model.layer, 3, encoder=model.encoder, input_shape=(1, 6, 6)).double()
    with pytest.raises(UnsupportedModule, match="Mine is a subclass of Classifier"):
        nemon.certify(mine, u, labels, 0.1)


class Shift(nn.Module):
    """A user module: ``x + offset``."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return x + self.offset


class ShiftRule(ModuleRule):
    types = (Shift,)
    has_linear = True
    verify_kind = "affine"  # nemon.verify reads its matrix off evaluate

    def evaluate(self, m, x):
        return x + m.offset

    def interval(self, m, lo, hi):
        return lo + m.offset, hi + m.offset

    def lipschitz(self, m):
        return torch.ones(())

    def linear(self, m, lam, lo, hi):
        return lam, (lam * m.offset).flatten(2).sum(2)

    def onnx(self, m, x, graph):
        return graph.node("Add", [x, graph.const("offset", torch.tensor(m.offset))])


class WrongShiftRule(ShiftRule):
    def evaluate(self, m, x):
        return x - m.offset


def _exports_as_it_runs(model, u, path):
    """The model exported to ONNX computes its logits (the registered rule's node included)."""
    ort = pytest.importorskip("onnxruntime")
    single = copy.deepcopy(model).float()  # onnxruntime's CPU convolutions are float32
    nemon.export_onnx(single, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"u": u.float().numpy()})[0]
    with torch.no_grad():
        assert np.allclose(logits, single(u.float()).numpy(), atol=1e-4)


@pytest.mark.slow
def test_a_registered_rule_certifies_exports_and_a_wrong_one_is_caught_at_the_centre(tmp_path):
    encoder = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Shift(0.25), nn.ReLU(), nn.Flatten())
    model = classifier(encoder)
    u = points()
    labels = labelled(model, u)
    with pytest.raises(UnsupportedModule, match="Shift is not supported"):
        nemon.certify(model, u, labels, 0.1)
    try:
        register_rule(ShiftRule())
        assert supports_linear_bounds(model)
        for method in ("interval", "linear"):
            assert bool(assert_sound(model, u, labels, 0.05, method).any())
        linear = nemon.certify(model, u, labels, 0.05, "linear")
        result = nemon.verify(model, u, labels, 0.05, time_limit=20)
        assert bool((result.certified | ~linear).all()) and not bool(result.unknown.any())
        with torch.no_grad():
            rows = result.falsified.nonzero().flatten()
            assert bool((model(result.counterexamples[rows]).argmax(1) != labels[rows]).all())
        _exports_as_it_runs(model, u, tmp_path / "shift.onnx")
        register_rule(type("NoVerify", (ShiftRule,), {"verify_kind": None})())
        with pytest.raises(UnsupportedModule, match="verify cannot encode Shift"):
            nemon.verify(model, u, labels, 0.05)
        register_rule(WrongShiftRule())
        with pytest.raises(UnsupportedModule, match=r"encoder\.1 \(Shift\): its forward differs"):
            nemon.certify(model, u, labels, 0.05)
    finally:
        from nemon import explicit

        explicit._REGISTRY.pop(Shift, None)


# -- 5. MON: an unconverged solve certifies nothing it should not ----------------------------


def test_an_unconverged_mon_solve_is_charged_its_error():
    torch.manual_seed(0)
    layer = nemon.MONDense(4, 8, gamma=0.5, solver="forward_backward")
    layer.set_splitting_step(1e-4)
    model = nemon.Classifier(layer, 3).eval()
    u = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    exact = nemon.Classifier(nemon.MONDense(4, 8, gamma=0.5), 3).double().eval()
    exact.load_state_dict(model.state_dict())
    exact.layer.solver_options = exact.layer.solver_options.__class__(
        method="peaceman_rachford", tol=1e-13, max_iter=20000, residual="fixed_point"
    )
    with torch.no_grad():
        truth = exact(u.double()).argmax(1)
    for shift in (1, 2):  # every class the exact equilibrium rejects
        with pytest.warns(nemon.solvers.ConvergenceWarning):
            certified = nemon.certify(
                model, u, (truth + shift) % 3, 0.0, "pairwise", input_range=None
            )
        assert not bool(certified.any())


@pytest.mark.parametrize("solver", ["forward_backward", "peaceman_rachford"])
def test_mon_error_bound_holds_at_every_accuracy(solver):
    torch.manual_seed(2)
    layer = nemon.MONDense(5, 7, gamma=0.6, solver=solver).double().eval()
    u = torch.randn(6, 5, dtype=DT)
    with layer.solver_settings(tol=1e-14, max_iter=50000, residual="fixed_point"):
        x_star = layer(u)
    for max_iter in (3, 10, 40):
        with layer.solver_settings(max_iter=max_iter, tol=1e-14, warn=False):
            solution = layer.solve(u)
        distance = (solution.x - x_star).norm(dim=1)
        assert torch.all(distance <= solution.error_bound * (1 + 1e-9))
        assert torch.all(solution.error_bound <= 50 * distance + 1e-12)  # not vacuous


def test_mon_in_training_mode_has_no_bound_and_certifies_nothing():
    torch.manual_seed(0)
    layer = nemon.MONDense(4, 6, gamma=0.5).train()
    assert layer.solve(torch.randn(3, 4)).error_bound is None
    assert layer.eval().solve(torch.randn(3, 4)).error_bound is not None


# -- 6. the model as it runs -----------------------------------------------------------------


def test_eval_mode_stops_on_the_error_bound_for_every_sample():
    torch.manual_seed(0)
    layer = nemon.NEMONDense(20, 30, gamma=0.95, error_tol=1e-5).double()
    with torch.no_grad():
        layer.B.weight.mul_(5)
    u = torch.randn(16, 20, dtype=DT)
    with layer.solver_settings(tol=1e-14, max_iter=20000, residual="fixed_point"):
        x_star = layer.eval().solve(u).x
    trained = layer.train().solve(u)
    running = layer.eval().solve(u)
    distance = (running.x - x_star).abs().amax(1)
    assert running.stats.converged
    assert torch.all(running.error_bound <= 1e-5) and torch.all(distance <= 1e-5)
    assert trained.stats.iterations < running.stats.iterations
    assert float(trained.error_bound.amax()) > 1e-5  # the training rule alone would not do


def test_certificates_charge_the_distance_of_the_model_as_it_runs():
    """Scalar model (tests/test_exact.py): margin ``1 - 2 x*``, ``x* = 2 u``, pair readout
    norm 2, so a stated running error ``e`` costs exactly ``2 e / 4`` of the radius."""
    from test_exact import exact_radius, scalar_classifier

    u, labels = torch.tensor([[0.1]], dtype=DT), torch.zeros(1, dtype=torch.long)
    r = float(exact_radius(u.squeeze(1)))
    model = scalar_classifier(error_tol=1e-3)
    cost = 2 * 1e-3 / 4
    assert not bool(
        nemon.certify(model, u, labels, r - cost * (1 - 1e-3), "interval", input_range=None)
    )
    assert bool(
        nemon.certify(model, u, labels, r - cost * (1 + 1e-3), "interval", input_range=None)
    )
    model.layer.error_tol = None
    with pytest.warns(nemon.CertificateWarning, match="error_tol=None"):
        assert not bool(nemon.certify(model, u, labels, 0.0, "interval", input_range=None))


def test_one_huge_sample_does_not_cost_the_others_their_certificates():
    torch.manual_seed(0)
    model = nemon.Classifier(nemon.NEMONDense(6, 10, gamma=0.9), 3).eval()
    u = torch.randn(32, 6)
    labels = labelled(model, u)
    alone = nemon.certify(model, u, labels, 0.01, "interval", input_range=None)
    outlier = torch.cat([u, 1e30 * torch.ones(1, 6)])
    both = torch.cat([labels, labels[:1]])
    together = nemon.certify(model, outlier, both, 0.01, "interval", input_range=None)
    assert bool(alone.any()) and torch.equal(together[:32], alone)
    bounds = nemon.margin_bounds(model, u, labels, 0.01, "interval", input_range=None)[1]
    bounds_together = nemon.margin_bounds(model, outlier, both, 0.01, "interval", input_range=None)[
        1
    ]
    torch.testing.assert_close(bounds_together[:32], bounds, atol=1e-8, rtol=0)


def test_a_step_above_alpha_star_keeps_the_error_bound():
    torch.manual_seed(4)
    layer = nemon.NEMONDense(6, 12, gamma=0.9).double().eval()
    with torch.no_grad():
        layer.A = layer.A - 3 * torch.eye(12, dtype=DT)  # strong negative diagonal: small alpha*
    u = torch.randn(5, 6, dtype=DT)
    with layer.solver_settings(tol=1e-14, max_iter=20000, residual="fixed_point"):
        x_star = layer.solve(u).x
    alpha = 10 * nemon.solvers.alpha_star(torch.diagonal(layer.A))
    for max_iter in (4, 8, 12, 16):
        method = nemon.solvers.Averaged(alpha=alpha)
        with layer.solver_settings(method=method, max_iter=max_iter, warn=False):
            solution = layer.solve(u)
        distance = (solution.x - x_star).abs().amax(1)
        assert torch.all(distance <= solution.error_bound * (1 + 1e-9) + 1e-15)


# -- fuzz: random encoders -------------------------------------------------------------------


def _module(draw, channels: int, size: int):
    """One random module on ``(channels, size, size)`` images and its output shape."""
    kind = draw(st.sampled_from(["conv", "relu", "avg", "max", "bn", "hooked", "subclass"]))
    if kind == "conv":
        out = draw(st.integers(1, 3))
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0 and out % g == 0]))
        k = draw(st.integers(1, 3))
        dilation = draw(st.integers(1, 2))
        mode = draw(st.sampled_from(["zeros", "circular", "reflect", "replicate"]))
        pad = draw(st.integers(0, min(1, size - 1) if mode != "zeros" else 1))
        m = nn.Conv2d(channels, out, k, draw(st.integers(1, 2)), pad, dilation, groups,
                      padding_mode=mode)  # fmt: skip
    elif kind == "relu":
        m = nn.ReLU(inplace=draw(st.booleans()))
    elif kind == "avg":
        k = draw(st.integers(1, 2))
        m = nn.AvgPool2d(k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2)),
                         draw(st.booleans()), draw(st.booleans()),
                         draw(st.sampled_from([None, 1, 2, 5])))  # fmt: skip
    elif kind == "max":
        k = draw(st.integers(1, 2))
        m = nn.MaxPool2d(k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2)),
                         draw(st.integers(1, 2)), ceil_mode=draw(st.booleans()))  # fmt: skip
    elif kind == "bn":
        m = nn.BatchNorm2d(channels).eval()
        with torch.no_grad():
            m.running_mean.normal_()
            m.running_var.uniform_(0.2, 2)
            m.weight.normal_()
    elif kind == "hooked":
        m = nn.ReLU()
        m.register_forward_hook(lambda mod, i, o: o + 1)
    else:
        m = Residual(nn.Conv2d(channels, channels, 3, padding=1))
    with torch.no_grad():
        shape = m.double()(torch.zeros(1, channels, size, size, dtype=DT)).shape
    return m, kind in ("hooked", "subclass"), shape[1], shape[2]


@st.composite
def encoders(draw):
    channels, size, modules, refused = 2, 6, [], False
    for _ in range(draw(st.integers(1, 4))):
        try:
            m, bad, c, s = _module(draw, channels, size)
        except RuntimeError:  # an output smaller than the kernel: skip the module
            continue
        if s < 1:
            continue
        modules.append(m)
        refused |= bad
        channels, size = c, s
    return nn.Sequential(*modules, nn.Flatten()), refused


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(encoders(), st.sampled_from(["interval", "linear"]), st.floats(0.01, 0.3))
def test_random_encoders_are_certified_soundly_or_refused(made, method, eps):
    encoder, refused = made
    model = classifier(encoder, shape=(2, 6, 6), hidden=5)
    u = points((2, 6, 6), batch=6)
    labels = labelled(model, u)
    if refused:
        with pytest.raises(UnsupportedModule):
            nemon.certify(model, u, labels, eps, method, input_range=None)
        return
    assert_box_holds(model.encoder, u, eps, count=10)
    certified = assert_sound(model, u, labels, eps, method, count=20)
    assert math.isfinite(float(model.lipschitz_bound()))
    assert certified.dtype == torch.bool


def test_conv_weights_that_would_overflow_are_refused():
    layer = nemon.NEMONConv2d(1, 2, 4, learn_eta=True)
    with torch.no_grad():
        layer.log_eta.copy_(torch.tensor([-23.0, 23.0]))  # eta_1 / eta_0 = e^46 > float32's max
    with pytest.raises(ValueError, match="weights eta"):
        layer(torch.rand(2, 1, 4, 4))


@requires_mnist
def test_a_shipped_model_as_it_runs_is_within_the_distance_certificates_charge():
    """The float32 model in eval mode against its float64 equilibrium solved tightly: every
    logit difference within what `certify` subtracts for the model as it runs."""
    from nemon.certificates import _running_charge

    model = nemon.load_pretrained("mnist-cert-0.1").eval()
    data = load_dataset("mnist", mnist_dir())
    u, y = data.test_x[:300], data.test_y[:300]
    exact = copy.deepcopy(model).double()
    exact.layer.solver_options = replace(
        exact.layer.solver_options, tol=1e-12, residual="fixed_point", max_iter=5000
    )
    with torch.no_grad():
        running, truth = model(u).double(), exact(u.double())
    gap = (running.gather(1, y[:, None]) - running) - (truth.gather(1, y[:, None]) - truth)
    charge = _running_charge(exact, y)
    assert torch.all(gap.abs() <= charge)
    assert float(charge.amax()) < 0.02  # and the charge is small beside certified margins
