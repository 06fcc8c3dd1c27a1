"""The files of a run folder: atomic writes, checkpoints read without running code, JSON lines.

``checkpoint.pt`` holds plain data and tensors only (read with ``weights_only=True``);
``config.json`` and ``metrics.jsonl`` are strict JSON. Every write goes to a temporary file
renamed over the target, so a kill never leaves a half-written file. `nemon.fit` and the
command line both write run folders through this module.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from .errors import InputError

__all__ = [
    "CheckpointError",
    "OutputError",
    "check_output_target",
    "atomic_path",
    "RunLock",
    "state_checksum",
    "check_checksum",
    "RunFolderError",
    "RUN_FILES",
    "save_atomic",
    "write_text_atomic",
    "write_bytes_atomic",
    "read_torch_file",
    "check_run_folder",
    "remove_stale_temporaries",
    "json_line",
]


class CheckpointError(InputError):
    """A checkpoint that cannot be read: missing, unreadable, foreign or written by other code."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputError(OSError):
    """An output cannot be written where asked (not a regular file, no room, no permission)."""


def check_output_target(path: str | os.PathLike) -> Path:
    """``path`` may be written: it is a new path or an existing regular file (never a folder, a
    device, a pipe or a socket, which a rename would destroy)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise OutputError(f"{path} is not a regular file; nemon only replaces regular files")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """A temporary file name beside ``path`` (same suffix) to write to; renamed over ``path``
    when the block ends without error, removed otherwise. The file gets the usual permissions
    (0666 less the umask), not ``mkstemp``'s 0600; a kill leaves at most a ``.NAME.*``
    temporary file, removed by the next run in the folder."""
    path = check_output_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, synced, then renamed over it (see
    `atomic_path`). A failure to write (a full disk, for one) is an `OutputError` naming the
    file, and leaves nothing behind."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OutputError(f"could not write {path}: {first}") from None


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (see `_atomic_write`); ``obj`` must hold only plain data
    and tensors, so that it loads with ``weights_only=True``."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (see `_atomic_write`)."""
    _atomic_write(Path(path), lambda f: f.write(data))


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
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # torch's zip format or a raw pickle
        raise CheckpointError(f"{path} is not a nemon checkpoint (not a PyTorch file)")
    if magic[:2] == b"PK":
        _check_archive_size(path)
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


MAX_UNPACKED_BYTES = 4 * 2**30  # what a checkpoint may unpack to
MAX_PACKING_RATIO = 100  # torch.save stores tensors uncompressed: more is not its file


def _check_archive_size(path: Path) -> None:
    """Refuse, before unpacking, an archive that would unpack to far more than it holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        raise CheckpointError(
            f"{path} is not a readable nemon checkpoint (a damaged archive)"
        ) from None
    unpacked = sum(e.file_size for e in entries)
    packed = max(sum(e.compress_size for e in entries), 1)
    if unpacked > MAX_UNPACKED_BYTES or (
        unpacked > 2**26 and unpacked > MAX_PACKING_RATIO * packed
    ):
        raise CheckpointError(
            f"{path} would unpack to {unpacked / 2**20:.0f} MiB from {packed / 2**20:.1f} MiB; "
            "refused (torch.save writes tensors uncompressed)"
        )


def state_checksum(state: dict, config=None, live: dict | None = None) -> str:
    """sha256 of a state dict (names, dtypes, shapes and bytes of every tensor) and a config,
    stored in checkpoints so that a damaged file is refused instead of loaded. ``live``: the
    weights a resumed run continues from when they differ from ``state`` (weight averaging's
    ``live_model``), covered too; without it the digest is that of ``state`` and ``config``."""
    digest = hashlib.sha256(json.dumps(_json_safe(config), sort_keys=True).encode())
    _digest_tensors(digest, state)
    if live is not None:
        digest.update(b"live_model|")
        _digest_tensors(digest, live)
    return digest.hexdigest()


def _digest_tensors(digest, state: dict) -> None:
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(state[name].shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())


def check_checksum(path, ckpt: dict) -> None:
    """A checkpoint must hold a checksum, and match it (weights, config and, under weight
    averaging, the ``live_model`` a resume continues from); `CheckpointError` otherwise.
    Every checkpoint nemon writes holds one, so a file without it was edited or written by
    other code. Loading (`nemon.app.checkpoints.load_checkpoint`) and resuming both check it."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} is not a nemon checkpoint (no model weights)")
    if "checksum" not in ckpt:
        raise CheckpointError(
            f"{path} holds no checksum; refused (nemon writes one into every checkpoint: "
            "this file was edited or written by other code)"
        )
    try:
        expected = state_checksum(ckpt["model"], ckpt.get("config"), ckpt.get("live_model"))
    except (AttributeError, TypeError, RuntimeError):  # a value that is not a tensor
        expected = None
    if expected != ckpt["checksum"]:
        raise CheckpointError(
            f"{path} is damaged: its weights or config do not match the checksum it holds"
        )


class RunFolderError(InputError):
    """The run folder cannot be used as asked; ``kind`` says how to code: ``"not_empty"`` (it
    holds another run), ``"nothing_to_resume"``, ``"not_a_folder"``, ``"both"`` (resume and
    overwrite together), ``"other"`` (a resume with other settings, a damaged file)."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


RUN_FILES = ("checkpoint.pt", "model.safetensors", "metrics.jsonl", "config.json")


def check_run_folder(
    out: Path,
    resume: bool,
    overwrite: bool,
    marker: str = "checkpoint.pt",
    advice: str = "resume it or overwrite it",
) -> None:
    """Refuse to mix runs: a folder holding files needs ``resume`` or ``overwrite``; a resumed
    folder must hold ``marker`` (the file a run writes first). ``advice``: what the refusal of
    a non-empty folder suggests."""
    if resume and overwrite:
        raise RunFolderError("choose one of resume and overwrite, not both", "both")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"run folder {out} exists and is not a folder", "not_a_folder")
    if resume:
        if not (out / marker).is_file():
            raise RunFolderError(f"nothing to resume: {out} holds no {marker}", "nothing_to_resume")
        return
    held = (
        sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []
    )
    if held and not overwrite:
        raise RunFolderError(
            f"run folder {out} is not empty ({', '.join(held[:4])}); {advice}", "not_empty"
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


class RunLock:
    """An exclusive lock on a run folder while a run uses it (``.lock``, ``flock``): a second
    run in the same folder, training or resuming, is refused instead of mixing the two runs'
    files. The lock is released when the run ends, however it ends (the kernel drops it with
    the process)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._file = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = _open_lock(self.folder / ".lock")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise RunFolderError(
                f"run folder {self.folder} is in use by another run ({holder}); wait for it "
                "or choose another folder"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}")
        self._file.flush()
        return self

    def __exit__(self, *exc_info) -> None:
        import fcntl

        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def _open_lock(path: Path):
    """The lock file, opened for reading and writing without following a symbolic link
    (``O_NOFOLLOW``): a ``.lock`` that is a link, or not a regular file of its own (another
    name hard-linked to it), is refused, so that writing the holder's pid never truncates
    a file elsewhere."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if path.is_symlink():  # also where O_NOFOLLOW is missing
        raise RunFolderError(f"{path} is a symbolic link; refused (remove it)")
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0), 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # made a link since the check above
            raise RunFolderError(f"{path} is a symbolic link; refused (remove it)") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(info.st_mode) else "linked elsewhere"
        raise RunFolderError(f"{path} is {what}; refused (remove it)")
    return os.fdopen(fd, "r+")
