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

from .explicit import Normalize, UnsupportedModule, rule_for

__all__ = ["supports_linear_bounds", "injection_bounds", "encoder_linear_bounds"]

_AFFINE = (nn.Linear, nn.Conv2d, nn.BatchNorm2d, Normalize, nn.Flatten, nn.AvgPool2d)
_ROW_ELEMENTS = 2**24  # rows x features carried at once (chunks of samples beyond it)


def supports_linear_bounds(model) -> bool:
    """A classifier with an explicit ``nn.Sequential`` encoder of affine modules and ReLUs,
    and a dense layer with interval bounds (NEMON, IDL, explicit)."""
    from .layers import _DenseLayer

    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Sequential) or not isinstance(model.layer, _DenseLayer):
        return False
    if model.layer.interval_bounds.__func__ is _DenseLayer.interval_bounds:
        return False
    return all(isinstance(m, (*_AFFINE, nn.ReLU)) for m in encoder)


def _relu_backward(lam: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """``lam . relu(x) >= lam_in . x + offset`` on ``[lo, hi]``: the chord above (slope
    ``hi / (hi - lo)`` where the sign is unknown) for negative rows, below the line through 0 of
    slope 1 or 0 (the nearer to the chord, CROWN's choice) for positive rows."""
    unstable = (lo < 0) & (hi > 0)
    width = (hi - lo).clamp_min(torch.finfo(lo.dtype).tiny)
    up_slope = torch.where(unstable, hi / width, (lo >= 0).to(lo.dtype))
    up_offset = torch.where(unstable, -up_slope * lo, torch.zeros_like(lo))
    low_slope = torch.where(unstable, (hi > -lo).to(lo.dtype), (lo >= 0).to(lo.dtype))
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    lam_in = pos * low_slope[:, None] + neg * up_slope[:, None]
    offset = (neg * up_offset[:, None]).flatten(2).sum(2)
    return lam_in, offset


def _affine_backward(m: nn.Module, lam: Tensor, lo: Tensor) -> tuple[Tensor, Tensor]:
    """``lam . m(x) = (L^T lam) . x + lam . m(0)`` for an affine ``m(x) = L x + m(0)``: the
    transpose by autograd through one application (exact for every affine module)."""
    batch, rows = lam.shape[:2]
    shift = m(torch.zeros_like(lo[:1]))  # m(0), the module's constant part
    offset = (lam * shift[:, None]).flatten(2).sum(2)
    with torch.enable_grad():
        x = torch.zeros(batch * rows, *lo.shape[1:], dtype=lo.dtype, device=lo.device)
        x.requires_grad_(True)
        out = m(x)
        (lam_in,) = torch.autograd.grad(out, x, lam.reshape(out.shape), retain_graph=False)
    return lam_in.reshape(batch, rows, *lo.shape[1:]), offset


def encoder_linear_bounds(
    encoder: nn.Sequential, lo: Tensor, hi: Tensor, spec: Tensor
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of ``spec @ encoder(x)`` (``spec``: ``(rows, features)``) over the
    box ``[lo, hi]``, each ``(batch, rows)``."""
    boxes = [(lo, hi)]
    for m in encoder:  # the interval pass: the input box of every module
        boxes.append(rule_for(m).interval(m, *boxes[-1]))
    rows = torch.cat([spec, -spec])  # lower bounds of spec @ out and of -spec @ out
    out_lo = boxes[-1][0]
    lam = rows.reshape(1, *rows.shape[:1], *out_lo.shape[1:]).expand(len(lo), *[-1] * out_lo.dim())
    total = torch.zeros(len(lo), len(rows), dtype=lo.dtype, device=lo.device)
    for m, (m_lo, m_hi) in zip(reversed(encoder), reversed(boxes[:-1])):
        if isinstance(m, nn.ReLU):
            lam, offset = _relu_backward(lam, m_lo, m_hi)
        elif isinstance(m, _AFFINE):
            lam, offset = _affine_backward(m, lam, m_lo)
        else:
            raise UnsupportedModule(f"no linear bound rule for {type(m).__name__}")
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
        x = m(x)
        widest = max(widest, x[0].numel())
    return widest
