"""The input range: the box ``(lo, hi)`` the data lives in (images: ``(0, 1)``), or None for
unbounded data. Certificates and the verifier intersect the eps-ball with it, attacks project onto
it, training's robust losses use it; every one of them refuses inputs that lie outside it
(nothing is clamped to a range the data does not live in). A `nemon.data.Dataset` carries its
range, and the command line takes its default from there.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import InputError

__all__ = ["InputRange", "IMAGES", "check_input_range", "check_inside"]

InputRange = tuple[float, float] | None

#: the range of images scaled to [0, 1] (MNIST, Fashion-MNIST, CIFAR-10 as nemon reads them)
IMAGES = (0.0, 1.0)


def check_input_range(input_range, where: str = "input_range") -> tuple[float, float] | None:
    """``input_range`` as ``(lo, hi)`` floats with ``lo < hi``, both finite, or None."""
    if input_range is None:
        return None
    try:
        lo, hi = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise InputError(
            f"{where} must be (lo, hi) or None for unbounded data, got {input_range!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(
            f"{where} must be finite with lo < hi, got ({lo:g}, {hi:g}); None for unbounded data"
        )
    return lo, hi


def check_inside(
    u: Tensor, input_range, where: str = "input_range", unbounded: str | None = None
) -> tuple[float, float] | None:
    """The checked range, after refusing inputs ``u`` with a value outside it (the message names
    ``where``, and ``unbounded``, by default ``{where}=None``, as the way to unbounded data)."""
    checked = check_input_range(input_range, where)
    if checked is None or u.numel() == 0:
        return checked
    low, high = float(u.amin()), float(u.amax())
    # data normalised in u's dtype lands a few units of its precision beside the exact image
    # of the range ((x - 0.1307) / 0.3081 in float32 is 2 units below that of 0): allowed
    slack = 8 * torch.finfo(u.dtype).eps if u.is_floating_point() else 0.0
    lo = checked[0] - slack * max(1.0, abs(checked[0]))
    hi = checked[1] + slack * max(1.0, abs(checked[1]))
    if low < lo or high > hi:
        raise InputError(
            f"the inputs range from {low:.4g} to {high:.4g}, outside {where}=({checked[0]:g}, "
            f"{checked[1]:g}); pass the range your data lives in, or "
            f"{unbounded or where + '=None'} for unbounded data (standardized features, for one)"
        )
    return checked
