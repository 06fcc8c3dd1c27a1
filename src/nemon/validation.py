"""Range checks shared by the library's settings (recipes, solver options) and the command line.

Each raises ``ValueError`` naming the setting, its allowed range and the value given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError

__all__ = [
    "check_choice",
    "check_integer",
    "check_number",
    "check_setting",
    "RANGES",
    "Range",
    "MAX_ITER",
    "MIN_TOL",
    "MAX_STATES",
    "MAX_THREADS",
]

#: Limits that keep a run finite and its arrays allocatable: a solve stops within MAX_ITER
#: iterations, asks for no tolerance below float64's resolution, and a dense layer's state
#: (its matrix A has MAX_STATES**2 entries, 4 GiB in float32) fits the machine.
MAX_ITER = 1_000_000
MIN_TOL = 1e-15
MAX_STATES = 32_768
MAX_THREADS = 1024  # OpenMP runtimes fail far below the numbers a typo can give


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_integer(name: str, value, low: int, high: int | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= low
    if not ok or (high is not None and value > high):
        rule = f">= {low}" if high is None else f"from {low} to {high}"
        raise InputError(f"{name} must be an integer {rule}, got {value!r}")


def check_number(
    name, value, low=-math.inf, high=math.inf, low_open=False, high_open=False
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        lo = "" if low == -math.inf else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high == math.inf else f"{'<' if high_open else '<='} {high:g}"
        rule = " and ".join(r for r in (lo, hi) if r) or "finite"
        raise InputError(f"{name} must be a finite number {rule}, got {value!r}")


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric setting (``kind``: int or float)."""

    kind: type
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def check(self, name: str, value) -> None:
        if self.kind is int:
            high = None if self.high == math.inf else int(self.high)
            check_integer(name, value, int(self.low), high)
        else:
            check_number(name, value, self.low, self.high, self.low_open, self.high_open)


#: One table of ranges for every numeric setting of a run: `nemon.Recipe`, the command line's
#: ``TrainConfig`` and its options all check against it (list settings: each element).
RANGES: dict[str, Range] = {
    "epochs": Range(int, 1),
    "batch_size": Range(int, 1),
    "cert_eval_limit": Range(int, 1),
    "lr_milestones": Range(int, 1),
    "train_limit": Range(int, 1),
    "test_limit": Range(int, 1),
    "adv_steps": Range(int, 0),
    "warmup_epochs": Range(int, 0),
    "cert_ramp_epochs": Range(int, 0),
    "swa_start": Range(int, 0),
    "seed": Range(int, 0),
    "checkpoint_every": Range(int, 0),
    "hidden": Range(int, 1, MAX_STATES),
    "max_iter": Range(int, 1, MAX_ITER),
    "lr": Range(float, 0.0, low_open=True),
    "lr_decay": Range(float, 0.0, 1.0, low_open=True),
    "grad_clip": Range(float, 0.0),
    "lam": Range(float, 0.0),
    "cert_eps": Range(float, 0.0),
    "cert_eval_eps": Range(float, 0.0),
    "cert_weight": Range(float, 0.0, 1.0),
    "box_shrink": Range(float, 0.0, 1.0, low_open=True),
    "gamma": Range(float, high=1.0, high_open=True),
    "tol": Range(float, MIN_TOL, 1.0, high_open=True),
    "solve_tol": Range(float, MIN_TOL, 1.0, high_open=True),
}


def check_setting(name: str, value) -> None:
    """``value`` (or each element of a list setting) is in ``RANGES[name]``."""
    for v in value if isinstance(value, (list, tuple)) else [value]:
        RANGES[name].check(name, v)
