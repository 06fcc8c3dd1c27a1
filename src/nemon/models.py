"""Classifiers around an implicit layer: an optional explicit encoder, the layer, a linear readout.

``y = C features(x*) + D u + c`` with ``x* = Phi(A x* + B v + b)`` and ``v = encoder(u)`` (the
identity, with images flattened for dense layers, when there is no encoder). The paper's FC and
conv networks have no encoder; certified architectures inject through a small conv stack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from .arguments import RecordsArguments
from .conv_layers import MONConv2d, NEMONConv2d
from .errors import InputError
from .explicit import (
    ENCODERS,
    encode_with_error,
    ibp_initialise,
    linf_lipschitz,
    propagate_interval,
)
from .explicit import running_error as encoder_running_error
from .layers import ExplicitDense, IDLDense, ImplicitLayer, MONDense, NEMONDense
from .lipschitz import LipschitzTerms, lipschitz_bound, lipschitz_regularizer, state_bound

__all__ = ["Classifier", "build_model", "build_from_config", "MODEL_FAMILIES", "ARCHITECTURES"]


@dataclass
class ModelSolution:
    """`Classifier.solve`'s result: the logits, the implicit state, and per sample a bound on
    the state's distance from the exact equilibrium (weighted l_inf; None without a bound)."""

    logits: Tensor
    x: Tensor
    error_bound: Tensor | None


class Classifier(RecordsArguments, nn.Module):
    """An implicit layer between an optional explicit encoder and a linear readout.

    Args:
        layer: any implicit layer (NEMON, MON, IDL; dense or conv), or `ExplicitDense`.
        num_classes: number of logits ``q``.
        direct: include the direct term ``D u`` of model (11) (off in the paper's experiments).
        encoder: explicit modules mapping the input to the layer's input (see
            `nemon.explicit` for the ones bounds and certificates support).
        input_shape: the shape of one input sample, e.g. ``(1, 28, 28)``; required with an
            encoder (the layer alone cannot tell it), otherwise the layer's input shape. It is
            checked by running the encoder once on zeros, so a model that is built also trains,
            certifies and exports.
    """

    def __init__(
        self,
        layer: ImplicitLayer,
        num_classes: int,
        direct: bool = False,
        encoder: nn.Module | None = None,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.layer = layer
        self.readout = nn.Linear(layer.num_features, num_classes)
        if encoder is not None and input_shape is None:
            raise InputError(
                "Classifier with an encoder needs input_shape, the shape of one input sample "
                "(for example input_shape=(1, 28, 28))"
            )
        shape = input_shape if input_shape is not None else layer.input_shape()
        self.input_shape = tuple(int(s) for s in shape)  # one sample (images for the dense FC too)
        if encoder is not None:
            _check_encoder(encoder, self.input_shape, layer)
        in_dim = 1
        for s in shape:
            in_dim *= s
        self.direct = nn.Linear(in_dim, num_classes, bias=False) if direct else None

    def forward(self, u: Tensor) -> Tensor:
        u = self.prepare_input(u)
        y = self.readout(self.layer.features(self.layer(self.encode(u))))
        if self.direct is not None:
            y = y + self.direct(u.flatten(1))
        return y

    @property
    def num_classes(self) -> int:
        """Number of logits ``q``."""
        return self.readout.out_features

    def classifiers(self) -> tuple[Classifier, ...]:
        """The classifiers whose mean logits this model is: itself (an `Ensemble`: its
        members). Certificates bound each and average their bounds."""
        return (self,)

    def prepare_input(self, u: Tensor) -> Tensor:
        """The model's input: images flattened for a dense layer without encoder."""
        if self.encoder is None and len(self.layer.input_shape()) == 1 and u.dim() > 2:
            return u.flatten(1)
        return u

    def encode(self, u: Tensor) -> Tensor:
        """The implicit layer's input ``v = encoder(u)``."""
        return u if self.encoder is None else self.encoder(u)

    def solve(self, u: Tensor) -> ModelSolution:
        """Logits, state and the state's error bound for input ``u``: the layer's own
        a-posteriori bound plus, through (14), what the encoder's implicit layers' errors move
        it (`nemon.explicit.encode_with_error`). Certificates use this, so every implicit
        layer of the model is charged; nothing is read back from the layers' state."""
        u = self.prepare_input(u)
        v, inner = encode_with_error(self.encoder, u)
        solution = self.layer.solve(v)
        error = solution.error_bound
        if inner is not None and error is not None:
            error = error + state_bound(self.layer.lipschitz_terms()) * inner
        logits = self.readout(self.layer.features(solution.x))
        if self.direct is not None:
            logits = logits + self.direct(u.flatten(1))
        return ModelSolution(logits, solution.x, error)

    def running_error(self) -> Tensor | None:
        """For the model as it runs in eval mode, a bound on its state's distance from the
        exact equilibrium (the layer's norm) that holds for every input whose solves converge:
        the layer's `running_error` plus, through (14), what the encoder's implicit layers'
        stated errors move it (`nemon.explicit.running_error`). None when a layer states none
        (``error_tol=None``). Certificates charge it (docs/guarantees.md)."""
        own, inner = self.layer.running_error(), encoder_running_error(self.encoder)
        if own is None or inner is None:
            return None
        error = torch.tensor(float(own), dtype=torch.float64)
        if bool(inner > 0):
            terms = self.layer.lipschitz_terms()
            if terms.norm != "inf":
                return None
            error = error + state_bound(terms).detach().double() * inner
        return error

    def encode_interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """A box containing ``encoder(u)`` for every ``u`` in ``[lo, hi]``."""
        return (lo, hi) if self.encoder is None else propagate_interval(self.encoder, lo, hi)

    def readout_weights(self) -> tuple[Tensor, Tensor | None]:
        """``(C, D)`` acting on features and on the flattened input."""
        return self.readout.weight, None if self.direct is None else self.direct.weight

    def lipschitz_terms(self) -> LipschitzTerms:
        """The layer's terms with the encoder's l_inf Lipschitz bound folded into ``||B||``."""
        terms = self.layer.lipschitz_terms()
        if self.encoder is None:
            return terms
        if terms.norm != "inf":
            raise NotImplementedError("an encoder needs a layer with l_inf bounds (NEMON, IDL)")
        scale = linf_lipschitz(self.encoder).to(terms.input_norm)
        return replace(terms, input_norm=terms.input_norm * scale)

    def lipschitz_bound(self) -> Tensor:
        """Input-output l_inf Lipschitz bound, eq. (15)."""
        return lipschitz_bound(self)

    def lipschitz_penalty(self, kind: str = "product") -> Tensor:
        """The regulariser of eq. (18) (``kind``: ``product`` or ``halved_sum``)."""
        return lipschitz_regularizer(self.lipschitz_terms(), *self.readout_weights(), kind=kind)


def _check_encoder(encoder: nn.Module, input_shape: tuple[int, ...], layer) -> None:
    """The encoder maps one zero sample of ``input_shape`` to the layer's input shape (run in
    eval mode, so batch norms record nothing; the encoder's mode is restored)."""
    param = next(encoder.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else None
    training = encoder.training
    try:
        with torch.no_grad():
            out = encoder.eval()(torch.zeros(1, *input_shape, dtype=dtype, device=device))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(
            f"the encoder cannot take inputs of shape {input_shape}: {first}"
        ) from None
    finally:
        encoder.train(training)
    if tuple(out.shape[1:]) != tuple(layer.input_shape()):
        raise InputError(
            f"the encoder maps inputs of shape {input_shape} to {tuple(out.shape[1:])}, but the "
            f"layer expects {tuple(layer.input_shape())}"
        )


MODEL_FAMILIES = ("nemon", "mon", "idl", "explicit")
INITIALISATIONS = ("default", "ibp", "ibp-zero")
ARCHITECTURES = ("dense", "conv", *ENCODERS, "conv-stacked")


def build_model(
    family: str,
    arch: str = "dense",
    input_shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    hidden: int = 100,
    gamma: float = 0.95,
    ibp_init: bool = False,
    zero_feedback: bool = False,
    **layer_kwargs,
) -> Classifier:
    """A classifier by name.

    ``family``: ``nemon | mon | idl`` or ``explicit`` (a ReLU layer of the same width, ablations).
    ``arch``: ``dense`` (the paper's FC), ``conv`` (the paper's single conv layer), an encoder
    of `nemon.explicit.ENCODERS` followed by a dense layer (``conv-small``, ``conv-medium``,
    ``conv-small-bn``; described in `nemon.explicit.ENCODER_DESCRIPTIONS`), or
    ``conv-stacked`` (two implicit layers).
    ``hidden`` is the state dimension (dense) or the number of channels (conv).
    ``ibp_init=True``: the IBP-friendly initialisation of Shi et al. (2021) for
    the encoder and the injection ``B``. ``zero_feedback=True``: start the dense implicit layer at
    ``A = 0``, so that the model starts as its explicit ablation ``relu(B u + b)`` and training
    adds feedback (NEMON and IDL with ``gamma >= 0``).
    """
    model = _build(family, arch, input_shape, num_classes, hidden, gamma, layer_kwargs)
    if zero_feedback:
        _zero_feedback(model.layer, family, gamma)
    if ibp_init:
        if not isinstance(getattr(model.layer, "B", None), nn.Linear):
            raise InputError(
                f"ibp_init needs a dense layer (arch dense or an encoder), not {arch!r}"
            )
        if model.encoder is not None:
            ibp_initialise(model.encoder)
        ibp_initialise(model.layer.B)
    return model


def _build(family, arch, input_shape, num_classes, hidden, gamma, layer_kwargs) -> Classifier:
    c, h, w = input_shape
    dense = {"nemon": NEMONDense, "mon": MONDense, "idl": IDLDense, "explicit": ExplicitDense}
    if family not in dense:
        raise InputError(f"unknown model family {family!r}; choose one of {MODEL_FAMILIES}")
    if arch == "dense":
        layer = dense[family](c * h * w, hidden, gamma=gamma, **layer_kwargs)
        return Classifier(layer, num_classes, input_shape=input_shape)
    if arch == "conv":
        conv = {"nemon": NEMONConv2d, "mon": MONConv2d}
        if family not in conv:
            raise InputError(
                f"conv architecture is available for 'nemon' and 'mon', not {family!r}"
            )
        return Classifier(conv[family](c, hidden, h, gamma=gamma, **layer_kwargs), num_classes)
    if arch in ENCODERS or arch == "conv-stacked":
        if arch in ENCODERS:  # channels-last convolutions: faster backward passes on CPU
            encoder = ENCODERS[arch](c, image_size=(h, w)).to(memory_format=torch.channels_last)
        else:
            encoder = stacked_encoder(c, h, gamma, **layer_kwargs)
        with torch.no_grad():  # eval mode: batch norms keep their initial running statistics
            features = encoder.eval()(torch.zeros(1, c, h, w)).shape[1]
        encoder.train()
        layer = dense[family](features, hidden, gamma=gamma, **layer_kwargs)
        return Classifier(layer, num_classes, encoder=encoder, input_shape=input_shape)
    raise InputError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")


def stacked_encoder(
    in_channels: int, size: int, gamma: float, channels: int = 16, **layer_kwargs
) -> nn.Sequential:
    """Two implicit layers stacked: conv (stride 2) -> NEMON conv layer on the downsampled
    image (zero padding, ``mu <= gamma``) -> conv (stride 2) -> flatten; the classifier adds the
    dense NEMON layer. Each implicit layer is well posed by construction; bounds go through both
    (`nemon.explicit.implicit_box`)."""
    if size % 4:
        raise InputError(f"conv-stacked needs an image size divisible by 4, got {size}")
    implicit = NEMONConv2d(
        channels, channels, size // 2, gamma=gamma, padding="zeros", pool=1, **layer_kwargs
    )
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
        nn.ReLU(),
        implicit,
        nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
    )


def _zero_feedback(layer: nn.Module, family: str, gamma: float) -> None:
    """``A = 0`` through the layer's parametrization (its right inverse)."""
    if family == "explicit":
        return
    if not isinstance(layer, (NEMONDense, IDLDense)):
        raise InputError(f"zero_feedback needs a dense NEMON or IDL layer, not {family!r}")
    if gamma < 0:
        raise InputError(f"A = 0 needs gamma >= 0 (mu(A) <= gamma), got gamma = {gamma}")
    with torch.no_grad():
        layer.A = torch.zeros_like(layer.A)


def build_from_config(config, input_shape, num_classes: int) -> Classifier:
    """The classifier a run's configuration describes (a ``TrainConfig`` or its ``asdict``)."""
    c = config if isinstance(config, dict) else asdict(config)
    kwargs = dict(c.get("layer_kwargs") or {})
    kwargs.update(activation=c["activation"], tol=c["tol"], max_iter=c["max_iter"])
    kwargs["residual"] = c["residual"]
    if c.get("solver"):
        kwargs["solver"] = c["solver"]
    init = c.get("init", "default")
    shape = tuple(input_shape)
    return build_model(
        c["model"],
        c["arch"],
        shape,
        num_classes,
        c["hidden"],
        c["gamma"],
        ibp_init=init in ("ibp", "ibp-zero"),
        zero_feedback=init == "ibp-zero",
        **kwargs,
    )
