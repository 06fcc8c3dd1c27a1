"""The paper's FC training step, NEMON against the MLP, side by side in one run (issue 33).

    python benchmarks/dense_step.py [--threads 1] [--steps 100] [--tag NAME]

Milliseconds per Adam step at batch 300 of the MLP 784-100-10 and of NEMONDense 784-100
(gamma 0.95) at the training tolerances 1e-2 and 1e-4, their ratios, solver iterations and a
profile of the operators each step runs (calls per step, copies, top self time). Results:
``benchmarks/results/speed/dense-step-TAG.json``; ``nemon bench`` runs the same section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from nemon.app.bench import dense_step_times
from nemon.runs import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "speed"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--tag", default="current")
    p.add_argument("--data-dir", default=os.environ.get("NEMON_DATA_DIR"))
    args = p.parse_args(argv)
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
