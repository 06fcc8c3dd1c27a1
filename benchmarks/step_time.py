"""Where a certified-training step spends its time, part by part, side by side in one run.

    python benchmarks/step_time.py [--preset mnist-cert-medium-mtl-h256-0.1] [--threads 2]
        [--checkpoint PATH] [--repeats 10] [--compile] [--json PATH]

Times, on one batch of the preset's size at its training radius, each part of a step: the PGD
attack of the MTL-IBP term, the adversarial (or clean) forward and backward pass, the interval
forward and backward pass, the clean pass that only a metric would need, and the whole step as
training runs it. Each part is timed ``--repeats`` times after one warm-up call, interleaved in
rounds so that a slower moment of the machine falls on every part alike; the median is reported
with its share of the whole step. ``--compile`` adds the interval pass with the encoder's interval
propagation compiled by ``torch.compile`` (and its ratio to the eager pass). ``--checkpoint``
times a trained model (solver iterations depend on the weights) instead of a fresh one.
Results: ``benchmarks/results/speed/step-PRESET.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nemon.app.checkpoints import CheckpointError, load_checkpoint, write_text_atomic
from nemon.app.config import PRESETS, TrainConfig
from nemon.data import load_dataset
from nemon.explicit import propagate_interval
from nemon.intervals import input_box, interval_equilibrium, interval_loss, logit_difference_bounds
from nemon.losses import adversarial_points, recipe_loss
from nemon.models import build_from_config

RESULTS = Path(__file__).resolve().parent / "results" / "speed"


def parts(model, cfg: TrainConfig, x, y, compiled_encoder=None) -> dict:
    """The callables to time: each runs one part of a training step (gradients zeroed first)."""
    eps = cfg.cert_eps
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # a step that leaves the weights alone

    def backward(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()

    out = {}
    if cfg.adv_steps > 0:
        adv = adversarial_points(model, x, y, eps, cfg.adv_steps, seed=0)
        out["pgd attack"] = lambda: adversarial_points(model, x, y, eps, cfg.adv_steps, seed=0)
        out["adversarial forward+backward"] = lambda: backward(F.cross_entropy(model(adv), y))
    else:
        out["clean forward+backward"] = lambda: backward(F.cross_entropy(model(x), y))
    out["interval forward+backward"] = lambda: backward(interval_loss(model, x, y, eps))
    out["clean forward, no autograd"] = lambda: _no_grad(model, x)
    if compiled_encoder is not None:
        out["interval forward+backward, compiled encoder"] = lambda: backward(
            _interval_loss_with(model, compiled_encoder, x, y, eps)
        )

    def step():
        _, loss = recipe_loss(model, model, cfg.recipe(), x, y, eps, 1.0, step=0)
        backward(loss)
        opt.step()

    out["whole step"] = step
    return out


def _no_grad(model, x):
    with torch.no_grad():
        model(x)


def _interval_loss_with(model, encoder_box, x, y, eps):
    """``interval_loss`` with the encoder's box from ``encoder_box`` (a compiled propagation)."""
    lo, hi = input_box(model.prepare_input(x), eps, (0.0, 1.0))
    x_lo, x_hi, _ = interval_equilibrium(model.layer, *encoder_box(lo, hi))
    bounds = logit_difference_bounds(model, x, y, eps, (0.0, 1.0), x_lo=x_lo, x_hi=x_hi)
    return F.cross_entropy(-bounds, y)


def time_parts(fns: dict, repeats: int) -> dict:
    for fn in fns.values():
        fn()  # warm-up (and compilation)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default="mnist-cert-medium-mtl-h256-0.1", choices=sorted(PRESETS)
    )
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", default=None, help="where to write the results")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    cfg = TrainConfig(**PRESETS[args.preset])
    if cfg.cert_eps <= 0:
        parser.error(f"{args.preset} is not a certified-training preset (cert_eps is 0)")
    try:
        data = load_dataset(cfg.dataset)
    except (FileNotFoundError, OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    if args.checkpoint:
        try:
            model, _ = load_checkpoint(args.checkpoint)
        except CheckpointError as err:
            sys.exit(f"error: {err}")
    else:
        torch.manual_seed(0)
        model = build_from_config(cfg, tuple(data.train_x.shape[1:]), 10)
    model.train()
    x, y = data.train_x[: cfg.batch_size], data.train_y[: cfg.batch_size]
    compiled = None
    if args.compile:
        if model.encoder is None:
            parser.error(f"--compile compiles the encoder's interval pass; {args.preset} has none")
        compiled = torch.compile(lambda lo, hi: propagate_interval(model.encoder, lo, hi))
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as training does
    try:
        medians = time_parts(parts(model, cfg, x, y, compiled), args.repeats)
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)
    whole = medians["whole step"]
    rows = {n: {"ms": 1000 * t, "share_of_step": t / whole} for n, t in medians.items()}
    for name, row in rows.items():
        print(f"{name:46s} {row['ms']:8.1f} ms  {row['share_of_step']:6.1%}")
    result = {
        "preset": args.preset,
        "checkpoint": args.checkpoint,
        "threads": args.threads,
        "repeats": args.repeats,
        "batch_size": cfg.batch_size,
        "radius": cfg.cert_eps,
        "parts": rows,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    if args.compile:
        eager = medians["interval forward+backward"]
        result["compiled_interval_speedup"] = (
            eager / medians["interval forward+backward, compiled encoder"]
        )
        print(f"compiled encoder: {result['compiled_interval_speedup']:.2f}x the eager pass")
    out = Path(args.json) if args.json else RESULTS / f"step-{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(result, indent=2) + "\n", out)
    return result


if __name__ == "__main__":
    main()
