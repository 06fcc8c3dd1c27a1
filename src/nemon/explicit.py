"""Explicit modules around an implicit layer: interval arithmetic and l_inf Lipschitz constants.

An implicit model may inject its input through an explicit network (the encoder, e.g. a small
strided conv stack) before the equilibrium. Certificates need two things from such a network:
a box that contains its outputs for every input in a box (:func:`propagate_interval`, interval
bound propagation in centre-radius form, Gowal et al. 2018), and an upper bound of its l_inf
Lipschitz constant (:func:`linf_lipschitz`). Supported: ``Linear``, ``Conv2d``, ``ReLU``,
``Flatten``, ``AvgPool2d``, ``MaxPool2d``, :class:`Normalize`, ``BatchNorm2d`` in eval mode,
and ``Sequential`` of these; anything else is refused by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ImplicitLayer

__all__ = [
    "Normalize",
    "propagate_interval",
    "linf_lipschitz",
    "ibp_initialise",
    "SUPPORTED_MODULES",
    "ENCODERS",
]


class Normalize(nn.Module):
    """``(u - mean) / std`` per channel (input normalisation inside the model)."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, u: Tensor) -> Tensor:
        return (u - self.mean) / self.std


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
    """Scale and shift of a batch norm in eval mode, per channel."""
    if bn.training:
        raise ValueError("bounds through BatchNorm2d need eval mode (call model.eval())")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


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
    by the solver's a-posteriori error bound, ``eta_i * err`` per coordinate (MATH.md section 6)."""
    x_lo, x_hi, err = layer.interval_bounds(lo, hi)
    if err is None:
        raise ValueError(f"{layer._name()} gave no error bound: its box would not be sound")
    eta = layer.eta()
    trailing = [1] * (x_lo.dim() - 2)
    scale = 1.0 if eta is None else eta.detach().reshape(1, -1, *trailing)
    widen = scale * err.detach().reshape(-1, 1, *trailing)
    return x_lo - widen, x_hi + widen


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


def _two_strided(in_channels: int, width: int) -> nn.Sequential:
    """Two stride-2 4x4 convolutions (``width`` and ``2 width`` channels): 28x28 -> 7x7."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
    )


def _conv_small(in_channels: int) -> nn.Sequential:
    """16 and 32 channels: 28x28 -> 32 x 7 x 7 features."""
    return _two_strided(in_channels, 16)


def _conv_wide(in_channels: int) -> nn.Sequential:
    """``conv-small`` with twice the channels (32 and 64): 28x28 -> 64 x 7 x 7 features."""
    return _two_strided(in_channels, 32)


def _conv_medium(in_channels: int) -> nn.Sequential:
    """Conv 32 (3x3), conv 32 (4x4, stride 2), conv 64 (3x3), conv 64 (4x4, stride 2)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
    )


ENCODERS = {"conv-small": _conv_small, "conv-wide": _conv_wide, "conv-medium": _conv_medium}


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
