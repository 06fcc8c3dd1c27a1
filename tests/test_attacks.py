"""Attacks: in the ball and the box, deterministic, and at least as strong as foolbox's PGD."""

import pytest
import torch
from test_train_cli import config, tiny_data

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


def test_unknown_attack():
    with pytest.raises(ValueError, match="unknown attack"):
        robust_accuracy(None, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), 0.1, "magic")


def test_fgsm_moves_along_the_gradient_sign(trained):
    model, data = trained
    u, y = data.test_x[:4], data.test_y[:4]
    adv = fgsm(model, u, y, 0.05, box=None)
    assert torch.allclose((adv - u).abs(), torch.full_like(u, 0.05), atol=1e-6)
