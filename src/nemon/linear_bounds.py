"""Linear (CROWN-style) bounds of a dense implicit layer's injection through its encoder.

The interval certificate bounds ``z = B enc(u) + b`` by pushing the input box through the
encoder and then through ``B``, so every ReLU of the encoder forgets how its output depends on
the input. Here ``B`` is carried backwards instead (Zhang et al., NeurIPS 2018): each affine
module maps the rows ``Lambda`` of the bound to its input by its transpose, and each ReLU is
replaced by linear functions below and above it on its pre-activation box (the box of the
interval pass: CROWN-IBP, Zhang et al., ICLR 2020). With ``lam . x >= lam_in . x_in + offset``
at every module, the input box gives

    z_i >= sum_k (lam_in)_ik+ lo_k + (lam_in)_ik- hi_k + offset_i + b_i,

and the same with ``-B`` gives the upper bounds. They are intersected with the interval box
(both are sound), so the result is never looser; the implicit layer then solves its embedding
system from this injection box (docs/maths.md#intervals).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .explicit import UnsupportedModule, rule_for

__all__ = ["supports_linear_bounds", "injection_bounds", "encoder_linear_bounds"]

_ROW_ELEMENTS = 2**24  # rows x features carried at once (chunks of samples beyond it)


def supports_linear_bounds(model) -> bool:
    """A classifier with an explicit ``nn.Sequential`` encoder of modules whose rules have a
    linear backward rule (affine modules and ReLUs, `nemon.explicit.ModuleRule.linear`), and
    a dense layer with interval bounds (NEMON, IDL, explicit)."""
    from .layers import _DenseLayer

    encoder = getattr(model, "encoder", None)
    if type(encoder) is not nn.Sequential or not isinstance(model.layer, _DenseLayer):
        return False
    if model.layer.interval_bounds.__func__ is _DenseLayer.interval_bounds:
        return False
    try:
        return all(rule_for(m).has_linear for m in encoder)
    except UnsupportedModule:
        return False


def encoder_linear_bounds(
    encoder: nn.Sequential, lo: Tensor, hi: Tensor, spec: Tensor
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of ``spec @ encoder(x)`` (``spec``: ``(rows, features)``) over the
    box ``[lo, hi]``, each ``(batch, rows)``."""
    rules = [rule_for(m) for m in encoder]
    boxes = [(lo, hi)]
    for m, rule in zip(encoder, rules):  # the interval pass: the input box of every module
        boxes.append(rule.interval(m, *boxes[-1]))
    rows = torch.cat([spec, -spec])  # lower bounds of spec @ out and of -spec @ out
    out_lo = boxes[-1][0]
    lam = rows.reshape(1, *rows.shape[:1], *out_lo.shape[1:]).expand(len(lo), *[-1] * out_lo.dim())
    total = torch.zeros(len(lo), len(rows), dtype=lo.dtype, device=lo.device)
    for m, rule, (m_lo, m_hi) in zip(reversed(encoder), reversed(rules), reversed(boxes[:-1])):
        lam, offset = rule.linear(m, lam, m_lo, m_hi)
        total = total + offset
    flat = lam.flatten(2)
    bound = (flat.clamp(min=0) * lo.flatten(1)[:, None]).sum(2)
    bound = bound + (flat.clamp(max=0) * hi.flatten(1)[:, None]).sum(2) + total
    half = len(spec)
    return bound[:, :half], -bound[:, half:]


@torch.no_grad()
def injection_bounds(model, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """The box of the dense layer's injection ``B enc(u) + b`` for ``u`` in ``[lo, hi]``: the
    linear bounds intersected with the interval ones (see the module docstring)."""
    if not supports_linear_bounds(model):
        raise UnsupportedModule("linear bounds need an nn.Sequential encoder and a dense layer")
    B = model.layer.B
    v_lo, v_hi = model.encode_interval(lo, hi)
    centre, radius = (v_hi + v_lo) / 2, (v_hi - v_lo) / 2
    z_centre, z_radius = B(centre), radius @ B.weight.abs().T
    z_lo, z_hi = z_centre - z_radius, z_centre + z_radius
    chunk = max(1, _ROW_ELEMENTS // (2 * B.out_features * max(_widest(model.encoder, lo), 1)))
    bias = B.bias if B.bias is not None else torch.zeros_like(z_lo[0])
    for start in range(0, len(lo), chunk):
        part = slice(start, start + chunk)
        lin_lo, lin_hi = encoder_linear_bounds(model.encoder, lo[part], hi[part], B.weight)
        z_lo[part] = torch.maximum(z_lo[part], lin_lo + bias)
        z_hi[part] = torch.minimum(z_hi[part], lin_hi + bias)
    return z_lo, z_hi


def _widest(encoder: nn.Sequential, lo: Tensor) -> int:
    """The largest number of features per sample at any module's input or output."""
    x, widest = lo[:1], lo[0].numel()
    for m in encoder:
        x = rule_for(m).evaluate(m, x)
        widest = max(widest, x[0].numel())
    return widest
