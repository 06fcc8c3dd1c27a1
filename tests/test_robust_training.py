"""Certified-training losses beyond IBP: CC-IBP's logit mix and SABR's small boxes."""

import pytest
import torch
import torch.nn.functional as F

from nemon import Recipe, build_model
from nemon.intervals import interval_loss, logit_difference_bounds, shrunk_box
from nemon.losses import adversarial_points, recipe_loss

DT = torch.float64


def model_and_batch(seed=0, n=6):
    torch.manual_seed(seed)
    model = build_model("nemon", "conv-small", (1, 28, 28), 10, hidden=16, gamma=0.5)
    model = model.double().train()
    u = torch.rand(n, 1, 28, 28, dtype=DT)
    return model, u, torch.randint(0, 10, (n,))


def test_shrunk_box_lies_in_the_ball_around_the_centre_moved_inside():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(5, 30, generator=g, dtype=DT)
    centre = u + 0.3 * (2 * torch.rand(u.shape, generator=g, dtype=DT) - 1)  # some too far out
    eps, shrink = 0.1, 0.4
    lo, hi = shrunk_box(u, centre, eps, shrink, None)
    assert torch.allclose(hi - lo, torch.full_like(lo, 2 * shrink * eps))
    assert bool((lo >= u - eps - 1e-15).all() and (hi <= u + eps + 1e-15).all())
    inside = (centre - u).abs() <= (1 - shrink) * eps
    assert bool(inside.any() and (~inside).any())
    mid = (lo + hi) / 2
    assert torch.allclose(mid[inside], centre[inside])  # kept where it already fits
    clipped = shrunk_box(u, centre, eps, shrink, (0.0, 1.0))
    assert bool((clipped[0] >= 0).all() and (clipped[1] <= 1).all())
    whole = shrunk_box(u, centre, eps, 1.0, None)
    assert torch.allclose(whole[0], u - eps) and torch.allclose(whole[1], u + eps)


def test_small_box_bounds_are_sound_and_tighter_than_the_ball():
    model, u, y = model_and_batch()
    model.eval()
    adv = adversarial_points(model, u, y, 0.1, 2, seed=3)
    box = shrunk_box(u, adv, 0.1, 0.3, (0.0, 1.0))
    small = logit_difference_bounds(model, u, y, 0.1, (0.0, 1.0), box=box)
    ball = logit_difference_bounds(model, u, y, 0.1, (0.0, 1.0))
    assert bool((small >= ball - 1e-9).all()) and bool((small > ball + 1e-6).any())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(20):
            v = box[0] + (box[1] - box[0]) * torch.rand(u.shape, generator=g, dtype=DT)
            logits = model(v)
            diff = logits.gather(1, y[:, None]) - logits
            assert bool((diff >= small - 1e-6).all())


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_cc_ibp_mixes_logit_differences_before_one_cross_entropy(weight):
    """``CE(-((1 - w) (y_label - y_j)(PGD point) + w lower bounds))``; fails on MTL's mix of
    losses, on a mix of raw logits, or on bounds of the clean point."""
    model, u, y = model_and_batch()
    recipe = Recipe(cert_eps=0.1, cert_weight=weight, adv_steps=2, robust_mix="logits")
    model(u)  # training-mode statistics, as every step's clean pass records them
    logits, loss = recipe_loss(model, model, recipe, u, y, 0.1, 1.0, step=5)
    adv = adversarial_points(model, u, y, 0.1, 2, seed=5)
    adv_logits = model(adv)
    differences = adv_logits.gather(1, y[:, None]) - adv_logits
    bounds = logit_difference_bounds(model, u, y, 0.1, (0.0, 1.0))
    expected = F.cross_entropy(-((1 - weight) * differences + weight * bounds), y)
    assert torch.allclose(loss, expected, atol=1e-12)
    if 0 < weight < 1:
        mtl = (1 - weight) * F.cross_entropy(adv_logits, y) + weight * interval_loss(
            model, u, y, 0.1
        )
        assert not torch.allclose(loss, mtl, atol=1e-6)
        assert loss <= mtl + 1e-12  # cross-entropy is convex: the logit mix is the smaller
    params = list(model.parameters())
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        assert torch.allclose(got, want, atol=1e-10)


@pytest.mark.parametrize("mix", ["loss", "logits"])
def test_sabr_bounds_the_small_box_around_the_pgd_point(mix):
    model, u, y = model_and_batch(seed=2)
    recipe = Recipe(cert_eps=0.1, cert_weight=1.0, adv_steps=2, box_shrink=0.4, robust_mix=mix)
    model(u)
    _, loss = recipe_loss(model, model, recipe, u, y, 0.1, 1.0, step=9)
    adv = adversarial_points(model, u, y, 0.1, 2, seed=9)
    box = shrunk_box(u, adv, 0.1, 0.4, (0.0, 1.0))
    assert torch.allclose(loss, interval_loss(model, u, y, 0.1, box=box), atol=1e-12)
    assert not torch.allclose(loss, interval_loss(model, u, y, 0.1), atol=1e-6)


def test_recipe_refuses_a_small_box_without_its_centre_and_bad_values():
    with pytest.raises(ValueError, match="box_shrink = 0.5 < 1 needs adv_steps > 0"):
        Recipe(box_shrink=0.5)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="box_shrink must be a finite number > 0"):
            Recipe(box_shrink=bad, adv_steps=1)
    with pytest.raises(ValueError, match="robust_mix"):
        Recipe(robust_mix="product")
