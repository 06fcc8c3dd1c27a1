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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [0.0, 1e-300, 0.5, 0.95])
@pytest.mark.parametrize("scale", [0.0, 1e-44, 1e-3, 1.0, 1e30])
def test_idl_scaling_is_finite_for_every_t(dtype, gamma, scale):
    """``A = gamma T / max(gamma, ||T||)``: finite with a finite gradient for every ``T``, exactly
    0 at ``gamma = 0`` (it was NaN in float32 at ``T = 0``: 0 over a subnormal norm) and within
    ``gamma`` in the l_inf norm."""
    g = torch.Generator().manual_seed(0)
    T = (torch.randn(5, 5, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    A = IDLConstraint(gamma)(T)
    (A * torch.randn(5, 5, generator=g, dtype=torch.float64).to(dtype)).sum().backward()
    assert bool(torch.isfinite(A).all()) and bool(torch.isfinite(T.grad).all())
    assert float(norm_inf(A.detach().double())) <= gamma
    if gamma == 0.0:
        assert bool((A == 0).all())


def test_idl_layer_with_gamma_zero_and_zero_feedback_is_the_explicit_layer():
    model = nemon.build_model("idl", input_shape=(1, 2, 2), hidden=3, gamma=0.0, zero_feedback=True)
    assert bool((model.layer.A == 0).all())
    u = torch.rand(4, 1, 2, 2)
    logits = model(u)
    logits.sum().backward()
    assert bool(torch.isfinite(logits).all())
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


def test_idl_gradient_is_autograds_of_the_formula():
    T = rand(3, 4, 4, scale=2.0).requires_grad_()  # ||T||_inf > gamma: the scale depends on T
    assert torch.autograd.gradcheck(lambda t: IDLConstraint(0.5)(t), (T,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weights_inside_their_range_keep_the_bound_with_finite_gradients(dtype):
    """Log-weights at the edge of ``[-L, L]`` (``L = log_eta_max``: 22.2 in float32): ``A``, the
    equilibrium and every gradient finite, and the weighted bound exact."""
    L = nemon.parametrize.log_eta_max(torch.float32)  # the float32 limit, in both dtypes
    torch.manual_seed(0)
    layer = nemon.NEMONDense(4, 6, gamma=0.9, learn_eta=True).to(dtype)
    with torch.no_grad():
        layer.parametrizations.A.original0.mul_(5.0)
        layer.parametrizations.A.original1.copy_(torch.linspace(-L, L, 6) * 0.999)
    model = nemon.Classifier(layer, 3).to(dtype)
    u = torch.rand(5, 4, dtype=dtype)
    loss = torch.nn.functional.cross_entropy(model(u), torch.zeros(5, dtype=torch.long))
    (loss + 1e-30 * model.lipschitz_bound()).backward()
    A = layer.A.detach()
    assert bool(torch.isfinite(A).all())
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert float(mu_inf(A.double(), layer.eta().detach().double())) <= 0.9 + 1e-9


def test_weights_outside_their_range_are_refused_in_one_line():
    """``eta = exp(d)`` with ``|d| ~ 45`` overflowed ``A`` and its gradient in float32 (inf/NaN,
    silently); such weights are now refused when ``A`` is formed (learned) or at construction
    (fixed), and accepted in float64, whose range is wider."""
    T = rand(0, 3, 3)
    d = torch.tensor([45.0, 0.0, -45.0])
    with pytest.raises(ValueError, match=r"must lie in \[e\^-22.2, e\^22.2\]") as info:
        MuInfConstraint(0.9, learn_eta=True)(T.float(), d)
    assert "\n" not in str(info.value)
    A = MuInfConstraint(0.9, learn_eta=True)(T, d.double())
    assert bool(torch.isfinite(A).all()) and mu_inf(A, d.double().exp()) <= 0.9 + 1e-9
    layer = nemon.NEMONDense(3, 3, learn_eta=True)
    with torch.no_grad():
        layer.parametrizations.A.original1.copy_(d)
    with pytest.raises(ValueError, match="weights eta"):
        layer(torch.rand(2, 3))
    with pytest.raises(ValueError, match="weights eta"):
        nemon.NEMONDense(3, 3, eta=torch.tensor([1e-20, 1.0, 1e20]))
    for bad in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ValueError, match="weights eta|positive"):
            mu_inf_param(T, 0.5, torch.tensor([1.0, bad, 1.0], dtype=DT))
