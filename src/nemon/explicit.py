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
    "ModuleRule",
    "RULES",
    "rule_for",
    "UnsupportedModule",
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


def implicit_box(
    layer: ImplicitLayer, lo: Tensor, hi: Tensor, injection=None
) -> tuple[Tensor, Tensor]:
    """A sound box of an implicit layer's state inside a larger model: its embedding box widened
    by the solver's a-posteriori error bound, ``eta_i * err`` per coordinate (docs/maths.md#intervals).
    ``injection``: a tighter box of ``B u + b``, see `ImplicitLayer.interval_bounds`."""
    x_lo, x_hi, err = layer.interval_bounds(lo, hi, injection)
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


class UnsupportedModule(NotImplementedError):
    """A module nemon has no rule for (bounds, Lipschitz constant or ONNX translation)."""


class ModuleRule:
    """What nemon knows about one kind of explicit module: a box containing its output for every
    input in a box (differentiable), an upper bound of its l_inf Lipschitz constant, and its ONNX
    translation (``graph`` is the exporter: ``graph.node(op, inputs, **attrs)``,
    ``graph.const(name, tensor)``). Adding a supported module is one subclass in `RULES`."""

    types: tuple[type, ...] = ()

    def interval(self, m: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        centre, radius = (hi + lo) / 2, (hi - lo) / 2
        c, r = self.affine_interval(m, centre, radius)
        return c - r, c + r

    def affine_interval(self, m, centre: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
        raise UnsupportedModule(f"no interval rule for {type(m).__name__}")

    def lipschitz(self, m: nn.Module) -> Tensor:
        raise UnsupportedModule(f"no Lipschitz rule for {type(m).__name__}")

    def onnx(self, m: nn.Module, x: str, graph) -> str:
        raise UnsupportedModule(f"cannot export module {type(m).__name__}")


class _SequentialRule(ModuleRule):
    types = (nn.Sequential,)

    def interval(self, m, lo, hi):
        for child in m:
            lo, hi = rule_for(child).interval(child, lo, hi)
        return lo, hi

    def lipschitz(self, m):
        out = torch.ones(())
        for child in m:
            out = out * rule_for(child).lipschitz(child)
        return out

    def onnx(self, m, x, graph):
        for child in m:
            x = rule_for(child).onnx(child, x, graph)
        return x


class _OrderPreservingRule(ModuleRule):
    """Monotone elementwise maps and order-preserving reshapes and pools: the box of the output
    is the image of the box's corners, and the l_inf norm does not grow."""

    def interval(self, m, lo, hi):
        return m(lo), m(hi)

    def lipschitz(self, m):
        return torch.ones(())


class _ReLURule(_OrderPreservingRule):
    types = (nn.ReLU,)

    def onnx(self, m, x, graph):
        return graph.node("Relu", [x])


class _FlattenRule(_OrderPreservingRule):
    types = (nn.Flatten,)

    def onnx(self, m, x, graph):
        if m.start_dim != 1 or m.end_dim != -1:
            raise UnsupportedModule("only nn.Flatten(start_dim=1) can be exported")
        return graph.node("Flatten", [x], axis=1)


class _PoolRule(_OrderPreservingRule):
    types = (nn.AvgPool2d, nn.MaxPool2d)

    def onnx(self, m, x, graph):
        pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
        stride = pair(m.stride if m.stride is not None else m.kernel_size)
        ph, pw = pair(m.padding)
        attrs = dict(kernel_shape=pair(m.kernel_size), strides=stride, pads=[ph, pw, ph, pw])
        attrs["ceil_mode"] = int(m.ceil_mode)
        if isinstance(m, nn.AvgPool2d):
            if m.divisor_override is not None:
                raise UnsupportedModule("AvgPool2d with divisor_override cannot be exported")
            return graph.node(
                "AveragePool", [x], count_include_pad=int(m.count_include_pad), **attrs
            )
        return graph.node("MaxPool", [x], dilations=pair(m.dilation), **attrs)


class _LinearRule(ModuleRule):
    types = (nn.Linear,)

    def affine_interval(self, m, centre, radius):
        return m(centre), F.linear(radius, m.weight.abs())

    def lipschitz(self, m):
        return m.weight.abs().sum(dim=1).amax()

    def onnx(self, m, x, graph):
        bias = m.bias if m.bias is not None else torch.zeros(m.out_features)
        return graph.node(
            "Gemm", [x, graph.const("W", m.weight), graph.const("bias", bias)], transB=1
        )


class _Conv2dRule(ModuleRule):
    types = (nn.Conv2d,)

    def affine_interval(self, m, centre, radius):
        r = F.conv2d(radius, m.weight.abs(), None, m.stride, m.padding, m.dilation, m.groups)
        return m(centre), r

    def lipschitz(self, m):  # each output sums at most every tap of its channel
        return m.weight.abs().sum(dim=(1, 2, 3)).amax()

    def onnx(self, m, x, graph):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UnsupportedModule(
                "only zero padding given as numbers can be exported for nn.Conv2d"
            )
        ph, pw = m.padding
        ins = [x, graph.const("K", m.weight)]
        if m.bias is not None:
            ins.append(graph.const("kb", m.bias))
        return graph.node(
            "Conv", ins, kernel_shape=list(m.kernel_size), strides=list(m.stride),
            pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=m.groups,
        )  # fmt: skip


class _NormalizeRule(ModuleRule):
    types = (Normalize,)

    def affine_interval(self, m, centre, radius):
        return m(centre), radius / m.std.abs()

    def lipschitz(self, m):
        return (1 / m.std.abs()).amax()

    def onnx(self, m, x, graph):
        centred = graph.node("Sub", [x, graph.const("mean", m.mean)])
        return graph.node("Div", [centred, graph.const("std", m.std)])


class _BatchNormRule(ModuleRule):
    types = (nn.BatchNorm2d,)

    def affine_interval(self, m, centre, radius):
        scale, shift = _bn_affine(m)
        return centre * scale[:, None, None] + shift[:, None, None], radius * scale.abs()[
            :, None, None
        ]

    def lipschitz(self, m):
        return _bn_affine(m)[0].abs().amax()

    def onnx(self, m, x, graph):
        if m.training or m.running_mean is None:
            raise UnsupportedModule("batch norm exports in eval mode with running statistics")
        weight = m.weight if m.weight is not None else torch.ones(m.num_features)
        bias = m.bias if m.bias is not None else torch.zeros(m.num_features)
        ins = [x, graph.const("gamma", weight), graph.const("beta", bias)]
        ins += [graph.const("mean", m.running_mean), graph.const("var", m.running_var)]
        return graph.node("BatchNormalization", ins, epsilon=float(m.eps))


class _ImplicitRule(ModuleRule):
    """An implicit layer inside an encoder: its embedding box widened by its error bound, and
    (14) in its weighted norm, then ``||x|| <= max eta ||x||_eta``."""

    types = (ImplicitLayer,)

    def interval(self, m, lo, hi):
        return implicit_box(m, lo, hi)

    def lipschitz(self, m):
        terms = m.lipschitz_terms()
        if terms.norm != "inf":
            raise UnsupportedModule(f"{m._name()} has no l_inf bound (NEMON and IDL do)")
        eta = m.eta()
        top = 1.0 if eta is None else eta.detach().amax()
        return top * terms.input_norm / terms.denominator

    def onnx(self, m, x, graph):
        raise UnsupportedModule("implicit layers inside the encoder cannot be exported")


#: The rules, one per supported kind of module; `rule_for` picks the first that matches.
RULES: tuple[ModuleRule, ...] = (
    _SequentialRule(),
    _ReLURule(),
    _FlattenRule(),
    _PoolRule(),
    _LinearRule(),
    _Conv2dRule(),
    _NormalizeRule(),
    _BatchNormRule(),
    _ImplicitRule(),
)

SUPPORTED_MODULES = tuple(t for rule in RULES for t in rule.types)


def rule_for(module: nn.Module) -> ModuleRule:
    """The rule for ``module``'s type; an `UnsupportedModule` error listing the supported ones."""
    for rule in RULES:
        if isinstance(module, rule.types):
            return rule
    names = ", ".join(t.__name__ for t in SUPPORTED_MODULES)
    raise UnsupportedModule(
        f"{type(module).__name__} is not supported (bounds, Lipschitz constants, export); "
        f"supported modules: {names}"
    )


def propagate_interval(module: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """A box ``[lo', hi']`` containing ``module(u)`` for every ``u`` in ``[lo, hi]`` (differentiable)."""
    return rule_for(module).interval(module, lo, hi)


def linf_lipschitz(module: nn.Module | None) -> Tensor:
    """Upper bound of the l_inf -> l_inf Lipschitz constant of ``module`` (a product over layers)."""
    return torch.ones(()) if module is None else rule_for(module).lipschitz(module)


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
