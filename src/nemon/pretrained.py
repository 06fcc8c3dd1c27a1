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

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .ensemble import Ensemble
from .errors import InputError
from .models import build_from_config

__all__ = [
    "pretrained_names",
    "load_pretrained",
    "describe_pretrained",
    "description_checksum",
    "PretrainedError",
]


class PretrainedError(InputError):
    """An unknown name or a damaged shipped model."""


def _root() -> Path:
    return Path(str(resources.files("nemon") / "pretrained"))


def pretrained_names() -> list[str]:
    """Names accepted by `load_pretrained` (and by the CLI wherever a checkpoint is)."""
    root = _root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "model.safetensors").is_file())


MAX_WEIGHTS_BYTES = 2**30  # no shipped model comes near; larger is not one of ours
MAX_HEADER_BYTES = 2**24  # a safetensors header lists tensor names and offsets only
MODEL_SETTINGS = ("model", "arch", "hidden", "gamma", "activation", "tol", "residual", "max_iter")


def _sha256(path: Path) -> str:
    """sha256 of a file, read in blocks (its size is checked before, see `_check_weights`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def description_checksum(info: dict) -> str:
    """sha256 of a description without its checksums: covers the configs, shape and classes."""
    body = {k: v for k, v in info.items() if k not in ("sha256", "config_sha256")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_description(name: str, info) -> None:
    if not isinstance(info, dict):
        raise PretrainedError(f"{name}: config.json is not a description of a model")
    missing = [
        k for k in ("sha256", "config_sha256", "input_shape", "num_classes") if k not in info
    ]
    configs = info.get("members") or ([info["config"]] if "config" in info else [])
    if not configs:
        missing.append("config")
    for c in configs:
        absent = [k for k in MODEL_SETTINGS if not isinstance(c, dict) or k not in c]
        missing += [f"config.{k}" for k in absent if f"config.{k}" not in missing]
    if missing:
        raise PretrainedError(f"{name} is damaged: config.json lacks {', '.join(missing)}")
    if description_checksum(info) != info["config_sha256"]:
        raise PretrainedError(f"{name} is damaged: config.json does not match its checksum")


def _check_weights(name: str, weights: Path, expected_sha: str) -> None:
    """Size, safetensors header and sha256, each checked before anything is allocated."""
    size = weights.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise PretrainedError(f"{name} is damaged: {weights.name} holds {size} bytes")
    with open(weights, "rb") as f:
        head = f.read(8)
    header = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < header <= min(size - 8, MAX_HEADER_BYTES):
        raise PretrainedError(f"{name} is damaged: {weights.name} has no valid safetensors header")
    if _sha256(weights) != expected_sha:
        raise PretrainedError(f"{weights} is damaged: its sha256 does not match config.json")


def describe_pretrained(name: str) -> dict:
    """The shipped description (``config.json``) of ``name``."""
    if name not in pretrained_names():
        raise PretrainedError(
            f"unknown pretrained model {name!r}; available: {', '.join(pretrained_names())}"
        )
    try:
        return json.loads((_root() / name / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PretrainedError(f"{name} is damaged: config.json cannot be read ({exc})") from None


def load_pretrained(name: str, map_location: str = "cpu") -> nn.Module:
    """The shipped model ``name`` in eval mode: its description checked against its checksum,
    the weights' size and safetensors header before they are read, their sha256 before they
    are loaded. A damaged folder is a `PretrainedError` naming what is wrong."""
    info = describe_pretrained(name)
    _check_description(name, info)
    weights = _root() / name / "model.safetensors"
    _check_weights(name, weights, info["sha256"])
    shape, classes = tuple(info["input_shape"]), info["num_classes"]
    try:
        if "members" in info:
            model = Ensemble([build_from_config(c, shape, classes) for c in info["members"]])
        else:
            model = build_from_config(info["config"], shape, classes)
        model.load_state_dict(load_file(str(weights), device=map_location))
    except (ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PretrainedError(f"{name} is damaged: its weights do not fit it ({first})") from None
    return model.to(map_location).eval()
