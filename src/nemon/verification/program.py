"""The verification program of one input: every unstable ReLU with its phase as a 0-1 variable.

Variables (all boxed): the input in the ball; for each unstable neuron its pre-activation ``z``,
output ``a`` and phase ``d`` in ``[0, 1]``; each implicit state that is not inactive. A stable
explicit neuron is no variable: active, it is its pre-activation, an affine expression in the
variables (substituted into the next block); inactive, it is 0. Rows
(docs/maths.md#verification):

    unstable neuron   z_i - (W a_prev)_i [- (A x)_i] = b_i,
                      a_i >= z_i,  a_i <= z_i - l_i (1 - d_i),  a_i <= u_i d_i   (a_i >= 0: box)
    active state      x_i - (W a_prev)_i - (A x)_i = b_i

each equality as a range ``b_i +- tau_i`` that covers the rounding of its coefficients (products
of matrices in float64). With ``d`` integral the rows state ``a = ReLU(z)`` exactly, so (the
fixed point being unique) the program's feasible inputs and logits are the model's; with ``d``
relaxed it is the triangle relaxation. `safe_bound` turns any row multipliers into a rigorous
lower bound of the program (Neumaier and Shcherbina, 2004), so no certificate rests on the LP
solver's tolerances.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .bounds import BlockBounds
from .network import Network

__all__ = ["Program", "safe_bound", "build_program"]

_U = 2.0**-53  # float64 unit roundoff
_ROW_TOL = 2.0**-36
_TINY = 2.0**-1000


@dataclass
class Program:
    """``min cost . v + const`` over ``row_lo <= M v <= row_hi``, ``col_lo <= v <= col_hi``."""

    M: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    col_lo: np.ndarray
    col_hi: np.ndarray
    inputs: np.ndarray  # columns of the input
    phases: np.ndarray  # columns of the phases d
    phase_z: np.ndarray  # each phase's pre-activation column
    phase_a: np.ndarray  # each phase's output column
    phase_block: list = field(default_factory=list)  # (member, block, neuron) of each phase
    outputs: list = field(default_factory=list)  # per member: the last block's expression
    phase_rows: np.ndarray | None = None  # each phase's two upper rows (a <= z - l(1-d), a <= u d)

    @property
    def size(self) -> int:
        return len(self.col_lo)

    @functools.cached_property
    def transpose(self) -> tuple[sp.csr_matrix, sp.csr_matrix, int]:
        """``(M^T, |M|^T, the most non-zeros in a column)``, for `safe_bound`."""
        MT = self.M.T.tocsr()
        return MT, abs(MT), int(np.diff(MT.indptr).max(initial=0))


def build_program(nets: list[Network], bounds: list[list[BlockBounds]], lo, hi) -> Program:
    """The program of one input box ``[lo, hi]`` for the members ``nets`` (one shared input)."""
    cols = _Columns(lo, hi)
    plan = [
        [_allocate(cols, block, bb) for block, bb in zip(net.blocks, nb)]
        for net, nb in zip(nets, bounds)
    ]
    rows = _Rows()
    phases, phase_z, phase_a, where, outputs, phase_rows = [], [], [], [], [], []
    n = cols.count
    for m, (net, net_bounds) in enumerate(zip(nets, bounds)):
        expr = _Expression.unit(cols.inputs, n)  # a_0 = u
        for k, (block, bb, alloc) in enumerate(zip(net.blocks, net_bounds, plan[m])):
            expr = _block_rows(block, bb, alloc, expr, rows, n)
            un = alloc["unstable"]
            phases.append(alloc["d"]), phase_z.append(alloc["z"]), phase_a.append(alloc["a"][un])
            phase_rows.append(alloc.get("rows", np.zeros((0, 2), np.int64)))
            where.extend((m, k, int(i)) for i in un)
        outputs.append(expr)
    M, row_lo, row_hi, magnitude = rows.finish(n)
    col_lo, col_hi = cols.bounds()
    tau = _row_tolerance(magnitude, row_lo, row_hi, col_lo, col_hi)
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return Program(
        M,
        row_lo - tau,
        row_hi + tau,
        col_lo,
        col_hi,
        cols.inputs,
        cat(phases),
        cat(phase_z),
        cat(phase_a),
        where,
        outputs,
        np.concatenate(phase_rows).astype(np.int64) if phase_rows else np.zeros((0, 2), np.int64),
    )


class _Columns:
    """The program's columns with their boxes, allocated block by block."""

    def __init__(self, lo, hi) -> None:
        self.lo, self.hi = [np.asarray(lo, float)], [np.asarray(hi, float)]
        self.count = len(lo)
        self.inputs = np.arange(self.count)

    def new(self, lo, hi) -> np.ndarray:
        self.lo.append(np.asarray(lo, float))
        self.hi.append(np.asarray(hi, float))
        idx = np.arange(self.count, self.count + len(lo))
        self.count += len(lo)
        return idx

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.lo), np.concatenate(self.hi)


def _allocate(cols: _Columns, block, bb: BlockBounds) -> dict:
    """Columns of one block: ``a`` (index per neuron, -1 where it is no variable), and ``z``,
    ``d`` of its unstable neurons."""
    l, u = bb.pre.lo, bb.pre.hi
    inactive, active = u <= 0, l >= 0
    unstable = np.flatnonzero(~inactive & ~active)
    variable = ~inactive if block.A is not None else ~inactive & ~active
    a = np.full(block.size, -1, np.int64)
    a[variable] = cols.new(bb.out.lo[variable], bb.out.hi[variable])
    z = cols.new(l[unstable], u[unstable])
    d = cols.new(np.zeros(len(unstable)), np.ones(len(unstable)))
    return dict(a=a, z=z, d=d, unstable=unstable, active=np.flatnonzero(active))


@dataclass
class _Expression:
    """Affine expressions ``E v + e`` in the program's columns, with ``|E|``-magnitudes
    ``(Eabs, eabs)`` bounding what rounding formed them."""

    E: sp.csr_matrix
    e: np.ndarray
    Eabs: sp.csr_matrix
    eabs: np.ndarray

    @staticmethod
    def unit(columns: np.ndarray, n: int) -> _Expression:
        E = sp.csr_matrix(
            (np.ones(len(columns)), (np.arange(len(columns)), columns)), shape=(len(columns), n)
        )
        zero = np.zeros(len(columns))
        return _Expression(E, zero, E, zero)

    def apply(self, f) -> _Expression:
        """``f`` (a `nemon.verification.network.Affine`) applied, its magnitudes carried."""
        return _Expression(
            (f.W @ self.E).tocsr(),
            f.W @ self.e + f.b,
            (f.Wabs @ self.Eabs).tocsr(),
            f.Wabs @ self.eabs + f.babs,
        )


class _Rows:
    """Row blocks with their ranges and magnitudes ``(|M|, |e|)``."""

    def __init__(self) -> None:
        self.blocks, self.lo, self.hi, self.mags, self.offsets = [], [], [], [], []
        self.count = 0

    def add(self, M, lo, hi, magnitude) -> None:
        self.blocks.append(sp.csr_matrix(M))
        self.lo.append(np.asarray(lo, float))
        self.hi.append(np.asarray(hi, float))
        self.mags.append(sp.csr_matrix(magnitude[0]))
        self.offsets.append(np.asarray(magnitude[1], float))
        first = self.count
        self.count += self.blocks[-1].shape[0]
        return np.arange(first, self.count)

    def finish(self, n: int):
        if not self.blocks:
            empty = sp.csr_matrix((0, n))
            return empty, np.zeros(0), np.zeros(0), (empty, np.zeros(0))
        M = sp.vstack(self.blocks).tocsr()
        M.sum_duplicates()
        mag = (sp.vstack(self.mags).tocsr(), np.concatenate(self.offsets))
        return M, np.concatenate(self.lo), np.concatenate(self.hi), mag


def _block_rows(block, bb: BlockBounds, alloc: dict, prev: _Expression, rows: _Rows, n: int):
    """Append one block's rows; returns the expression of its output."""
    pre = prev.apply(block.map)
    a, z, d, un = alloc["a"], alloc["z"], alloc["d"], alloc["unstable"]
    if block.A is not None:  # the state's own feedback: pre += A x over the state's columns
        states = np.flatnonzero(a >= 0)
        X = sp.csr_matrix((np.ones(len(states)), (states, a[states])), shape=(block.size, n))
        AX, absAX = (block.A @ X).tocsr(), (abs(block.A) @ X).tocsr()
        pre = _Expression(pre.E + AX, pre.e, pre.Eabs + absAX, pre.eabs)
        target = a.copy()
        target[un] = z
        eq = np.flatnonzero(a >= 0)  # every state that is not inactive: a row
    else:
        target = np.full(block.size, -1, np.int64)
        target[un] = z
        eq = un
    if len(eq):
        unit = sp.csr_matrix(
            (np.ones(len(eq)), (np.arange(len(eq)), target[eq])), shape=(len(eq), n)
        )
        rhs = pre.e[eq]
        rows.add(unit - pre.E[eq], rhs, rhs, (unit + pre.Eabs[eq], pre.eabs[eq]))
    if len(un):
        l, u = bb.pre.lo[un], bb.pre.hi[un]
        k = len(un)
        r = np.arange(k)
        ai, zi, di = a[un], z, d
        one = np.ones(k)
        M1 = sp.csr_matrix((np.r_[one, -one], (np.r_[r, r], np.r_[ai, zi])), shape=(k, n))
        M2 = sp.csr_matrix(
            (np.r_[one, -one, -l], (np.r_[r, r, r], np.r_[ai, zi, di])), shape=(k, n)
        )
        M3 = sp.csr_matrix((np.r_[one, -u], (np.r_[r, r], np.r_[ai, di])), shape=(k, n))
        inf = np.full(k, math.inf)
        rows.add(M1, np.zeros(k), inf, (abs(M1), np.zeros(k)))
        upper = rows.add(M2, -inf, -l, (abs(M2), np.abs(l)))
        active = rows.add(M3, -inf, np.zeros(k), (abs(M3), np.zeros(k)))
        alloc["rows"] = np.stack([upper, active], 1)
    # the output: variables where there are some, the pre-activation where active, else 0
    keep = np.flatnonzero(a >= 0)
    unit = sp.csr_matrix((np.ones(len(keep)), (keep, a[keep])), shape=(block.size, n))
    if block.A is None and len(alloc["active"]):
        act = alloc["active"]
        S = sp.csr_matrix((np.ones(len(act)), (act, act)), shape=(block.size, block.size))
        E, Eabs = unit + S @ pre.E, unit + S @ pre.Eabs
        mask = np.zeros(block.size)
        mask[act] = 1.0
        return _Expression(E.tocsr(), pre.e * mask, Eabs.tocsr(), pre.eabs * mask)
    zero = np.zeros(block.size)
    return _Expression(unit, zero, unit, zero)


def _row_tolerance(magnitude, row_lo, row_hi, col_lo, col_hi) -> np.ndarray:
    """Per row, a bound far above the rounding of its coefficients and right side (products of
    matrices in float64): ``2^-36`` times the magnitudes that formed them."""
    Mabs, eabs = magnitude
    reach = np.maximum(np.abs(col_lo), np.abs(col_hi))
    rhs = np.where(np.isfinite(row_lo), np.abs(row_lo), 0.0)
    rhs = np.maximum(rhs, np.where(np.isfinite(row_hi), np.abs(row_hi), 0.0))
    return _ROW_TOL * (Mabs @ reach + eabs + rhs) + _TINY


def safe_bound(
    program: Program, cost: np.ndarray, const: float, col_lo, col_hi, y: np.ndarray
) -> float:
    """A rigorous lower bound of ``min cost . v + const`` over the program with column bounds
    ``[col_lo, col_hi]``, from any row multipliers ``y`` (Neumaier and Shcherbina, 2004):

        cost . v = y . M v + r . v >= sum_i y_i (row_lo_i if y_i > 0 else row_hi_i)
                                       + sum_j min(r_j col_lo_j, r_j col_hi_j),  r = cost - M^T y,

    with ``r`` enclosed by its float64 rounding bound and the sum lowered by its own (Higham,
    Thm 3.1 and 3.5). ``y`` of the wrong sign on an infinite row end is set to 0. A positive
    value with ``cost = 0`` proves the box empty (``y``: a Farkas ray). Returns -inf when nothing
    can be said (non-finite data)."""
    y = np.where((y > 0) & ~np.isfinite(program.row_lo), 0.0, y)
    y = np.where((y < 0) & ~np.isfinite(program.row_hi), 0.0, y)
    if not np.all(np.isfinite(y)):
        return -math.inf
    MT, absMT, per_col = program.transpose
    r = cost - MT @ y
    r_err = _gamma(per_col + 2) * 2 * (np.abs(cost) + absMT @ np.abs(y)) + _TINY
    r_lo, r_hi = r - r_err, r + r_err
    corners = np.stack([r_lo * col_lo, r_lo * col_hi, r_hi * col_lo, r_hi * col_hi])
    col_terms = corners.min(0)
    row_terms = np.zeros(len(y))
    pos, neg = y > 0, y < 0
    row_terms[pos] = y[pos] * program.row_lo[pos]
    row_terms[neg] = y[neg] * program.row_hi[neg]
    terms = np.concatenate([col_terms, row_terms, [const]])
    if not np.all(np.isfinite(terms)):
        return -math.inf
    total = float(np.sum(terms))
    error = _gamma(len(terms) + 2) * 2 * float(np.sum(np.abs(terms))) + len(terms) * _TINY
    return total - error


def _gamma(n: int) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``."""
    return n * _U / (1 - n * _U)
