"""Certified models shipped with nemon, stored as safetensors weights plus a JSON description.

Each model lives in ``nemon/pretrained/<name>/``: ``model.safetensors`` (tensors only: loading it
cannot run code), ``config.json`` (the training configuration, input shape and classes, and the
sha256 of the weights, checked before loading) and ``card.md`` (architecture, the command that
retrains it, training time, clean / certified / PGD accuracy on the full test set). An
`Ensemble` is stored the same way, its description listing the members' training
configurations (``members``) in place of one ``config``.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from .ensemble import Ensemble
from .models import build_from_config

__all__ = ["pretrained_names", "load_pretrained", "describe_pretrained", "PretrainedError"]


class PretrainedError(ValueError):
    """An unknown name or a damaged shipped model."""


def _root() -> Path:
    return Path(str(resources.files("nemon") / "pretrained"))


def pretrained_names() -> list[str]:
    """Names accepted by `load_pretrained` (and by the CLI wherever a checkpoint is)."""
    root = _root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "model.safetensors").is_file())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe_pretrained(name: str) -> dict:
    """The shipped description (``config.json``) of ``name``."""
    if name not in pretrained_names():
        raise PretrainedError(
            f"unknown pretrained model {name!r}; available: {', '.join(pretrained_names())}"
        )
    return json.loads((_root() / name / "config.json").read_text())


def load_pretrained(name: str, map_location: str = "cpu") -> nn.Module:
    """The shipped model ``name`` in eval mode (weights checked against their sha256)."""
    info = describe_pretrained(name)
    weights = _root() / name / "model.safetensors"
    if _sha256(weights) != info["sha256"]:
        raise PretrainedError(f"{weights} is damaged: its sha256 does not match config.json")
    shape, classes = tuple(info["input_shape"]), info["num_classes"]
    if "members" in info:
        model = Ensemble([build_from_config(c, shape, classes) for c in info["members"]])
    else:
        model = build_from_config(info["config"], shape, classes)
    model.load_state_dict(load_file(str(weights), device=map_location))
    return model.to(map_location).eval()
