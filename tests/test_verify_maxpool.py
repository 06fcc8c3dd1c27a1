"""`nemon.verify` through ``nn.MaxPool2d``: the lowering reproduces the model for every window
option, and the verdicts agree with exhaustive enumeration of each window's argmax and the
implicit layer's activation pattern, with attacks and with the verifier's own counterexamples."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import lowered_logits
from scipy.optimize import linprog
from torch import nn

import nemon
from nemon.attacks import pgd
from nemon.verification import verify
from nemon.verification.bounds import network_bounds
from nemon.verification.network import lower
from nemon.verification.verify import ball_box, refutes

DT = torch.float64
TIGHT = dict(tol=1e-13, max_iter=5000, error_tol=1e-11)

POOLS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=1),
    dict(kernel_size=(3, 2), stride=(1, 2)),
    dict(kernel_size=2, ceil_mode=True),  # partial windows at the right and bottom edges
    dict(kernel_size=2, stride=2, padding=1, ceil_mode=True),  # a 4th window PyTorch drops
    dict(kernel_size=3, stride=2, padding=1, dilation=2),
    dict(kernel_size=1),
]


def pooled_model(pool: dict, relu: bool, seed: int = 0, hidden: int = 4):
    """Conv2d (1 -> 2 channels, 7x7 -> 5x5), a ReLU or none (then pooled values are negative
    too), MaxPool2d(**pool), then a NEMON layer with 3 classes; float64, solved tightly."""
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Conv2d(1, 2, 3), *([nn.ReLU()] if relu else []), nn.MaxPool2d(**pool))
    enc.append(nn.Flatten())
    features = enc(torch.zeros(1, 1, 7, 7)).shape[1]
    layer = nemon.NEMONDense(features, hidden, gamma=0.5, **TIGHT)
    return nemon.Classifier(layer, 3, encoder=enc, input_shape=(1, 7, 7)).double().eval()


@pytest.mark.parametrize("relu", [True, False], ids=["after-relu", "signed"])
@pytest.mark.parametrize("pool", POOLS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_lowering_reproduces_the_pooled_model(pool, relu):
    """The blocks reproduce the encoder's output (the implicit block's prefix) to 1e-12 and
    the logits to 1e-9, in float64, at random inputs of either sign."""
    model = pooled_model(pool, relu)
    net = lower(model)
    u = torch.rand(3, 1, 7, 7, generator=torch.Generator().manual_seed(1), dtype=DT) * 2 - 1
    with torch.no_grad():
        features, logits = model.encoder(u).numpy(), model(u).numpy()
    for k in range(len(u)):
        a = u[k].reshape(-1).numpy()
        for block in net.blocks[:-1]:  # the pool's levels: explicit blocks
            a = np.maximum(block.W @ a + block.b, 0.0)
        prefix = net.blocks[-1].prefix
        np.testing.assert_allclose(prefix.W @ a + prefix.b, features[k], rtol=0, atol=1e-12)
        got = lowered_logits(net, u[k].reshape(-1).numpy())
        np.testing.assert_allclose(got, logits[k], rtol=0, atol=1e-9)


@pytest.mark.parametrize("kernel, levels", [(1, 0), (2, 2), (3, 4)])
def test_one_block_per_level_shared_by_every_window(kernel, levels):
    """``ceil(log2(k^2))`` levels for a ``k x k`` window, each one block of 3 neurons per pair
    and 2 per term left over, for all windows at once."""
    model = pooled_model(dict(kernel_size=kernel, stride=1), relu=True)
    net = lower(model)
    assert len(net.blocks) == 1 + levels + 1  # the conv's ReLU, the levels, the implicit layer
    windows = 2 * (6 - kernel) ** 2
    terms = kernel * kernel
    for block in net.blocks[1:-1]:
        assert block.size == windows * (3 * (terms // 2) + 2 * (terms % 2))
        terms = (terms + 1) // 2


@pytest.mark.parametrize("relu", [True, False], ids=["after-relu", "signed"])
def test_pool_boxes_hold_sampled_points_and_fix_the_pass_throughs(relu):
    """Every pool block's pre-activation box holds its values at points of the ball; after a
    ReLU the pass-throughs ``ReLU(t)``, ``ReLU(-t)`` (neurons 1 and 2 of each 3 in a 2 x 2
    window's levels) are stable, so only the ``ReLU(s - t)`` may be unstable."""
    model = pooled_model(dict(kernel_size=2), relu, seed=1)
    g = torch.Generator().manual_seed(5)
    u = torch.rand(49, generator=g, dtype=DT)
    with torch.no_grad():  # conv outputs of both signs at u: some inactive, some unstable
        conv = model.encoder[0]
        conv.bias.sub_(conv(u.reshape(1, 1, 7, 7)).flatten(2).median(2).values[0])
    net = lower(model)
    eps = 0.1
    lo, hi = ball_box(u, eps, (0.0, 1.0))
    bounds = network_bounds(net, lo, hi)
    points = (u + (torch.rand(300, 49, generator=g, dtype=DT) * 2 - 1) * eps).clamp(0, 1)
    a = np.concatenate([points.numpy(), lo[None], hi[None]]).T  # one point a column
    first = 1 if relu else 0  # the conv's ReLU block
    unstable = 0
    for block, bb in zip(net.blocks[:-1], bounds[:-1]):
        z = block.W @ a + block.b[:, None]
        assert np.all(bb.pre.lo[:, None] <= z) and np.all(z <= bb.pre.hi[:, None])
        a = np.maximum(z, 0.0)
    for bb in bounds[first:-1]:
        kind = np.arange(len(bb.pre.lo)) % 3  # 0: ReLU(s - t), 1: ReLU(t), 2: ReLU(-t)
        if relu:
            assert np.all(bb.pre.lo[kind == 1] >= 0) and np.all(bb.pre.hi[kind == 2] <= 0)
        unstable += len(bb.unstable)
    assert unstable > 0  # the ReLU(s - t) that the ball leaves open


def exact_min_margin(model, u: np.ndarray, label: int, eps: float) -> float:
    """``min over the ball of y_label - y_j``, ``j != label``, for `enumerable`'s model: on each
    choice of every window's argmax and every activation pattern of the implicit layer the
    network is affine on a polyhedron of inputs, so one LP per choice, pattern and class."""
    with torch.no_grad():
        conv = model.encoder[0]
        (w0, w1), c0 = conv.weight[0, 0, 0].tolist(), float(conv.bias[0])
        A = model.layer.weight().numpy()
        B, b = model.layer.B.weight.numpy(), model.layer.B.bias.numpy()
        C, c = model.readout.weight.numpy(), model.readout.bias.numpy()
    # the conv output v (2 x 3, flat) = G u + c0, u the 2 x 4 input (flat)
    G = np.zeros((6, 8))
    for i, j in itertools.product(range(2), range(3)):
        G[3 * i + j, 4 * i + j], G[3 * i + j, 4 * i + j + 1] = w0, w1
    windows = [(0, 1, 3, 4), (1, 2, 4, 5)]  # MaxPool2d(2, stride=1) on the 2 x 3 plane
    n = len(b)
    lo, hi = np.maximum(u - eps, 0.0), np.minimum(u + eps, 1.0)
    best = np.inf
    for argmax in itertools.product(*windows):
        # v_p <= v_argmax in each window; the pooled values are then v_argmax
        rows = [G[p] - G[m] for w, m in zip(windows, argmax) for p in w if p != m]
        rhs = [0.0] * len(rows)
        P, p0 = G[list(argmax)], np.full(len(argmax), c0)
        for pattern in itertools.product([0, 1], repeat=n):
            D = np.diag(pattern)
            # x = D (A x + B pooled + b)  =>  x = (I - D A)^-1 D (B pooled + b)
            M = np.linalg.solve(np.eye(n) - D @ A, D)
            X, x0 = M @ B @ P, M @ (B @ p0 + b)
            Z, z0 = A @ X + B @ P, A @ x0 + B @ p0 + b  # the pre-activation
            r2, s2 = list(rows), list(rhs)
            for i in range(n):
                s = 1.0 if pattern[i] else -1.0
                r2.append(-s * Z[i]), s2.append(s * z0[i])
            for j in set(range(C.shape[0])) - {label}:
                res = linprog(
                    (C[label] - C[j]) @ X,
                    A_ub=np.array(r2),
                    b_ub=np.array(s2),
                    bounds=list(zip(lo, hi)),
                    method="highs",
                )
                if res.status == 0:
                    const = (C[label] - C[j]) @ x0 + c[label] - c[j]
                    best = min(best, res.fun + const)
    return best


def enumerable(seed: int):
    """A 2 x 4 input, a (1 x 2) convolution with no ReLU (pooled values of either sign),
    MaxPool2d(2, stride=1) to 2 features, a NEMON layer of 2 states, 3 classes balanced over
    ``[0, 1]^8``."""
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Conv2d(1, 1, (1, 2)), nn.MaxPool2d(2, stride=1), nn.Flatten())
    layer = nemon.NEMONDense(2, 2, gamma=0.6, **TIGHT)
    model = nemon.Classifier(layer, 3, encoder=enc, input_shape=(1, 2, 4)).double().eval()
    with torch.no_grad():
        model.encoder[0].weight.mul_(2.0)
        model.layer.B.weight.mul_(3.0)
        model.readout.weight.mul_(3.0)
        x = torch.rand(256, 1, 2, 4, generator=torch.Generator().manual_seed(seed), dtype=DT)
        model.readout.bias.sub_(model(x).mean(0))
    return model


@pytest.mark.slow
def test_verdicts_match_exhaustive_enumeration_through_a_max_pool():
    """Every verdict agrees with the exact minimum margin (and nothing is left unknown)."""
    checked = {"certified": 0, "falsified": 0}
    for seed, eps in ((1, 0.02), (2, 0.05)):
        model = enumerable(seed)
        g = torch.Generator().manual_seed(10 + seed)
        x = torch.rand(5, 1, 2, 4, generator=g, dtype=DT) * 0.6 + 0.2
        with torch.no_grad():
            y = model(x).argmax(1)
        y[0] = (y[0] + 1) % 3  # one misclassified centre
        result = verify(model, x, y, eps, time_limit=30, attack_steps=5, attack_restarts=1)
        assert not bool(result.unknown.any())
        for i in range(len(x)):
            exact = exact_min_margin(model, x[i].reshape(-1).numpy(), int(y[i]), eps)
            assert result.lower[i] <= exact + 1e-9 <= result.upper[i] + 2e-9
            assert bool(result.certified[i]) == (exact > 0)
            checked["certified" if result.certified[i] else "falsified"] += 1
    assert min(checked.values()) >= 4  # both verdicts were exercised


@pytest.mark.slow
@pytest.mark.parametrize("relu", [True, False], ids=["after-relu", "signed"])
def test_pooled_verdicts_are_sound(relu):
    """Certified inputs survive PGD and sampled points, and are never weaker than ``linear``'s;
    refuted ones come with a counterexample in the ball that the model misclassifies (every
    stage decides some input here)."""
    model = pooled_model(dict(kernel_size=3, stride=2, padding=1), relu, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(8, 1, 7, 7, generator=g, dtype=DT)
    with torch.no_grad():
        model.readout.bias.sub_(model(torch.rand(256, 1, 7, 7, generator=g, dtype=DT)).mean(0))
        y = model(x).argmax(1)
    eps = 0.03
    result = verify(model, x, y, eps, time_limit=30, attack_steps=5, attack_restarts=1)
    assert not bool(result.unknown.any())
    assert {"linear", "search", "attack"} <= set(result.stage)
    assert bool((result.certified | ~nemon.certify(model, x, y, eps, method="linear")).all())
    cert = result.certified.nonzero().flatten()
    adv = pgd(model, x[cert], y[cert], eps, steps=20, restarts=2, seed=1)
    noise = (torch.rand(50 * len(cert), 1, 7, 7, generator=g, dtype=DT) * 2 - 1) * eps
    with torch.no_grad():
        assert bool((model(adv).argmax(1) == y[cert]).all())
        sampled = (x[cert].repeat(50, 1, 1, 1) + noise).clamp(0, 1)
        assert bool((model(sampled).argmax(1) == y[cert].repeat(50)).all())
    rows = result.falsified.nonzero().flatten()
    cx = result.counterexamples[rows]
    assert bool(((cx - x[rows]).abs() <= eps).all()) and bool(((cx >= 0) & (cx <= 1)).all())
    assert bool(refutes(model, cx, y[rows])[0].all())
