"""Fixed-point solvers for ``x = Phi(A x + z)`` (docs/maths.md#model).

A `FixedPointSystem` describes one equation (forward or adjoint); `solve` runs the `Solver`
named in `SolverOptions.method`, an object that owns its own settings (`Averaged` its step,
`Anderson` its memory, `PeacemanRachford` its step...; `SOLVERS` maps names to them). A solve
writes into nothing: it returns a `FixedPointSolution`, the iterate and an immutable `SolverStats`
with its result code; convergence is checked every ``check_every`` iterations (the only host
sync in the loop). Two stopping residuals, both relative, over the whole batch (Frobenius) or,
with ``per_sample=True``, for each sample (the largest must pass):

- ``residual="step"`` (default): ``||x_{k+1} - x_k|| / ||x_{k+1}||``. For the averaged iteration
  this is the relative residual of the averaged map ``N_alpha`` that is iterated; Anderson measures
  the same quantity, the residual of ``N_alpha*`` at its iterate, so both stop at the same accuracy.
- ``residual="fixed_point"``: ``||F(x) - x|| / ||F(x)||`` with ``F(x) = Phi(A x + z)``, stricter by
  the factor ``1 / alpha``.

Whatever the rule, solvers report a per-sample a-posteriori bound on ``||x - x*||`` where the
system has one: ``||F(x) - x|| / (1 - mu_+)`` in the weighted l_inf norm when a measure is known
(docs/maths.md#model), and for monotone (MON) systems the l_2 bound of `monotone_error_bound`.
With ``error_tol`` the solve stops only when every sample's bound is at most ``error_tol``: what
the layers do in eval mode, so that the model as it runs is within a stated distance of its
exact equilibrium for every input (docs/guarantees.md).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from .activations import Activation
from .contraction import theorem2_alpha_star
from .errors import InputError
from .validation import MAX_ITER, MIN_TOL, check_integer, check_number

__all__ = [
    "ConvergenceWarning",
    "FixedPointSystem",
    "FixedPointSolution",
    "SolverOptions",
    "SolverStats",
    "Solver",
    "Averaged",
    "Diagonal",
    "Picard",
    "ForwardBackward",
    "PeacemanRachford",
    "Anderson",
    "AveragedSteps",
    "SOLVERS",
    "get_solver",
    "solve",
    "alpha_star",
    "contraction_factor",
    "diagonal_steps",
    "weighted_inf_norm",
    "weighted_l1_norm",
    "averaged_solvers",
    "monotone_error_bound",
    "step_is_proven",
    "Step",
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
        phi: the nonlinearity (an `Activation`; ``DiagonalGain`` for the adjoint).
        a_diagonal: the diagonal of ``A`` broadcastable to a state, for ``alpha*``.
        measure: an upper bound on the measure ``mu(A)`` in the solver's norm, or None.
        norm: per-sample norm in which the averaged map contracts (``||.||_{inf,[eta]^-1}`` forward,
            its dual ``||.||_{1,[eta]}`` for the adjoint); used by the error bound and Anderson.
        resolvent: ``a -> (v -> (I + a (I - A))^-1 v)``, for Peaceman-Rachford.
        splitting_step: default step of forward-backward splitting (MON layers provide it).
        affine: optional fused ``x -> A x + z`` (e.g. one ``addmm`` for dense ``A``).
        observe: a linear map through which the stopping rule measures iterates and residuals
            (the adjoint ``p`` is only used through ``w = J p``; None means the identity).
    """

    matvec: Callable[[Tensor], Tensor]
    z: Tensor
    phi: Activation
    a_diagonal: Tensor | None = None
    measure: float | None = None
    norm: Callable[[Tensor], Tensor] | None = None
    resolvent: Callable[[float], Callable[[Tensor], Tensor]] | None = None
    splitting_step: float | None = None

    affine: Callable[[Tensor], Tensor] | None = None
    step_scaled_norm: bool = False  # adjoint: contraction norm is norm(r / steps)
    observe: Callable[[Tensor], Tensor] | None = None  # stopping rule measures observe(x)
    #: ``1 - mu_2(A)`` (an upper bound of ``mu_2`` rounded up), evaluated on demand: the strong
    #: monotonicity margin of a MON system, for `monotone_error_bound`
    monotone_margin: Callable[[], float] | None = None
    #: an upper bound of ``||A||_{inf,[eta]^-1}`` (IDL: ``||A||_inf <= gamma``): Picard steps
    #: then never move away from ``x*``, whatever ``alpha*``
    lipschitz: float | None = None

    def preactivation(self, x: Tensor) -> Tensor:
        """``A x + z`` as a new tensor (fused by ``affine`` where the operator offers it)."""
        return self.affine(x) if self.affine is not None else self.matvec(x) + self.z

    def __call__(self, x: Tensor) -> Tensor:
        return self.phi(self.preactivation(x))

    def residual(self, x: Tensor) -> Tensor:
        """``F(x) - x``, computed in place in a fresh buffer."""
        return self.phi.inplace(self.preactivation(x)).sub_(x)


DEFAULT_TOL = 1e-4  # relative residual at which solves stop, unless told otherwise
DEFAULT_MAX_ITER = 500


@dataclass(frozen=True)
class SolverOptions:
    """A solver and the stopping rule it runs under.

    ``method`` is a `Solver` object (its own settings with it: ``Anderson(memory=10)``) or a name
    from `SOLVERS` for that solver with its defaults. Frozen: change settings with
    ``dataclasses.replace(options, tol=...)`` (or a layer's `solver_settings`).
    """

    method: Solver | str = "averaged"
    tol: float = DEFAULT_TOL
    max_iter: int = DEFAULT_MAX_ITER
    check_every: int = 4
    residual: str = "step"  # or "fixed_point" (see the module docstring)
    warn: bool = True
    error_tol: float | None = None  # stop when every sample's error bound is <= error_tol
    per_sample: bool = False  # relative residual per sample (largest), not over the batch

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", get_solver(self.method))
        self.validate()

    def validate(self) -> None:
        """Raise `InputError` naming the first setting out of its range."""
        check_number("tol", self.tol, low=MIN_TOL, high=1.0, high_open=True)
        for name in ("max_iter", "check_every"):
            check_integer(name, getattr(self, name), 1, MAX_ITER)
        if self.residual not in ("step", "fixed_point"):
            raise InputError(f"residual must be 'step' or 'fixed_point', got {self.residual!r}")
        if self.error_tol is not None:
            check_number("error_tol", self.error_tol, low=0.0, low_open=True)


@dataclass(frozen=True)
class SolverStats:
    """What a solve did: iterations, final relative residual, step, and bounds. Immutable: a
    solve returns it (`FixedPointSolution`), nothing fills it in later."""

    iterations: int = 0
    residual: float = math.nan
    converged: bool = False
    alpha: float = math.nan
    contraction_factor: float = math.nan
    error_bound: Tensor | None = field(default=None, repr=False, compare=False)
    seconds: float = 0.0
    method: str = ""
    #: what the solver computed once for this system (the averaged family's steps): an adjoint
    #: solve of the same equilibrium reuses it (`solve(..., prepared=...)`)
    prepared: object = field(default=None, repr=False, compare=False)

    @property
    def result(self) -> str:
        """How the solve ended: ``"converged"`` (within its tolerance), ``"non_finite"`` (the
        residual became NaN or inf) or ``"max_iterations"`` (stopped at ``max_iter``)."""
        if self.converged:
            return "converged"
        return "non_finite" if not math.isfinite(self.residual) else "max_iterations"


class FixedPointSolution(NamedTuple):
    """What `solve` returns: the iterate ``x`` and its `SolverStats` (``x, stats = solve(...)``)."""

    x: Tensor
    stats: SolverStats

    @property
    def result(self) -> str:
        """``"converged"``, ``"max_iterations"`` or ``"non_finite"`` (`SolverStats.result`)."""
        return self.stats.result


def alpha_star(diagonal: Tensor) -> float:
    """Best averaged step ``alpha* = 1 / (1 - min_i (a_ii)_-)`` (Theorem 2, Corollary 5)."""
    return theorem2_alpha_star(float(diagonal.min()))


def contraction_factor(alpha: float, measure: float) -> float:
    """``rho(alpha) = 1 - alpha (1 - mu(A)_+)`` for ``0 < alpha <= alpha*``."""
    return 1.0 - alpha * (1.0 - max(measure, 0.0))


def _relative(r: Tensor, f: Tensor, per_sample: bool = False) -> Tensor:
    """``||r|| / ||f||`` over the batch, or per sample and the largest (``per_sample``: one
    sample far from the others in scale then cannot stop the solve for the rest)."""
    if not per_sample:
        return r.norm() / f.norm().clamp_min(_TINY)
    ratios = r.flatten(1).norm(dim=1) / f.flatten(1).norm(dim=1).clamp_min(_TINY)
    return ratios.amax() if ratios.numel() else ratios.new_zeros(())


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
    """Per-sample a-posteriori bound on ``||x - x*||`` at an iterate ``x`` with residual
    ``F(x) - x``: ``||F(x) - x|| / (1 - mu_+)`` in the weighted l_inf norm (docs/maths.md#model),
    or `monotone_error_bound` for a MON system; None when the system has neither."""
    if system.measure is not None and system.norm is not None and system.measure < 1:
        return system.norm(residual) / (1.0 - max(system.measure, 0.0))
    if system.monotone_margin is not None:
        return monotone_error_bound(system, residual)
    return None


def monotone_error_bound(system: FixedPointSystem, residual: Tensor) -> Tensor | None:
    """``||x - x*||_2 <= ||r||_2 + ||A r||_2 / m`` per sample, with ``r = F(x) - x`` and
    ``m = 1 - mu_2(A) > 0`` (docs/maths.md#model, MON's bound).

    ``Phi`` is the proximal map of a convex function, so ``x^ = F(x)`` satisfies
    ``A (x - x^) in (I - A) x^ - z + df(x^)``, an operator that is ``m``-strongly monotone and
    vanishes at ``x*``: hence ``||x^ - x*|| <= ||A r|| / m``, and the triangle inequality gives the
    bound at ``x``. It bounds the l_inf error too (``||.||_inf <= ||.||_2``)."""
    margin = system.monotone_margin()
    if not (math.isfinite(margin) and margin > 0):
        return None
    return _euclidean(residual) + _euclidean(system.matvec(residual)) / margin


def _default_alpha(system: FixedPointSystem) -> float:
    return 1.0 if system.a_diagonal is None else alpha_star(system.a_diagonal)


@dataclass
class Step:
    """One iteration of a step rule.

    ``next`` is the new iterate. On a check iteration the rule also reports ``residual`` ``=
    F(point) - point`` at the iterate ``point``, the pair ``(step_from, step_to)`` whose relative
    difference is the ``"step"`` residual, and ``final``: the iterate returned if the solve stops.
    """

    next: Tensor
    residual: Tensor | None = None
    point: Tensor | None = None
    step_from: Tensor | None = None
    step_to: Tensor | None = None
    final: Tensor | None = None


def _stopping_residual(opts: SolverOptions, step: Step, observe=None) -> float:
    """The relative residual of the stopping rule (only the two iterates it needs observed)."""
    see = observe if observe is not None else (lambda t: t)
    if opts.residual == "fixed_point":
        residual = see(step.residual)
        return float(_relative(residual, residual + see(step.point), opts.per_sample))
    end = see(step.step_to)
    return float(_relative(end - see(step.step_from), end, opts.per_sample))


@dataclass
class _Outcome:
    """Where `_iterate` stopped: the iterate, the last checked iteration and its residual, the
    error bound there, and whether the stopping rule was met."""

    x: Tensor
    iterations: int
    residual: float
    error_bound: Tensor | None
    converged: bool


def _iterate(rule, system: FixedPointSystem, x: Tensor, opts: SolverOptions) -> _Outcome:
    """The one solver loop: ``rule.step`` every iteration, the stopping rule every
    ``check_every`` iterations (the only host sync), then the a-posteriori error bound at the
    last checked iterate. With ``error_tol`` the rule is that bound, for every sample."""
    if opts.error_tol is not None and system.measure is None and system.monotone_margin is None:
        raise InputError("error_tol needs a system with an error bound (a measure or MON's)")
    residual = error = None
    iterations, rel = 0, math.nan
    for k in range(1, opts.max_iter + 1):
        check = k % opts.check_every == 0 or k == opts.max_iter
        step = rule.step(x, check)
        if check:
            residual = step.residual
            if opts.error_tol is not None:
                error = _error_bound(system, residual)
            rel = _stopping_residual(opts, step, system.observe)
            iterations = k
            if _converged(opts, rel, error) or not math.isfinite(rel) or k == opts.max_iter:
                x = step.final
                break
        x = step.next
    if error is None and residual is not None:
        error = _error_bound(system, residual)
    return _Outcome(x, iterations, rel, error, _converged(opts, rel, error))


def _converged(opts: SolverOptions, rel: float, error: Tensor | None) -> bool:
    """The relative residual is within ``tol`` and, with ``error_tol``, every error bound
    within ``error_tol``."""
    if not rel <= opts.tol:
        return False
    if opts.error_tol is None or (error is not None and error.numel() == 0):
        return True
    return error is not None and bool(error.amax() <= opts.error_tol)


def diagonal_steps(diagonal: Tensor) -> Tensor:
    """Per-coordinate steps ``alpha_i = 1 / (1 - (a_ii)_-)``; their minimum is ``alpha*``.

    The map ``x -> x + [alpha] (Phi(A x + z) - x)`` has, row by row, Jacobian entries
    ``1 - alpha_i + alpha_i phi'_i a_ii >= 0`` on the diagonal, so its weighted row sums are at most
    ``1 - alpha_i (1 - mu_i(A)_+)``: it contracts with factor ``<= 1 - alpha* (1 - mu(A)_+)``, the
    averaged iteration's, and with much larger steps on rows with mild diagonals.
    """
    return 1.0 / (1.0 - diagonal.clamp(max=0.0))


class AveragedStep:
    """``x <- x + step (F(x) - x)`` (``step`` a scalar or per-coordinate tensor), in place.

    On a check the residual ``F(x_k) - x_k`` is formed before the update and the stopping rule is
    the residual of ``N_{alpha_ref}`` at ``x_k``, whatever the step used. The iterate returned is
    ``x_{k+1}`` when the step is proven not to move away from ``x*`` (``proven``: steps up to
    ``alpha*``, see `step_is_proven`), so the bound computed at ``x_k`` holds for it; otherwise
    (a larger step a user chose) ``x_k`` itself. From ``x_0 = 0`` (``zero_start``) the first
    ``A x_0 + z`` is ``z``: no product.
    """

    def __init__(self, system: FixedPointSystem, steps: AveragedSteps, zero_start=False):
        self.system, self.step_size, self.alpha = system, steps.steps, steps.alpha_ref
        self.zero_start, self.proven = zero_start, steps.proven
        self.contraction_factor = (
            contraction_factor(self.alpha, system.measure)
            if system.measure is not None and steps.proven
            else math.nan
        )

    def step(self, x: Tensor, check: bool) -> Step:
        if self.zero_start:  # A 0 + z = z, exactly
            self.zero_start = False
            fx = self.system.phi.inplace(self.system.z.clone())
        else:
            fx = self.system.phi.inplace(self.system.preactivation(x))
        if not check:
            return Step(next=x.lerp_(fx, self.step_size))
        residual = fx - x
        x_ref = torch.add(x, residual, alpha=self.alpha)
        x_next = torch.lerp(x, fx, self.step_size)
        final = x_next if self.proven else x
        return Step(
            next=x_next, residual=residual, point=x, step_from=x, step_to=x_ref, final=final
        )


def step_is_proven(per_coordinate: bool, alpha_ref: float, system: FixedPointSystem) -> bool:
    """Whether the averaged step never moves an iterate away from ``x*`` (in the weighted norm):
    per-coordinate steps (`diagonal_steps`), a step up to ``alpha*`` (Theorem 2), or any step up
    to 1 when ``F`` itself is nonexpansive (``system.lipschitz <= 1``, IDL)."""
    if per_coordinate:
        return True
    if system.lipschitz is not None and system.lipschitz <= 1 and alpha_ref <= 1:
        return True
    return system.a_diagonal is not None and alpha_ref <= alpha_star(system.a_diagonal)


@dataclass(frozen=True)
class AveragedSteps:
    """The constants of an averaged-family solve: the step (a number, or one per coordinate),
    the scalar step ``alpha_ref`` whose contraction factor bounds the iteration's, and whether
    the step is proven (`step_is_proven`). Built once per equilibrium: the adjoint reuses them."""

    steps: float | Tensor
    alpha_ref: float
    proven: bool


class ForwardBackwardStep:
    """MON's forward-backward splitting ``x <- prox_{a f}((1 - a) x + a (A x + z))``."""

    def __init__(self, system: FixedPointSystem, a: float) -> None:
        self.system, self.alpha, self.contraction_factor = system, a, math.nan

    def step(self, x: Tensor, check: bool) -> Step:
        p = self.system.matvec(x) + self.system.z
        x_next = self.system.phi.prox((1 - self.alpha) * x + self.alpha * p, self.alpha)
        if not check:
            return Step(next=x_next)
        residual = self.system.phi(p) - x
        return Step(
            next=x_next, residual=residual, point=x, step_from=x, step_to=x_next, final=x
        )  # the iterate whose residual is known


class PeacemanRachfordStep:
    """Peaceman-Rachford splitting with the resolvent ``(I + a (I - A))^-1``; carries ``u``."""

    def __init__(self, system: FixedPointSystem, x: Tensor, a: float) -> None:
        self.system, self.alpha, self.contraction_factor = system, a, math.nan
        self.solve_linear = system.resolvent(a)
        self.u = x.clone()

    def step(self, x: Tensor, check: bool) -> Step:
        u_half = 2 * x - self.u
        x_half = self.solve_linear(u_half + self.alpha * self.system.z)
        self.u = 2 * x_half - u_half
        x_next = self.system.phi.prox(self.u, self.alpha)
        if not check:
            return Step(next=x_next)
        residual = self.system.residual(x_next)
        return Step(
            next=x_next, residual=residual, point=x_next, step_from=x, step_to=x_next, final=x_next
        )


class AndersonStep:
    """Safeguarded Anderson mixing of ``G(x) = x + [alpha] (F(x) - x)``; see `Anderson`."""

    def __init__(self, system: FixedPointSystem, x: Tensor, memory: int, alpha: float | None):
        self.system = system
        self.alpha = alpha if alpha is not None else _default_alpha(system)
        per_coordinate = alpha is None and system.a_diagonal is not None
        self.step_size = (
            diagonal_steps(system.a_diagonal).to(x.dtype) if per_coordinate else self.alpha
        )
        self.contraction_factor = (
            contraction_factor(self.alpha, system.measure)
            if system.measure is not None
            else math.nan
        )
        norm = system.norm or _euclidean
        if system.step_scaled_norm and per_coordinate:
            norm = (lambda base, steps: lambda r: base(r / steps))(norm, self.step_size)
        self.norm = norm
        self.m = memory
        batch = x.shape[0]
        self.X = x.new_zeros(self.m, x.numel())  # images G(x_i), flattened over the batch
        self.R = x.new_zeros(self.m, x.numel())  # residuals G(x_i) - x_i
        self.gram = torch.zeros(self.m, self.m, dtype=torch.float64, device=x.device)
        self.base_g = x  # G at the last accepted point
        self.base_res = x.new_full((batch,), math.inf)
        self.from_extrapolation = torch.zeros(batch, dtype=torch.bool, device=x.device)
        self.k = 0

    def step(self, x: Tensor, check: bool) -> Step:
        self.k += 1
        residual = self.system.residual(x)
        steps = self.step_size
        g = torch.addcmul(x, residual, steps) if torch.is_tensor(steps) else x + steps * residual
        res = self.norm(residual)
        accept = ~(self.from_extrapolation & ~(res < self.base_res))
        slot = (self.k - 1) % self.m
        self.X[slot] = g.reshape(-1)
        self.R[slot] = (g - x).reshape(-1)
        self.gram[slot] = self.gram[:, slot] = (self.R @ self.R[slot]).double()
        used = min(self.k, self.m)
        candidate = _anderson_mix(self.X[:used], self.gram[:used, :used]).reshape(x.shape)
        keep = accept.reshape(-1, *([1] * (x.dim() - 1)))
        self.base_g = torch.where(keep, g, self.base_g)
        self.base_res = torch.where(accept, res, self.base_res)
        x_next = torch.where(keep, candidate, self.base_g)  # a NaN candidate fails the next test
        self.from_extrapolation = accept
        if not check:
            return Step(next=x_next)
        x_ref = torch.add(x, residual, alpha=self.alpha)
        return Step(next=x_next, residual=residual, point=x, step_from=x, step_to=x_ref, final=x)


def _anderson_mix(X: Tensor, gram: Tensor) -> Tensor:
    """``sum_i w_i X_i`` with ``w = argmin ||sum_i w_i R_i||`` subject to ``sum_i w_i = 1``."""
    used = X.shape[0]
    if used == 1:
        return X[0]
    scale = gram.diagonal().amax().clamp_min(1e-300)
    eye = torch.eye(used, dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(
        gram / scale + 1e-10 * eye, torch.ones(used, 1, dtype=gram.dtype, device=gram.device)
    )
    w = (w / w.sum()).to(X.dtype)
    return (w.T @ X).squeeze(0)


def _check_step(name: str, value: float | None) -> None:
    if value is not None and not (
        isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    ):
        raise InputError(f"{name} must be a finite number > 0 or None, got {value!r}")


@dataclass(frozen=True)
class Solver:
    """A fixed-point solver with its own settings, and what its callers need to know of it,
    stated once on its class.

    ``family``: ``"averaged"`` (fixed steps, `steps`; the ONNX export runs these),
    ``"splitting"`` (MON's operator splittings) or ``"accelerated"`` (Anderson).
    ``needs_step_size``: it takes the forward-backward step ``(1 - mu_2(A)) / ||I - A||_2^2``
    from its layer; ``needs_resolvent``: it iterates ``(I + a (I - A))^-1``, which only MON
    layers have. `adjoint_form`: the form of the adjoint equation it solves
    (docs/maths.md#gradients). Subclasses are frozen dataclasses: equal settings, equal solvers.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "averaged"
    needs_step_size: ClassVar[bool] = False
    needs_resolvent: ClassVar[bool] = False

    def prepare(self, system: FixedPointSystem, dtype: torch.dtype):
        """Constants computed once per equilibrium and shared with its adjoint (None: none)."""
        return None

    def rule(self, system: FixedPointSystem, x: Tensor, prepared, zero_start: bool):
        """The step rule iterated from ``x`` (``zero_start``: ``x`` is zero)."""
        raise NotImplementedError

    @property
    def averaged(self) -> bool:
        return self.family == "averaged"

    @property
    def splitting(self) -> bool:
        return self.family == "splitting"

    @property
    def adjoint_form(self) -> str:
        """``"prox"``: ``w = J (A^T w + g)``, a prox form a splitting can split; ``"transpose"``:
        ``p = A^T J p + g`` and ``w = J p``, contracting in the dual norm with the forward
        factor (every other solver)."""
        return "prox" if self.splitting else "transpose"

    def settings(self) -> dict:
        """The settings that differ from this solver's defaults."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != f.default
        }

    def spec(self) -> str | dict:
        """The name alone with default settings, else ``{"name": ..., **settings}`` (what model
        files record; `get_solver` reads both back)."""
        changed = self.settings()
        return {"name": self.name, **changed} if changed else self.name

    def __str__(self) -> str:
        changed = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{self.name}({changed})" if changed else self.name


@dataclass(frozen=True)
class _AveragedFamily(Solver):
    """``x <- x + alpha (F(x) - x)`` with fixed steps (`steps`), one ``A x + z`` an iteration."""

    per_coordinate: ClassVar[bool] = False

    def steps(self, diagonal: Tensor | None, dtype: torch.dtype) -> tuple[float | Tensor, float]:
        """``(steps, alpha_ref)``: the step (a number, or one per coordinate) and the scalar step
        whose contraction factor bounds the iteration's. The solves and the ONNX export both
        take their constants from here."""
        raise NotImplementedError

    def prepare(self, system: FixedPointSystem, dtype: torch.dtype) -> AveragedSteps:
        steps, alpha_ref = self.steps(system.a_diagonal, dtype)
        return AveragedSteps(
            steps, alpha_ref, step_is_proven(self.per_coordinate, alpha_ref, system)
        )

    def rule(self, system, x, prepared, zero_start):
        return AveragedStep(system, prepared, zero_start)


@dataclass(frozen=True)
class Averaged(_AveragedFamily):
    """Averaged (Krasnosel'skii-Mann) iteration ``x <- (1 - alpha) x + alpha F(x)``; ``alpha=None``
    is ``alpha*`` (Theorem 2). One fused ``A x + z``, the activation and one in-place ``lerp``
    per iteration."""

    name: ClassVar[str] = "averaged"
    alpha: float | None = None

    def __post_init__(self) -> None:
        _check_step("alpha", self.alpha)

    def steps(self, diagonal, dtype):
        if self.alpha is not None:
            return self.alpha, self.alpha
        alpha = 1.0 if diagonal is None else alpha_star(diagonal)
        return alpha, alpha


@dataclass(frozen=True)
class Diagonal(_AveragedFamily):
    """Averaged iteration with per-coordinate steps ``alpha_i = 1 / (1 - (a_ii)_-)``: the same
    cost per iteration and the same worst-case factor as `Averaged` (see `diagonal_steps`), far
    fewer iterations when the diagonal of ``A`` is uneven."""

    name: ClassVar[str] = "diagonal"
    per_coordinate: ClassVar[bool] = True

    def steps(self, diagonal, dtype):
        if diagonal is None:
            raise InputError("the diagonal solver needs the diagonal of A")
        return diagonal_steps(diagonal).to(dtype), alpha_star(diagonal)


@dataclass(frozen=True)
class Picard(_AveragedFamily):
    """Picard iteration ``x <- F(x)`` (the averaged iteration at alpha = 1), as used by IDL."""

    name: ClassVar[str] = "picard"

    def steps(self, diagonal, dtype):
        return 1.0, 1.0


@dataclass(frozen=True)
class ForwardBackward(Solver):
    """Forward-backward splitting; ``step=None`` is the system's ``splitting_step`` (for MON,
    ``(1 - mu_2(A)) / ||I - A||_2^2``, half the largest convergent one), else 1."""

    name: ClassVar[str] = "forward_backward"
    family: ClassVar[str] = "splitting"
    needs_step_size: ClassVar[bool] = True
    step: float | None = None

    def __post_init__(self) -> None:
        _check_step("step", self.step)

    def rule(self, system, x, prepared, zero_start):
        a = self.step
        if a is None:
            a = system.splitting_step if system.splitting_step is not None else 1.0
        return ForwardBackwardStep(system, a)


@dataclass(frozen=True)
class PeacemanRachford(Solver):
    """Peaceman-Rachford splitting (Winston and Kolter, 2020) with the resolvent
    ``(I + a (I - A))^-1`` at step ``a = step`` (None: 1)."""

    name: ClassVar[str] = "peaceman_rachford"
    family: ClassVar[str] = "splitting"
    needs_resolvent: ClassVar[bool] = True
    step: float | None = None

    def __post_init__(self) -> None:
        _check_step("step", self.step)

    def rule(self, system, x, prepared, zero_start):
        if system.resolvent is None:
            raise InputError(
                "Peaceman-Rachford needs the system's resolvent (MON layers provide it)"
            )
        return PeacemanRachfordStep(system, x, self.step if self.step is not None else 1.0)


@dataclass(frozen=True)
class Anderson(Solver):
    """Anderson acceleration of ``G(x) = x + [alpha] (F(x) - x)`` with per-coordinate steps
    (``alpha=None``) or the step ``alpha``, safeguarded.

    Each step mixes the last ``memory`` images ``G(x_i)`` with the weights (summing to one) that
    minimise the mixed residual over the whole batch: one small ``m x m`` least-squares system
    per step, its Gram matrix updated by one row. An extrapolated point is kept, per sample, only
    if its residual in the norm in which ``G`` contracts is below that of the point it came from;
    otherwise that sample takes the plain averaged step from that point. So the residual never
    increases and every rejected step is a step of the convergent averaged iteration. All
    decisions are tensor ops: no host sync outside the periodic convergence checks.
    """

    name: ClassVar[str] = "anderson"
    family: ClassVar[str] = "accelerated"
    memory: int = 5
    alpha: float | None = None

    def __post_init__(self) -> None:
        check_integer("memory", self.memory, 1, MAX_ITER)
        _check_step("alpha", self.alpha)

    def rule(self, system, x, prepared, zero_start):
        return AndersonStep(system, x, self.memory, self.alpha)


SOLVERS: dict[str, type[Solver]] = {
    cls.name: cls
    for cls in (Averaged, Diagonal, Picard, ForwardBackward, PeacemanRachford, Anderson)
}


def get_solver(spec: Solver | str | dict) -> Solver:
    """A `Solver` from itself, its name (default settings) or ``{"name": ..., **settings}``."""
    if isinstance(spec, Solver):
        return spec
    settings = {}
    if isinstance(spec, dict):
        settings = {k: v for k, v in spec.items() if k != "name"}
        spec = spec.get("name")
    if spec not in SOLVERS:
        raise InputError(f"unknown solver {spec!r}; choose one of {sorted(SOLVERS)}")
    try:
        return SOLVERS[spec](**settings)
    except TypeError as exc:
        known = [f.name for f in fields(SOLVERS[spec])]
        raise InputError(f"solver {spec!r} takes the settings {known}, got {settings}") from exc


def averaged_solvers() -> tuple[str, ...]:
    """The solvers of the averaged family: ``x <- x + alpha (F(x) - x)`` with fixed steps."""
    return tuple(name for name, cls in SOLVERS.items() if cls.family == "averaged")


def solve(
    system: FixedPointSystem,
    x0: Tensor | None = None,
    options: SolverOptions | None = None,
    prepared=None,
) -> FixedPointSolution:
    """Solve ``x = phi(A x + z)`` with ``options.method`` from ``x0`` (None: zero). Returns the
    iterate and its statistics; ``prepared``: the constants of an earlier solve of the same
    equilibrium with the same solver (``stats.prepared``), reused instead of recomputed."""
    opts = options or SolverOptions()
    method = opts.method
    x = torch.zeros_like(system.z) if x0 is None else x0.clone()
    start = time.perf_counter()
    with torch.no_grad():
        if prepared is None:
            prepared = method.prepare(system, x.dtype)
        rule = method.rule(system, x, prepared, zero_start=x0 is None)
        end = _iterate(rule, system, x, opts)
    stats = SolverStats(
        iterations=end.iterations,
        residual=end.residual,
        converged=end.converged,
        alpha=rule.alpha,
        contraction_factor=rule.contraction_factor,
        error_bound=end.error_bound,
        seconds=time.perf_counter() - start,
        method=method.name,
        prepared=prepared,
    )
    if not stats.converged and opts.warn:
        warnings.warn(
            f"{method} solver stopped after {stats.iterations} iterations at relative "
            f"residual {stats.residual:.3g} > tol {opts.tol:g}",
            ConvergenceWarning,
            stacklevel=3,
        )
    return FixedPointSolution(end.x, stats)
