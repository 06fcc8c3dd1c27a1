"""Shared helpers: small models of every family, in float64, solved tightly."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import nemon

TIGHT = {"tol": 1e-12, "max_iter": 20000}


def tighten(layer: nemon.ImplicitLayer, residual: str = "fixed_point") -> nemon.ImplicitLayer:
    tight = dict(tol=TIGHT["tol"], max_iter=TIGHT["max_iter"], residual=residual)
    layer.solver_options = replace(layer.solver_options, **tight)
    layer.backward_options = replace(layer.backward_options, **tight)
    return layer


def make_layer(kind: str, seed: int = 0, activation: str = "tanh", **kw) -> nemon.ImplicitLayer:
    """A small float64 layer of the named kind, with tight solver tolerances."""
    torch.manual_seed(seed)
    if kind == "nemon":
        layer = nemon.NEMONDense(5, 4, gamma=0.8, activation=activation, **kw)
    elif kind == "nemon-eta":
        layer = nemon.NEMONDense(5, 4, gamma=0.8, activation=activation, learn_eta=True, **kw)
        with torch.no_grad():
            layer.parametrizations.A.original1.normal_(0, 0.5)
    elif kind == "mon":
        act = "leaky_relu" if activation == "tanh" else activation
        layer = nemon.MONDense(5, 4, gamma=0.8, activation=act, **kw)
    elif kind == "idl":
        layer = nemon.IDLDense(5, 4, gamma=0.8, activation=activation, **kw)
    elif kind in ("conv-circular", "conv-zeros"):
        layer = nemon.NEMONConv2d(
            2,
            3,
            4,
            kernel_size=3,
            gamma=0.8,
            padding=kind.split("-")[1],
            activation=activation,
            learn_eta=True,
            pool=2,
            **kw,
        )
        with torch.no_grad():
            layer.kernel.normal_(0, 0.3)
            layer.log_eta.normal_(0, 0.3)
    elif kind == "mon-conv":
        act = "leaky_relu" if activation == "tanh" else activation
        layer = nemon.MONConv2d(2, 3, 4, kernel_size=3, gamma=0.8, activation=act, pool=2, **kw)
    else:
        raise ValueError(kind)
    return tighten(layer.double())


def random_input(layer: nemon.ImplicitLayer, batch: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *layer.input_shape(), generator=g, dtype=torch.float64)


DENSE_KINDS = ["nemon", "nemon-eta", "mon", "idl"]
ALL_KINDS = DENSE_KINDS + ["conv-circular", "conv-zeros", "mon-conv"]


def mnist_dir() -> Path | None:
    root = os.environ.get("NEMON_DATA_DIR")
    if root and (Path(root) / "mnist" / "train-images-idx3-ubyte.gz").exists():
        return Path(root)
    return None


requires_mnist = pytest.mark.skipif(
    mnist_dir() is None, reason="MNIST originals not found under $NEMON_DATA_DIR/mnist"
)
