"""Clean, PGD and certified accuracy on MNIST for NEMON with and without interval training.

Trains (or resumes) the models, then evaluates the test set (or its first ``--images``) at
eps in {0.05, 0.1, 0.2, 0.3} with the three certificates and PGD; writes
``benchmarks/results/certified.json`` and a markdown table::

    python benchmarks/certified.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nemon import certify
from nemon.app.train import TrainConfig, train
from nemon.attacks import robust_accuracy
from nemon.data import load_dataset

RESULTS = Path(__file__).parent / "results"
EPS = (0.05, 0.1, 0.2, 0.3)


def configs(epochs: int) -> dict[str, TrainConfig]:
    """The paper's FC model, plain and interval-trained (the radius ramps up over the first epochs)."""
    ramp = max(1, epochs // 2)
    return {
        "NEMON (cross-entropy)": TrainConfig(epochs=epochs),
        "NEMON, interval training eps=0.1": TrainConfig(
            epochs=epochs, cert_eps=0.1, cert_weight=0.5, cert_ramp_epochs=max(1, epochs // 3)
        ),
        "NEMON, interval training eps=0.1, lr 2e-3, 2x epochs": TrainConfig(
            epochs=2 * epochs, lr=2e-3, cert_eps=0.1, cert_weight=0.5, cert_ramp_epochs=ramp
        ),
        "NEMON, interval training eps=0.15, weight 0.7, lr 2e-3, 2x epochs": TrainConfig(
            epochs=2 * epochs, lr=2e-3, cert_eps=0.15, cert_weight=0.7, cert_ramp_epochs=ramp
        ),
    }


def batched(fn, model, x, y, size=1000, **kw):
    """``fn(model, x_chunk, y_chunk, **kw)`` over chunks of the data, concatenated."""
    return torch.cat(
        [fn(model, x[i : i + size], y[i : i + size], **kw) for i in range(0, len(x), size)]
    )


@torch.no_grad()
def correct(model, x, y):
    return model(x).argmax(1) == y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--images", type=int, default=None)
    args = parser.parse_args()
    data = load_dataset("mnist")
    x, y = data.test_x[: args.images], data.test_y[: args.images]
    rows = []
    for name, cfg in configs(args.epochs).items():
        folder = Path("runs") / ("certified-" + "".join(c if c.isalnum() else "-" for c in name))
        resume = (folder / "checkpoint.pt").is_file()
        result = train(cfg, folder, data=data, resume=resume, overwrite=not resume, progress=False)
        model = result["model"].eval()
        clean = float(batched(correct, model, x, y).float().mean())
        row = {
            "model": name,
            "clean": clean,
            "lipschitz_bound": float(model.lipschitz_bound().detach()),
        }
        for eps in EPS:
            for method in ("lipschitz", "pairwise", "interval"):
                ok = batched(certify, model, x, y, eps=eps, method=method)
                row[f"{method}@{eps}"] = float(ok.float().mean())
            attacked = batched(robust_accuracy, model, x, y, eps=eps, attack="pgd", steps=20)
            row[f"pgd@{eps}"] = float(attacked.float().mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "certified.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| model | clean | " + " | ".join(f"eps={e}: interval / PGD" for e in EPS) + " |",
        "|---|---|" + "---|" * len(EPS),
    ]
    for r in rows:
        cells = " | ".join(f"{r[f'interval@{e}']:.4f} / {r[f'pgd@{e}']:.4f}" for e in EPS)
        lines.append(f"| {r['model']} | {r['clean']:.4f} | {cells} |")
    (RESULTS / "certified.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
