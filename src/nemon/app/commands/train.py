"""nemon train: a preset or a configuration trained into a run folder."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from ...recipes import FIELDS as RECIPE_FIELDS
from ...recipes import SCHEDULE, Recipe, schedule_changes
from ..arguments import UsageError, setting_type
from ..checkpoints import CheckpointError, read_checkpoint
from ..config import PRESETS, TrainConfig
from ..train import train

__all__ = ["add", "run", "config_from"]


def add(sub, common) -> None:
    p = sub.add_parser(
        "train",
        help="train an implicit model (NEMON, MON or IDL)",
        description="Train the model of --preset with its recipe; an option given replaces the "
        "preset's value of that setting, and --epochs scales the preset's schedule (warm-up, "
        "radius ramp, milestones), saying what moved.",
        parents=[common],
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="mnist-fc")
    titles = {"model": "model", "data": "data", "recipe": "training (nemon.Recipe)"}
    groups = {key: p.add_argument_group(title) for key, title in titles.items()}
    for f in fields(TrainConfig):  # every setting of a run, its help from its docstring
        if f.name != "layer_kwargs":
            _add_setting(groups[f.metadata["group"]], f)
    p.add_argument("--out", default="runs/latest", help="run folder (checkpoint, metrics)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--tensorboard", metavar="DIR", help="also log each epoch to TensorBoard in DIR")


def _add_setting(p, f) -> None:
    """``--NAME`` for the run setting ``f`` (a `TrainConfig` field): its range check, choices,
    list form and help, all from the one definition; unset, the preset's value is used."""
    option = "--" + f.name.replace("_", "-")
    text = f.metadata.get("help", "").replace("``", "")
    choices = f.metadata.get("choices")
    if f.name == "tune_splitting_step":
        p.add_argument(option, choices=("on", "off"), help=text)
    elif choices is not None:
        p.add_argument(option, choices=sorted(choices), help=text)
    else:
        kind = setting_type(f) if "range" in f.metadata else str
        nargs = "*" if f.type == "list" else None
        p.add_argument(option, type=kind, nargs=nargs, help=text)


def config_from(args) -> TrainConfig:
    """The run's configuration: the preset's, or on ``--resume`` the one the run recorded
    (its schedule as it began, scaled or not), with the options given replacing their
    settings; ``--epochs`` scales a new run's schedule."""
    values = _recorded(args) if args.resume else None
    values = dict(PRESETS[args.preset]) if values is None else values
    if args.epochs is not None and args.epochs != values["epochs"] and not args.resume:
        values.update(_scaled_schedule(args.preset, values, args.epochs, args))
    for f in fields(TrainConfig):
        given = getattr(args, f.name, None)
        if f.name == "tune_splitting_step" and given is not None:
            given = given == "on"
        if given is not None:
            values[f.name] = given
    try:
        return TrainConfig(**values).validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _recorded(args) -> dict | None:
    """The configuration the run in ``--out`` recorded (None when there is none to read: the
    resume itself then says why)."""
    path = Path(args.out) / "checkpoint.pt"
    if not path.is_file():
        return None
    try:
        config = read_checkpoint(path)["config"]
    except (CheckpointError, KeyError, TypeError):
        return None
    return dict(config) if isinstance(config, dict) else None


def _scaled_schedule(preset: str, values: dict, epochs: int, args) -> dict:
    """The preset's schedule scaled to ``--epochs`` (`nemon.Recipe.scaled`), except the
    settings given on the command line; one line on standard error says what moved. (On
    ``--resume``, ``--epochs`` only extends or shortens the run.)"""
    recipe = Recipe(**{k: values[k] for k in RECIPE_FIELDS})
    scaled = recipe.scaled(epochs)
    kept = [name for name in SCHEDULE if getattr(args, name, None) is not None]
    moved = {n: getattr(scaled, n) for n in SCHEDULE if n not in kept}
    shown = schedule_changes(recipe, replace(recipe, **moved))
    if shown:
        print(
            f"nemon train: --epochs {epochs} scales {preset}'s {recipe.epochs}-epoch schedule: "
            + ", ".join(shown),
            file=sys.stderr,
        )
    return {k: list(v) if isinstance(v, tuple) else v for k, v in moved.items()}


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


def run(args) -> dict:
    cfg = _init_distributed(config_from(args))
    try:
        result = train(
            cfg,
            args.out,
            data_dir=args.data_dir,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=False if args.no_progress else None,
            tensorboard=args.tensorboard,
            threads=args.threads,
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
