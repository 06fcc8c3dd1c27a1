"""Checkpoints of command-line runs: a run's configuration (``TrainConfig``) rebuilds its model.

The run-folder files themselves (atomic writes, safe reads, JSON lines) are `nemon.runs`.
"""

from __future__ import annotations

import os

from ..models import Classifier, build_from_config
from ..runs import (
    RUN_FILES,
    CheckpointError,
    RunFolderError,
    check_run_folder,
    json_line,
    read_torch_file,
    remove_stale_temporaries,
    save_atomic,
    write_text_atomic,
)
from .config import TrainConfig

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


def read_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """A run's checkpoint (see `nemon.runs.read_torch_file`), with the keys that rebuild
    its model: ``config``, ``input_shape``, ``num_classes``, ``model``."""
    ckpt = read_torch_file(path, map_location)
    missing = (
        [k for k in ("config", "input_shape", "num_classes", "model") if k not in ckpt]
        if (isinstance(ckpt, dict))
        else ["config"]
    )
    if missing:
        raise CheckpointError(f"{path} is not a nemon checkpoint (no {', '.join(missing)})")
    return ckpt


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> tuple[Classifier, dict]:
    """Rebuild the model of a checkpoint, in eval mode; returns ``(model, checkpoint dict)``."""
    ckpt = read_checkpoint(path, map_location)
    try:
        cfg = TrainConfig(**ckpt["config"]).validate()
        model = build_from_config(cfg, ckpt["input_shape"], ckpt["num_classes"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not match this version of nemon ({first})") from None
    return model.to(map_location).eval(), ckpt
