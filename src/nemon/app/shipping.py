"""Ship a training checkpoint as a model folder that :func:`nemon.load_pretrained` reads:
safetensors weights (a format that cannot run code), a JSON description with their sha256, and
the model's card."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from ..pretrained import _sha256
from .checkpoints import read_checkpoint

__all__ = ["save_pretrained"]


def save_pretrained(checkpoint: str | Path, folder: str | Path, card: str) -> Path:
    """Write a training checkpoint as a shippable model folder (weights, description, card)."""
    ckpt = read_checkpoint(checkpoint)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in ckpt["model"].items()}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "model.safetensors").chmod(0o644)
    info = {
        "config": ckpt["config"],
        "input_shape": list(ckpt["input_shape"]),
        "num_classes": ckpt["num_classes"],
        "sha256": _sha256(folder / "model.safetensors"),
    }
    (folder / "config.json").write_text(json.dumps(info, indent=2) + "\n")
    (folder / "card.md").write_text(card)
    return folder
