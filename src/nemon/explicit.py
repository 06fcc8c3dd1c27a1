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
from torch.nn.utils import parametrize

from .arguments import RecordsArguments
from .errors import InputError
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
    "register_rule",
    "check_point_evaluation",
    "running_error",
    "UnsupportedModule",
    "ENCODERS",
    "ENCODER_DESCRIPTIONS",
    "conv_stack",
    "encode_with_error",
    "plain_type",
]


class Normalize(RecordsArguments, nn.Module):
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
        raise InputError(
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
        raise InputError(f"{layer._name()} gave no error bound: its box would not be sound")
    eta = layer.eta()
    trailing = [1] * (x_lo.dim() - 2)
    scale = 1.0 if eta is None else eta.detach().reshape(1, -1, *trailing)
    widen = scale * err.detach().reshape(-1, 1, *trailing)
    return x_lo - widen, x_hi + widen


def encode_with_error(module: nn.Module | None, u: Tensor) -> tuple[Tensor, Tensor | None]:
    """``module(u)`` by the modules' rules and, per sample, a bound on its l_inf distance from
    the exact value: each implicit layer inside adds its solve's a-posteriori error bound
    (``max eta * err``), and every later module, implicit or not, scales what reaches it by its
    l_inf Lipschitz constant (docs/maths.md#certificates). The error is None when no implicit
    layer is inside."""
    if module is None:
        return u, None
    return _carry(module, u, None)


def _carry(module: nn.Module, u: Tensor, error: Tensor | None) -> tuple[Tensor, Tensor | None]:
    rule = rule_for(module)
    if isinstance(rule, _SequentialRule):
        for m in module:
            u, error = _carry(m, u, error)
        return u, error
    if isinstance(rule, _ImplicitRule):
        solution = module.solve(u)
        if solution.error_bound is None:
            raise InputError(f"{module._name()} gives no error bound: its output is not bounded")
        own = _eta_max(module) * solution.error_bound.detach()
        return solution.x, own if error is None else own + rule.lipschitz(module) * error
    out = rule.evaluate(module, u)
    return out, None if error is None else rule.lipschitz(module).to(error) * error


def running_error(module: nn.Module | None) -> Tensor | None:
    """For the modules as they run in eval mode, a bound on the l_inf distance of their output
    from the exact value, for every input: each implicit layer's stated `running_error` carried
    through the later modules' Lipschitz constants, as `encode_with_error` carries computed
    bounds. None when an implicit layer states none; 0 without implicit layers."""
    error = torch.zeros(())
    for m in _leaves(module):
        rule = rule_for(m)
        if isinstance(rule, _ImplicitRule):
            own = m.running_error()
            if own is None:
                return None
            error = _eta_max(m) * own + rule.lipschitz(m) * error
        elif bool(error > 0):
            error = rule.lipschitz(m).to(error) * error
    return error


def _leaves(module: nn.Module | None) -> list[nn.Module]:
    """The modules of a (nested) ``nn.Sequential`` in the order they run."""
    if module is None:
        return []
    if isinstance(rule_for(module), _SequentialRule):
        return [leaf for m in module for leaf in _leaves(m)]
    return [module]


def _eta_max(layer: ImplicitLayer):
    """``max eta``: ``||x||_inf <= max eta ||x||_{inf,[eta]^-1}``."""
    eta = layer.eta()
    return 1.0 if eta is None else eta.detach().amax()


class UnsupportedModule(NotImplementedError):
    """A module nemon has no rule for (bounds, Lipschitz constant or ONNX translation), or one
    whose behaviour its rule does not model (an option, a hook, a subclass's own forward)."""


class ModuleRule:
    """What nemon knows about one kind of explicit module, stated once: its point evaluation
    (`evaluate`, functional: never in place, so stored boxes stay as computed), a box containing
    its output for every input in a box (differentiable), an upper bound of its l_inf Lipschitz
    constant, its linear (CROWN) backward rule where it has one, and its ONNX translation
    (``graph`` is the exporter: ``graph.node(op, inputs, **attrs)``, ``graph.const(name,
    tensor)``).

    A rule matches the exact types in ``types``, never their subclasses (a subclass may compute
    something else); `check` refuses by name any option of a module the rule does not model.
    Adding a module is one subclass, given to `register_rule`."""

    types: tuple[type, ...] = ()

    #: how `nemon.verify` encodes the module: ``"affine"`` (a matrix read off `evaluate` on unit
    #: vectors), ``"relu"``, ``"maxpool"`` (ReLU blocks, windows read off `evaluate`),
    #: ``"sequential"``, ``"implicit"``; None: refused by name
    verify_kind: str | None = None

    def check(self, m: nn.Module) -> None:
        """Raise `UnsupportedModule` naming an option of ``m`` this rule does not model."""

    def evaluate(self, m: nn.Module, x: Tensor) -> Tensor:
        raise UnsupportedModule(f"no point evaluation rule for {type(m).__name__}")

    def interval(self, m: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        centre, radius = (hi + lo) / 2, (hi - lo) / 2
        c, r = self.affine_interval(m, centre, radius)
        return c - r, c + r

    def affine_interval(self, m, centre: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
        raise UnsupportedModule(f"no interval rule for {type(m).__name__}")

    def lipschitz(self, m: nn.Module) -> Tensor:
        raise UnsupportedModule(f"no Lipschitz rule for {type(m).__name__}")

    #: whether `linear` is implemented (linear bounds through the module)
    has_linear = False

    def linear(self, m: nn.Module, lam: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """``(lam_in, offset)`` with ``lam . m(x) >= lam_in . x + offset`` for every ``x`` in
        ``[lo, hi]`` (rows of ``lam``: ``(batch, rows, *out)``; ``offset``: ``(batch, rows)``)."""
        raise UnsupportedModule(f"no linear bound rule for {type(m).__name__}")

    def onnx(self, m: nn.Module, x: str, graph) -> str:
        raise UnsupportedModule(f"cannot export module {type(m).__name__}")


class _AffineRule(ModuleRule):
    """An affine module ``m(x) = L x + m(0)``: linear bounds are exact, the transpose by
    autograd through one evaluation of the rule."""

    has_linear = True
    verify_kind = "affine"

    def linear(self, m, lam, lo, hi):
        batch, rows = lam.shape[:2]
        shift = self.evaluate(m, torch.zeros_like(lo[:1]))  # m(0), the constant part
        offset = (lam * shift[:, None]).flatten(2).sum(2)
        with torch.enable_grad():
            x = torch.zeros(batch * rows, *lo.shape[1:], dtype=lo.dtype, device=lo.device)
            x.requires_grad_(True)
            out = self.evaluate(m, x)
            (lam_in,) = torch.autograd.grad(out, x, lam.reshape(out.shape), retain_graph=False)
        return lam_in.reshape(batch, rows, *lo.shape[1:]), offset


class _SequentialRule(ModuleRule):
    types = (nn.Sequential,)
    verify_kind = "sequential"

    def evaluate(self, m, x):
        for child in m:
            x = rule_for(child).evaluate(child, x)
        return x

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
        return self.evaluate(m, lo), self.evaluate(m, hi)

    def lipschitz(self, m):
        return torch.ones(())


class _ReLURule(_OrderPreservingRule):
    """``nn.ReLU``, ``inplace`` or not: evaluated out of place."""

    types = (nn.ReLU,)
    has_linear = True
    verify_kind = "relu"

    def evaluate(self, m, x):
        return F.relu(x)

    def linear(self, m, lam, lo, hi):
        """The chord above (slope ``hi / (hi - lo)`` where the sign is unknown) for negative
        rows, below the line through 0 of slope 1 or 0 (the nearer to the chord, CROWN's
        choice) for positive rows."""
        unstable = (lo < 0) & (hi > 0)
        width = (hi - lo).clamp_min(torch.finfo(lo.dtype).tiny)
        up_slope = torch.where(unstable, hi / width, (lo >= 0).to(lo.dtype))
        up_offset = torch.where(unstable, -up_slope * lo, torch.zeros_like(lo))
        low_slope = torch.where(unstable, (hi > -lo).to(lo.dtype), (lo >= 0).to(lo.dtype))
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        lam_in = pos * low_slope[:, None] + neg * up_slope[:, None]
        offset = (neg * up_offset[:, None]).flatten(2).sum(2)
        return lam_in, offset

    def onnx(self, m, x, graph):
        return graph.node("Relu", [x])


class _FlattenRule(_OrderPreservingRule, _AffineRule):
    types = (nn.Flatten,)

    def evaluate(self, m, x):
        return x.flatten(m.start_dim, m.end_dim)

    def onnx(self, m, x, graph):
        if m.start_dim != 1 or m.end_dim != -1:
            raise UnsupportedModule("only nn.Flatten(start_dim=1) can be exported")
        return graph.node("Flatten", [x], axis=1)


def _pair(v) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def _pool_attributes(m) -> dict:
    stride = _pair(m.stride if m.stride is not None else m.kernel_size)
    ph, pw = _pair(m.padding)
    return dict(
        kernel_shape=_pair(m.kernel_size), strides=stride, pads=[ph, pw, ph, pw],
        ceil_mode=int(m.ceil_mode),
    )  # fmt: skip


class _AvgPoolRule(_OrderPreservingRule, _AffineRule):
    """A nonnegative linear map: monotone; each output sums at most ``kh kw`` inputs divided by
    the divisor (the window's count, or ``divisor_override``)."""

    types = (nn.AvgPool2d,)

    def evaluate(self, m, x):
        return F.avg_pool2d(
            x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
            m.divisor_override,
        )  # fmt: skip

    def lipschitz(self, m):
        if m.divisor_override is None:  # weights 1 / count over at most count inputs
            return torch.ones(())
        kh, kw = _pair(m.kernel_size)
        return torch.tensor(kh * kw / m.divisor_override, dtype=torch.float64)

    def onnx(self, m, x, graph):
        if m.divisor_override is not None:
            raise UnsupportedModule("AvgPool2d with divisor_override cannot be exported")
        attrs = _pool_attributes(m)
        return graph.node("AveragePool", [x], count_include_pad=int(m.count_include_pad), **attrs)


class _MaxPoolRule(_OrderPreservingRule):
    types = (nn.MaxPool2d,)
    verify_kind = "maxpool"

    def check(self, m):
        if m.return_indices:
            raise UnsupportedModule("nn.MaxPool2d(return_indices=True) returns a pair, not a box")

    def evaluate(self, m, x):
        return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)

    def onnx(self, m, x, graph):
        return graph.node("MaxPool", [x], dilations=_pair(m.dilation), **_pool_attributes(m))


class _LinearRule(_AffineRule):
    types = (nn.Linear,)

    def evaluate(self, m, x):
        return F.linear(x, m.weight, m.bias)

    def affine_interval(self, m, centre, radius):
        return self.evaluate(m, centre), F.linear(radius, m.weight.abs())

    def lipschitz(self, m):
        return m.weight.abs().sum(dim=1).amax()

    def onnx(self, m, x, graph):
        bias = m.bias if m.bias is not None else torch.zeros(m.out_features)
        return graph.node(
            "Gemm", [x, graph.const("W", m.weight), graph.const("bias", bias)], transB=1
        )


class _Conv2dRule(_AffineRule):
    """Every padding mode: zeros, and ``reflect``, ``replicate``, ``circular``, which copy input
    entries into the border (the radius is padded the same way; each output still sums
    ``|w|`` over the taps of its channel, so the Lipschitz bound holds); any stride, dilation and
    groups."""

    types = (nn.Conv2d,)

    def evaluate(self, m, x):
        return m._conv_forward(x, m.weight, m.bias)

    def affine_interval(self, m, centre, radius):
        return self.evaluate(m, centre), m._conv_forward(radius, m.weight.abs(), None)

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


class _NormalizeRule(_AffineRule):
    types = (Normalize,)

    def evaluate(self, m, x):
        return (x - m.mean) / m.std

    def affine_interval(self, m, centre, radius):
        return self.evaluate(m, centre), radius / m.std.abs()

    def lipschitz(self, m):
        return (1 / m.std.abs()).amax()

    def onnx(self, m, x, graph):
        centred = graph.node("Sub", [x, graph.const("mean", m.mean)])
        return graph.node("Div", [centred, graph.const("std", m.std)])


class _BatchNormRule(_AffineRule):
    types = (nn.BatchNorm2d, BatchNorm2d)

    def evaluate(self, m, x):
        scale, shift = _bn_affine(m)
        return x * scale[:, None, None] + shift[:, None, None]

    def affine_interval(self, m, centre, radius):
        scale = _bn_affine(m)[0]
        return self.evaluate(m, centre), radius * scale.abs()[:, None, None]

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

    def __init__(self) -> None:
        from .conv_layers import MONConv2d, NEMONConv2d
        from .layers import ExplicitDense, IDLDense, MONDense, NEMONDense

        self.types = (NEMONDense, IDLDense, ExplicitDense, MONDense, NEMONConv2d, MONConv2d)

    verify_kind = "implicit"

    def evaluate(self, m, x):
        return m(x)

    def interval(self, m, lo, hi):
        return implicit_box(m, lo, hi)

    def lipschitz(self, m):
        terms = m.lipschitz_terms()
        if terms.norm != "inf":
            raise UnsupportedModule(f"{m._name()} has no l_inf bound (NEMON and IDL do)")
        return _eta_max(m) * terms.input_norm / terms.denominator

    def onnx(self, m, x, graph):
        raise UnsupportedModule("implicit layers inside the encoder cannot be exported")


#: The built-in rules, one per supported kind of module (`register_rule` adds more).
RULES: tuple[ModuleRule, ...] = (
    _SequentialRule(),
    _ReLURule(),
    _FlattenRule(),
    _AvgPoolRule(),
    _MaxPoolRule(),
    _LinearRule(),
    _Conv2dRule(),
    _NormalizeRule(),
    _BatchNormRule(),
    _ImplicitRule(),
)

_REGISTRY: dict[type, ModuleRule] = {t: rule for rule in RULES for t in rule.types}

SUPPORTED_MODULES = tuple(_REGISTRY)

#: Counts `register_rule` calls: what was derived from the rules (a lowered model) is stale
#: once it changes.
REGISTRY_VERSION = 0


def register_rule(rule: ModuleRule) -> ModuleRule:
    """Make ``rule`` the rule of each type in ``rule.types`` (exact types: a subclass needs
    its own), for bounds, certificates, verification and export; returns the rule."""
    global REGISTRY_VERSION
    if not rule.types or not all(isinstance(t, type) for t in rule.types):
        raise InputError("a rule needs types: a tuple of nn.Module classes")
    for t in rule.types:
        _REGISTRY[t] = rule
    REGISTRY_VERSION += 1
    return rule


def plain_type(module: nn.Module) -> type:
    """The module's class, seen through ``torch.nn.utils.parametrize``'s generated subclass."""
    kind = type(module)
    if parametrize.is_parametrized(module) and kind.__name__.startswith("Parametrized"):
        return kind.__bases__[0]
    return kind


def _refuse_hooks(module: nn.Module) -> None:
    """Forward hooks, a replaced ``forward`` and global hooks change what a module computes."""
    name = type(module).__name__
    if module._forward_hooks or module._forward_pre_hooks:
        raise UnsupportedModule(
            f"{name} has forward hooks: nemon's bounds model the module without them"
        )
    if "forward" in vars(module):
        raise UnsupportedModule(f"{name} has its forward replaced on the instance")


def refuse_global_hooks() -> None:
    """Hooks registered for every module (certificates refuse them; bound propagation in
    training runs beside observers such as ``FlopCounterMode``, which register some)."""
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        raise UnsupportedModule(
            "global forward hooks are registered (torch.nn.modules.module."
            "register_module_forward_hook): nemon's bounds model modules without them"
        )


def rule_for(module: nn.Module) -> ModuleRule:
    """The rule for ``module``'s exact type, after refusing hooks and options it does not model;
    an `UnsupportedModule` error naming the problem (and the supported modules)."""
    _refuse_hooks(module)
    kind = plain_type(module)
    rule = _REGISTRY.get(kind)
    if rule is None:
        parents = [t.__name__ for t in _REGISTRY if issubclass(kind, t)]
        if parents:
            raise UnsupportedModule(
                f"{kind.__name__} is a subclass of {parents[0]}: nemon's rule models "
                f"{parents[0]} itself, not a subclass (which may compute something else); "
                "register a rule for it (nemon.explicit.register_rule)"
            )
        names = ", ".join(t.__name__ for t in _REGISTRY)
        raise UnsupportedModule(
            f"{kind.__name__} is not supported (bounds, Lipschitz constants, export); "
            f"supported modules: {names}"
        )
    rule.check(module)
    return rule


def propagate_interval(module: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """A box ``[lo', hi']`` containing ``module(u)`` for every ``u`` in ``[lo, hi]`` (differentiable)."""
    return rule_for(module).interval(module, lo, hi)


def linf_lipschitz(module: nn.Module | None) -> Tensor:
    """Upper bound of the l_inf -> l_inf Lipschitz constant of ``module`` (a product over layers)."""
    return torch.ones(()) if module is None else rule_for(module).lipschitz(module)


def check_point_evaluation(module: nn.Module, x: Tensor, name: str = "encoder") -> Tensor:
    """``module(x)``, after checking, module by module, that each rule's point evaluation is
    the module's own forward at ``x`` (the centre of a certificate): a module whose forward the
    rule does not describe is refused by name before anything is certified."""
    rule = rule_for(module)
    if isinstance(rule, _SequentialRule):
        for i, child in enumerate(module):
            x = check_point_evaluation(child, x, f"{name}.{i}")
        return x
    own = module(x.clone())  # a copy: an in-place forward must not change x
    if isinstance(rule, _ImplicitRule):
        return own
    ruled = rule.evaluate(module, x)
    if own.shape != ruled.shape:
        differs = True
    else:
        gap = float((own - ruled).abs().amax()) if own.numel() else 0.0
        scale = 1.0 + (float(own.detach().abs().amax()) if own.numel() else 0.0)
        differs = not gap <= torch.finfo(x.dtype).eps ** 0.5 * scale
    if differs:
        raise UnsupportedModule(
            f"{name} ({type(module).__name__}): its forward differs from nemon's rule for it at "
            "the centre; the bounds would not describe the module"
        )
    return own


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
