"""Weighted norms, induced matrix norms and matrix measures (MATH.md section 1).

Conventions: ``eta`` is a positive weight vector (``None`` means all ones); the weighted
l_inf norm is ``||x||_{inf,[eta]^-1} = max_i |x_i| / eta_i``. Matrices act on columns, so
``A`` has shape ``(n, n)``, ``B`` has shape ``(n, r)`` and ``C`` has shape ``(q, n)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
]


def _weights(eta: Tensor | None, n: int, like: Tensor) -> Tensor:
    if eta is None:
        return torch.ones(n, dtype=like.dtype, device=like.device)
    eta = torch.as_tensor(eta, dtype=like.dtype, device=like.device)
    if eta.shape != (n,):
        raise ValueError(f"eta must have shape ({n},), got {tuple(eta.shape)}")
    if not bool(torch.all(eta > 0)):
        raise ValueError("eta must be strictly positive (weights of a norm)")
    return eta


def _square(A: Tensor) -> Tensor:
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(A.shape)}")
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
