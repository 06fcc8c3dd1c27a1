"""Re-evaluate a shipped model's card: its ``evaluation.json`` and the card's results block
(from "Full MNIST test set" to the reproduce line) replaced by a new evaluation, the rest of the
card kept (training details need the run folder, see ``ship_models.py``)::

    python benchmarks/certified_models.py mnist-cert-0.1 --eps 0.1 --threads 1 --json eval.json
    python benchmarks/refresh_cards.py mnist-cert-0.1 eval.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ship_models import ROOT, _results

import nemon


def refresh(name: str, evaluation: dict) -> Path:
    folder = ROOT / "src/nemon/pretrained" / name
    card = (folder / "card.md").read_text()
    block = re.compile(r"Full MNIST test set .*?\nReproduce: [^\n]*", re.S)
    if not block.search(card):
        raise SystemExit(f"{folder / 'card.md'} has no results block to replace")
    card = block.sub(lambda _: _results(name, evaluation), card, count=1)
    (folder / "card.md").write_text(card)
    (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=nemon.pretrained_names())
    parser.add_argument("evaluation", type=Path)
    args = parser.parse_args()
    if not args.evaluation.is_file():
        parser.error(f"{args.evaluation} is not a file")
    evaluation = json.loads(args.evaluation.read_text())
    if evaluation.get("images") != 10000:
        parser.error("a card states the full test set: evaluate all 10000 images")
    print(f"refreshed {refresh(args.name, evaluation)}")


if __name__ == "__main__":
    main()
