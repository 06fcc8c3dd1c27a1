"""Attacks: in the ball and the box, deterministic, and at least as strong as foolbox's PGD."""

import pytest
import torch
from helpers import config, tiny_data

from nemon.app.train import train
from nemon.attacks import ATTACKS, fgsm, image_inversion, pgd, robust_accuracy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("attack-model")
    model = train(config(epochs=3, hidden=16), out, data=tiny_data(), progress=False)["model"]
    return model.eval(), tiny_data()


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_stay_in_ball_and_box_and_are_deterministic(trained, name):
    model, data = trained
    u, y = data.test_x, data.test_y
    a = ATTACKS[name](model, u, y, 0.1, seed=3)
    b = ATTACKS[name](model, u, y, 0.1, seed=3)
    assert torch.equal(a, b)
    assert (a - u).abs().max() <= 0.1 + 1e-6
    assert a.min() >= 0 and a.max() <= 1


def test_inversion_formula():
    u = torch.tensor([[0.0, 0.25, 1.0]])
    out = image_inversion(None, u, None, 0.2)
    assert torch.allclose(out, torch.tensor([[0.2, 0.35, 0.8]]))


def test_pgd_at_least_as_strong_as_fgsm_and_zero_eps_is_clean(trained):
    model, data = trained
    u, y = data.test_x, data.test_y
    clean = robust_accuracy(model, u, y, 0.0, "pgd")
    with torch.no_grad():
        assert torch.equal(clean, model(u).argmax(1) == y)
    for eps in (0.05, 0.15):
        strong = robust_accuracy(model, u, y, eps, "pgd", steps=20)
        weak = robust_accuracy(model, u, y, eps, "fgsm")
        assert strong.sum() <= weak.sum()
        assert strong.sum() <= clean.sum()


def test_pgd_finds_at_least_as_many_as_foolbox(trained):
    fb = pytest.importorskip("foolbox")
    model, data = trained
    u, y = data.test_x.float(), data.test_y
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    for eps in (0.03, 0.08, 0.15):
        theirs = fb.attacks.LinfPGD(steps=20, abs_stepsize=2.5 * eps / 20, random_start=True)
        torch.manual_seed(0)
        _, _, success = theirs(fmodel, u, y, epsilons=eps)
        ours = pgd(model, u, y, eps, steps=20, seed=0)
        with torch.no_grad():
            our_success = model(ours).argmax(1) != y
        assert int(our_success.sum()) >= int(success.sum()), eps


def _reference_pgd(model, u, labels, eps, steps, restarts, seed):
    """PGD that checks every iterate: first misclassifying one per sample, else the last."""
    from nemon.attacks import _loss_gradient, project

    step_size = 2.5 * eps / steps
    g = torch.Generator().manual_seed(seed)
    best, fooled = u.clone(), torch.zeros(len(u), dtype=torch.bool)
    for _ in range(restarts):
        adv = project(
            u, u + eps * (torch.rand(u.shape, generator=g, dtype=u.dtype) * 2 - 1), eps, (0.0, 1.0)
        )
        for _ in range(steps):
            adv = project(
                u, adv + step_size * _loss_gradient(model, adv, labels).sign(), eps, (0.0, 1.0)
            )
            with torch.no_grad():
                wrong = model(adv).argmax(1) != labels
            best[wrong & ~fooled] = adv[wrong & ~fooled]
            fooled |= wrong
        best[~fooled] = adv[~fooled]
    return best


class _Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, u):
        self.calls += 1
        return self.model(u)


@pytest.mark.parametrize("steps,restarts", [(1, 1), (3, 1), (4, 2)])
def test_pgd_skips_the_final_check_without_changing_the_result(trained, steps, restarts):
    model, data = trained
    u, y = data.test_x[:64], data.test_y[:64]
    counting = _Counting(model)
    ours = pgd(counting, u, y, 0.15, steps=steps, restarts=restarts, seed=3)
    assert torch.equal(ours, _reference_pgd(model, u, y, 0.15, steps, restarts, seed=3))
    assert counting.calls == 2 * steps * restarts - 1  # a gradient and a check per step, less one


def test_unknown_attack():
    with pytest.raises(ValueError, match="unknown attack"):
        robust_accuracy(None, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), 0.1, "magic")


def test_fgsm_moves_along_the_gradient_sign(trained):
    model, data = trained
    u, y = data.test_x[:4], data.test_y[:4]
    adv = fgsm(model, u, y, 0.05, input_range=None)
    assert torch.allclose((adv - u).abs(), torch.full_like(u, 0.05), atol=1e-6)


def _linear_model(features=6, classes=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(features, classes)).double()


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_refuse_non_finite_inputs_in_one_line(name, bad):
    """An infinite input used to come back clamped to the box, far outside its ball."""
    u = torch.rand(2, 6, dtype=torch.float64)
    u[1, 3] = bad
    with pytest.raises(ValueError, match="u contains NaN or inf") as info:
        ATTACKS[name](_linear_model(), u, torch.tensor([0, 1]), 0.1)
    assert "\n" not in str(info.value)


def test_attacks_refuse_inputs_outside_the_range_and_bad_settings():
    model, y = _linear_model(), torch.tensor([0, 1])
    u = torch.rand(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"outside pgd input_range=\(0, 1\)"):
        pgd(model, u + 1.5, y, 0.1)
    assert pgd(model, u + 1.5, y, 0.1, input_range=None).shape == u.shape
    for kwargs, match in (
        ({"eps": float("nan")}, "eps"),
        ({"eps": -0.1}, "eps"),
        ({"eps": 0.1, "steps": 0}, "steps"),
        ({"eps": 0.1, "restarts": 0}, "restarts"),
        ({"eps": 0.1, "step_size": float("inf")}, "step_size"),
        ({"eps": 0.1, "input_range": (1.0, 0.0)}, "input_range"),
    ):
        with pytest.raises(ValueError, match=match):
            pgd(model, u, y, **kwargs)


class _NaNGradient(torch.nn.Module):
    """Logits whose gradient is NaN in one coordinate (0 * inf)."""

    def forward(self, u):
        return torch.stack((u.sum(1), u[:, 0] * torch.where(u[:, 1] < 2, float("inf"), 0.0)), 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("box", [(0.0, 1.0), (0.2, 0.7), None])
def test_pgd_points_lie_in_the_ball_and_the_box_exactly(dtype, box):
    """Every returned point is within eps of u as computed in float64 (the ends of the ball are
    rounded inwards; ``u - eps`` in float32 went out by more than a unit) and inside the box,
    also from inputs on the box's edge and with a model whose gradient has NaN."""
    g = torch.Generator().manual_seed(0)
    lo, hi = box or (0.0, 1.0)
    u = (lo + (hi - lo) * torch.rand(64, 6, generator=g, dtype=torch.float64)).to(dtype)
    u[:8] = hi  # on the edge
    y = torch.randint(0, 2, (64,), generator=g)
    for model, eps in ((_linear_model(classes=2).to(dtype), 0.1), (_NaNGradient(), 0.3)):
        for restarts in (1, 2):
            adv = pgd(model, u, y, eps, input_range=box, steps=5, restarts=restarts, seed=1)
            assert adv.dtype == dtype and bool(torch.isfinite(adv).all())
            assert float((adv.double() - u.double()).abs().max()) <= eps
            if box is not None:
                assert float(adv.min()) >= box[0] and float(adv.max()) <= box[1]
