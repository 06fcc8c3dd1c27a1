"""Range checks shared by the library's settings (recipes, solver options) and the command line.

Each raises `InputError` (a ``ValueError``) naming the setting, its allowed range and the value
given. A setting's range lives in its dataclass field's metadata (`nemon.settings.setting`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError

__all__ = [
    "check_choice",
    "check_integer",
    "check_number",
    "Range",
    "TOLERANCE",
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


#: a solve's relative tolerance: above float64's resolution, below 1
TOLERANCE = Range(float, MIN_TOL, 1.0, high_open=True)
