"""What the tool refuses, and what it never loses (issue: certificates that cannot lie)."""

import dataclasses
import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import config, tiny_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nemon
from nemon.app import cli
from nemon.app.checkpoints import json_line
from nemon.app.commands import evaluation as evaluation_command
from nemon.app.commands import train as train_command
from nemon.app.train import (
    CheckpointError,
    RunFolderError,
    TrainConfig,
    TrainingDiverged,
    load_checkpoint,
    train,
)
from nemon.data import Dataset
from nemon.norms import round_to
from nemon.settings import field_named


# -- 1. false certificates ------------------------------------------------------------------------
def test_huge_learning_rate_cannot_produce_false_certificates(tmp_path):
    """At eps = 1 the clipped ball is the whole cube [0, 1]^d: at most one class is certifiable."""
    data = tiny_data()
    try:
        model = train(config(lr=1000.0, epochs=2), tmp_path, data=data, progress=False)["model"]
    except TrainingDiverged:
        model, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    assert float(model.layer.measure().detach()) <= 0.95
    x, y = data.test_x, data.test_y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in nemon.certificates.CERTIFICATES:
            ok = nemon.certify(model, x, y, 1.0, method=method)
            assert len(set(y[ok].tolist())) <= 1, method


def test_certificates_refuse_a_layer_that_does_not_contract():
    model = nemon.build_model("idl", input_shape=(1, 2, 2), hidden=3)
    with torch.no_grad():
        model.layer.parametrizations.A.original.fill_(float("nan"))
    u, labels = torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    for method in nemon.certificates.CERTIFICATES:
        with pytest.warns(nemon.CertificateWarning, match=r"parameter \S+ is not finite"):
            assert not nemon.certify(model, u, labels, 0.0, method=method).any()
    assert "not finite" in nemon.certificate_obstacle(model)


def test_certify_checks_radii_and_range():
    model = nemon.build_model("nemon", input_shape=(1, 2, 2), hidden=3)
    u, labels = torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    for eps in (-0.1, float("nan"), float("inf"), []):
        with pytest.raises(ValueError, match="eps"):
            nemon.certify(model, u, labels, eps)
    with pytest.raises(ValueError, match=r"outside input_range=\(0, 1\)"):
        nemon.certify(model, u + 2.0, labels, 0.1)
    assert nemon.certify(model, u + 2.0, labels, 0.1, input_range=None).shape == (4,)


def test_training_stops_on_a_non_finite_loss(tmp_path):
    data = tiny_data()
    data.train_x[:] = 3e38  # finite inputs whose injection overflows
    data.input_range = None
    with pytest.raises(
        TrainingDiverged, match="loss is (nan|inf) at epoch 1, step 1.*No checkpoint"
    ):
        train(config(), tmp_path, data=data, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_training_stops_on_non_finite_parameters_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    steps = []
    real_step = torch.optim.Adam.step

    def poisoned(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 6:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    with pytest.raises(TrainingDiverged, match="non-finite at epoch 1"):
        train(config(checkpoint_every=3), tmp_path, data=tiny_data(), progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


# -- 2. checkpoints cannot run code ---------------------------------------------------------------
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _malicious(path: Path, marker: Path) -> Path:
    torch.save({"config": _Payload(str(marker)), "model": {}}, path)
    return path


def test_malicious_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = _malicious(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(evil)
    run = tmp_path / "run"
    run.mkdir()
    _malicious(run / "checkpoint.pt", marker)
    for argv in (
        ["eval", str(evil)],
        ["certify", str(evil)],
        ["attack", str(evil)],
        ["train", "--out", str(run), "--resume"],
    ):
        assert cli.main(argv) == 2
    assert not marker.exists()


def test_cifar_reader_refuses_code(tmp_path):
    import io
    import pickle
    import tarfile

    marker = tmp_path / "pwned"
    raw = pickle.dumps(_Payload(str(marker)))
    path = tmp_path / "c.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    with pytest.raises(nemon.data.DataError, match="refusing"):
        nemon.data.read_cifar10(path)
    assert not marker.exists()


# -- 3. run folders lose nothing ------------------------------------------------------------------
def test_run_folder_is_never_mixed(tmp_path):
    data = tiny_data()
    train(config(epochs=1), tmp_path, data=data, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(RunFolderError, match="not empty"):
        train(config(epochs=1, lr=0.5), tmp_path, data=data, progress=False)
    with pytest.raises(RunFolderError, match="written with other settings"):
        train(config(epochs=1, lr=0.5), tmp_path, data=data, progress=False, resume=True)
    with pytest.raises(ValueError, match="epochs"):
        train(config(epochs=0), tmp_path, data=data, progress=False, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing touched
    with pytest.raises(RunFolderError, match="nothing to resume"):
        train(config(), tmp_path / "typo", data=data, progress=False, resume=True)
    assert not (tmp_path / "typo").exists()
    train(config(epochs=1, lr=0.5), tmp_path, data=data, progress=False, overwrite=True)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads((tmp_path / "config.json").read_text())["lr"] == 0.5


def test_stale_temporaries_removed_and_permissions_usual(tmp_path):
    data = tiny_data()
    train(config(epochs=1), tmp_path, data=data, progress=False)
    (tmp_path / ".checkpoint.pt.abc123").write_bytes(b"half")
    train(config(epochs=2), tmp_path / "other", data=data, progress=False)
    cfg = config(epochs=1)
    train(cfg, tmp_path, data=data, progress=False, resume=True)
    assert not list(tmp_path.glob(".checkpoint.pt.*"))
    umask = os.umask(0)
    os.umask(umask)
    for name in ("checkpoint.pt", "metrics.jsonl", "config.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


# -- 4. numbers are never misread -----------------------------------------------------------------
def test_metrics_are_strict_json():
    line = json_line({"lipschitz": float("inf"), "loss": float("nan"), "ok": [1.0, float("-inf")]})

    def refuse(token):
        raise ValueError(token)

    assert json.loads(line, parse_constant=refuse) == {
        "lipschitz": None,
        "loss": None,
        "ok": [1.0, None],
    }


def test_number_of_classes_comes_from_the_dataset(tmp_path):
    data = tiny_data()
    ten = Dataset("ten", data.train_x, data.train_y, data.test_x, data.test_y, classes=10)
    model = train(config(epochs=1, train_limit=50), tmp_path, data=ten, progress=False)["model"]
    assert model.readout.out_features == 10


@pytest.mark.parametrize(
    "change",
    [
        {"epochs": 0},
        {"batch_size": 0},
        {"train_limit": 0},
        {"test_limit": -5},
        {"lr": float("nan")},
        {"tol": 0.0},
        {"gamma": float("-inf")},
        {"gamma": 1.0},
        {"cert_eps": -0.1},
        {"cert_weight": 1.5},
        {"adv_steps": -1},
        {"lam": float("inf")},
        {"model": "resnet"},
        {"solver": "newton"},
        {"hidden": True},
        {"init": "xavier"},
    ],
)
def test_config_rejects_out_of_range_settings(change):
    with pytest.raises(ValueError, match=next(iter(change))):
        TrainConfig(**change).validate()


def test_api_rejects_bad_numbers_and_inputs():
    with pytest.raises(ValueError, match="gamma"):
        nemon.NEMONDense(3, 4, gamma=float("-inf"))
    with pytest.raises(ValueError, match="tol"):
        nemon.NEMONDense(3, 4, tol=float("nan"))
    with pytest.raises(ValueError, match="max_iter"):
        nemon.SolverOptions(max_iter=0)
    layer = nemon.NEMONDense(3, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.solver_options.tol = 0.0  # options are frozen: no unchecked in-place change
    with pytest.raises(ValueError, match="tol"):
        dataclasses.replace(layer.solver_options, tol=-1.0)
    with pytest.raises(ValueError, match="float32 parameters but the input is torch.float64"):
        layer(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point input"):
        layer(torch.zeros(2, 3, dtype=torch.long))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(-3, 20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_layer_construction_fuzz(hidden, gamma, tol):
    try:
        layer = nemon.NEMONDense(4, hidden, gamma=gamma, tol=tol)
    except ValueError:
        return
    assert gamma < 1 and tol > 0 and hidden >= 1
    gamma_up = round_to(torch.tensor(gamma, dtype=torch.float64), torch.float32, "up")
    assert float(layer.measure().detach()) <= float(gamma_up)  # float32 cannot hold every gamma


# -- 5. user errors are one line ------------------------------------------------------------------
BAD_ARGUMENTS = [
    ["train", "--epochs", "0"],
    ["train", "--batch-size", "-1"],
    ["train", "--train-limit", "0"],
    ["train", "--test-limit", "-3"],
    ["train", "--lr", "nan"],
    ["train", "--gamma=-inf"],
    ["train", "--gamma", "1"],
    ["train", "--cert-weight", "2"],
    ["train", "--cert-eps", "-1"],
    ["train", "--device", "tpu"],
    ["train", "--device", "cuda:7"],
    ["train", "--solver", "magic"],
    ["certify", "CKPT", "--eps", "-0.1"],
    ["certify", "CKPT", "--eps", "nan"],
    ["certify", "CKPT", "--input-range", "1", "0"],
    ["certify", "MISSING"],
    ["certify", "FOLDER"],
    ["certify", "CKPT", "--json", "FOLDER"],
    ["attack", "CKPT", "--steps", "0"],
    ["attack", "CKPT", "--restarts", "0"],
    ["reproduce", "mnist", "--runs", "0"],
    ["eval", "NOTCKPT"],
    ["export", "CKPT", "--onnx", "ONNX", "--input-range", "0", "1e308"],
    ["export", "CKPT", "--onnx", "ONNX", "--input-range", "0", "1e38"],
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    train(config(epochs=1), folder, data=tiny_data(), progress=False)
    (folder / "not.pt").write_text("{}")
    return folder


def _substitute(argv, run_dir):
    names = {
        "CKPT": run_dir / "checkpoint.pt",
        "MISSING": run_dir / "missing.pt",
        "FOLDER": run_dir,
        "NOTCKPT": run_dir / "not.pt",
        "ONNX": run_dir / "new" / "model.onnx",
    }
    return [str(names.get(a, a)) for a in argv]


@pytest.mark.parametrize("argv", BAD_ARGUMENTS, ids=lambda a: " ".join(a))
def test_user_errors_are_one_line(argv, run_dir, capsys):
    argv = _substitute(argv, run_dir)
    if argv[0] == "train":
        argv += ["--out", str(run_dir / "new")]
    with pytest.raises(SystemExit) as exit_info:
        status = cli.main(argv)
        raise SystemExit(status)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "error" in err
    assert not (run_dir / "new").exists()


def test_a_method_the_model_lacks_is_one_line(monkeypatch, capsys):
    """certify --method interval on a MON model: the library's refusal (NotImplementedError)
    is one line with status 2, not a traceback."""
    torch.manual_seed(0)
    model = nemon.build_model("mon", input_shape=(1, 8, 8), num_classes=2, hidden=6).eval()
    data = tiny_data()
    monkeypatch.setattr(cli, "_validate", lambda args: None)
    loaded = (model, {"input_range": (0.0, 1.0)}, data.test_x[:8], data.test_y[:8])
    monkeypatch.setattr(evaluation_command, "load_with_data", lambda args: loaded)
    assert cli.main(["certify", "mon.pt", "--method", "interval"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "nemon certify: error: interval bounds need mu_inf(A) < 1" in err


@pytest.mark.parametrize(
    "failure",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 36.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough "
                     "memory: you tried to allocate 38654705664 bytes.\nmore lines"),
        MemoryError(),
    ],
    ids=["torch", "cpu-allocator", "python"],
)  # fmt: skip
def test_out_of_memory_is_one_line_and_a_bug_keeps_its_traceback(failure, monkeypatch, capsys):
    def fail(args):
        raise failure

    monkeypatch.setattr(cli, "_validate", lambda args: None)
    monkeypatch.setitem(cli.COMMANDS, "eval", fail)
    assert cli.main(["eval", "model.pt"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nemon eval: error: out of memory")

    def bug(args):
        raise RuntimeError("shape mismatch in a library function")

    monkeypatch.setitem(cli.COMMANDS, "eval", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli.main(["eval", "model.pt"])


def test_cli_warnings_are_one_line_without_source(monkeypatch, capsys):
    """A warning during a command: ``warning: Category: message`` on one line (the default
    format adds nemon's file, line and source text); the library's format is left alone."""

    def warns(args):
        warnings.warn("solves stopped\nearly", nemon.ConvergenceWarning, stacklevel=1)
        return {}

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    original = warnings.formatwarning
    monkeypatch.setattr(cli, "_validate", lambda args: None)
    monkeypatch.setitem(cli.COMMANDS, "eval", warns)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", show)  # as Python's, outside pytest
        assert cli.main(["eval", "model.pt"]) == 0
    assert capsys.readouterr().err == "warning: ConvergenceWarning: solves stopped early\n"
    assert warnings.formatwarning is original


def test_existing_run_folder_needs_resume_or_overwrite(run_dir, capsys):
    before = (run_dir / "checkpoint.pt").read_bytes()
    assert cli.main(["train", "--out", str(run_dir)]) == 2
    assert "--resume or --overwrite" in capsys.readouterr().err
    assert (run_dir / "checkpoint.pt").read_bytes() == before


option_values = st.one_of(
    st.integers(-5, 5).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "x", "1e400", "-0", "0.5"]),
)
TRAIN_OPTIONS = ["--epochs", "--batch-size", "--lr", "--gamma", "--tol", "--cert-eps",
                 "--cert-weight", "--hidden", "--train-limit", "--lam", "--seed"]  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.sampled_from(TRAIN_OPTIONS), option_values), max_size=4))
def test_cli_argument_fuzz(tmp_path, monkeypatch, pairs):
    """Any values: either a one-line error (status 2) or a valid configuration reaches train."""
    reached = []

    def fake_train(cfg, *args, **kwargs):
        cfg.validate()
        reached.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(train_command, "train", fake_train)
    argv = ["train", "--out", str(tmp_path / "fuzz")]
    for option, value in pairs:
        argv.append(f"{option}={value}")
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = exc.code
    assert status in (0, 2)
    assert (status == 0) == bool(reached)
    assert not (tmp_path / "fuzz").exists()


def test_convergence_warnings_are_summarised(tmp_path):
    cfg = config(epochs=1, max_iter=1, tol=1e-12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg, tmp_path, data=tiny_data(), progress=False)
    mine = [w for w in caught if issubclass(w.category, nemon.ConvergenceWarning)]
    assert len(mine) == 1 and "solves stopped" in str(mine[0].message)
    assert result["history"][0]["unconverged_solves"] > 10


def test_failed_download_creates_no_folders(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(nemon.data.urllib.request, "urlopen", offline)
    target = tmp_path / "a" / "b"
    with pytest.raises(nemon.data.DataError):
        nemon.data.load_dataset("mnist", target)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_python_m_nemon_user_error_has_no_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "nemon", "certify", str(tmp_path / "nope.pt")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_classifier_with_an_encoder_demands_and_checks_input_shape():
    """Every model that builds also trains, certifies and exports: the encoder's input shape is
    known and fits the layer."""
    encoder = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, stride=2, padding=1), torch.nn.Flatten())
    layer = nemon.NEMONDense(2 * 14 * 14, 8, gamma=0.5)
    with pytest.raises(ValueError, match="needs input_shape, the shape of one input sample"):
        nemon.Classifier(layer, 10, encoder=encoder)
    with pytest.raises(ValueError, match=r"maps inputs of shape \(1, 20, 20\) to \(200,\)"):
        nemon.Classifier(layer, 10, encoder=encoder, input_shape=(1, 20, 20))
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(3, 28, 28\)"):
        nemon.Classifier(layer, 10, encoder=encoder, input_shape=(3, 28, 28))
    model = nemon.Classifier(layer, 10, encoder=encoder, input_shape=(1, 28, 28))
    assert model.input_shape == (1, 28, 28) and encoder.training  # the check left it as it was


def test_certify_defaults_to_the_strongest_method_and_says_when_one_certifies_nothing():
    torch.manual_seed(0)
    nemon_model = nemon.build_model("nemon", "dense", input_shape=(1, 4, 4), hidden=6).double()
    mon_model = nemon.build_model("mon", "dense", input_shape=(1, 4, 4), hidden=6).double()
    assert nemon.certificates.default_certificate(nemon_model) == "interval"
    assert nemon.certificates.default_certificate(mon_model) == "pairwise"
    assert nemon.certificates.default_certificate(nemon.Ensemble([nemon_model])) == "interval"
    u = torch.rand(20, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        labels = nemon_model(u).argmax(1)
    default = nemon.certify(nemon_model, u, labels, [1e-4, 1e-3])
    assert torch.equal(default, nemon.certify(nemon_model, u, labels, [1e-4, 1e-3], "interval"))
    with pytest.warns(nemon.CertificateWarning, match="method='interval' is stronger"):
        nemon.certify(nemon_model, u, labels, 0.5, method="lipschitz")


@pytest.mark.parametrize(
    "option, value", [("hidden", "40000"), ("cert-weight", "1.5"), ("tol", "1e-20"), ("seed", "-1")]
)
def test_cli_and_library_refuse_a_setting_with_one_rule(option, value, capsys):
    """One range, in the setting's field metadata: the option's refusal is the library's."""
    name = option.replace("-", "_")
    kind = field_named(TrainConfig, name).metadata["range"].kind
    with pytest.raises(ValueError) as library:
        TrainConfig(**{name: kind(float(value)) if kind is int else float(value)}).validate()
    with pytest.raises(SystemExit):
        cli.main(["train", f"--{option}", value, "--out", "unused"])
    assert str(library.value) in capsys.readouterr().err


def test_certified_accuracy_says_once_that_a_method_certifies_nothing():
    """Over many batches: one warning for the whole set, naming every empty radius."""
    torch.manual_seed(0)
    model = nemon.build_model("nemon", "dense", input_shape=(1, 4, 4), hidden=6).eval()
    u = torch.rand(50, 1, 4, 4)
    with torch.no_grad():
        y = model(u).argmax(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = nemon.evaluation.certified_accuracy(model, u, y, [0.0, 0.5, 0.9], "lipschitz", 10)
    notes = [w for w in caught if issubclass(w.category, nemon.CertificateWarning)]
    assert len(notes) == 1 and "at eps 0.5, 0.9; method='interval'" in str(notes[0].message)
    assert result[0.0] > 0 and result[0.5] == result[0.9] == 0.0
