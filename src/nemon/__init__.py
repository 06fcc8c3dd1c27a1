"""nemon: robust implicit neural networks via non-Euclidean (weighted l_inf) contraction."""

from . import contraction
from .activations import Activation, LeakyReLU, ReLU, Tanh, get_activation
from .certificates import (
    CERTIFICATES,
    CertificateWarning,
    certificate_obstacle,
    certify,
    margin_bounds,
)
from .conv_layers import MONConv2d, NEMONConv2d
from .ensemble import Ensemble
from .implicit import (
    ADJOINTS,
    Equilibrium,
    ImplicitAdjoint,
    ImplicitSolve,
    JacobianFree,
    implicit_solve,
)
from .layers import ExplicitDense, IDLDense, ImplicitLayer, MONDense, NEMONDense
from .lipschitz import (
    certified_lipschitz,
    certified_pairwise,
    lipschitz_bound,
    lipschitz_regularizer,
    output_bound,
    pairwise_bounds,
    state_bound,
)
from .models import ARCHITECTURES, MODEL_FAMILIES, Classifier, build_model
from .norms import (
    mu_1,
    mu_2,
    mu_inf,
    norm_inf,
    norm_inf_from_input,
    norm_inf_plain,
    norm_inf_to_output,
    perron_frobenius,
    vector_norm_inf,
)
from .parametrize import (
    IDLConstraint,
    MONConstraint,
    MuInfConstraint,
    conv_shift,
    mu_inf_param,
    mu_inf_right_inverse,
)
from .pretrained import load_pretrained, pretrained_names
from .solvers import (
    SOLVERS,
    ConvergenceWarning,
    FixedPointSystem,
    SolverOptions,
    SolverStats,
    alpha_star,
    contraction_factor,
    solve,
)

__version__ = "0.1.0"

__all__ = [
    "contraction",
    "Activation",
    "LeakyReLU",
    "ReLU",
    "Tanh",
    "get_activation",
    "Equilibrium",
    "ImplicitSolve",
    "ImplicitAdjoint",
    "JacobianFree",
    "ADJOINTS",
    "implicit_solve",
    "IDLDense",
    "ImplicitLayer",
    "MONDense",
    "MONConv2d",
    "NEMONConv2d",
    "NEMONDense",
    "certified_lipschitz",
    "certified_pairwise",
    "certify",
    "margin_bounds",
    "certificate_obstacle",
    "CertificateWarning",
    "CERTIFICATES",
    "lipschitz_bound",
    "lipschitz_regularizer",
    "output_bound",
    "pairwise_bounds",
    "state_bound",
    "MODEL_FAMILIES",
    "ARCHITECTURES",
    "ExplicitDense",
    "load_pretrained",
    "pretrained_names",
    "Classifier",
    "Ensemble",
    "build_model",
    "mu_1",
    "mu_2",
    "mu_inf",
    "norm_inf",
    "norm_inf_from_input",
    "norm_inf_plain",
    "norm_inf_to_output",
    "perron_frobenius",
    "vector_norm_inf",
    "IDLConstraint",
    "MONConstraint",
    "MuInfConstraint",
    "conv_shift",
    "mu_inf_param",
    "mu_inf_right_inverse",
    "SOLVERS",
    "ConvergenceWarning",
    "FixedPointSystem",
    "SolverOptions",
    "SolverStats",
    "alpha_star",
    "contraction_factor",
    "solve",
    "__version__",
]
