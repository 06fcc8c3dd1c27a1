"""Clean, certified and PGD accuracy of a model on the MNIST test set, side by side.

For each radius: interval- and pairwise-certified accuracy (box clipped to [0, 1], solver error
bound charged, float64) and accuracy under PGD (cross-entropy, ``--steps`` steps, ``--restarts``
random restarts); every certified image that PGD breaks is counted as a violation (must be 0)::

    python benchmarks/certified_models.py mnist-cert-0.1 --eps 0.1 --json out.json

Several models are evaluated as one :class:`nemon.Ensemble` (the mean of their logits).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

import nemon
from nemon.app.train import load_checkpoint
from nemon.attacks import pgd
from nemon.data import load_dataset


def load(*names_or_paths: str):
    """A checkpoint file or shipped model name; several make an ensemble."""
    models = [
        load_checkpoint(p)[0] if Path(p).exists() else nemon.load_pretrained(p)
        for p in names_or_paths
    ]
    return models[0] if len(models) == 1 else nemon.Ensemble(models).eval()


def check_models(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """Refuse, in one line, a model that is neither a file nor a shipped model's name."""
    for name in names:
        if not Path(name).exists() and name not in nemon.pretrained_names():
            parser.error(f"{name} is neither a checkpoint file nor a shipped model's name")


def evaluate(model, x, y, radii, steps=50, restarts=2, batch=500, log=print) -> dict:
    """Clean, interval- and pairwise-certified and PGD accuracy, and violations, per radius."""
    counts = {"clean": 0}
    for e in radii:
        counts.update({f"interval@{e:g}": 0, f"pairwise@{e:g}": 0, f"pgd@{e:g}": 0})
        counts[f"violations@{e:g}"] = 0
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        with torch.no_grad():
            correct = model(xb).argmax(1) == yb
        counts["clean"] += int(correct.sum())
        for e in radii:
            inter = nemon.certify(model, xb, yb, e, method="interval")
            pair = nemon.certify(model, xb, yb, e, method="pairwise")
            adv = pgd(model, xb, yb, e, steps=steps, restarts=restarts, seed=i)
            with torch.no_grad():
                robust = (model(adv).argmax(1) == yb) & correct
            counts[f"interval@{e:g}"] += int(inter.sum())
            counts[f"pairwise@{e:g}"] += int(pair.sum())
            counts[f"pgd@{e:g}"] += int(robust.sum())
            counts[f"violations@{e:g}"] += int((inter & ~robust).sum() + (pair & ~robust).sum())
        done = min(i + batch, len(x))
        log(f"{done}/{len(x)} " + json.dumps({k: v / done for k, v in counts.items()}))
    return {
        "images": len(x),
        "pgd": {"steps": steps, "restarts": restarts},
        "seconds": round(time.perf_counter() - start, 1),
        **{k: (v if k.startswith("violations") else v / len(x)) for k, v in counts.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model", nargs="+", help="checkpoint file or shipped model name (several: their ensemble)"
    )
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json")
    args = parser.parse_args()
    check_models(parser, args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(*args.model)
    data = load_dataset("mnist")
    x, y = data.test_x[: args.images], data.test_y[: args.images]
    log = functools.partial(print, flush=True)
    result = {
        "model": args.model[0] if len(args.model) == 1 else args.model,
        **evaluate(model, x, y, args.eps, args.steps, args.restarts, args.batch, log),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
