"""l_inf attacks on any classifier: image inversion, uniform noise, FGSM and PGD.

All attacks are batched, stay in the l_inf ball of radius ``eps`` around ``u`` intersected with the
box ``[lo, hi]`` (pixel range; ``None`` disables it) and are deterministic under ``seed``. Gradient
attacks backpropagate through the implicit layer's adjoint solve like training does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "image_inversion",
    "uniform_noise",
    "fgsm",
    "pgd",
    "ATTACKS",
    "robust_accuracy",
    "accuracy_under_attack",
]

Box = tuple[float, float] | None


def _project(u: Tensor, adv: Tensor, eps: float, box: Box) -> Tensor:
    adv = torch.max(torch.min(adv, u + eps), u - eps)
    return adv if box is None else adv.clamp(*box)


def image_inversion(
    model, u: Tensor, labels: Tensor, eps: float, box: Box = (0.0, 1.0), **_
) -> Tensor:
    """Continuous image inversion (Hosseini et al., 2017; the paper's Figure 2): move every pixel
    towards its inverse ``1 - u`` by ``eps``, i.e. ``u + eps (1 - 2 u)`` (deterministic)."""
    return _project(u, u + eps * (1 - 2 * u), eps, box)


def uniform_noise(
    model, u: Tensor, labels: Tensor, eps: float, box: Box = (0.0, 1.0), seed: int = 0, **_
) -> Tensor:
    """``u + U(-eps, eps)`` per pixel, from a seeded generator."""
    g = torch.Generator(device=u.device).manual_seed(seed)
    noise = torch.rand(u.shape, generator=g, device=u.device, dtype=u.dtype) * 2 - 1
    return _project(u, u + eps * noise, eps, box)


def _loss_gradient(model, adv: Tensor, labels: Tensor) -> Tensor:
    adv = adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(adv), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)
    return grad


def fgsm(model, u: Tensor, labels: Tensor, eps: float, box: Box = (0.0, 1.0), **_) -> Tensor:
    """Fast gradient sign method: one step of size ``eps`` along ``sign(grad loss)``."""
    return _project(u, u + eps * _loss_gradient(model, u, labels).sign(), eps, box).detach()


def pgd(
    model,
    u: Tensor,
    labels: Tensor,
    eps: float,
    box: Box = (0.0, 1.0),
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    seed: int = 0,
) -> Tensor:
    """Projected gradient ascent on the cross-entropy in the l_inf ball (Madry et al., 2018).

    Each restart begins at a uniform random point of the ball (when ``random_start``); the
    returned perturbation per sample is the first that misclassifies, else the last iterate.
    """
    step_size = 2.5 * eps / steps if step_size is None else step_size
    g = torch.Generator(device=u.device).manual_seed(seed)
    best = u.clone()
    fooled = torch.zeros(len(u), dtype=torch.bool, device=u.device)
    for restart in range(restarts):
        adv = u.clone()
        if random_start and eps > 0:
            start = torch.rand(u.shape, generator=g, device=u.device, dtype=u.dtype) * 2 - 1
            adv = _project(u, u + eps * start, eps, box)
        for step in range(steps):
            adv = _project(u, adv + step_size * _loss_gradient(model, adv, labels).sign(), eps, box)
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


@torch.no_grad()
def robust_accuracy(
    model, u: Tensor, labels: Tensor, eps: float, attack: str = "pgd", **kw
) -> Tensor:
    """Per-sample: correct on ``u`` and still correct under ``attack`` at radius ``eps``."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {sorted(ATTACKS)}")
    adv = ATTACKS[attack](model, u, labels, eps, **kw)
    return (model(u).argmax(1) == labels) & (model(adv).argmax(1) == labels)


@torch.no_grad()
def accuracy_under_attack(
    model, x: Tensor, y: Tensor, eps_list, attack: str = "inversion", batch_size: int = 1000, **kw
) -> list[float]:
    """Accuracy under ``attack`` for every radius in ``eps_list`` (batched over the data)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for eps in eps_list:
        ok = 0
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            ok += int(robust_accuracy(model, xb, yb, eps, attack, **kw).sum())
        out.append(ok / len(x))
    return out
