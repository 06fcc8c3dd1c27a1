"""Interval (embedding-system) bounds: they contain every equilibrium and certify soundly."""

from dataclasses import replace

import pytest
import torch
from helpers import classifier, make_layer, pgd_breaks

import nemon
from nemon.intervals import interval_equilibrium, interval_loss

DT = torch.float64
KINDS = ["nemon", "nemon-eta", "idl", "conv-circular", "conv-zeros"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("eps", [0.01, 0.3])
def test_box_contains_sampled_equilibria(kind, eps):
    layer = make_layer(kind, seed=1, activation="relu")
    g = torch.Generator().manual_seed(0)
    u = torch.randn(4, *layer.input_shape(), generator=g, dtype=DT)
    x_lo, x_hi, err = interval_equilibrium(layer, u - eps, u + eps)
    assert torch.all(x_lo <= x_hi + 1e-9)
    with torch.no_grad():
        for _ in range(30):
            v = u + eps * (2 * torch.rand(u.shape, generator=g, dtype=DT) - 1)
            x = layer(v)
            assert torch.all(x >= x_lo - 1e-8) and torch.all(x <= x_hi + 1e-8)
        vertex = u + eps * torch.sign(torch.randn(u.shape, generator=g, dtype=DT))
        x = layer(vertex)
        assert torch.all(x >= x_lo - 1e-8) and torch.all(x <= x_hi + 1e-8)


def test_degenerate_box_is_the_equilibrium():
    layer = make_layer("nemon-eta", activation="relu")
    u = torch.randn(3, 5, dtype=DT)
    x_lo, x_hi, _ = interval_equilibrium(layer, u, u)
    assert torch.allclose(x_lo, layer(u), atol=1e-9) and torch.allclose(x_hi, x_lo, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_interval_is_at_least_as_tight_and_sound(kind):
    model = classifier(kind, seed=3)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(40, *model.layer.input_shape(), generator=g, dtype=DT)
    with torch.no_grad():
        labels = model(u).argmax(1)
        L = float(model.lipschitz_bound())
        top = model(u).sort(1).values
        base = float((top[:, -1] - top[:, -2]).median()) / L
    gained = 0
    for eps in (0.1 * base, 0.5 * base, 2 * base, 20 * base):
        pair = nemon.certify(model, u, labels, eps, method="pairwise", input_range=None)
        inter = nemon.certify(model, u, labels, eps, method="interval", input_range=None)
        assert torch.all(inter | ~pair)  # every pairwise-certified input is interval-certified
        gained += int((inter & ~pair).sum())
        assert not torch.any(pgd_breaks(model, u, labels, eps) & inter)
    assert gained > 0  # and it certifies strictly more somewhere


def test_interval_loss_is_differentiable():
    model = classifier("nemon", seed=0)
    u = torch.rand(6, 5, dtype=DT)
    labels = torch.zeros(6, dtype=torch.long)
    loss = interval_loss(model, u, labels, 0.05)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    clean = torch.nn.functional.cross_entropy(model(u), labels)
    assert loss >= clean - 1e-9  # worst-case logits are never better than the clean ones


def test_mon_is_rejected():
    model = classifier("mon")
    with pytest.raises(NotImplementedError, match="interval bounds"):
        nemon.certify(
            model, torch.rand(2, 5, dtype=DT), torch.zeros(2, dtype=torch.long), 0.1, "interval"
        )


def _wide_classifier(kind, seed=0):
    """A wider layer (12 inputs, 16 states, relu) with a 3-class readout, in float64."""
    torch.manual_seed(seed)
    if kind == "idl":
        layer = nemon.IDLDense(12, 16, gamma=0.9, activation="relu")
    else:
        layer = nemon.NEMONDense(
            12, 16, gamma=0.9, activation="relu", learn_eta=kind == "nemon-eta"
        )
        with torch.no_grad():
            next(layer.parametrizations.A.parameters()).normal_(0, 0.4)  # T
            if kind == "nemon-eta":
                layer.parametrizations.A.original1.normal_(0, 0.5)  # d = log eta
    with torch.no_grad():
        layer.B.weight.mul_(3.0)  # decisions that small perturbations can flip
    layer.solver_options = replace(layer.solver_options, tol=1e-10)
    layer.backward_options = replace(layer.backward_options, tol=1e-10)
    return nemon.Classifier(layer, 3).double()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nemon", "nemon-eta", "idl"])
def test_certified_points_survive_pgd_at_radii_where_pgd_breaks_points(kind):
    """The radius is chosen so that PGD does break points; none of them is certified, and the
    interval certificate still certifies some points at that radius."""
    model = _wide_classifier(kind, seed=1)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(80, 12, generator=g, dtype=DT)
    with torch.no_grad():
        labels = model(u).argmax(1)
    eps = 0.005
    while True:
        broken = pgd_breaks(model, u, labels, eps, steps=50)
        if broken.any() or eps > 1:
            break
        eps *= 1.5
    assert 0 < int(broken.sum()) < len(u), "the radius must break some points, not all"
    certified = {}
    for method in nemon.certificates.CERTIFICATES:
        ok = nemon.certify(model, u, labels, eps, method=method, input_range=None)
        assert not torch.any(ok & broken), method
        certified[method] = int(ok.sum())
    assert certified["interval"] > 0, certified


@pytest.mark.parametrize("kind", ["nemon", "nemon-eta", "idl"])
def test_box_contains_pgd_extremes_of_every_state(kind):
    """Each state coordinate maximised and minimised over the ball by PGD stays in the box."""
    model = _wide_classifier(kind, seed=2)
    layer = model.layer
    g = torch.Generator().manual_seed(0)
    u, eps = torch.rand(3, 12, generator=g, dtype=DT), 0.1
    x_lo, x_hi, err = interval_equilibrium(layer, u - eps, u + eps)
    spread = 0.0
    for sign in (1.0, -1.0):
        delta = torch.zeros(16, 3, 12, dtype=DT, requires_grad=True)
        for _ in range(40):
            x = layer((u + delta).reshape(-1, 12)).reshape(16, 3, 16)
            objective = sign * torch.diagonal(x, dim1=0, dim2=2).sum()  # coordinate i in copy i
            (grad,) = torch.autograd.grad(objective, delta)
            with torch.no_grad():
                delta += 0.02 * grad.sign()
                delta.clamp_(-eps, eps)
        with torch.no_grad():
            x = layer((u + delta).reshape(-1, 12)).reshape(16, 3, 16)
            extreme = torch.diagonal(x, dim1=0, dim2=2)  # (3, 16)
        if sign > 0:
            assert torch.all(extreme <= x_hi + 1e-8)
            spread = extreme
        else:
            assert torch.all(extreme >= x_lo - 1e-8)
            spread = spread - extreme
    assert float(spread.max()) > 0.01  # the attack moved the states: a real check
