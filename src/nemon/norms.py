"""Weighted norms, induced matrix norms and matrix measures (docs/maths.md#norms).

Conventions: ``eta`` is a positive weight vector (``None`` means all ones); the weighted
l_inf norm is ``||x||_{inf,[eta]^-1} = max_i |x_i| / eta_i``. Matrices act on columns, so
``A`` has shape ``(n, n)``, ``B`` has shape ``(n, r)`` and ``C`` has shape ``(q, n)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import InputError

__all__ = [
    "vector_norm_inf",
    "norm_inf",
    "mu_inf",
    "mu_1",
    "mu_2",
    "norm_inf_from_input",
    "norm_inf_to_output",
    "norm_inf_plain",
    "perron_frobenius",
    "abs_row_sums_upper",
    "mu_inf_upper",
    "measure_upper",
    "capped_measure",
    "norm_inf_upper",
    "mu_2_upper",
    "round_to",
]


def _weights(eta: Tensor | None, n: int, like: Tensor) -> Tensor:
    if eta is None:
        return torch.ones(n, dtype=like.dtype, device=like.device)
    eta = torch.as_tensor(eta, dtype=like.dtype, device=like.device)
    if eta.shape != (n,):
        raise InputError(f"eta must have shape ({n},), got {tuple(eta.shape)}")
    if not bool(torch.all(torch.isfinite(eta) & (eta > 0))):
        raise InputError(
            f"eta must be finite and strictly positive (weights of a norm) in {like.dtype},"
            f" got values in [{float(eta.amin()):.3g}, {float(eta.amax()):.3g}]"
        )
    return eta


def _square(A: Tensor) -> Tensor:
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise InputError(f"expected a square matrix, got shape {tuple(A.shape)}")
    return A


def vector_norm_inf(x: Tensor, eta: Tensor | None = None) -> Tensor:
    """``||x||_{inf,[eta]^-1} = max_i |x_i| / eta_i`` over the last dimension (batched)."""
    eta = _weights(eta, x.shape[-1], x)
    return (x.abs() / eta).amax(dim=-1)


def norm_inf(A: Tensor, eta: Tensor | None = None) -> Tensor:
    """Induced norm ``||A||_{inf,[eta]^-1} = max_i sum_j |a_ij| eta_j / eta_i``, eq. (1)."""
    A = _square(A)
    eta = _weights(eta, A.shape[0], A)
    return ((A.abs() * eta).sum(dim=1) / eta).amax()


def mu_inf(A: Tensor, eta: Tensor | None = None) -> Tensor:
    """Matrix measure ``mu_{inf,[eta]^-1}(A) = max_i (a_ii + sum_{j!=i} |a_ij| eta_j / eta_i)``, eq. (2)."""
    A = _square(A)
    eta = _weights(eta, A.shape[0], A)
    diag = torch.diagonal(A)
    off = (A.abs() * eta).sum(dim=1) / eta - diag.abs()
    return (diag + off).amax()


def mu_1(A: Tensor) -> Tensor:
    """Matrix measure induced by l_1: ``mu_1(A) = mu_inf(A^T)``."""
    return mu_inf(_square(A).T)


def mu_2(A: Tensor) -> Tensor:
    """Matrix measure induced by l_2: ``lambda_max((A + A^T) / 2)``."""
    A = _square(A)
    return torch.linalg.eigvalsh((A + A.T) / 2)[-1]


def norm_inf_from_input(B: Tensor, eta: Tensor | None = None) -> Tensor:
    """``||B||_{(inf,[eta]^-1),inf} = max_i (1/eta_i) sum_j |b_ij|`` for ``B`` of shape (n, r)."""
    eta = _weights(eta, B.shape[0], B)
    return (B.abs().sum(dim=1) / eta).amax()


def norm_inf_to_output(C: Tensor, eta: Tensor | None = None) -> Tensor:
    """``||C||_{inf,(inf,[eta]^-1)} = max_k sum_i |c_ki| eta_i`` for ``C`` of shape (q, n)."""
    eta = _weights(eta, C.shape[1], C)
    return (C.abs() * eta).sum(dim=1).amax()


def norm_inf_plain(D: Tensor) -> Tensor:
    """``||D||_{inf,inf} = max_k sum_j |d_kj|`` (maximum absolute row sum)."""
    return D.abs().sum(dim=1).amax()


def perron_frobenius(A: Tensor) -> Tensor:
    """Perron-Frobenius eigenvalue of the entrywise absolute value ``|A|`` (IDL's condition)."""
    A = _square(A)
    return torch.linalg.eigvals(A.abs().to(torch.float64)).abs().amax().to(A.dtype)


# -- sound upper bounds in floating point -------------------------------------------------------
# The measure decides whether a layer is well posed and enters every bound and certificate, so it
# is computed as an upper bound of the exact measure of the stored (rounded) matrix: in float64,
# inflated by the worst-case relative rounding error of the float64 sums (Higham, Thm 3.1).
# They run in every solve and leave the weights unchecked (the layers' parametrizations check
# them when they form A): a non-finite weight gives NaN, never a finite wrong bound.

_U64 = 2.0**-53  # unit roundoff of float64


def abs_row_sums_upper(
    M: Tensor, col_weight: Tensor | None = None, row_weight: Tensor | None = None
) -> Tensor:
    """Upper bound (float64) of the exact ``sum_j |m_ij| w_j / v_i`` for a stored matrix ``M``.

    ``M`` has shape ``(rows, cols)``; ``col_weight`` (``w``) and ``row_weight`` (``v``) default to
    ones. The float64 sum of ``cols`` terms, each formed with two roundings, is within the relative
    error ``(cols + 2) u / (1 - (cols + 2) u)`` of the exact value; we inflate by twice that.
    Differentiable in ``M`` and the weights.
    """
    return _row_sums_upper(M.to(torch.float64).abs(), col_weight, row_weight)


def _row_sums_upper(terms: Tensor, col_weight: Tensor | None, row_weight: Tensor | None) -> Tensor:
    """`abs_row_sums_upper` from the float64 absolute values ``terms``."""
    if col_weight is not None:
        terms = terms * col_weight.to(torch.float64)
    if row_weight is not None:
        terms = terms / row_weight.to(torch.float64)[:, None]
    cols = terms.shape[1]
    inflate = 1.0 + 2.0 * (cols + 2) * _U64
    return terms.sum(dim=1) * inflate + cols * torch.finfo(torch.float64).tiny


def mu_inf_upper(A: Tensor, eta: Tensor | None = None) -> Tensor:
    r"""Upper bound (float64) of the exact \(\mu_{\infty,[\eta]^{-1}}(A)\) of the stored ``A``, eq. (2).

    Differs from `mu_inf` by a relative ``O(n u_64)``; it is what bounds, error bounds and
    certificates use, so that rounding can never make them optimistic.
    """
    A = _square(A)
    terms = A.to(torch.float64).abs()
    terms.diagonal().zero_()  # the off-diagonal entries' absolute values
    return measure_upper(torch.diagonal(A), _row_sums_upper(terms, eta, eta))


def measure_upper(diag: Tensor, off_upper: Tensor) -> Tensor:
    """``max_i (a_ii + off_i)`` in float64, rounded up (``off_upper`` already an upper bound)."""
    total = diag.to(torch.float64) + off_upper
    slack = 4 * _U64 * (diag.to(torch.float64).abs() + off_upper)
    return (total + slack).amax()


def norm_inf_upper(A: Tensor, eta: Tensor | None = None) -> Tensor:
    """Upper bound (float64) of the exact ``||A||_{inf,[eta]^-1}`` of the stored ``A``, eq. (1)."""
    A = _square(A)
    return abs_row_sums_upper(A, eta, eta).amax()


def mu_2_upper(A: Tensor) -> Tensor:
    r"""Upper bound (float64) of \(\mu_2(A)\): eigenvalues of the symmetric part, plus their error.

    Symmetric eigensolvers are backward stable: the computed eigenvalues are exact for a matrix
    within ``c n u ||S||_2`` of ``S``; we add ``4 n u ||S||_F`` (Frobenius bounds the 2-norm).
    """
    A = _square(A).to(torch.float64)
    sym = (A + A.T) / 2
    n = A.shape[0]
    return torch.linalg.eigvalsh(sym)[-1] + 4 * n * _U64 * torch.linalg.matrix_norm(sym)


def round_to(value: Tensor, dtype: torch.dtype, direction: str) -> Tensor:
    """Cast float64 ``value`` to ``dtype`` rounding ``"down"`` or ``"up"`` (gradient passes through).

    A plain cast rounds to nearest, which can land on the wrong side of a bound; one ``nextafter``
    step fixes that.
    """
    if dtype == torch.float64:
        return value
    cast = value.to(dtype)
    target = -math.inf if direction == "down" else math.inf
    wrong = cast.double() > value if direction == "down" else cast.double() < value
    fixed = torch.nextafter(cast.detach(), torch.full_like(cast, target))
    return torch.where(wrong, fixed + (cast - cast.detach()), cast)  # gradient of the cast


def capped_measure(upper: Tensor, gamma: float, dtype: torch.dtype) -> Tensor:
    """``min(upper, gamma)`` rounded up to ``dtype``: the parametrizations guarantee the measure
    is at most ``gamma`` exactly for the stored weights (``tests/test_rounding.py`` checks it in
    rational arithmetic), so the float64 upper bound's own slack need not exceed it. NaN stays NaN.
    """
    return round_to(torch.minimum(upper, upper.new_tensor(gamma)), dtype, "up")
