"""Run the README's Python examples as a reader would and record how long each takes.

    NEMON_DATA_DIR=../shared/data python benchmarks/readme_examples.py [--only NAME]

Each ```python block that follows a heading of `EXAMPLES` runs in a fresh process in a
temporary folder (its files, such as ``runs/mine``, land there); the wall seconds, the
machine's cores and load average at the start, and the exit status go to
``benchmarks/results/readme-examples.json`` (one entry per example, updated in place), from
which ``benchmarks/render_docs.py`` writes the times into the README.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "readme-examples.json"
#: README heading -> example name
EXAMPLES = {
    "Quick start: a shipped certified model": "quick-start",
    "Your own model in fifteen lines": "fifteen-lines",
}


def examples(readme: str) -> dict[str, str]:
    """The first python block under each heading of `EXAMPLES`."""
    found = {}
    for heading, name in EXAMPLES.items():
        section = readme.split(f"## {heading}", 1)[1]
        match = re.search(r"```python\n(.*?)```", section, re.S)
        found[name] = match.group(1)
    return found


def run(code: str) -> dict:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], cwd=folder, check=False)
        seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 1),
        "returncode": done.returncode,
        "cores": os.cpu_count(),
        "load_average_at_start": round(load, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(EXAMPLES.values()))
    args = parser.parse_args(argv)
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    for name, code in examples((ROOT / "README.md").read_text()).items():
        if args.only and name != args.only:
            continue
        results[name] = run(code)
        print(name, results[name], flush=True)
        OUT.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["returncode"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
