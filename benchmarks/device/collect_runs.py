"""Print every epoch record of the run folders under a directory as JSON lines, tagged by run.

python benchmarks/device/collect_runs.py /tmp/r > runs.jsonl
"""

import json
import sys
from pathlib import Path

for folder in sorted(Path(sys.argv[1]).iterdir()):
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            print(json.dumps({"run": folder.name, **json.loads(line)}))
