"""Complete verification (`nemon.verify`): against exhaustive enumeration of activation patterns
on tiny implicit networks, never certifying what a point breaks, never weaker than `linear`,
refutations that hold for both the exact equilibrium and the model as given, and the rigorous
dual bound against exact rational arithmetic."""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers import lowered_logits
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from torch import nn

import nemon
from nemon.explicit import Normalize, implicit_box
from nemon.verification import VerificationUnsupported, verify
from nemon.verification.bounds import network_bounds
from nemon.verification.network import lower
from nemon.verification.program import Program, safe_bound
from nemon.verification.verify import ball_box, refutes

DT = torch.float64
TIGHT = dict(tol=1e-13, max_iter=5000, error_tol=1e-11)


def tiny(seed: int, encoder: bool, inputs=2, hidden=3, width=3, gamma=0.6, solver=TIGHT):
    """A float64 NEMON classifier small enough to enumerate: ``width`` encoder ReLUs (or none)
    and ``hidden`` implicit states, 3 classes; solves tight, so the running charge is ~1e-10."""
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(inputs, width), nn.ReLU()) if encoder else None
    features = width if encoder else inputs
    layer = nemon.NEMONDense(features, hidden, gamma=gamma, **solver)
    model = nemon.Classifier(layer, 3, encoder=enc, input_shape=(inputs,)).double().eval()
    with torch.no_grad():
        model.layer.B.weight.mul_(3.0)
        model.readout.weight.mul_(3.0)
        # classes balanced over [0, 1]^inputs: decision boundaries cross the data
        logits = model(
            torch.rand(256, inputs, generator=torch.Generator().manual_seed(seed)).double()
        )
        model.readout.bias.sub_(logits.mean(0))
    return model


def exact_min_margins(model, u: np.ndarray, label: int, eps: float, clip=(0.0, 1.0)):
    """``min over the ball of y_label - y_j`` for every ``j``, by enumerating every activation
    pattern of the encoder and the implicit layer: on each pattern's region (a polyhedron in
    ``u``) the network is affine, so one LP per pattern and class gives the exact minimum."""
    with torch.no_grad():
        A = model.layer.weight().numpy()
        B, b = model.layer.B.weight.numpy(), model.layer.B.bias.numpy()
        C, c = model.readout.weight.numpy(), model.readout.bias.numpy()
        if model.encoder is not None:
            W1, b1 = model.encoder[0].weight.numpy(), model.encoder[0].bias.numpy()
        else:
            W1, b1 = np.eye(len(u)), np.zeros(len(u))
    h, n = len(b1), len(b)
    enc_patterns = itertools.product([0, 1], repeat=h) if model.encoder is not None else [(1,) * h]
    lo, hi = np.maximum(u - eps, clip[0]), np.minimum(u + eps, clip[1])
    best = np.full(C.shape[0], np.inf)
    for p1 in enc_patterns:
        P1 = np.diag(p1)
        # a1 = P1 (W1 u + b1) = G u + g
        G, g = P1 @ W1, P1 @ b1
        rows, rhs = [], []
        if model.encoder is not None:
            for i in range(h):  # sign of the encoder pre-activation
                s = 1.0 if p1[i] else -1.0
                rows.append(-s * W1[i]), rhs.append(s * b1[i])
        for p2 in itertools.product([0, 1], repeat=n):
            P2 = np.diag(p2)
            # x = P2 (A x + B a1 + b)  =>  x = (I - P2 A)^-1 P2 (B G u + B g + b)
            M = np.linalg.solve(np.eye(n) - P2 @ A, P2)
            X, x0 = M @ B @ G, M @ (B @ g + b)
            Z, z0 = A @ X + B @ G, A @ x0 + B @ g + b  # pre-activation
            r2, s2 = list(rows), list(rhs)
            for i in range(n):
                s = 1.0 if p2[i] else -1.0
                r2.append(-s * Z[i]), s2.append(s * z0[i])
            for j in range(C.shape[0]):
                if j == label:
                    continue
                cost = (C[label] - C[j]) @ X
                const = (C[label] - C[j]) @ x0 + c[label] - c[j]
                res = linprog(
                    cost,
                    A_ub=np.array(r2),
                    b_ub=np.array(s2),
                    bounds=list(zip(lo, hi)),
                    method="highs",
                )
                if res.status == 0:
                    best[j] = min(best[j], res.fun + const)
    best[label] = np.inf
    return best


@pytest.mark.slow
@pytest.mark.parametrize("encoder", [False, True])
def test_verdicts_match_exhaustive_enumeration(encoder):
    """Every verdict agrees with the exact minimum margin of enumeration (and nothing is left
    unknown on these sizes)."""
    g = torch.Generator().manual_seed(1)
    checked = {"certified": 0, "falsified": 0}
    for seed in range(3):
        model = tiny(seed, encoder)
        x = torch.rand(6, 2, generator=g, dtype=DT) * 0.6 + 0.2
        with torch.no_grad():
            y = model(x).argmax(1)
        y[0] = (y[0] + 1) % 3  # one misclassified centre
        eps = 0.12
        result = verify(model, x, y, eps, time_limit=30, attack_steps=5, attack_restarts=1)
        assert not bool(result.unknown.any())
        for i in range(len(x)):
            exact = exact_min_margins(model, x[i].numpy(), int(y[i]), eps)
            assert result.lower[i] <= exact.min() + 1e-9 <= result.upper[i] + 2e-9
            if result.certified[i]:
                assert exact.min() > 0
                checked["certified"] += 1
            else:
                assert exact.min() < 1e-8
                checked["falsified"] += 1
    assert min(checked.values()) >= 2  # both verdicts were exercised


def test_margins_below_the_running_charge_are_unknown_and_say_so():
    """A model as it runs that may err by more than some margins: those inputs are neither
    certified nor refuted, and the reason names the running charge; the verdicts still agree
    with enumeration where they are given."""
    model = tiny(0, encoder=False, solver=dict(tol=1e-13, max_iter=5000, error_tol=0.02))
    x = torch.rand(12, 2, generator=torch.Generator().manual_seed(4), dtype=DT) * 0.6 + 0.2
    with torch.no_grad():
        y = model(x).argmax(1)
    result = verify(model, x, y, 0.08, time_limit=30, attack_steps=5, attack_restarts=1)
    charged = [i for i, why in enumerate(result.reasons) if "running charge" in why]
    assert charged and all(bool(result.unknown[i]) for i in charged)
    for i in range(len(x)):
        exact = exact_min_margins(model, x[i].numpy(), int(y[i]), 0.08).min()
        if i in charged:
            assert exact > -1e-9
        elif result.certified[i]:
            assert exact > 0
        else:
            assert bool(result.falsified[i]) and exact < 1e-8


@pytest.mark.slow
def test_never_weaker_than_linear_and_counterexamples_refute():
    model = tiny(7, encoder=True, inputs=4, hidden=5, width=6)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 4, generator=g, dtype=DT)
    with torch.no_grad():
        y = model(x).argmax(1)
    for eps in (0.05, 0.2):
        linear = nemon.certify(model, x, y, eps, method="linear")
        result = verify(model, x, y, eps, time_limit=30)
        assert bool((result.certified | ~linear).all())
        assert not bool((result.certified & result.falsified).any())
        rows = result.falsified.nonzero().flatten()
        cx = result.counterexamples[rows]
        assert bool(((cx - x[rows]).abs() <= eps).all()) and bool(((cx >= 0) & (cx <= 1)).all())
        wrong, upper = refutes(model, cx, y[rows])
        assert bool(wrong.all()) and bool((upper < 0).all())
        with torch.no_grad():
            assert bool((model(cx).argmax(1) != y[rows]).all())
        # sampled points never break a certified input (one batch of 50 per input)
        cert = result.certified.nonzero().flatten().repeat(50)
        noise = (torch.rand(len(cert), 4, generator=g, dtype=DT) * 2 - 1) * eps
        with torch.no_grad():
            assert bool((model((x[cert] + noise).clamp(0, 1)).argmax(1) == y[cert]).all())


def test_float32_model_as_given_is_checked():
    """A float32 model: its counterexamples are float32 inputs in the ball, misclassified by the
    float32 model and the exact equilibrium alike."""
    solver = dict(tol=1e-6, max_iter=500, error_tol=1e-4)
    model = tiny(7, encoder=True, inputs=4, hidden=5, width=6, solver=solver).float()
    x = torch.rand(12, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    result = verify(model, x, y, 0.2, time_limit=30)
    assert result.counterexamples.dtype == torch.float32
    rows = result.falsified.nonzero().flatten()
    assert len(rows) and len(result.certified.nonzero())
    cx = result.counterexamples[rows]
    assert bool(((cx.double() - x[rows].double()).abs() <= 0.2).all())
    with torch.no_grad():
        assert bool((model(cx).argmax(1) != y[rows]).all())


def conv_model(name: str):
    """Small models of every kind the lowering reads."""
    torch.manual_seed(0)
    if name == "mixed":
        enc = nn.Sequential(
            Normalize([0.5], [0.25]),
            nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
            nn.BatchNorm2d(2),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            enc[2].running_mean.uniform_(-0.2, 0.2)
        layer = nemon.IDLDense(18, 5, gamma=0.7)
        return nemon.Classifier(layer, 3, encoder=enc, input_shape=(1, 6, 6), direct=True)
    family = "explicit" if name == "explicit" else "nemon"
    arch = {"stacked": "conv-stacked", "explicit": "dense"}.get(name, name)
    return nemon.build_model(family, arch, input_shape=(1, 8, 8), hidden=4, gamma=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["conv-small", "stacked", "conv", "mixed", "explicit"])
def test_lowering_reproduces_the_model(name):
    model = conv_model(name).double().eval()
    for layer in model.modules():
        if isinstance(layer, nemon.ImplicitLayer):
            layer.solver_options = layer.solver_options.__class__(
                **{**layer.solver_options.__dict__, "tol": 1e-13, "max_iter": 5000}
            )
    net = lower(model)
    u = torch.rand(3, *model.input_shape, dtype=DT)
    with torch.no_grad():
        want = model(u).numpy()
    for k in range(3):
        got = lowered_logits(net, u[k].reshape(-1).numpy())
        np.testing.assert_allclose(got, want[k], atol=1e-8)


def test_boxes_contain_the_network_at_sampled_points():
    """Every block's box holds the values at points of the ball, with the implicit layer's
    solve left loose (so its error bound must widen the box); the truth from a tight copy."""
    tight = tiny(3, encoder=True, inputs=4, hidden=6, width=5, gamma=0.9)
    model = copy.deepcopy(tight)
    model.layer.solver_options = replace(model.layer.solver_options, tol=1e-2, max_iter=3)
    model.layer.error_tol = None
    net = lower(model)
    u = torch.rand(4, generator=torch.Generator().manual_seed(0), dtype=DT)
    eps = 0.1
    lo, hi = ball_box(u, eps, (0.0, 1.0))
    (enc, imp) = network_bounds(net, lo, hi)
    g = torch.Generator().manual_seed(1)
    points = (u + (torch.rand(500, 4, generator=g, dtype=DT) * 2 - 1) * eps).clamp(0, 1)
    points[0], points[1] = torch.from_numpy(lo), torch.from_numpy(hi)
    with torch.no_grad():
        z1 = tight.encoder[0](points)
        x = tight.layer(torch.relu(z1))
        z2 = tight.layer.A @ x.T + tight.layer.B(torch.relu(z1)).T
    for values, box in ((z1, enc.pre), (torch.relu(z1), enc.out), (z2.T, imp.pre), (x, imp.out)):
        assert bool((values >= torch.from_numpy(box.lo)).all())
        assert bool((values <= torch.from_numpy(box.hi)).all())


def test_state_box_contains_the_exact_embedding_box():
    """The box of a loosely solved layer, widened by its error bound, contains the exactly
    solved embedding system's box (the big-M constants rest on it)."""
    tight = tiny(3, encoder=True, inputs=4, hidden=6, width=5, gamma=0.9).layer
    loose = copy.deepcopy(tight)
    loose.solver_options = replace(loose.solver_options, tol=1e-2, max_iter=3)
    lo, hi = torch.zeros(1, 5, dtype=DT), torch.full((1, 5), 0.5, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_lo, x_hi = implicit_box(loose, lo, hi)
    e_lo, e_hi, _ = tight.interval_bounds(lo, hi)
    assert bool((x_lo <= e_lo).all()) and bool((e_hi <= x_hi).all())


def test_refuses_what_it_cannot_encode():
    mon = nemon.Classifier(nemon.MONDense(4, 3), 3)
    with pytest.raises(VerificationUnsupported, match="sound box"):
        verify(mon, torch.rand(2, 4), torch.zeros(2, dtype=torch.long), 0.1)
    tanh = nemon.Classifier(nemon.NEMONDense(4, 3, activation="tanh"), 3)
    with pytest.raises(VerificationUnsupported, match="tanh"):
        verify(tanh, torch.rand(2, 4), torch.zeros(2, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="eps"):
        verify(tiny(0, False), torch.rand(2, 2, dtype=DT), torch.zeros(2, dtype=torch.long), -1.0)


@pytest.mark.slow
def test_ensemble_verdicts_are_sound():
    members = [tiny(s, encoder=True, inputs=3, hidden=3, width=3) for s in (11, 12)]
    model = nemon.Ensemble(members)
    g = torch.Generator().manual_seed(9)
    x = torch.rand(10, 3, generator=g, dtype=DT)
    with torch.no_grad():
        y = model(x).argmax(1)
    result = verify(model, x, y, 0.15, time_limit=30)
    assert not bool(result.unknown.any())
    cert = result.certified.nonzero().flatten().repeat(100)
    noise = (torch.rand(len(cert), 3, generator=g, dtype=DT) * 2 - 1) * 0.15
    with torch.no_grad():
        assert bool((model((x[cert] + noise).clamp(0, 1)).argmax(1) == y[cert]).all())
    rows = result.falsified.nonzero().flatten()
    with torch.no_grad():
        assert bool((model(result.counterexamples[rows]).argmax(1) != y[rows]).all())


def _exact_bound(program: Program, cost, const, y) -> Fraction:
    """`safe_bound`'s expression in rational arithmetic (the same multipliers)."""
    F = Fraction
    M = program.M.tocsr()
    total = F(const)
    r = [F(c) for c in cost]
    for i in range(M.shape[0]):
        yi = F(y[i])
        if yi > 0:
            total += yi * F(program.row_lo[i])
        elif yi < 0:
            total += yi * F(program.row_hi[i])
        for k in range(M.indptr[i], M.indptr[i + 1]):
            r[M.indices[k]] -= yi * F(M.data[k])
    for j, rj in enumerate(r):
        total += min(rj * F(program.col_lo[j]), rj * F(program.col_hi[j]))
    return total


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans())
def test_safe_bound_never_exceeds_its_exact_value(seed, cancelling):
    """For any multipliers, the float64 bound is at most the exact value of the same expression
    (so at most the program's minimum): a sum without the rounding allowance fails this.
    ``cancelling``: multipliers with ``M^T y ~ cost``, as at an LP optimum, where the reduced
    costs are what rounding leaves of a cancellation."""
    g = np.random.default_rng(seed)
    rows, cols = (10, 6) if cancelling else (6, 8)
    dense = g.normal(size=(rows, cols)) * g.choice([1e-3, 1.0, 1e3], size=(rows, cols))
    import scipy.sparse as sp

    M = sp.csr_matrix(dense)
    b = g.normal(size=rows) * (0.0 if cancelling else 1e3)  # no large row terms to hide in
    program = Program(
        M,
        b - 1e-3,
        b + 1e-3,
        -g.uniform(0.1, 1e3, cols),
        g.uniform(0.1, 1e3, cols),
        np.arange(cols),
        np.zeros(0, int),
        np.zeros(0, int),
        np.zeros(0, int),
    )
    cost = g.normal(size=cols) * 1e3
    y = g.normal(size=rows) * 1e2
    if cancelling:
        y = np.linalg.lstsq(dense.T, cost, rcond=None)[0]
    const = 0.0 if cancelling else float(g.normal() * 1e6)
    got = safe_bound(program, cost, const, program.col_lo, program.col_hi, y)
    assert math.isfinite(got)
    exact = _exact_bound(program, cost, const, y)
    assert Fraction(got) <= exact
    assert float(exact) - got <= 1e-6 * (abs(float(exact)) + 1e9)  # and not uselessly loose


def test_a_cancelling_composition_keeps_sound_boxes():
    """Two affine modules whose product cancels in float64 (2^60 - 2^60): the lowered matrix
    reads 0, but the boxes stay sound, sized by the factors' magnitudes (the exact map is
    ``v = u``)."""
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(1, 3, bias=False), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        enc[0].weight.copy_(torch.tensor([[2.0**60], [1.0], [2.0**60]]))
        enc[1].weight.copy_(torch.tensor([[1.0, 1.0, -1.0]]))
    layer = nemon.NEMONDense(1, 2, gamma=0.5, **TIGHT)
    model = nemon.Classifier(layer, 2, encoder=enc, input_shape=(1,)).double().eval()
    net = lower(model)
    u = torch.tensor([0.5], dtype=DT)
    (block,) = network_bounds(net, *ball_box(u, 0.1, (0.0, 1.0)))
    B, b = model.layer.B.weight.detach(), model.layer.B.bias.detach()
    for point in (0.4, 0.5, 0.6):  # the exact injection B v + b with v = u
        z = (B[:, 0] * point + b).numpy()
        assert np.all(block.pre.lo <= z + 1e-12) and np.all(z - 1e-12 <= block.pre.hi)


def test_projection_stays_in_a_clip_box_that_float32_cannot_represent():
    u = torch.full((1, 4), 0.29)
    adv = torch.ones(1, 4)
    from nemon.attacks import project

    p = project(u, adv, 0.1, (0.0, 0.3))
    assert bool((p.double() <= 0.3).all()) and bool(((p.double() - u.double()).abs() <= 0.1).all())


@pytest.mark.parametrize("iterations", [1, 50])
def test_tightened_boxes_contain_the_network_at_sampled_points(monkeypatch, iterations):
    """The LP tightening of the implicit block and of the explicit block that feeds it, each LP
    stopped after ``iterations`` simplex iterations (its multipliers, far from optimal after
    one, still bound it): the boxes shrink, some strictly, and hold the sampled values."""
    import sys

    from nemon.verification.program import build_program
    from nemon.verification.search import LPSolver

    module = sys.modules["nemon.verification.verify"]  # the package's `verify` is the function
    monkeypatch.setattr(module, "TIGHTEN_ITERATIONS", iterations)
    torch.manual_seed(4)
    enc = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU())
    layer = nemon.NEMONDense(6, 6, gamma=0.9, **TIGHT)
    model = nemon.Classifier(layer, 3, encoder=enc, input_shape=(4,)).double().eval()
    net = lower(model)
    u = torch.rand(4, generator=torch.Generator().manual_seed(0), dtype=DT)
    lo, hi = ball_box(u, 0.3, (0.0, 1.0))
    bounds = network_bounds(net, lo, hi)
    before = copy.deepcopy(bounds)
    assert len(before[1].unstable) and len(before[2].unstable)  # both blocks are tightened
    program = build_program([net], [bounds], lo, hi)
    module._tighten([net], [bounds], program, LPSolver(program), lo, hi, math.inf)
    g = torch.Generator().manual_seed(1)
    points = (u + (torch.rand(2000, 4, generator=g, dtype=DT) * 2 - 1) * 0.3).clamp(0, 1)
    with torch.no_grad():
        z1 = enc[0](points)
        z2 = enc[2](torch.relu(z1))
        x = layer(torch.relu(z2))
        z3 = layer.A @ x.T + layer.B(torch.relu(z2)).T
    values = [(z1, torch.relu(z1)), (z2, torch.relu(z2)), (z3.T, x)]
    narrower = 0.0
    for (pre, out), old, new in zip(values, before, bounds):
        for v, o, b in ((pre, old.pre, new.pre), (out, old.out, new.out)):
            assert np.all(b.lo >= o.lo) and np.all(b.hi <= o.hi)
            assert bool((v >= torch.from_numpy(b.lo)).all() and (v <= torch.from_numpy(b.hi)).all())
            narrower += float(np.sum((o.hi - o.lo) - (b.hi - b.lo)))
    assert narrower > 0


def test_each_verdict_is_reported_once_as_soon_as_it_is_final():
    """``on_verdict`` is called once per input, when its verdict is final: the unknowns left by
    a search out of time too (a run folder records them then, not at the end of the chunk),
    with their fields as the result ends."""
    model = tiny(0, encoder=False, solver=dict(tol=1e-13, max_iter=5000, error_tol=0.02))
    x = torch.rand(12, 2, generator=torch.Generator().manual_seed(4), dtype=DT) * 0.6 + 0.2
    with torch.no_grad():
        y = model(x).argmax(1)
    seen = []

    def report(i, result):
        seen.append((i, bool(result.certified[i]), bool(result.falsified[i]), result.reasons[i]))

    result = verify(model, x, y, 0.08, time_limit=30, attack_steps=5, attack_restarts=1,
                    on_verdict=report)  # fmt: skip
    assert sorted(i for i, *_ in seen) == list(range(len(x)))  # each once
    assert any(not c and not f for _, c, f, _ in seen)  # unknowns reported too
    for i, certified, falsified, reason in seen:
        assert certified == bool(result.certified[i]) and falsified == bool(result.falsified[i])
        assert reason == result.reasons[i]
