"""nemon: train, evaluate, certify, verify, attack, benchmark and reproduce implicit models.

Every argument is checked (types, ranges, paths, device) before any work starts. A user error is
one line on stderr naming the argument and the fix, with exit status 2 (``--debug`` shows the
traceback); a run that fails on the way (a diverging loss) exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import traceback
import warnings
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from ..attacks import ATTACKS, accuracy_under_attack
from ..certificates import CERTIFICATES, default_certificate
from ..data import DATASETS, DataError, load_dataset
from ..export import export_onnx
from ..modelfile import ModelFileError, model_data, model_file_path
from ..modelfile import load as load_model
from ..pretrained import PretrainedError, describe_pretrained, load_pretrained, pretrained_names
from ..ranges import IMAGES
from ..recipes import FIELDS as RECIPE_FIELDS
from ..recipes import SCHEDULE, Recipe, schedule_changes
from ..runs import (
    OutputError,
    atomic_path,
    check_output_target,
    read_torch_file,
    write_text_atomic,
)
from ..validation import MAX_THREADS, RANGES, check_setting
from .bench import run_bench
from .checkpoints import (
    CheckpointError,
    RunFolderError,
    check_run_folder,
    json_line,
    load_checkpoint,
)
from .config import PRESETS, TrainConfig
from .plots import plot_curves
from .reproduce import reproduce_conv, reproduce_mnist
from .resources import check_memory
from .runtime import auto_threads
from .train import ConvergenceTally, TrainingDiverged, certified_accuracy, evaluate, train
from .verify_run import check_folder, model_identity, summary_line, verify_folder

__all__ = ["main", "build_parser", "UsageError"]


class UsageError(ValueError):
    """A command-line argument that cannot work; the message names it and the fix."""


#: the help of options that several commands share
COMMON_HELP = {
    "--data-dir": "data folder (default: $NEMON_DATA_DIR, else ~/.cache/nemon)",
    "--test-limit": "use only the first N test images",
    "--train-limit": "use only the first N training images",
    "--no-progress": "no progress bar and no progress lines",
    "--seed": "random seed",
    "--eps": "l_inf radii",
    "--attack": "the attacks",
    "--preset": "a model and its recipe (nemon.app.config.PRESETS)",
    "--model": "model family (explicit: the ablation without feedback)",
    "--dataset": "the dataset",
    "--activation": "the implicit layer's activation",
    "--epochs": "epochs (a preset's schedule scales with them)",
    "--batch-size": "training batch size",
    "--lr": "learning rate (Adam)",
    "--out": "output folder",
    "--device": "cpu, cuda or cuda:N",
    "--lams": "Lipschitz regulariser weights",
    "--attack-limit": "images attacked",
    "experiment": "the paper's experiment",
}


class _DefaultsFormatter(argparse.HelpFormatter):
    """``--help`` states each option's default (where it has one that is not off or None)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS) and "default" not in text
        if shown and action.option_strings and action.nargs != 0:
            value = " ".join(map(str, default)) if isinstance(default, list) else default
            text = f"{text} (default: {value})" if text else f"default: {value}"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (exit status 2), without the usage,
    and states the options' defaults in ``--help``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        """Options shared by several commands take their help from `COMMON_HELP`."""
        if kwargs.get("help") is None and names:
            kwargs["help"] = COMMON_HELP.get(names[0])
        return super().add_argument(*names, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# -- argument types: each names the rule it enforces --------------------------------------------
def _integer(low: int, high: int | None = None):
    rule = f">= {low}" if high is None else f"from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {rule}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {rule}, got {value}")
        return value

    parse.__name__ = f"integer {rule}"
    return parse


def _number(low=-math.inf, high=math.inf, low_open=False, high_open=False):
    rule = " and ".join(
        r
        for r in (
            "" if low == -math.inf else f"{'>' if low_open else '>='} {low:g}",
            "" if high == math.inf else f"{'<' if high_open else '<='} {high:g}",
        )
        if r
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low)
        ok = ok and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(
                f"must be a finite number{' ' + rule if rule else ''}, got {text}"
            )
        return value

    parse.__name__ = f"number {rule}"
    return parse


POSITIVE = _integer(1)
NONNEGATIVE = _integer(0)
RADIUS = _number(low=0.0)
RATE = _number(low=0.0, low_open=True)


def _setting(name: str):
    """The type of the option for setting ``name``: parsed, then checked against the one table
    of ranges the library uses too (`nemon.validation.RANGES`)."""
    kind = RANGES[name].kind

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        try:
            check_setting(name, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    parse.__name__ = name
    return parse


def _threads(text: str) -> int | str:
    return "auto" if text == "auto" else _integer(1, MAX_THREADS)(text)


_threads.__name__ = f"integer from 1 to {MAX_THREADS} or auto"


def _common() -> argparse.ArgumentParser:
    """Options every command takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument(
        "--threads",
        type=_threads,
        default="auto",
        help="torch threads, or auto (default): the cores other processes leave idle, "
        "re-evaluated each epoch while training",
    )
    return p


def _add_train(sub, common) -> None:
    p = sub.add_parser(
        "train",
        help="train an implicit model (NEMON, MON or IDL)",
        description="Train the model of --preset with its recipe; an option given replaces the "
        "preset's value of that setting, and --epochs scales the preset's schedule (warm-up, "
        "radius ramp, milestones), saying what moved.",
        parents=[common],
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="mnist-fc")
    for f in fields(TrainConfig):  # every setting of a run, its help from its docstring
        if f.name != "layer_kwargs":
            _add_setting(p, f)
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
        kind = _setting(f.name) if f.name in RANGES else str
        nargs = "*" if f.type == "list" else None
        p.add_argument(option, type=kind, nargs=nargs, help=text)


def _add_input_range(p, what: str) -> None:
    """``--input-range LO HI`` or ``--no-input-range``: the range the data lives in
    (`nemon.ranges`); default: the dataset's (or the model file's)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--input-range",
        nargs=2,
        type=_number(),
        metavar=("LO", "HI"),
        help=f"the range the inputs live in, {what} (default: the data's, 0 1 for images)",
    )
    group.add_argument(
        "--no-input-range", action="store_true", help="unbounded inputs (the whole ball)"
    )


def _add_model(p, dataset: bool = True) -> None:
    """The model argument (and ``--dataset``, the test set, where the command reads one)."""
    p.add_argument(
        "checkpoint",
        metavar="MODEL",
        help="a shipped model's name, a model file (.safetensors), a checkpoint or a run folder",
    )
    if dataset:
        p.add_argument(
            "--dataset",
            choices=sorted(DATASETS),
            help="the test set (default: the one the model file names)",
        )


def _add_eval(sub, common) -> None:
    for name, help_text in (
        ("eval", "accuracy, Lipschitz bound and iterations of a checkpoint"),
        ("certify", "certified accuracy of a checkpoint at radii --eps"),
    ):
        p = sub.add_parser(name, help=help_text, parents=[common])
        _add_model(p)
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
            _add_input_range(p, "intersected with the ball")
            p.add_argument("--plot", help="write certified accuracy vs eps to this PNG")


def _add_verify(sub, common) -> None:
    p = sub.add_parser(
        "verify",
        help="complete verification at radius --eps: each test image certified, refuted or unknown",
        parents=[common],
    )
    _add_model(p)
    p.add_argument("--eps", type=RADIUS, required=True, help="the l_inf radius")
    p.add_argument(
        "--time-limit",
        type=_number(low=0.0),
        default=60.0,
        help="seconds of branch and bound per image before it is left unknown (default 60)",
    )
    p.add_argument("--attack-steps", type=POSITIVE, default=50, help="PGD steps (default 50)")
    p.add_argument("--attack-restarts", type=POSITIVE, default=3, help="PGD restarts (default 3)")
    p.add_argument("--seed", type=NONNEGATIVE, default=0, help="PGD's seed")
    _add_input_range(p, "intersected with the ball")
    p.add_argument("--test-limit", type=POSITIVE, help="use only the first N test images")
    p.add_argument("--data-dir")
    p.add_argument(
        "--out", help="run folder: each verdict recorded as it is decided (default: none)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out (unknowns are retried)"
    )
    p.add_argument("--json", help="write the summary to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(device="cpu")


def _add_attack(sub, common) -> None:
    p = sub.add_parser(
        "attack",
        help="accuracy of a checkpoint under an l_inf attack at radii --eps",
        parents=[common],
    )
    _add_model(p)
    p.add_argument("--attack", nargs="+", default=["pgd"], choices=sorted(ATTACKS))
    p.add_argument("--eps", type=RADIUS, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3])
    p.add_argument("--steps", type=POSITIVE, default=20, help="PGD steps")
    p.add_argument("--restarts", type=POSITIVE, default=1, help="PGD restarts")
    p.add_argument("--seed", type=NONNEGATIVE, default=0)
    _add_input_range(p, "where the attack's points stay")
    p.add_argument("--test-limit", type=POSITIVE, help="use only the first N test images")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--data-dir")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--plot", help="write accuracy vs eps to this PNG")


def _add_bench(sub, common) -> None:
    p = sub.add_parser(
        "bench", help="solver / scaling / epoch-time benchmark (JSON and plot)", parents=[common]
    )
    p.add_argument("--checkpoint", help="model for the solver comparison (default: untrained)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--epochs", type=POSITIVE, default=1, help="MNIST epochs per family")
    p.add_argument(
        "--target-accuracy",
        type=_number(low=0.0, high=1.0, low_open=True),
        default=0.97,
        help="report each family's training seconds to this test accuracy (default 0.97)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, no MNIST epochs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir")


def _add_export(sub, common) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint to ONNX (the solver as an ONNX Loop, with its error bound)",
        parents=[common],
    )
    _add_model(p, dataset=False)
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    _add_input_range(p, "for the bounds in the metadata")


def _add_reproduce(sub, common) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nemon", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _common()
    adders = (_add_train, _add_eval, _add_verify, _add_attack, _add_bench, _add_export,
              _add_reproduce)  # fmt: skip
    for add in adders:
        add(sub, common)
    return parser


# -- checks that need the file system or the machine ---------------------------------------------
def _check_device(name: str | None) -> None:
    if name is None:
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        if device.index is not None:
            raise UsageError(f"--device {name}: the CPU takes no index; use cpu")
        return
    if device.type != "cuda":
        raise UsageError(f"--device {name!r}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")


PLOT_FORMATS = (".png", ".pdf", ".svg")


def _check_output_file(option: str, path: str | None) -> None:
    """The file can be created, before any work: a new path or a regular file (never a folder or
    a device), in a folder that exists (or can be made) and takes a new file."""
    if path is None:
        return
    target = Path(path)
    try:
        check_output_target(target)
    except OutputError as exc:
        raise UsageError(f"{option} {exc}") from None
    if option == "--plot" and target.suffix.lower() not in PLOT_FORMATS:
        raise UsageError(f"--plot {path}: give a {', '.join(PLOT_FORMATS)} file name")
    parent = target.parent
    existing = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is not a folder")
    if existing is not None:
        try:  # a probe, removed at once: os.access says yes to root even where nothing can be made
            tempfile.TemporaryFile(dir=existing).close()
        except OSError as exc:
            raise UsageError(
                f"{option} {path}: cannot write in {existing} ({exc.strerror})"
            ) from None


def _check_input_file(option: str, path: str | None) -> None:
    if path is None:
        return
    if not Path(path).exists():
        raise UsageError(f"{option} {path} does not exist")
    if not Path(path).is_file():
        raise UsageError(f"{option} {path} is not a file")


def _check_data_dir(path: str | None) -> None:
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise UsageError(f"--data-dir {path} is not a folder")


def _validate(args) -> None:
    """Everything that can be checked before the work starts."""
    _check_device(getattr(args, "device", None))
    _check_data_dir(getattr(args, "data_dir", None))
    _check_output_file("--json", getattr(args, "json", None))
    _check_output_file("--plot", getattr(args, "plot", None))
    _check_output_file("--onnx", getattr(args, "onnx", None))
    board = getattr(args, "tensorboard", None)
    if board is not None and Path(board).exists() and not Path(board).is_dir():
        raise UsageError(f"--tensorboard {board} is not a folder")
    if (
        args.command in ("eval", "certify", "verify", "attack", "export")
        and args.checkpoint not in pretrained_names()
    ):
        if not Path(args.checkpoint).exists():
            raise UsageError(
                f"checkpoint {args.checkpoint} is neither a file nor a shipped model "
                f"({', '.join(pretrained_names())})"
            )
        if not Path(args.checkpoint).is_dir():
            _check_input_file("checkpoint", args.checkpoint)
    if args.command == "bench":
        _check_input_file("--checkpoint", args.checkpoint)
    span = getattr(args, "input_range", None)
    if span is not None and not span[0] < span[1]:
        raise UsageError(f"--input-range {span[0]:g} {span[1]:g}: LO must be below HI")
    if args.command == "train":
        try:
            check_run_folder(Path(args.out), args.resume, args.overwrite)
        except RunFolderError as exc:
            hint = " (pass --resume or --overwrite)" if exc.kind == "not_empty" else ""
            raise UsageError(f"--out: {exc}{hint}") from None
    if args.command == "verify":
        _check_verify(args)
    if args.command in ("bench", "reproduce") and args.out is not None:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UsageError(f"--out {args.out} is not a folder")


def _check_verify(args) -> None:
    try:
        import highspy  # noqa: F401
        import scipy.sparse  # noqa: F401
    except ImportError:
        raise UsageError("verify needs HiGHS and SciPy: pip install 'nemon[verify]'") from None
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out, the run folder to continue")
    if args.out is not None:
        try:
            check_folder(Path(args.out), args.resume)
        except RunFolderError as exc:
            raise UsageError(f"--out: {exc}") from None


def _config(args) -> TrainConfig:
    values = dict(PRESETS[args.preset])
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


def _cmd_train(args) -> dict:
    cfg = _init_distributed(_config(args))
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


def _load_model(name_or_path: str, device: str, use: str = "load", dataset: str | None = None):
    """``(model, dataset name)`` from a shipped model's name, a model file, a checkpoint or a
    run folder (`nemon.load`); the memory a configured model needs for ``use`` is checked
    before it is built. ``dataset`` (``--dataset``) overrides the one the file names."""
    if Path(name_or_path).exists() and name_or_path in pretrained_names():
        print(
            f"nemon: note: {name_or_path} is a local path, used instead of the shipped model of "
            f"that name (pass ./{name_or_path} to silence this)",
            file=sys.stderr,
        )
    if not Path(name_or_path).exists() and name_or_path in pretrained_names():
        info = describe_pretrained(name_or_path)
        config = info["config"] if "config" in info else info["members"][0]  # an ensemble
        check_memory(config, info["input_shape"], info["num_classes"], use, device)
        return load_pretrained(name_or_path, device), dataset or config["dataset"]
    path = model_file_path(name_or_path)
    if path.suffix != ".safetensors" and "config" in read_torch_file(path, device):
        model, ckpt = load_checkpoint(path, map_location=device, use=use)
        return model, dataset or ckpt["config"]["dataset"]
    model = load_model(path, map_location=device)
    named = model_data(path).get("name")
    if dataset is None and named not in DATASETS:
        raise UsageError(
            f"{name_or_path} does not name one of nemon's datasets (it was trained on "
            f"{named or 'data it does not name'}); pass --dataset, one of {', '.join(DATASETS)}"
        )
    return model, dataset or named


def _recorded_range(name_or_path: str) -> tuple[float, float] | None:
    """The input range a model file records, else that of images (every nemon dataset's)."""
    if not Path(name_or_path).exists():  # a shipped model: MNIST
        return IMAGES
    data = model_data(name_or_path)
    if "range" not in data:
        return IMAGES
    return None if data["range"] is None else tuple(data["range"])


def _load(args):
    model, _, x, y = _load_with_config(args)
    return model, x, y


def _load_with_config(args):
    use = "certify" if args.command in ("certify", "verify") else "load"
    model, dataset = _load_model(args.checkpoint, args.device, use, args.dataset)
    data = load_dataset(dataset, args.data_dir)
    n = args.test_limit
    x, y = (data.test_x[:n], data.test_y[:n]) if n else (data.test_x, data.test_y)
    return model, {"dataset": dataset, "input_range": data.input_range}, x, y


def _input_range(args, default) -> tuple[float, float] | None:
    """``--input-range`` (None with ``--no-input-range``; else ``default``, the data's)."""
    if args.no_input_range:
        return None
    return tuple(args.input_range) if args.input_range is not None else default


def _cmd_eval(args) -> dict:
    model, x, y = _load(args)
    with ConvergenceTally():
        result = evaluate(model, x, y)
    result["images"] = len(x)
    result["lipschitz_bound"] = float(model.lipschitz_bound().detach())
    print(json.dumps(json.loads(json_line(result)), indent=2))  # strict JSON: NaN is null
    return result


def _cmd_certify(args) -> dict:
    model, data, x, y = _load_with_config(args)
    span = _input_range(args, data["input_range"])
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


def _cmd_verify(args) -> dict:
    model, config, x, y = _load_with_config(args)
    span = _input_range(args, config["input_range"])
    question = {
        **model_identity(args.checkpoint),
        "dataset": config["dataset"],
        "eps": args.eps,
        "clip": None if span is None else list(span),  # the run folder's key for the range
        "test_limit": args.test_limit,
        "time_limit": args.time_limit,
        "attack_steps": args.attack_steps,
        "attack_restarts": args.attack_restarts,
        "seed": args.seed,
    }
    out = None if args.out is None else Path(args.out)
    progress = False if args.no_progress else None
    summary = verify_folder(model, x, y, question, out, args.resume, progress)
    print(summary_line(summary))
    return summary


def _cmd_attack(args) -> dict:
    model, data, x, y = _load_with_config(args)
    span = _input_range(args, data["input_range"])
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


def _cmd_export(args) -> dict:
    model, _ = _load_model(args.checkpoint, "cpu", dataset="")
    span = _input_range(args, _recorded_range(args.checkpoint))
    if span is None:
        raise UsageError("export needs a bounded --input-range LO HI for its metadata's bounds")
    metadata = export_onnx(model, args.onnx, input_range=span)  # its folder made on writing
    print(f"wrote {args.onnx}")
    for key in ("solver", "measure", "contraction_factor", "max_iter", "worst_case_iterations"):
        if key in metadata:
            print(f"  {key}: {metadata[key]}")
    return metadata


def _cmd_bench(args) -> dict:
    result = run_bench(
        args.out,
        args.checkpoint,
        args.data_dir,
        args.device,
        args.quick,
        args.epochs,
        args.target_accuracy,
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
        reached = r["seconds_to_target"]
        to_target = "not reached" if reached is None else f"{reached:.1f} s"
        print(
            f"{r['model']:6s} {r['solver']:10s} {r['seconds_per_epoch']:6.2f} s/epoch  "
            f"fwd {r['forward_iterations']:.1f} bwd {r['backward_iterations']:.1f}  "
            f"acc {r['test_accuracy']:.4f}  to {r['target_accuracy']:g}: {to_target}"
        )
    for r in result.get("dense_steps", []):
        print(
            f"step {r['model']:16s} {r['ms_per_step']:6.2f} ms  {r['over_mlp']:.2f}x the MLP  "
            f"iterations {r['forward_iterations']}/{r['backward_iterations']}"
        )
    for r in result["conv_solvers"]:
        print(
            f"conv {r['solver']:29s} fwd {r['forward_iterations']:4d} "
            f"bwd {r['backward_iterations']:4d} {1e3 * r['forward_seconds']:8.2f} ms fwd "
            f"{1e3 * r['backward_seconds']:8.2f} ms bwd"
        )
    for r in result["stacked_solvers"]:
        print(
            f"stacked {r['solver']:26s} fwd {r['forward_iterations']} "
            f"bwd {r['backward_iterations']} {1e3 * r['forward_seconds']:8.2f} ms fwd "
            f"{1e3 * r['backward_seconds']:8.2f} ms bwd"
        )
    if "implicit_over_explicit" in result:
        print(
            f"NEMON (diagonal) epoch / explicit MLP epoch: {result['implicit_over_explicit']:.2f}x"
            f" (FLOPs of a step: {result['implicit_over_explicit_flops']:.2f}x)"
        )
    for r in result["certified_steps"]:
        print(
            f"{r['arch']:10s} clean step {r['clean_step_ms']:7.1f} ms  interval step "
            f"{r['interval_step_ms']:7.1f} ms ({r['interval_over_clean']:.2f}x; FLOPs "
            f"{r['interval_over_clean_flops']:.2f}x)  "
            f"certified epoch {r['certified_epoch_s']:.0f} s"
        )
    print(f"wrote {args.out}/bench.json and bench.png")
    return result


def _cmd_reproduce(args) -> dict:
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


COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "certify": _cmd_certify,
    "verify": _cmd_verify,
    "attack": _cmd_attack,
    "bench": _cmd_bench,
    "export": _cmd_export,
    "reproduce": _cmd_reproduce,
}

USER_ERRORS = (
    UsageError,
    ModelFileError,
    DataError,
    CheckpointError,
    RunFolderError,
    PretrainedError,
    FileNotFoundError,
)


def _write_outputs(args, result: dict) -> None:
    """JSON first (the numbers), then the figure, so a failing plot loses no result; each
    written atomically (a failure leaves the old file or none, never half of one)."""
    if getattr(args, "json", None):
        write_text_atomic(json_line(result) + "\n", Path(args.json))
    if getattr(args, "plot", None):
        if args.command == "certify":
            curves = {m: [result[m][e] for e in args.eps] for m in args.method}
            title = "certified accuracy"
        else:
            curves, title = {a: result[a] for a in args.attack}, "attack accuracy"
        with atomic_path(args.plot) as tmp:
            plot_curves(curves, args.eps, tmp, title)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_printoptions(precision=4)
    shown = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # the command line's only: never at import
    try:
        return _run(args)
    finally:
        warnings.formatwarning = shown


def _run(args) -> int:
    """The command; errors are one line with exit status 2 (what the user asked cannot work:
    a bad argument, a refused model or method) or 1 (the work failed: divergence, out of
    memory, a file-system fault). Anything else is a bug and keeps its traceback."""
    try:
        torch.set_num_threads(auto_threads() if args.threads == "auto" else args.threads)
        _validate(args)
        result = COMMANDS[args.command](args)
        _write_outputs(args, result)
    except USER_ERRORS as exc:
        return _report(args, exc, 2)
    except TrainingDiverged as exc:
        return _report(args, exc, 1)
    except ValueError as exc:  # an argument the library refused
        return _report(args, exc, 2)
    except NotImplementedError as exc:  # the library refuses this model (a method it lacks)
        return _report(args, exc, 2)
    except MemoryError as exc:
        return _report(args, MemoryError(f"out of memory ({exc or 'allocation failed'})"), 1)
    except RuntimeError as exc:
        if not _out_of_memory(exc):
            raise
        return _report(args, MemoryError(f"out of memory ({_first_line(exc)})"), 1)
    except OSError as exc:  # a file-system fault during the work: finished files are kept
        return _report(args, exc, 1)
    except KeyboardInterrupt:
        print(f"nemon {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


#: How torch's allocators word a failed allocation (CPU, CUDA and the others).
_OUT_OF_MEMORY = ("out of memory", "not enough memory", "can't allocate memory", "could not allocate",
                  "failed to allocate", "tried to allocate")  # fmt: skip


def _out_of_memory(exc: RuntimeError) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    text = str(exc).lower()
    return isinstance(exc, oom) or any(words in text for words in _OUT_OF_MEMORY)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``warning: Category: message`` on one line (no source file or line of nemon's)."""
    text = " ".join(str(message).split())
    return f"warning: {category.__name__}: {text}\n"


def _report(args, exc: Exception, status: int) -> int:
    if args.debug:
        traceback.print_exception(exc)
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, OutputError):
        where = f": {exc.filename}" if exc.filename else ""
        message = f"{exc.strerror}{where}"
    else:
        message = _first_line(exc)
    print(f"nemon {args.command}: error: {message}", file=sys.stderr)
    return status
