"""Boxes of every block's pre-activation and output for inputs in a box (one input at a time).

Explicit blocks: interval arithmetic, then, for the neurons it leaves unstable, linear (CROWN)
bounds carried back to the input or to the last implicit block's box, through the earlier
blocks' relaxations on their final boxes. Implicit blocks: the injection ``W a + b`` by the same
linear bounds, the state by the layer's embedding system widened by its solver's a-posteriori
error bound (`nemon.explicit.implicit_box`), and the pre-activation ``A x + W a + b`` by interval
arithmetic on both. Every bound is computed in float64 and widened by ``2^-30`` times the sum of
the magnitudes that formed it (float64's rounding of such sums is below ``n 2^-53`` of that sum,
Higham Thm 3.1, for fewer than ``2^20`` terms): the boxes are sound for the exact model. A max
pool's exact maps of entries -1, 0, 1 round only in their sums, so a value they copy keeps its
box, and a sum of zeros is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ..explicit import implicit_box
from .network import Affine, Block, Network

__all__ = ["Box", "BlockBounds", "network_bounds", "refresh_after", "tighten", "WIDEN"]

WIDEN = 2.0**-30
_TINY = 2.0**-1000
_ROWS = 512  # rows carried back at once


@dataclass
class Box:
    lo: np.ndarray
    hi: np.ndarray


@dataclass
class BlockBounds:
    """A block's pre-activation box ``pre`` and output box ``out`` (``out`` within ReLU(pre))."""

    pre: Box
    out: Box

    @property
    def unstable(self) -> np.ndarray:
        return np.flatnonzero((self.pre.lo < 0) & (self.pre.hi > 0))


def network_bounds(net: Network, lo: np.ndarray, hi: np.ndarray) -> list[BlockBounds]:
    """Bounds of every block of ``net`` for flattened inputs in ``[lo, hi]``."""
    bounds: list[BlockBounds] = []
    for k, block in enumerate(net.blocks):
        if block.A is None:
            pre = _explicit_pre(net, bounds, k, lo, hi)
            out = Box(np.maximum(pre.lo, 0.0), np.maximum(pre.hi, 0.0))
        else:
            pre, out = _implicit_bounds(net, bounds, k, lo, hi)
        bounds.append(BlockBounds(pre, out))
    return bounds


def refresh_after(net: Network, bounds: list[BlockBounds], k: int, lo, hi) -> None:
    """Recompute the boxes of the blocks after ``k`` from the (tightened) earlier ones, each
    intersected with the box it had."""
    for j in range(k + 1, len(net.blocks)):
        if net.blocks[j].A is None:
            pre = _explicit_pre(net, bounds, j, lo, hi)
            tighten(bounds[j], pre.lo, pre.hi)
        else:
            pre, out = _implicit_bounds(net, bounds, j, lo, hi)
            tighten(bounds[j], pre.lo, pre.hi)
            box = bounds[j].out
            box.lo, box.hi = np.maximum(box.lo, out.lo), np.minimum(box.hi, out.hi)


def tighten(bounds: BlockBounds, k_lo: np.ndarray, k_hi: np.ndarray) -> None:
    """Intersect a block's pre-activation box with a sound one, and its output box with ReLU."""
    pre = bounds.pre
    pre.lo, pre.hi = np.maximum(pre.lo, k_lo), np.minimum(pre.hi, k_hi)
    bounds.out.lo = np.maximum(bounds.out.lo, np.maximum(pre.lo, 0.0))
    bounds.out.hi = np.minimum(bounds.out.hi, np.maximum(pre.hi, 0.0))


def _input_box(bounds: list[BlockBounds], k: int, lo, hi) -> Box:
    return Box(lo, hi) if k == 0 else bounds[k - 1].out


def _reach(box: Box) -> np.ndarray:
    return np.maximum(np.abs(box.lo), np.abs(box.hi))


def _interval(f: Affine, box: Box) -> Box:
    """The box of ``W x + b`` for ``x`` in ``box``, widened by ``WIDEN`` times the magnitudes
    that formed it (``f``'s, which cover the rounding of a composed ``W``)."""
    if f.exact:
        return _exact_interval(f, box)
    centre, radius = (box.hi + box.lo) / 2, (box.hi - box.lo) / 2
    c, r = f.W @ centre + f.b, abs(f.W) @ radius
    mag = f.Wabs @ _reach(box) + f.babs
    slack = WIDEN * (mag + np.abs(c) + r) + _TINY
    return Box(c - r - slack, c + r + slack)


def _exact_interval(f: Affine, box: Box) -> Box:
    """The box of ``W x`` for an exact map of entries -1, 0, 1 (`Affine.signs`): its ends are
    sums of ends of ``box``, widened by ``WIDEN`` times the sum of their magnitudes (the only
    rounding is the sums'), so that a row of one term, or of terms that are all 0, keeps its
    ends exactly (a max pool's ``ReLU(t)`` and ``ReLU(-t)`` of a ReLU's output are stable)."""
    up, down = f.W.maximum(0), (-f.W).maximum(0)  # W = up - down, entries 0 and 1
    lo = up @ box.lo - down @ box.hi
    hi = up @ box.hi - down @ box.lo
    lo_mag = up @ np.abs(box.lo) + down @ np.abs(box.hi)
    hi_mag = up @ np.abs(box.hi) + down @ np.abs(box.lo)
    widen = lambda mag: WIDEN * mag + np.where(mag > 0, _TINY, 0.0)  # noqa: E731
    return Box(lo - widen(lo_mag), hi + widen(hi_mag))


def _explicit_pre(net: Network, bounds, k: int, lo, hi) -> Box:
    block = net.blocks[k]
    box = _interval(block.map, _input_box(bounds, k, lo, hi))
    rows = np.flatnonzero((box.lo < 0) & (box.hi > 0))
    if len(rows) and k > 0:
        lin_lo, lin_hi = _linear(net, bounds, k, rows, lo, hi)
        box.lo[rows] = np.maximum(box.lo[rows], lin_lo)
        box.hi[rows] = np.minimum(box.hi[rows], lin_hi)
    return box


def _implicit_bounds(net: Network, bounds, k: int, lo, hi) -> tuple[Box, Box]:
    block = net.blocks[k]
    before = _input_box(bounds, k, lo, hi)
    injection = _interval(block.map, before)
    if k > 0:
        lin_lo, lin_hi = _linear(net, bounds, k, np.arange(block.size), lo, hi)
        injection = Box(np.maximum(injection.lo, lin_lo), np.minimum(injection.hi, lin_hi))
    state = _state_box(block, before, injection)
    pre = _interval(
        Affine.read(sp.hstack([block.A, sp.identity(block.size)]).tocsr(), np.zeros(block.size)),
        Box(np.concatenate([state.lo, injection.lo]), np.concatenate([state.hi, injection.hi])),
    )
    out = Box(
        np.maximum(state.lo, np.maximum(pre.lo, 0.0)), np.minimum(state.hi, np.maximum(pre.hi, 0.0))
    )
    return pre, out


def _state_box(block: Block, before: Box, injection: Box) -> Box:
    """The layer's embedding box for its input box and the injection box (sound, error charged)."""
    layer = block.layer
    if block.prefix is None:
        v = before
    else:
        v = _interval(block.prefix, before)
    shape = layer.input_shape()
    as_tensor = lambda a, s: torch.from_numpy(np.ascontiguousarray(a)).reshape(1, *s)  # noqa: E731
    state_shape = layer.state_shape() if hasattr(layer, "state_shape") else (block.size,)
    with torch.no_grad():
        x_lo, x_hi = implicit_box(
            layer,
            as_tensor(v.lo, shape),
            as_tensor(v.hi, shape),
            (as_tensor(injection.lo, state_shape), as_tensor(injection.hi, state_shape)),
        )
    x_lo, x_hi = x_lo.reshape(-1).numpy(), x_hi.reshape(-1).numpy()
    slack = WIDEN * np.maximum(np.abs(x_lo), np.abs(x_hi)) + _TINY
    return Box(np.maximum(x_lo - slack, 0.0), x_hi + slack)


def _linear(net: Network, bounds, k: int, rows: np.ndarray, lo, hi):
    """Lower and upper linear bounds of rows ``rows`` of block ``k``'s ``W a_{k-1} + b``,
    carried back through the explicit blocks before ``k`` to the input or to the last implicit
    block's output box."""
    f = net.blocks[k].map
    out_lo, out_hi = np.empty(len(rows)), np.empty(len(rows))
    for start in range(0, len(rows), _ROWS):
        part = rows[start : start + _ROWS]
        W = f.W[part].toarray()
        lam = np.concatenate([W, -W])
        offset = np.concatenate([f.b[part], -f.b[part]])
        # the rounding of a composed W and b: relative to their magnitudes
        wabs = f.Wabs[part] @ _reach(_input_box(bounds, k, lo, hi)) + f.babs[part]
        bound = _backward(net, bounds, k, lam, offset, np.concatenate([wabs, wabs]), lo, hi)
        half = len(part)
        out_lo[start : start + half], out_hi[start : start + half] = bound[:half], -bound[half:]
    return out_lo, out_hi


def _backward(net: Network, bounds, k: int, lam, offset, mag, lo, hi):
    """Lower bounds of ``lam . a_{k-1} + offset`` (rows of ``lam``), lowered by ``WIDEN``
    times the magnitudes of everything that formed them (``mag``: those of ``lam`` and
    ``offset`` as given)."""
    mag = mag + np.abs(offset)
    j = k - 1
    while j >= 0 and net.blocks[j].A is None:
        pre = bounds[j].pre
        low, up, up_icpt = _relaxation(pre.lo, pre.hi)
        pos, neg = np.maximum(lam, 0.0), np.minimum(lam, 0.0)
        lam_z = pos * low + neg * up
        offset = offset + neg @ up_icpt
        f = net.blocks[j].map
        offset = offset + lam_z @ f.b
        abs_z = np.abs(lam_z)
        reach = _reach(_input_box(bounds, j, lo, hi))
        mag = mag + np.abs(neg) @ np.abs(up_icpt) + abs_z @ f.babs
        mag = mag + np.asarray((f.Wabs.T @ abs_z.T).T) @ reach  # the rounding of W^T lam
        lam = np.asarray((f.W.T @ lam_z.T).T)
        j -= 1
    box = Box(lo, hi) if j < 0 else bounds[j].out
    pos, neg = np.maximum(lam, 0.0), np.minimum(lam, 0.0)
    bound = pos @ box.lo + neg @ box.hi + offset
    mag = mag + np.abs(lam) @ _reach(box)
    return bound - (WIDEN * (mag + np.abs(bound)) + _TINY)


def _relaxation(lo: np.ndarray, hi: np.ndarray):
    """ReLU's linear bounds on ``[lo, hi]``: lower slope, upper slope and upper intercept
    (CROWN: the lower slope is 1 or 0, whichever is nearer the chord)."""
    active, unstable = lo >= 0, (lo < 0) & (hi > 0)
    width = np.where(unstable, hi - lo, 1.0)
    up = np.where(unstable, hi / width, active.astype(float))
    up_icpt = np.where(unstable, -up * lo, 0.0)
    # the chord as computed may pass a rounding below ReLU at the ends: lift it past that
    up_icpt = up_icpt + np.where(unstable, WIDEN * (up * np.maximum(-lo, hi) + up_icpt), 0.0)
    low = np.where(unstable, (hi > -lo).astype(float), active.astype(float))
    return low, up, up_icpt
