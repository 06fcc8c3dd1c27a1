"""Implicit differentiation of ``x* = Phi(A x* + z)`` (docs/maths.md#gradients, eq. (20)).

`ImplicitSolve` is one ``torch.autograd.Function``: its forward solves without building a
graph (memory independent of the number of iterations) and its backward solves the adjoint
equation for ``w = dL/dp``, ``w = J (g + A^T w)`` with ``J = diag(phi'(A x* + z))``, with a solver
of the same family (see `Equilibrium.adjoint_system`). Then ``dL/dz = w``, and the
gradient for the weights of ``A`` is the vector-Jacobian product of the single map
``weights -> A x*`` with ``w`` (`Operator.weight_vjp`: ``w^T x*`` for a dense ``A``,
autograd through one application otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .activations import Activation, DiagonalGain, Identity
from .errors import InputError
from .operators import Operator
from .solve_log import open_logs, report
from .solvers import (
    FixedPointSystem,
    SolverOptions,
    SolverStats,
    solve,
    weighted_inf_norm,
    weighted_l1_norm,
)

__all__ = [
    "Operator",
    "Equilibrium",
    "ImplicitSolve",
    "implicit_solve",
    "Solution",
    "ImplicitAdjoint",
    "JacobianFree",
    "ADJOINTS",
    "get_adjoint",
]


class ImplicitAdjoint:
    """The exact gradient: solve the adjoint equation (docs/maths.md#gradients) with the layer's
    backward solver options."""

    name = "implicit"

    def gradient(self, eq: Equilibrium, weights, J: Tensor, grad_x: Tensor, forward: SolverStats):
        """``(w, stats)``; the forward solve's constants are reused when the backward solver is
        the forward one (the same steps for the same ``A``)."""
        system, to_w, start = eq.adjoint_system(weights, J, grad_x)
        same = eq.backward_options.method == eq.options.method
        solution, stats = solve(
            system, start, eq.backward_options, forward.prepared if same else None
        )
        return to_w(solution), stats


class JacobianFree:
    """``w = J g`` (Fung et al., 2022): drops ``(I - J A^T)^-1``, so no adjoint solve; a cheaper
    descent direction, not the gradient."""

    name = "jacobian_free"

    def gradient(self, eq: Equilibrium, weights, J: Tensor, grad_x: Tensor, forward: SolverStats):
        return J * grad_x, SolverStats(iterations=0, converged=True, method=self.name)


ADJOINTS = {"implicit": ImplicitAdjoint, "jacobian_free": JacobianFree}


def get_adjoint(adjoint) -> ImplicitAdjoint | JacobianFree:
    """An adjoint method from its name (``implicit``, ``jacobian_free``) or as given."""
    if not isinstance(adjoint, str):
        return adjoint
    if adjoint not in ADJOINTS:
        raise InputError(f"unknown adjoint {adjoint!r}; choose one of {sorted(ADJOINTS)}")
    return ADJOINTS[adjoint]()


@dataclass
class Equilibrium:
    """Everything needed to solve one equilibrium and its adjoint.

    ``measure`` bounds ``mu(A)`` in the norm ``||.||_{inf,[eta]^-1}`` (``eta`` broadcastable to a
    state; None for unit weights); it feeds the error bounds. The splitting solvers use the
    operator's resolvent where it has one. ``kind`` names the solve in a `SolveLog`
    (``"state"``, or ``"embedding"`` for interval bounds).
    """

    operator: Operator
    phi: Activation
    options: SolverOptions
    backward_options: SolverOptions
    measure: float | None = None
    eta: Tensor | None = None
    splitting_step: float | None = None
    monotone_margin: Callable[[], float] | None = None  # MON: 1 - mu_2(A), for its error bound
    lipschitz: float | None = None  # an upper bound of ||A|| in the weighted norm (IDL)
    adjoint: ImplicitAdjoint | JacobianFree = field(default_factory=ImplicitAdjoint)
    kind: str = "state"

    def forward_system(self, weights: tuple[Tensor, ...], z: Tensor) -> FixedPointSystem:
        op = self.operator
        return FixedPointSystem(
            matvec=lambda x: op.matvec(weights, x),
            z=z,
            phi=self.phi,
            a_diagonal=op.diagonal_entries(weights),
            measure=self.measure,
            norm=weighted_inf_norm(self.eta),
            resolvent=self._resolvent(weights, transpose=False),
            splitting_step=self.splitting_step,
            affine=lambda x: op.matvec_add(weights, x, z),
            monotone_margin=self.monotone_margin,
            lipschitz=self.lipschitz,
        )

    def adjoint_system(
        self, weights: tuple[Tensor, ...], J: Tensor, g: Tensor
    ) -> tuple[FixedPointSystem, Callable[[Tensor], Tensor], Tensor | None]:
        """The adjoint equation, the map from its solution to ``w = dL/dp``, and a start point.

        NEMON-type solvers solve ``p = A^T J p + g`` and return ``w = J p``: its iteration matrix
        ``(1 - alpha) I + alpha A^T J`` is the transpose of the forward linearisation, so it
        contracts in the dual norm ``||.||_{1,[eta]}`` with the forward factor (docs/maths.md#gradients),
        also with per-coordinate steps (in the step-scaled dual norm). Splitting solvers (MON)
        solve ``w = J (A^T w + g)``, a prox form they can split. The ``p`` form starts at
        ``p = g``, the first term of its Neumann series (a warm start); the ``w`` form at 0.
        """
        op = self.operator
        common = dict(
            z=g,
            a_diagonal=op.diagonal_entries(weights),
            measure=self.measure,
            norm=weighted_l1_norm(self.eta),
            resolvent=self._resolvent(weights, transpose=True),
            splitting_step=self.splitting_step,
            lipschitz=self.lipschitz,  # ||A^T J|| in the dual norm <= ||A|| in the forward one
        )
        if self.backward_options.method.adjoint_form == "prox":
            system = FixedPointSystem(
                matvec=lambda w: op.rmatvec(weights, w),
                phi=DiagonalGain(J),
                affine=lambda w: op.rmatvec_add(weights, w, g),
                **common,
            )
            return system, lambda w: w, None
        system = FixedPointSystem(
            matvec=lambda p: op.rmatvec(weights, J * p),
            phi=Identity(),
            affine=lambda p: op.rmatvec_add(weights, J * p, g),
            step_scaled_norm=True,
            observe=lambda p: J * p,
            **common,
        )
        return system, lambda p: J * p, g

    def _resolvent(self, weights, transpose: bool):
        if not self.operator.has_resolvent:
            return None
        return lambda a: self.operator.resolvent(weights, a, transpose)


class ImplicitSolve(torch.autograd.Function):
    """``x* = Phi(A x* + z)`` with gradients by the implicit function theorem. Returns the state
    and the forward solve's `SolverStats`; the adjoint solve's statistics go to the `SolveLog`
    open at the forward (there is no return value to carry them)."""

    @staticmethod
    def forward(ctx, eq: Equilibrium, z: Tensor, *weights: Tensor):
        weights = tuple(w.detach() for w in weights)
        x, stats = solve(eq.forward_system(weights, z.detach()), None, eq.options)
        ctx.eq, ctx.stats, ctx.logs = eq, stats, open_logs()
        report(ctx.logs, eq.kind, "forward", stats)
        ctx.save_for_backward(x, z, *weights)
        return x, stats

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x: Tensor, _grad_stats=None):
        x, z, *weights = ctx.saved_tensors
        eq: Equilibrium = ctx.eq
        weights = tuple(weights)
        J = eq.phi.derivative(eq.operator.matvec_add(weights, x, z))
        w, stats = eq.adjoint.gradient(eq, weights, J, grad_x, ctx.stats)
        report(ctx.logs, eq.kind, "backward", stats)
        needs = ctx.needs_input_grad[2:]
        grads: list[Tensor | None] = [None] * len(weights)
        if any(needs):
            grads = eq.operator.weight_vjp(weights, x, w, needs)
        grad_z = w if ctx.needs_input_grad[1] else None
        return (None, grad_z, *grads)


@dataclass(frozen=True)
class Solution:
    """What a layer's solve returns: the state ``x`` and its forward solve's statistics."""

    x: Tensor
    stats: SolverStats

    @property
    def error_bound(self) -> Tensor | None:
        """Per sample, the a-posteriori bound on ``||x - x*||`` (weighted l_inf; for MON the
        l_2 bound, which bounds l_inf too), or None where the solve has none (MON in training
        mode)."""
        return self.stats.error_bound


def implicit_solve(eq: Equilibrium, z: Tensor, weights: tuple[Tensor, ...]) -> Solution:
    """Solve the equilibrium of ``eq`` for injection ``z``; the state is differentiable in ``z``
    and ``weights``."""
    x, stats = ImplicitSolve.apply(eq, z, *weights)
    return Solution(x, stats)
