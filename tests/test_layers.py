"""One battery for every model family: NEMON (dense, weighted, conv), MON and IDL."""

from dataclasses import replace

import pytest
import torch
from helpers import ALL_KINDS, DENSE_KINDS, make_layer, random_input, tighten
from torch.func import functional_call

import nemon

DT = torch.float64


def as_function(layer):
    names = [n for n, _ in layer.named_parameters()]

    def f(u, *params):
        return functional_call(layer, dict(zip(names, params)), (u,))

    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]
    return f, params


def constraint_holds(layer, kind):
    if kind == "mon-conv":
        A = layer.weight_matrix()
        assert float(layer.measure()) == pytest.approx(float(nemon.norms.mu_2(A)), abs=1e-9)
        return nemon.norms.mu_2(A) <= layer.gamma + 1e-10
    if kind.startswith("conv"):
        eta = layer.eta().repeat_interleave(layer.image_size**2)
        return nemon.mu_inf(layer.weight_matrix(), eta) <= layer.gamma + 1e-10
    if kind == "mon":
        return nemon.norms.mu_2(layer.A) <= layer.gamma + 1e-10
    if kind == "idl":
        return nemon.norm_inf(layer.A) <= layer.gamma + 1e-10
    return nemon.mu_inf(layer.A, layer.eta()) <= layer.gamma + 1e-10


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_constraint_holds_for_random_parameters(kind, seed):
    layer = make_layer(kind, seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 2.0)
    assert constraint_holds(layer, kind)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_reaches_fixed_point(kind):
    layer = make_layer(kind, activation="relu")
    u = random_input(layer)
    x, stats = layer.solve(u).x.detach(), layer.solve(u).stats
    weights = layer.effective_weights()
    p = layer.operator.matvec(weights, x) + layer.injection(u)
    assert torch.allclose(torch.relu(p), x, atol=1e-9)
    assert stats.converged and stats.iterations > 0 and stats.result == "converged"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_gradcheck(kind):
    layer = make_layer(kind)
    f, params = as_function(layer)
    u = random_input(layer, batch=2).requires_grad_()
    assert torch.autograd.gradcheck(f, (u, *params), atol=1e-6, rtol=1e-5)


def unrolled(layer, u, iterations=3000):
    """x* by plain autograd through many averaged steps (alpha small enough for every family)."""
    weights = layer.effective_weights()
    z = layer.injection(u)
    x = torch.zeros_like(z)
    alpha = 0.1
    for _ in range(iterations):
        x = (1 - alpha) * x + alpha * layer.activation(layer.operator.matvec(weights, x) + z)
    return x


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["averaged", "anderson"])
@pytest.mark.parametrize("kind", ["nemon-eta", "conv-zeros"])
def test_gradcheck_other_nemon_solvers(kind, solver):
    layer = make_layer(kind, solver=solver)
    layer.backward_options = replace(layer.backward_options, method=solver)
    f, params = as_function(layer)
    u = random_input(layer, batch=2).requires_grad_()
    assert torch.autograd.gradcheck(f, (u, *params), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_gradients_match_unrolled_autograd(kind):
    layer = make_layer(kind)
    u = random_input(layer).requires_grad_()
    g = torch.randn_like(layer(u))

    def grads(x):
        params = [u, *layer.parameters()]
        return torch.autograd.grad((x * g).sum(), params)

    implicit, explicit = grads(layer(u)), grads(unrolled(layer, u))
    for a, b in zip(implicit, explicit):
        assert torch.allclose(a, b, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_memory_does_not_grow_with_iterations(kind):
    """The graph holds x*, z and the weights, whatever the number of iterations."""
    layer = make_layer(kind)
    u = random_input(layer)
    x, stats = layer.solve(u).x, layer.solve(u).stats
    assert type(x.grad_fn).__name__ == "ImplicitSolveBackward"
    saved = x.grad_fn.saved_tensors
    assert len(saved) == 2 + len(layer.effective_weights())
    assert stats.iterations > len(saved)


def test_same_output_when_A_coincides():
    torch.manual_seed(0)
    n, r = 5, 4
    A = -0.6 * torch.eye(n, dtype=DT) + 0.05 * torch.randn(n, n, dtype=DT)
    A = (A + A.T) / 2  # symmetric: mu_2, mu_inf and ||.||_inf all small
    layers = [
        nemon.NEMONDense(r, n, gamma=0.9, activation="relu"),
        nemon.MONDense(r, n, gamma=0.9, activation="relu"),
        nemon.IDLDense(r, n, gamma=0.9, activation="relu"),
    ]
    u = torch.randn(3, r, dtype=DT)
    outs = []
    for layer in layers:
        layer = tighten(layer.double())
        layer.A = A
        layer.B.load_state_dict(layers[0].B.double().state_dict())
        assert torch.allclose(layer.A, A, atol=1e-12)
        outs.append(layer(u))
    assert torch.allclose(outs[0], outs[1], atol=1e-9)
    assert torch.allclose(outs[0], outs[2], atol=1e-9)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_bad_input_is_rejected(kind):
    layer = make_layer(kind)
    u = random_input(layer)
    with pytest.raises(ValueError, match="expects input of shape"):
        layer(u[..., :-1])
    with pytest.raises(ValueError, match="expects input of shape"):
        layer(u[0])
    for bad in (float("nan"), float("inf"), float("-inf")):
        v = u.clone()
        v.view(-1)[0] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            layer(v)


@pytest.mark.parametrize("kind", DENSE_KINDS)
def test_state_dict_round_trip(kind):
    a, b = make_layer(kind, seed=0), make_layer(kind, seed=5)
    b.load_state_dict(a.state_dict())
    u = random_input(a)
    assert torch.allclose(a(u), b(u))


def test_activation_checks():
    with pytest.raises(ValueError, match="slope"):
        nemon.activations.LeakyReLU(1.5)
    with pytest.raises(ValueError, match="unknown activation"):
        nemon.NEMONDense(3, 3, activation="gelu")
    with pytest.raises(ValueError, match="prox"):
        nemon.MONDense(3, 3, activation="tanh")
    with pytest.raises(ValueError, match="circular"):
        nemon.MONConv2d(1, 2, 4, padding="zeros")


@pytest.mark.parametrize("kind", ["conv-circular", "mon-conv"])
def test_conv_diagonal_matches_materialised_matrix(kind):
    layer = make_layer(kind, seed=2)
    A = layer.weight_matrix()
    diag = layer.operator.diagonal_entries(layer.effective_weights()).expand(*layer.state_shape())
    assert torch.allclose(diag.reshape(-1), torch.diagonal(A), atol=1e-12)


def test_jacobian_free_backward_is_the_one_step_direction():
    layer = make_layer("nemon", activation="tanh", adjoint="jacobian_free")
    u = random_input(layer).requires_grad_()
    with nemon.SolveLog() as log:
        x = layer(u)
        g = torch.randn_like(x)
        (grad_u,) = torch.autograd.grad((x * g).sum(), u)
    p = x.detach() @ layer.A.detach().T + layer.injection(u).detach()
    expected = (layer.activation.derivative(p) * g) @ layer.B.weight.detach()
    assert torch.allclose(grad_u, expected, atol=1e-10)
    assert [s.iterations for s in log.stats("backward")] == [0]
    exact = make_layer("nemon", activation="tanh")
    (grad_exact,) = torch.autograd.grad((exact(u) * g).sum(), u)
    assert not torch.allclose(grad_u, grad_exact, atol=1e-6)  # a different direction
    assert float((grad_u * grad_exact).sum()) > 0  # ...but a descent one here
    with pytest.raises(ValueError, match="adjoint"):
        make_layer("nemon", adjoint="magic")


def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    layer = make_layer("nemon-eta", activation="relu")
    u = random_input(layer)
    cpu = layer(u)
    gpu = layer.cuda()(u.cuda())
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-9)


@pytest.mark.parametrize("conv", [False, True])
def test_mon_forward_backward_step_is_half_the_largest_convergent_one(conv):
    """Forward-backward splitting on a MON layer steps by ``(1 - mu_2(A)) / ||I - A||_2^2``,
    computed here from the materialised ``A`` in float64 (no step is computed for other solvers)."""
    torch.manual_seed(0)
    if conv:
        layer = nemon.MONConv2d(
            2, 3, 4, kernel_size=3, gamma=0.8, pool=2, solver="forward_backward"
        )
        A = layer.double().weight_matrix().detach()
    else:
        layer = nemon.MONDense(6, 5, gamma=0.8, solver="forward_backward").double()
        A = layer.A.detach()
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    sym = (A + A.T) / 2
    expected = (1 - float(torch.linalg.eigvalsh(sym).max())) / float(
        torch.linalg.matrix_norm(eye - A, ord=2) ** 2
    )
    eq = layer.equilibrium(tuple(w.detach() for w in layer.effective_weights()))
    assert eq.splitting_step == pytest.approx(expected, rel=1e-9)
    layer.solver_options = layer.backward_options = nemon.SolverOptions(method="peaceman_rachford")
    assert layer.equilibrium(layer.effective_weights()).splitting_step is None


def test_weight_is_the_matrix_for_every_layer_kind():
    """One return type: ``weight()`` is ``A`` as an (n, n) matrix, dense or conv."""
    torch.manual_seed(0)
    dense = nemon.NEMONDense(4, 6, gamma=0.5)
    conv = nemon.NEMONConv2d(1, 2, 4, gamma=0.5)
    for layer, n in ((dense, 6), (conv, 2 * 4 * 4)):
        A = layer.weight()
        assert isinstance(A, torch.Tensor) and A.shape == (n, n)
        assert torch.equal(A, layer.weight_matrix())


@pytest.mark.parametrize("kind", DENSE_KINDS + ["explicit"])
def test_a_non_finite_input_anywhere_is_rejected_even_where_b_ignores_it(kind):
    """Dense layers check the injection ``B u + b`` (cheaper): a NaN or inf at any input
    position must still be refused, also where ``B``'s column is zero (``0 * nan`` is NaN) and
    with both infinities (their sum is NaN, not finite)."""
    from nemon import build_model

    if kind == "explicit":
        layer = build_model("explicit", "dense", (1, 2, 3), 3, hidden=4).layer.double()
    else:
        layer = make_layer(kind)
    with torch.no_grad():
        layer.B.weight[:, 0] = 0.0
    u = random_input(layer)
    for position in (0, 1, u[0].numel() - 1):
        for bad in ((float("nan"),), (float("inf"),), (float("inf"), float("-inf"))):
            v = u.clone()
            for k, value in enumerate(bad):
                v.view(len(v), -1)[k, position] = value
            with pytest.raises(ValueError, match="NaN or inf"):
                layer(v)
    big = torch.full_like(u, 1e30 if u.dtype == torch.float32 else 1e300)  # finite, overflows z
    layer(big.clamp(max=torch.finfo(u.dtype).max))  # refused only for a non-finite input


def _one_line_error(match, make, *args):
    with pytest.raises(ValueError, match=match) as info:
        make(*args)
    assert "\n" not in str(info.value)


def test_solvers_a_layer_cannot_run_are_refused_at_construction():
    """MON with tanh (no closed-form prox) and Peaceman-Rachford on a layer without MON's
    resolvent failed at the first forward; now at construction, listing what is allowed."""
    for make in (
        lambda: nemon.MONDense(3, 3, activation="tanh"),
        lambda: nemon.MONDense(3, 3, activation="tanh", solver="forward_backward"),
        lambda: nemon.MONConv2d(1, 2, 4, pool=2, activation="tanh"),
    ):
        _one_line_error(r"closed-form prox, one of relu, leaky_relu, identity; got 'tanh'", make)
    for make in (
        lambda: nemon.NEMONDense(3, 3, solver="peaceman_rachford"),
        lambda: nemon.NEMONDense(3, 3, backward_solver="peaceman_rachford"),
        lambda: nemon.IDLDense(3, 3, solver="peaceman_rachford"),
        lambda: nemon.NEMONConv2d(1, 2, 4, pool=2, solver="peaceman_rachford"),
    ):
        _one_line_error(r"resolvent .* only MON layers have; choose one of anderson, ", make)
    nemon.MONDense(3, 3, activation="tanh", solver="averaged")(torch.randn(2, 3))  # no prox used
    nemon.MONConv2d(1, 2, 4, pool=2, activation="leaky_relu")(torch.rand(2, 1, 4, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mon_layers_refuse_half_precision_when_built_or_converted(dtype):
    """MON's resolvent and step use torch.linalg (no float16/bfloat16 kernels): the layer is
    refused when built in or converted to such a dtype, and a refused conversion changes
    nothing; NEMON layers convert."""
    u = {"dense": torch.randn(2, 3), "conv": torch.rand(2, 1, 4, 4)}
    for kind, make in (
        ("dense", lambda: nemon.MONDense(3, 3)),
        ("conv", lambda: nemon.MONConv2d(1, 2, 4, pool=2)),
    ):
        layer = make()
        for convert in (lambda m: m.to(dtype), lambda m: m.half(), lambda m: m.bfloat16()):
            _one_line_error(r"float32 or float64 only, not torch\.", convert, layer)
            _one_line_error("float32 or float64 only", convert, nemon.Classifier(layer, 2))
        assert all(p.dtype == torch.float32 for p in layer.parameters())
        assert torch.isfinite(layer(u[kind])).all()
        assert next(layer.double().parameters()).dtype == torch.float64
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            _one_line_error("float32 or float64 only", make)
        finally:
            torch.set_default_dtype(old)
    assert next(nemon.NEMONDense(3, 3).to(dtype).parameters()).dtype == dtype
