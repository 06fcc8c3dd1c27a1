"""Interval bounds through a whole model (docs/maths.md#intervals; Jafarpour et al., L4DC 2022).

The input box goes through the explicit encoder by interval arithmetic
(`nemon.explicit.propagate_interval`), through the implicit layer by its embedding system
(`ImplicitLayer.interval_bounds`)

    x_lo = Phi(A_M x_lo + A_N x_hi + B+ u_lo + B- u_hi + b)
    x_hi = Phi(A_M x_hi + A_N x_lo + B+ u_hi + B- u_lo + b)

which is solved by the same solvers and differentiated by the same adjoint, and the readout is
folded into each logit difference (``C[label] - C[j]`` split by sign), which is tighter than
bounding each logit. Differentiable: the same bounds drive interval training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ranges import IMAGES

__all__ = [
    "interval_equilibrium",
    "input_box",
    "shrunk_box",
    "logit_difference_bounds",
    "interval_loss",
]


def interval_equilibrium(layer, u_lo: Tensor, u_hi: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(x_lo, x_hi, error_bound)``: the embedding system's equilibrium for inputs in the box.

    Every equilibrium ``x*(u)`` with ``u_lo <= u <= u_hi`` satisfies ``x_lo <= x* <= x_hi`` (exactly
    for the exact embedding equilibrium; ``error_bound`` is the per-sample a-posteriori bound on the
    computed one, in ``||.||_{inf,[eta]^-1}``). Differentiable in the layer's parameters and inputs.
    """
    return layer.interval_bounds(u_lo, u_hi)


def input_box(u: Tensor, eps: float, input_range) -> tuple[Tensor, Tensor]:
    """The l_inf ball of radius ``eps`` around ``u``, intersected with ``input_range``."""
    lo, hi = u - eps, u + eps
    if input_range is not None:
        lo, hi = lo.clamp(*input_range), hi.clamp(*input_range)
    return lo, hi


def shrunk_box(
    u: Tensor, centre: Tensor, eps: float, shrink: float, input_range
) -> tuple[Tensor, Tensor]:
    """SABR's small box (Mueller et al., 2023): radius ``shrink * eps`` around ``centre`` (an
    adversarial point), moved to lie inside the ball of radius ``eps`` around ``u``, intersected
    with ``input_range``. ``shrink = 1`` gives the whole ball."""
    margin = (1.0 - shrink) * eps
    centre = torch.max(torch.min(centre, u + margin), u - margin)
    lo, hi = centre - shrink * eps, centre + shrink * eps
    if input_range is not None:
        lo, hi = lo.clamp(*input_range), hi.clamp(*input_range)
    return lo, hi


def logit_difference_bounds(
    model, u: Tensor, labels: Tensor, eps: float, input_range=None, x_lo=None, x_hi=None, box=None
) -> Tensor:
    """Lower bounds of ``y_label - y_j`` over the l_inf ball, shape ``(batch, q)`` (0 at the label).

    With ``x_lo, x_hi`` given, they are used as the state box (certification passes a tightened
    one); otherwise the box goes through the encoder and the embedding system (differentiable:
    interval training). ``box=(lo, hi)`` replaces the ball by that input box (`shrunk_box`).
    """
    u = model.prepare_input(u)
    lo, hi = (
        input_box(u, eps, input_range) if box is None else (model.prepare_input(b) for b in box)
    )
    if x_lo is None:
        v_lo, v_hi = model.encode_interval(lo, hi)
        x_lo, x_hi, _ = interval_equilibrium(model.layer, v_lo, v_hi)
    f_lo, f_hi = model.layer.features(x_lo), model.layer.features(x_hi)  # pooling is monotone
    C, D = model.readout_weights()
    diff = C[labels][:, None, :] - C[None, :, :]  # (batch, q, features)
    d_pos, d_neg = diff.clamp(min=0), diff.clamp(max=0)
    bound = (d_pos * f_lo[:, None]).sum(-1) + (d_neg * f_hi[:, None]).sum(-1)
    bias = model.readout.bias
    bound = bound + bias[labels][:, None] - bias[None, :]
    if D is not None:
        dd = D[labels][:, None, :] - D[None, :, :]
        lo_f, hi_f = lo.flatten(1)[:, None], hi.flatten(1)[:, None]
        bound = bound + (dd.clamp(min=0) * lo_f).sum(-1) + (dd.clamp(max=0) * hi_f).sum(-1)
    return bound.scatter(1, labels[:, None], 0.0)


def interval_loss(
    model, u: Tensor, labels: Tensor, eps: float, input_range=IMAGES, box=None
) -> Tensor:
    """Cross-entropy on worst-case logits ``-(lower bound of y_label - y_j)`` (IBP training);
    ``box``: see `logit_difference_bounds`."""
    bounds = logit_difference_bounds(model, u, labels, eps, input_range, box=box)
    return F.cross_entropy(-bounds, labels)
