"""Ship a training checkpoint as a model folder that `nemon.load_pretrained` reads:
safetensors weights (a format that cannot run code), a JSON description with their sha256, and
the model's card."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from ..errors import InputError
from ..pretrained import _sha256, description_checksum
from .checkpoints import read_checkpoint

__all__ = ["save_pretrained"]


def save_pretrained(
    checkpoint: str | Path | list[str | Path],
    folder: str | Path,
    card: str,
    member_preset: str | None = None,
) -> Path:
    """Write a training checkpoint as a shippable model folder (weights, description, card).

    A list of several checkpoints ships an `Ensemble` of their models;
    ``member_preset`` names the preset its members were trained with (seeds apart).
    """
    paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    ckpts = [read_checkpoint(p) for p in paths]
    signatures = {(tuple(c["input_shape"]), c["num_classes"]) for c in ckpts}
    if len(signatures) != 1:
        raise InputError(f"checkpoints disagree on (input shape, classes): {sorted(signatures)}")
    if len(ckpts) == 1:
        state, info = ckpts[0]["model"], {"config": ckpts[0]["config"]}
    else:
        state = {f"members.{i}.{k}": v for i, c in enumerate(ckpts) for k, v in c["model"].items()}
        info = {"members": [c["config"] for c in ckpts], "member_preset": member_preset}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "model.safetensors").chmod(0o644)
    info["input_shape"] = list(ckpts[0]["input_shape"])
    info["num_classes"] = ckpts[0]["num_classes"]
    info["sha256"] = _sha256(folder / "model.safetensors")
    info["config_sha256"] = description_checksum(info)
    (folder / "config.json").write_text(json.dumps(info, indent=2) + "\n")
    (folder / "card.md").write_text(card)
    return folder
