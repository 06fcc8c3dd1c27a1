"""What `nemon.fit` checks before anything runs or is written: the data (shapes, dtypes,
finite inputs, labels, the input range) and the model against the recipe."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from .data import Dataset
from .errors import InputError
from .models import Classifier
from .ranges import IMAGES, check_inside
from .recipes import Recipe
from .sources import TensorSource, as_tensors, training_source

__all__ = ["as_dataset", "checked_range", "checked_data", "check_model", "check_batch"]

#: Rows whose finiteness is checked at once (bounds the memory of the check).
_CHUNK = 4096


def as_dataset(data, model: nn.Module, batch_size: int):
    """``(dataset, source)``: what `fit` checks (the test split whole; for a dataset or a loader,
    the first batches of the training split, for tensors all of it) and where training batches
    come from (`nemon.sources`)."""
    if isinstance(data, Dataset):
        return data, TensorSource(data.train_x, data.train_y)
    try:
        train, test = data
    except (TypeError, ValueError):
        raise InputError(
            "data must be a nemon.data.Dataset or (train, test), each split (x, y) tensors or "
            "NumPy arrays, a map-style dataset or a DataLoader"
        ) from None
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else None
    source = training_source(train, dtype)
    train_x, train_y = source.head(batch_size)
    test_x, test_y = as_tensors(test, "test", dtype)
    for name, t in (("train", train_x), ("test", test_x)):
        y = train_y if name == "train" else test_y
        if len(t) != len(y) or len(t) == 0:
            raise InputError(
                f"data: {len(t)} {name} inputs for {len(y)} labels; give as many of each, > 0"
            )
    span = _images_or_none(train_x, test_x)
    return Dataset("custom", train_x, train_y, test_x, test_y, input_range=span), source


def _images_or_none(*inputs: Tensor) -> tuple[float, float] | None:
    """Data given without a range: ``(0, 1)`` when every input lies in it (images), else None."""
    inside = all(
        x.numel() == 0 or (float(x.amin()) >= 0.0 and float(x.amax()) <= 1.0) for x in inputs
    )
    return IMAGES if inside else None


def checked_range(data: Dataset, input_range) -> tuple[float, float] | None:
    """The run's input range (``"data"``: the dataset's), with every input inside it."""
    chosen = (
        data.input_range if isinstance(input_range, str) and input_range == "data" else input_range
    )
    for split in ("train_x", "test_x"):
        check_inside(getattr(data, split), chosen, f"input_range (data {split})")
    return None if chosen is None else tuple(float(v) for v in chosen)


def checked_data(data: Dataset, model: nn.Module) -> Dataset:
    """``data`` checked against ``model`` before anything runs or is written: the inputs' shape
    (a nemon classifier's ``input_shape``) and dtype, finite inputs, integer labels within
    ``[0, num_classes)``. Each problem is one `ValueError` naming the split and the first bad
    index. Integer labels of another dtype are returned as int64 (what the loss takes)."""
    splits = {}
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        for name, t in ((f"{split}_x", x), (f"{split}_y", y)):
            if not isinstance(t, Tensor):
                raise InputError(f"data: {name} must be a tensor, got {type(t).__name__}")
        if len(x) != len(y) or len(x) == 0:
            raise InputError(
                f"data: {len(x)} {split} inputs for {len(y)} labels; give as many of each, > 0"
            )
        _check_inputs(f"{split}_x", x, model)
        splits[f"{split}_y"] = _checked_labels(f"{split}_y", y, model)
    if data.train_x.shape[1:] != data.test_x.shape[1:]:
        raise InputError(
            f"data: training inputs of shape {tuple(data.train_x.shape[1:])} but test inputs of "
            f"shape {tuple(data.test_x.shape[1:])}"
        )
    if all(splits[k] is getattr(data, k) for k in splits):
        return data
    return replace(data, **splits)


def _check_inputs(name: str, x: Tensor, model: nn.Module) -> None:
    shape = getattr(model, "input_shape", None)
    if shape is not None:  # a nemon classifier: its input shape and dtype are known
        sample = tuple(x.shape[1:])
        prepare = getattr(model, "prepare_input", None)
        prepared = tuple(prepare(x[:0]).shape[1:]) if prepare is not None else sample
        if tuple(shape) not in (sample, prepared):
            raise InputError(
                f"data: {name} holds samples of shape {sample}; the model takes {tuple(shape)}"
            )
        dtype = next(model.parameters()).dtype
        if x.dtype != dtype:
            raise InputError(
                f"data: {name} is {x.dtype} and the model's parameters {dtype}; convert one"
            )
    if not (x.is_floating_point() or x.is_complex()):
        return
    for start in range(0, len(x), _CHUNK):
        rows = x[start : start + _CHUNK].reshape(min(_CHUNK, len(x) - start), -1)
        bad = (~torch.isfinite(rows)).any(dim=1).nonzero()
        if len(bad):
            i = start + int(bad[0])
            what = "NaN" if bool(torch.isnan(rows[int(bad[0])]).any()) else "an infinite value"
            raise InputError(f"data: {name}[{i}] holds {what}; every input must be finite")


def _checked_labels(name: str, y: Tensor, model: nn.Module) -> Tensor:
    if y.dim() != 1:
        raise InputError(f"data: {name} must be one label per sample, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(f"data: {name} must hold integer class labels, got {y.dtype}")
    classes = getattr(model, "num_classes", None)
    outside = (y < 0) if classes is None else (y < 0) | (y >= classes)
    bad = outside.nonzero()
    if len(bad):
        i = int(bad[0])
        allowed = ">= 0" if classes is None else f"in [0, {classes}) (the model's classes)"
        raise InputError(f"data: {name}[{i}] is {int(y[i])}; labels must be {allowed}")
    return y if y.dtype == torch.int64 else y.long()


def check_model(model: nn.Module, recipe: Recipe) -> None:
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise InputError(f"fit needs a torch module with parameters, got {type(model).__name__}")
    needs = [
        ("a radius (cert_eps)", recipe.certified),
        ("certified evaluation (cert_eval_eps)", bool(recipe.cert_eval_eps)),
        ("the Lipschitz regulariser (lam)", recipe.lam > 0),
    ]
    for what, needed in needs:
        if needed and not isinstance(model, Classifier):
            raise InputError(
                f"a recipe with {what} needs a nemon.Classifier, got {type(model).__name__}"
            )
    if recipe.swa_start and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        raise InputError(
            "swa_start needs a model without batch norm: the average's batch statistics would "
            "have to be measured again"
        )


def check_batch(xb: Tensor, yb: Tensor, model: nn.Module, input_range, where: str) -> None:
    """One training batch from a dataset or a loader (whose later batches `as_dataset` did not
    read): its shape, dtype, finite inputs, labels and input range, as the first batches were
    checked. A refusal names the batch."""
    try:
        _check_inputs("inputs", xb, model)
        _checked_labels("labels", yb, model)
        check_inside(xb, input_range)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
