"""nemon attack: accuracy under attacks at several radii."""

from __future__ import annotations

from ...attacks import ATTACKS, accuracy_under_attack
from ..arguments import (
    NONNEGATIVE,
    POSITIVE,
    RADIUS,
    add_input_range,
    add_model,
    input_range_of,
)
from ..loading import load_with_data
from ..train import ConvergenceTally

__all__ = ["add", "run"]


def add(sub, common) -> None:
    p = sub.add_parser(
        "attack",
        help="accuracy of a checkpoint under an l_inf attack at radii --eps",
        parents=[common],
    )
    add_model(p)
    p.add_argument("--attack", nargs="+", default=["pgd"], choices=sorted(ATTACKS))
    p.add_argument("--eps", type=RADIUS, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3])
    p.add_argument("--steps", type=POSITIVE, default=20, help="PGD steps")
    p.add_argument("--restarts", type=POSITIVE, default=1, help="PGD restarts")
    p.add_argument("--seed", type=NONNEGATIVE, default=0)
    add_input_range(p, "where the attack's points stay")
    p.add_argument("--test-limit", type=POSITIVE, help="use only the first N test images")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--data-dir")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--plot", help="write accuracy vs eps to this PNG")


def run(args) -> dict:
    model, data, x, y = load_with_data(args)
    span = input_range_of(args, data["input_range"], x)
    result = {"eps": args.eps, "images": len(x), "input_range": span}
    with ConvergenceTally():
        for name in args.attack:
            kw = {"steps": args.steps, "restarts": args.restarts} if name == "pgd" else {}
            kw["input_range"] = span
            if name in ("pgd", "noise"):
                kw["seed"] = args.seed
            result[name] = accuracy_under_attack(
                model, x, y, args.eps, attack=name, batch_size=500, **kw
            )
    print(f"accuracy under attack on {len(x)} test images")
    print("eps        " + "  ".join(f"{a:>10}" for a in args.attack))
    for i, e in enumerate(args.eps):
        print(f"{e:<10g} " + "  ".join(f"{result[a][i]:>10.4f}" for a in args.attack))
    return result
