"""benchmarks/step_time.py: a certified-training step timed part by part."""

import json

import pytest
import step_time  # noqa: E402
from helpers import requires_mnist


@pytest.mark.slow
@requires_mnist
@pytest.mark.parametrize(
    "preset, expected",
    [
        ("mnist-cert-0.1", {"clean forward+backward"}),
        ("mnist-cert-medium-mtl-h256-0.1", {"pgd attack", "adversarial forward+backward"}),
    ],
)
def test_parts_of_the_step_are_timed_and_written(tmp_path, preset, expected):
    out = tmp_path / "step.json"
    argv = ["--preset", preset, "--repeats", "1", "--threads", "1", "--json", str(out)]
    result = step_time.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    parts = result["parts"]
    common = {"interval forward+backward", "clean forward, no autograd", "whole step"}
    assert set(parts) == common | expected
    assert all(row["ms"] > 0 for row in parts.values())
    assert parts["whole step"]["share_of_step"] == 1.0
    assert result["radius"] > 0 and result["batch_size"] == 100


@pytest.mark.parametrize(
    "argv", [["--repeats", "0"], ["--threads", "0"], ["--preset", "mnist-fc"], ["--preset", "x"]]
)
def test_bad_arguments_are_refused(argv, capsys):
    """One ``error:`` line each, no traceback."""
    with pytest.raises(SystemExit) as exc:
        step_time.main(argv)
    assert exc.value.code != 0 and "error" in capsys.readouterr().err


@requires_mnist
def test_a_missing_checkpoint_is_one_error_line(tmp_path):
    with pytest.raises(SystemExit) as exc:
        step_time.main(["--checkpoint", str(tmp_path / "none.pt"), "--repeats", "1"])
    assert str(exc.value).startswith("error: ") and "none.pt" in str(exc.value)
