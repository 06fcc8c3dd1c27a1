"""ONNX export: the same solver, stopping rule, cap and error bound as PyTorch, run by onnxruntime."""

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import mnist_dir, requires_mnist

import nemon
from nemon.app import cli
from nemon.data import load_dataset
from nemon.export import ExportError, export_onnx, onnx_metadata
from nemon.models import build_model

ort = pytest.importorskip("onnxruntime")


def run_onnx(path, u: torch.Tensor) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"u": u.numpy()})))


def torch_outputs(model, u):
    with torch.no_grad(), nemon.SolveLog() as log:
        logits = model(u)
    (stats,) = log.stats("forward")
    return logits, stats


def images(n=64, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "family, arch, kwargs",
    [
        ("nemon", "dense", {}),
        ("nemon", "conv-small", {"learn_eta": True}),
        ("nemon", "dense", {"solver": "averaged", "residual": "fixed_point"}),
        ("nemon", "dense", {"activation": "leaky_relu"}),
        ("idl", "dense", {}),
        ("explicit", "conv-small", {}),
        ("nemon", "conv-small-bn", {}),
    ],
)
def test_onnx_matches_pytorch(tmp_path, family, arch, kwargs):
    torch.manual_seed(0)
    model = build_model(family, arch, hidden=40, gamma=0.5, **kwargs).eval()
    if kwargs.get("learn_eta"):
        with torch.no_grad():
            model.layer.parametrizations.A.original1.normal_(0, 0.5)
    for bn in model.modules():  # batch norms: statistics away from the defaults
        if isinstance(bn, torch.nn.BatchNorm2d):
            with torch.no_grad():
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 2.0)
    export_onnx(model, tmp_path / "m.onnx")
    u = images()
    logits, stats = torch_outputs(model, u)
    out = run_onnx(tmp_path / "m.onnx", u)
    np.testing.assert_allclose(out["logits"], logits.numpy(), atol=1e-5, rtol=1e-5)
    assert int(out["iterations"]) == stats.iterations
    np.testing.assert_allclose(out["error_bound"], stats.error_bound.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("padding", ["circular", "zeros"])
@pytest.mark.parametrize("solver", ["diagonal", "averaged"])
def test_the_papers_conv_layer_exports(tmp_path, padding, solver):
    """NEMONConv2d (the paper's convolutional model): the padded convolution, per-channel
    shift, steps and weights, pooled features, as PyTorch computes them."""
    torch.manual_seed(0)
    layer = nemon.NEMONConv2d(
        1, 6, 28, gamma=0.5, padding=padding, learn_eta=True, solver=solver, kernel_size=4
    )
    with torch.no_grad():
        layer.kernel.normal_(0, 0.2)
        layer.log_eta.normal_(0, 0.3)
    model = nemon.Classifier(layer, 10).eval()
    metadata = export_onnx(model, tmp_path / "conv.onnx")
    u = images(16)
    logits, stats = torch_outputs(model, u)
    out = run_onnx(tmp_path / "conv.onnx", u)
    np.testing.assert_allclose(out["logits"], logits.numpy(), atol=1e-5, rtol=1e-5)
    assert int(out["iterations"]) == stats.iterations
    np.testing.assert_allclose(out["error_bound"], stats.error_bound.numpy(), rtol=1e-4, atol=1e-6)
    assert metadata["nemon_layer"] == "NEMONConv2d" and metadata["measure"] <= 0.5
    with torch.no_grad():  # the stated bound on the state holds on these inputs
        weighted = (model.layer(u).abs() / layer.eta()[:, None, None]).amax()
    assert float(weighted) <= metadata["state_bound"]


def test_iteration_cap_and_tolerance_are_the_layers(tmp_path):
    torch.manual_seed(1)
    model = build_model("nemon", "dense", hidden=30, gamma=0.9, max_iter=6).eval()
    export_onnx(model, tmp_path / "capped.onnx")
    u = images(8)
    with pytest.warns(nemon.ConvergenceWarning):
        logits, stats = torch_outputs(model, u)
    out = run_onnx(tmp_path / "capped.onnx", u)
    assert int(out["iterations"]) == stats.iterations == 6  # stopped by the cap, not converged
    np.testing.assert_allclose(out["logits"], logits.numpy(), atol=1e-5)


def test_error_bounds_hold_against_a_tight_solve(tmp_path):
    torch.manual_seed(2)
    model = build_model("nemon", "dense", hidden=50, gamma=0.9, tol=1e-2, error_tol=None).eval()
    export_onnx(model, tmp_path / "loose.onnx")
    u = images(32)
    out = run_onnx(tmp_path / "loose.onnx", u)
    exact_model = copy.deepcopy(model).double()
    exact_model.layer.solver_options = replace(
        exact_model.layer.solver_options, tol=1e-12, max_iter=10000
    )
    exact, _ = torch_outputs(exact_model, u.double())
    gap = np.abs(out["logits"] - exact.numpy()).max(axis=1)
    assert (out["logit_error_bound"] > 0).all()
    assert (gap <= out["logit_error_bound"] + 1e-6).all()
    assert gap.max() > 1e-5  # the loose solve really is loose: the check has something to bite


def test_metadata_states_the_guarantees(tmp_path):
    torch.manual_seed(3)
    model = build_model("nemon", "dense", hidden=30, gamma=0.7).eval()
    written = export_onnx(model, tmp_path / "m.onnx")
    meta = onnx_metadata(tmp_path / "m.onnx")
    assert meta == written
    assert meta["measure"] <= 0.7
    rho = meta["contraction_factor"]
    assert rho == pytest.approx(1 - meta["alpha"] * (1 - meta["measure"]))
    k = meta["worst_case_iterations"]
    assert rho**k <= meta["tol"] < rho ** (k - 1)
    # the state bound covers every input of the data range: corners and random points
    u = torch.cat([images(200), torch.zeros(1, 1, 28, 28), torch.ones(1, 1, 28, 28)])
    with torch.no_grad():
        x = model.layer(model.prepare_input(u))
    assert float(x.abs().amax()) <= meta["state_bound"]


def test_unsupported_models_are_refused(tmp_path):
    with pytest.raises(ExportError, match="MONDense"):
        export_onnx(build_model("mon", "dense", hidden=10), tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="MONConv2d"):
        export_onnx(build_model("mon", "conv", hidden=4), tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="anderson"):
        export_onnx(
            build_model("nemon", "dense", hidden=10, solver="anderson"), tmp_path / "m.onnx"
        )
    assert not (tmp_path / "m.onnx").exists()


@requires_mnist
def test_shipped_model_on_mnist(tmp_path, capsys):
    path = tmp_path / "cert.onnx"
    assert cli.main(["export", "mnist-cert-0.1", "--onnx", str(path)]) == 0
    assert "worst_case_iterations" in capsys.readouterr().out
    data = load_dataset("mnist", mnist_dir())
    u, y = data.test_x[:500], data.test_y[:500]
    model = nemon.load_pretrained("mnist-cert-0.1")
    logits, stats = torch_outputs(model, u)
    out = run_onnx(path, u)
    np.testing.assert_allclose(out["logits"], logits.numpy(), atol=1e-4)
    assert int(out["iterations"]) == stats.iterations
    assert (out["logits"].argmax(1) == y.numpy()).mean() > 0.95
    assert math.isfinite(onnx_metadata(path)["state_bound"])


def test_cli_refusals(tmp_path, capsys):
    assert cli.main(["export", "no-such-model", "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "no-such-model" in capsys.readouterr().err
    args = ["export", "mnist-cert-0.1", "--onnx", str(tmp_path / "m.onnx")]
    assert cli.main([*args, "--input-range", "1", "0"]) == 2
    assert "LO must be below HI" in capsys.readouterr().err
    assert cli.main(["export", "mnist-cert-0.1", "--onnx", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(ExportError, match="is a folder"):
        export_onnx(build_model("nemon", "dense", hidden=4), tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
