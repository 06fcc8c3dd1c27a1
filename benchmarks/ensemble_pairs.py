"""Clean and interval-certified accuracy of every ensemble of ``--size`` of the given models.

Each model's interval margin bounds (:func:`nemon.margin_bounds`, box clipped to [0, 1], solver
error bound charged, float64) and logits on the MNIST test set are computed once (and cached
under ``--cache`` by the checkpoint's sha256); an ensemble's bounds are their mean, so every
combination is scored without another solve. Same figures as ``nemon.certify`` on the
:class:`nemon.Ensemble` of the members::

    python benchmarks/ensemble_pairs.py runs/a/checkpoint.pt runs/b/checkpoint.pt NAME \
        --eps 0.1 --size 2 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import statistics
from pathlib import Path

import torch
from certified_models import check_models, load

import nemon
from nemon.data import load_dataset
from nemon.lipschitz import certified_by_margins
from nemon.pretrained import _root as pretrained_root


def _key(name: str, eps: float, images: int) -> str:
    path = Path(name) if Path(name).exists() else pretrained_root() / name / "model.safetensors"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"{digest}-eps{eps:g}-n{images}.pt"


def scores(name: str, x, y, eps: float, batch: int, cache: Path | None) -> dict:
    """``bounds`` (images, q) and ``logits`` of one model, computed or read from the cache."""
    file = cache / _key(name, eps, len(x)) if cache else None
    if file is not None and file.exists():
        return torch.load(file)
    model = load(name).eval()
    bounds, logits = [], []
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        bounds.append(nemon.margin_bounds(model, xb, yb, eps, method="interval")[1])
        with torch.no_grad():
            logits.append(model(xb))
    out = {"bounds": torch.cat(bounds), "logits": torch.cat(logits)}
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, file)
    return out


def ensemble_accuracy(parts: list[dict], y) -> dict:
    """Clean and certified accuracy of the ensemble whose members' scores are ``parts``."""
    bounds = torch.stack([p["bounds"] for p in parts]).mean(0)
    logits = torch.stack([p["logits"] for p in parts]).mean(0)
    correct = logits.argmax(1) == y
    return {
        "clean": float(correct.double().mean()),
        "interval": float(certified_by_margins(correct, bounds, y).double().mean()),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="checkpoint files or shipped model names")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--size", type=int, default=2, help="members per ensemble")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--cache", type=Path, help="folder for each model's bounds")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not 1 <= args.size <= len(args.models):
        parser.error(f"--size must be between 1 and the number of models, got {args.size}")
    if not (math.isfinite(args.eps) and args.eps >= 0):
        parser.error(f"--eps must be a finite radius >= 0, got {args.eps}")
    check_models(parser, args.models)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("mnist")
    x, y = data.test_x[: args.images], data.test_y[: args.images]
    parts = {}
    for name in args.models:
        parts[name] = scores(name, x, y, args.eps, args.batch, args.cache)
        print(f"{name}: {json.dumps(ensemble_accuracy([parts[name]], y))}", flush=True)
    rows = []
    for combo in itertools.combinations(args.models, args.size):
        rows.append({"members": list(combo), **ensemble_accuracy([parts[n] for n in combo], y)})
        print(
            f"{' + '.join(combo)}: clean {rows[-1]['clean']:.4f}, certified {rows[-1]['interval']:.4f}"
        )
    certified = [r["interval"] for r in rows]
    summary = {"mean": statistics.mean(certified), "min": min(certified), "max": max(certified)}
    print(f"{len(rows)} ensembles of {args.size}: certified " + json.dumps(summary))
    result = {
        "eps": args.eps,
        "images": len(x),
        "models": {n: ensemble_accuracy([parts[n]], y) for n in args.models},
        "ensembles": rows,
        "certified": summary,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
