"""Branch and bound over ReLU phases, each node an LP relaxation solved by HiGHS.

A node fixes some phases ``d_i`` to 0 or 1 (the rest relaxed to ``[0, 1]``). Its LP value orders
the search (lowest first); what closes it is `safe_bound` recomputed from the LP's row
multipliers, never the solver's own value. With every phase fixed the program is exact (the
fixed point is unique), so the search is complete: each leaf is either closed, or its optimum is
an input whose margin is at most the threshold.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from .program import Program, safe_bound

__all__ = ["LPSolver", "Outcome", "minimise", "highspy_or_error"]

_GAP = 1e-9  # relaxation gaps below this are not worth a branch


def highspy_or_error():
    try:
        import highspy
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ImportError(
            "nemon.verify needs HiGHS: pip install 'nemon[verify]' (highspy, scipy)"
        ) from exc
    return highspy


class LPSolver:
    """One HiGHS instance for a program: costs and phase bounds change between solves, and each
    solve starts from the last basis (dual simplex)."""

    def __init__(self, program: Program) -> None:
        highspy = highspy_or_error()
        self.program = program
        with _quiet_stdout():  # HiGHS prints its banner when the first instance is made
            self.h = highspy.Highs()
        self.h.setOptionValue("output_flag", False)
        self.h.setOptionValue("threads", 1)
        self.h.setOptionValue("presolve", "off")  # re-solves from the last basis: 3x faster
        lp = highspy.HighsLp()
        csc = program.M.tocsc()
        lp.num_col_, lp.num_row_ = program.size, program.M.shape[0]
        lp.col_cost_ = np.zeros(program.size)
        lp.col_lower_, lp.col_upper_ = program.col_lo, program.col_hi
        lp.row_lower_ = np.where(np.isfinite(program.row_lo), program.row_lo, -highspy.kHighsInf)
        lp.row_upper_ = np.where(np.isfinite(program.row_hi), program.row_hi, highspy.kHighsInf)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = csc.indptr.astype(np.int32)
        lp.a_matrix_.index_ = csc.indices.astype(np.int32)
        lp.a_matrix_.value_ = csc.data
        self.h.passModel(lp)
        self._all = np.arange(program.size, dtype=np.int32)
        self._phases = program.phases.astype(np.int32)
        self._optimal = highspy.HighsModelStatus.kOptimal
        self._infeasible = highspy.HighsModelStatus.kInfeasible

    def set_cost(self, cost: np.ndarray) -> None:
        self.h.changeColsCost(len(self._all), self._all, cost)

    def set_phases(self, lo: np.ndarray, hi: np.ndarray) -> None:
        if len(self._phases):
            self.h.changeColsBounds(len(self._phases), self._phases, lo, hi)

    def solve(self, deadline: float):
        """``("optimal", value, primal, duals)``, ``("infeasible", ray)``, or ``("other",
        duals)`` (``duals``: None when HiGHS has none). A solve that ends in another status
        (numerical trouble) is repeated once from scratch."""
        for attempt in range(2):
            self._run(deadline)
            status = self.h.getModelStatus()
            if status == self._optimal:
                sol = self.h.getSolution()
                value = self.h.getInfo().objective_function_value
                return "optimal", value, np.asarray(sol.col_value), np.asarray(sol.row_dual)
            if status == self._infeasible:
                _, has_ray, ray = self.h.getDualRay()
                if has_ray:
                    return "infeasible", np.asarray(ray)
            if attempt == 0:
                self.h.clearSolver()
        sol = self.h.getSolution()
        return "other", np.asarray(sol.row_dual) if sol.dual_valid else None

    def duals_within(self, deadline: float, iterations: int) -> np.ndarray | None:
        """The row multipliers after at most ``iterations`` simplex iterations from the last
        basis (None when HiGHS has none): not optimal in general, but any multipliers give
        `safe_bound` a rigorous bound, and a few iterations give most of it."""
        self.h.setOptionValue("simplex_iteration_limit", iterations)
        try:
            self._run(deadline)
            sol = self.h.getSolution()
            return np.asarray(sol.row_dual) if sol.dual_valid else None
        finally:
            self.h.setOptionValue("simplex_iteration_limit", _NO_LIMIT)

    def _run(self, deadline: float) -> None:
        """One HiGHS run from the last basis, stopped at ``deadline`` (``time.monotonic``)."""
        # HiGHS's time limit counts the instance's total run time, not this run's
        left = max(0.01, deadline - time.monotonic())
        self.h.setOptionValue("time_limit", self.h.getRunTime() + left)
        self.h.run()


_NO_LIMIT = 2**31 - 1  # HiGHS's default simplex iteration limit


@contextlib.contextmanager
def _quiet_stdout():
    """File descriptor 1 to /dev/null inside the block (C++ output bypasses sys.stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@dataclass
class Outcome:
    """``verdict``: "certified" (``lower`` > threshold, proven), "falsified" (``point``: the
    input refuting it) or "unknown"; ``lower``: a proven lower bound of the minimum; ``nodes``."""

    verdict: str
    lower: float
    point: np.ndarray | None = None
    nodes: int = 0
    reason: str = ""  # why an unknown is unknown


def minimise(
    solver: LPSolver,
    cost: np.ndarray,
    const: float,
    threshold: float,
    deadline: float,
    refutes,
) -> Outcome:
    """Prove ``min cost . v + const > threshold`` over the program, or find an input (checked by
    ``refutes(point) -> bool``) that refutes it, before ``deadline`` (``time.monotonic``).

    Best first with plunges: the lowest LP value goes first, and from it the search dives into
    the child the LP point leans to while the dive stays open (its sibling waits in the queue),
    so consecutive LPs mostly differ in one phase and start near the last basis. Every node
    whose bound is not above the threshold is split whatever the order."""
    program = solver.program
    solver.set_cost(cost)
    n = len(program.phases)
    order = itertools.count()
    # entries: (the parent's LP value: the order, count, phases, the parent's safe bound)
    heap = [(-math.inf, next(order), np.full(n, -1, np.int8), -math.inf)]
    plunge = None  # the child being dived into
    closed_lower, nodes = math.inf, 0
    while heap or plunge is not None:
        if time.monotonic() > deadline:  # proven: the open nodes' parents' safe bounds
            open_lower = min([e[3] for e in heap] + ([plunge[3]] if plunge else []))
            return Outcome(
                "unknown", min(closed_lower, open_lower), nodes=nodes, reason="time limit"
            )
        if plunge is not None:
            (priority, _, fixed, _), plunge = plunge, None
        else:
            priority, _, fixed, _ = heapq.heappop(heap)
        nodes += 1
        lo, hi = np.where(fixed == 1, 1.0, 0.0), np.where(fixed == 0, 0.0, 1.0)
        solver.set_phases(lo, hi)
        col_lo, col_hi = program.col_lo.copy(), program.col_hi.copy()
        col_lo[program.phases], col_hi[program.phases] = lo, hi
        result = solver.solve(deadline)
        if result[0] == "infeasible":
            if _empty(program, result[1], col_lo, col_hi):
                continue
            result = ("other", None)
        if result[0] == "optimal":
            _, value, primal, duals = result
            priority = value + const
        else:  # no optimum: whatever multipliers there are, and branch on the widest phase
            value, primal, duals = math.inf, None, result[1]
        bound = (
            -math.inf if duals is None else safe_bound(program, cost, const, col_lo, col_hi, duals)
        )
        if bound > threshold:
            closed_lower = min(closed_lower, bound)
            continue
        if value + const < 0 and refutes(primal[program.inputs]):
            return Outcome("falsified", -math.inf, primal[program.inputs], nodes)
        pick = _branching_phase(program, primal, duals, fixed)
        if pick is None:  # a leaf: exact, and not above the threshold (or not solved)
            if primal is None:
                reason = "no LP optimum at a leaf"
            elif value + const >= 0:
                reason = "robust at the exact equilibrium by less than the running charge"
            else:
                reason = "the leaf's minimiser did not refute (rounding)"
            return Outcome("unknown", min(closed_lower, bound), nodes=nodes, reason=reason)
        lean = 1 if primal is None or primal[program.phases[pick]] >= 0.5 else 0
        dive, wait = fixed.copy(), fixed.copy()
        dive[pick], wait[pick] = lean, 1 - lean
        heapq.heappush(heap, (priority, next(order), wait, bound))
        plunge = (priority, next(order), dive, bound)
    return Outcome("certified", closed_lower, nodes=nodes)


def _empty(program: Program, ray: np.ndarray, col_lo, col_hi) -> bool:
    """Whether the Farkas ray proves the node's box empty (either sign of the ray)."""
    zero = np.zeros(program.size)
    return any(safe_bound(program, zero, 0.0, col_lo, col_hi, s * ray) > 0 for s in (1.0, -1.0))


def _branching_phase(program: Program, primal, duals, fixed: np.ndarray) -> int | None:
    """The free phase whose relaxation costs the LP most: the multipliers of its two upper rows
    times the triangle's height ``-l u / (u - l)`` (BaBSR-like, Bunel et al. 2020), among phases
    the LP point violates (``a > ReLU(z)``); the widest triangle when no multiplier says more.
    None when every phase is fixed."""
    free = np.flatnonzero(fixed < 0)
    if not len(free):
        return None
    lo, hi = program.col_lo[program.phase_z[free]], program.col_hi[program.phase_z[free]]
    height = -lo * hi / np.maximum(hi - lo, 1e-300)
    if primal is not None and duals is not None:
        a, z = primal[program.phase_a[free]], primal[program.phase_z[free]]
        violated = a - np.maximum(z, 0.0) > _GAP
        weight = np.abs(duals[program.phase_rows[free]]).sum(1)
        score = np.where(violated, weight * height, 0.0)
        if score.max() > 0:
            return int(free[np.argmax(score)])
    return int(free[np.argmax(height)])
