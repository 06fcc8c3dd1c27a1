"""Checkpoints of command-line runs: a run's configuration (``TrainConfig``) rebuilds its model.

The run-folder files themselves (atomic writes, safe reads, JSON lines) are `nemon.runs`.
"""

from __future__ import annotations

import os
from dataclasses import fields

from ..models import Classifier, build_from_config
from ..runs import (
    RUN_FILES,
    CheckpointError,
    RunFolderError,
    check_checksum,
    check_run_folder,
    json_line,
    read_torch_file,
    remove_stale_temporaries,
    save_atomic,
    write_text_atomic,
)
from .config import TrainConfig
from .resources import ResourceError, check_memory

__all__ = [
    "CheckpointError",
    "RunFolderError",
    "RUN_FILES",
    "save_atomic",
    "write_text_atomic",
    "read_checkpoint",
    "load_checkpoint",
    "check_run_folder",
    "remove_stale_temporaries",
    "json_line",
]


def read_checkpoint(path: str | os.PathLike, map_location: str = "cpu", contents=None) -> dict:
    """A run's checkpoint (see `nemon.runs.read_torch_file`; ``contents``: the file as already
    read), with the keys that rebuild its model: ``config``, ``input_shape``, ``num_classes``,
    ``model``."""
    ckpt = read_torch_file(path, map_location) if contents is None else contents
    missing = (
        [k for k in ("config", "input_shape", "num_classes", "model") if k not in ckpt]
        if (isinstance(ckpt, dict))
        else ["config"]
    )
    if missing:
        raise CheckpointError(f"{path} is not a nemon checkpoint (no {', '.join(missing)})")
    return ckpt


#: The settings that define the model: a checkpoint must state each (no default is guessed).
MODEL_SETTINGS = (
    "model", "arch", "dataset", "hidden", "gamma", "activation", "solver", "tol", "residual",
    "max_iter", "layer_kwargs",
)  # fmt: skip


def checked_config(path, config) -> TrainConfig:
    """The checkpoint's configuration, strictly: unknown settings and missing model settings are
    refused by name; training-only settings newer than the file take their defaults."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its config is not a mapping of settings")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(config) - known)
    missing = [k for k in MODEL_SETTINGS if k not in config]
    if unknown or missing:
        parts = [f"unknown settings {unknown}" if unknown else ""]
        parts.append(f"missing model settings {missing}" if missing else "")
        raise CheckpointError(f"{path}: {'; '.join(p for p in parts if p)} in its config")
    try:
        return TrainConfig(**config).validate()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its config is invalid ({exc})") from None


def checked_signature(path, ckpt: dict) -> tuple[tuple[int, int, int], int]:
    """The checkpoint's ``input_shape`` (channels, height, width) and ``num_classes``, checked."""
    shape, classes = ckpt["input_shape"], ckpt["num_classes"]
    if not (
        isinstance(shape, (tuple, list))
        and len(shape) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        raise CheckpointError(f"{path}: input_shape must be 3 positive integers, got {shape!r}")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise CheckpointError(f"{path}: num_classes must be a positive integer, got {classes!r}")
    return tuple(shape), classes


def load_checkpoint(
    path: str | os.PathLike, map_location: str = "cpu", use: str = "load", contents=None
) -> tuple[Classifier, dict]:
    """Rebuild the model of a checkpoint, in eval mode; returns ``(model, checkpoint dict)``
    (``contents``: the file as already read by `nemon.runs.read_torch_file`, else it is read).

    Before the model is built, the memory it needs for ``use`` (``"load"``, ``"certify"``; see
    `nemon.app.resources.memory_needed`) is compared with what ``map_location`` has: a model
    that cannot fit is a `CheckpointError` naming its ``hidden``."""
    ckpt = read_checkpoint(path, map_location, contents)
    check_checksum(path, ckpt)
    cfg = checked_config(path, ckpt["config"])
    shape, classes = checked_signature(path, ckpt)
    try:
        check_memory(cfg, shape, classes, use, map_location)
    except ResourceError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        model = build_from_config(cfg, shape, classes)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not match this version of nemon ({first})") from None
    return model.to(map_location).eval(), ckpt
