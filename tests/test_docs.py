"""The tutorial's code blocks run, in order, as one script (under a minute on 2 cores)."""

import os
import re
import time
from pathlib import Path

import pytest
from conftest import requires_mnist

DOCS = Path(__file__).resolve().parents[1] / "docs"


def code_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def test_tutorial_has_its_steps():
    code = "\n".join(code_blocks(DOCS / "tutorial.md"))
    for step in ("nemon.Classifier", "interval_loss", "nemon.certify", "pgd(", "export_onnx"):
        assert step in code


@requires_mnist
def test_tutorial_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
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
