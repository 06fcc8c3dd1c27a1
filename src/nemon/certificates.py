"""Robustness certificates on l_inf balls (docs/maths.md#certificates and #intervals).

`certify` is the one entry point: ``"lipschitz"`` (19), ``"pairwise"`` (per class pair,
never weaker), ``"interval"`` (the embedding-system box, never weaker than pairwise) and
``"linear"`` (interval with linear bounds through the encoder, never weaker than interval). Every
method charges the solver's a-posteriori error bound against the margins, runs in float64 by
default (the rounding of the float64 evaluation is ``O(1e-13)`` relative, far below the error
bound charged), and certifies nothing, with a `CertificateWarning` saying why, when the
model's bounds are unusable (measure >= 1, non-finite or non-positive quantities).
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from .ensemble import Ensemble
from .errors import InputError
from .explicit import (
    UnsupportedModule,
    _refuse_hooks,
    check_point_evaluation,
    implicit_box,
    refuse_global_hooks,
    rule_for,
)
from .intervals import input_box, logit_difference_bounds
from .layers import ImplicitLayer
from .linear_bounds import injection_bounds, supports_linear_bounds
from .lipschitz import (
    _readout_norms,
    certified_by_margins,
    lipschitz_margins,
    output_bound,
    pairwise_bounds,
    pairwise_margins,
    state_bound,
)
from .models import Classifier
from .ranges import IMAGES, InputRange, check_inside
from .solvers import ConvergenceWarning

__all__ = [
    "CertificateWarning",
    "CERTIFICATES",
    "certify",
    "margin_bounds",
    "certificate_obstacle",
    "default_certificate",
]

CERTIFICATES = ("lipschitz", "pairwise", "interval", "linear")


def default_certificate(model) -> str:
    """The default certificate: ``"interval"`` when every implicit layer in it gives interval
    bounds (NEMON, IDL, explicit layers), else ``"pairwise"`` (MON).

    Each is never weaker than the next: linear >= interval >= pairwise >= lipschitz (tested);
    ``"linear"`` costs more and, on interval-trained models, adds little (docs/results.md)."""
    classifiers = model.classifiers()
    layers = [m for c in classifiers for m in c.modules() if isinstance(m, ImplicitLayer)]
    boxed = all(type(m).interval_bounds is not ImplicitLayer.interval_bounds for m in layers)
    return "interval" if boxed else "pairwise"


class CertificateWarning(UserWarning):
    """A certificate certified nothing, or less than it could; the message says why, and the
    fields say it to code: ``kind`` (``"none_certified"``: ``method`` certified none of the
    correctly classified inputs at the radii ``radii``, ``stronger`` naming a stronger method
    the model supports, or None; ``"refused"``: the model cannot be certified, ``reason``;
    ``"disagreement"``: ``count`` inputs whose prediction in the model's own dtype differs
    from the exact one)."""

    def __init__(self, message: str, kind: str = "other", **fields) -> None:
        super().__init__(message)
        self.kind = kind
        self.method = fields.get("method")
        self.radii = tuple(fields.get("radii", ()))
        self.stronger = fields.get("stronger")
        self.reason = fields.get("reason")
        self.count = fields.get("count", 0)

    @classmethod
    def none_certified(cls, method: str, radii, stronger: str | None) -> CertificateWarning:
        """The warning that ``method`` certified nothing at ``radii``."""
        hint = f"; method={stronger!r} is stronger (this model's default)" if stronger else ""
        message = (
            f"method {method!r} certifies none of the correctly classified inputs at eps "
            f"{', '.join(f'{e:g}' for e in radii)}{hint}"
        )
        return cls(message, "none_certified", method=method, radii=radii, stronger=stronger)


def _is_radius(e) -> bool:
    """A real number (Python, numpy or a 0-d tensor), not a bool."""
    if isinstance(e, Tensor):
        return e.dim() == 0 and not e.dtype.is_complex and e.dtype != torch.bool
    return isinstance(e, numbers.Real) and not isinstance(e, (bool, np.bool_))


def _radii(eps) -> list[float]:
    """``eps`` as a list of radii: one number, or a sequence (list, tuple, 1-d tensor or array)."""
    if _is_radius(eps):
        radii = [eps]
    elif isinstance(eps, (Tensor, np.ndarray)) and eps.ndim == 1:
        radii = list(eps)
    elif isinstance(eps, (list, tuple)):
        radii = list(eps)
    else:
        raise InputError(f"eps must be a number or a list of numbers, got {type(eps).__name__}")
    if not radii:
        raise InputError("eps: give at least one radius")
    for e in radii:
        if not (_is_radius(e) and math.isfinite(float(e)) and float(e) >= 0):
            raise InputError(f"eps must be finite numbers >= 0, got {e!r}")
    return [float(e) for e in radii]


def _check_labels(model, u: Tensor, labels) -> Tensor:
    """Integer class indices, one per input, each in ``[0, num_classes)``."""
    if not isinstance(labels, Tensor):
        raise InputError(f"labels must be a tensor of class indices, got {type(labels).__name__}")
    if labels.dim() != 1 or len(labels) != len(u):
        raise InputError(
            f"labels must have shape ({len(u)},), one class index per input; got "
            f"{tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise InputError(f"labels must be integers (class indices), got {labels.dtype}")
    q = model.num_classes
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= q):
        raise InputError(
            f"labels must lie in [0, {q}) for this model, got {int(labels.min())} to "
            f"{int(labels.max())}"
        )
    return labels.long()


def _check_model(model) -> None:
    if not isinstance(model, (Classifier, Ensemble)):
        raise InputError(
            f"certificates need a nemon.Classifier or nemon.Ensemble, got {type(model).__name__}"
        )
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "meta":
        raise InputError("the model's parameters are on the meta device: they hold no values")


def check_modules(model) -> None:
    """Refuse by name (`nemon.explicit.UnsupportedModule`) a model whose modules nemon's rules
    do not describe exactly: a subclass of `Classifier` or `Ensemble` (its own forward), hooks,
    and in every classifier a layer, readout or encoder module without an exact rule."""
    if type(model) not in (Classifier, Ensemble):
        raise UnsupportedModule(
            f"{type(model).__name__} is a subclass of {type(model).__mro__[1].__name__}: "
            "certificates describe nemon.Classifier and nemon.Ensemble themselves"
        )
    refuse_global_hooks()
    _refuse_hooks(model)
    for c in model.classifiers():
        if type(c) is not Classifier:
            raise UnsupportedModule(f"{type(c).__name__} is not a nemon.Classifier")
        _refuse_hooks(c)
        for part in (c.layer, c.readout, c.direct, c.encoder):
            if part is not None:
                rule_for(part)
        for m in c.modules():
            _refuse_hooks(m)


def check_point_evaluation_of(model: Classifier, u: Tensor) -> None:
    """Each encoder module's rule evaluates to its own forward at the inputs ``u``."""
    if model.encoder is not None:
        with torch.no_grad():
            check_point_evaluation(model.encoder, model.prepare_input(u))


def certificate_obstacle(model) -> str | None:
    """Why the model's bounds cannot certify anything, or None when they can.

    The measure must be finite and below 1 (it is an upper bound of the exact measure of the
    stored weights, see `nemon.norms`), and every norm in the bounds finite and positive;
    for an `Ensemble`, for every member.
    """
    for i, classifier in enumerate(model.classifiers()):
        reason = _obstacle(classifier)
        if reason is not None:
            return reason if classifier is model else f"member {i}: {reason}"
    return None


def _obstacle(model: Classifier) -> str | None:
    layer = model.layer
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return f"parameter {name} is not finite"
    measure = float(layer.measure().detach())
    if not math.isfinite(measure) or measure >= 1:
        return f"the layer's measure is {measure:.6g} >= 1: it is not contracting"
    terms = model.lipschitz_terms()
    for name, value in (("||B||", terms.input_norm), ("1 - mu_+", terms.denominator)):
        v = float(value.detach())
        if not (math.isfinite(v) and v > 0):
            return f"{name} = {v:.6g} is not finite and positive"
    running = model.running_error()
    if running is None or not math.isfinite(float(running)):
        return (
            "an implicit layer has error_tol=None: the model as it runs states no distance "
            "from its exact equilibrium"
        )
    return None


@contextmanager
def full_float32():
    """No TensorFloat-32 inside the block: on Ampere and later GPUs cuDNN convolutions (and
    matmuls, where enabled) otherwise round their inputs to 10-bit mantissas, an error far above
    the residuals whose bound a certificate charges (a float32 solve on an H200 stalled at a
    relative residual of 7e-5). The previous settings are restored."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled,
            benchmark=torch.backends.cudnn.benchmark,
            deterministic=torch.backends.cudnn.deterministic,
            allow_tf32=False,
        ):
            yield
    finally:
        matmul.allow_tf32 = saved


@contextmanager
def _tight(model, solve_tol, u: Tensor):
    """Solve to ``solve_tol`` (fixed-point residual) inside the block; see `certify`."""
    if solve_tol == "auto":
        solve_tol = 1e-10 if u.dtype == torch.float64 else 1e-5
    if solve_tol is None:
        yield
        return
    with ExitStack() as stack:  # every implicit layer of the model, encoder included
        for layer in model.modules():
            if isinstance(layer, ImplicitLayer):
                max_iter = max(2000, layer.solver_options.max_iter)
                tight = dict(tol=solve_tol, residual="fixed_point", max_iter=max_iter)
                stack.enter_context(layer.solver_settings(**tight, per_sample=True))
        yield


def _own_prediction(model, u: Tensor) -> tuple[Tensor, str | None]:
    """The class the model predicts in its own dtype, as it runs (on a copy: the caller's model
    is never touched), and why it cannot be certified in that dtype, if it cannot."""
    reason = certificate_obstacle(model)
    if reason is not None:
        return torch.full((len(u),), -1, dtype=torch.long, device=u.device), reason
    with warnings.catch_warnings(), full_float32():
        warnings.simplefilter("ignore", ConvergenceWarning)  # judged by its result below
        logits = model(u.to(next(model.parameters()).dtype, copy=True))
    if not bool(torch.isfinite(logits).all()):
        dtype = next(model.parameters()).dtype
        return logits.argmax(1), f"the model's own ({dtype}) logits are not finite"
    return logits.argmax(1), None


@torch.no_grad()
def certify(
    model: Classifier | Ensemble,
    u: Tensor,
    labels: Tensor,
    eps: float | list[float],
    method: str | None = None,
    input_range: InputRange = IMAGES,
    solve_tol: float | str | None = "auto",
    dtype: torch.dtype | None = torch.float64,
) -> Tensor:
    """Which samples are certified robust on the l_inf ball of radius ``eps``.

    Args:
        model: a `Classifier`, or an `Ensemble` (certified by the
            mean of its members' margin bounds).
        u: inputs in the data's range, ``(batch, *input_shape)``.
        labels: their labels, ``(batch,)``.
        eps: a radius or a list of radii (the centre solve is shared).
        method: ``"linear"`` (interval, with the dense layer's injection bounded by linear
            bounds through the encoder where interval leaves an input uncertified),
            ``"interval"`` (NEMON, IDL and explicit layers), ``"pairwise"`` or
            ``"lipschitz"``; None (default): `default_certificate`. A `CertificateWarning` says when a method
            certifies none of the correctly classified inputs at a positive radius.
        input_range: the range ``(lo, hi)`` the data lives in (`nemon.ranges`); the ball is
            intersected with it (``None``: unbounded data). Only the interval and linear
            certificates gain from it; inputs outside it are an error.
        solve_tol: the equilibrium is solved to this fixed-point residual (``"auto"``: 1e-10 in
            float64, 1e-5 in float32; None keeps the layer's settings) and the a-posteriori error
            bound is charged against the margins, so the certificate holds for the exact
            equilibrium.
        dtype: precision of the evaluation (default float64, on a copy of the model; None: the
            model's own).

    Returns:
        A bool tensor ``(batch,)``, or ``(len(eps), batch)`` for a list of radii.
    """
    _check_model(model)
    method = method or default_certificate(model)
    correct, bounds = margin_bounds(model, u, labels, eps, method, input_range, solve_tol, dtype)
    ok = certified_by_margins(correct, bounds, labels.long().to(bounds.device))
    _warn_if_nothing_certified(model, method, _radii(eps), correct, ok)
    return ok


def _warn_if_nothing_certified(model, method: str, radii, correct: Tensor, ok: Tensor) -> None:
    """A method that certifies none of the correct inputs at a radius says so (and names a
    stronger one the model supports), instead of a silent 0."""
    if not bool(correct.any()):
        return
    counts = ok.reshape(len(radii), -1).sum(1)
    empty = [e for e, c in zip(radii, counts.tolist()) if e > 0 and c == 0]
    if not empty:
        return
    best = default_certificate(model)
    stronger = best if CERTIFICATES.index(best) > CERTIFICATES.index(method) else None
    warning = CertificateWarning.none_certified(method, empty, stronger)
    warnings.warn(warning, stacklevel=4)  # the caller of certify (behind torch.no_grad's wrapper)


@torch.no_grad()
def margin_bounds(
    model: Classifier | Ensemble,
    u: Tensor,
    labels: Tensor,
    eps: float | list[float],
    method: str | None = None,
    input_range: InputRange = IMAGES,
    solve_tol: float | str | None = "auto",
    dtype: torch.dtype | None = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Lower bounds of the logit differences ``y_label - y_j`` on the l_inf ball: what
    `certify` checks (certified: the centre classified right and every bound positive).

    The arguments are `certify`'s. Returns ``(correct, bounds)``: whether each centre is
    classified right, ``(batch,)``, and the bounds, ``(batch, q)`` or ``(len(eps), batch, q)`` for
    a list of radii, 0 at the label. A model that cannot be certified (see
    `certificate_obstacle`) gets bounds of ``-inf`` and a `CertificateWarning`.
    """
    _check_model(model)
    method = method or default_certificate(model)
    if method not in CERTIFICATES:
        raise InputError(f"unknown certificate {method!r}; choose one of {CERTIFICATES}")
    radii = _radii(eps)
    input_range = check_inside(u, input_range)
    labels = _check_labels(model, u, labels).to(u.device)
    _check_eval_mode(model)
    check_modules(model)
    model = copy.deepcopy(model).eval()  # the caller's model is never changed (thread-safe)
    own, reason = _own_prediction(model, u)
    if dtype is not None:
        model = model.to(dtype)
    u = u.to(next(model.parameters()).dtype)
    for classifier in model.classifiers():
        check_point_evaluation_of(classifier, u)
    reason = reason or certificate_obstacle(model)
    if reason is not None:
        warning = CertificateWarning(f"nothing certified: {reason}", "refused", reason=reason)
        warnings.warn(warning, stacklevel=2)
        correct = torch.zeros(len(u), dtype=torch.bool, device=u.device)
        bounds = [
            torch.full((len(u), model.num_classes), -math.inf, dtype=u.dtype, device=u.device)
        ]
        bounds = bounds * len(radii)
    else:
        with _tight(model, solve_tol, u), full_float32():
            logits, bounds = _margin_bounds(model, u, labels, radii, method, input_range)
        exact = logits.argmax(1)
        correct = (exact == labels) & (own == labels)
        _warn_if_disagreeing(own, exact, labels)
    bounds = [b.scatter(1, labels[:, None], 0.0) for b in bounds]
    return (correct, bounds[0]) if _is_radius(eps) else (correct, torch.stack(bounds))


def _warn_if_disagreeing(own: Tensor, exact: Tensor, labels: Tensor) -> None:
    """Inputs the exact evaluation classifies right but the model, as it runs in its own dtype,
    does not: they are not certified (the certificate is about the model given)."""
    count = int(((exact == labels) & (own != labels)).sum())
    if count:
        message = (
            f"{count} inputs not certified: the model in its own dtype predicts another class "
            "than its exact evaluation"
        )
        warnings.warn(CertificateWarning(message, "disagreement", count=count), stacklevel=3)


def _check_eval_mode(model) -> None:
    """A batch norm in training mode normalises with batch statistics: no fixed function to
    certify (and the interval pass would use the last training batch's)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise InputError(
                f"certificates need eval mode: batch norm {name!r} is in training mode "
                "(call model.eval())"
            )


def _margin_bounds(model, u: Tensor, labels: Tensor, radii: list[float], method: str, input_range):
    """``(logits, bounds)``: the centre's logits, and per radius lower bounds ``(batch, q)`` of
    ``y_label - y_j`` over the ball: the mean of its classifiers' logits and bounds (one for a
    `Classifier`, the members for an `Ensemble`; the mean of one is exact)."""
    bound = {"interval": _interval_bounds, "linear": _linear_bounds}.get(method, _lipschitz_bounds)
    extra = (input_range,) if method in ("interval", "linear") else (method,)
    parts = []
    for c in model.classifiers():
        logits, bounds = bound(c, u, labels, radii, *extra)
        charge = _running_charge(c, labels).to(logits)
        parts.append((logits, [b - charge for b in bounds]))
    logits = torch.stack([p[0] for p in parts]).mean(0)
    return logits, [torch.stack(per_radius).mean(0) for per_radius in zip(*(p[1] for p in parts))]


def _running_charge(model: Classifier, labels: Tensor) -> Tensor:
    """``(batch, q)``: how far each ``y_label - y_j`` of the model as it runs (eval mode) may lie
    from the exact equilibrium's, for every input: ``||c_label - c_j|| * running_error`` in the
    layer's norm (docs/guarantees.md). Subtracted from the exact bounds, a certificate covers
    both the exact equilibrium and the model as it runs."""
    C, _ = model.readout_weights()
    pair_c = _pair_readout_norms(model.lipschitz_terms(), C)
    return pair_c[labels] * model.running_error().to(pair_c)


def _pair_readout_norms(terms, C: Tensor) -> Tensor:
    """``(q, q)``: ``||c_i - c_j||`` in the dual of the state's norm (what a state error costs
    the logit difference ``y_i - y_j``)."""
    return _readout_norms(terms, C[:, None, :] - C[None, :, :])


def _lipschitz_bounds(model, u: Tensor, labels: Tensor, radii: list[float], method: str):
    """Certificate (19) or its pairwise form as margin bounds, every solve's error charged."""
    solution = model.solve(u)
    logits, error = solution.logits, solution.error_bound
    if error is None:  # no proven distance from the equilibrium: nothing is certified
        unbounded = torch.full_like(logits, -math.inf)
        return logits, [unbounded for _ in radii]
    terms = model.lipschitz_terms()
    C, D = model.readout_weights()
    if method == "lipschitz":
        L = output_bound(terms, C, D)
        slack = error * _readout_norms(terms, C).amax()
        bounds = [lipschitz_margins(logits, labels, L, e, slack) for e in radii]
    else:
        L_pair = pairwise_bounds(terms, C, D)
        slack = error[:, None] * _pair_readout_norms(terms, C)[labels]
        bounds = [pairwise_margins(logits, labels, L_pair, e, slack) for e in radii]
    return logits, bounds


def _interval_bounds(
    model, u: Tensor, labels: Tensor, radii: list[float], input_range, injection_box=None
):
    """Worst-case logit differences over the state box.

    The state box is the embedding box, widened by the solver's error bound
    (`implicit_box`, as for implicit layers inside encoders), intersected with the
    Lipschitz box ``x(u) +- eta (||B|| eps / (1 - mu_+) + error)`` (sound on both counts, so never
    looser than the pairwise Lipschitz certificate). ``injection_box(model, lo, hi)``: a tighter
    box of the dense layer's injection for inputs in ``[lo, hi]`` (the linear certificate's).
    """
    layer = model.layer
    u = model.prepare_input(u)
    solution = model.solve(u)
    logits, x, err_x = solution.logits, solution.x, solution.error_bound
    eta = layer.eta()
    scale = torch.ones_like(x[:1]) if eta is None else _broadcast(eta, x)
    terms = model.lipschitz_terms()
    bounds = []
    for eps in radii:
        box = input_box(u, eps, input_range)
        injection = None if injection_box is None else injection_box(model, *box)
        x_lo, x_hi = implicit_box(layer, *model.encode_interval(*box), injection)
        if terms.norm == "inf" and err_x is not None:
            radius = state_bound(terms) * eps + err_x
            x_lo = torch.maximum(x_lo, x - scale * _per_sample(radius, x))
            x_hi = torch.minimum(x_hi, x + scale * _per_sample(radius, x))
        bounds.append(logit_difference_bounds(model, u, labels, eps, input_range, x_lo, x_hi))
    return logits, bounds


def _linear_bounds(model, u: Tensor, labels: Tensor, radii: list[float], input_range):
    """The interval bounds; for each correctly classified input they leave uncertified at a
    radius, the same bounds with the dense layer's injection box tightened by linear bounds
    through the encoder (`nemon.linear_bounds`), the larger of the two per logit difference
    (both sound: never weaker than interval). Models without a supported encoder keep the
    interval bounds."""
    logits, bounds = _interval_bounds(model, u, labels, radii, input_range)
    if not supports_linear_bounds(model):
        return logits, bounds
    right = logits.argmax(1) == labels
    for i, eps in enumerate(radii):
        open_ = right & ~_all_positive(bounds[i], labels)
        if eps == 0 or not bool(open_.any()):
            continue
        rows = open_.nonzero().squeeze(1)
        _, (tight,) = _interval_bounds(
            model, u[rows], labels[rows], [eps], input_range, injection_box=injection_bounds
        )
        bounds[i] = bounds[i].clone()
        bounds[i][rows] = torch.maximum(bounds[i][rows], tight)
    return logits, bounds


def _all_positive(bounds: Tensor, labels: Tensor) -> Tensor:
    """Per sample: every bound but the label's (which is not one) is positive."""
    return bounds.scatter(1, labels[:, None], math.inf).amin(1) > 0


def _broadcast(eta: Tensor, x: Tensor) -> Tensor:
    return eta.reshape(1, -1, *([1] * (x.dim() - 2)))


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))
