"""Two training runs sharing the machine: slowdown of each against a lone run.

    python benchmarks/threads.py [--epochs 2] [--preset mnist-fc]

For each thread setting (``auto``, the default, and torch's own default of one thread per
core), times one run alone and two identical runs started together, and reports each concurrent
run's wall time over the lone run's (issue #12: at most 2.5x). Results: benchmarks/results/threads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def command(out: Path, preset: str, epochs: int, threads: str) -> list[str]:
    cmd = [sys.executable, "-m", "nemon", "train", "--preset", preset, "--epochs", str(epochs)]
    return cmd + ["--out", str(out), "--no-progress", "--threads", threads]


def timed_runs(n: int, preset: str, epochs: int, threads: str) -> list[float]:
    """Start ``n`` runs together; the wall time of each."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                command(Path(tmp) / f"run{i}", preset, epochs, threads),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i in range(n)
        ]
        times = []
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"training run failed: {err.decode()[-500:]}")
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist-fc")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=["auto", str(torch.get_num_threads())])
    args = parser.parse_args()
    rows = []
    for threads in args.settings:
        alone = timed_runs(1, args.preset, args.epochs, threads)[0]
        together = timed_runs(2, args.preset, args.epochs, threads)
        rows.append(
            {
                "threads": threads,
                "alone_s": alone,
                "concurrent_s": together,
                "slowdown": [t / alone for t in together],
            }
        )
        print(
            f"--threads {threads}: alone {alone:.1f} s; two together {together[0]:.1f} s and "
            f"{together[1]:.1f} s: slowdown {max(rows[-1]['slowdown']):.2f}x",
            flush=True,
        )
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "preset": args.preset,
        "epochs": args.epochs,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "threads.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
