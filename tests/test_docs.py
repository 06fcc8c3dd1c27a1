"""The tutorial's code blocks run, in order, as one script (under a minute on 2 cores)."""

import os
import re
import time
from pathlib import Path

import pytest
import torch
from conftest import mnist_dir

import nemon.data
from nemon.data import Dataset

DOCS = Path(__file__).resolve().parents[1] / "docs"


def code_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def test_tutorial_has_its_steps():
    code = "\n".join(code_blocks(DOCS / "tutorial.md"))
    for step in ("nemon.Classifier", "interval_loss", "nemon.certify", "pgd(", "export_onnx"):
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


def test_tutorial_runs(tmp_path, monkeypatch, capsys):
    """On MNIST where it is (the CI machine), else on a synthetic stand-in: the code still runs."""
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
