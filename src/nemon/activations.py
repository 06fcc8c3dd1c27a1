"""Scalar activations ``Phi`` that are weakly increasing and non-expansive (slope in [0, 1]).

Each activation gives its value, its derivative (the diagonal ``J`` of section 4) and, where it
is the proximal operator of a convex function ``f``, the scaled proximal map ``prox_{a f}`` used by
operator-splitting solvers (MON's forward-backward and Peaceman-Rachford).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import InputError

__all__ = [
    "Activation",
    "ReLU",
    "LeakyReLU",
    "Tanh",
    "Identity",
    "DiagonalGain",
    "get_activation",
    "ACTIVATIONS",
    "PROX_ACTIVATIONS",
]


class Activation:
    """Base class: ``__call__`` is ``phi``, ``derivative`` is ``phi'`` (in [0, 1])."""

    name = "activation"

    def __call__(self, p: Tensor) -> Tensor:
        raise NotImplementedError

    def derivative(self, p: Tensor) -> Tensor:
        raise NotImplementedError

    def inplace(self, p: Tensor) -> Tensor:
        """``phi(p)`` written into ``p`` (the solvers' hot loop); defaults to out of place."""
        return self(p)

    def prox(self, v: Tensor, a: float) -> Tensor:
        """``prox_{a f}(v)`` where ``phi = prox_f``; only needed by splitting solvers."""
        raise NotImplementedError(f"activation {self.name!r} has no closed-form scaled prox")

    @property
    def has_prox(self) -> bool:
        """Whether `prox` is given in closed form (what the splitting solvers need)."""
        return type(self).prox is not Activation.prox

    def onnx(self, graph, p: str, nodes) -> str:
        """The activation as an ONNX node (``graph.node(op, inputs, nodes, **attrs)``)."""
        raise NotImplementedError(f"cannot export the activation {self.name!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReLU(Activation):
    name = "relu"

    def __call__(self, p: Tensor) -> Tensor:
        return torch.relu(p)

    def inplace(self, p: Tensor) -> Tensor:
        return p.relu_()

    def derivative(self, p: Tensor) -> Tensor:
        return (p > 0).to(p.dtype)

    def prox(self, v: Tensor, a: float) -> Tensor:
        return torch.relu(v)  # projection onto the orthant, whatever the scale

    def onnx(self, graph, p: str, nodes) -> str:
        return graph.node("Relu", [p], nodes)


class LeakyReLU(Activation):
    """``phi(p) = p`` for ``p >= 0`` and ``slope * p`` otherwise, with ``0 <= slope <= 1``."""

    name = "leaky_relu"

    def __init__(self, slope: float = 0.1) -> None:
        if not 0.0 <= slope <= 1.0:
            raise InputError(f"leaky ReLU slope must be in [0, 1] to be non-expansive, got {slope}")
        self.slope = float(slope)

    def __call__(self, p: Tensor) -> Tensor:
        return torch.nn.functional.leaky_relu(p, self.slope)

    def derivative(self, p: Tensor) -> Tensor:
        return torch.where(p > 0, 1.0, self.slope).to(p.dtype)

    def prox(self, v: Tensor, a: float) -> Tensor:
        # phi = prox_f with f(y) = (1/slope - 1) y^2 / 2 for y < 0; scale the quadratic by a.
        if self.slope == 0.0:
            return torch.relu(v)
        s = self.slope / (self.slope + a * (1.0 - self.slope))
        return torch.where(v > 0, v, s * v)

    def __repr__(self) -> str:
        return f"LeakyReLU(slope={self.slope})"

    def onnx(self, graph, p: str, nodes) -> str:
        return graph.node("LeakyRelu", [p], nodes, alpha=self.slope)


class Tanh(Activation):
    name = "tanh"

    def __call__(self, p: Tensor) -> Tensor:
        return torch.tanh(p)

    def inplace(self, p: Tensor) -> Tensor:
        return p.tanh_()

    def derivative(self, p: Tensor) -> Tensor:
        return 1.0 - torch.tanh(p) ** 2

    def onnx(self, graph, p: str, nodes) -> str:
        return graph.node("Tanh", [p], nodes)


class Identity(Activation):
    name = "identity"

    def __call__(self, p: Tensor) -> Tensor:
        return p

    def derivative(self, p: Tensor) -> Tensor:
        return torch.ones_like(p)

    def prox(self, v: Tensor, a: float) -> Tensor:
        return v

    def onnx(self, graph, p: str, nodes) -> str:
        return graph.node("Identity", [p], nodes)


class DiagonalGain(Activation):
    """The linear map ``v -> J * v`` with ``J`` in [0, 1]: the nonlinearity of the adjoint equation.

    ``J * v`` is ``prox_f`` of the convex quadratic ``f(y) = sum_i (1/J_i - 1) y_i^2 / 2``, so
    ``prox_{a f}(v) = J v / (J + a (1 - J))``; this lets splitting solvers run the adjoint too.
    """

    name = "diagonal"

    def __init__(self, gain: Tensor) -> None:
        self.gain = gain

    def __call__(self, p: Tensor) -> Tensor:
        return self.gain * p

    def inplace(self, p: Tensor) -> Tensor:
        return p.mul_(self.gain)

    def derivative(self, p: Tensor) -> Tensor:
        return self.gain.expand_as(p)

    def prox(self, v: Tensor, a: float) -> Tensor:
        J = self.gain
        return J * v / (J + a * (1.0 - J))


_REGISTRY = {"relu": ReLU, "leaky_relu": LeakyReLU, "tanh": Tanh, "identity": Identity}
ACTIVATIONS = tuple(_REGISTRY)
#: the activations with a closed-form scaled prox, which MON's splitting solvers need
PROX_ACTIVATIONS = tuple(name for name, cls in _REGISTRY.items() if cls.prox is not Activation.prox)


def get_activation(activation: str | Activation) -> Activation:
    """An `Activation` from a name (``relu``, ``leaky_relu``, ``tanh``, ``identity``)."""
    if isinstance(activation, Activation):
        return activation
    try:
        return _REGISTRY[activation]()
    except KeyError:
        raise InputError(
            f"unknown activation {activation!r}; choose one of {sorted(_REGISTRY)}"
        ) from None
