"""Explicit encoders: interval arithmetic contains every output, Lipschitz bounds are never
exceeded, and whole models (encoder + implicit layer) certify soundly."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nemon
from nemon.explicit import (
    MEDIUM,
    BatchNorm2d,
    Normalize,
    conv_stack,
    linf_lipschitz,
    propagate_interval,
)
from nemon.models import build_model

DT = torch.float64


def encoder(seed=0):
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    net = nn.Sequential(
        Normalize([0.5], [0.3]),
        nn.Conv2d(1, 4, 3, stride=2, padding=1),
        bn,
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 3, 2),
        nn.MaxPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 5),
    )
    return net.double().eval()


def test_interval_contains_sampled_outputs_and_vertices():
    net = encoder()
    g = torch.Generator().manual_seed(1)
    u, eps = torch.rand(3, 1, 8, 8, generator=g, dtype=DT), 0.05
    lo, hi = propagate_interval(net, u - eps, u + eps)
    with torch.no_grad():
        for _ in range(50):
            v = u + eps * torch.sign(torch.randn(u.shape, generator=g, dtype=DT))
            out = net(v)
            assert torch.all(out >= lo - 1e-12) and torch.all(out <= hi + 1e-12)
    assert torch.all(hi - lo > 0)


def test_degenerate_box_is_the_output():
    net = encoder()
    u = torch.rand(2, 1, 8, 8, dtype=DT)
    lo, hi = propagate_interval(net, u, u)
    assert torch.allclose(lo, net(u)) and torch.allclose(hi, net(u))


def test_lipschitz_bound_never_exceeded():
    net = encoder(2)
    L = float(linf_lipschitz(net))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(30):
            u = torch.rand(1, 1, 8, 8, generator=g, dtype=DT)
            du = 1e-3 * torch.sign(torch.randn(u.shape, generator=g, dtype=DT))
            assert float((net(u + du) - net(u)).abs().max()) <= L * 1e-3 * (1 + 1e-9)


def test_unsupported_module_is_refused_by_name():
    with pytest.raises(NotImplementedError, match="Tanh"):
        propagate_interval(nn.Tanh(), torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="clean batch.*eval mode"):
        propagate_interval(nn.BatchNorm2d(1), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))


def test_batch_norm_bounds_use_the_clean_batch_statistics_in_training():
    """Training mode: the interval pass normalises with the last clean batch's statistics (a
    degenerate box at that batch is the training-mode output, which running statistics are not);
    eval mode: the running statistics. Running statistics are not moved by the interval pass."""
    torch.manual_seed(0)
    bn = BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    x = 2 + 3 * torch.randn(8, 3, 5, 5, dtype=DT)
    out = bn(x)  # training mode: batch statistics, running ones move towards them
    running = bn.running_mean.clone(), bn.running_var.clone()
    lo, hi = propagate_interval(bn, x, x)
    assert torch.allclose(lo, out) and torch.allclose(hi, out)
    g = torch.Generator().manual_seed(1)
    lo, hi = propagate_interval(bn, x - 0.1, x + 0.1)
    for _ in range(20):
        v = x + 0.1 * torch.sign(torch.randn(x.shape, generator=g, dtype=DT))
        y = F.batch_norm(v, *bn.batch_stats, bn.weight, bn.bias, False, 0.0, bn.eps)
        assert torch.all(y >= lo - 1e-12) and torch.all(y <= hi + 1e-12)
    assert torch.equal(bn.running_mean, running[0]) and torch.equal(bn.running_var, running[1])
    bn.eval()
    lo, hi = propagate_interval(bn, x, x)
    assert torch.allclose(lo, bn(x)) and not torch.allclose(lo, out, atol=1e-3)


def test_batch_norm_bounds_are_invariant_to_the_scale_of_the_convolution_before_it():
    """conv -> batch norm is invariant to scaling the conv weight (no bias), and so must its
    training-mode bounds be: their gradient is orthogonal to the weight. Detached statistics
    would break this and let the robust loss shrink the weight."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), BatchNorm2d(3, eps=1e-12)).double()
    x = torch.rand(6, 2, 6, 6, dtype=DT)
    net(x)
    lo, hi = propagate_interval(net, x - 0.05, x + 0.05)
    w = net[0].weight
    (grad,) = torch.autograd.grad((hi - lo).sum() + (hi**2).sum(), w)
    w = w.detach()
    assert abs(float((grad * w).sum())) < 1e-8 * float(grad.norm() * w.norm())


def test_certify_refuses_a_batch_norm_in_training_mode():
    torch.manual_seed(0)
    model = nemon.build_model("nemon", "conv-small-bn", hidden=10, gamma=0.5)
    u, labels = torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
    model(u)
    with pytest.raises(ValueError, match="eval mode"):
        nemon.certify(model, u, labels, 0.01, method="interval")
    assert nemon.certify(model.eval(), u, labels, 0.01, method="interval").shape == (4,)


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, arch",
    [("nemon", "conv-small"), ("idl", "conv-small"), ("explicit", "conv-small"),
     ("nemon", "conv-small-bn"), ("nemon", "conv-medium")],
)  # fmt: skip
def test_encoder_models_certify_soundly(family, arch):
    from test_lipschitz import pgd_breaks

    torch.manual_seed(0)
    # the deeper encoder shrinks logits under the default initialisation: nothing would
    # certify and the test would check nothing; as trained, with Shi et al.'s
    ibp = arch == "conv-medium"
    model = nemon.build_model(family, arch, hidden=20, gamma=0.5, ibp_init=ibp).double()
    if arch.endswith("-bn"):  # running statistics away from the defaults
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.rand(50, 1, 28, 28, dtype=DT))
        model.eval()
    model.layer.solver_options = replace(model.layer.solver_options, tol=1e-10)
    u = torch.rand(40, 1, 28, 28, dtype=DT)
    with torch.no_grad():
        labels = model(u).argmax(1)
    for eps in (0.001, 0.01, 0.05):
        broken = pgd_breaks(model, u, labels, eps, steps=20)
        for method in nemon.certificates.CERTIFICATES:
            ok = nemon.certify(model, u, labels, eps, method=method)
            assert not torch.any(ok & broken), (eps, method)
    ok = nemon.certify(model, u, labels, 1e-5, method="interval")
    pair = nemon.certify(model, u, labels, 1e-5, method="pairwise")
    assert torch.all(ok | ~pair) and ok.any()


def assert_lipschitz(model, L: float, shape, step: float = 1e-3) -> None:
    """No random corner step of size ``step`` moves the logits by more than ``L step``."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(10):
            u = torch.rand(shape, generator=g, dtype=DT)
            du = step * torch.sign(torch.randn(u.shape, generator=g, dtype=DT))
            assert float((model(u + du) - model(u)).abs().max()) <= L * step


def test_encoder_model_lipschitz_bound_covers_the_encoder():
    torch.manual_seed(0)
    model = nemon.build_model("nemon", "conv-small", hidden=20, gamma=0.5).double()
    L = float(model.lipschitz_bound())
    assert_lipschitz(model, L, (1, 1, 28, 28))
    layer_only = float(
        nemon.lipschitz.output_bound(model.layer.lipschitz_terms(), model.readout.weight)
    )
    assert L > layer_only  # the encoder's constant is folded in


@pytest.mark.parametrize(
    "convs, dense_widths",
    [(MEDIUM, [512]), ([*MEDIUM, (64, 3, 1)], []), ([*MEDIUM, (64, 3, 1)], [512])],
)
def test_conv_stacks_size_their_layers_from_the_image(convs, dense_widths):
    """The layers after the convolutions take their flattened output, for any image size."""
    torch.manual_seed(0)
    n_convs = len(convs)
    for shape in [(1, 28, 28), (3, 32, 24)]:
        encoder = conv_stack(shape[0], convs, image_size=shape[1:], dense=dense_widths)
        features = dense_widths[-1] if dense_widths else 64 * (shape[1] // 4) * (shape[2] // 4)
        layer = nemon.NEMONDense(features, 8, gamma=0.5)
        model = nemon.Classifier(layer, 10, encoder=encoder, input_shape=shape).double()
        dense = [m for m in model.encoder if isinstance(m, nn.Linear)]
        assert [m.out_features for m in dense] == dense_widths
        assert sum(isinstance(m, nn.Conv2d) for m in model.encoder) == n_convs
        h, w = shape[1:]
        features = 64 * (h // 4) * (w // 4)  # two stride-2 convolutions
        assert model.layer.B.in_features == (dense_widths or [features])[-1]
        assert model(torch.rand(2, *shape, dtype=DT)).shape == (2, 10)
    assert_lipschitz(model, float(model.lipschitz_bound().detach()), (1, *shape))


def test_ibp_initialisation_keeps_interval_widths_steady():
    """Shi et al. (2021): ``sum_j |w_ij| ~ 2`` per row, so that a ReLU layer (halving the width on
    average) keeps interval radii at their scale; biases start at zero."""
    torch.manual_seed(0)
    model = build_model("nemon", "conv-medium", gamma=0.5, ibp_init=True)
    for m in [*model.encoder.modules(), model.layer.B]:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            row_sums = m.weight.abs().flatten(1).sum(dim=1)
            assert float(row_sums.mean()) == pytest.approx(2.0, rel=0.1)
            assert not m.bias.any()
    lo, hi = torch.full((1, 1, 28, 28), 0.45), torch.full((1, 1, 28, 28), 0.55)
    with torch.no_grad():
        v_lo, v_hi = model.encode_interval(lo, hi)
    growth = float((v_hi - v_lo).mean()) / 0.1
    assert 0.5 < growth < 1.5  # the default initialisation: about 4.4x
    with pytest.raises(ValueError, match="ibp_init needs a dense layer"):
        build_model("nemon", "conv", hidden=4, ibp_init=True)


@pytest.mark.parametrize("family", ["nemon", "idl"])
def test_zero_feedback_starts_as_the_explicit_model(family):
    """``A = 0``: the implicit layer computes ``relu(B u + b)``, so logits and interval bounds are
    those of the explicit ablation with the same weights; and ``A`` is trainable from there."""
    from nemon.intervals import logit_difference_bounds

    torch.manual_seed(0)
    model = build_model(
        family, "conv-small", gamma=0.5, hidden=20, ibp_init=True, zero_feedback=True
    ).double()
    explicit = build_model("explicit", "conv-small", hidden=20).double()
    explicit.load_state_dict(model.state_dict(), strict=False)
    u, y = torch.rand(5, 1, 28, 28, dtype=torch.float64), torch.arange(5)
    assert float(model.layer.A.detach().abs().max()) < 1e-12
    assert torch.allclose(model(u), explicit(u), atol=1e-10)
    with torch.no_grad():
        ours, theirs = (logit_difference_bounds(m, u, y, 0.05) for m in (model, explicit))
    assert torch.allclose(ours, theirs, atol=1e-8)
    torch.nn.functional.cross_entropy(model(u), y).backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for name, p in model.layer.named_parameters()
        if "original" in name
    )


def test_zero_feedback_is_refused_where_a_cannot_be_zero():
    with pytest.raises(ValueError, match="gamma >= 0"):
        build_model("nemon", "conv-small", gamma=-0.5, hidden=8, zero_feedback=True)
    with pytest.raises(ValueError, match="dense NEMON or IDL"):
        build_model("mon", hidden=8, zero_feedback=True)


def stacked(seed=0):
    torch.manual_seed(seed)
    model = nemon.build_model("nemon", "conv-stacked", (1, 8, 8), 10, hidden=12, gamma=0.5)
    model = model.double().eval()
    inner = model.encoder[2]
    with torch.no_grad():
        inner.kernel.normal_(0, 0.3)  # a strongly coupled inner layer, not the small init
    for layer in (inner, model.layer):
        layer.solver_options = replace(layer.solver_options, tol=1e-12, max_iter=5000)
    return model


@pytest.mark.slow
def test_stacked_box_contains_sampled_states_and_is_tight_at_a_point():
    """The box through an inner implicit layer (embedding box widened by its error bound)."""
    model = stacked()
    g = torch.Generator().manual_seed(2)
    u, eps = torch.rand(3, 1, 8, 8, generator=g, dtype=DT), 0.05
    lo, hi = model.encode_interval(u - eps, u + eps)
    with torch.no_grad():
        for _ in range(30):
            v = u + eps * torch.sign(torch.randn(u.shape, generator=g, dtype=DT))
            out = model.encode(v)
            assert torch.all(out >= lo) and torch.all(out <= hi)
        point_lo, point_hi = model.encode_interval(u, u)
        assert torch.allclose(point_lo, model.encode(u), atol=1e-8)
        assert torch.allclose(point_hi, model.encode(u), atol=1e-8)


@pytest.mark.slow
def test_stacked_model_certifies_soundly_and_its_bound_holds():
    from test_lipschitz import pgd_breaks

    model = stacked(1)
    u = torch.rand(30, 1, 8, 8, dtype=DT)
    with torch.no_grad():
        labels = model(u).argmax(1)
    for eps in (1e-4, 1e-3, 0.01):
        broken = pgd_breaks(model, u, labels, eps, steps=20)
        ok = {m: nemon.certify(model, u, labels, eps, method=m) for m in ("interval", "pairwise")}
        ok["lipschitz"] = nemon.certify(model, u, labels, eps, method="lipschitz")
        for method, certified in ok.items():
            assert not torch.any(certified & broken), (eps, method)
        assert torch.all(ok["interval"] | ~ok["pairwise"]) and torch.all(
            ok["pairwise"] | ~ok["lipschitz"]
        )
    assert nemon.certify(model, u, labels, 1e-5, method="interval").any()
    assert nemon.certify(model, u, labels, 1e-7, method="pairwise").any()  # inner error charged
    assert_lipschitz(model, float(model.lipschitz_bound()), (1, 1, 8, 8))


def test_interval_training_reaches_the_inner_implicit_layer():
    from nemon.intervals import interval_loss

    model = stacked(2)
    u, y = torch.rand(4, 1, 8, 8, dtype=DT), torch.arange(4)
    interval_loss(model, u, y, 0.05).backward()
    inner = model.encoder[2]
    assert inner.kernel.grad is not None and inner.kernel.grad.abs().sum() > 0
    assert inner.input_kernel.grad.abs().sum() > 0
