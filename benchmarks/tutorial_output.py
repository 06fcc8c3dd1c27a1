"""Run the tutorial's code blocks in order, as one script, and record what each prints.

    NEMON_DATA_DIR=../shared/data python benchmarks/tutorial_output.py

Writes ``benchmarks/results/tutorial-output.json`` (each block's standard output, the seconds
the whole took); ``benchmarks/render_docs.py`` shows each output under its block.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "tutorial.md"
OUT = ROOT / "benchmarks" / "results" / "tutorial-output.json"


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def main() -> int:
    namespace: dict = {"__name__": "tutorial"}
    outputs = []
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        here = os.getcwd()
        os.chdir(folder)
        try:
            for i, block in enumerate(code_blocks(PAGE.read_text())):
                printed = io.StringIO()
                with contextlib.redirect_stdout(printed):
                    exec(compile(block, f"tutorial.md block {i + 1}", "exec"), namespace)
                outputs.append(printed.getvalue())
        finally:
            os.chdir(here)
    result = {
        "outputs": outputs,
        "seconds": round(time.perf_counter() - start, 1),
        "cores": os.cpu_count(),
        "load_average_at_start": round(load, 2),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
