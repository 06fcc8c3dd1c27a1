"""Lipschitz bounds (14), (15), the regulariser (18) and certificates (19) (docs/maths.md#certificates).

A layer describes its part of the bound with `LipschitzTerms`; the functions here combine it
with a readout ``y = C features(x) + D u + c``. All bounds are from ``u`` in l_inf to ``y`` in l_inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import InputError

__all__ = [
    "LipschitzTerms",
    "state_bound",
    "output_bound",
    "pairwise_bounds",
    "lipschitz_regularizer",
    "certified_lipschitz",
    "certified_pairwise",
    "certified_by_margins",
    "lipschitz_bound",
]


@dataclass
class LipschitzTerms:
    """A layer's share of the bound, differentiable in its parameters.

    ``norm="inf"``: ``input_norm = ||B||_{(inf,[eta]^-1),inf}``, ``denominator = 1 - mu(A)_+`` and
    ``feature_eta`` the weight of each readout feature (None: ones). ``norm="l2"`` (MON): the l_2
    quantities of Pabbaraju et al., converted to l_inf by ``input_dim_factor = sqrt(r)``.
    """

    norm: str
    input_norm: Tensor
    denominator: Tensor
    feature_eta: Tensor | None = None
    input_dim_factor: float = 1.0
    feature_scale: float = 1.0  # l_2 norm of the map from state to features (pooling)


def state_bound(terms: LipschitzTerms) -> Tensor:
    """Input-to-state bound ``||B|| / (1 - mu(A)_+)``, eq. (14) (for MON, in l_2)."""
    return terms.input_norm / terms.denominator


def _readout_norms(terms: LipschitzTerms, C: Tensor) -> Tensor:
    """Per row of ``C``: ``sum_i |c_ki| eta_i`` (l_inf) or ``||c_k||_2`` (l_2)."""
    if terms.norm == "inf":
        weighted = C.abs() if terms.feature_eta is None else C.abs() * terms.feature_eta
        return weighted.sum(dim=-1)
    return C.norm(dim=-1) * terms.feature_scale


def _direct_norms(terms: LipschitzTerms, D: Tensor | None, like: Tensor) -> Tensor:
    if D is None:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    return D.abs().sum(dim=-1) if terms.norm == "inf" else D.norm(dim=-1)


def output_bound(terms: LipschitzTerms, C: Tensor, D: Tensor | None = None) -> Tensor:
    """Input-output bound ``||B|| ||C|| / (1 - mu(A)_+) + ||D||``, eq. (15).

    For l_2 (MON) the bound ``||B||_2 ||C||_2 / (1 - mu_2(A)) + ||D||_2`` is multiplied by
    ``sqrt(r)``, since ``||y||_inf <= ||y||_2`` and ``||u||_2 <= sqrt(r) ||u||_inf`` (paper, 6.3).
    """
    if terms.norm == "inf":
        c_norm = _readout_norms(terms, C).amax()
        d_norm = _direct_norms(terms, D, C).amax() if D is not None else 0.0
        return state_bound(terms) * c_norm + d_norm
    c_norm = torch.linalg.matrix_norm(C, ord=2) * terms.feature_scale
    d_norm = torch.linalg.matrix_norm(D, ord=2) if D is not None else 0.0
    return (state_bound(terms) * c_norm + d_norm) * terms.input_dim_factor


def pairwise_bounds(terms: LipschitzTerms, C: Tensor, D: Tensor | None = None) -> Tensor:
    """``L_ij``: Lipschitz bound of ``u -> y_i - y_j`` (docs/maths.md#certificates), shape ``(q, q)``.

    ``L_ij = ||B|| ||c_i - c_j||_{1,[eta]} / (1 - mu_+) + ||d_i - d_j||_1``; never above ``2 L``.
    """
    diff_C = C[:, None, :] - C[None, :, :]
    bound = state_bound(terms) * _readout_norms(terms, diff_C)
    if D is not None:
        bound = bound + _direct_norms(terms, D[:, None, :] - D[None, :, :], C)
    return bound * terms.input_dim_factor


def lipschitz_regularizer(
    terms: LipschitzTerms, C: Tensor, D: Tensor | None = None, kind: str = "product"
) -> Tensor:
    """Penalty of eq. (18).

    ``kind="product"`` (default) is the bound (15) itself, ``||B|| ||C|| / (1 - mu_+) + ||D||``.
    ``kind="halved_sum"`` is the convex surrogate as printed in (18),
    ``(||B||^2 / 2 + ||C||^2) / (1 - mu_+) + ||D||``; by AM-GM the symmetric form
    ``(||B||^2 + ||C||^2) / 2`` bounds the product, the printed one is a looser variant.
    """
    if kind == "product":
        return output_bound(terms, C, D)
    if kind != "halved_sum":
        raise InputError(f"unknown regulariser kind {kind!r}; use 'product' or 'halved_sum'")
    c_norm = _readout_norms(terms, C).amax()
    d_norm = _direct_norms(terms, D, C).amax() if D is not None else 0.0
    return (terms.input_norm**2 / 2 + c_norm**2) / terms.denominator + d_norm


def _margin(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``y_label - y_j`` for every class ``j`` and whether the prediction is correct."""
    true = logits.gather(1, labels[:, None])
    correct = logits.argmax(dim=1) == labels
    return true - logits, correct


def lipschitz_margins(
    logits: Tensor, labels: Tensor, L: Tensor | float, eps: float, slack: Tensor | float = 0.0
) -> Tensor:
    """Lower bounds of ``y_label - y_j`` on the l_inf ball of radius eps from (19): each logit
    moves by at most ``L eps``, and by ``slack`` (a per-sample bound from the solver's
    a-posteriori error bound) from the computed one. Shape ``(batch, q)``."""
    gaps, _ = _margin(logits, labels)
    slack = torch.as_tensor(slack, dtype=logits.dtype, device=logits.device)
    return gaps - 2 * L * eps - 2 * (slack[:, None] if slack.dim() == 1 else slack)


def pairwise_margins(
    logits: Tensor, labels: Tensor, L_pair: Tensor, eps: float, slack: Tensor | float = 0.0
) -> Tensor:
    """Lower bounds of ``y_label - y_j``: ``y_label - y_j - L_label,j eps - slack``, where
    ``slack`` bounds the error of each logit difference (``(batch, q)`` or a scalar)."""
    gaps, _ = _margin(logits, labels)
    return gaps - L_pair[labels] * eps - torch.as_tensor(slack, dtype=logits.dtype)


def certified_by_margins(correct: Tensor, bounds: Tensor, labels: Tensor) -> Tensor:
    """Certified: the centre classified right (``correct``, ``(batch,)``) and every lower bound of
    ``y_label - y_j``, ``j != label``, positive; ``bounds`` is ``(..., batch, q)``."""
    index = labels[:, None].expand(*bounds.shape[:-1], 1)
    return correct & (bounds.scatter(-1, index, float("inf")).amin(dim=-1) > 0)


def certified_lipschitz(
    logits: Tensor, labels: Tensor, L: Tensor | float, eps: float, slack: Tensor | float = 0.0
) -> Tensor:
    """Certificate (19): robust on the l_inf ball of radius eps when ``2 L eps < margin``.

    ``slack`` is a per-sample bound on how far the computed logits may be from the exact ones (from
    the solver's a-posteriori error bound); it is taken off both sides of the margin.
    """
    bounds = lipschitz_margins(logits, labels, L, eps, slack)
    return certified_by_margins(logits.argmax(dim=1) == labels, bounds, labels)


def certified_pairwise(
    logits: Tensor, labels: Tensor, L_pair: Tensor, eps: float, slack: Tensor | float = 0.0
) -> Tensor:
    """Pairwise certificate: ``y_i - y_j > L_ij eps`` for all ``j != i`` (i the label).

    ``slack`` here is a per-sample bound on the error of each logit difference; pass the
    per-pair error ``(batch, q)`` or a scalar bound.
    """
    bounds = pairwise_margins(logits, labels, L_pair, eps, slack)
    return certified_by_margins(logits.argmax(dim=1) == labels, bounds, labels)


def lipschitz_bound(model) -> Tensor:
    """Input-output l_inf Lipschitz bound (15) of a `Classifier`."""
    return output_bound(model.lipschitz_terms(), *model.readout_weights())
