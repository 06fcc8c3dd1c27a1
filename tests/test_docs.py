"""The tutorial's code blocks run, in order, as one script (under a minute on 2 cores)."""

import os
import re
import time
from pathlib import Path

import pytest
import torch
from helpers import mnist_dir

import nemon.data
from nemon.data import Dataset

DOCS = Path(__file__).resolve().parents[1] / "docs"


def code_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def test_tutorial_has_its_steps():
    code = "\n".join(code_blocks(DOCS / "tutorial.md"))
    for step in ("nemon.Classifier", "nemon.fit", "nemon.certify", "pgd(", "export_onnx"):
        assert step in code


def synthetic_mnist(name: str, *args, **kwargs) -> Dataset:
    """MNIST-shaped stand-in (class templates plus noise) for machines without MNIST."""
    g = torch.Generator().manual_seed(0)
    templates = torch.rand(10, 1, 28, 28, generator=g)

    def split(n):
        y = torch.randint(0, 10, (n,), generator=g)
        x = 0.7 * templates[y] + 0.3 * torch.rand(n, 1, 28, 28, generator=g)
        return x.clamp(0, 1), y

    (train_x, train_y), (test_x, test_y) = split(6000), split(500)
    return Dataset(name, train_x, train_y, test_x, test_y, classes=10)


@pytest.mark.slow
@pytest.mark.filterwarnings("error")
def test_tutorial_runs(tmp_path, monkeypatch, capsys):
    """On MNIST where it is (the CI machine), else on a synthetic stand-in: the code still runs,
    and warns of nothing (a warning in a documented snippet is an error)."""
    pytest.importorskip("onnxruntime")
    if mnist_dir() is None:
        monkeypatch.setattr(nemon.data, "load_dataset", synthetic_mnist)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "tutorial"}
    start = time.perf_counter()
    for i, block in enumerate(code_blocks(DOCS / "tutorial.md")):
        exec(compile(block, f"tutorial.md block {i + 1}", "exec"), namespace)
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    assert "certified" in out and "max |onnx - torch|" in out
    assert (tmp_path / "tutorial.onnx").exists()
    assert namespace["clean"] > 0.85
    limit = float(os.environ.get("NEMON_TUTORIAL_SECONDS", "60"))
    assert seconds < limit, f"the tutorial took {seconds:.0f} s (promised: under a minute)"


def small_mnist(name: str, *args, **kwargs) -> Dataset:
    """The first 2000 training and 100 test images (MNIST where it is, else the stand-in)."""
    data = real_load_dataset(name) if mnist_dir() is not None else synthetic_mnist(name)
    return Dataset(
        name, data.train_x[:2000], data.train_y[:2000], data.test_x[:100], data.test_y[:100],
        classes=10,
    )  # fmt: skip


real_load_dataset = nemon.data.load_dataset


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:method 'interval' certifies none")  # 2000 images: may be so
@pytest.mark.filterwarnings("error")
def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    """The README's quick start and custom model run as written (on fewer images), without a
    warning: load, certify, attack; build, fit with a recipe, certify, export."""
    pytest.importorskip("onnx")
    monkeypatch.setattr(nemon.data, "load_dataset", small_mnist)
    monkeypatch.chdir(tmp_path)
    blocks = code_blocks(DOCS.parent / "README.md")
    assert len(blocks) == 2
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md block {i + 1}", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "certified 0." in out and "certified at 0.1: " in out
    assert (tmp_path / "mine.onnx").exists() and (tmp_path / "runs/mine/checkpoint.pt").exists()


@pytest.mark.filterwarnings("ignore:method 'interval' certifies none")  # 2000 images: may be so
@pytest.mark.filterwarnings("error")
def test_getting_started_python_blocks_run(monkeypatch, capsys):
    monkeypatch.setattr(nemon.data, "load_dataset", small_mnist)
    namespace: dict = {"__name__": "getting_started"}
    for i, block in enumerate(code_blocks(DOCS / "getting-started.md")):
        exec(compile(block, f"getting-started.md block {i + 1}", "exec"), namespace)
    assert namespace["certified"].shape == (100,)
    assert "epoch 1: test acc" in capsys.readouterr().out
