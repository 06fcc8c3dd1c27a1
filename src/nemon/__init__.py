"""nemon: robust implicit neural networks via non-Euclidean (weighted l_inf) contraction.

The public surface: layers, models, training, certificates, attacks, export and shipped models.
Everything else (parametrizations, operators, solver steps, adjoints, norm helpers, interval
arithmetic) lives in its submodule: ``nemon.norms``, ``nemon.parametrize``, ``nemon.solvers``,
``nemon.implicit``, ``nemon.explicit``, ``nemon.intervals``, ``nemon.lipschitz``, ...
"""

from . import contraction, data, explicit, export, intervals, lipschitz, norms, solvers  # noqa: F401
from .attacks import accuracy_under_attack, pgd
from .certificates import CertificateWarning, certificate_obstacle, certify, margin_bounds
from .conv_layers import MONConv2d, NEMONConv2d
from .ensemble import Ensemble
from .errors import InputError
from .evaluation import evaluate
from .export import export_onnx
from .intervals import interval_loss
from .layers import ExplicitDense, IDLDense, ImplicitLayer, MONDense, NEMONDense
from .modelfile import load, save
from .models import Classifier, build_model
from .norms import mu_inf, norm_inf
from .pretrained import load_pretrained, pretrained_names
from .recipes import RECIPES, Recipe
from .solve_log import SolveLog
from .solvers import ConvergenceWarning, SolverOptions, alpha_star, contraction_factor, solve
from .training import TrainingDiverged, fit

__version__ = "0.1.0"


def __getattr__(name: str):
    """`verify` and `VerificationResult` load on first use: they need the ``verify`` extra
    (HiGHS and SciPy), which the rest of the library does not."""
    if name in ("verify", "VerificationResult"):
        from . import verification

        return getattr(verification, name)
    raise AttributeError(f"module 'nemon' has no attribute {name!r}")


__all__ = [
    # layers and models
    "NEMONDense",
    "NEMONConv2d",
    "MONDense",
    "MONConv2d",
    "IDLDense",
    "ExplicitDense",
    "ImplicitLayer",
    "Classifier",
    "Ensemble",
    "build_model",
    "save",
    "load",
    # training
    "fit",
    "Recipe",
    "RECIPES",
    "evaluate",
    "interval_loss",
    "TrainingDiverged",
    # certificates and attacks
    "certify",
    "margin_bounds",
    "certificate_obstacle",
    "CertificateWarning",
    "verify",
    "VerificationResult",
    "pgd",
    "accuracy_under_attack",
    # shipped models and export
    "load_pretrained",
    "pretrained_names",
    "export_onnx",
    # solving and the theory's constants
    "solve",
    "SolverOptions",
    "SolveLog",
    "ConvergenceWarning",
    "InputError",
    "mu_inf",
    "norm_inf",
    "alpha_star",
    "contraction_factor",
    "__version__",
]
