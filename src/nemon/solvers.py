"""Fixed-point solvers for ``x = Phi(A x + z)`` (MATH.md section 2).

A :class:`FixedPointSystem` describes one equation (forward or adjoint); :func:`solve` runs a
solver chosen by name from :data:`SOLVERS`. Every solver returns the iterate and a
:class:`SolverStats`; convergence is checked every ``check_every`` iterations (the only host
sync in the loop). Two stopping residuals, both relative and over the whole batch (Frobenius):

- ``residual="step"`` (default): ``||x_{k+1} - x_k|| / ||x_{k+1}||``. For the averaged iteration
  this is the relative residual of the averaged map ``N_alpha`` that is iterated; Anderson measures
  the same quantity, the residual of ``N_alpha*`` at its iterate, so both stop at the same accuracy.
- ``residual="fixed_point"``: ``||F(x) - x|| / ||F(x)||`` with ``F(x) = Phi(A x + z)``, stricter by
  the factor ``1 / alpha``.

Whatever the rule, weighted-l_inf solvers also report the a-posteriori bound on ``||x - x*||``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .activations import Activation

__all__ = [
    "ConvergenceWarning",
    "FixedPointSystem",
    "SolverOptions",
    "SolverStats",
    "alpha_star",
    "contraction_factor",
    "solve",
    "weighted_inf_norm",
    "weighted_l1_norm",
    "SOLVERS",
]

_TINY = 1e-30


class ConvergenceWarning(RuntimeWarning):
    """A solve stopped at ``max_iter`` (or on a non-finite residual) before reaching ``tol``."""


@dataclass
class FixedPointSystem:
    """The equation ``x = phi(A x + z)`` with batch rows.

    Attributes:
        matvec: ``x -> A x`` on batched states.
        z: the injection ``B u + b``, shape ``(batch, *state)``.
        phi: the nonlinearity (an :class:`Activation`; ``DiagonalGain`` for the adjoint).
        diagonal: diagonal of ``A`` broadcastable to a state, for ``alpha*``.
        measure: an upper bound on the measure ``mu(A)`` in the solver's norm, or None.
        norm: per-sample norm in which the averaged map contracts (``||.||_{inf,[eta]^-1}`` forward,
            its dual ``||.||_{1,[eta]}`` for the adjoint); used by the error bound and Anderson.
        resolvent: ``a -> (v -> (I + a (I - A))^-1 v)``, for Peaceman-Rachford.
        splitting_step: default step of forward-backward splitting (MON layers provide it).
        affine: optional fused ``x -> A x + z`` (e.g. one ``addmm`` for dense ``A``).
    """

    matvec: Callable[[Tensor], Tensor]
    z: Tensor
    phi: Activation
    diagonal: Tensor | None = None
    measure: float | None = None
    norm: Callable[[Tensor], Tensor] | None = None
    resolvent: Callable[[float], Callable[[Tensor], Tensor]] | None = None
    splitting_step: float | None = None

    affine: Callable[[Tensor], Tensor] | None = None

    def preactivation(self, x: Tensor) -> Tensor:
        """``A x + z`` as a new tensor (fused by ``affine`` where the operator offers it)."""
        return self.affine(x) if self.affine is not None else self.matvec(x) + self.z

    def __call__(self, x: Tensor) -> Tensor:
        return self.phi(self.preactivation(x))

    def residual(self, x: Tensor) -> Tensor:
        """``F(x) - x``, computed in place in a fresh buffer."""
        return self.phi.inplace(self.preactivation(x)).sub_(x)


@dataclass
class SolverOptions:
    """Solver name and stopping rule; ``alpha=None`` means the solver's best step."""

    method: str = "averaged"
    tol: float = 1e-4
    max_iter: int = 500
    alpha: float | None = None
    check_every: int = 4
    residual: str = "step"  # or "fixed_point" (see the module docstring)
    memory: int = 5  # Anderson history
    warn: bool = True


@dataclass
class SolverStats:
    """What a solve did: iterations, final relative residual, step, and bounds."""

    iterations: int = 0
    residual: float = math.nan
    converged: bool = False
    alpha: float = math.nan
    contraction_factor: float = math.nan
    error_bound: Tensor | None = field(default=None, repr=False)
    seconds: float = 0.0
    method: str = ""


def alpha_star(diagonal: Tensor) -> float:
    """Best averaged step ``alpha* = 1 / (1 - min_i (a_ii)_-)`` (Theorem 2, Corollary 5)."""
    return 1.0 / (1.0 - min(float(diagonal.min()), 0.0))


def contraction_factor(alpha: float, measure: float) -> float:
    """``rho(alpha) = 1 - alpha (1 - mu(A)_+)`` for ``0 < alpha <= alpha*``."""
    return 1.0 - alpha * (1.0 - max(measure, 0.0))


def _relative(r: Tensor, f: Tensor) -> Tensor:
    return r.norm() / f.norm().clamp_min(_TINY)


def weighted_inf_norm(eta: Tensor | None) -> Callable[[Tensor], Tensor]:
    """Per-sample ``||x||_{inf,[eta]^-1}``; ``eta`` broadcastable to one state."""
    if eta is None:
        return lambda x: x.abs().flatten(1).amax(dim=1)
    return lambda x: (x.abs() / eta).flatten(1).amax(dim=1)


def weighted_l1_norm(eta: Tensor | None) -> Callable[[Tensor], Tensor]:
    """Per-sample dual norm ``||v||_{1,[eta]} = sum_i eta_i |v_i|``."""
    if eta is None:
        return lambda v: v.abs().flatten(1).sum(dim=1)
    return lambda v: (v.abs() * eta).flatten(1).sum(dim=1)


def _euclidean(x: Tensor) -> Tensor:
    return x.flatten(1).norm(dim=1)


def _error_bound(system: FixedPointSystem, residual: Tensor) -> Tensor | None:
    """Per-sample a-posteriori bound ``||x - x*|| <= ||x - F(x)|| / (1 - mu_+)`` (section 2)."""
    if system.measure is None or system.norm is None or system.measure >= 1:
        return None
    return system.norm(residual) / (1.0 - max(system.measure, 0.0))


def _default_alpha(system: FixedPointSystem) -> float:
    return 1.0 if system.diagonal is None else alpha_star(system.diagonal)


def _stopping_residual(opts: SolverOptions, x: Tensor, x_next: Tensor, residual: Tensor) -> float:
    if opts.residual == "fixed_point":
        return float(_relative(residual, residual + x))
    return float(_relative(x_next - x, x_next))


def _loop(step: Callable[[Tensor], tuple[Tensor, Tensor]], system, x, opts, stats):
    """Run ``x <- step(x)`` with the stopping rule; ``step`` returns ``(next, F(x) - x)``."""
    residual = x
    for k in range(1, opts.max_iter + 1):
        x_next, residual = step(x)
        if k % opts.check_every == 0 or k == opts.max_iter:
            rel = _stopping_residual(opts, x, x_next, residual)
            stats.iterations, stats.residual = k, rel
            if rel <= opts.tol or not math.isfinite(rel) or k == opts.max_iter:
                break  # return the iterate whose residual is known
        x = x_next
    stats.converged = stats.residual <= opts.tol
    stats.error_bound = _error_bound(system, residual)
    return x


def averaged(system: FixedPointSystem, x: Tensor, opts: SolverOptions, stats: SolverStats):
    """Averaged (Krasnosel'skii-Mann) iteration ``x <- (1 - alpha) x + alpha F(x)``, alpha = alpha*.

    Runs in place: one fused ``A x + z``, the activation and one ``lerp`` per iteration. On a check
    iteration the residual ``F(x_k) - x_k`` is formed before the update; the iterate returned is
    ``x_{k+1} = N_alpha(x_k)``, for which the bound computed at ``x_k`` still holds (``N_alpha``
    contracts towards ``x*``).
    """
    alpha = opts.alpha if opts.alpha is not None else _default_alpha(system)
    stats.alpha = alpha
    if system.measure is not None:
        stats.contraction_factor = contraction_factor(alpha, system.measure)
    residual = x
    for k in range(1, opts.max_iter + 1):
        fx = system.phi.inplace(system.preactivation(x))
        if k % opts.check_every == 0 or k == opts.max_iter:
            residual = fx - x
            x.lerp_(fx, alpha)
            if opts.residual == "fixed_point":
                rel = float(_relative(residual, fx))
            else:
                rel = float(alpha * residual.norm() / x.norm().clamp_min(_TINY))
            stats.iterations, stats.residual = k, rel
            if rel <= opts.tol or not math.isfinite(rel):
                break
        else:
            x.lerp_(fx, alpha)
    stats.converged = stats.residual <= opts.tol
    stats.error_bound = _error_bound(system, residual)
    return x


def picard(system: FixedPointSystem, x: Tensor, opts: SolverOptions, stats: SolverStats):
    """Picard iteration ``x <- F(x)`` (the averaged iteration at alpha = 1), as used by IDL."""
    return averaged(system, x, SolverOptions(**{**opts.__dict__, "alpha": 1.0}), stats)


def forward_backward(system: FixedPointSystem, x: Tensor, opts: SolverOptions, stats):
    """MON's forward-backward splitting ``x <- prox_{a f}((1 - a) x + a (A x + z))``.

    The default step is the system's ``splitting_step`` (for MON, ``(1 - mu_2(A)) / ||I - A||_2^2``,
    half the largest convergent one), else 1.
    """
    if opts.alpha is not None:
        a = opts.alpha
    else:
        a = system.splitting_step if system.splitting_step is not None else 1.0
    stats.alpha = a

    def step(x):
        p = system.matvec(x) + system.z
        x_next = system.phi.prox((1 - a) * x + a * p, a)
        return x_next, system.phi(p) - x

    return _loop(step, system, x, opts, stats)


def peaceman_rachford(system: FixedPointSystem, x: Tensor, opts: SolverOptions, stats):
    """Peaceman-Rachford splitting (Winston and Kolter, 2020) with resolvent ``(I + a(I - A))^-1``."""
    if system.resolvent is None:
        raise ValueError("Peaceman-Rachford needs the system's resolvent (MON layers provide it)")
    a = opts.alpha if opts.alpha is not None else 1.0
    stats.alpha = a
    solve_linear = system.resolvent(a)
    u = x.clone()
    residual = x
    for k in range(1, opts.max_iter + 1):
        u_half = 2 * x - u
        x_half = solve_linear(u_half + a * system.z)
        u = 2 * x_half - u_half
        x_next = system.phi.prox(u, a)
        if k % opts.check_every == 0 or k == opts.max_iter:
            residual = system.residual(x_next)
            if opts.residual == "fixed_point":
                rel = float(_relative(residual, residual + x_next))
            else:
                rel = float(_relative(x_next - x, x_next))
            stats.iterations, stats.residual = k, rel
            if rel <= opts.tol or not math.isfinite(rel):
                x = x_next
                break
        x = x_next
    stats.converged = stats.residual <= opts.tol
    stats.error_bound = _error_bound(system, residual)
    return x


def anderson(system: FixedPointSystem, x: Tensor, opts: SolverOptions, stats: SolverStats):
    """Anderson acceleration of the averaged map ``G(x) = x + alpha (F(x) - x)``, safeguarded.

    Each step mixes the last ``memory`` images ``G(x_i)`` with weights that minimise the mixed
    residual (per sample, a small regularised least-squares system). An extrapolated point is kept
    only if its residual, in the norm in which ``G`` contracts, is below that of the point it was
    extrapolated from; otherwise that sample takes the plain averaged step from that point. So the
    residual never increases and every rejected step is a step of the convergent averaged iteration.
    All decisions are batched tensor ops: no host sync outside the periodic convergence checks.
    """
    alpha = opts.alpha if opts.alpha is not None else _default_alpha(system)
    stats.alpha = alpha
    if system.measure is not None:
        stats.contraction_factor = contraction_factor(alpha, system.measure)
    norm = system.norm or _euclidean
    m = max(1, opts.memory)
    batch, shape = x.shape[0], x.shape
    X = x.new_zeros(batch, m, x[0].numel())  # images G(x_i)
    R = x.new_zeros(batch, m, x[0].numel())  # residuals G(x_i) - x_i
    base_g = x.reshape(batch, -1)  # G at the last accepted point
    base_res = x.new_full((batch,), math.inf)
    from_extrapolation = torch.zeros(batch, dtype=torch.bool, device=x.device)
    residual = x
    for k in range(1, opts.max_iter + 1):
        residual = system.residual(x)
        g = torch.add(x, residual, alpha=alpha)
        if k % opts.check_every == 0 or k == opts.max_iter:
            rel = _stopping_residual(opts, x, g, residual)
            stats.iterations, stats.residual = k, rel
            if rel <= opts.tol or not math.isfinite(rel) or k == opts.max_iter:
                break
        res = norm(residual)
        reject = from_extrapolation & ~(res < base_res)
        g = g.reshape(batch, -1)
        slot = (k - 1) % m
        X[:, slot], R[:, slot] = g, g - x.reshape(batch, -1)
        used = min(k, m)
        candidate = _anderson_mix(X[:, :used], R[:, :used])
        accept = ~reject
        base_g = torch.where(accept[:, None], g, base_g)
        base_res = torch.where(accept, res, base_res)
        x = torch.where(accept[:, None], candidate, base_g).reshape(shape)
        from_extrapolation = accept
    stats.converged = stats.residual <= opts.tol
    stats.error_bound = _error_bound(system, residual)
    return x


def _anderson_mix(X: Tensor, R: Tensor) -> Tensor:
    """``sum_i w_i X_i`` with ``w = argmin ||sum_i w_i R_i||`` subject to ``sum_i w_i = 1``."""
    used = X.shape[1]
    if used == 1:
        return X[:, 0]
    gram = R @ R.transpose(1, 2)
    scale = gram.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(_TINY)
    eye = torch.eye(used, dtype=X.dtype, device=X.device)
    gram = gram + 1e-10 * scale[:, None, None] * eye
    ones = torch.ones(X.shape[0], used, 1, dtype=X.dtype, device=X.device)
    w = torch.linalg.solve(gram, ones).squeeze(-1)
    w = w / w.sum(dim=1, keepdim=True)
    return (w[:, :, None] * X).sum(dim=1)


SOLVERS: dict[str, Callable] = {
    "averaged": averaged,
    "picard": picard,
    "forward_backward": forward_backward,
    "peaceman_rachford": peaceman_rachford,
    "anderson": anderson,
}


def solve(
    system: FixedPointSystem, x0: Tensor | None = None, options: SolverOptions | None = None
) -> tuple[Tensor, SolverStats]:
    """Solve ``x = phi(A x + z)`` with the solver named in ``options.method``."""
    opts = options or SolverOptions()
    try:
        method = SOLVERS[opts.method]
    except KeyError:
        raise ValueError(
            f"unknown solver {opts.method!r}; choose one of {sorted(SOLVERS)}"
        ) from None
    if opts.tol <= 0 or opts.max_iter < 1 or opts.check_every < 1:
        raise ValueError("solver needs tol > 0, max_iter >= 1 and check_every >= 1")
    if opts.residual not in ("step", "fixed_point"):
        raise ValueError(f"residual must be 'step' or 'fixed_point', got {opts.residual!r}")
    x = torch.zeros_like(system.z) if x0 is None else x0.clone()
    stats = SolverStats(method=opts.method)
    start = time.perf_counter()
    with torch.no_grad():
        x = method(system, x, opts, stats)
    stats.seconds = time.perf_counter() - start
    if not stats.converged and opts.warn:
        warnings.warn(
            f"{opts.method} solver stopped after {stats.iterations} iterations at relative "
            f"residual {stats.residual:.3g} > tol {opts.tol:g}",
            ConvergenceWarning,
            stacklevel=3,
        )
    return x, stats
