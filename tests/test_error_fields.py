"""Warnings and errors carry fields: code reads them, never their message text."""

import warnings

import pytest
import torch

import nemon
from nemon.runs import RunFolderError, check_run_folder


def test_certificate_warning_fields():
    torch.manual_seed(0)
    model = nemon.build_model("nemon", input_shape=(1, 4, 4), num_classes=2, hidden=6).eval()
    u = torch.rand(8, 1, 4, 4)
    labels = model(u).argmax(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nemon.certify(model, u, labels, [0.0, 0.9], method="lipschitz")
    (w,) = [w.message for w in caught if isinstance(w.message, nemon.CertificateWarning)]
    assert (w.kind, w.method, w.radii, w.stronger) == (
        "none_certified",
        "lipschitz",
        (0.9,),
        "interval",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nemon.evaluation.certified_accuracy(model, u, labels, [0.9], "lipschitz", batch_size=3)
    (w,) = [w.message for w in caught if isinstance(w.message, nemon.CertificateWarning)]
    assert w.kind == "none_certified" and w.radii == (0.9,)  # one warning for the whole set


def test_run_folder_error_kinds(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    for kwargs, kind in (
        ({"resume": False, "overwrite": False}, "not_empty"),
        ({"resume": True, "overwrite": True}, "both"),
    ):
        with pytest.raises(RunFolderError) as info:
            check_run_folder(tmp_path, **kwargs)
        assert info.value.kind == kind
    with pytest.raises(RunFolderError) as info:
        check_run_folder(tmp_path / "new", resume=True, overwrite=False)
    assert info.value.kind == "nothing_to_resume"


def test_a_solve_states_how_it_ended():
    torch.manual_seed(0)
    layer = nemon.NEMONDense(4, 20, gamma=0.9, activation="tanh").double().eval()
    with torch.no_grad():
        layer.B.weight.mul_(10)
    u = torch.rand(2, 4, dtype=torch.float64)
    assert layer.solve(u).stats.result == "converged"
    with layer.solver_settings(max_iter=2, tol=1e-15), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert layer.solve(u).stats.result == "max_iterations"
    stats = nemon.solvers.SolverStats(residual=float("nan"))
    assert stats.result == "non_finite"


def test_refusals_are_usage_errors_and_failures_keep_their_traceback(monkeypatch, capsys):
    """Exit status 2 for what the library refuses (an InputError, one line); a plain
    ValueError is a failure inside the library: it propagates with its traceback."""
    from nemon.app import cli

    def refuse(args):
        raise nemon.InputError("gamma must be below 1")

    def fail(args):
        raise ValueError("internal: shapes (3,) and (4,) do not broadcast")

    monkeypatch.setattr(cli, "_validate", lambda args: None)
    monkeypatch.setitem(cli.COMMANDS, "eval", refuse)
    assert cli.main(["eval", "mnist-cert-0.1"]) == 2
    assert capsys.readouterr().err.strip() == "nemon eval: error: gamma must be below 1"
    monkeypatch.setitem(cli.COMMANDS, "eval", fail)
    with pytest.raises(ValueError, match="internal"):
        cli.main(["eval", "mnist-cert-0.1"])
    with pytest.raises(nemon.InputError, match="gamma"):
        nemon.NEMONDense(4, 3, gamma=1.5)
