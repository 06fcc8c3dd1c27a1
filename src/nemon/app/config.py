"""What defines a training run: `TrainConfig`, checked by name, and the named presets."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..activations import ACTIVATIONS
from ..data import DATASETS
from ..models import ARCHITECTURES, INITIALISATIONS, MODEL_FAMILIES
from ..recipes import FIELDS as RECIPE_FIELDS
from ..recipes import RAMPS, RECIPES, Recipe
from ..solvers import DEFAULT_MAX_ITER, DEFAULT_TOL, SOLVERS
from ..validation import check_choice, check_setting

__all__ = ["TrainConfig", "PRESETS", "RAMPS"]


@dataclass
class TrainConfig:
    """Everything that defines a run; the defaults are the paper's MNIST FC setting (6.2) as
    earlier runs recorded it (the ``mnist-fc`` preset also sets ``solve_tol=1e-2``)."""

    model: str = "nemon"
    arch: str = "dense"
    dataset: str = "mnist"
    hidden: int = 100
    gamma: float = 0.95
    activation: str = "relu"
    solver: str | None = None
    tol: float = DEFAULT_TOL
    residual: str = "step"
    max_iter: int = DEFAULT_MAX_ITER
    epochs: int = 10
    batch_size: int = 300
    lr: float = 1.5e-2
    lam: float = 0.0
    reg_kind: str = "product"
    seed: int = 0
    device: str = "cpu"
    train_limit: int | None = None
    test_limit: int | None = None
    checkpoint_every: int = 50
    cert_eps: float = 0.0
    cert_weight: float = 0.5
    adv_steps: int = 0  # > 0: PGD steps of the adversarial term that replaces the clean one
    robust_mix: str = "loss"  # or "logits": CC-IBP's mix of the adversarial and interval terms
    box_shrink: float = 1.0  # < 1: SABR's small box around the PGD point (radius fraction)
    cert_ramp_epochs: int = 1
    warmup_epochs: int = 0  # clean-only epochs before the radius starts to grow
    ramp: str = "linear"  # or "smooth": cubic smoothstep of radius and robust weight
    lr_milestones: list = field(default_factory=list)  # epochs at which lr *= lr_decay
    lr_decay: float = 0.2
    grad_clip: float = 0.0  # max gradient norm (0: off)
    init: str = "default"  # or "ibp": the IBP-friendly initialisation of Shi et al. (2021)
    swa_start: int = 0  # > 0: the model is the average of the weights at the ends of epochs >= this
    cert_eval_eps: list = field(default_factory=list)  # certified accuracy logged each epoch
    cert_eval_limit: int = 1000  # on the first N test images
    solve_tol: float | None = None  # training solves' tolerance (None: tol); evaluation uses tol
    tune_splitting_step: bool = True  # MON: its step tuned twice an epoch (MON's tune_alpha)
    layer_kwargs: dict = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first setting out of its range; return ``self``."""
        check_choice("model", self.model, MODEL_FAMILIES)
        check_choice("arch", self.arch, ARCHITECTURES)
        check_choice("init", self.init, INITIALISATIONS)
        check_choice("dataset", self.dataset, tuple(DATASETS))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("residual", self.residual, ("step", "fixed_point"))
        if self.solver is not None:
            check_choice("solver", self.solver, tuple(SOLVERS))
        self.recipe()  # the training settings: their ranges are the recipe's (one table)
        for name in ("hidden", "max_iter", "gamma", "tol"):
            if getattr(self, name) is None:
                raise ValueError(f"{name} must be set, got None")
            check_setting(name, getattr(self, name))
        for name in ("train_limit", "test_limit"):  # None: the whole split
            if getattr(self, name) is not None:
                check_setting(name, getattr(self, name))
        if self.swa_start and self.arch.endswith("-bn"):
            raise ValueError(
                f"swa_start needs an encoder without batch norm, not {self.arch!r}: the average's "
                "batch statistics would have to be measured again"
            )
        if not isinstance(self.layer_kwargs, dict):
            raise ValueError(f"layer_kwargs must be a dict, got {type(self.layer_kwargs).__name__}")
        return self

    def recipe(self) -> Recipe:
        """The run's training schedule (the fields it shares with `nemon.Recipe`)."""
        return Recipe(**{name: getattr(self, name) for name in RECIPE_FIELDS})


def _preset(recipe: str, **model) -> dict:
    """A preset: a model (TrainConfig fields) trained with one of `nemon.RECIPES`."""
    return {**RECIPES[recipe].as_dict(), **model}


_CERTIFIED_MODEL = {"arch": "conv-small", "hidden": 100, "gamma": 0.5}

PRESETS: dict[str, dict] = {
    # the paper's MNIST FC network (section 6.2) and its gamma = 0.05 variant
    "mnist-fc": _preset("paper"),
    "mnist-fc-gamma005": _preset("paper", gamma=0.05),
    # the paper's CIFAR-10 conv network (section 6.3)
    "cifar10-conv": _preset(
        "paper", arch="conv", dataset="cifar10", hidden=81, batch_size=256, lr=1e-3, epochs=40
    ),
    # certified models: conv encoder + NEMON dense layer, interval-trained. Fast at 0.1:
    "mnist-cert-0.1": _preset("ibp-0.1", **_CERTIFIED_MODEL),
    "mnist-cert-0.3": _preset("ibp-0.3", **_CERTIFIED_MODEL),
    # best single model at 0.1: the conv-medium encoder, IBP initialisation, 256 states, MTL-IBP
    "mnist-cert-medium-mtl-h256-0.1": _preset(
        "mtl-ibp-0.1", **{**_CERTIFIED_MODEL, "arch": "conv-medium", "init": "ibp", "hidden": 256}
    ),
    # the same model trained with CC-IBP (logit mix) and with SABR (small boxes)
    "mnist-cert-medium-ccibp-h256-0.1": _preset(
        "cc-ibp-0.1", **{**_CERTIFIED_MODEL, "arch": "conv-medium", "init": "ibp", "hidden": 256}
    ),
    "mnist-cert-medium-sabr-h256-0.1": _preset(
        "sabr-0.1", **{**_CERTIFIED_MODEL, "arch": "conv-medium", "init": "ibp", "hidden": 256}
    ),
    # the conv path of section 6.3 on Fashion-MNIST, small enough for a CPU
    "fashion-conv-quick": _preset(
        "paper", arch="conv", dataset="fashion-mnist", hidden=16, batch_size=128, lr=1e-3, epochs=1
    ),
}
