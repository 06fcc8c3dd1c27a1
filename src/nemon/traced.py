"""The implicit solve as a PyTorch custom operator, so that ``torch.compile(model,
fullgraph=True)`` traces a whole model.

A fixed-point solve iterates until a data-dependent test passes: no graph can hold it. Under
``torch.compile`` a layer's forward therefore calls ``torch.ops.nemon.implicit_solve``, an
operator the compiler treats as one opaque node (with a shape-only fake implementation), whose
eager implementation is the library's own solve and whose backward is the adjoint solve
(docs/maths.md#gradients), another opaque node. Its inputs are the injection ``z = B u + b`` and
the layer's effective weights, so that everything around it, the constraint (17) that forms
``A`` from the parameters included, compiles. The operator finds its layer by a key (custom
operators take tensors and numbers, not modules); the layer's equilibrium is rebuilt from the
weights it is given, so the solve sees exactly the traced weights. Statistics reach the
`nemon.SolveLog` open at the forward, the adjoint's included, as in eager mode (the forward
returns a ticket tensor that the backward presents); a solve that stops before its tolerance
warns as always. Checks that need a host sync (finite inputs, the norm's weights) run in the
operator `nemon.guards.checked`, whose output the model uses.
"""

from __future__ import annotations

import itertools
import weakref

import torch
from torch import Tensor

from .errors import InputError
from .solve_log import SolveLog, open_logs, report
from .solvers import SolverStats, solve

__all__ = ["traced_solve", "register_layer"]

_LAYERS: dict[int, weakref.ref] = {}
#: the logs open at each forward solve, by ticket, until its adjoint reports (weakly held; the
#: oldest tickets are dropped past `_MAX_TICKETS`, as when no backward ever runs)
_TICKETS: dict[int, tuple[weakref.ref, ...]] = {}
_MAX_TICKETS = 4096
_NEXT = itertools.count(1)


@torch.compiler.assume_constant_result
def register_layer(layer) -> int:
    """The key by which the operators find ``layer`` (its ``id``; held weakly). Run once while
    tracing: the key is a constant of the graph."""
    for stale in [k for k, ref in _LAYERS.items() if ref() is None]:
        del _LAYERS[stale]
    _LAYERS[id(layer)] = weakref.ref(layer)
    return id(layer)


def _layer_and_equilibrium(key: int, weights: list[Tensor], training: bool):
    layer = _LAYERS[key]()
    return layer, layer.solve_equilibrium(tuple(weights), training)


def _ticket(logs: tuple[SolveLog, ...]) -> Tensor:
    """A scalar tensor naming ``logs`` for the adjoint (0: none open)."""
    if not logs:
        return torch.zeros((), dtype=torch.int64)
    number = next(_NEXT)
    _TICKETS[number] = tuple(weakref.ref(log) for log in logs)
    while len(_TICKETS) > _MAX_TICKETS:
        del _TICKETS[next(iter(_TICKETS))]
    return torch.tensor(number, dtype=torch.int64)


def _logs_of(ticket: Tensor) -> tuple[SolveLog, ...]:
    refs = _TICKETS.pop(int(ticket), ())
    return tuple(log for log in (ref() for ref in refs) if log is not None)


@torch.library.custom_op("nemon::implicit_solve", mutates_args=())
def implicit_solve_op(
    z: Tensor, weights: list[Tensor], key: int, training: bool
) -> tuple[Tensor, Tensor]:
    """``x* = Phi(A x* + z)`` for the layer ``key`` with ``A`` from ``weights`` (no gradient:
    `traced_solve` attaches it), and the ticket of the logs open here."""
    layer, eq = _layer_and_equilibrium(key, weights, training)
    if not all(bool(torch.isfinite(w).all()) for w in weights):
        raise InputError(f"{layer._name()}: its effective weights are not finite")
    x, stats = solve(eq.forward_system(tuple(weights), z), None, eq.options)
    logs = open_logs()
    report(logs, eq.kind, "forward", stats)
    return x, _ticket(logs)


@implicit_solve_op.register_fake
def _(z, weights, key, training):
    return torch.empty_like(z), torch.empty((), dtype=torch.int64)


@torch.library.custom_op("nemon::adjoint_solve", mutates_args=())
def adjoint_solve_op(
    grad: Tensor,
    x: Tensor,
    z: Tensor,
    weights: list[Tensor],
    ticket: Tensor,
    key: int,
    training: bool,
) -> Tensor:
    """``p = (I - A^T J)^-1 g`` with ``J = diag(phi'(A x* + z))``: the gradient that, sent back
    through one differentiable step ``Phi(A x* + z)``, gives the exact implicit gradient
    (docs/maths.md#gradients; ``w = J p``). Splitting solvers solve for ``w`` and return
    ``p = A^T w + g``; the Jacobian-free adjoint (``w = J g``) returns ``g``."""
    _, eq = _layer_and_equilibrium(key, weights, training)
    logs = _logs_of(ticket)
    if eq.adjoint.name == "jacobian_free":
        report(logs, eq.kind, "backward", SolverStats(0, converged=True, method="jacobian_free"))
        return grad.clone()
    weights = tuple(weights)
    J = eq.phi.derivative(eq.operator.matvec_add(weights, x, z))
    system, _, start = eq.adjoint_system(weights, J, grad)
    p, stats = solve(system, start, eq.backward_options)
    report(logs, eq.kind, "backward", stats)
    if eq.backward_options.method.adjoint_form == "prox":  # the solution is w
        return eq.operator.rmatvec(weights, p) + grad
    return p


@adjoint_solve_op.register_fake
def _(grad, x, z, weights, ticket, key, training):
    return torch.empty_like(grad)


@torch.library.custom_op("nemon::implicit_gradient", mutates_args=())
def implicit_gradient_op(
    y: Tensor,
    x: Tensor,
    z: Tensor,
    weights: list[Tensor],
    ticket: Tensor,
    key: int,
    training: bool,
) -> Tensor:
    """The identity on ``y``; its backward replaces the incoming gradient ``g`` by
    `adjoint_solve_op`'s ``p``."""
    return y.clone()


@implicit_gradient_op.register_fake
def _(y, x, z, weights, ticket, key, training):
    return torch.empty_like(y)


def _setup_context(ctx, inputs, output):
    _, x, z, weights, ticket, key, training = inputs
    ctx.save_for_backward(x, z, ticket, *weights)
    ctx.key, ctx.training = key, training


def _backward(ctx, grad):
    x, z, ticket, *weights = ctx.saved_tensors
    p = adjoint_solve_op(grad, x, z, list(weights), ticket, ctx.key, ctx.training)
    return p, None, None, [None] * len(weights), None, None, None


implicit_gradient_op.register_autograd(_backward, setup_context=_setup_context)


def traced_solve(layer, z: Tensor, weights: tuple[Tensor, ...]) -> Tensor:
    """The state for injection ``z`` as a compiled forward computes it: ``x*`` from the solve
    operator, its value exactly, with the gradient of one step ``F(x*) = Phi(A x* + z)`` in
    ``z`` and the weights, the incoming gradient first mapped to ``p`` by the adjoint solve:
    ``p^T J d(A x* + z)`` is the implicit function theorem's gradient."""
    key = register_layer(layer)
    plain = [w.detach() for w in weights]
    x, ticket = implicit_solve_op(z.detach(), plain, key, layer.training)
    step = layer.activation(layer.operator.matvec_add(weights, x, z))
    attached = x + (step - step.detach())  # the value of x*, the gradient of the step
    return implicit_gradient_op(attached, x, z.detach(), plain, ticket, key, layer.training)
