"""Classifiers built from an implicit layer and a linear readout (the paper's FC and conv nets)."""

from __future__ import annotations

from torch import Tensor, nn

from .conv_layers import MONConv2d, NEMONConv2d
from .layers import IDLDense, ImplicitLayer, MONDense, NEMONDense
from .lipschitz import lipschitz_bound, lipschitz_regularizer

__all__ = ["Classifier", "build_model", "MODEL_FAMILIES"]


class Classifier(nn.Module):
    """``y = C features(x*) + D u + c`` with ``x*`` the equilibrium of ``layer``.

    Args:
        layer: any implicit layer (NEMON, MON, IDL; dense or conv).
        num_classes: number of logits ``q``.
        direct: include the direct term ``D u`` of model (11) (off in the paper's experiments).
    """

    def __init__(self, layer: ImplicitLayer, num_classes: int, direct: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.readout = nn.Linear(layer.num_features, num_classes)
        in_dim = 1
        for s in layer.input_shape():
            in_dim *= s
        self.direct = nn.Linear(in_dim, num_classes, bias=False) if direct else None

    def forward(self, u: Tensor) -> Tensor:
        u = self.prepare_input(u)
        y = self.readout(self.layer.features(self.layer(u)))
        if self.direct is not None:
            y = y + self.direct(u.flatten(1))
        return y

    def prepare_input(self, u: Tensor) -> Tensor:
        """The layer's input: images flattened for dense layers, ``(batch, c, h, w)`` for conv."""
        if len(self.layer.input_shape()) == 1 and u.dim() > 2:
            return u.flatten(1)
        return u

    def readout_weights(self) -> tuple[Tensor, Tensor | None]:
        """``(C, D)`` acting on features and on the flattened input."""
        return self.readout.weight, None if self.direct is None else self.direct.weight

    def lipschitz_bound(self) -> Tensor:
        """Input-output l_inf Lipschitz bound, eq. (15)."""
        return lipschitz_bound(self)

    def lipschitz_penalty(self, kind: str = "product") -> Tensor:
        """The regulariser of eq. (18) (``kind``: ``product`` or ``halved_sum``)."""
        return lipschitz_regularizer(
            self.layer.lipschitz_terms(), *self.readout_weights(), kind=kind
        )


MODEL_FAMILIES = ("nemon", "mon", "idl")


def build_model(
    family: str,
    arch: str = "dense",
    input_shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    hidden: int = 100,
    gamma: float = 0.95,
    **layer_kwargs,
) -> Classifier:
    """A classifier by name: ``family`` in ``nemon | mon | idl``, ``arch`` in ``dense | conv``.

    ``hidden`` is the state dimension (dense) or the number of channels (conv).
    """
    c, h, w = input_shape
    if arch == "dense":
        dense = {"nemon": NEMONDense, "mon": MONDense, "idl": IDLDense}
        if family not in dense:
            raise ValueError(f"unknown model family {family!r}; choose one of {MODEL_FAMILIES}")
        layer = dense[family](c * h * w, hidden, gamma=gamma, **layer_kwargs)
    elif arch == "conv":
        conv = {"nemon": NEMONConv2d, "mon": MONConv2d}
        if family not in conv:
            raise ValueError(
                f"conv architecture is available for 'nemon' and 'mon', not {family!r}"
            )
        layer = conv[family](c, hidden, h, gamma=gamma, **layer_kwargs)
    else:
        raise ValueError(f"unknown architecture {arch!r}; use 'dense' or 'conv'")
    return Classifier(layer, num_classes)
