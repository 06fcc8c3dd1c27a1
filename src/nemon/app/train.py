"""Command-line training runs: a `TrainConfig` (``config.py``) builds the model and its
data, `nemon.fit` trains it with the config's recipe.

`train` writes into ``out_dir`` what `nemon.fit` writes (``checkpoint.pt``,
``metrics.jsonl``; the checkpoint also holds the config, so the model can be rebuilt) and
``config.json``. A killed run resumed with ``resume=True`` replays exactly the remaining batches.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..data import Dataset, load_dataset
from ..evaluation import ConvergenceTally, certified_accuracy, evaluate
from ..models import build_from_config
from ..runs import check_run_folder
from ..training import TrainingDiverged, fit
from .checkpoints import (
    CheckpointError,
    RunFolderError,
    load_checkpoint,
    read_checkpoint,
    save_atomic,
)
from .config import PRESETS, TrainConfig
from .resources import check_memory
from .runtime import auto_threads

__all__ = [
    "TrainConfig",
    "PRESETS",
    "build_from_config",
    "train",
    "evaluate",
    "certified_accuracy",
    "save_atomic",
    "read_checkpoint",
    "load_checkpoint",
    "check_run_folder",
    "CheckpointError",
    "RunFolderError",
    "TrainingDiverged",
    "ConvergenceTally",
]


def _limit(data: Dataset, cfg: TrainConfig) -> Dataset:
    tr, te = cfg.train_limit, cfg.test_limit
    return Dataset(
        data.name,
        data.train_x[:tr] if tr else data.train_x,
        data.train_y[:tr] if tr else data.train_y,
        data.test_x[:te] if te else data.test_x,
        data.test_y[:te] if te else data.test_y,
        classes=data.num_classes,
        input_range=data.input_range,
    )


def _thread_rule(threads: int | str | None):
    """``"auto"``: the cores other processes leave idle (``working``: this run's own threads
    are part of the load average); a number; None: torch's setting."""
    if threads == "auto":
        return lambda working: auto_threads(torch.get_num_threads() if working else 0)
    return None if threads is None else int(threads)


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    data: Dataset | None = None,
    data_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    stop_after_steps: int | None = None,
    tensorboard: str | os.PathLike | None = None,
    threads: int | str | None = None,
) -> dict:
    """Train ``cfg`` into ``out_dir`` and return ``{"history", "stopped", "model"}``.

    Everything is checked (settings, run folder, data, the memory the model needs, checkpoint
    to resume) before the first file is written; see `nemon.fit` for resume, overwrite, divergence and DDP.
    """
    cfg.validate()
    out = Path(out_dir)
    check_run_folder(out, resume, overwrite)
    data = _limit(data if data is not None else load_dataset(cfg.dataset, data_dir), cfg)
    check_memory(cfg, data.input_shape, data.num_classes, "train", cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_from_config(cfg, data.input_shape, data.num_classes).to(torch.device(cfg.device))
    result = fit(
        model,
        data,
        cfg.recipe(),
        out=out,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        threads=_thread_rule(threads),
        tensorboard=tensorboard,
        metadata={"config": cfg},
        files={"config.json": json.dumps(asdict(cfg), indent=2)},
        stop_after_steps=stop_after_steps,
    )
    return {"history": result.history, "stopped": result.stopped, "model": result.model}
