"""Contraction constants of the averaged iteration (paper section 3, Theorems 1 and 2).

For ``F`` with Lipschitz constant ``lip`` and one-sided Lipschitz constant ``osl < 1`` in some norm,
the averaged map ``F_alpha = (1 - alpha) I + alpha F`` contracts for small ``alpha`` (Theorem 1); in
weighted l_inf norms, with ``diagL`` a lower bound on the diagonal of ``DF``, it contracts for every
``alpha <= 1 / (1 - diagL)`` (Theorem 2). For ``F(x) = Phi(A x + z)``: ``osl = mu(A)_+`` and
``diagL = min_i (a_ii)_-``, which gives `nemon.alpha_star`.
"""

from __future__ import annotations

import math

from .errors import InputError

__all__ = [
    "theorem1_factor",
    "theorem1_alpha_star",
    "theorem1_kappa",
    "theorem2_factor",
    "theorem2_alpha_star",
    "theorem2_kappa",
]


def theorem1_kappa(lip: float, osl: float) -> float:
    """Condition number ``kappa = (1 + Lip(F)) / (1 - osL(F))``."""
    if not osl < 1:
        raise InputError(f"Theorem 1 needs osL(F) < 1, got {osl}")
    return (1 + lip) / (1 - osl)


def theorem1_factor(alpha: float, lip: float, c: float) -> float:
    """``gamma_{l,c}(alpha) = (1 + alpha c - alpha^2 (l+1)^2 / (1 - alpha (l+1)))^-1``.

    Valid on ``0 < alpha < c / ((c + l + 1)(l + 1))`` when ``osL(F) < 1 - c``.
    """
    upper = c / ((c + lip + 1) * (lip + 1))
    if not 0 < alpha < upper:
        raise InputError(f"alpha must be in (0, {upper:.6g}) for Theorem 1, got {alpha}")
    b = alpha * (lip + 1)
    return 1.0 / (1 + alpha * c - b * b / (1 - b))


def theorem1_alpha_star(lip: float, osl: float) -> float:
    """Step minimising ``gamma_{l,c}`` at ``c = 1 - osL``: ``(1 - 1/sqrt(1 + 1/kappa)) / (kappa (1 - osL))``.

    Setting the derivative to zero gives ``(1 - alpha (l+1))^-2 = 1 + 1/kappa``. The paper's
    Theorem 1(v) prints the prefactor as ``kappa / (1 - osL)``; that value disagrees with the
    paper's own expansion ``(1/(1 - osL)) (1/(2 kappa^2) - 3/(8 kappa^3) + ...)`` and lies outside
    the admissible interval; ``1 / (kappa (1 - osL))`` is the minimiser (tested).
    """
    kappa = theorem1_kappa(lip, osl)
    return (1 - 1 / math.sqrt(1 + 1 / kappa)) / (kappa * (1 - osl))


def theorem2_kappa(osl: float, diag: float) -> float:
    """``kappa_inf = (1 - diagL) / (1 - osL)`` (Theorem 2)."""
    if not osl < 1:
        raise InputError(f"Theorem 2 needs osL(F) < 1, got {osl}")
    return (1 - diag) / (1 - osl)


def theorem2_alpha_star(diag: float) -> float:
    """``alpha* = 1 / (1 - diagL)``: the largest step with the factor below (Theorem 2(ii))."""
    return 1.0 / (1.0 - min(diag, 0.0))


def theorem2_factor(alpha: float, osl: float, diag: float) -> float:
    """``1 - alpha (1 - osL)`` for ``0 < alpha <= 1 / (1 - diagL)`` (Theorem 2(i))."""
    if not 0 < alpha <= theorem2_alpha_star(diag) * (1 + 1e-12):
        raise InputError(f"alpha must be in (0, 1/(1 - diagL)] for Theorem 2, got {alpha}")
    return 1.0 - alpha * (1.0 - osl)
