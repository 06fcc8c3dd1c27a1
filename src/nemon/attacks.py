"""l_inf attacks on any classifier: image inversion, uniform noise, FGSM and PGD.

All attacks are batched, stay in the l_inf ball of radius ``eps`` around ``u`` intersected with
``input_range`` (the box ``(lo, hi)`` the data lives in, `nemon.ranges`; ``None``: unbounded),
refuse inputs outside that range, and are deterministic under ``seed``. Gradient
attacks backpropagate through the implicit layer's adjoint solve like training does.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError
from .modes import evaluation_mode
from .norms import round_to
from .progress import Progress
from .ranges import IMAGES, InputRange, check_inside
from .validation import check_integer, check_number

__all__ = [
    "image_inversion",
    "uniform_noise",
    "fgsm",
    "pgd",
    "project",
    "ATTACKS",
    "robust_accuracy",
    "accuracy_under_attack",
]


def _check(name: str, u: Tensor, eps: float, input_range: InputRange) -> float:
    """The radius as a float, after one line for what no point of the ball around ``u``
    intersected with the range can answer: a non-finite input or radius, a range that is not
    one, or an input outside the range (projecting would move it further than ``eps``)."""
    if not isinstance(eps, bool):
        try:
            eps = float(eps)  # NumPy numbers and 0-d tensors too
        except (TypeError, ValueError):
            pass
    check_number(f"{name} eps", eps, low=0.0)
    if not u.is_floating_point():
        raise InputError(f"{name} expects a floating-point input u, got {u.dtype}")
    if u.numel() == 0:
        return eps
    low, high = (float(v) for v in torch.stack((u.amin(), u.amax())))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError(f"{name} input u contains NaN or inf (values in [{low}, {high}])")
    check_inside(u, input_range, f"{name} input_range")
    return eps


def _ball(u: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``[u - eps, u + eps]`` with each end rounded inwards, so that every point between them is
    within ``eps`` of ``u`` in float64 (``u + eps`` in float32 rounds ``eps`` too, and went out
    by more than a unit at ``u ~ 0.1``)."""
    wide = u.to(torch.float64)
    lo, hi = round_to(wide - eps, u.dtype, "up"), round_to(wide + eps, u.dtype, "down")
    # in float64 itself, the rounded sum may still lie half a unit out: one step in
    lo = torch.where(wide - lo.to(torch.float64) > eps, torch.nextafter(lo, u), lo)
    hi = torch.where(hi.to(torch.float64) - wide > eps, torch.nextafter(hi, u), hi)
    return lo, hi


def project(u: Tensor, adv: Tensor, eps: float, input_range: InputRange) -> Tensor:
    """The nearest point of the ball around ``u`` intersected with the range (non-empty:
    `_check`)."""
    lo, hi = _ball(u, eps)
    if input_range is not None:  # its ends rounded inwards to u's dtype (0.3 is no float32)
        ends = torch.tensor(input_range, dtype=torch.float64, device=u.device)
        low, high = round_to(ends[:1], u.dtype, "up"), round_to(ends[1:], u.dtype, "down")
        lo, hi = torch.maximum(lo, low), torch.minimum(hi, high)
    return torch.max(torch.min(adv, hi), lo)


def image_inversion(
    model, u: Tensor, labels: Tensor, eps: float, input_range: InputRange = IMAGES, seed: int = 0
) -> Tensor:
    """Continuous image inversion (Hosseini et al., 2017; the paper's Figure 2): move every pixel
    towards its inverse ``1 - u`` by ``eps``, i.e. ``u + eps (1 - 2 u)`` (deterministic:
    ``seed`` is accepted, as by every attack, and unused)."""
    eps = _check("image_inversion", u, eps, input_range)
    return project(u, u + eps * (1 - 2 * u), eps, input_range)


def uniform_noise(
    model,
    u: Tensor,
    labels: Tensor,
    eps: float,
    input_range: InputRange = IMAGES,
    seed: int = 0,
) -> Tensor:
    """``u + U(-eps, eps)`` per pixel, from a seeded generator."""
    eps = _check("uniform_noise", u, eps, input_range)
    g = torch.Generator(device=u.device).manual_seed(seed)
    noise = torch.rand(u.shape, generator=g, device=u.device, dtype=u.dtype) * 2 - 1
    return project(u, u + eps * noise, eps, input_range)


def _loss_gradient(model, adv: Tensor, labels: Tensor) -> Tensor:
    adv = adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(adv), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)
    return grad


def fgsm(
    model, u: Tensor, labels: Tensor, eps: float, input_range: InputRange = IMAGES, seed: int = 0
) -> Tensor:
    """Fast gradient sign method: one step of size ``eps`` along ``sign(grad loss)``
    (deterministic: ``seed`` is unused)."""
    eps = _check("fgsm", u, eps, input_range)
    return project(u, u + eps * _loss_gradient(model, u, labels).sign(), eps, input_range).detach()


def pgd(
    model,
    u: Tensor,
    labels: Tensor,
    eps: float,
    input_range: InputRange = IMAGES,
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    seed: int = 0,
) -> Tensor:
    """Projected gradient ascent on the cross-entropy in the l_inf ball (Madry et al., 2018).

    Each restart begins at a uniform random point of the ball (when ``random_start``); the
    returned perturbation per sample is the first that misclassifies, else the last iterate.
    Inputs with NaN or inf, or outside ``input_range``, are refused in one line.
    """
    eps = _check("pgd", u, eps, input_range)
    check_integer("pgd steps", steps, 1)
    check_integer("pgd restarts", restarts, 1)
    if step_size is not None:
        check_number("pgd step_size", step_size, low=0.0)
    step_size = 2.5 * eps / steps if step_size is None else step_size
    g = torch.Generator(device=u.device).manual_seed(seed)
    best = u.clone()
    fooled = torch.zeros(len(u), dtype=torch.bool, device=u.device)
    for restart in range(restarts):
        adv = u.clone()
        if random_start and eps > 0:
            start = torch.rand(u.shape, generator=g, device=u.device, dtype=u.dtype) * 2 - 1
            adv = project(u, u + eps * start, eps, input_range)
        for step in range(steps):
            adv = project(
                u, adv + step_size * _loss_gradient(model, adv, labels).sign(), eps, input_range
            )
            if restart == restarts - 1 and step == steps - 1:
                break  # the final iterate goes to every sample still unfooled: no check needed
            with torch.no_grad():
                wrong = model(adv).argmax(1) != labels
            new = wrong & ~fooled
            best[new] = adv[new]
            fooled |= wrong
        best[~fooled] = adv[~fooled]
    return best.detach()


ATTACKS = {"inversion": image_inversion, "noise": uniform_noise, "fgsm": fgsm, "pgd": pgd}
#: PGD's own settings: the other attacks ignore them (any other unknown setting is an error)
PGD_SETTINGS = ("steps", "step_size", "restarts", "random_start", "seed")


@torch.no_grad()
def robust_accuracy(
    model, u: Tensor, labels: Tensor, eps: float, attack: str = "pgd", **kw
) -> Tensor:
    """Per-sample: correct on ``u`` and still correct under ``attack`` at radius ``eps``."""
    if attack not in ATTACKS:
        raise InputError(f"unknown attack {attack!r}; choose one of {sorted(ATTACKS)}")
    attack_fn = ATTACKS[attack]
    accepted = inspect.signature(attack_fn).parameters
    kw = {k: v for k, v in kw.items() if k in accepted or k not in PGD_SETTINGS}
    adv = attack_fn(model, u, labels, eps, **kw)
    return (model(u).argmax(1) == labels) & (model(adv).argmax(1) == labels)


@torch.no_grad()
def accuracy_under_attack(
    model,
    x: Tensor,
    y: Tensor,
    eps_list,
    attack: str = "inversion",
    batch_size: int = 1000,
    progress: bool | None = None,
    **kw,
) -> list[float]:
    """Accuracy under ``attack`` for every radius in ``eps_list`` (batched over the data), in
    eval mode (the model's own modes are restored after). ``progress``: see
    `nemon.progress.Progress` (None: a bar on a terminal, a line every 30 s otherwise)."""
    device = next(model.parameters()).device
    out = []
    with evaluation_mode(model), Progress(len(eps_list) * len(x), attack, "input", progress) as bar:
        for eps in eps_list:
            ok = 0
            for start in range(0, len(x), batch_size):
                xb = x[start : start + batch_size].to(device)
                yb = y[start : start + batch_size].to(device)
                ok += int(robust_accuracy(model, xb, yb, eps, attack, **kw).sum())
                bar.update(len(xb), f"eps {eps:g}")
            out.append(ok / len(x))
    return out
