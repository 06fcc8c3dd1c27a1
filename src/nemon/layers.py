"""Implicit layers ``x* = Phi(A x* + B u + b)``: the shared base and the dense families.

Dense NEMON, MON and IDL are here; the convolutional layers are in `nemon.conv_layers`.

All layers share one interface: ``forward(u) -> x*``, ``weight()`` (effective ``A``),
``measure()`` (the bound that makes the layer well posed), ``lipschitz_terms()`` (what the
bounds (14), (15) need), ``features(x)`` for a readout, and ``solve(u)``: the state with the
forward solve's statistics (a layer keeps none of them: `nemon.SolveLog` collects them).
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .activations import PROX_ACTIVATIONS, Activation, get_activation
from .arguments import RecordsArguments
from .errors import InputError
from .guards import checked
from .implicit import (
    Equilibrium,
    ImplicitAdjoint,
    JacobianFree,
    Solution,
    get_adjoint,
    implicit_solve,
)
from .lipschitz import LipschitzTerms
from .norms import (
    capped_measure,
    mu_2,
    mu_2_upper,
    mu_inf_upper,
    norm_inf_from_input,
    norm_inf_upper,
    round_to,
)
from .operators import ConvOperator, DenseOperator, MONDenseOperator
from .parametrize import (
    IDLConstraint,
    MONConstraint,
    MuInfConstraint,
    check_gamma,
    mu_inf_param,
)
from .solve_log import open_logs, report
from .solvers import DEFAULT_MAX_ITER, DEFAULT_TOL, SOLVERS, Solver, SolverOptions, SolverStats
from .traced import traced_solve
from .validation import check_number

__all__ = [
    "DEFAULT_ERROR_TOL",
    "ImplicitLayer",
    "NEMONDense",
    "MONDense",
    "IDLDense",
    "ExplicitDense",
]


#: In eval mode a solve stops only when every sample's a-posteriori error bound is at most this
#: (the state's weighted l_inf norm): the model as it runs is then within a stated distance of
#: its exact equilibrium for every input, and certificates charge that distance.
DEFAULT_ERROR_TOL = 1e-4

#: solvers that apply the resolvent ``(I + a (I - A))^-1`` of the layer's operator


class ImplicitLayer(RecordsArguments, nn.Module):
    """Shared machinery: input checks, solver options, the implicit solve and its statistics.

    ``error_tol``: in eval mode the forward solve also runs until every sample's a-posteriori
    error bound is at most ``error_tol`` (weighted l_inf; l_2 for MON), so that the outputs of
    the model as it runs are within a stated distance of the exact equilibrium's
    (docs/guarantees.md); training stops on the relative residual ``tol`` alone. None: no
    stated distance (certificates then certify nothing).
    """

    default_solver = "averaged"

    def __init__(
        self,
        activation: str | Activation = "relu",
        solver: str | dict | Solver | None = None,
        tol: float = DEFAULT_TOL,
        max_iter: int = DEFAULT_MAX_ITER,
        backward_solver: str | dict | Solver | None = None,
        backward_tol: float | None = None,
        residual: str = "step",
        check_inputs: bool = True,
        adjoint: str | ImplicitAdjoint | JacobianFree = "implicit",
        error_tol: float | None = DEFAULT_ERROR_TOL,
    ) -> None:
        super().__init__()
        if error_tol is not None:
            check_number("error_tol", error_tol, low=0.0, low_open=True)
        self.error_tol = error_tol
        self.adjoint = get_adjoint(adjoint)
        self.activation = get_activation(activation)
        method = solver or self.default_solver
        self.solver_options = SolverOptions(
            method=method, tol=tol, max_iter=max_iter, residual=residual
        )
        self.backward_options = SolverOptions(
            method=backward_solver or method,
            tol=backward_tol or tol,
            max_iter=max_iter,
            residual=residual,
        )
        self.check_inputs = check_inputs
        self._check_solvers()

    def settings(self) -> dict:
        """The solver settings the layer runs with now, as constructor arguments (model files
        record them; a solver with settings of its own, such as MON's tuned step, as
        ``{"name": ..., **settings}``)."""
        fwd, bwd = self.solver_options, self.backward_options
        return {
            "solver": fwd.method.spec(),
            "tol": fwd.tol,
            "max_iter": fwd.max_iter,
            "backward_solver": bwd.method.spec(),
            "backward_tol": bwd.tol,
            "residual": fwd.residual,
            "check_inputs": self.check_inputs,
            "error_tol": self.error_tol,
        }

    def _register_gamma(self, gamma: float) -> None:
        """``gamma`` travels in the state dict (buffer ``gamma_bound``), so that weights trained
        under one constraint are refused by a layer built with another (`_load_from_state_dict`)."""
        self.register_buffer("gamma_bound", torch.tensor(float(gamma), dtype=torch.float64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "gamma_bound"
        if "gamma_bound" in self._buffers:
            mine = self._buffers["gamma_bound"]
            if key not in state_dict:  # written before gamma travelled with the weights
                state_dict[key] = mine.clone()
            elif not _same_gamma(state_dict[key], self.gamma):
                raise InputError(
                    f"{prefix.rstrip('.') or 'the layer'}: the weights were trained with gamma = "
                    f"{float(state_dict[key]):g}, this {self._name()} has gamma = "
                    f"{self.gamma:g}; build it with gamma={float(state_dict[key]):g}"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    #: the layer's operator applies the resolvent ``(I + a (I - A))^-1`` (MON layers)
    has_resolvent = False

    def _check_solvers(self) -> None:
        """One line at construction for a solver this layer cannot run (it failed at the first
        forward): Peaceman-Rachford needs the resolvent, and a splitting solver's forward
        iteration needs the activation's closed-form prox."""
        for role, options in (
            ("solver", self.solver_options),
            ("backward_solver", self.backward_options),
        ):
            method = options.method
            if method.needs_resolvent and not self.has_resolvent:
                usable = ", ".join(sorted(m for m, s in SOLVERS.items() if not s.needs_resolvent))
                raise InputError(
                    f"{self._name()} cannot use {role}={method.name!r}: it needs the resolvent"
                    f" (I + a (I - A))^-1 that only MON layers have; choose one of {usable}"
                )
        method = self.solver_options.method
        if method.splitting and not self.activation.has_prox:
            raise InputError(
                f"{self._name()} with solver {method.name!r} needs an activation with a closed-form"
                f" prox, one of {', '.join(PROX_ACTIVATIONS)}; got {self.activation.name!r}"
            )

    # -- to be provided by each family -------------------------------------------------------
    operator: DenseOperator | ConvOperator

    def effective_weights(self) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def injection(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def input_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def equilibrium(self, weights: tuple[Tensor, ...]) -> Equilibrium:
        raise NotImplementedError

    def weight_matrix(self) -> Tensor:
        """``A`` as a matrix on the flattened state."""
        raise NotImplementedError

    def weight(self) -> Tensor:
        """``A`` as a matrix, for every layer kind (conv layers materialise it: small images
        only); the operator's own weights are `effective_weights`."""
        return self.weight_matrix()

    # -- shared ------------------------------------------------------------------------------
    @torch.compiler.disable
    def solve(self, u: Tensor) -> Solution:
        """The equilibrium for input ``u`` with its statistics and error bound (differentiable
        in ``u`` and the parameters). Certificates use this: what they charge comes with the
        values, not from the layer's state. Under ``torch.compile`` the solve runs eagerly (an
        iteration whose length depends on the data, with its input checks and statistics): the
        modules around the layer compile, the solve is one clean break in their graph."""
        if self.check_inputs:
            self._check_input(u, finite=not self.injection_reads_every_input)
        z = self.injection(u)
        if self.check_inputs and self.injection_reads_every_input:
            self._check_finite(u, z)
        weights = self.effective_weights()
        return implicit_solve(self.solve_equilibrium(weights, self.training), z, weights)

    def solve_equilibrium(self, weights: tuple[Tensor, ...], training: bool) -> Equilibrium:
        """The equilibrium as this layer solves it: its adjoint, and in eval mode its solves
        stopped on ``error_tol`` too (eager and compiled solves alike)."""
        eq = self.equilibrium(weights)
        eq.adjoint = self.adjoint
        if not training and self.error_tol is not None:
            eq.options = replace(eq.options, error_tol=self.error_tol)
        return eq

    def running_error(self) -> float | None:
        """The distance (weighted l_inf; l_2 for MON) within which the layer's state in eval
        mode lies from the exact equilibrium, for every input whose solve converges (a
        `ConvergenceWarning` otherwise): ``error_tol``, or None without one."""
        return self.error_tol

    def forward(self, u: Tensor) -> Tensor:
        """``x*(u)``. The solve's statistics: `solve` returns them, a `nemon.SolveLog` collects
        them. Under ``torch.compile`` the solve is one custom operator (`nemon.traced`), so that
        the whole model traces (``fullgraph=True``)."""
        if torch.compiler.is_compiling():
            return self._traced_forward(u)
        return self.solve(u).x

    def _traced_forward(self, u: Tensor) -> Tensor:
        """The compiled forward: shapes and dtype checked while tracing, finiteness by an
        operator (`nemon.traced.checked`), the equilibrium solved by one."""
        if self.check_inputs:
            self._check_input(u, finite=False)
            u = checked(u, "finite")
        return traced_solve(self, self.injection(u), self.effective_weights())

    @torch.no_grad()
    def tune_splitting_step(self, u: Tensor, largest: float = 1.0, smallest: float = 1e-4):
        """MON's step search (``tune_alpha`` of Winston and Kolter's code): from ``largest``,
        halve the splitting step while the forward iterations on ``u`` do not grow, keep the last
        step before they did, and use it forward and backward. Returns the step, or None for
        solvers without one to tune (the averaged family has its best step, Theorem 2). When no
        step converges the options are left as they were."""
        if not self.solver_options.method.splitting:
            return None

        def iterations(step: float) -> int:
            with self.solver_settings(
                method=replace(self.solver_options.method, step=step), warn=False
            ):
                return self.solve(u).stats.iterations

        step, count = largest, iterations(largest)
        while step / 2 >= smallest:
            halved = iterations(step / 2)
            if halved > count:
                break
            step, count = step / 2, halved
        if count >= self.solver_options.max_iter:
            return None
        self.set_splitting_step(step)
        return step

    def set_splitting_step(self, step: float | None) -> None:
        """The step of the splitting solvers, forward and backward (None: their default)."""
        self.solver_options = _with_step(self.solver_options, step)
        self.backward_options = _with_step(self.backward_options, step)

    @contextmanager
    def solver_settings(self, **changes):
        """Temporarily change the forward and backward solver options (e.g. ``tol=1e-8``)."""
        saved = self.solver_options, self.backward_options
        self.solver_options = replace(self.solver_options, **changes)
        self.backward_options = replace(self.backward_options, **changes)
        try:
            yield self
        finally:
            self.solver_options, self.backward_options = saved

    #: every injection entry depends on every input entry (a dense ``B``): a NaN or inf in the
    #: input reaches the injection, whose finiteness is the cheaper check (`_check_finite`)
    injection_reads_every_input = False

    def _check_finite(self, u: Tensor, z: Tensor) -> None:
        """``u`` has no NaN or inf: a finite sum of ``z = B u + b`` proves it (NaN and inf
        propagate through the products and the sum); otherwise ``u`` itself is checked (``z``
        may overflow, or the parameters be non-finite, for a finite input)."""
        if not bool(torch.isfinite(z.sum())) and not _all_finite(u):
            raise InputError(f"{type(self).__name__} input contains NaN or inf")

    def _check_input(self, u: Tensor, finite: bool = True) -> None:
        expected = self.input_shape()
        if u.dim() != len(expected) + 1 or tuple(u.shape[1:]) != expected:
            raise InputError(
                f"{type(self).__name__} expects input of shape (batch, {', '.join(map(str, expected))}),"
                f" got {tuple(u.shape)}"
            )
        if not u.is_floating_point():
            raise InputError(f"{self._name()} expects a floating-point input, got {u.dtype}")
        dtype = self.injection_dtype()
        if u.dtype != dtype:
            raise InputError(
                f"{self._name()} has {dtype} parameters but the input is {u.dtype}; "
                f"convert one of them (u.to({dtype}) or model.to({u.dtype}))"
            )
        if finite and not _all_finite(u):
            raise InputError(f"{type(self).__name__} input contains NaN or inf")

    def _name(self) -> str:
        return type(self).__name__.removeprefix("Parametrized")

    def injection_dtype(self) -> torch.dtype:
        """The dtype inputs must have: that of the layer's parameters."""
        return next(self.parameters()).dtype

    def features(self, x: Tensor) -> Tensor:
        """The readout's input: the state itself for dense layers."""
        return x

    def eta(self) -> Tensor | None:
        """Weights of the state norm ``||x||_{inf,[eta]^-1}`` per state (None: all ones)."""
        return None

    def interval_bounds(
        self, u_lo: Tensor, u_hi: Tensor, injection: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        r"""``(x_lo, x_hi, error_bound)``: a box containing ``x*(u)`` for every ``u`` in the box.
        ``injection``: a box known to contain ``B u + b`` for those ``u`` (e.g. linear bounds,
        `nemon.linear_bounds`), intersected with the interval one.

        Layers with \(\mu_\infty(A) < 1\) by construction solve the embedding system (docs/maths.md#intervals); others cannot give a sound box this way.
        """
        raise NotImplementedError(
            f"interval bounds need mu_inf(A) < 1 by construction (NEMON, IDL), not {self._name()}"
        )

    def _splitting_equilibrium(self, terms) -> Equilibrium:
        r"""The equilibrium of a MON layer (\(\mu_2(A) < 1\)). With forward-backward splitting its
        step is half the largest convergent one, ``(1 - mu_2(A)) / ||I - A||_2^2``, from
        ``terms() = (mu_2(A), ||I - A||_2)`` (evaluated only then). No measure: the error bound of
        the weighted l_inf theory does not apply to a mu_2 bound."""
        fwd, bwd = self.solver_options, self.backward_options
        step = None
        if fwd.method.needs_step_size or bwd.method.needs_step_size:
            mu, lip = terms()
            step = (1.0 - mu) / max(lip, 1e-12) ** 2
        margin = None if self.training else functools.cache(self._monotone_margin)
        return Equilibrium(
            self.operator, self.activation, fwd, bwd, splitting_step=step, monotone_margin=margin
        )

    def _monotone_margin(self) -> float:
        """``1 - mu_2(A)`` from the upper bound `measure` in float64 (MON's error bound, in
        eval mode: what certificates and the model as it runs are charged)."""
        with torch.no_grad():
            return 1.0 - float(round_to(self.measure().detach().double(), torch.float64, "up"))

    def _solve_embedding(self, operator, weights, z_both, measure, eta) -> tuple:
        """Solve the embedding system ``[x_lo; x_hi]`` with this layer's solvers and adjoint."""
        fwd, bwd = self.solver_options, self.backward_options
        eq = Equilibrium(
            operator,
            self.activation,
            fwd,
            bwd,
            measure,
            eta,
            adjoint=self.adjoint,
            kind="embedding",
        )
        both = implicit_solve(eq, z_both, weights)
        half = both.x.shape[1] // 2
        return both.x[:, :half], both.x[:, half:], both.error_bound

    @property
    def num_features(self) -> int:
        raise NotImplementedError


def _same_gamma(saved: Tensor, gamma: float) -> bool:
    """``saved`` (a ``gamma_bound`` buffer, in whatever dtype the model was cast to) holds
    ``gamma``: equal once ``gamma`` is rounded to that dtype (half precision rounds 0.95)."""
    value = float(saved)
    return math.isclose(value, gamma, rel_tol=1e-6) or value == float(
        torch.tensor(gamma, dtype=saved.dtype)
    )


def _all_finite(t: Tensor) -> bool:
    """No NaN or inf in ``t``: its extremes are finite (NaN propagates through both), one sync;
    two reductions instead of an elementwise test (4.7x faster on a 300 x 784 batch)."""
    return t.numel() == 0 or bool(torch.isfinite(torch.stack((t.amax(), t.amin()))).all())


def _injection_box(linear: nn.Linear, u_lo: Tensor, u_hi: Tensor, injection) -> tuple:
    """The interval box of ``B u + b``, intersected with ``injection`` when one is given."""
    z_lo, z_hi = _affine_interval(linear, u_lo, u_hi)
    if injection is not None:
        z_lo, z_hi = torch.maximum(z_lo, injection[0]), torch.minimum(z_hi, injection[1])
    return z_lo, z_hi


def _affine_interval(linear: nn.Linear, u_lo: Tensor, u_hi: Tensor) -> tuple[Tensor, Tensor]:
    """``B u + b`` over the box: centre ``B c + b`` and radius ``|B| r`` (two products, the same
    box as the split ``B = B+ + B-``)."""
    centre = linear((u_hi + u_lo) / 2)
    radius = F.linear((u_hi - u_lo) / 2, linear.weight.abs())
    return centre - radius, centre + radius


class _DenseLayer(ImplicitLayer):
    """Dense families: ``A`` is the parametrized ``self.A``, ``B u + b`` an ``nn.Linear``."""

    operator = DenseOperator()
    injection_reads_every_input = True

    def __init__(self, in_features: int, hidden: int, bias: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if in_features < 1 or hidden < 1:
            raise InputError(f"in_features and hidden must be >= 1, got {in_features}, {hidden}")
        self.in_features, self.hidden = in_features, hidden
        self.B = nn.Linear(in_features, hidden, bias=bias)

    def input_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def injection(self, u: Tensor) -> Tensor:
        return self.B(u)

    def weight_matrix(self) -> Tensor:
        """The effective ``A`` (n, n), as stored."""
        return self.A

    def effective_weights(self) -> tuple[Tensor, ...]:
        return (self.A,)

    @property
    def num_features(self) -> int:
        return self.hidden

    def _dense_interval_bounds(self, u_lo: Tensor, u_hi: Tensor, eta: Tensor | None, injection):
        """Embedding system of a dense layer: ``E = [[A_M, A_N], [A_N, A_M]]`` with ``A_M`` the
        Metzler part (diagonal and nonnegative off-diagonal entries) and ``A_N`` the rest; its
        measure in the doubled weighted norm equals that of ``A``."""
        A = self.A
        diag = torch.diag_embed(torch.diagonal(A))
        A_pos, A_neg = (A - diag).clamp(min=0), (A - diag).clamp(max=0)
        A_M = A_pos + diag
        E = torch.cat([torch.cat([A_M, A_neg], 1), torch.cat([A_neg, A_M], 1)], 0)
        z_lo, z_hi = _injection_box(self.B, u_lo, u_hi, injection)
        eta2 = None if eta is None else torch.cat([eta, eta]).detach()
        measure = float(self.measure().detach())  # E holds the entries of A: the same measure
        return self._solve_embedding(
            DenseOperator(), (E,), torch.cat([z_lo, z_hi], 1), measure, eta2
        )

    def _init_uniform(self, n: int) -> Tensor:
        bound = 1.0 / math.sqrt(n)
        return torch.empty(n, n).uniform_(-bound, bound)


class NEMONDense(_DenseLayer):
    r"""NEMON dense layer: \(\mu_{\infty,[\eta]^{-1}}(A) \le \gamma\) for every parameter value,
    eq. (17).

    Args:
        in_features: input dimension ``r``.
        hidden: state dimension ``n``.
        gamma: the bound on the measure, ``gamma < 1``.
        activation: a non-expansive, weakly increasing activation (name or instance).
        learn_eta: learn the weights ``eta = exp(d)`` of the norm.
        eta: fixed weights of the norm instead.
        **kwargs: solver settings of `ImplicitLayer`: ``solver`` is ``diagonal``
            (default: averaged iteration with per-coordinate steps ``1 / (1 - (a_ii)_-)``),
            ``averaged`` (the paper's, at ``alpha*``) or ``anderson``; ``tol``, ``max_iter``...
    """

    default_solver = "diagonal"

    def __init__(
        self,
        in_features: int,
        hidden: int,
        gamma: float = 0.95,
        activation: str | Activation = "relu",
        learn_eta: bool = False,
        eta: Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_features, hidden, activation=activation, **kwargs)
        self.gamma = check_gamma(gamma)
        self._register_gamma(self.gamma)
        if eta is not None and tuple(torch.as_tensor(eta).shape) != (hidden,):
            raise InputError(
                f"eta must have shape ({hidden},), got {tuple(torch.as_tensor(eta).shape)}"
            )
        constraint = MuInfConstraint(self.gamma, eta=eta, learn_eta=learn_eta)
        e = None if eta is None else torch.as_tensor(eta, dtype=torch.get_default_dtype())
        self.A = nn.Parameter(mu_inf_param(self._init_uniform(hidden), self.gamma, e))
        parametrize.register_parametrization(self, "A", constraint)

    def eta(self) -> Tensor | None:
        """Weights of the norm (None means all ones)."""
        c = self.parametrizations.A[0]
        if c.learn_eta:
            return self.parametrizations.A.original1.exp()
        return None if c.log_eta is None else c.log_eta.exp()

    def measure(self) -> Tensor:
        r"""Upper bound of the exact \(\mu_{\infty,[\eta]^{-1}}(A)\): at most ``gamma``, exactly, by (17)."""
        return capped_measure(mu_inf_upper(self.A, self.eta()), self.gamma, self.A.dtype)

    def equilibrium(self, weights: tuple[Tensor, ...]) -> Equilibrium:
        eta = self.eta()
        eta = None if eta is None else eta.detach()
        fwd, bwd = self.solver_options, self.backward_options
        measure = float(
            capped_measure(mu_inf_upper(weights[0].detach(), eta), self.gamma, torch.float64)
        )
        return Equilibrium(self.operator, self.activation, fwd, bwd, measure, eta)

    def interval_bounds(self, u_lo: Tensor, u_hi: Tensor, injection=None):
        return self._dense_interval_bounds(u_lo, u_hi, self.eta(), injection)

    def lipschitz_terms(self) -> LipschitzTerms:
        eta = self.eta()
        return LipschitzTerms(
            norm="inf",
            input_norm=norm_inf_from_input(self.B.weight, eta),
            denominator=1 - self.measure().clamp(min=0),
            feature_eta=eta,
        )


class IDLDense(_DenseLayer):
    r"""Implicit deep learning layer (El Ghaoui et al.): \(\|A\|_\infty \le \gamma\), Picard
    iteration."""

    default_solver = "picard"

    def __init__(self, in_features: int, hidden: int, gamma: float = 0.95, activation="relu", **kw):
        super().__init__(in_features, hidden, activation=activation, **kw)
        self.gamma = check_gamma(gamma, allow_negative=False)
        self._register_gamma(self.gamma)
        self.A = nn.Parameter(torch.zeros(hidden, hidden))
        parametrize.register_parametrization(self, "A", IDLConstraint(self.gamma))
        with torch.no_grad():  # a free T (not one on the kink ||T||_inf = gamma)
            self.parametrizations.A.original.copy_(self._init_uniform(hidden))

    def measure(self) -> Tensor:
        r"""Upper bound of \(\|A\|_\infty\) (IDL's constraint; ``lambda_pf(|A|) <= ||A||_inf``)."""
        return capped_measure(norm_inf_upper(self.A), self.gamma, self.A.dtype)

    def equilibrium(self, weights: tuple[Tensor, ...]) -> Equilibrium:
        fwd, bwd = self.solver_options, self.backward_options
        # mu_inf(A) <= ||A||_inf < 1: the NEMON error bound applies to IDL's iterates too.
        A = weights[0].detach()
        measure = float(capped_measure(mu_inf_upper(A), self.gamma, torch.float64))
        norm = float(capped_measure(norm_inf_upper(A), self.gamma, torch.float64))
        return Equilibrium(self.operator, self.activation, fwd, bwd, measure, lipschitz=norm)

    def interval_bounds(self, u_lo: Tensor, u_hi: Tensor, injection=None):
        return self._dense_interval_bounds(u_lo, u_hi, None, injection)

    def lipschitz_terms(self) -> LipschitzTerms:
        return LipschitzTerms(
            norm="inf",
            input_norm=norm_inf_from_input(self.B.weight),
            denominator=1 - self.measure(),
            feature_eta=None,
        )


class ExplicitDense(_DenseLayer):
    r"""\(x = \mathrm{relu}(B u + b)\): the explicit layer of the same width, for ablations
    (\(A = 0\)).

    Same interface as the implicit layers (its "solve" is one evaluation), so an architecture can
    swap its implicit layer for this one and keep training, bounds and certificates unchanged.
    """

    def __init__(self, in_features: int, hidden: int, gamma: float = 0.0, activation="relu", **kw):
        super().__init__(in_features, hidden, activation=activation, **kw)
        self.gamma = 0.0
        self.register_buffer("A", torch.zeros(hidden, hidden))

    @torch.compiler.disable
    def solve(self, u: Tensor) -> Solution:
        """``relu(B u + b)``, exact: an error bound of 0 (eager under ``torch.compile``, as
        every layer's solve)."""
        if self.check_inputs:
            self._check_input(u, finite=False)
        z = self.B(u)
        if self.check_inputs:
            self._check_finite(u, z)
        x = self.activation(z)
        exact = torch.zeros(len(u), dtype=x.dtype, device=x.device)
        stats = SolverStats(1, 0.0, True, error_bound=exact, method="explicit")
        report(open_logs(), "state", "forward", stats)
        return Solution(x, stats)

    def _traced_forward(self, u: Tensor) -> Tensor:
        """Under ``torch.compile``: ``relu(B u + b)``, nothing to solve."""
        if self.check_inputs:
            self._check_input(u, finite=False)
            u = checked(u, "finite")
        return self.activation(self.B(u))

    def running_error(self) -> float:
        """0: the explicit layer is evaluated exactly."""
        return 0.0

    def measure(self) -> Tensor:
        return torch.zeros((), dtype=self.B.weight.dtype, device=self.B.weight.device)

    def interval_bounds(self, u_lo: Tensor, u_hi: Tensor, injection=None):
        z_lo, z_hi = _injection_box(self.B, u_lo, u_hi, injection)
        zero = torch.zeros(len(u_lo), dtype=z_lo.dtype, device=z_lo.device)
        return self.activation(z_lo), self.activation(z_hi), zero

    def lipschitz_terms(self) -> LipschitzTerms:
        one = torch.ones((), dtype=self.B.weight.dtype, device=self.B.weight.device)
        return LipschitzTerms(
            norm="inf", input_norm=norm_inf_from_input(self.B.weight), denominator=one
        )


class FullPrecision:
    """Mixin of the MON layers: their parameters must be float32 or float64, since the resolvent
    and the splitting step use ``torch.linalg`` (``inv``, ``eigh``; the conv layer also the FFT),
    which has no float16 or bfloat16 kernels. Such parameters are refused in one line when the
    layer is built or converted (``.half()``, ``.to(torch.bfloat16)``), before anything changes,
    instead of at the first forward."""

    FULL_PRECISION = (torch.float32, torch.float64)
    precision_reason = "torch.linalg.inv and eigh"

    def _check_precision(self, dtype: torch.dtype) -> None:
        if dtype not in self.FULL_PRECISION:
            raise InputError(
                f"{self._name()} runs in float32 or float64 only, not {dtype}: its splitting"
                f" solvers use {self.precision_reason}, which have no half-precision kernels"
            )

    def _apply(self, fn, recurse=True):
        """Every conversion (``.to``, ``.half()``, ``.cuda()``...): the dtype it would give the
        parameters is read from an empty tensor first."""
        p = next(self.parameters(), None)
        if p is not None and p.is_floating_point():
            probe = fn(torch.empty(0, dtype=p.dtype, device=p.device))
            if isinstance(probe, Tensor) and probe.is_floating_point():
                self._check_precision(probe.dtype)
        return super()._apply(fn, recurse)


class MONDense(FullPrecision, _DenseLayer):
    r"""Monotone operator layer (Winston and Kolter): \(A = \gamma I - W^\top W - Z + Z^\top\).

    \(\mu_2(A) \le \gamma\). Solvers: ``peaceman_rachford`` (default) or ``forward_backward``, the
    same splitting for the adjoint. Activations need a closed-form scaled prox (ReLU, leaky ReLU);
    parameters are float32 or float64 (`FullPrecision`).
    """

    default_solver = "peaceman_rachford"
    operator = MONDenseOperator()
    has_resolvent = True

    def __init__(self, in_features: int, hidden: int, gamma: float = 0.95, activation="relu", **kw):
        super().__init__(in_features, hidden, activation=activation, **kw)
        self._check_precision(self.B.weight.dtype)
        self.gamma = check_gamma(gamma)
        self._register_gamma(self.gamma)
        self.A = nn.Parameter(torch.zeros(hidden, hidden))
        parametrize.register_parametrization(self, "A", MONConstraint(self.gamma))
        with torch.no_grad():
            bound = 1.0 / math.sqrt(hidden)
            self.parametrizations.A.original0.uniform_(-bound, bound)
            self.parametrizations.A.original1.uniform_(-bound, bound)

    def measure(self) -> Tensor:
        r"""Upper bound of \(\mu_2(A)\) (at most ``gamma`` by construction)."""
        return round_to(mu_2_upper(self.A), self.A.dtype, "up")

    def equilibrium(self, weights: tuple[Tensor, ...]) -> Equilibrium:
        A = weights[0].detach()

        def terms() -> tuple[float, float]:
            eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
            return float(mu_2(A)), float(torch.linalg.matrix_norm(eye - A, ord=2))

        return self._splitting_equilibrium(terms)

    def lipschitz_terms(self) -> LipschitzTerms:
        """l_2 bound of Pabbaraju et al.: ``||B||_2 / (1 - mu_2(A))``, times ``sqrt(r)`` for l_inf."""
        return LipschitzTerms(
            norm="l2",
            input_norm=torch.linalg.matrix_norm(self.B.weight, ord=2),
            denominator=1 - self.measure(),
            input_dim_factor=math.sqrt(self.in_features),
        )


def _with_step(options: SolverOptions, step: float | None) -> SolverOptions:
    """``options`` with a splitting solver's step set (other solvers have no such step)."""
    if not options.method.splitting:
        return options
    return replace(options, method=replace(options.method, step=step))
