"""The statistics of the solves run in a block of code, collected from what each solve returns.

A solve writes into nothing (`nemon.solvers.solve` returns its `SolverStats`); a caller that
wants the statistics of solves it does not call itself (those inside ``model(x)`` and
``loss.backward()``) opens a `SolveLog`::

    with SolveLog() as log:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    log.mean_iterations("forward"), log.mean_iterations("backward"), log.unconverged

Each implicit solve reports its statistics to the logs open where its forward ran (the adjoint
solve reports to the same logs, whichever thread autograd runs it on). Logs nest; outside any,
reporting costs one context-variable read.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from .solvers import SolverStats

__all__ = ["SolveLog", "SolveRecord", "open_logs", "report"]

_OPEN: ContextVar[tuple[SolveLog, ...]] = ContextVar("nemon_solve_logs", default=())


@dataclass(frozen=True)
class SolveRecord:
    """One solve: ``kind`` is ``"state"`` (a layer's equilibrium) or ``"embedding"`` (the
    interval bounds' embedding system), ``direction`` ``"forward"`` or ``"backward"`` (its
    adjoint)."""

    kind: str
    direction: str
    stats: SolverStats


class SolveLog:
    """Collects a `SolveRecord` for every implicit solve run while it is open (a context
    manager; see the module docstring)."""

    def __init__(self) -> None:
        self.records: list[SolveRecord] = []
        self._token = None

    def __enter__(self) -> SolveLog:
        self._token = _OPEN.set(_OPEN.get() + (self,))
        return self

    def __exit__(self, *exc) -> None:
        _OPEN.reset(self._token)

    def stats(self, direction: str = "forward", kind: str = "state") -> list[SolverStats]:
        """The statistics of the solves of one direction and kind, in the order they ran."""
        return [r.stats for r in self.records if r.direction == direction and r.kind == kind]

    def mean_iterations(self, direction: str = "forward", kind: str = "state") -> float:
        """Mean iterations of a solve of that direction and kind (0 when none ran)."""
        stats = self.stats(direction, kind)
        return sum(s.iterations for s in stats) / len(stats) if stats else 0.0

    @property
    def unconverged(self) -> int:
        """Solves of any kind that stopped before their tolerance."""
        return sum(not r.stats.converged for r in self.records)


def open_logs() -> tuple[SolveLog, ...]:
    """The logs open here (an implicit solve keeps them for its adjoint)."""
    return _OPEN.get()


def report(logs: tuple[SolveLog, ...], kind: str, direction: str, stats: SolverStats) -> None:
    """Record one solve's statistics in ``logs``."""
    for log in logs:
        log.records.append(SolveRecord(kind, direction, stats))
