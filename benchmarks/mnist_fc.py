"""Time per epoch, solver iterations and accuracy of the paper's MNIST FC model (section 6.2).

Runs every requested (model, solver) configuration side by side in one process, on this machine,
and writes ``benchmarks/results/mnist_fc[-TAG].json``. Example (the issue #2 measurement)::

    python benchmarks/mnist_fc.py --models nemon --epochs 10

The model: n = 100, ReLU, batch 300, Adam lr 1.5e-2, gamma = 0.95, tolerance 1e-4 forward and
backward (relative residual, see ``nemon.solvers``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from nemon.app.train import TrainConfig, train
from nemon.data import load_dataset
from nemon.validation import MAX_THREADS, check_integer

RESULTS = Path(__file__).parent / "results"


def machine(threads: int | None = None) -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run(model, solver, epochs, seed, tol, data, residual, solve_tol=None, threads=None):
    """One run; ``solve_tol``: the training solves' tolerance (evaluation stays at ``tol``)."""
    cfg = TrainConfig(
        model=model, solver=solver, epochs=epochs, seed=seed, tol=tol, residual=residual,
        solve_tol=solve_tol,
    )  # fmt: skip
    out = Path("/tmp") / f"nemon-bench-{model}-{solver}-{seed}"
    start = time.perf_counter()
    result = train(cfg, out, data=data, progress=False, overwrite=True, threads=threads)
    hist = result["history"]
    return {
        "model": model,
        "solver": solver or "default",
        "seed": seed,
        "residual": residual,
        "tol": tol,
        "solve_tol": solve_tol,
        "epochs": hist,
        "best_test_accuracy": max(h["test_accuracy"] for h in hist),
        "mean_train_seconds": sum(h["train_seconds"] for h in hist) / len(hist),
        "max_train_seconds": max(h["train_seconds"] for h in hist),
        "mean_forward_iterations": sum(h["forward_iterations"] for h in hist) / len(hist),
        "mean_backward_iterations": sum(h["backward_iterations"] for h in hist) / len(hist),
        "wall_seconds": time.perf_counter() - start,
    }


def _threads(text: str) -> int:
    """A thread count in the library's range, else a one-line usage error."""
    try:
        value = int(text)
        check_integer("threads", value, 1, MAX_THREADS)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_THREADS}") from None
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["nemon"])
    parser.add_argument("--solvers", nargs="+", default=["default"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--solve-tol", type=float, help="training solves only (default: --tol)")
    parser.add_argument("--residual", default="step", choices=["step", "fixed_point"])
    parser.add_argument("--data-dir")
    parser.add_argument("--tag", default="")
    parser.add_argument("--threads", type=_threads, help="torch threads (default: the idle cores)")
    args = parser.parse_args()
    data = load_dataset("mnist", args.data_dir)
    runs = []
    for model in args.models:
        for solver in args.solvers:
            for seed in args.seeds:
                r = run(
                    model,
                    None if solver == "default" else solver,
                    args.epochs,
                    seed,
                    args.tol,
                    data,
                    args.residual,
                    args.solve_tol,
                    args.threads,
                )
                runs.append(r)
                print(
                    f"{model:6s} {r['solver']:18s} seed {seed}: best acc {r['best_test_accuracy']:.4f}"
                    f"  fwd {r['mean_forward_iterations']:.1f}  bwd {r['mean_backward_iterations']:.1f}"
                    f"  {r['mean_train_seconds']:.2f} s/epoch (max {r['max_train_seconds']:.2f})",
                    flush=True,
                )
    RESULTS.mkdir(exist_ok=True)
    name = "mnist_fc" + (f"-{args.tag}" if args.tag else "") + ".json"
    (RESULTS / name).write_text(
        json.dumps({"machine": machine(args.threads), "runs": runs}, indent=2)
    )
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
