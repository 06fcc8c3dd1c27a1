"""The verification program of one input: every block's ReLU with its phase as a 0-1 variable.

Variables (all boxed): the input in the ball, each block's output ``a``, and for each unstable
neuron its pre-activation ``z`` and phase ``d`` in ``[0, 1]``. Rows (docs/maths.md#verification):

    active neuron    a_i - (W a_prev)_i [- (A a)_i] = b_i
    unstable neuron  z_i - (W a_prev)_i [- (A a)_i] = b_i,
                     a_i >= z_i,  a_i <= z_i - l_i (1 - d_i),  a_i <= u_i d_i      (a_i >= 0: box)
    inactive neuron  a_i = 0 (its box)

each equality as a range ``b_i +- tau_i`` that covers the rounding of its coefficients. With
``d`` integral the rows state ``a = ReLU(z)`` exactly, so (the fixed point being unique) the
program's feasible inputs and logits are the model's; with ``d`` relaxed it is the triangle
relaxation. `safe_bound` turns any row multipliers into a rigorous lower bound of the program
(Neumaier and Shcherbina, 2004), so no certificate rests on the LP solver's tolerances.
"""

from __future__ import annotations

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
    outputs: list = field(default_factory=list)  # per member: columns of the last block

    @property
    def size(self) -> int:
        return len(self.col_lo)


def build_program(nets: list[Network], bounds: list[list[BlockBounds]], lo, hi) -> Program:
    """The program of one input box ``[lo, hi]`` for the members ``nets`` (one shared input)."""
    col_lo, col_hi = [np.asarray(lo, float)], [np.asarray(hi, float)]
    count = len(lo)
    inputs = np.arange(count)
    rows, row_lo, row_hi = [], [], []  # rows as (cols, values)
    phases, phase_z, phase_a, where, outputs = [], [], [], [], []

    def new(lo_, hi_):
        nonlocal count
        col_lo.append(np.asarray(lo_, float))
        col_hi.append(np.asarray(hi_, float))
        idx = np.arange(count, count + len(lo_))
        count += len(lo_)
        return idx

    for m, (net, net_bounds) in enumerate(zip(nets, bounds)):
        prev = inputs
        for k, (block, bb) in enumerate(zip(net.blocks, net_bounds)):
            l, u = bb.pre.lo, bb.pre.hi
            inactive, active = u <= 0, l >= 0
            unstable = ~inactive & ~active
            a = new(np.where(inactive, 0.0, bb.out.lo), np.where(inactive, 0.0, bb.out.hi))
            un = np.flatnonzero(unstable)
            z = new(l[un], u[un])
            d = new(np.zeros(len(un)), np.ones(len(un)))
            target = a.copy()
            target[un] = z
            W = block.W.tocsr()
            A = None if block.A is None else block.A.tocsr()
            for i in np.flatnonzero(~inactive):
                cols = [np.array([target[i]]), prev[W.indices[W.indptr[i] : W.indptr[i + 1]]]]
                vals = [np.array([1.0]), -W.data[W.indptr[i] : W.indptr[i + 1]]]
                if A is not None:
                    cols.append(a[A.indices[A.indptr[i] : A.indptr[i + 1]]])
                    vals.append(-A.data[A.indptr[i] : A.indptr[i + 1]])
                rows.append((np.concatenate(cols), np.concatenate(vals)))
                row_lo.append(block.b[i])
                row_hi.append(block.b[i])
            for t, i in enumerate(un):
                ai, zi, di = a[i], z[t], d[t]
                rows.append((np.array([ai, zi]), np.array([1.0, -1.0])))
                row_lo.append(0.0), row_hi.append(math.inf)
                rows.append((np.array([ai, zi, di]), np.array([1.0, -1.0, -l[i]])))
                row_lo.append(-math.inf), row_hi.append(-l[i])
                rows.append((np.array([ai, di]), np.array([1.0, -u[i]])))
                row_lo.append(-math.inf), row_hi.append(0.0)
                where.append((m, k, int(i)))
            phases.append(d), phase_z.append(z), phase_a.append(a[un])
            prev = a
        outputs.append(prev)
    M = _matrix(rows, count)
    col_lo, col_hi = np.concatenate(col_lo), np.concatenate(col_hi)
    row_lo, row_hi = np.array(row_lo, float), np.array(row_hi, float)
    tau = _row_tolerance(M, row_lo, row_hi, col_lo, col_hi)
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return Program(
        M,
        row_lo - tau,
        row_hi + tau,
        col_lo,
        col_hi,
        inputs,
        cat(phases),
        cat(phase_z),
        cat(phase_a),
        where,
        outputs,
    )


def _matrix(rows, count: int) -> sp.csr_matrix:
    indptr = np.cumsum([0] + [len(c) for c, _ in rows])
    cols = np.concatenate([c for c, _ in rows]) if rows else np.zeros(0, np.int64)
    vals = np.concatenate([v for _, v in rows]) if rows else np.zeros(0)
    M = sp.csr_matrix((vals, cols, indptr), shape=(len(rows), count))
    M.sum_duplicates()  # e.g. the diagonal of A beside the unit coefficient: 1 - A_ii
    return M


def _row_tolerance(M, row_lo, row_hi, col_lo, col_hi) -> np.ndarray:
    """Per row, a bound far above the rounding of its coefficients (products of matrices read in
    float64, ``1 - A_ii``): ``2^-36`` times the magnitude of its terms, only on finite ends."""
    reach = np.maximum(np.abs(col_lo), np.abs(col_hi))
    rhs = np.where(np.isfinite(row_lo), np.abs(row_lo), 0.0)
    rhs = np.maximum(rhs, np.where(np.isfinite(row_hi), np.abs(row_hi), 0.0))
    return _ROW_TOL * (abs(M) @ reach + rhs) + _TINY


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
    M = program.M
    r = cost - M.T @ y
    per_col = np.diff(M.tocsc().indptr).max(initial=0)
    r_err = _gamma(per_col + 2) * 2 * (np.abs(cost) + abs(M).T @ np.abs(y)) + _TINY
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
