"""Helpers the tests share: small models of every family (float64, solved tightly), tiny
datasets, run configurations, and where the MNIST originals are."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import nemon
from nemon.app.train import TrainConfig, save_atomic
from nemon.data import Dataset
from nemon.runs import state_checksum

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


def tiny_data(seed=0, n=240):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > x[:, 0, 4:].mean(dim=(1, 2))).long()
    y[:2] = torch.tensor([0, 1])
    return Dataset("tiny", x[:200], y[:200], x[200:], y[200:])


def config(**kw):
    base = dict(hidden=12, epochs=2, batch_size=32, lr=1e-2, checkpoint_every=3)
    base.update(kw)
    return TrainConfig(**base)


def save_with_checksum(ckpt: dict, path) -> None:
    """``ckpt`` saved with its checksum made anew, as nemon would have written its contents."""
    ckpt["checksum"] = state_checksum(ckpt["model"], ckpt.get("config"), ckpt.get("live_model"))
    save_atomic(ckpt, path)


def classifier(kind, seed=0, activation="relu"):
    layer = make_layer(kind, seed, activation=activation)
    torch.manual_seed(seed + 10)
    return nemon.Classifier(layer, 3, direct=kind == "nemon").double()


def pgd_breaks(model, u, labels, eps, steps=20):
    """A small PGD (l_inf) per sample: True where some perturbation in the ball flips the label."""
    delta = torch.zeros_like(u, requires_grad=True)
    broken = torch.zeros(len(u), dtype=torch.bool)
    for _ in range(steps):
        y = model(u + delta)
        broken |= y.argmax(1) != labels
        top_other = y.scatter(1, labels[:, None], -float("inf")).amax(1)
        loss = (top_other - y.gather(1, labels[:, None]).squeeze(1)).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += 0.25 * eps * grad.sign()
            delta.clamp_(-eps, eps)
    with torch.no_grad():
        broken |= model(u + delta).argmax(1) != labels
    return broken


def fixed_point(block, injection: np.ndarray) -> np.ndarray:
    """``x = ReLU(A x + injection)`` by a damped iteration (mu_inf(A) < 1 makes it converge for
    a small enough step; plain iteration need not), until it stops moving."""
    x = np.zeros(block.size)
    for _ in range(20000):
        step = 0.8 * x + 0.2 * np.maximum(block.A @ x + injection, 0.0)
        if np.array_equal(step, x):  # every later step is this one
            break
        x = step
    return x


def lowered_logits(net, u: np.ndarray) -> np.ndarray:
    """The lowered network evaluated directly (implicit blocks by fixed-point iteration)."""
    a = u
    for block in net.blocks:
        if block.A is None:
            a = np.maximum(block.W @ a + block.b, 0.0)
        else:
            a = fixed_point(block, block.W @ a + block.b)
    out = net.readout.W @ a + net.readout.b
    return out if net.D is None else out + net.D @ u
