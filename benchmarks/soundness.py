"""Soundness at benchmark scale: no input certified at eps is broken by PGD at eps.

Trains NEMON and IDL models on MNIST (several seeds, with and without the Lipschitz regulariser and
interval training) and draws random models, then certifies test images with the Lipschitz,
pairwise and interval certificates at several radii and attacks every certified image with PGD
(restarts, many steps). Writes ``benchmarks/results/soundness.json``; any violation is a bug::

    python benchmarks/soundness.py --images 500
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nemon import build_model, certify
from nemon.app.train import TrainConfig, train
from nemon.attacks import pgd
from nemon.data import load_dataset

RESULTS = Path(__file__).parent / "results"


def models(data, quick: bool):
    limit = 6000 if quick else 30000
    base = dict(epochs=1 if quick else 2, train_limit=limit, hidden=64)
    configs = [
        TrainConfig(model="nemon", seed=0, **base),
        TrainConfig(model="nemon", seed=1, lam=1e-3, **base),
        TrainConfig(model="nemon", seed=2, cert_eps=0.1, **base),
        TrainConfig(model="idl", seed=3, **base),
    ]
    for cfg in configs:
        name = f"{cfg.model}-seed{cfg.seed}-lam{cfg.lam:g}-cert{cfg.cert_eps:g}"
        yield (
            name,
            train(
                cfg, Path("/tmp") / f"nemon-sound-{name}", data=data, progress=False, overwrite=True
            )["model"],
        )
    for seed in range(2):
        torch.manual_seed(100 + seed)
        yield f"random-{seed}", build_model("nemon", hidden=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.001, 0.01, 0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    data = load_dataset("mnist")
    x, y = data.test_x[: args.images], data.test_y[: args.images]
    rows, violations = [], 0
    for name, model in models(data, args.quick):
        model.eval()
        for eps in args.eps:
            adv = pgd(model, x, y, eps, steps=40, restarts=3, seed=0)
            with torch.no_grad():
                broken = model(adv).argmax(1) != y
            row = {"model": name, "eps": eps, "broken_by_pgd": int(broken.sum())}
            for method in ("lipschitz", "pairwise", "interval"):
                ok = certify(model, x, y, eps, method=method)
                row[method] = int(ok.sum())
                row[f"{method}_violations"] = int((ok & broken).sum())
                violations += row[f"{method}_violations"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    # a row tests a certificate only where PGD breaks points and the certificate certifies some
    informative = {
        m: sum(1 for r in rows if r["broken_by_pgd"] > 0 and r[m] > 0)
        for m in ("lipschitz", "pairwise", "interval")
    }
    print(f"informative rows (PGD breaks some, certificate certifies some): {informative}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "soundness.json"
    out.write_text(
        json.dumps(
            {
                "images": args.images,
                "rows": rows,
                "violations": violations,
                "informative_rows": informative,
            },
            indent=2,
        )
    )
    print(f"{len(rows)} (model, eps) pairs, {violations} violations; wrote {out}")


if __name__ == "__main__":
    main()
