"""The files of a run folder: atomic writes, checkpoints read without running code, JSON lines.

``checkpoint.pt`` holds plain data and tensors only (read with ``weights_only=True``);
``config.json`` and ``metrics.jsonl`` are strict JSON. Every write goes to a temporary file
renamed over the target, so a kill never leaves a half-written file. `nemon.fit` and the
command line both write run folders through this module.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = [
    "CheckpointError",
    "RunFolderError",
    "RUN_FILES",
    "save_atomic",
    "write_text_atomic",
    "read_torch_file",
    "check_run_folder",
    "remove_stale_temporaries",
    "json_line",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, unreadable, foreign or written by other code."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, then rename it over ``path``.

    The file gets the usual permissions (0666 less the umask), not ``mkstemp``'s 0600; a kill
    leaves at most a ``.NAME.*`` temporary file, removed by the next run in the folder.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (see `_atomic_write`); ``obj`` must hold only plain data
    and tensors, so that it loads with ``weights_only=True``."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def write_text_atomic(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` atomically (see `_atomic_write`)."""
    _atomic_write(path, lambda f: f.write(text.encode()))


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files a killed run left in ``folder`` (``.checkpoint.pt.*`` and the like)."""
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl"):
        for tmp in folder.glob(f".{name}.*"):
            tmp.unlink(missing_ok=True)


def read_torch_file(path: str | os.PathLike, map_location: str = "cpu"):
    """A ``torch.save`` file's contents, read with ``weights_only=True``: a crafted file cannot
    run code. Raises `CheckpointError` naming the file when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # torch's zip format or a raw pickle
        raise CheckpointError(f"{path} is not a nemon checkpoint (not a PyTorch file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's notes on pickle protocols
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is the file's fault
        if "Weights only load failed" in str(exc):
            why = "it holds objects other than tensors and plain data; refused, as loading them could run code"
        elif isinstance(exc, (RuntimeError, IndexError, EOFError)) or "pickle" in str(exc).lower():
            why = "not a PyTorch checkpoint, or truncated"
        else:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable nemon checkpoint ({why})") from None
    return ckpt


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (it holds another run, or nothing to resume)."""


RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "config.json")


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: a folder holding files needs ``resume`` or ``overwrite``."""
    if resume and overwrite:
        raise RunFolderError("choose one of resume and overwrite, not both")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"run folder {out} exists and is not a folder")
    if resume:
        if not (out / "checkpoint.pt").is_file():
            raise RunFolderError(f"nothing to resume: {out} holds no checkpoint.pt")
        return
    held = (
        sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []
    )
    if held and not overwrite:
        raise RunFolderError(
            f"run folder {out} is not empty ({', '.join(held[:4])}); resume it or overwrite it"
        )


def _json_safe(value):
    """Non-finite floats become None (JSON has no Infinity or NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def json_line(record: dict) -> str:
    return json.dumps(_json_safe(record), allow_nan=False)
