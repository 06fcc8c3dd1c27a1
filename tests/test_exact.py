"""Closed-form cases: bounds, certificates and error bounds checked against exact values.

Each test is built so that a plausible mistake (a factor dropped, a charge skipped, a box
shrunk) makes it fail: the quantities are tight here, not 4x-400x loose.
"""

import math

import pytest
import torch

import nemon
from nemon.intervals import interval_equilibrium

DT = torch.float64


def scalar_classifier(a=0.5, b=1.0, family="nemon", error_tol=1e-13):
    """``x* = relu(a x* + b u) = b u / (1 - a)`` for ``u >= 0``; logits ``(1 - x, x)``.

    Label 0 holds while ``x* < 1/2``, i.e. ``u < (1 - a) / (2 b)``: the exact robust radius of
    ``u`` is ``(1 - a) / (2 b) - u``, and for ``a >= 0`` every certificate should reach it, less
    what the model as it runs may be off (``error_tol``, tiny here).
    """
    layer = {"nemon": nemon.NEMONDense, "idl": nemon.IDLDense}[family](
        1, 1, gamma=0.9, activation="relu", tol=1e-12, max_iter=5000, error_tol=error_tol
    ).double()
    with torch.no_grad():
        layer.A = torch.tensor([[a]], dtype=DT)
        layer.B.weight.fill_(b)
        layer.B.bias.zero_()
    model = nemon.Classifier(layer, 2).double()
    with torch.no_grad():
        model.readout.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        model.readout.bias.copy_(torch.tensor([1.0, 0.0]))
    return model


def exact_radius(u, a=0.5, b=1.0):
    return (1 - a) / (2 * b) - u


@pytest.mark.parametrize("family", ["nemon", "idl"])
@pytest.mark.parametrize("method", nemon.certificates.CERTIFICATES)
def test_certificates_reach_the_exact_radius_and_not_beyond(family, method):
    model = scalar_classifier(family=family)
    u = torch.tensor([[0.05], [0.1], [0.2]], dtype=DT)
    labels = torch.zeros(3, dtype=torch.long)
    radius = exact_radius(u.squeeze(1))
    for i in range(3):
        r = float(radius[i])
        below = nemon.certify(
            model, u[i : i + 1], labels[:1], r * (1 - 1e-6), method, input_range=None
        )
        above = nemon.certify(
            model, u[i : i + 1], labels[:1], r * (1 + 1e-6), method, input_range=None
        )
        assert bool(below) and not bool(above), (method, i)


def test_lipschitz_bound_is_exact_for_the_scalar_model():
    model = scalar_classifier(a=0.5, b=2.0)
    assert float(model.lipschitz_bound()) == pytest.approx(2.0 / 0.5 * 1.0, rel=1e-12)
    terms = model.layer.lipschitz_terms()
    pair = nemon.lipschitz.pairwise_bounds(terms, model.readout.weight)
    assert float(pair[0, 1]) == pytest.approx(2.0 / 0.5 * 2.0, rel=1e-12)


def test_loose_solve_charges_its_error():
    """Solved loosely from 0, x_k < x*: the computed margin is too large; the charge fixes it."""
    model = scalar_classifier(a=0.9, b=1.0)
    u, labels = torch.tensor([[0.01]], dtype=DT), torch.zeros(1, dtype=torch.long)
    r = float(exact_radius(0.01, a=0.9))
    for method in nemon.certificates.CERTIFICATES:
        with pytest.warns(nemon.ConvergenceWarning):
            with model.layer.solver_settings(max_iter=8, check_every=1, warn=True):
                above = nemon.certify(
                    model, u, labels, r * 1.01, method, input_range=None, solve_tol=None
                )
        assert not bool(above), method
        with model.layer.solver_settings(tol=1e-3):
            below = nemon.certify(
                model, u, labels, r * 0.5, method, input_range=None, solve_tol=None
            )
        assert bool(below), method


def stacked_scalar_classifier(a1=0.9, a2=0.5):
    """An implicit layer inside the encoder: ``w* = relu(a1 w* + u) = u / (1 - a1)``, doubled
    (``v = 2 w``), then ``x* = relu(a2 x* + v) = v / (1 - a2)``, logits ``(1 - x, x)``: label 0
    holds while ``u < (1 - a1)(1 - a2) / 4``."""
    inner = nemon.NEMONDense(1, 1, gamma=0.95, tol=1e-12, max_iter=5000).double()
    outer = nemon.NEMONDense(1, 1, gamma=0.95, tol=1e-12, max_iter=5000).double()
    for layer, a in ((inner, a1), (outer, a2)):
        with torch.no_grad():
            layer.A = torch.tensor([[a]], dtype=DT)
            layer.B.weight.fill_(1.0)
            layer.B.bias.zero_()
    double = torch.nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        double.weight.fill_(2.0)
    encoder = torch.nn.Sequential(inner, double)
    model = nemon.Classifier(outer, 2, encoder=encoder, input_shape=(1,)).double()
    with torch.no_grad():
        model.readout.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        model.readout.bias.copy_(torch.tensor([1.0, 0.0]))
    return model, inner


def test_a_loose_inner_solve_charges_its_error():
    """The inner layer solved loosely from 0 (v_k < v*), the outer one tightly: the computed
    margin is too large by what the inner error moves the state; every certificate must charge
    it (and did not before: only the outer layer's error was)."""
    model, inner = stacked_scalar_classifier()
    u, labels = torch.tensor([[0.01]], dtype=DT), torch.zeros(1, dtype=torch.long)
    r = (1 - 0.9) * (1 - 0.5) / 4 - 0.01
    for method in nemon.certificates.CERTIFICATES:
        with pytest.warns(nemon.ConvergenceWarning):
            with inner.solver_settings(max_iter=8, check_every=1, warn=True):
                above = nemon.certify(
                    model, u, labels, r * 1.01, method, input_range=None, solve_tol=None
                )
        assert not bool(above), method
        below = nemon.certify(model, u, labels, r * 0.99, method, input_range=None)
        assert bool(below), method


def test_a_posteriori_error_bound_is_tight_and_sound():
    """Linear scalar ``x = 0.9 x + z``: the bound ``|x - F(x)| / (1 - mu)`` is the exact error
    at the checked iterate, and the returned next iterate is closer by the factor 0.9."""
    z = torch.tensor([[1.0], [3.0]], dtype=DT)
    system = nemon.solvers.FixedPointSystem(
        matvec=lambda x: 0.9 * x,
        z=z,
        phi=nemon.activations.get_activation("identity"),
        a_diagonal=torch.tensor([0.9], dtype=DT),
        measure=0.9,
        norm=nemon.solvers.weighted_inf_norm(None),
    )
    opts = nemon.SolverOptions(method="averaged", tol=1e-15, max_iter=12, warn=False)
    x, stats = nemon.solve(system, None, opts)
    true_error = (x - z / 0.1).abs().squeeze(1)
    assert torch.all(stats.error_bound >= true_error)
    assert torch.all(stats.error_bound <= true_error / 0.9 * (1 + 1e-9))


def test_fixed_point_residual_is_what_the_solver_claims():
    """``residual="fixed_point"`` stops on ||F(x) - x|| / ||F(x)||, checked here independently
    on systems whose step residual is 20x smaller (alpha* = 0.05)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        T = torch.randn(6, 6, generator=g, dtype=DT)
        A = nemon.parametrize.mu_inf_param(T, 0.3)
        A = A - 19.0 * torch.eye(6, dtype=DT)  # diagonals near -19: alpha* ~ 0.05
        z = torch.randn(4, 6, generator=g, dtype=DT)
        system = nemon.solvers.FixedPointSystem(
            matvec=lambda x, A=A: x @ A.T,
            z=z,
            phi=nemon.activations.get_activation("relu"),
            a_diagonal=torch.diagonal(A),
            measure=float(nemon.mu_inf(A)),
        )
        for method in ("averaged", "diagonal", "anderson"):
            opts = nemon.SolverOptions(method=method, tol=1e-6, residual="fixed_point")
            x, stats = nemon.solve(system, None, opts)
            fx = system(x)
            assert float((fx - x).norm() / fx.norm()) <= 1e-6, method


def test_two_unit_embedding_box_contains_the_exact_range():
    """Negative coupling: the exact range of x* over a box is attained at vertices (linear regime);
    the embedding box must contain it (dropping the coupling does not)."""
    layer = nemon.NEMONDense(2, 2, gamma=0.5, activation="relu", tol=1e-12).double()
    with torch.no_grad():
        layer.A = torch.tensor([[-0.5, -0.8], [-0.8, -0.5]], dtype=DT)
        layer.B.weight.copy_(torch.eye(2, dtype=DT))
        layer.B.bias.fill_(5.0)  # every state stays active on the box
    u, eps = torch.zeros(1, 2, dtype=DT), 0.5
    x_lo, x_hi, _ = interval_equilibrium(layer, u - eps, u + eps)
    with torch.no_grad():
        vertices = torch.tensor([[s, t] for s in (-eps, eps) for t in (-eps, eps)], dtype=DT)
        xs = layer(vertices)
    assert torch.all(xs >= x_lo - 1e-9) and torch.all(xs <= x_hi + 1e-9)
    assert float((xs.amax(0) - xs.amin(0)).max()) > 0.5  # a real spread to contain


def test_mon_linf_bound_needs_the_input_dimension_factor():
    """``x = relu(gamma x + 1^T u)`` with r = 4 inputs: the exact l_inf constant is 4 / (1 - gamma),
    twice the l_2 bound ``||B||_2 / (1 - gamma)``; the sqrt(r) factor restores soundness."""
    layer = nemon.MONDense(4, 1, gamma=0.5, activation="relu", tol=1e-12).double()
    with torch.no_grad():
        layer.parametrizations.A.original0.zero_()  # W = 0: A = gamma
        layer.parametrizations.A.original1.zero_()
        layer.B.weight.fill_(1.0)
        layer.B.bias.fill_(1.0)
    terms = layer.lipschitz_terms()
    bound = float(nemon.lipschitz.state_bound(terms)) * terms.input_dim_factor
    u = torch.zeros(1, 4, dtype=DT)
    with torch.no_grad():
        slope = float((layer(u + 1e-3) - layer(u)).abs().max()) / 1e-3
    assert slope == pytest.approx(4 / 0.5, rel=1e-6)
    assert bound >= slope * (1 - 1e-9)


def test_conv_input_norm_is_exact_on_an_interior_pixel():
    """Zero kernel (A = gamma I): x = relu(B u + b) / (1 - gamma), so the l_inf input-to-state
    constant is sum |input kernel| / (1 - gamma), attained at an interior pixel."""
    layer = nemon.NEMONConv2d(1, 1, 5, kernel_size=3, gamma=0.5, pool=5, tol=1e-12).double()
    with torch.no_grad():
        layer.kernel.zero_()
        layer.input_kernel.copy_(torch.randn(1, 1, 3, 3, dtype=DT))
        layer.input_bias.fill_(10.0)
    eps = 1e-3
    u = torch.zeros(1, 1, 5, 5, dtype=DT)
    du = torch.zeros_like(u)
    du[0, 0, 1:4, 1:4] = eps * torch.sign(layer.input_kernel.detach()[0, 0])
    with torch.no_grad():
        change = float((layer(u + du) - layer(u))[0, 0, 2, 2].abs())
    bound = float(nemon.lipschitz.state_bound(layer.lipschitz_terms())) * eps
    exact = float(layer.input_kernel.abs().sum()) / 0.5 * eps
    assert change == pytest.approx(exact, rel=1e-6)
    assert bound >= change * (1 - 1e-9) and bound == pytest.approx(exact, rel=1e-9)


def test_interval_loss_is_strictly_above_the_clean_loss():
    torch.manual_seed(0)
    model = nemon.build_model("nemon", input_shape=(1, 3, 3), hidden=6).double()
    u, labels = torch.rand(8, 1, 3, 3, dtype=DT), torch.zeros(8, dtype=torch.long)
    clean = torch.nn.functional.cross_entropy(model(u), labels)
    worst = nemon.intervals.interval_loss(model, u, labels, 0.1)
    assert float(worst) > float(clean) + 1e-3
    assert float(nemon.intervals.interval_loss(model, u, labels, 0.0)) == pytest.approx(
        float(clean), abs=1e-6
    )
    assert math.isfinite(float(worst))
