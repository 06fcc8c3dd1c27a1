"""nemon: train, evaluate, certify, verify, attack, benchmark and reproduce implicit models.

Every argument is checked (types, ranges, paths, device) before any work starts. A user error is
one line on stderr naming the argument and the fix, with exit status 2 (``--debug`` shows the
traceback); a run that fails on the way (a diverging loss) exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

from ..data import DataError
from ..errors import InputError
from ..pretrained import pretrained_names
from ..runs import (
    OutputError,
    atomic_path,
    check_output_target,
    write_text_atomic,
)
from .arguments import Parser, UsageError, common_options
from .checkpoints import (
    RunFolderError,
    check_run_folder,
    json_line,
)
from .commands import attack, evaluation
from .commands import bench as bench_command
from .commands import export as export_command
from .commands import reproduce as reproduce_command
from .commands import train as train_command
from .commands import verify as verify_command
from .plots import plot_curves
from .runtime import auto_threads
from .train import TrainingDiverged

__all__ = ["main", "build_parser", "UsageError"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nemon", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    common = common_options()
    for command in (train_command, evaluation, verify_command, attack, bench_command,
                    export_command, reproduce_command):  # fmt: skip
        command.add(sub, common)
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
        verify_command.validate(args)
    if args.command in ("bench", "reproduce") and args.out is not None:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UsageError(f"--out {args.out} is not a folder")


COMMANDS = {
    "train": train_command.run,
    "eval": evaluation.run_eval,
    "certify": evaluation.run_certify,
    "verify": verify_command.run,
    "attack": attack.run,
    "bench": bench_command.run,
    "export": export_command.run,
    "reproduce": reproduce_command.run,
}

#: What the user asked cannot work: one line, exit status 2. `InputError` is every refusal the
#: library raises (settings, shapes, data, models, files); a plain ValueError is not one: it
#: comes from a failure inside the library or a package below it, and keeps its traceback.
USER_ERRORS = (InputError, DataError, FileNotFoundError)


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
    a bad argument, a refused model or method: an `InputError`) or 1 (the work failed:
    divergence, out of memory, a file-system fault). Anything else, a plain ValueError
    included, is a failure of the library: its traceback and exit status 1."""
    try:
        torch.set_num_threads(auto_threads() if args.threads == "auto" else args.threads)
        _validate(args)
        result = COMMANDS[args.command](args)
        _write_outputs(args, result)
    except USER_ERRORS as exc:
        return _report(args, exc, 2)
    except TrainingDiverged as exc:
        return _report(args, exc, 1)
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
