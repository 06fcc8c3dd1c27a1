"""The guarantee ``mu <= gamma`` holds for the stored floating-point matrix, exactly.

Measures are evaluated in exact rational arithmetic on the stored entries, over magnitudes from
1e-8 to 1e8, in float32 and float64, for dense, weighted, conv and IDL parametrizations.
"""

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nemon
from nemon.norms import mu_inf_upper
from nemon.parametrize import conv_measure_upper

DTYPES = [torch.float32, torch.float64]


def exact_measure(A: torch.Tensor, eta: torch.Tensor | None = None) -> Fraction:
    """``max_i a_ii + sum_{j != i} |a_ij| eta_j / eta_i`` in rational arithmetic."""
    n = A.shape[0]
    a = [[Fraction(float(v)) for v in row] for row in A.tolist()]
    e = [Fraction(1)] * n if eta is None else [Fraction(float(v)) for v in eta.tolist()]
    return max(
        a[i][i] + sum(abs(a[i][j]) * e[j] / e[i] for j in range(n) if j != i) for i in range(n)
    )


def exact_norm(A: torch.Tensor) -> Fraction:
    return max(sum(abs(Fraction(float(v))) for v in row) for row in A.tolist())


magnitudes = st.floats(-8.0, 8.0).map(lambda p: 10.0**p)


def matrix(seed: int, n: int, scale: float, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, n, generator=g, dtype=torch.float64) * scale).to(dtype)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10**6),
    st.integers(1, 12),
    magnitudes,
    st.sampled_from([0.95, 0.5, 0.0, -3.0]),
    st.sampled_from(DTYPES),
)
def test_dense_measure_is_exactly_bounded(seed, n, scale, gamma, dtype):
    A = nemon.parametrize.mu_inf_param(matrix(seed, n, scale, dtype), gamma)
    assert A.dtype == dtype
    assert exact_measure(A) <= gamma
    assert float(mu_inf_upper(A)) >= exact_measure(A)  # the sound measure is an upper bound


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10**6),
    st.integers(1, 10),
    magnitudes,
    st.floats(0.01, 4.0),
    st.sampled_from(DTYPES),
)
def test_weighted_measure_is_exactly_bounded(seed, n, scale, spread, dtype):
    gamma = 0.95
    T = matrix(seed, n, scale, dtype)
    d = (torch.randn(n, generator=torch.Generator().manual_seed(seed + 1)) * spread).to(dtype)
    A = nemon.parametrize.MuInfConstraint(gamma, learn_eta=True)(T, d)
    eta = d.exp()
    assert exact_measure(A, eta) <= gamma
    assert float(mu_inf_upper(A, eta)) >= exact_measure(A, eta)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 10**6),
    magnitudes,
    st.sampled_from([1, 2, 3]),
    st.sampled_from(["circular", "zeros"]),
    st.sampled_from(DTYPES),
)
def test_conv_measure_is_exactly_bounded(seed, scale, kernel_size, padding, dtype):
    torch.manual_seed(seed)
    layer = nemon.NEMONConv2d(
        1, 2, 3, kernel_size=kernel_size, gamma=0.9, padding=padding, learn_eta=True, pool=3
    ).to(dtype)
    with torch.no_grad():
        layer.kernel.normal_(0, 1.0).mul_(scale)
        layer.log_eta.normal_(0, 1.0)
    A = layer.weight_matrix().detach()
    eta = layer.eta().detach().repeat_interleave(9)
    kernel, shift = (w.detach() for w in layer.effective_weights())
    # the matrix is K's taps with the shift added on the diagonal: exact in rationals
    exact = _exact_conv_measure(kernel, shift, eta, A)
    assert exact <= Fraction(0.9)
    assert float(conv_measure_upper(kernel, shift, layer.eta().detach())) >= exact


def _exact_conv_measure(kernel, shift, eta, A):
    """Measure of the conv matrix; its off-diagonal entries are single taps (image >= kernel)."""
    n = A.shape[0]
    rows = []
    per_channel = n // shift.shape[0]
    for i in range(n):
        c = i // per_channel
        # the diagonal is K_cc0 + shift_c (two stored numbers), exactly; sum them as rationals
        centre = (kernel.shape[-1] - 1) // 2
        diag = Fraction(float(kernel[c, c, centre, centre])) + Fraction(float(shift[c]))
        off = sum(
            abs(Fraction(float(A[i, j]))) * Fraction(float(eta[j])) / Fraction(float(eta[i]))
            for j in range(n)
            if j != i
        )
        rows.append(diag + off)
    return max(rows)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 12), magnitudes, st.sampled_from(DTYPES))
def test_idl_norm_is_exactly_bounded(seed, n, scale, dtype):
    A = nemon.parametrize.IDLConstraint(0.95)(matrix(seed, n, scale, dtype))
    assert exact_norm(A) <= Fraction(0.95)


@pytest.mark.slow
def test_naive_float32_parametrization_exceeds_gamma():
    """The textbook ``T - diag(|T| 1) + gamma I`` in float32 breaks the bound at |T| ~ 1e3."""
    worst = Fraction(-10)
    for seed in range(20):
        T = matrix(seed, 100, 1e3, torch.float32)
        naive = T - torch.diag_embed(T.abs().sum(1)) + 0.95 * torch.eye(100)
        worst = max(worst, exact_measure(naive))
        assert exact_measure(nemon.parametrize.mu_inf_param(T, 0.95)) <= Fraction(0.95)
    assert worst > Fraction(0.95)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_trained_weights_keep_layer_measure(dtype):
    layer = nemon.NEMONDense(20, 50, gamma=0.95).to(dtype)
    with torch.no_grad():
        layer.parametrizations.A.original.mul_(1e6)
    assert exact_measure(layer.A.detach()) <= Fraction(0.95)
    assert float(layer.measure().detach()) <= 0.95
    assert float(mu_inf_upper(layer.A.detach())) <= 0.95 + 1e-12 * float(
        layer.A.detach().abs().sum(1).max()
    )


def test_certificates_are_computed_without_tensorfloat32(monkeypatch):
    """TF32 (the GPU default of cuDNN convolutions) rounds to 10-bit mantissas, far above the
    residuals a certificate charges: certify turns it off inside and restores the settings."""
    torch.manual_seed(0)
    model = nemon.build_model("nemon", "conv-small", hidden=8, gamma=0.5)
    seen = []
    solve = nemon.ImplicitLayer.solve

    def observed(layer, u):  # certificates refuse hooks: observe the solves instead
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return solve(layer, u)

    monkeypatch.setattr(nemon.ImplicitLayer, "solve", observed)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        u, y = torch.rand(3, 1, 28, 28), torch.arange(3)
        for method in ("interval", "pairwise"):
            nemon.certify(model, u, y, 0.01, method, dtype=None)
        assert seen and set(seen) == {(False, False)}
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
