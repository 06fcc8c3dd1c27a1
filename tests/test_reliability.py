"""Faults and hostile inputs: the certificate is about the model given, outputs never damage
what they replace, runs never collide, damaged files are one-line refusals."""

import json
import math
import os
import shutil
import threading
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import config, save_with_checksum, tiny_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nemon
from nemon import pretrained
from nemon.app import cli, loading, resources
from nemon.app.checkpoints import CheckpointError, load_checkpoint, read_checkpoint
from nemon.app.commands import evaluation as evaluation_command
from nemon.app.train import build_from_config, train
from nemon.runs import OutputError, RunFolderError, RunLock, save_atomic, write_text_atomic

SHAPE = (1, 4, 4)


def small_model(seed=0, **kwargs) -> nemon.Classifier:
    torch.manual_seed(seed)
    return nemon.build_model("nemon", "dense", input_shape=SHAPE, hidden=8, **kwargs).eval()


def inputs(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g)


# -- 1. the certificate is about the model passed ------------------------------------------
@pytest.mark.parametrize("push", [-100.0, -50.0])
def test_certify_judges_the_model_as_given_in_its_own_dtype(push):
    """Norm weights pushed far down: the float32 model's ratios eta_i / eta_j would overflow
    (NaN at -100) while a float64 copy would still contract. Such weights are refused in one
    line, by the model as given as by certify."""
    torch.manual_seed(0)
    m = nemon.build_model("nemon", "dense", input_shape=(1, 8, 8), hidden=20, learn_eta=True)
    with torch.no_grad():
        m.layer.parametrizations.A.original1[:15] = push
        m.readout.weight.mul_(5)
    m.eval()
    u = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="weights eta"):
        nemon.certify(m, u, y, 1e-6, method="interval")
    with pytest.raises(ValueError, match="weights eta"):
        m(u)


def test_certify_judges_the_model_as_given_in_its_own_dtype_at_its_limit():
    """Weights at the float32 limit: nothing the float32 model gets wrong may be certified."""
    torch.manual_seed(0)
    m = nemon.build_model("nemon", "dense", input_shape=(1, 8, 8), hidden=20, learn_eta=True)
    with torch.no_grad():
        m.layer.parametrizations.A.original1[:15] = -22.0
        m.readout.weight.mul_(5)
    m.eval()
    u = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = nemon.certify(m, u, y, 1e-6, method="interval")
        with torch.no_grad():
            own = m(u).argmax(1)
    assert not torch.any(ok & (own != y))


def test_float32_logits_that_overflow_certify_nothing():
    """Readout weights near float32's largest number: the float32 logits overflow, the float64
    copy's do not (its margins are huge). The model as given is unusable: nothing certified."""
    model = small_model()
    with torch.no_grad():
        model.layer.B.weight.mul_(1e3)  # states of order 100
        model.readout.weight.mul_(1e38 / model.readout.weight.abs().max())
    u = inputs(10)
    with torch.no_grad():
        assert not torch.isfinite(model(u)).all()
        y = model.double()(u.double()).argmax(1)
    model.float()
    with pytest.warns(
        nemon.CertificateWarning, match=r"own \(torch.float32\) logits are not finite"
    ):
        assert not nemon.certify(model, u, y, 1e-6).any()
    assert nemon.certify(model.double(), u.double(), y, 1e-6).any()  # the same weights in float64


def test_certify_never_changes_the_callers_model_and_is_thread_safe():
    model = small_model()
    options = (model.layer.solver_options, model.layer.backward_options)
    u, y = inputs(40), torch.zeros(40, dtype=torch.long)
    with torch.no_grad():
        y = model(u).argmax(1)
    expected = nemon.margin_bounds(model, u, y, 1e-3, dtype=None)[1]
    results, errors = [], []

    def work():
        try:
            results.append(nemon.margin_bounds(model, u, y, 1e-3, dtype=None)[1])
        except Exception as exc:  # noqa: BLE001 - any error is the failure reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(torch.equal(r, expected) for r in results)
    assert (model.layer.solver_options, model.layer.backward_options) == options


def test_certify_checks_labels_radii_and_the_model():
    model, u = small_model(), inputs(8)
    y = torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"labels must have shape \(8,\)"):
        nemon.certify(model, u, y[:, None], 0.01)
    with pytest.raises(ValueError, match="labels must be integers"):
        nemon.certify(model, u, y.float(), 0.01)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        nemon.certify(model, u, y + 10, 0.01)
    with pytest.raises(ValueError, match="eps must be finite numbers >= 0, got True"):
        nemon.certify(model, u, y, [True])
    for eps in ("0.1", True):
        with pytest.raises(ValueError, match="eps must be a number or a list"):
            nemon.certify(model, u, y, eps)
    single = nemon.certify(model, u, y, 0.01)
    for eps in (torch.tensor(0.01), np.float32(0.01), np.float64(0.01)):
        assert torch.equal(nemon.certify(model, u, y, eps), single)
    assert nemon.certify(model, u, y, torch.tensor([0.0, 0.01])).shape == (2, 8)
    with pytest.raises(ValueError, match="need a nemon.Classifier or nemon.Ensemble"):
        nemon.certify(torch.nn.Linear(16, 10), u.flatten(1), y, 0.01)
    meta = nemon.build_model("nemon", "dense", input_shape=SHAPE, hidden=8).to("meta").eval()
    with pytest.raises(ValueError, match="meta device"):
        nemon.certify(meta, u, y, 0.01)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    eps=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.lists(st.floats(min_value=-1, max_value=1), max_size=3),
        st.booleans(),
        st.text(max_size=3),
        st.none(),
    ),
    labels=st.lists(st.integers(-3, 12), min_size=0, max_size=10),
    input_range=st.one_of(st.none(), st.tuples(st.floats(-2, 2), st.floats(-2, 2))),
)
def test_certify_argument_fuzz(eps, labels, input_range):
    """Any eps, labels and input_range: a result of the right shape, or one ValueError naming them."""
    model = small_model()
    u = inputs(len(labels)) if labels else inputs(1)[:0]
    y = torch.tensor(labels, dtype=torch.long)
    try:
        ok = nemon.certify(model, u, y, eps, input_range=input_range)
    except ValueError as exc:
        assert any(word in str(exc) for word in ("eps", "labels", "clip", "range", "radius"))
        return
    radii = 1 if isinstance(eps, (int, float)) else len(eps)
    assert ok.shape == ((len(labels),) if isinstance(eps, (int, float)) else (radii, len(labels)))


# -- 2 and 4. outputs never damage what they replace; faults are one line ---------------------
@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_no_output_replaces_a_device_or_a_folder(tmp_path):
    with pytest.raises(OutputError, match="not a regular file"):
        write_text_atomic("x", Path("/dev/null"))
    assert Path("/dev/null").is_char_device()
    with pytest.raises(OutputError, match="is a folder"):
        save_atomic({"a": 1}, tmp_path)
    pytest.importorskip("onnx")
    with pytest.raises(nemon.export.ExportError, match="not a regular file"):
        nemon.export_onnx(small_model(), "/dev/null")
    assert Path("/dev/null").is_char_device()


def test_cli_refuses_bad_outputs_before_the_work(tmp_path, capsys):
    ckpt = tmp_path / "run"
    train(config(epochs=1), ckpt, data=tiny_data(), progress=False)
    for argv, message in [
        (["export", str(ckpt / "checkpoint.pt"), "--onnx", "/dev/null"], "not a regular file"),
        (["certify", str(ckpt / "checkpoint.pt"), "--plot", str(tmp_path / "x.txt")], ".png"),
        (["eval", str(ckpt / "checkpoint.pt"), "--device", "cpu:1"], "takes no index"),
        (
            ["certify", str(ckpt / "checkpoint.pt"), "--input-range", "0", "1", "--no-input-range"],
            "not allowed",
        ),
        (["eval", str(ckpt / "checkpoint.pt"), "--threads", "100000"], "from 1 to 1024"),
    ]:
        with pytest.raises(SystemExit) if "not allowed" in message or "1024" in message else _ok():
            code = cli.main(argv)
            assert code == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1


class _ok:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes through chmod 000")
def test_permission_faults_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    train(config(epochs=1), run, data=tiny_data(), progress=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        assert cli.main(["eval", str(run / "checkpoint.pt"), "--json", str(locked / "x")]) == 2
        (run / "checkpoint.pt").chmod(0)
        assert cli.main(["eval", str(run / "checkpoint.pt")]) == 2
    finally:
        locked.chmod(0o755)
        (run / "checkpoint.pt").chmod(0o644)
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 2


def test_a_full_disk_leaves_no_partial_file_and_keeps_finished_work(tmp_path, monkeypatch):
    """A write that fails (no room) is an OutputError naming the file; nothing half-written
    stays; the epoch's metrics line, written before its checkpoint, is kept."""
    target = tmp_path / "c.pt"
    save_atomic({"a": torch.zeros(3)}, target)
    before = target.read_bytes()

    def full(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OutputError, match=r"could not write .*c.pt: \[enforce fail"):
        save_atomic({"a": torch.ones(3)}, target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    with pytest.raises(OutputError):  # checkpoints at epoch ends only: the first one fails
        train(config(epochs=1, checkpoint_every=0), tmp_path / "run", data=tiny_data())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".lock",
        "config.json",
        "metrics.jsonl",
    ]


def test_cli_reports_a_write_fault_in_one_line(tmp_path, monkeypatch, capsys):
    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "cert.json"))

    run = tmp_path / "run"
    train(config(epochs=1), run, data=tiny_data(), progress=False)
    monkeypatch.setattr(cli, "write_text_atomic", no_room)
    argv = ["eval", str(run / "checkpoint.pt"), "--json", str(tmp_path / "cert.json")]
    monkeypatch.setattr(loading, "load_dataset", lambda name, data_dir=None, **_: tiny_data())
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("No space left on device: " + str(tmp_path / "cert.json"))
    assert not (tmp_path / "cert.json").exists()


# -- 3. runs never collide -------------------------------------------------------------------
def test_a_run_folder_is_locked_while_a_run_uses_it(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(RunFolderError, match=r"in use by another run \(pid \d+\)"):
            train(config(epochs=1), run, data=tiny_data(), progress=False)
        with pytest.raises(RunFolderError, match="in use by another run"):
            model = nemon.build_model("nemon", input_shape=(1, 8, 8), num_classes=2, hidden=8)
            nemon.fit(model, tiny_data(), nemon.Recipe(epochs=1), out=run)
    assert not (run / "metrics.jsonl").exists()
    train(config(epochs=1), run, data=tiny_data(), progress=False)  # free again


def test_a_lock_that_is_a_link_is_refused_and_its_target_kept(tmp_path):
    """A ``.lock`` made a symbolic (or hard) link to another file: refused by name, and the
    file it points to is neither truncated nor overwritten with the pid."""
    target = tmp_path / "precious.txt"
    target.write_bytes(b"x" * 1500)
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(target)
    with pytest.raises(RunFolderError, match=r"\.lock is a symbolic link; refused"):
        RunLock(run).__enter__()
    with pytest.raises(RunFolderError, match="symbolic link"):
        train(config(epochs=1), run, data=tiny_data(), progress=False)
    (run / ".lock").unlink()
    os.link(target, run / ".lock")
    with pytest.raises(RunFolderError, match=r"\.lock is linked elsewhere; refused"):
        RunLock(run).__enter__()
    assert target.read_bytes() == b"x" * 1500
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


# -- 5. resource limits ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        (dict(hidden=10**9), "hidden must be an integer from 1 to 32768"),
        (dict(max_iter=10**12), "max_iter must be an integer from 1 to 1000000"),
        (dict(tol=1e-300), "tol must be a finite number >= 1e-15"),
    ],
)
def test_settings_have_upper_limits(change, message):
    with pytest.raises(ValueError, match=message):
        config(**change).validate()
    if "hidden" not in change:
        with pytest.raises(ValueError, match=message.split(" must")[0]):
            nemon.SolverOptions(**change)


@pytest.mark.parametrize("family", ["nemon", "mon", "idl", "explicit"])
@pytest.mark.parametrize("arch", ["dense", "conv", "conv-small", "conv-small-bn", "conv-stacked"])
def test_the_memory_estimate_counts_the_weights_a_build_makes(family, arch):
    """The estimate's weights are those of the model built (to a few entries), for every family
    and architecture; so a refusal is about a model that really cannot fit."""
    cfg = config(model=family, arch=arch, hidden=6)
    try:
        model = build_from_config(cfg, (1, 16, 16), 3)
    except ValueError:
        pytest.skip(f"{family} has no {arch} architecture")
    built = sum(t.numel() for t in model.state_dict().values())
    assert built <= resources._model_size(asdict(cfg), (1, 16, 16), 3)[0] <= built + 6


@pytest.fixture
def eight_gib(monkeypatch):
    """A machine with 8 GiB available, whatever this one has."""
    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": 8 * 2**30)


def test_a_model_that_cannot_fit_is_refused_before_it_is_built(
    tmp_path, eight_gib, monkeypatch, capsys
):
    """--hidden 32768 (dense: 24 GiB to train) and a crafted checkpoint asking for a conv layer
    of 32768 channels (36 GiB of weights): one line naming hidden, nothing allocated or written."""
    train(config(epochs=1), tmp_path / "small", data=tiny_data(), progress=False)

    def never(*args):
        raise AssertionError("the model was built: the memory check let it through")

    monkeypatch.setattr("nemon.app.train.build_from_config", never)  # nothing big, ever
    monkeypatch.setattr("nemon.app.checkpoints.build_from_config", never)
    monkeypatch.setattr("nemon.app.train.load_dataset", lambda *a, **k: tiny_data())
    out = tmp_path / "big"
    assert cli.main(["train", "--hidden", "32768", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hidden = 32768: training this nemon dense model" in err
    assert "GiB of memory available; lower hidden" in err and not out.exists()
    ckpt = read_checkpoint(tmp_path / "small" / "checkpoint.pt")
    ckpt["config"].update(arch="conv", hidden=32768)
    save_with_checksum(ckpt, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match=r"hidden = 32768: loading this nemon conv model"):
        load_checkpoint(tmp_path / "crafted.pt")
    ckpt["input_shape"] = (1, 0, 8)
    save_with_checksum(ckpt, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match="input_shape must be 3 positive integers"):
        load_checkpoint(tmp_path / "crafted.pt")
    ckpt.update(input_shape=(1, 8, 8), config={**ckpt["config"], "arch": "dense", "hidden": 16384})
    save_with_checksum(ckpt, tmp_path / "crafted.pt")  # 3 GiB to load, 20 GiB to certify
    assert cli.main(["certify", str(tmp_path / "crafted.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hidden = 16384: certifying this nemon dense model" in err


def test_the_memory_a_model_needs_grows_with_its_use():
    """Training holds gradients and Adam's moments; certifying a float64 copy and the embedding
    system (2n)^2: each use needs more than loading, and a dense layer's A is counted."""
    cfg = config(hidden=32768)
    need = {use: resources.memory_needed(cfg, (1, 28, 28), 10, use)[0] for use in resources.USES}
    assert need["load"] < need["train"] < need["certify"]
    assert 4 * 32768**2 * 3 <= need["load"]  # A's parameter, A built, the file's copy
    assert need["certify"] - need["load"] >= 8 * (2 * 32768) ** 2  # the embedding matrix
    with pytest.raises(ValueError, match="use must be one of load, train, certify"):
        resources.memory_needed(cfg, (1, 28, 28), 10, "export")


@pytest.mark.slow
def test_an_archive_that_would_unpack_to_gigabytes_is_refused_before_unpacking(tmp_path):
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (2**27))  # 128 MiB of zeros, ~130 KB packed
    with pytest.raises(CheckpointError, match="would unpack to 128 MiB"):
        read_checkpoint(bomb)


# -- 6. checkpoints and shipped folders ------------------------------------------------------
def test_checkpoint_configs_are_strict_and_covered_by_the_checksum(tmp_path):
    run = tmp_path / "run"
    train(config(epochs=1, gamma=0.3), run, data=tiny_data(), progress=False)
    path = run / "checkpoint.pt"
    original = read_checkpoint(path)
    for edit, message in [
        (lambda c: c["config"].pop("gamma"), "damaged"),
        (lambda c: c["config"].update(model="idl"), "damaged"),
        (lambda c: c["model"]["readout.bias"].add_(1e-3), "damaged"),
    ]:
        ckpt = read_checkpoint(path)
        edit(ckpt)
        save_atomic(ckpt, tmp_path / "edited.pt")
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / "edited.pt")
    ckpt = dict(original)
    ckpt["config"] = {k: v for k, v in original["config"].items() if k != "gamma"}
    save_with_checksum(ckpt, tmp_path / "old.pt")  # its checksum matches: the config is strict
    with pytest.raises(CheckpointError, match=r"missing model settings \['gamma'\]"):
        load_checkpoint(tmp_path / "old.pt")
    ckpt["config"] = {**original["config"], "speed": 2}
    save_with_checksum(ckpt, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"unknown settings \['speed'\]"):
        load_checkpoint(tmp_path / "old.pt")
    model, _ = load_checkpoint(path)
    assert model.layer.gamma == pytest.approx(0.3)


def test_a_checkpoint_without_its_checksum_is_refused(tmp_path):
    """Every checkpoint nemon writes holds a checksum: one without it (a weight changed and the
    checksum dropped) is refused by loading and by resuming alike."""
    run = tmp_path / "run"
    train(config(epochs=2), run, data=tiny_data(), progress=False, stop_after_steps=3)
    ckpt = read_checkpoint(run / "checkpoint.pt")
    ckpt["model"]["readout.bias"].add_(1.0)
    del ckpt["checksum"]
    save_atomic(ckpt, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="holds no checksum; refused"):
        load_checkpoint(run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="holds no checksum; refused"):
        train(config(epochs=2), run, data=tiny_data(), progress=False, resume=True)


def test_the_weights_a_resume_continues_from_are_covered_by_the_checksum(tmp_path):
    """Weight averaging: ``live_model`` (what resume loads) is inside the checksum, so changing
    it is refused; the untouched file resumes."""
    cfg = config(epochs=3, swa_start=2, checkpoint_every=0)
    run = tmp_path / "run"
    train(cfg, run, data=tiny_data(), progress=False, stop_after_steps=15)
    intact = read_checkpoint(run / "checkpoint.pt")
    ckpt = read_checkpoint(run / "checkpoint.pt")
    ckpt["live_model"]["readout.bias"].add_(1e-3)
    save_atomic(ckpt, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="damaged: its weights or config do not match"):
        train(cfg, run, data=tiny_data(), progress=False, resume=True)
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(run / "checkpoint.pt")
    save_atomic(intact, run / "checkpoint.pt")
    assert len(train(cfg, run, data=tiny_data(), progress=False, resume=True)["history"]) == 3


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A copy of one shipped folder that the test may damage."""
    root = tmp_path / "pretrained"
    shutil.copytree(pretrained._root() / "mnist-cert-0.1", root / "mnist-cert-0.1")
    monkeypatch.setattr(pretrained, "_root", lambda: root)
    return root / "mnist-cert-0.1"


def _rewrite(info: dict, folder: Path, checksums: bool = True) -> None:
    if checksums:
        info["sha256"] = pretrained._sha256(folder / "model.safetensors")
        info["config_sha256"] = pretrained.description_checksum(info)
    (folder / "config.json").write_text(json.dumps(info))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "no valid safetensors header|do not fit"),
        ("header", "no valid safetensors header"),
        ("no-sha", "lacks sha256"),
        ("no-config", "lacks config"),
        ("no-gamma", "lacks config.gamma"),
        ("classes", "does not match its checksum"),
        ("classes-resigned", "do not fit"),
        ("not-json", "cannot be read"),
    ],
)
def test_a_damaged_shipped_folder_is_a_one_line_refusal(shipped_copy, damage, message):
    folder = shipped_copy
    info = json.loads((folder / "config.json").read_text())
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:5000])
        _rewrite(info, folder)
    elif damage == "header":
        data = weights.read_bytes()
        weights.write_bytes((2**40).to_bytes(8, "little") + data[8:])
        _rewrite(info, folder)
    elif damage == "no-sha":
        info.pop("sha256")
        _rewrite(info, folder, checksums=False)
    elif damage == "no-config":
        info.pop("config")
        _rewrite(info, folder)
    elif damage == "no-gamma":
        info["config"].pop("gamma")
        _rewrite(info, folder)
    elif damage == "classes":
        info["num_classes"] = 7
        _rewrite(info, folder, checksums=False)
    elif damage == "classes-resigned":
        info["num_classes"] = 7
        _rewrite(info, folder)
    else:
        (folder / "config.json").write_text("{not json")
    with pytest.raises(pretrained.PretrainedError, match=message) as info_:
        nemon.load_pretrained("mnist-cert-0.1")
    assert len(str(info_.value).splitlines()) == 1


# -- 8. smaller ------------------------------------------------------------------------------
def test_export_refuses_a_float16_model():
    pytest.importorskip("onnx")
    with pytest.raises(nemon.export.ExportError, match="float32 and float64 models, not"):
        nemon.export_onnx(small_model().half(), "x.onnx")


def test_eval_prints_strict_json(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train(config(epochs=1), run, data=tiny_data(), progress=False)
    monkeypatch.setattr(loading, "load_dataset", lambda name, data_dir=None, **_: tiny_data())
    monkeypatch.setattr(
        evaluation_command, "evaluate", lambda *a, **k: {"accuracy": 0.5, "loss": math.nan}
    )
    assert cli.main(["eval", str(run / "checkpoint.pt")]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["loss"] is None and "NaN" not in out


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "bench", interrupted)
    assert cli.main(["bench", "--quick", "--out", "somewhere"]) == 130
    assert capsys.readouterr().err.strip() == "nemon bench: interrupted"


def test_a_local_folder_named_like_a_shipped_model_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("mnist-cert-0.1").mkdir()
    assert cli.main(["eval", "mnist-cert-0.1"]) == 2
    err = capsys.readouterr().err
    assert "is a local path, used instead of the shipped model" in err


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    train(config(epochs=1), run, data=tiny_data(), progress=False)
    return read_checkpoint(run / "checkpoint.pt")


CONFIG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**7),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-2, 5), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    drop=st.lists(st.sampled_from(sorted(config().__dict__)), max_size=3),
    change=st.dictionaries(st.sampled_from(sorted(config().__dict__) + ["extra"]), CONFIG_VALUES),
)
def test_checkpoint_config_fuzz(saved_run, tmp_path_factory, drop, change):
    """Any crafted config (its checksum made to match): a model, or one CheckpointError."""
    ckpt = dict(saved_run)
    cfg = {k: v for k, v in saved_run["config"].items() if k not in drop}
    cfg.update(change)
    ckpt["config"] = cfg
    path = tmp_path_factory.mktemp("ckpt") / "c.pt"
    save_with_checksum(ckpt, path)
    try:
        model, _ = load_checkpoint(path)
    except CheckpointError as exc:
        assert len(str(exc).splitlines()) == 1
        return
    assert isinstance(model, nemon.Classifier)


def test_resuming_a_damaged_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    train(config(epochs=2), run, data=tiny_data(), progress=False, stop_after_steps=3)
    ckpt = read_checkpoint(run / "checkpoint.pt")
    ckpt["model"]["readout.bias"].add_(1e-3)  # a flipped weight, checksum kept
    save_atomic(ckpt, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="damaged: its weights or config do not match"):
        train(config(epochs=2), run, data=tiny_data(), progress=False, resume=True)


def test_a_centre_the_float32_model_gets_wrong_is_not_certified():
    """Logits of 1e8 + 3 and 1e8: float64 tells them apart, float32 rounds both to 1e8 and
    predicts class 0. The exact margin (3) is far above every charge; the model as it runs is
    still wrong at the centre, so nothing is certified."""
    layer = nemon.NEMONDense(1, 1, gamma=0.5)
    with torch.no_grad():
        layer.A = torch.zeros(1, 1)
        layer.B.weight.fill_(1.0)
        layer.B.bias.zero_()
    model = nemon.Classifier(layer, 2).eval()
    with torch.no_grad():
        model.readout.weight.copy_(torch.tensor([[0.0], [1.0]]))
        model.readout.bias.fill_(1e8)
    u, y = torch.tensor([[3.0]]), torch.tensor([1])
    with torch.no_grad():
        assert int(model(u).argmax(1)) == 0 and int(model.double()(u.double()).argmax(1)) == 1
    model.float()
    with pytest.warns(nemon.CertificateWarning, match="in its own dtype"):
        assert not bool(nemon.certify(model, u, y, 1e-6, input_range=None))
