"""Interval (embedding-system) bounds: they contain every equilibrium and certify soundly."""

import pytest
import torch
from conftest import make_layer
from test_lipschitz import classifier, pgd_breaks

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
        pair = nemon.certify(model, u, labels, eps, method="pairwise", clip=None)
        inter = nemon.certify(model, u, labels, eps, method="interval", clip=None)
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
