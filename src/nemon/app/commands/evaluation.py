"""nemon eval and nemon certify: accuracy and certified accuracy on the test set."""

from __future__ import annotations

import json

from ...certificates import CERTIFICATES, default_certificate
from ..arguments import POSITIVE, RADIUS, add_input_range, add_model, input_range_of
from ..checkpoints import (
    json_line,
)
from ..loading import load_test, load_with_data
from ..train import ConvergenceTally, certified_accuracy, evaluate

__all__ = ["add", "run_eval", "run_certify"]


def add(sub, common) -> None:
    for name, help_text in (
        ("eval", "accuracy, Lipschitz bound and iterations of a checkpoint"),
        ("certify", "certified accuracy of a checkpoint at radii --eps"),
    ):
        p = sub.add_parser(name, help=help_text, parents=[common])
        add_model(p)
        p.add_argument("--data-dir")
        p.add_argument("--test-limit", type=POSITIVE)
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        p.add_argument("--json", help="write the results to this JSON file")
        if name == "certify":
            p.add_argument("--eps", type=RADIUS, nargs="+", default=[1e-4, 1e-3, 1e-2])
            p.add_argument(
                "--method",
                nargs="+",
                choices=CERTIFICATES,
                help="certificates to compute (default: interval for NEMON and IDL, pairwise for "
                "MON; linear: interval tightened by linear bounds through the encoder)",
            )
            add_input_range(p, "intersected with the ball")
            p.add_argument("--plot", help="write certified accuracy vs eps to this PNG")


def run_eval(args) -> dict:
    model, x, y = load_test(args)
    with ConvergenceTally():
        result = evaluate(model, x, y)
    result["images"] = len(x)
    result["lipschitz_bound"] = float(model.lipschitz_bound().detach())
    print(json.dumps(json.loads(json_line(result)), indent=2))  # strict JSON: NaN is null
    return result


def run_certify(args) -> dict:
    model, data, x, y = load_with_data(args)
    span = input_range_of(args, data["input_range"], x)
    result = {
        "lipschitz_bound": float(model.lipschitz_bound().detach()),
        "eps": args.eps,
        "input_range": span,
    }
    args.method = args.method or [default_certificate(model)]
    result["images"] = len(x)
    with ConvergenceTally():
        for method in args.method:
            result[method] = certified_accuracy(model, x, y, args.eps, method, input_range=span)
    print(
        f"certified accuracy on {len(x)} test images; Lipschitz bound {result['lipschitz_bound']:.4g}"
    )
    print("eps        " + "  ".join(f"{m:>10}" for m in args.method))
    for e in args.eps:
        print(f"{e:<10g} " + "  ".join(f"{result[m][e]:>10.4f}" for m in args.method))
    return result
