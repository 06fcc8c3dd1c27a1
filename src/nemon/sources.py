"""Where `nemon.fit` takes its data from: tensors, NumPy arrays, any map-style dataset (a
``torch.utils.data.Dataset`` such as ``TensorDataset``, or anything with ``__len__`` and
``__getitem__`` giving ``(input, label)``), or a ``DataLoader`` with its transforms.

Training batches come from a *source*: tensors and map-style datasets are batched by nemon in a
seeded order (the recipe's batch size; a resume continues bit for bit, and a dataset's transforms
run on every access); a ``DataLoader`` is iterated as it is (its batch size, sampler and
workers), one pass an epoch. The test split is read once into tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate

from .data import batches
from .errors import InputError

__all__ = ["TensorSource", "MapSource", "LoaderSource", "training_source", "as_tensors"]

#: batches read from a dataset or loader to check it before training starts
CHECKED_BATCHES = 2


class TensorSource:
    """Batches of ``(x, y)`` tensors in a seeded random order."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def n_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.x) / batch_size)

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator:
        return batches(self.x, self.y, batch_size, generator)

    def head(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Every sample: tensors are checked whole."""
        return self.x, self.y


class MapSource:
    """A map-style dataset, read item by item in a seeded random order and collated
    (``torch.utils.data.default_collate``)."""

    def __init__(self, dataset, dtype=None) -> None:
        self.dataset, self.dtype = dataset, dtype

    def __len__(self) -> int:
        return len(self.dataset)

    def n_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.dataset) / batch_size)

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator:
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            yield self._collate(order[start : start + batch_size])

    def head(self, batch_size: int) -> tuple[Tensor, Tensor]:
        count = min(len(self.dataset), CHECKED_BATCHES * batch_size)
        return self._collate(range(count))

    def _collate(self, indices) -> tuple[Tensor, Tensor]:
        items = default_collate([self.dataset[i] for i in indices])
        return _pair(items, "dataset items", self.dtype)


class LoaderSource:
    """A ``DataLoader``, one pass an epoch, as it is configured."""

    def __init__(self, loader: DataLoader, dtype=None) -> None:
        try:
            len(loader)
        except TypeError:
            raise InputError(
                "data: a DataLoader over an IterableDataset has no length, which the epochs, "
                "the schedules and resume need; give a map-style dataset"
            ) from None
        self.loader, self.dtype = loader, dtype

    def __len__(self) -> int:
        return len(self.loader.dataset)

    def n_batches(self, batch_size: int) -> int:
        return len(self.loader)

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator:
        for batch in self.loader:
            yield _pair(batch, "DataLoader batches", self.dtype)

    def head(self, batch_size: int) -> tuple[Tensor, Tensor]:
        taken = []
        for batch in self.loader:
            taken.append(_pair(batch, "DataLoader batches", self.dtype))
            if len(taken) == CHECKED_BATCHES:
                break
        if not taken:
            raise InputError("data: the training DataLoader yields no batches")
        return torch.cat([x for x, _ in taken]), torch.cat([y for _, y in taken])


def _pair(batch, what: str, dtype=None) -> tuple[Tensor, Tensor]:
    """A batch as ``(inputs, labels)``; floating inputs in ``dtype`` (the model's)."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise InputError(f"data: {what} must be (inputs, labels) pairs, got {type(batch).__name__}")
    x, y = _tensor(batch[0], "inputs"), _tensor(batch[1], "labels")
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)
    return x, y


def _tensor(value, what: str, dtype=None) -> Tensor:
    """A tensor as it is; NumPy arrays converted (floating ones to ``dtype``, the model's)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        t = torch.from_numpy(np.ascontiguousarray(value))
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t
    raise InputError(f"data: {what} must be tensors or NumPy arrays, got {type(value).__name__}")


def _is_map_style(value) -> bool:
    return hasattr(value, "__getitem__") and hasattr(value, "__len__")


def training_source(train, dtype=None):
    """The source of a training split: a ``DataLoader``, ``(x, y)`` tensors or arrays, or a
    map-style dataset; inputs that are not tensors already become ``dtype`` (the model's)."""
    if isinstance(train, DataLoader):
        return LoaderSource(train, dtype)
    if isinstance(train, (tuple, list)) and len(train) == 2:
        return TensorSource(_tensor(train[0], "train_x", dtype), _tensor(train[1], "train_y"))
    if _is_map_style(train):
        return MapSource(train, dtype)
    raise InputError(
        "data: the training split must be (x, y) tensors or arrays, a map-style dataset or a "
        f"DataLoader, got {type(train).__name__}"
    )


def as_tensors(split, name: str, dtype=None) -> tuple[Tensor, Tensor]:
    """A split read whole into ``(x, y)`` tensors (the test split)."""
    if isinstance(split, (tuple, list)) and len(split) == 2:
        return _tensor(split[0], f"{name}_x", dtype), _tensor(split[1], f"{name}_y")
    if isinstance(split, DataLoader):
        pairs = [_pair(b, "DataLoader batches", dtype) for b in split]
    elif _is_map_style(split):
        pairs = [
            _pair(default_collate([split[i]]), "dataset items", dtype) for i in range(len(split))
        ]
    else:
        raise InputError(
            f"data: the {name} split must be (x, y) tensors or arrays, a map-style dataset or a "
            f"DataLoader, got {type(split).__name__}"
        )
    if not pairs:
        raise InputError(f"data: the {name} split is empty")
    return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])
