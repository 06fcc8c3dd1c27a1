import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemon import mu_inf, norm_inf
from nemon.norms import (
    mu_1,
    mu_2,
    norm_inf_from_input,
    norm_inf_plain,
    norm_inf_to_output,
    perron_frobenius,
    vector_norm_inf,
)


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_hand_example():
    A = torch.tensor([[-3.0, 1.0], [2.0, 0.5]])
    eta = torch.tensor([1.0, 2.0])
    # rows: -3 + |1| * 2 / 1 = -1 ; 0.5 + |2| * 1 / 2 = 1.5
    assert mu_inf(A, eta) == pytest.approx(1.5)
    assert mu_inf(A) == pytest.approx(2.5)  # 0.5 + 2
    assert norm_inf(A, eta) == pytest.approx(max(3 + 2, 0.5 + 1))
    assert mu_1(A) == pytest.approx(max(-3 + 2, 0.5 + 1))
    assert vector_norm_inf(torch.tensor([1.0, -3.0]), eta) == pytest.approx(1.5)


def seeds():
    return st.integers(0, 10_000)


def random_case(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g) * torch.rand(1, generator=g) * 3
    eta = torch.rand(n, generator=g) + 0.1
    return A, eta


@settings(max_examples=60, deadline=None)
@given(seeds())
def test_measure_facts(seed):
    A, eta = random_case(seed)
    for measure, norm in ((mu_inf(A, eta), norm_inf(A, eta)), (mu_inf(A), norm_inf(A))):
        assert measure <= norm + 1e-12
        assert measure >= torch.linalg.eigvals(A).real.max() - 1e-9
    assert mu_2(A) >= torch.linalg.eigvals(A).real.max() - 1e-9
    assert mu_2(A) <= torch.linalg.matrix_norm(A, 2) + 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_measure_is_the_limit_of_the_norm(seed):
    A, eta = random_case(seed)
    eye = torch.eye(len(A))
    h = 1e-7
    assert (norm_inf(eye + h * A, eta) - 1) / h == pytest.approx(float(mu_inf(A, eta)), abs=1e-5)
    assert (torch.linalg.matrix_norm(eye + h * A, 2) - 1) / h == pytest.approx(
        float(mu_2(A)), abs=1e-5
    )


def test_weighted_norm_is_similarity():
    A, eta = random_case(3)
    scaled = torch.diag(1 / eta) @ A @ torch.diag(eta)
    assert norm_inf(A, eta) == pytest.approx(float(scaled.abs().sum(1).max()))
    assert mu_inf(A, eta) == pytest.approx(float(mu_inf(scaled)))


def test_rectangular_norms_are_attained_on_vertices():
    g = torch.Generator().manual_seed(0)
    B, C, eta = torch.randn(4, 7, generator=g), torch.randn(3, 4, generator=g), torch.rand(4) + 0.2
    # sup over ||u||_inf <= 1 of ||B u||_{inf,eta^-1} is attained at u = sign(b_i)
    best = max(float(vector_norm_inf(B @ torch.sign(B[i]), eta)) for i in range(4))
    assert norm_inf_from_input(B, eta) == pytest.approx(best)
    # sup over ||x||_{inf,eta^-1} <= 1 of ||C x||_inf is attained at x = eta * sign(c_k)
    best = max(float((C @ (eta * torch.sign(C[k]))).abs().max()) for k in range(3))
    assert norm_inf_to_output(C, eta) == pytest.approx(best)
    assert norm_inf_plain(B) == pytest.approx(float(norm_inf_from_input(B)))


def test_perron_frobenius_between_spectral_radius_and_norm():
    A, _ = random_case(7)
    pf = perron_frobenius(A)
    assert torch.linalg.eigvals(A).abs().max() <= pf + 1e-9
    assert pf <= norm_inf(A) + 1e-9


def test_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        mu_inf(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="positive"):
        mu_inf(torch.eye(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        norm_inf(torch.eye(2), torch.ones(3))


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0.0, -1.0])
def test_weights_must_be_finite_and_positive(bad):
    """``mu_inf`` with an infinite weight returned NaN; every function taking ``eta`` refuses
    a weight that is not finite and positive, in one line."""
    A, eta = random_case(0, n=3)
    eta[1] = bad
    for f in (mu_inf, norm_inf, norm_inf_from_input, vector_norm_inf):
        with pytest.raises(ValueError, match="eta must be finite and strictly positive") as info:
            f(A, eta)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="eta must be finite"):
        norm_inf_to_output(A.T, eta)
