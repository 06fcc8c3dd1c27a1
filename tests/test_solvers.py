import math
import warnings
from dataclasses import replace

import pytest
import torch

import nemon
from nemon.activations import ReLU
from nemon.solvers import FixedPointSystem, SolverOptions, solve, weighted_inf_norm

DT = torch.float64


def dense_system(seed=0, n=8, batch=4, gamma=0.9, spread=0.5):
    g = torch.Generator().manual_seed(seed)
    T = torch.randn(n, n, generator=g, dtype=DT)
    d = torch.randn(n, generator=g, dtype=DT) * spread
    A = nemon.parametrize.MuInfConstraint(gamma, learn_eta=True)(T, d)
    z = torch.randn(batch, n, generator=g, dtype=DT)
    eta = d.exp()
    system = FixedPointSystem(
        matvec=lambda x: x @ A.T,
        z=z,
        phi=ReLU(),
        a_diagonal=torch.diagonal(A),
        measure=float(nemon.mu_inf(A, eta)),
        norm=weighted_inf_norm(eta),
    )
    return system, A, eta


def reference(system):
    x, stats = solve(
        system, options=SolverOptions(tol=1e-14, max_iter=100000, residual="fixed_point")
    )
    assert stats.converged
    return x


def test_alpha_star_and_contraction_factor():
    assert nemon.alpha_star(torch.tensor([-3.0, 0.5, -1.0])) == pytest.approx(0.25)
    assert nemon.alpha_star(torch.tensor([0.2, 0.5])) == 1.0
    assert nemon.contraction_factor(0.25, 0.9) == pytest.approx(1 - 0.25 * 0.1)
    assert nemon.contraction_factor(0.25, -0.5) == pytest.approx(0.75)  # mu_+ = 0


@pytest.mark.parametrize("method", ["averaged", "diagonal", "anderson"])
@pytest.mark.parametrize("seed", range(4))
def test_solver_reaches_the_fixed_point(method, seed):
    system, _, _ = dense_system(seed)
    x, stats = solve(
        system, options=SolverOptions(method=method, tol=1e-10, residual="fixed_point")
    )
    assert stats.converged and stats.residual <= 1e-10
    assert torch.allclose(system(x), x, atol=1e-8)
    assert torch.allclose(x, reference(system), atol=1e-8)


@pytest.mark.parametrize("method", ["averaged", "diagonal"])
@pytest.mark.parametrize("seed", range(4))
def test_contraction_bound_and_error_bound(method, seed):
    """After k steps (alpha* or per-coordinate), ||x_k - x*|| <= rho^k ||x_0 - x*||, weighted."""
    system, A, eta = dense_system(seed, gamma=0.5, spread=1.5)
    x_star = reference(system)
    norm = weighted_inf_norm(eta)
    rho = nemon.contraction_factor(nemon.alpha_star(torch.diagonal(A)), system.measure)
    for k in (1, 3, 10, 30):
        opts = SolverOptions(method=method, tol=1e-15, max_iter=k, check_every=1, warn=False)
        x, stats = solve(system, options=opts)
        assert stats.iterations == k
        err = norm(x - x_star)
        assert torch.all(err <= rho**k * norm(x_star) + 1e-12)
        # the a-posteriori bound is sound (computed at x_{k-1}, valid for x_k)
        assert torch.all(err <= stats.error_bound + 1e-12)
    assert stats.contraction_factor == pytest.approx(rho)


def test_iterations_respect_the_worst_case_count():
    system, A, eta = dense_system(3, gamma=0.3)
    rho = nemon.contraction_factor(nemon.alpha_star(torch.diagonal(A)), system.measure)
    x_star = reference(system)
    tol = 1e-8
    # rho^k ||x*|| <= tol ||x*|| is reached by k = ceil(log tol / log rho): the iteration must stop
    # by then (up to the check period) with the true relative error below the tolerance.
    bound = math.ceil(math.log(tol) / math.log(rho))
    x, stats = solve(system, options=SolverOptions(tol=tol, max_iter=10 * bound, check_every=1))
    assert stats.iterations <= bound + 1
    norm = weighted_inf_norm(eta)
    assert torch.all(norm(x - x_star) <= norm(x_star) * tol / (1 - rho) + 1e-12)


def test_diagonal_steps_contract_rowwise_on_the_jacobian():
    """Jacobian of x -> x + [alpha](Phi(Ax+z) - x) at random slopes: weighted row sums <= rho."""
    for seed in range(20):
        _, A, eta = dense_system(seed, gamma=0.7, spread=1.0)
        steps = nemon.solvers.diagonal_steps(torch.diagonal(A))
        rho = nemon.contraction_factor(float(steps.min()), float(nemon.mu_inf(A, eta)))
        slopes = torch.rand(len(A), generator=torch.Generator().manual_seed(seed), dtype=DT)
        jac = torch.eye(len(A), dtype=DT) - torch.diag(steps) + steps[:, None] * slopes[:, None] * A
        assert nemon.norm_inf(jac, eta) <= rho + 1e-12


def test_non_convergence_is_reported():
    system, _, _ = dense_system(0)
    with pytest.warns(nemon.ConvergenceWarning, match="stopped after 3 iterations"):
        _, stats = solve(system, options=SolverOptions(tol=1e-12, max_iter=3))
    assert not stats.converged and stats.iterations == 3


def test_anderson_safeguard_keeps_convergence_with_bad_memory():
    system, _, _ = dense_system(5, n=20, batch=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, stats = solve(
            system, options=SolverOptions(method=nemon.solvers.Anderson(memory=15), tol=1e-10)
        )
    assert torch.allclose(x, reference(system), atol=1e-7)


@pytest.mark.parametrize("method", ["peaceman_rachford", "forward_backward"])
def test_mon_splittings_reach_the_fixed_point(method):
    torch.manual_seed(0)
    layer = nemon.MONDense(6, 5, gamma=0.5, solver=method, tol=1e-11, max_iter=20000).double()
    layer.solver_options = replace(layer.solver_options, residual="fixed_point")
    u = torch.randn(4, 6, dtype=DT)
    x = layer(u)
    assert torch.allclose(torch.relu(x @ layer.A.T + layer.B(u)), x, atol=1e-8)


def test_solver_option_errors():
    system, _, _ = dense_system(0)
    with pytest.raises(ValueError, match="unknown solver"):
        solve(system, options=SolverOptions(method="newton"))
    with pytest.raises(ValueError, match="tol"):
        solve(system, options=SolverOptions(tol=0))
    with pytest.raises(ValueError, match="residual"):
        solve(system, options=SolverOptions(residual="bogus"))


def test_safeguarded_anderson_converges_where_plain_anderson_stalls():
    """40 seeded relu systems of growing coupling; on one of them (trial 37) Anderson without the
    safeguard is still at residual 1e-4 after 300 iterations, with it every system converges."""
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        T = torch.randn(20, 20, generator=g, dtype=torch.float64) * (0.3 + trial / 10)
        A = nemon.parametrize.mu_inf_param(T, 0.9)
        z = torch.randn(8, 20, generator=g, dtype=torch.float64) * 3
        system = nemon.solvers.FixedPointSystem(
            matvec=lambda x, A=A: x @ A.T,
            z=z,
            phi=nemon.activations.get_activation("relu"),
            a_diagonal=torch.diagonal(A),
            measure=0.9,
            norm=nemon.solvers.weighted_inf_norm(None),
        )
        opts = nemon.SolverOptions(method="anderson", tol=1e-10, max_iter=200)
        x, stats = nemon.solve(system, None, opts)
        assert stats.converged, trial
        fx = system(x)
        assert float((fx - x).norm() / fx.norm()) < 1e-8, trial  # checked independently


@pytest.mark.parametrize("method", ["averaged", "diagonal", "picard"])
def test_a_zero_start_skips_one_product_and_changes_nothing(method):
    """From x0 = 0 the first A x0 + z is z: one product fewer, the same iterates bit for bit;
    a given start (even zero) is iterated from in full."""
    system, A, _ = dense_system(1, gamma=0.5)
    calls = []
    counted = replace(system, matvec=lambda x: calls.append(1) or x @ A.T)
    opts = SolverOptions(method=method, tol=1e-6, check_every=1)
    x, stats = solve(counted, options=opts)
    assert len(calls) == stats.iterations - 1
    calls.clear()
    y, again = solve(counted, torch.zeros_like(system.z), opts)
    assert len(calls) == again.iterations and again.iterations == stats.iterations
    assert torch.equal(x, y)
    if method != "picard":  # (Picard need not converge: mu(A) < 1 does not bound ||A||)
        start = torch.rand_like(system.z)
        w, _ = solve(system, start, replace(opts, tol=1e-12, max_iter=10000))
        assert torch.allclose(w, reference(system), atol=1e-9)
