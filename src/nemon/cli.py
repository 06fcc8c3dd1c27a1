"""nemon: train, evaluate, certify, attack, benchmark and reproduce implicit models."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from .data import DataError, load_dataset
from .train import PRESETS, TrainConfig, certified_accuracy, evaluate, load_checkpoint, train

__all__ = ["main", "build_parser"]


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train an implicit model (NEMON, MON or IDL)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="mnist-fc")
    p.add_argument("--model", choices=["nemon", "mon", "idl"])
    p.add_argument("--arch", choices=["dense", "conv"])
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist", "cifar10"])
    p.add_argument("--hidden", type=int, help="state size (dense) or channels (conv)")
    p.add_argument("--gamma", type=float, help="contraction bound, < 1")
    p.add_argument("--activation", choices=["relu", "leaky_relu", "tanh", "identity"])
    p.add_argument(
        "--solver", help="averaged | anderson | picard | peaceman_rachford | forward_backward"
    )
    p.add_argument("--tol", type=float, help="relative residual tolerance")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lam", type=float, help="weight of the Lipschitz regulariser (18)")
    p.add_argument("--cert-eps", type=float, help="certified (interval) training radius")
    p.add_argument("--cert-weight", type=float, help="weight of the worst-case loss (0..1)")
    p.add_argument("--cert-ramp-epochs", type=int, help="epochs to ramp the radius from 0")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--train-limit", type=int, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, help="use only the first N test images")
    p.add_argument("--out", default="runs/latest", help="run folder (checkpoint, metrics)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")


def _add_eval(sub) -> None:
    for name, help_text in (
        ("eval", "accuracy, Lipschitz bound and iterations of a checkpoint"),
        ("certify", "certified accuracy of a checkpoint at radii --eps"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("checkpoint")
        p.add_argument("--data-dir")
        p.add_argument("--test-limit", type=int)
        p.add_argument("--json", help="write the results to this JSON file")
        if name == "certify":
            p.add_argument("--eps", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
            p.add_argument(
                "--method",
                nargs="+",
                default=["lipschitz", "pairwise"],
                choices=["lipschitz", "pairwise", "interval"],
            )
            p.add_argument("--plot", help="write certified accuracy vs eps to this PNG")


def _add_attack(sub) -> None:
    p = sub.add_parser(
        "attack", help="accuracy of a checkpoint under an l_inf attack at radii --eps"
    )
    p.add_argument("checkpoint")
    p.add_argument(
        "--attack", nargs="+", default=["pgd"], choices=["pgd", "fgsm", "inversion", "noise"]
    )
    p.add_argument("--eps", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3])
    p.add_argument("--steps", type=int, default=20, help="PGD steps")
    p.add_argument("--restarts", type=int, default=1, help="PGD restarts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--data-dir")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--plot", help="write accuracy vs eps to this PNG")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="solver / scaling / epoch-time benchmark (JSON and plot)")
    p.add_argument("--checkpoint", help="model for the solver comparison (default: untrained)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--epochs", type=int, default=1, help="MNIST epochs per family")
    p.add_argument("--quick", action="store_true", help="tiny sizes, no MNIST epochs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir")


def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="the paper's experiments: mnist (6.2) or cifar10 (6.3)")
    p.add_argument("experiment", choices=["mnist", "cifar10"])
    p.add_argument("--out", help="results folder (default runs/reproduce-EXPERIMENT)")
    p.add_argument("--runs", type=int, default=None, help="runs per model (mnist: 5)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lams", type=float, nargs="*", default=[1e-5, 1e-4, 1e-3])
    p.add_argument("--train-limit", type=int)
    p.add_argument("--test-limit", type=int)
    p.add_argument("--attack-limit", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="cifar10: Fashion-MNIST, small, on CPU")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemon", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_attack(sub)
    _add_bench(sub)
    _add_reproduce(sub)
    return parser


def _config(args) -> TrainConfig:
    values = dict(PRESETS[args.preset])
    for f in fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return TrainConfig(**values)


def _init_distributed(cfg: TrainConfig) -> TrainConfig:
    """Join the process group ``torchrun`` describes (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return cfg
    cuda = cfg.device.startswith("cuda")
    if cuda:
        cfg = replace(cfg, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        torch.cuda.set_device(torch.device(cfg.device))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return cfg


def _cmd_train(args) -> dict:
    cfg = _init_distributed(_config(args))
    try:
        result = train(
            cfg, args.out, data_dir=args.data_dir, resume=args.resume, progress=not args.no_progress
        )
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if os.environ.get("RANK", "0") != "0":
        return {"config": asdict(cfg), "history": result["history"]}
    best = max(h["test_accuracy"] for h in result["history"])
    last = result["history"][-1]
    print(
        f"best test accuracy {best:.4f}; last epoch: fwd {last['forward_iterations']:.1f} "
        f"bwd {last['backward_iterations']:.1f} iterations, {last['train_seconds']:.2f} s, "
        f"Lipschitz bound {last['lipschitz']:.4g}"
    )
    return {"config": asdict(cfg), "history": result["history"]}


def _test_data(args, ckpt):
    data = load_dataset(ckpt["config"]["dataset"], args.data_dir)
    n = args.test_limit
    return (data.test_x[:n], data.test_y[:n]) if n else (data.test_x, data.test_y)


def _cmd_eval(args) -> dict:
    model, ckpt = load_checkpoint(args.checkpoint)
    x, y = _test_data(args, ckpt)
    result = evaluate(model, x, y)
    result["lipschitz_bound"] = float(model.lipschitz_bound().detach())
    print(json.dumps(result, indent=2))
    return result


def _cmd_certify(args) -> dict:
    model, ckpt = load_checkpoint(args.checkpoint)
    x, y = _test_data(args, ckpt)
    result = {"lipschitz_bound": float(model.lipschitz_bound().detach()), "eps": args.eps}
    for method in args.method:
        result[method] = certified_accuracy(model, x, y, args.eps, method)
    print(f"Lipschitz bound {result['lipschitz_bound']:.4g}")
    print("eps        " + "  ".join(f"{m:>10}" for m in args.method))
    for e in args.eps:
        print(f"{e:<10g} " + "  ".join(f"{result[m][e]:>10.4f}" for m in args.method))
    if args.plot:
        curves = {m: [result[m][e] for e in args.eps] for m in args.method}
        _plot_curves(curves, args.eps, args.plot, "certified accuracy")
    return result


def _plot_curves(curves: dict, eps: list[float], path: str, ylabel: str) -> None:
    from .reproduce import _plot_attack

    _plot_attack(curves, eps, Path(path), ylabel)


def _cmd_attack(args) -> dict:
    from .reproduce import attack_curve

    model, ckpt = load_checkpoint(args.checkpoint)
    x, y = _test_data(args, ckpt)
    result = {"eps": args.eps}
    for name in args.attack:
        kw = {"steps": args.steps, "restarts": args.restarts} if name == "pgd" else {}
        if name in ("pgd", "noise"):
            kw["seed"] = args.seed
        result[name] = attack_curve(model, x, y, args.eps, attack=name, batch_size=500, **kw)
    print("eps        " + "  ".join(f"{a:>10}" for a in args.attack))
    for i, e in enumerate(args.eps):
        print(f"{e:<10g} " + "  ".join(f"{result[a][i]:>10.4f}" for a in args.attack))
    if args.plot:
        _plot_curves({a: result[a] for a in args.attack}, args.eps, args.plot, "attack accuracy")
    return result


def _cmd_bench(args) -> dict:
    from .bench import run_bench  # matplotlib and friends only when benchmarking

    result = run_bench(
        args.out, args.checkpoint, args.data_dir, args.device, args.quick, args.epochs
    )
    print(f"matmul peak {result['matmul_peak_gflops']:.1f} GFLOP/s")
    for r in result["solvers"]:
        if "forward_iterations" in r:
            print(
                f"{r['solver']:34s} fwd {r['forward_iterations']:4d} "
                f"bwd {r.get('backward_iterations', '-')!s:>4} "
                f"{1e3 * r['forward_seconds']:8.2f} ms  rel. error {r['relative_error']:.1e}"
            )
    for r in result.get("epochs", []):
        print(
            f"{r['model']:6s} {r['solver']:10s} {r['seconds_per_epoch']:6.2f} s/epoch  "
            f"fwd {r['forward_iterations']:.1f} bwd {r['backward_iterations']:.1f}  "
            f"acc {r['test_accuracy']:.4f}"
        )
    print(f"wrote {args.out}/bench.json and bench.png")
    return result


def _cmd_reproduce(args) -> dict:
    from .reproduce import reproduce_conv, reproduce_mnist

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
            progress=not args.no_progress,
        )
        print((Path(out) / "table.md").read_text())
    else:
        result = reproduce_conv(
            out,
            quick=args.quick,
            runs=args.runs or 1,
            data_dir=args.data_dir,
            device=args.device,
            progress=not args.no_progress,
        )
        for name, r in result["models"].items():
            print(
                f"{name}: best acc {r['summary']['best_accuracy'][0]:.4f}, "
                f"Lipschitz {r['lipschitz']:.4g}, PGD accuracy {result['pgd']['accuracy'][name]}"
            )
    print(f"results, table and figures in {out}")
    return {"out": out}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_printoptions(precision=4)
    try:
        commands = {
            "train": _cmd_train,
            "eval": _cmd_eval,
            "certify": _cmd_certify,
            "attack": _cmd_attack,
            "bench": _cmd_bench,
            "reproduce": _cmd_reproduce,
        }
        result = commands[args.command](args)
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"nemon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return 0
