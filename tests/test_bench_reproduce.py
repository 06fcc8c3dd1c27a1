"""The benchmark and reproduction commands run end to end on tiny settings."""

import json

import pytest
import torch
from helpers import mnist_dir, requires_mnist

from nemon.app.bench import step_flops
from nemon.app.cli import main
from nemon.models import build_model


@pytest.mark.slow
def test_bench_quick(tmp_path, capfd):
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert result["matmul_peak_gflops"] > 0
    ours = {r["solver"]: r for r in result["solvers"] if r["solver"].startswith("nemon:")}
    assert set(ours) == {"nemon:averaged", "nemon:diagonal", "nemon:anderson"}
    for row in ours.values():
        assert row["relative_error"] < 1e-2  # every solver reached the same fixed point
    assert all(r["us_per_iteration"] > 0 for r in result["scaling"])
    (step,) = result["certified_steps"]
    assert step["interval_over_clean"] > 1  # the interval step does the clean step's work too
    assert step["interval_over_clean_flops"] > 2  # ... and the centre and radius passes
    assert sum(step["profile"].values()) <= 1
    stacked = {r["solver"]: r for r in result["stacked_solvers"]}
    assert set(stacked) == {"nemon:averaged", "nemon:diagonal", "nemon:anderson"}
    for row in stacked.values():  # both implicit layers solved, forward and backward
        assert len(row["forward_iterations"]) == 2 and min(row["backward_iterations"]) > 0
    out, err = capfd.readouterr()  # file descriptors: the profiler's native library too
    assert "matmul peak" in out and "stacked nemon:diagonal" in out
    assert "USDT" not in err and "profiler_start" not in out + err


def test_step_flops_count_the_solver_iterations_inside_the_implicit_function():
    """A dense NEMON step costs its explicit twin's FLOPs plus one product ``A x`` (2 b n^2) per
    forward iteration after the first (from ``x0 = 0`` it needs none) and per backward
    iteration, and two more: the preactivation for ``J`` and the weight gradient ``w^T x*``.
    Counting outside the autograd Function or from the wrong step would miss the iterations."""
    torch.manual_seed(0)
    b, n = 30, 20
    u, y = torch.rand(b, 1, 6, 6), torch.randint(0, 10, (b,))
    ours = build_model("nemon", input_shape=(1, 6, 6), hidden=n)
    twin = build_model("explicit", input_shape=(1, 6, 6), hidden=n)
    flops, iterations = step_flops(ours, u, y)
    its = step_flops(twin, u, y)[0]
    assert iterations["forward"] > 1 and iterations["backward"] > 1
    expected = 2 * b * n * n * (iterations["forward"] - 1 + iterations["backward"] + 2)
    assert flops - its == expected
    assert all(p.grad is None for p in ours.parameters())  # counting leaves no gradient behind


@pytest.mark.slow
@requires_mnist
def test_reproduce_mnist_tiny(tmp_path, capsys):
    args = [
        "reproduce",
        "mnist",
        "--runs",
        "2",
        "--epochs",
        "1",
        "--train-limit",
        "600",
        "--test-limit",
        "200",
        "--lams",
        "1e-3",
        "--attack-limit",
        "100",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--data-dir",
        str(mnist_dir()),
    ]
    assert main(args) == 0
    for name in (
        "figure1_curves.png",
        "figure2_lipschitz.png",
        "figure2_inversion.png",
        "table.md",
    ):
        assert (tmp_path / name).stat().st_size > 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["summary"]) == {"NEMON", "IDL", "MON"}
    assert len(result["histories"]["NEMON"]) == 2
    assert {r["lam"] for r in result["lipschitz_sweep"]} == {0.0, 1e-3}
    curves = result["inversion_attack"]["accuracy"]
    assert all(c[0] >= c[-1] for c in curves.values())  # inversion at eps 0 is the clean accuracy
    assert "| NEMON |" in capsys.readouterr().out


def test_seconds_to_accuracy_sums_training_time_to_the_first_epoch_at_the_target():
    from nemon.app.bench import seconds_to_accuracy

    history = [
        {"train_seconds": 2.0, "test_accuracy": 0.95},
        {"train_seconds": 3.0, "test_accuracy": 0.971},
        {"train_seconds": 4.0, "test_accuracy": 0.96},
    ]
    assert seconds_to_accuracy(history, 0.97) == 5.0
    assert seconds_to_accuracy(history, 0.95) == 2.0
    assert seconds_to_accuracy(history, 0.99) is None


@pytest.mark.slow
def test_dense_step_times_side_by_side_with_a_profile():
    """The FC step section: the MLP row is the unit, NEMON at a loose tolerance iterates less
    than at a tight one, and the profile counts operators per step."""
    from nemon.app.bench import dense_step_times

    torch.set_num_threads(1)
    rows = {r["model"]: r for r in dense_step_times(None, steps=10, warmup=2)}
    assert set(rows) == {"MLP", "NEMON tol 0.01", "NEMON tol 0.0001"}
    assert rows["MLP"]["over_mlp"] == 1.0
    loose, tight = rows["NEMON tol 0.01"], rows["NEMON tol 0.0001"]
    assert loose["forward_iterations"] < tight["forward_iterations"]
    for row in rows.values():
        prof = row["profile"]
        assert row["ms_per_step"] > 0 and prof["aten_calls_per_step"] > prof["copy_per_step"] > 0
