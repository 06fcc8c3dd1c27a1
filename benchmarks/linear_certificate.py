"""What the linear certificate adds to interval on the shipped models, all MNIST test images.

    python benchmarks/linear_certificate.py [--models NAME ...] [--limit N] [--threads 2]

Per model, at its radius: images certified by ``method="interval"`` and by ``method="linear"``
(box clipped to [0, 1], errors charged, float64), the seconds of each, and PGD (50 steps, 2
restarts) on every image only linear certifies (a break there would be a violation; must be 0).
Results: ``benchmarks/results/certified-models/linear-vs-interval.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import nemon
from nemon.data import load_dataset
from nemon.runs import write_text_atomic

OUT = Path(__file__).resolve().parent / "results" / "certified-models" / "linear-vs-interval.json"
RADIUS = {"mnist-cert-0.3": 0.3}  # the others certify at 0.1


def compare(name: str, x, y, batch: int = 500) -> dict:
    model = nemon.load_pretrained(name).eval()
    eps = RADIUS.get(name, 0.1)
    counts = {"interval": 0, "linear": 0, "violations": 0}
    seconds = {"interval": 0.0, "linear": 0.0}
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        ok = {}
        for method in ("interval", "linear"):
            start = time.perf_counter()
            ok[method] = nemon.certify(model, xb, yb, eps, method=method)
            seconds[method] += time.perf_counter() - start
            counts[method] += int(ok[method].sum())
        new = ok["linear"] & ~ok["interval"]
        if bool(new.any()):
            adv = nemon.pgd(model, xb[new], yb[new], eps, steps=50, restarts=2, seed=i)
            with torch.no_grad():
                counts["violations"] += int((model(adv).argmax(1) != yb[new]).sum())
    n = len(x)
    return {
        "model": name,
        "eps": eps,
        "images": n,
        "interval": counts["interval"] / n,
        "linear": counts["linear"] / n,
        "added": (counts["linear"] - counts["interval"]) / n,
        "violations": counts["violations"],
        "seconds": seconds,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=nemon.pretrained_names())
    p.add_argument("--limit", type=int, help="first N test images (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", args.data_dir)
    x, y = data.test_x[: args.limit], data.test_y[: args.limit]
    rows = []
    for name in args.models:
        rows.append(compare(name, x, y))
        r = rows[-1]
        print(
            f"{name:40s} eps {r['eps']:g}: interval {r['interval']:.4f}  linear {r['linear']:.4f}"
            f"  (+{r['added']:.4f}, violations {r['violations']})  "
            f"{r['seconds']['interval']:.0f} s / {r['seconds']['linear']:.0f} s",
            flush=True,
        )
    if args.limit is None:
        write_text_atomic(json.dumps({"rows": rows}, indent=2) + "\n", OUT)
        print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
