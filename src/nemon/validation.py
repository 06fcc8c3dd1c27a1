"""Range checks shared by the library's settings (recipes, solver options) and the command line.

Each raises ``ValueError`` naming the setting, its allowed range and the value given.
"""

from __future__ import annotations

import math

__all__ = ["check_choice", "check_integer", "check_number", "MAX_ITER", "MIN_TOL", "MAX_STATES"]

#: Limits that keep a run finite and its arrays allocatable: a solve stops within MAX_ITER
#: iterations, asks for no tolerance below float64's resolution, and a dense layer's state
#: (its matrix A has MAX_STATES**2 entries, 4 GiB in float32) fits the machine.
MAX_ITER = 1_000_000
MIN_TOL = 1e-15
MAX_STATES = 32_768


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_integer(name: str, value, low: int, high: int | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= low
    if not ok or (high is not None and value > high):
        rule = f">= {low}" if high is None else f"from {low} to {high}"
        raise ValueError(f"{name} must be an integer {rule}, got {value!r}")


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
        raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")
