"""The shipped models as a user gets them: cards that match their evaluations, certificates that a
strong PGD never breaks, and one answer from the CLI and the library."""

import json
import re

import pytest
import torch
from conftest import requires_mnist

import nemon
from nemon import pretrained
from nemon.app import cli
from nemon.attacks import pgd
from nemon.data import load_dataset

NAMES = nemon.pretrained_names()
IMAGES = 100  # MNIST test images per model: a few seconds each on one thread


def _evaluation(name: str) -> dict:
    return json.loads((pretrained._root() / name / "evaluation.json").read_text())


def _radii(evaluation: dict) -> list[str]:
    return sorted({k.split("@")[1] for k in evaluation if k.startswith("interval@")}, key=float)


@pytest.mark.parametrize("name", NAMES)
def test_card_states_the_full_test_evaluation(name):
    """Every figure in a card's table is its ``evaluation.json``'s, on all 10 000 test images."""
    evaluation = _evaluation(name)
    card = (pretrained._root() / name / "card.md").read_text()
    assert evaluation["images"] == 10000 and evaluation["pgd"]["steps"] >= 50
    assert evaluation["pgd"]["restarts"] >= 2
    assert f"Clean accuracy: {evaluation['clean']:.4f}." in card
    for r in _radii(evaluation):
        assert evaluation[f"violations@{r}"] == 0
        row = re.search(rf"^\| {re.escape(r)} \| (.*) \|$", card, re.M)
        assert row is not None, f"{name}: no row for eps {r}"
        cells = [c.strip() for c in row.group(1).split("|")]
        expected = [evaluation[f"{k}@{r}"] for k in ("interval", "pairwise", "pgd")]
        assert [float(c) for c in cells[:3]] == pytest.approx(expected, abs=5e-5)
        assert f"`nemon certify {name} --eps" in card


@pytest.fixture(scope="module")
def mnist_test():
    data = load_dataset("mnist")
    return data.test_x[:IMAGES], data.test_y[:IMAGES]


@requires_mnist
@pytest.mark.parametrize("name", NAMES)
def test_no_certified_image_is_broken_by_pgd(name, mnist_test):
    model = nemon.load_pretrained(name)
    x, y = mnist_test
    for r in _radii(_evaluation(name)):
        eps = float(r)
        certified = nemon.certify(model, x, y, eps, method="interval")
        adv = pgd(model, x, y, eps, steps=50, restarts=2, seed=0)
        with torch.no_grad():
            robust = (model(x).argmax(1) == y) & (model(adv).argmax(1) == y)
        assert certified.float().mean() > 0.8  # a certificate that certifies nothing proves nothing
        assert not torch.any(certified & ~robust), f"{name}: certified images broken at {r}"


@requires_mnist
@pytest.mark.parametrize("name", NAMES)
def test_cli_and_library_certify_alike(name, mnist_test, tmp_path):
    model = nemon.load_pretrained(name)
    x, y = mnist_test
    r = _radii(_evaluation(name))[0]
    out = tmp_path / "certify.json"
    argv = ["certify", name, "--eps", r, "--method", "interval", "--test-limit", str(IMAGES)]
    assert cli.main([*argv, "--json", str(out)]) == 0
    from_cli = json.loads(out.read_text())["interval"]
    library = nemon.certify(model, x, y, float(r), method="interval").float().mean().item()
    assert list(from_cli.values()) == [pytest.approx(library)]
