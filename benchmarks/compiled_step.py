"""Compiled against eager: one Adam step of a NEMON dense and a NEMON conv model on one thread,
eager and under ``torch.compile(fullgraph=True)`` (compile time and step medians, interleaved in
one run; `nemon.app.bench.compiled_step_times`). Writes benchmarks/results/compiled-steps.json.

    python benchmarks/compiled_step.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from nemon.app.bench import compiled_step_times
from nemon.runs import write_text_atomic

OUT = Path(__file__).resolve().parent / "results" / "compiled-steps.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = compiled_step_times(repeat=args.repeat)
    result = {
        "command": f"python benchmarks/compiled_step.py --repeat {args.repeat}",
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "load_average": list(os.getloadavg()),
        },
        "rows": rows,
    }
    write_text_atomic(json.dumps(result, indent=2) + "\n", OUT)
    for r in rows:
        print(
            f"{r['model']:20s} eager {r['eager_ms']:.1f} ms, compiled {r['compiled_ms']:.1f} ms "
            f"({r['compiled_over_eager']:.2f}x), compiled in {r['compile_seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
