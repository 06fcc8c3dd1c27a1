"""The paper's FC training step, NEMON against the MLP, side by side in one run (issue 33).

    python benchmarks/dense_step.py [--threads 1] [--steps 100] [--tag NAME]
    python benchmarks/dense_step.py --against 344b784 --rounds 3   # before/after, alternating

Milliseconds per Adam step at batch 300 of the MLP 784-100-10 and of NEMONDense 784-100
(gamma 0.95) at the training tolerances 1e-2 and 1e-4, and of `EagerFloor` (the same arithmetic
as 1e-2 and nothing else), their ratios, solver iterations and a profile of the operators each
step runs (calls per step, copies, top self time). Results:
``benchmarks/results/speed/dense-step-TAG.json``; ``nemon bench`` runs the same section.

``--against REV`` times the library at git revision ``REV`` (a temporary worktree, with this
timing code copied in) and the current one in alternating processes, ``--rounds`` each, and
writes the per-round ratios and milliseconds and their medians to ``dense-step-ab.json``: a
before/after on a machine whose load drifts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from nemon.app.bench import dense_step_times
from nemon.runs import write_text_atomic
from nemon.solve_log import open_logs, report
from nemon.solvers import SolverStats

RESULTS = Path(__file__).resolve().parent / "results" / "speed"


ROOT = Path(__file__).resolve().parents[1]


class _FixedSolve(torch.autograd.Function):
    """``x = relu(A x + z)`` by ``forward`` averaged steps from 0 (the first without a product)
    and its adjoint by ``backward`` steps: the library's arithmetic at 1e-2, nothing else."""

    @staticmethod
    def forward(ctx, z, A, steps, forward: int, backward: int):
        x = torch.relu(z).mul_(steps)
        for _ in range(forward - 1):
            x.lerp_(torch.addmm(z, x, A.T).relu_(), steps)
        ctx.save_for_backward(x, z, A, steps)
        ctx.backward_steps = backward
        return x

    @staticmethod
    def backward(ctx, g):
        x, z, A, steps = ctx.saved_tensors
        J = (torch.addmm(z, x, A.T) > 0).to(g.dtype)
        p = g.clone()
        for _ in range(ctx.backward_steps):
            p.lerp_(torch.addmm(g, J * p, A), steps)
        w = J * p
        return w, w.T @ x, None, None, None


class EagerFloor(torch.nn.Module):
    """The NEMON FC step with nothing but its arithmetic, in plain eager PyTorch: eq. (17) without
    its rounding, per-coordinate steps, a fixed 4 + 4 iterations (what the library's 1e-2 solves
    take), no stopping rule, error bound, measure or input checks. What the library's step costs
    above this is its overhead; what this costs above the MLP is not."""

    def __init__(self, gamma: float = 0.95, hidden: int = 100) -> None:
        super().__init__()
        self.gamma = gamma
        self.B = torch.nn.Linear(784, hidden)
        self.T = torch.nn.Parameter(torch.empty(hidden, hidden).uniform_(-0.1, 0.1))
        self.readout = torch.nn.Linear(hidden, 10)

    def forward(self, u):
        fixed = SolverStats(iterations=4, converged=True, method="fixed")
        report(open_logs(), "state", "forward", fixed)  # its 4 + 4 iterations, as solves report
        report(open_logs(), "state", "backward", fixed)
        T = self.T
        t = torch.diagonal(T)
        diagonal = self.gamma + 2 * t.clamp(max=0) - (T.abs().sum(1) - t.abs())
        A = T + torch.diag_embed(diagonal - t)
        steps = 1.0 / (1.0 - diagonal.detach().clamp(max=0))
        return self.readout(_FixedSolve.apply(self.B(u.flatten(1)), A, steps, 4, 4))


_ONE_RUN = (
    "import json, sys, torch; torch.set_num_threads({threads}); sys.path.insert(0, {src!r}); "
    "import nemon; assert nemon.__file__.startswith({src!r}), nemon.__file__; "
    "import nemon.training as t; t.adam = getattr(t, 'adam', None) or "
    "(lambda ps, lr: torch.optim.Adam(ps, lr=lr)); "  # older libraries: fit's plain Adam
    "from nemon.app.bench import dense_step_times; "
    "print(json.dumps(dense_step_times({data!r}, steps={steps})))"
)


def _timed_in(src: Path, args) -> list[dict]:
    code = _ONE_RUN.format(threads=args.threads, src=str(src), data=args.data_dir, steps=args.steps)
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _medians(rounds: dict[str, list[dict]]) -> dict:
    """Per side, the median over rounds of each model's figure."""
    return {
        name: {m: statistics.median(r[m] for r in runs) for m in runs[0]}
        for name, runs in rounds.items()
    }


def compare(args) -> int:
    """Rounds of the old and the current library in turn; ratios to the MLP per round."""
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        added = subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", str(old), args.against],
            capture_output=True, text=True,
        )  # fmt: skip
        if added.returncode != 0:
            raise SystemExit(f"--against {args.against}: {added.stderr.strip().splitlines()[-1]}")
        try:
            shutil.copy(ROOT / "src/nemon/app/bench.py", old / "src/nemon/app/bench.py")
            rounds, ms = {"before": [], "after": []}, {"before": [], "after": []}
            for r in range(args.rounds):
                for name, src in (("before", old / "src"), ("after", ROOT / "src")):
                    rows = _timed_in(src, args)
                    rounds[name].append({row["model"]: row["over_mlp"] for row in rows})
                    ms[name].append({row["model"]: row["ms_per_step"] for row in rows})
                    print(f"round {r + 1} {name:6s}", json.dumps(rounds[name][-1]), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)])
    medians, median_ms = _medians(rounds), _medians(ms)
    print("medians", json.dumps(medians), "ms", json.dumps(median_ms))
    result = {"against": args.against, "threads": args.threads, "rounds": rounds,
              "median_over_mlp": medians, "ms_per_step": ms,
              "median_ms_per_step": median_ms}  # fmt: skip
    write_text_atomic(json.dumps(result, indent=2) + "\n", RESULTS / "dense-step-ab.json")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--tag", default="current")
    p.add_argument("--data-dir", default=os.environ.get("NEMON_DATA_DIR"))
    p.add_argument("--against", metavar="REV", help="before/after against this git revision")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.against:
        return compare(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = dense_step_times(args.data_dir, steps=args.steps, extra={"eager floor": EagerFloor()})
    result = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "rows": rows,
    }
    for r in rows:
        prof = r["profile"]
        print(
            f"{r['model']:16s} {r['ms_per_step']:6.2f} ms/step  {r['over_mlp']:.2f}x MLP  "
            f"iterations {r['forward_iterations']}/{r['backward_iterations']}  "
            f"ops/step {prof['aten_calls_per_step']:.0f} (copy_ {prof['copy_per_step']:.0f}, "
            f"_to_copy {prof['to_copy_per_step']:.0f})"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"dense-step-{args.tag}.json"
    write_text_atomic(json.dumps(result, indent=2) + "\n", out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
