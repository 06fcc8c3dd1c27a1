"""The shipped models as a user gets them: cards that match their evaluations, certificates that a
strong PGD never breaks, and one answer from the CLI and the library."""

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import requires_mnist

import nemon
from nemon import pretrained
from nemon.app import cli
from nemon.attacks import pgd
from nemon.data import load_dataset

NAMES = nemon.pretrained_names()
IMAGES = 100  # MNIST test images per model: a few seconds each on one thread
ROOT = Path(__file__).resolve().parents[1]


def _evaluation(name: str) -> dict:
    return json.loads((pretrained._root() / name / "evaluation.json").read_text())


def _card(name: str) -> str:
    return (pretrained._root() / name / "card.md").read_text()


def _radii(evaluation: dict) -> list[str]:
    return sorted({k.split("@")[1] for k in evaluation if k.startswith("interval@")}, key=float)


@pytest.mark.parametrize("name", NAMES)
def test_card_states_the_full_test_evaluation(name):
    """Every figure in a card's table is its ``evaluation.json``'s, on all 10 000 test images."""
    evaluation = _evaluation(name)
    card = _card(name)
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


def _table_rows(path: Path, width: int) -> dict[str, list[str]]:
    """The cells after the first of each markdown table row that starts with a shipped name and
    has ``width`` more cells (one row per name)."""
    rows = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\| `([\w.-]+)`[^|]* \|(.*)\|$", line)
        cells = [c.strip().strip("*") for c in match.group(2).split("|")] if match else []
        if match and match.group(1) in NAMES and len(cells) == width:
            assert match.group(1) not in rows, f"{path.name}: two rows for {match.group(1)}"
            rows[match.group(1)] = cells
    return rows


def _verified_cells(name: str, r: str, evaluation: dict) -> list:
    """What the tables state after "certified": verified robust, refuted, unknown and not
    refuted from the model's finished verification folder, else dashes and PGD."""
    path = ROOT / "benchmarks" / "results" / "verification" / f"{name}-eps{r}" / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else None
    if summary is None or summary["recorded"] != summary["images"]:
        return ["-", "-", "-", f"{evaluation[f'pgd@{r}']:.4f} (PGD)"]
    keys = ("verified_robust_accuracy", "refuted", "unknown", "not_refuted_accuracy")
    return [summary[k] for k in keys]


def _assert_cells(name: str, stated: list[str], wanted: list) -> None:
    for cell, value in zip(stated, wanted):
        if isinstance(value, str):
            assert cell == value, name
        else:
            assert float(cell) == pytest.approx(value, abs=5e-5), name


def test_docs_table_states_each_shipped_evaluation():
    """The pretrained guide lists every shipped model with its ``evaluation.json``'s figures and
    its verification's (columns: architecture, eps, clean, certified, verified robust, refuted,
    unknown, not refuted, broken, training minutes)."""
    rows = _table_rows(ROOT / "docs" / "guide" / "pretrained.md", width=10)
    assert sorted(rows) == sorted(NAMES)
    for name, cells in rows.items():
        evaluation = _evaluation(name)
        (r,) = _radii(evaluation)
        assert float(cells[1]) == float(r), name
        figures = [evaluation["clean"], evaluation[f"interval@{r}"]]
        _assert_cells(name, cells[2:8], figures + _verified_cells(name, r, evaluation))
        assert int(cells[8]) == evaluation[f"violations@{r}"], name
        training = re.search(r"^Training time.*$", _card(name), re.M).group(0)
        for minutes in re.findall(r"\d+", cells[9]):
            assert re.search(rf"\b{minutes}\b", training), f"{name}: {minutes} minutes"


def test_readme_rows_state_each_shipped_evaluation():
    """The README's robustness table gives each shipped model its ``evaluation.json``'s figures
    and its verification's (columns: eps, clean, certified, verified robust, refuted, unknown,
    not refuted)."""
    rows = _table_rows(ROOT / "README.md", width=7)
    assert sorted(rows) == sorted(NAMES)
    for name, cells in rows.items():
        evaluation = _evaluation(name)
        (r,) = _radii(evaluation)
        assert float(cells[0]) == float(r), name
        figures = [evaluation["clean"], evaluation[f"interval@{r}"]]
        _assert_cells(name, cells[1:7], figures + _verified_cells(name, r, evaluation))


@pytest.fixture(scope="module")
def mnist_test():
    data = load_dataset("mnist")
    return data.test_x[:IMAGES], data.test_y[:IMAGES]


@pytest.mark.slow
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


@pytest.mark.slow
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
