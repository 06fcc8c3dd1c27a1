"""Refusals that need a host sync, also inside a compiled graph.

Under ``torch.compile(fullgraph=True)`` no Python ``if`` may read a tensor's values, so such a
check runs in the custom operator `checked`: the identity (its gradient too) that raises
`InputError` when its input fails, and whose output the model goes on with (an unused output
could be compiled away).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import InputError

__all__ = ["log_eta_max", "check_weights", "checked_weights", "checked"]


def log_eta_max(dtype: torch.dtype) -> float:
    """Largest ``|d_i|`` of log-weights ``d = log(eta)`` in ``dtype``: a quarter of its exponent
    range (float32 22.2, float64 177.4, float16 2.8), so that the weights, their inverses, their
    ratios and the squares the gradients meet (``d(1/eta)/d eta = -1/eta^2``) all stay finite, and
    the equilibrium, which grows with up to ``e^(max d - min d)``, has room to spare."""
    return math.log(torch.finfo(dtype).max) / 4


def check_weights(eta: Tensor) -> None:
    """One line unless every weight of ``eta`` (the stored weights of a norm) lies in
    ``[e^-L, e^L]`` with ``L = log_eta_max(eta.dtype)``; their scale is free (the norms' ratios,
    measures and bounds do not change when ``eta`` is multiplied by a constant). A host sync:
    weighted layers pay it when they form ``A`` (`checked_weights`)."""
    low, high = (float(v) for v in torch.stack((eta.amin(), eta.amax())).detach().cpu())
    limit = log_eta_max(eta.dtype)
    if not (math.exp(-limit) <= low and high <= math.exp(limit)):
        raise InputError(
            f"the weights eta = exp(d) of the norm must lie in [e^-{limit:.3g}, e^{limit:.3g}]"
            f" in {eta.dtype}, got eta in [{low:.3g}, {high:.3g}]; divide eta by a constant"
            f" (the norm does not depend on its scale) or use a wider dtype"
        )


def checked_weights(eta: Tensor) -> Tensor:
    """``eta`` after `check_weights`; under ``torch.compile`` the check runs in a custom
    operator (`checked`), whose output the weights are formed from."""
    if torch.compiler.is_compiling():
        return checked(eta, "eta")
    check_weights(eta.detach())
    return eta


@torch.library.custom_op("nemon::checked", mutates_args=())
def checked(t: Tensor, kind: str) -> Tensor:
    """``t`` itself, refused in one line unless it passes the check ``kind``: ``"finite"`` (a
    layer's input: no NaN or inf) or ``"eta"`` (the norm's weights, `check_weights`)."""
    if kind == "eta":
        check_weights(t)
    elif t.numel() and not bool(torch.isfinite(torch.stack((t.amax(), t.amin()))).all()):
        raise InputError("the implicit layer's input contains NaN or inf")
    return t.clone()


@checked.register_fake
def _(t, kind):
    return torch.empty_like(t)


checked.register_autograd(lambda ctx, grad: (grad, None))
