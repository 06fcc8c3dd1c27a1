"""nemon reproduce: the paper's experiments."""

from __future__ import annotations

from pathlib import Path

from ..arguments import POSITIVE, RADIUS
from ..reproduce import reproduce_conv, reproduce_mnist

__all__ = ["add", "run"]


def add(sub, common) -> None:
    p = sub.add_parser(
        "reproduce", help="the paper's experiments: mnist (6.2) or cifar10 (6.3)", parents=[common]
    )
    p.add_argument("experiment", choices=["mnist", "cifar10"])
    p.add_argument("--out", help="results folder (default runs/reproduce-EXPERIMENT)")
    p.add_argument("--runs", type=POSITIVE, default=None, help="runs per model (mnist: 5)")
    p.add_argument("--epochs", type=POSITIVE, default=10)
    p.add_argument("--lams", type=RADIUS, nargs="*", default=[1e-5, 1e-4, 1e-3])
    p.add_argument("--train-limit", type=POSITIVE)
    p.add_argument("--test-limit", type=POSITIVE)
    p.add_argument("--attack-limit", type=POSITIVE, default=2000)
    p.add_argument("--quick", action="store_true", help="cifar10: Fashion-MNIST, small, on CPU")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> dict:
    out = args.out or f"runs/reproduce-{args.experiment}"
    if args.experiment == "mnist":
        result = reproduce_mnist(
            out,
            runs=args.runs or 5,
            epochs=args.epochs,
            lams=tuple(args.lams),
            data_dir=args.data_dir,
            device=args.device,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
            attack_limit=args.attack_limit,
            progress=False if args.no_progress else None,
        )
        print((Path(out) / "table.md").read_text())
    else:
        result = reproduce_conv(
            out,
            quick=args.quick,
            runs=args.runs or 1,
            data_dir=args.data_dir,
            device=args.device,
            progress=False if args.no_progress else None,
        )
        for name, r in result["models"].items():
            print(
                f"{name}: best acc {r['summary']['best_accuracy'][0]:.4f}, "
                f"Lipschitz {r['lipschitz']:.4g}, PGD accuracy {result['pgd']['accuracy'][name]}"
            )
    print(f"results, table and figures in {out}")
    return {"out": out}
