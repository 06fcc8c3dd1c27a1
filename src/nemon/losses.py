"""What a training step minimises: the recipe's loss (clean, adversarial, interval and
Lipschitz terms) and its schedules (radius ramp, robust weight, learning rate)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .attacks import pgd
from .intervals import interval_loss, logit_difference_bounds, shrunk_box
from .layers import ImplicitLayer
from .ranges import IMAGES
from .recipes import Recipe

__all__ = [
    "ramp_progress",
    "training_radius",
    "learning_rate",
    "recipe_loss",
    "adversarial_points",
    "training_tolerance",
]


def ramp_progress(recipe: Recipe, epoch: int, step: int, n_batches: int) -> float:
    """Progress in [0, 1] of certified training: 0 during warm-up, then over the ramp epochs.

    ``ramp="smooth"`` is the cubic smoothstep ``3 t^2 - 2 t^3``: a slow start, as the radius
    schedules of Shi et al. (2021), without the kink of the linear ramp at its end.
    """
    done = (epoch - recipe.warmup_epochs) * n_batches + step
    t = min(1.0, max(0.0, done / max(recipe.cert_ramp_epochs * n_batches, 1)))
    return t * t * (3 - 2 * t) if recipe.ramp == "smooth" else t


def training_radius(recipe: Recipe, epoch: int, step: int, n_batches: int) -> float:
    """The certified-training radius at this step (see `ramp_progress`)."""
    if recipe.cert_eps <= 0 or epoch < recipe.warmup_epochs:
        return 0.0
    return recipe.cert_eps * ramp_progress(recipe, epoch, step, n_batches)


def learning_rate(recipe: Recipe, epoch: int) -> float:
    """``lr`` times ``lr_decay`` for each milestone reached."""
    return recipe.lr * recipe.lr_decay ** sum(1 for m in recipe.lr_milestones if epoch >= m)


def recipe_loss(
    model, raw, recipe: Recipe, xb, yb, eps: float, progress: float, step=0, input_range=IMAGES
):
    """See `_recipe_loss`; every parametrized weight (eq. (17) and the others) is built once for
    the step's passes (clean, adversarial, interval, regulariser), not once for each."""
    with parametrize.cached():
        _build_parametrized(raw)
        return _recipe_loss(model, raw, recipe, xb, yb, eps, progress, step, input_range)


def _build_parametrized(model: nn.Module) -> None:
    """Fill the parametrization cache with autograd on: a pass without autograd (the metric's
    clean logits) must not be the one that caches a weight the loss differentiates."""
    with torch.enable_grad():
        for m in model.modules():
            if parametrize.is_parametrized(m):
                for name in m.parametrizations:
                    getattr(m, name)


def _recipe_loss(model, raw, recipe: Recipe, xb, yb, eps, progress, step=0, input_range=IMAGES):
    """``(logits, loss)``: the clean cross-entropy mixed with the worst-case (interval) loss,
    whose weight grows with the radius from 0 to ``cert_weight`` (the clean/robust mix of Gowal
    et al., 2018). At weight 1 the clean pass runs without autograd (its logits only feed the
    accuracy metric); under DDP it keeps autograd, which the gradient synchronisation needs.

    With ``adv_steps > 0`` and a radius, the clean term is taken at a PGD point of the same ball
    and the logits returned are those at the PGD points; ``robust_mix="loss"`` mixes the two
    cross-entropies (MTL-IBP), ``"logits"`` the adversarial logit differences with their interval
    lower bounds before one cross-entropy (CC-IBP, De Palma et al., 2024). ``box_shrink < 1``
    bounds SABR's small box around the PGD point instead of the ball (`nemon.intervals.shrunk_box`).
    ``model`` is what runs the forward pass (DDP's wrapper), ``raw`` the classifier itself;
    balls, boxes and PGD points lie in ``input_range`` (`nemon.ranges`)."""
    weight = 0.0
    if eps > 0:
        weight = recipe.cert_weight * progress if recipe.ramp == "smooth" else recipe.cert_weight
    pure = weight >= 1.0 and model is raw  # the clean term has no weight: metrics only
    adv = box = None
    if recipe.adv_steps > 0 and eps > 0 and (not pure or recipe.box_shrink < 1):
        adv = adversarial_points(raw, xb, yb, eps, recipe.adv_steps, step, input_range)
        if recipe.box_shrink < 1:
            box = shrunk_box(xb, adv, eps, recipe.box_shrink, input_range)
    if eps <= 0:
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
    elif pure:
        with torch.no_grad():
            logits = model(xb)
        loss = interval_loss(raw, xb, yb, eps, input_range, box=box)
    else:
        logits = model(xb if adv is None else adv)
        loss = _mixed_loss(raw, recipe, logits, xb, yb, eps, weight, box, input_range)
        logits = logits if adv is None else logits.detach()
    if recipe.lam > 0:
        loss = loss + recipe.lam * raw.lipschitz_penalty(recipe.reg_kind)
    return logits, loss


def _mixed_loss(raw, recipe: Recipe, logits, xb, yb, eps, weight, box, input_range) -> Tensor:
    """``(1 - w) CE(logits) + w CE(interval)`` (``robust_mix="loss"``), or the cross-entropy of
    the mixed logit differences ``(1 - w) (y_label - y_j) + w (their lower bounds)``
    (``"logits"``); the interval term is skipped at weight 0."""
    if weight <= 0:
        return F.cross_entropy(logits, yb)
    if recipe.robust_mix == "loss":
        robust = interval_loss(raw, xb, yb, eps, input_range, box=box)
        return (1 - weight) * F.cross_entropy(logits, yb) + weight * robust
    bounds = logit_difference_bounds(raw, xb, yb, eps, input_range, box=box)
    differences = logits.gather(1, yb[:, None]) - logits  # 0 at the label, as the bounds
    return F.cross_entropy(-((1 - weight) * differences + weight * bounds), yb)


def adversarial_points(
    raw, xb: Tensor, yb: Tensor, eps: float, steps: int, seed: int, input_range=IMAGES
) -> Tensor:
    """PGD points in the l_inf ball of radius ``eps`` (within ``input_range``) from a random
    start.

    The attack runs in eval mode (batch norm neither records the attack's batches nor moves its
    running statistics); training mode is restored after."""
    raw.eval()
    try:
        return pgd(raw, xb, yb, eps, input_range, steps=steps, seed=seed)
    finally:
        raw.train()


@contextlib.contextmanager
def training_tolerance(model: nn.Module, tol: float | None):
    """Every implicit layer solves to ``tol`` inside the block (None: as it is)."""
    with contextlib.ExitStack() as stack:
        if tol is not None:
            for layer in model.modules():
                if isinstance(layer, ImplicitLayer):
                    stack.enter_context(layer.solver_settings(tol=tol))
        yield
