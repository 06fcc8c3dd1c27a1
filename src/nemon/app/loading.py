"""The model and test set a command works on: a shipped model's name, a model file, a checkpoint
or a run folder, and the dataset it names (or --dataset)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..data import DATASETS, load_dataset
from ..modelfile import load as load_model
from ..modelfile import model_data, model_file_path
from ..pretrained import describe_pretrained, load_pretrained, pretrained_names
from ..ranges import IMAGES
from ..runs import (
    read_torch_file,
)
from .arguments import UsageError
from .checkpoints import (
    load_checkpoint,
)
from .resources import check_memory

__all__ = ["load_model_named", "recorded_range", "load_test", "load_with_data"]


def load_model_named(name_or_path: str, device: str, use: str = "load", dataset: str | None = None):
    """``(model, dataset name)`` from a shipped model's name, a model file, a checkpoint or a
    run folder (`nemon.load`); the memory a configured model needs for ``use`` is checked
    before it is built. ``dataset`` (``--dataset``) overrides the one the file names."""
    if Path(name_or_path).exists() and name_or_path in pretrained_names():
        print(
            f"nemon: note: {name_or_path} is a local path, used instead of the shipped model of "
            f"that name (pass ./{name_or_path} to silence this)",
            file=sys.stderr,
        )
    if not Path(name_or_path).exists() and name_or_path in pretrained_names():
        info = describe_pretrained(name_or_path)
        config = info["config"] if "config" in info else info["members"][0]  # an ensemble
        check_memory(config, info["input_shape"], info["num_classes"], use, device)
        return load_pretrained(name_or_path, device), dataset or config["dataset"]
    path = model_file_path(name_or_path)
    contents = None if path.suffix == ".safetensors" else read_torch_file(path, device)
    if contents is not None and "config" in contents:  # read once
        model, ckpt = load_checkpoint(path, map_location=device, use=use, contents=contents)
        return model, dataset or ckpt["config"]["dataset"]
    model = load_model(path, map_location=device)
    named = model_data(path).get("name")
    if dataset is None and named not in DATASETS:
        raise UsageError(
            f"{name_or_path} does not name one of nemon's datasets (it was trained on "
            f"{named or 'data it does not name'}); pass --dataset, one of {', '.join(DATASETS)}"
        )
    return model, dataset or named


def recorded_range(name_or_path: str) -> tuple[float, float] | None:
    """The input range a model file records, else that of images (every nemon dataset's)."""
    if not Path(name_or_path).exists():  # a shipped model: MNIST
        return IMAGES
    data = model_data(name_or_path)
    if "range" not in data:
        return IMAGES
    return None if data["range"] is None else tuple(data["range"])


def load_test(args):
    model, _, x, y = load_with_data(args)
    return model, x, y


def load_with_data(args):
    use = "certify" if args.command in ("certify", "verify") else "load"
    model, dataset = load_model_named(args.checkpoint, args.device, use, args.dataset)
    data = load_dataset(dataset, args.data_dir, test_only=True)  # the training images unread
    n = args.test_limit
    x, y = (data.test_x[:n], data.test_y[:n]) if n else (data.test_x, data.test_y)
    return model, {"dataset": dataset, "input_range": data.input_range}, x, y
