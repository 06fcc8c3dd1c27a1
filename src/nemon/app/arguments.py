"""What every command's arguments share: the parser (one-line errors, defaults in --help), argument
types that name the rule they enforce, and the options several commands take."""

from __future__ import annotations

import argparse
import math

from ..data import DATASETS
from ..errors import InputError
from ..ranges import check_inside
from ..validation import MAX_THREADS

__all__ = [
    "UsageError",
    "Parser",
    "COMMON_HELP",
    "integer",
    "number",
    "POSITIVE",
    "NONNEGATIVE",
    "RADIUS",
    "RATE",
    "setting_type",
    "threads_type",
    "common_options",
    "add_input_range",
    "add_model",
    "input_range_of",
]


class UsageError(InputError):
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


class DefaultsFormatter(argparse.HelpFormatter):
    """``--help`` states each option's default (where it has one that is not off or None)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS) and "default" not in text
        if shown and action.option_strings and action.nargs != 0:
            value = " ".join(map(str, default)) if isinstance(default, list) else default
            text = f"{text} (default: {value})" if text else f"default: {value}"
        return text


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (exit status 2), without the usage,
    and states the options' defaults in ``--help``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        """Options shared by several commands take their help from `COMMON_HELP`."""
        if kwargs.get("help") is None and names:
            kwargs["help"] = COMMON_HELP.get(names[0])
        return super().add_argument(*names, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def integer(low: int, high: int | None = None):
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


def number(low=-math.inf, high=math.inf, low_open=False, high_open=False):
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


POSITIVE = integer(1)


NONNEGATIVE = integer(0)


RADIUS = number(low=0.0)


RATE = number(low=0.0, low_open=True)


def setting_type(f):
    """The type of the option for the setting field ``f``: parsed, then checked against the
    range in its metadata, the one the library checks too (`nemon.settings.setting`)."""
    name, allowed = f.name, f.metadata["range"]
    kind = allowed.kind

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        try:
            allowed.check(name, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    parse.__name__ = name
    return parse


def threads_type(text: str) -> int | str:
    return "auto" if text == "auto" else integer(1, MAX_THREADS)(text)


threads_type.__name__ = f"integer from 1 to {MAX_THREADS} or auto"


def common_options() -> argparse.ArgumentParser:
    """Options every command takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument(
        "--threads",
        type=threads_type,
        default="auto",
        help="torch threads, or auto (default): the cores other processes leave idle, "
        "re-evaluated each epoch while training",
    )
    return p


def add_input_range(p, what: str) -> None:
    """``--input-range LO HI`` or ``--no-input-range``: the range the data lives in
    (`nemon.ranges`); default: the dataset's (or the model file's)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--input-range",
        nargs=2,
        type=number(),
        metavar=("LO", "HI"),
        help=f"the range the inputs live in, {what} (default: the data's, 0 1 for images)",
    )
    group.add_argument(
        "--no-input-range", action="store_true", help="unbounded inputs (the whole ball)"
    )


def add_model(p, dataset: bool = True) -> None:
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


def input_range_of(args, default, x=None) -> tuple[float, float] | None:
    """``--input-range`` (None with ``--no-input-range``; else ``default``, the data's), after
    refusing data ``x`` outside it in the options' own words."""
    if args.no_input_range:
        return None
    span = tuple(args.input_range) if args.input_range is not None else default
    if x is not None:
        check_inside(x, span, "--input-range", unbounded="--no-input-range")
    return span
