"""Interval bounds from the embedding system (MATH.md section 6; Jafarpour et al., L4DC 2022).

Split ``A = A_M + A_N`` (``A_M``: diagonal and nonnegative off-diagonal entries) and ``B = B+ + B-``.
For inputs in ``[u_lo, u_hi]`` the embedding system

    x_lo = Phi(A_M x_lo + A_N x_hi + B+ u_lo + B- u_hi + b)
    x_hi = Phi(A_M x_hi + A_N x_lo + B+ u_hi + B- u_lo + b)

is the equilibrium of an implicit layer with matrix ``[[A_M, A_N], [A_N, A_M]]``, whose measure in
the doubled weighted norm equals ``mu_{inf,[eta]^-1}(A)``: it is solved by the same solvers and is
differentiable by the same adjoint, so it serves both certification and interval training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .conv_layers import NEMONConv2d
from .implicit import Equilibrium, implicit_solve
from .layers import IDLDense, NEMONDense
from .norms import mu_inf_upper
from .operators import ConvOperator, DenseOperator, conv_same

__all__ = ["interval_equilibrium", "logit_difference_bounds", "interval_loss"]


def _split(M: Tensor) -> tuple[Tensor, Tensor]:
    return M.clamp(min=0), M.clamp(max=0)


def _dense_embedding(layer, u_lo: Tensor, u_hi: Tensor):
    A = layer.A
    diag = torch.diag_embed(torch.diagonal(A))
    A_pos, A_neg = _split(A - diag)
    A_M = A_pos + diag
    E = torch.cat([torch.cat([A_M, A_neg], 1), torch.cat([A_neg, A_M], 1)], 0)
    B_pos, B_neg = _split(layer.B.weight)
    b = layer.B.bias if layer.B.bias is not None else 0.0
    z_lo = u_lo @ B_pos.T + u_hi @ B_neg.T + b
    z_hi = u_hi @ B_pos.T + u_lo @ B_neg.T + b
    eta = layer.eta() if isinstance(layer, NEMONDense) else None
    eta2 = None if eta is None else torch.cat([eta, eta]).detach()
    measure = float(mu_inf_upper(E.detach(), eta2))  # the same entries as A: the same measure
    return DenseOperator(), (E,), torch.cat([z_lo, z_hi], 1), measure, eta2


def _conv_embedding(layer: NEMONConv2d, u_lo: Tensor, u_hi: Tensor):
    kernel, shift = layer.effective_weights()
    c, centre = layer.channels, (layer.kernel_size - 1) // 2
    diag = torch.diagonal(kernel[:, :, centre, centre]) + shift
    mask = torch.ones_like(kernel)
    mask[torch.arange(c), torch.arange(c), centre, centre] = 0.0
    K_pos, K_neg = _split(kernel * mask)
    E = torch.cat([torch.cat([K_pos, K_neg], 1), torch.cat([K_neg, K_pos], 1)], 0)
    Bk_pos, Bk_neg = _split(layer.input_kernel)
    bias = layer.input_bias[:, None, None]
    z_lo = conv_same(u_lo, Bk_pos, "zeros") + conv_same(u_hi, Bk_neg, "zeros") + bias
    z_hi = conv_same(u_hi, Bk_pos, "zeros") + conv_same(u_lo, Bk_neg, "zeros") + bias
    eta2 = torch.cat([layer.eta(), layer.eta()]).detach()[:, None, None]
    measure = float(layer.measure().detach())  # the embedding matrix has the same measure
    return (
        ConvOperator(layer.padding),
        (E, torch.cat([diag, diag])),
        torch.cat([z_lo, z_hi], 1),
        measure,
        eta2,
    )


def interval_equilibrium(layer, u_lo: Tensor, u_hi: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(x_lo, x_hi, error_bound)``: the embedding system's equilibrium for inputs in the box.

    Every equilibrium ``x*(u)`` with ``u_lo <= u <= u_hi`` satisfies ``x_lo <= x* <= x_hi`` (exactly
    for the exact embedding equilibrium; ``error_bound`` is the per-sample a-posteriori bound on the
    computed one, in ``||.||_{inf,[eta]^-1}``). Differentiable in the layer's parameters and inputs.
    """
    if isinstance(layer, NEMONConv2d):
        op, weights, z, measure, eta2 = _conv_embedding(layer, u_lo, u_hi)
    elif isinstance(layer, (NEMONDense, IDLDense)):
        op, weights, z, measure, eta2 = _dense_embedding(layer, u_lo, u_hi)
    else:
        raise NotImplementedError(
            f"interval bounds need mu_inf(A) < 1 by construction (NEMON, IDL), not {type(layer).__name__}"
        )
    fwd, bwd = layer.solver_options, layer.backward_options
    eq = Equilibrium(op, layer.activation, fwd, bwd, measure, eta2)
    both = implicit_solve(eq, z, weights)
    half = both.shape[1] // 2
    return both[:, :half], both[:, half:], eq.stats["forward"].error_bound


def _box(model, u: Tensor, eps: float, clip: tuple[float, float] | None):
    u = model.prepare_input(u)
    lo, hi = u - eps, u + eps
    if clip is not None:
        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
    return u, lo, hi


def logit_difference_bounds(
    model, u: Tensor, labels: Tensor, eps: float, clip=None, x_lo=None, x_hi=None
) -> Tensor:
    """Lower bounds of ``y_label - y_j`` over the l_inf ball, shape ``(batch, q)`` (0 at the label).

    With ``x_lo, x_hi`` given, they are used as the state box (certification passes a tightened
    one); otherwise the embedding equilibrium is solved (differentiable: interval training).
    """
    u, lo, hi = _box(model, u, eps, clip)
    if x_lo is None:
        x_lo, x_hi, _ = interval_equilibrium(model.layer, lo, hi)
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


def interval_loss(model, u: Tensor, labels: Tensor, eps: float, clip=(0.0, 1.0)) -> Tensor:
    """Cross-entropy on worst-case logits ``-(lower bound of y_label - y_j)`` (IBP training)."""
    return F.cross_entropy(-logit_difference_bounds(model, u, labels, eps, clip), labels)
