"""Explicit modules around an implicit layer: interval arithmetic and l_inf Lipschitz constants.

An implicit model may inject its input through an explicit network (the encoder, e.g. a small
strided conv stack) before the equilibrium. Certificates need two things from such a network:
a box that contains its outputs for every input in a box (`propagate_interval`, interval
bound propagation in centre-radius form, Gowal et al. 2018), and an upper bound of its l_inf
Lipschitz constant (`linf_lipschitz`). Supported: ``Linear``, ``Conv2d``, ``ReLU``,
``Flatten``, ``AvgPool2d``, ``MaxPool2d``, `Normalize`, ``BatchNorm2d`` and ``Sequential``
of these; anything else is refused by name. A batch norm is an affine map per channel: its running
statistics in eval mode; in training mode (interval training), the statistics of the last clean
batch, which `BatchNorm2d` records (Shi et al., 2021).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ImplicitLayer

__all__ = [
    "Normalize",
    "BatchNorm2d",
    "propagate_interval",
    "linf_lipschitz",
    "ibp_initialise",
    "SUPPORTED_MODULES",
    "ENCODERS",
    "ENCODER_DESCRIPTIONS",
    "conv_stack",
    "encode_with_error",
]


class Normalize(nn.Module):
    """``(u - mean) / std`` per channel (input normalisation inside the model)."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, u: Tensor) -> Tensor:
        return (u - self.mean) / self.std


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that records the statistics of its last training-mode batch.

    Interval training runs the clean batch first; the interval pass then normalises with the same
    statistics (``batch_stats``), as Shi et al. (2021) do, so that the bounds train the network
    the clean pass trains. The statistics keep their graph: detached, the robust loss would see
    the convolution's scale without the normalisation that undoes it, and shrink the weights
    (measured: 0.81 against 0.94 certified after 19 epochs). Certificates use eval mode (running
    statistics).
    """

    batch_stats: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            self.batch_stats = (mean, var)
        return super().forward(x)

    def train(self, mode: bool = True):
        self.batch_stats = None  # a new mode: the last batch's statistics no longer apply
        return super().train(mode)

    def __getstate__(self):  # copies leave the statistics (and their graph) behind
        return {**super().__getstate__(), "batch_stats": None}


SUPPORTED_MODULES = (
    nn.Sequential,
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.Flatten,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.BatchNorm2d,
    Normalize,
    ImplicitLayer,
)


def _refuse(module: nn.Module) -> None:
    names = ", ".join(m.__name__ for m in SUPPORTED_MODULES)
    raise NotImplementedError(
        f"interval bounds through {type(module).__name__} are not supported; use {names}"
    )


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Scale and shift of a batch norm per channel: running statistics in eval mode, the last
    clean batch's in training mode (`BatchNorm2d`)."""
    if not bn.training and bn.running_mean is not None:
        mean, var = bn.running_mean, bn.running_var
    elif getattr(bn, "batch_stats", None) is not None:
        mean, var = bn.batch_stats
    else:
        raise ValueError(
            "bounds through a BatchNorm2d in training mode need the statistics of a clean batch "
            "(nemon.explicit.BatchNorm2d after a forward pass); certificates need eval mode"
        )
    weight = torch.ones_like(mean) if bn.weight is None else bn.weight
    bias = torch.zeros_like(mean) if bn.bias is None else bn.bias
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def propagate_interval(module: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """A box ``[lo', hi']`` containing ``module(u)`` for every ``u`` in ``[lo, hi]`` (differentiable)."""
    if isinstance(module, nn.Sequential):
        for m in module:
            lo, hi = propagate_interval(m, lo, hi)
        return lo, hi
    if isinstance(module, (nn.ReLU, nn.Flatten, nn.AvgPool2d, nn.MaxPool2d)):
        return module(lo), module(hi)  # monotone elementwise or order-preserving
    if isinstance(module, ImplicitLayer):
        return implicit_box(module, lo, hi)
    centre, radius = (hi + lo) / 2, (hi - lo) / 2
    if isinstance(module, nn.Linear):
        c, r = module(centre), F.linear(radius, module.weight.abs())
    elif isinstance(module, nn.Conv2d):
        c = module(centre)
        r = F.conv2d(
            radius, module.weight.abs(), None, module.stride, module.padding, module.dilation,
            module.groups,
        )  # fmt: skip
    elif isinstance(module, Normalize):
        c, r = module(centre), radius / module.std.abs()
    elif isinstance(module, nn.BatchNorm2d):
        scale, shift = _bn_affine(module)
        c = centre * scale[:, None, None] + shift[:, None, None]
        r = radius * scale.abs()[:, None, None]
    else:
        _refuse(module)
    return c - r, c + r


def implicit_box(layer: ImplicitLayer, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """A sound box of an implicit layer's state inside a larger model: its embedding box widened
    by the solver's a-posteriori error bound, ``eta_i * err`` per coordinate (docs/maths.md#intervals)."""
    x_lo, x_hi, err = layer.interval_bounds(lo, hi)
    if err is None:
        raise ValueError(f"{layer._name()} gave no error bound: its box would not be sound")
    eta = layer.eta()
    trailing = [1] * (x_lo.dim() - 2)
    scale = 1.0 if eta is None else eta.detach().reshape(1, -1, *trailing)
    widen = scale * err.detach().reshape(-1, 1, *trailing)
    return x_lo - widen, x_hi + widen


def encode_with_error(module: nn.Module | None, u: Tensor) -> tuple[Tensor, Tensor | None]:
    """``module(u)`` and, per sample, a bound on its l_inf distance from the exact value: each
    implicit layer inside adds its solve's a-posteriori error bound (``max eta * err``), and
    every later module, implicit or not, scales what reaches it by its l_inf Lipschitz constant
    (docs/maths.md#certificates). The error is None when no implicit layer is inside."""
    if module is None:
        return u, None
    return _carry(module, u, None)


def _carry(module: nn.Module, u: Tensor, error: Tensor | None) -> tuple[Tensor, Tensor | None]:
    if isinstance(module, nn.Sequential):
        for m in module:
            u, error = _carry(m, u, error)
        return u, error
    if isinstance(module, ImplicitLayer):
        solution = module.solve(u)
        if solution.error_bound is None:
            raise ValueError(f"{module._name()} gives no error bound: its output is not bounded")
        eta = module.eta()
        own = (1.0 if eta is None else eta.detach().amax()) * solution.error_bound.detach()
        return solution.x, own if error is None else own + linf_lipschitz(module) * error
    if any(isinstance(m, ImplicitLayer) for m in module.modules()):
        raise NotImplementedError(
            f"implicit layers inside a {type(module).__name__}: only nn.Sequential encoders "
            "pass their solve errors on"
        )
    out = module(u)
    return out, None if error is None else linf_lipschitz(module).to(error) * error


def linf_lipschitz(module: nn.Module | None) -> Tensor:
    """Upper bound of the l_inf -> l_inf Lipschitz constant of ``module`` (a product over layers)."""
    if module is None:
        return torch.ones(())
    if isinstance(module, nn.Sequential):
        out = torch.ones(())
        for m in module:
            out = out * linf_lipschitz(m)
        return out
    if isinstance(module, (nn.ReLU, nn.Flatten, nn.AvgPool2d, nn.MaxPool2d)):
        return torch.ones(())  # averages and maxima do not grow the l_inf norm
    if isinstance(
        module, ImplicitLayer
    ):  # (14) in the weighted norm, then ||x|| <= max eta ||x||_eta
        terms = module.lipschitz_terms()
        if terms.norm != "inf":
            raise NotImplementedError(f"{module._name()} has no l_inf bound (NEMON and IDL do)")
        eta = module.eta()
        top = 1.0 if eta is None else eta.detach().amax()
        return top * terms.input_norm / terms.denominator
    if isinstance(module, nn.Linear):
        return module.weight.abs().sum(dim=1).amax()
    if isinstance(module, nn.Conv2d):  # each output sums at most every tap of its channel
        return module.weight.abs().sum(dim=(1, 2, 3)).amax()
    if isinstance(module, Normalize):
        return (1 / module.std.abs()).amax()
    if isinstance(module, nn.BatchNorm2d):
        return _bn_affine(module)[0].abs().amax()
    _refuse(module)


def conv_stack(
    in_channels: int, convs, batch_norm: bool = False, image_size=(28, 28), dense=()
) -> nn.Sequential:
    """Convolutions ``(channels, kernel, stride)``, padding 1 (3x3 keeps the size, 4x4 stride 2
    halves it), each followed by a ReLU, then flatten, then ``Linear(width) -> ReLU`` for each
    width in ``dense``. With ``batch_norm``: conv (no bias) -> `BatchNorm2d` -> ReLU, as in
    Shi et al. (2021). ``image_size``: the input's ``(height, width)`` (``dense`` needs it)."""
    layers: list[nn.Module] = []
    height, width = image_size
    for channels, kernel, stride in convs:
        layers.append(nn.Conv2d(in_channels, channels, kernel, stride, 1, bias=not batch_norm))
        if batch_norm:
            layers.append(BatchNorm2d(channels))
        layers.append(nn.ReLU())
        in_channels = channels
        height, width = ((n + 2 - kernel) // stride + 1 for n in (height, width))
    layers.append(nn.Flatten())
    features = in_channels * height * width
    for units in dense:
        layers += [nn.Linear(features, units), nn.ReLU()]
        features = units
    return nn.Sequential(*layers)


SMALL = [(16, 4, 2), (32, 4, 2)]  # 28x28 -> 32 x 7 x 7 features
MEDIUM = [(32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)]  # 64 x 7 x 7

#: Encoders by name, each ``(in_channels, image_size=(height, width)) -> nn.Sequential``; other
#: stacks (dense layers after the convolutions, other widths) are one ``conv_stack`` call away.
ENCODERS = {
    "conv-small": partial(conv_stack, convs=SMALL),
    "conv-medium": partial(conv_stack, convs=MEDIUM),
    "conv-small-bn": partial(conv_stack, convs=SMALL, batch_norm=True),
}

#: One description per encoder, for cards, docs and the command line's help.
ENCODER_DESCRIPTIONS = {
    "conv-small": "conv 16 4x4 stride 2, ReLU, conv 32 4x4 stride 2, ReLU, flatten "
    "(1568 features on 28x28)",
    "conv-medium": "conv 32 3x3, ReLU, conv 32 4x4 stride 2, ReLU, conv 64 3x3, ReLU, conv 64 4x4 "
    "stride 2, ReLU, flatten (3136 features on 28x28)",
    "conv-small-bn": "conv-small with a batch norm after each convolution (Shi et al. 2021)",
}


def ibp_initialise(module: nn.Module) -> None:
    """IBP-friendly initialisation (Shi et al., 2021): weights ``N(0, 2 pi / fan_in)``-scaled so
    that interval widths neither explode nor vanish through ReLU layers; zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.normal_(0.0, (2 * torch.pi) ** 0.5 / fan_in)
                if m.bias is not None:
                    m.bias.zero_()
