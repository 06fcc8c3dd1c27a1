"""What defines a training run: `TrainConfig` (the model's settings and `nemon.Recipe`'s, each
defined once), checked by name, and the named presets."""

from __future__ import annotations

from dataclasses import MISSING, field, fields, make_dataclass

from ..activations import ACTIVATIONS
from ..data import DATASETS
from ..errors import InputError
from ..models import ARCHITECTURES, INITIALISATIONS, MODEL_FAMILIES
from ..recipes import FIELDS as RECIPE_FIELDS
from ..recipes import RAMPS, RECIPES, Recipe
from ..settings import check_fields, field_help, setting
from ..solvers import DEFAULT_MAX_ITER, DEFAULT_TOL, SOLVERS
from ..validation import MAX_ITER, MAX_STATES, TOLERANCE, Range

__all__ = ["TrainConfig", "PRESETS", "RAMPS", "MODEL_SETTINGS_DOC"]


class _ModelSettings:
    """The model a run trains and where (the data are `_DataSettings`, the training settings
    `nemon.Recipe`'s).

    Attributes:
        model: the implicit layer's family (explicit: the ablation without feedback).
        arch: dense, conv, an encoder followed by a dense layer, or conv-stacked.
        hidden: state size (dense) or channels (conv).
        gamma: the bound on the layer's measure, below 1.
        activation: the implicit layer's activation.
        solver: the forward solver (None: the family's own).
        tol: relative residual at which solves stop (evaluation always uses it).
        residual: the stopping rule's residual: step or fixed_point.
        max_iter: iteration cap of every solve.
        device: cpu, cuda or cuda:N.
        init: ibp: Shi et al.'s initialisation; ibp-zero: also A = 0 (starts as the explicit model).
        layer_kwargs: more arguments of the layer's constructor.
    """


class _DataSettings:
    """The data a run trains and tests on.

    Attributes:
        dataset: the dataset trained and tested on.
        train_limit: use only the first N training images (None: all).
        test_limit: use only the first N test images (None: all).
    """


#: the model's settings, each with its allowed values (`nemon.settings.setting`); their help is
#: `_ModelSettings`'s
_MODEL = (
    ("model", str, setting("nemon", choices=MODEL_FAMILIES)),
    ("arch", str, setting("dense", choices=ARCHITECTURES)),
    ("hidden", int, setting(100, range=Range(int, 1, MAX_STATES))),
    ("gamma", float, setting(0.95, range=Range(float, high=1.0, high_open=True))),
    ("activation", str, setting("relu", choices=ACTIVATIONS)),
    ("solver", "str | None", setting(None, choices=tuple(SOLVERS))),
    ("tol", float, setting(DEFAULT_TOL, range=TOLERANCE)),
    ("residual", str, setting("step", choices=("step", "fixed_point"))),
    ("max_iter", int, setting(DEFAULT_MAX_ITER, range=Range(int, 1, MAX_ITER))),
    ("device", str, setting("cpu")),
    ("init", str, setting("default", choices=INITIALISATIONS)),
)
#: the data's settings (help: `_DataSettings`)
_DATA = (
    ("dataset", str, setting("mnist", choices=tuple(DATASETS))),
    ("train_limit", "int | None", setting(None, range=Range(int, 1))),
    ("test_limit", "int | None", setting(None, range=Range(int, 1))),
)
#: model settings that must be set (the others' None means "the default" or "all")
_REQUIRED = ("hidden", "max_iter", "gamma", "tol")


def _spec_field(group: str, docs):
    def make(name, kind, f):
        meta = {**f.metadata, "help": field_help(docs)[name], "group": group}
        return name, kind, field(default=f.default, metadata=meta)

    return make


def _recipe_field(f):
    """A `nemon.Recipe` field as a run setting (lists for its tuples, as configs store them),
    with the recipe's allowed values and help."""
    meta = {**f.metadata, "help": field_help(Recipe)[f.name], "group": "recipe"}
    if isinstance(f.default, tuple):
        return f.name, "list", field(default_factory=lambda d=f.default: list(d), metadata=meta)
    return f.name, f.type, field(default=f.default, metadata=meta)


def _validate(self):
    """Raise `InputError` naming the first setting out of its range; return ``self``."""
    for name in _REQUIRED:
        if getattr(self, name) is None:
            raise InputError(f"{name} must be set, got None")
    check_fields(self)
    self.recipe()  # the training settings' rules across fields are the recipe's
    if self.swa_start and self.arch.endswith("-bn"):
        raise InputError(
            f"swa_start needs an encoder without batch norm, not {self.arch!r}: the average's "
            "batch statistics would have to be measured again"
        )
    if not isinstance(self.layer_kwargs, dict):
        raise InputError(f"layer_kwargs must be a dict, got {type(self.layer_kwargs).__name__}")
    return self


def _recipe(self) -> Recipe:
    """The run's training schedule (its `nemon.Recipe` fields)."""
    return Recipe(**{name: getattr(self, name) for name in RECIPE_FIELDS})


def _section(self, group: str) -> dict:
    """The settings of one group: ``"model"``, ``"data"`` or ``"recipe"``."""
    return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["group"] == group}


_LAYER_KWARGS = field(
    default_factory=dict,
    metadata={"help": field_help(_ModelSettings)["layer_kwargs"], "group": "model"},
)

TrainConfig = make_dataclass(
    "TrainConfig",
    [_spec_field("model", _ModelSettings)(*m) for m in _MODEL]
    + [_spec_field("data", _DataSettings)(*d) for d in _DATA]
    + [_recipe_field(f) for f in fields(Recipe)]
    + [("layer_kwargs", dict, _LAYER_KWARGS)],
    namespace={
        "validate": _validate,
        "recipe": _recipe,
        "section": _section,
        "__module__": __name__,
    },
)
TrainConfig.__doc__ = (
    "Everything that defines a run, composed of three specs: the model's settings "
    "(`MODEL_SETTINGS_DOC`), the data's and the training settings of `nemon.Recipe`, whose "
    "defaults are the recipe's (each setting defined once, with its range in its field). "
    "``section('model' | 'data' | 'recipe')`` gives one of them. The ``mnist-fc`` preset is "
    "the paper's MNIST FC setting (6.2)."
)
MODEL_SETTINGS_DOC = _ModelSettings.__doc__

assert all(
    f.default is not MISSING or f.default_factory is not MISSING for f in fields(TrainConfig)
)


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
