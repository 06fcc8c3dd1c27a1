"""The paper's FC training step, NEMON against the MLP, side by side in one run (issue 33).

    python benchmarks/dense_step.py [--threads 1] [--steps 100] [--tag NAME]
    python benchmarks/dense_step.py --against 344b784 --rounds 3   # before/after, alternating

Milliseconds per Adam step at batch 300 of the MLP 784-100-10 and of NEMONDense 784-100
(gamma 0.95) at the training tolerances 1e-2 and 1e-4, their ratios, solver iterations and a
profile of the operators each step runs (calls per step, copies, top self time). Results:
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

RESULTS = Path(__file__).resolve().parent / "results" / "speed"


ROOT = Path(__file__).resolve().parents[1]
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
    medians = {
        name: {m: statistics.median(r[m] for r in runs) for m in runs[0]}
        for name, runs in rounds.items()
    }
    median_ms = {
        name: {m: statistics.median(r[m] for r in runs) for m in runs[0]}
        for name, runs in ms.items()
    }
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
    rows = dense_step_times(args.data_dir, steps=args.steps)
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
