"""A classifier lowered to sparse matrices: what the verifier's bounds and programs read.

Every supported model is a chain of blocks on flat vectors (docs/maths.md#verification):

    a_k = ReLU(W_k a_{k-1} + b_k)                 (explicit: `Block.A` is None)
    a_k = ReLU(A_k a_k + W_k a_{k-1} + b_k)       (implicit: the unique fixed point)

from the flattened input ``a_0 = u`` to the logits ``y = C a_K + c + D u``. Affine modules are
matrices read off their rules' point evaluations on the unit vectors (in float64, with the
module's rounding charged by the programs' row tolerances), consecutive ones multiplied
together, so that every block has one matrix. A max pool is a few more blocks, exactly (one per
level of a pairwise reduction of its windows, `_lower_maxpool`). What the chain cannot state
(another activation, MON without a sound state box) is refused by name.
"""

from __future__ import annotations

import copy
import itertools
import math
import weakref
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .. import explicit
from ..explicit import UnsupportedModule, rule_for
from ..layers import ImplicitLayer

__all__ = ["Affine", "Block", "Network", "lower", "lower_cached", "VerificationUnsupported"]

_CHUNK = 2**22  # entries evaluated at once when reading a matrix off a module


class VerificationUnsupported(UnsupportedModule):
    """A model (or a part of one) the verifier cannot encode exactly."""


@dataclass
class Affine:
    """``x -> W x + b`` with magnitudes ``Wabs >= |W|``, ``babs >= |b|`` that bound what formed
    them (for a product of maps, ``|W1| |W0|``: the rounding of a product that cancels is
    relative to these, not to the product). ``exact``: ``W`` has entries -1, 0, 1, ``b = 0``,
    and no rounding formed them (`signs`)."""

    W: sp.csr_matrix
    b: np.ndarray
    Wabs: sp.csr_matrix
    babs: np.ndarray
    exact: bool = False

    @staticmethod
    def read(W, b) -> Affine:
        W = sp.csr_matrix(W)
        return Affine(W, np.asarray(b, float), abs(W), np.abs(b))

    @staticmethod
    def signs(W) -> Affine:
        """``x -> W x`` for ``W`` of entries -1, 0, 1 stated exactly (a max pool's levels):
        its products are exact, so its boxes need only the rounding of their sums."""
        W = sp.csr_matrix(W)
        W.eliminate_zeros()
        if not np.all(np.abs(W.data) == 1.0):
            raise ValueError("Affine.signs takes entries -1, 0 and 1 only")
        zero = np.zeros(W.shape[0])
        return Affine(W, zero, abs(W), zero, exact=True)

    def after(self, inner: Affine) -> Affine:
        """``self o inner``."""
        return Affine(
            sp.csr_matrix(self.W @ inner.W),
            np.asarray(self.W @ inner.b).ravel() + self.b,
            sp.csr_matrix(self.Wabs @ inner.Wabs),
            np.asarray(self.Wabs @ inner.babs).ravel() + self.babs,
        )


@dataclass
class Block:
    """``a = ReLU([A a +] W a_prev + b)`` (``map``: ``W, b`` and their magnitudes);
    ``layer``/``prefix`` (implicit blocks): the layer, and the affine map ``v = P a_prev + p``
    to its own input (for its embedding box)."""

    map: Affine
    A: sp.csr_matrix | None = None
    layer: ImplicitLayer | None = None
    prefix: Affine | None = None

    @property
    def W(self) -> sp.csr_matrix:
        return self.map.W

    @property
    def b(self) -> np.ndarray:
        return self.map.b

    @property
    def size(self) -> int:
        return len(self.b)


@dataclass
class Network:
    """One classifier as blocks and a readout ``y = C a_K + c + D u`` (``D`` may be None;
    ``readout``: ``C, c`` with their magnitudes)."""

    input_size: int
    blocks: list[Block]
    readout: Affine
    D: np.ndarray | None = None
    model: nn.Module | None = field(default=None, repr=False)  # the float64 copy lowered


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def lower_cached(classifier) -> Network:
    """`lower`, reused while the classifier's tensors are the same objects at the same versions
    and no rule was registered since (reading a conv-medium encoder's matrices takes about a
    minute)."""
    tensors = itertools.chain(classifier.named_parameters(), classifier.named_buffers())
    stamp = (explicit.REGISTRY_VERSION, len(explicit._REGISTRY)) + tuple(
        (name, t.data_ptr(), t._version, tuple(t.shape)) for name, t in tensors
    )
    hit = _CACHE.get(classifier)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    net = lower(classifier)
    _CACHE[classifier] = (stamp, net)
    return net


def lower(classifier) -> Network:
    """Lower a `Classifier` (a float64 copy in eval mode; the caller's is untouched)."""
    model = copy.deepcopy(classifier).double().eval()
    layer = model.layer
    shape = tuple(model.input_shape)
    ops: list = []
    if model.encoder is not None:
        shape = _lower_module(model.encoder, shape, ops)
    elif len(layer.input_shape()) == 1:
        shape = (int(np.prod(shape)),)
    shape = _lower_implicit(layer, shape, ops)
    blocks, pending = _blocks(ops, int(np.prod(model.input_shape)))
    weight, bias = model.readout.weight.detach().numpy(), model.readout.bias.detach().numpy()
    readout = Affine.read(weight, bias).after(_matrix(layer.features, shape))
    if pending is not None:
        readout = readout.after(pending)
    D = None if model.direct is None else model.direct.weight.detach().numpy().copy()
    return Network(int(np.prod(model.input_shape)), blocks, readout, D, model)


def _lower_module(module: nn.Module, shape: tuple, ops: list) -> tuple:
    """Append ``module``'s operations to ``ops``; returns its output shape (one sample)."""
    rule = rule_for(module)
    kind = rule.verify_kind
    if kind == "sequential":
        for child in module:
            shape = _lower_module(child, shape, ops)
        return shape
    if kind == "relu":
        ops.append(("relu",))
        return shape
    if kind == "implicit":
        return _lower_implicit(module, shape, ops)
    if kind == "affine":
        ops.append(("affine", _matrix(lambda x: rule.evaluate(module, x), shape)))
        out = rule.evaluate(module, torch.zeros(1, *shape, dtype=torch.float64))
        return tuple(out.shape[1:])
    if kind == "maxpool":
        return _lower_maxpool(lambda x: rule.evaluate(module, x), shape, ops)
    raise VerificationUnsupported(
        f"verify cannot encode {type(module).__name__} exactly (its rule states no "
        "verify_kind of 'affine', 'relu', 'maxpool', 'sequential' or 'implicit')"
    )


def _lower_maxpool(pool, shape: tuple, ops: list) -> tuple:
    """A max pool as ReLU blocks, exactly: each level of a pairwise reduction of every window is
    one block, by ``max(s, t) = t + ReLU(s - t)`` and ``t = ReLU(t) - ReLU(-t)`` (neurons
    ``ReLU(s - t), ReLU(t), ReLU(-t)`` per pair; ``ReLU(t), ReLU(-t)`` for a term left over), the
    next level's terms sums of +-1 times its outputs; the pooled values are such sums of the
    last block's outputs (docs/maths.md#verification). All windows share each level's block."""
    windows, out_shape = _pool_windows(pool, shape)
    n = int(np.prod(shape))
    terms = sp.identity(n, format="csr")  # each term: a row, in the current block's outputs
    groups = [np.asarray(w) for w in windows]  # each window's terms: rows of ``terms``
    while any(len(g) > 1 for g in groups):
        neurons, reduced, groups = _pool_level(groups, terms.shape[0])
        ops.append(("affine", Affine.signs(neurons @ terms)))
        ops.append(("relu",))
        terms = reduced
    pooled = terms[np.array([g[0] for g in groups], dtype=np.int64)]
    ops.append(("affine", Affine.signs(pooled)))
    return out_shape


def _pool_windows(pool, shape: tuple) -> tuple[list[np.ndarray], tuple]:
    """Each output's window (flat input indices) and the output shape, read off ``pool`` itself:
    input ``p`` is in output ``o``'s window iff ``o`` is 0 for the input that is 0 at ``p`` and
    ``-inf`` elsewhere (so padding, dilation and ``ceil_mode`` are PyTorch's own)."""
    if len(shape) != 3:
        raise VerificationUnsupported(f"verify pools (channels, height, width) inputs, not {shape}")
    channels, plane = shape[0], int(np.prod(shape[1:]))
    probe = torch.full((plane, 1, *shape[1:]), -math.inf, dtype=torch.float64)
    probe.view(plane, plane)[torch.arange(plane), torch.arange(plane)] = 0.0
    with torch.no_grad():
        hits = pool(probe)
        out_shape = tuple(pool(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:])
    members = (hits.reshape(plane, -1) == 0).T.numpy()  # (outputs of a plane, inputs of a plane)
    if not members.any(1).all():
        raise VerificationUnsupported("a max pool window holds no input (its output is -inf)")
    plane_windows = [np.flatnonzero(row) for row in members]
    windows = [c * plane + w for c in range(channels) for w in plane_windows]
    return windows, out_shape


def _pool_level(groups: list[np.ndarray], count: int) -> tuple[sp.csr_matrix, sp.csr_matrix, list]:
    """One level of the reduction of ``count`` terms grouped by window: the neurons'
    pre-activations in the terms (``s - t``, ``t``, ``-t`` per pair ``(s, t)``; ``t``, ``-t`` for
    a term left over), the next terms in the neurons' outputs (``max(s, t) = ReLU(s - t) +
    ReLU(t) - ReLU(-t)``, ``t = ReLU(t) - ReLU(-t)``), and each window's next terms."""
    pre, post, next_groups = _Triplets(), _Triplets(), []
    for group in groups:
        reduced = []
        for j in range(0, len(group), 2):
            t = group[min(j + 1, len(group) - 1)]
            parts = []  # (neuron, sign): the neurons whose signed sum is the next term
            if j + 1 < len(group):
                parts.append((pre.add_row((group[j], 1.0), (t, -1.0)), 1.0))  # ReLU(s - t)
            parts.append((pre.add_row((t, 1.0)), 1.0))  # ReLU(t)
            parts.append((pre.add_row((t, -1.0)), -1.0))  # ReLU(-t)
            reduced.append(post.add_row(*parts))
        next_groups.append(np.asarray(reduced, dtype=np.int64))
    return pre.matrix(count), post.matrix(pre.rows), next_groups


class _Triplets:
    """A sparse matrix built row by row from ``(row, column, value)`` entries."""

    def __init__(self) -> None:
        self.row, self.col, self.val, self.rows = [], [], [], 0

    def add_row(self, *entries: tuple[int, float]) -> int:
        """Append a row of ``(column, value)`` entries; returns its index."""
        for col, value in entries:
            self.row.append(self.rows), self.col.append(col), self.val.append(value)
        self.rows += 1
        return self.rows - 1

    def matrix(self, columns: int) -> sp.csr_matrix:
        return sp.csr_matrix((self.val, (self.row, self.col)), shape=(self.rows, columns))


def _lower_implicit(layer: ImplicitLayer, shape: tuple, ops: list) -> tuple:
    if layer.activation.name != "relu":
        raise VerificationUnsupported(
            f"verify encodes ReLU implicit layers; {layer._name()} has activation "
            f"{layer.activation.name!r}"
        )
    if layer.lipschitz_terms().norm != "inf":
        raise VerificationUnsupported(
            f"verify needs a sound box of the state (mu_inf(A) < 1 by construction: NEMON, IDL, "
            f"explicit); {layer._name()} has none"
        )
    n = (
        layer.num_features
        if not hasattr(layer, "state_shape")
        else int(np.prod(layer.state_shape()))
    )
    with torch.no_grad():
        A = sp.csr_matrix(layer.weight().detach().numpy())
    inj = _matrix(layer.injection, shape)
    ops.append(("implicit", A, inj, layer))
    state = layer.state_shape() if hasattr(layer, "state_shape") else (n,)
    return tuple(state)


def _blocks(ops: list, input_size: int) -> tuple[list[Block], Affine | None]:
    """Fold the operations into blocks; returns them and the affine map left after the last."""
    blocks: list[Block] = []
    pending = None  # the affine map since the last block's output
    for op in ops:
        if op[0] == "affine":
            pending = op[1] if pending is None else op[1].after(pending)
        elif op[0] == "relu":
            if pending is None:  # a ReLU of the previous output itself: ReLU(I a)
                n = blocks[-1].size if blocks else input_size
                pending = Affine.read(sp.identity(n, format="csr"), np.zeros(n))
            blocks.append(Block(pending))
            pending = None
        else:
            _, A, inj, layer = op
            blocks.append(Block(inj if pending is None else inj.after(pending), A, layer, pending))
            pending = None
    return blocks, pending


def _matrix(f, shape: tuple) -> Affine:
    """``f(x) = W x + b`` on flattened samples of ``shape``: ``b = f(0)`` and the columns of
    ``W`` by forward-mode differentiation along the unit vectors (for Linear and Conv2d each
    entry is then a weight exactly: one tap times 1, no bias to subtract)."""
    n = int(np.prod(shape))
    with torch.no_grad():
        zero = torch.zeros(1, *shape, dtype=torch.float64)
        base = f(zero).reshape(1, -1)
        out = base.shape[1]
        step = max(1, _CHUNK // max(out, 1))
        columns = []
        for start in range(0, n, step):
            stop = min(n, start + step)
            basis = torch.zeros(stop - start, n, dtype=torch.float64)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            origin = torch.zeros(stop - start, *shape, dtype=torch.float64)
            _, cols = torch.func.jvp(f, (origin,), (basis.reshape(-1, *shape),))
            columns.append(sp.csr_matrix(cols.reshape(stop - start, -1).numpy()))
    W = sp.vstack(columns).T.tocsr()
    return Affine.read(W, base[0].numpy().copy())
