import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nemon
from nemon import mu_inf, norm_inf
from nemon.norms import mu_2, perron_frobenius
from nemon.parametrize import (
    IDLConstraint,
    MONConstraint,
    MuInfConstraint,
    mu_inf_param,
    mu_inf_right_inverse,
)

DT = torch.float64


def rand(seed, *shape, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT) * scale


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**6), st.floats(-2.0, 0.99), st.floats(0.01, 10.0), st.integers(1, 8))
def test_dense_measure_bounded_for_every_parameter(seed, gamma, scale, n):
    T = rand(seed, n, n, scale=scale)
    assert mu_inf(mu_inf_param(T, gamma)) <= gamma + 1e-12 * scale * n


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**6), st.floats(-1.0, 0.99), st.floats(0.1, 3.0))
def test_weighted_measure_bounded_and_authors_formula_is_not(seed, gamma, spread):
    n = 5
    T, d = rand(seed, n, n), rand(seed + 1, n, scale=spread)
    A = MuInfConstraint(gamma, learn_eta=True)(T, d)
    eta = d.exp()
    assert mu_inf(A, eta) <= gamma + 1e-10
    assert torch.allclose(torch.diagonal(A), torch.diagonal(mu_inf_param(T, gamma)))


def test_authors_weighted_formula_breaks_the_bound():
    """[eta]^-1 T [eta] - diag(|T| 1) + gamma I (the public code) exceeds gamma for some T, d."""
    gamma, broken = 0.5, 0
    for seed in range(50):
        T, d = rand(seed, 5, 5), rand(seed + 100, 5, scale=1.0)
        eta = d.exp()
        wrong = (
            (T * eta[None, :] / eta[:, None]) - torch.diag(T.abs().sum(1)) + gamma * torch.eye(5)
        )
        broken += bool(mu_inf(wrong, eta) > gamma + 1e-6)
        ours = MuInfConstraint(gamma, learn_eta=True)(T, d)
        assert mu_inf(ours, eta) <= gamma + 1e-10
    assert broken > 0


@pytest.mark.parametrize("seed", range(20))
def test_right_inverse_round_trips(seed):
    gamma = 0.9
    A = rand(seed, 6, 6)
    # make A feasible: pull every row's measure down to at most gamma
    excess = (torch.diagonal(A) + A.abs().sum(1) - torch.diagonal(A).abs()) - gamma
    A = A - torch.diag(excess.clamp(min=0) + rand(seed + 1, 6).abs())
    assert mu_inf(A) <= gamma
    T = mu_inf_right_inverse(A, gamma)
    assert torch.allclose(mu_inf_param(T, gamma), A, atol=1e-12)
    layer = nemon.NEMONDense(3, 6, gamma=gamma).double()
    layer.A = A  # parametrize calls the right inverse
    assert torch.allclose(layer.A, A, atol=1e-12)


def test_right_inverse_rejects_infeasible():
    with pytest.raises(ValueError, match="exceeds gamma"):
        mu_inf_right_inverse(torch.eye(3, dtype=DT), 0.5)


def test_fixed_eta_layer_keeps_weighted_bound():
    eta = torch.tensor([1.0, 3.0, 0.2, 5.0])
    layer = nemon.NEMONDense(3, 4, gamma=0.7, eta=eta).double()
    with torch.no_grad():
        layer.parametrizations.A.original.normal_(0, 2)
    assert mu_inf(layer.A, layer.eta()) <= 0.7 + 1e-10
    assert torch.allclose(layer.eta(), eta.double())


@pytest.mark.parametrize("padding", ["circular", "zeros"])
@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(3))
def test_conv_measure_on_materialised_matrix(padding, kernel_size, seed):
    torch.manual_seed(seed)
    layer = nemon.NEMONConv2d(
        1, 3, 5, kernel_size=kernel_size, gamma=0.6, padding=padding, learn_eta=True, pool=5
    ).double()
    with torch.no_grad():
        layer.kernel.normal_(0, 1.0)
        layer.log_eta.normal_(0, 0.5)
    A = layer.weight_matrix()
    eta = layer.eta().repeat_interleave(25)
    measure = mu_inf(A, eta)
    assert measure <= 0.6 + 1e-10
    if padding == "circular":  # exact value and exact diagonal (image size >= kernel size)
        assert float(layer.measure()) == pytest.approx(float(measure), abs=1e-10)
    diag = layer.operator.diagonal_entries(layer.effective_weights()).expand(3, 5, 5).reshape(-1)
    assert torch.allclose(diag, torch.diagonal(A))


def test_authors_conv_shift_is_not_a_bound():
    """Subtracting max|K| * n (public code) fails for 3x3 kernels; our r_c does not."""
    torch.manual_seed(0)
    layer = nemon.NEMONConv2d(1, 2, 4, kernel_size=3, gamma=0.5, pool=4).double()
    with torch.no_grad():
        layer.kernel.normal_(0, 1.0)
    K = layer.kernel.detach()
    wrong_shift = 0.5 - K.abs().max() * K.shape[0] * torch.ones(2, dtype=DT)
    wrong = (
        layer.operator.matvec((K, wrong_shift), torch.eye(32, dtype=DT).reshape(32, 2, 4, 4))
        .reshape(32, 32)
        .T
    )
    assert mu_inf(wrong) > 0.5
    assert mu_inf(layer.weight_matrix()) <= 0.5 + 1e-10


@pytest.mark.parametrize("padding", ["circular", "zeros"])
@pytest.mark.parametrize("kernel_size", [2, 3, 4])
def test_conv_adjoint(padding, kernel_size):
    op = nemon.operators.ConvOperator(padding)
    g = torch.Generator().manual_seed(0)
    K = torch.randn(3, 3, kernel_size, kernel_size, generator=g, dtype=DT)
    s = torch.randn(3, generator=g, dtype=DT)
    x, w = (
        torch.randn(2, 3, 6, 6, generator=g, dtype=DT),
        torch.randn(2, 3, 6, 6, generator=g, dtype=DT),
    )
    lhs = (op.matvec((K, s), x) * w).sum()
    rhs = (x * op.rmatvec((K, s), w)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_mon_and_idl_constraints(seed):
    W, Z, T = rand(seed, 6, 6, scale=2), rand(seed + 1, 6, 6), rand(seed + 2, 6, 6, scale=3)
    A_mon = MONConstraint(0.9)(W, Z)
    assert mu_2(A_mon) <= 0.9 + 1e-10
    assert torch.allclose(MONConstraint(0.9)(*MONConstraint(0.9).right_inverse(A_mon)), A_mon)
    A_idl = IDLConstraint(0.9)(T)
    assert norm_inf(A_idl) <= 0.9 + 1e-12
    assert perron_frobenius(A_idl) < 1
    assert torch.allclose(IDLConstraint(0.9).right_inverse(A_idl), A_idl)


@pytest.mark.parametrize("gamma", [1.0, 1.5, float("nan")])
def test_gamma_must_be_below_one(gamma):
    for make in (
        lambda: nemon.NEMONDense(3, 4, gamma=gamma),
        lambda: nemon.NEMONConv2d(1, 2, 4, gamma=gamma, pool=2),
        lambda: nemon.MONDense(3, 4, gamma=gamma),
        lambda: nemon.IDLDense(3, 4, gamma=gamma),
    ):
        with pytest.raises(ValueError, match="gamma"):
            make()


def test_eta_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        nemon.NEMONDense(3, 2, eta=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="shape"):
        nemon.NEMONDense(3, 2, eta=torch.tensor([1.0, 1.0, 1.0]))


@pytest.mark.parametrize("seed", [0, 1])
def test_closed_form_derivative_of_eq17_is_autograds(seed):
    """Unit weights take a one-node path with its derivative in closed form: the same matrix,
    bit for bit, as the weighted form at ``eta = 1`` (autograd through every operator), the same
    gradients (float32: equal; float64: to rounding), and gradcheck in float64, also at the
    kinks ``t_ii = 0`` and ``t_ij = 0``."""
    for dtype in (torch.float32, torch.float64):
        g = torch.Generator().manual_seed(seed)
        T = (3 * torch.randn(30, 30, generator=g)).to(dtype)
        T[2, 2], T[4, 5] = 0.0, 0.0
        fused, reference = T.clone().requires_grad_(), T.clone().requires_grad_()
        A = mu_inf_param(fused, 0.9)
        A_ref = mu_inf_param(reference, 0.9, torch.ones(30, dtype=dtype))
        assert torch.equal(A, A_ref)
        G = torch.randn(30, 30, generator=g).to(dtype)
        (A * G).sum().backward()
        (A_ref * G).sum().backward()
        tol = 0.0 if dtype == torch.float32 else 1e-14
        assert torch.allclose(fused.grad, reference.grad, rtol=0, atol=tol)
    T = torch.randn(6, 6, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: mu_inf_param(t, 0.5), (T,))
