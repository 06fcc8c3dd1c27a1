"""`nemon verify`: the run folder (verdicts as they come, resume, refusals) and its errors.

A tiny dense model (784 -> 8 -> 10) on 24 synthetic images, half labelled as the model predicts
and half not, so that every run is quick and has certified, refuted and (without search time)
unknown inputs; the data loader is replaced, so no data set is needed.
"""

import json
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

import nemon.verification
from nemon.app import cli, loading, verify_run
from nemon.app.config import TrainConfig
from nemon.data import Dataset
from nemon.models import build_from_config
from nemon.runs import RunLock, save_atomic, state_checksum

pytest.importorskip("highspy")

N = 24
EPS = "0.01"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A checkpoint as `nemon train` writes one, and a test set it classifies half right."""
    torch.manual_seed(0)
    config = asdict(TrainConfig(hidden=8))
    model = build_from_config(config, (1, 28, 28), 10).eval()
    weights = model.state_dict()
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    ckpt = {"config": config, "input_shape": (1, 28, 28), "num_classes": 10, "model": weights}
    save_atomic({**ckpt, "checksum": state_checksum(weights, config)}, path)
    g = torch.Generator().manual_seed(1)
    x = 0.5 + 0.3 * (torch.rand(N, 1, 28, 28, generator=g) - 0.5)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    y = torch.where(torch.arange(N) % 2 == 0, predicted, (predicted + 1) % 10)
    return path, Dataset("mnist", x, y, x, y)


@pytest.fixture
def run(tiny, monkeypatch, capsys):
    """``run(*argv)`` -> (status, stdout, stderr) of ``nemon verify MODEL --eps EPS ...``."""
    path, data = tiny
    monkeypatch.setattr(loading, "load_dataset", lambda name, data_dir=None, **_: data)

    def call(*argv, eps=EPS, model=str(path)):
        try:
            status = cli.main(["verify", model, "--eps", eps, "--threads", "1", *argv])
        except SystemExit as exc:  # argparse's refusals
            status = exc.code
        out, err = capsys.readouterr()
        return status, out, err

    return call


@pytest.fixture
def calls(monkeypatch):
    """The rows and results of each `verify` call the command makes."""
    seen = []
    real = nemon.verification.verify

    def spy(model, x, y, eps, **kw):
        result = real(model, x, y, eps, **kw)
        seen.append((x.clone(), result))
        return result

    monkeypatch.setattr(nemon.verification, "verify", spy)
    return seen


def lines(folder):
    return [json.loads(s) for s in (folder / "verdicts.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_run_records_each_verdict_with_its_final_fields(run, calls, tmp_path, tiny):
    folder, report = tmp_path / "run", tmp_path / "summary.json"
    status, out, err = run("--out", str(folder), "--json", str(report), "--time-limit", "5")
    assert status == 0, err
    records = lines(folder)
    assert sorted(r["index"] for r in records) == list(range(N))  # each once
    summary = json.loads((folder / "summary.json").read_text())
    assert json.loads(report.read_text()) == summary
    counts = {v: sum(r["verdict"] == v for r in records) for v in ("certified", "refuted")}
    assert summary["certified"] == counts["certified"] > 0
    assert summary["refuted"] == counts["refuted"] >= N // 2  # the wrong labels, at the centre
    assert summary["unknown"] == N - summary["certified"] - summary["refuted"]
    assert summary["verified_robust_accuracy"] == summary["certified"] / N
    assert sum(summary["stages"].values()) == summary["certified"] + summary["refuted"]
    assert summary["seconds_total"] == pytest.approx(sum(r["seconds"] for r in records))
    assert out.strip().splitlines()[-1] == verify_run.summary_line(summary)
    config = json.loads((folder / "config.json").read_text())
    assert config["eps"] == 0.01 and config["clip"] == [0.0, 1.0] and len(config["sha256"]) == 64
    # each line holds the result's final fields (a refutation's time is added after on_verdict)
    (x, result), = calls  # fmt: skip
    for r in records:
        i = r["index"]
        assert r["seconds"] == float(result.seconds[i]) > 0 and r["stage"] == result.stage[i]
        assert r["nodes"] == int(result.nodes[i])
    # counterexamples: one per refuted input, in the ball and misclassified
    _, data = tiny
    for r in records:
        path = folder / "counterexamples" / f"{r['index']}.npy"
        assert path.is_file() == (r["verdict"] == "refuted")
        if path.is_file():
            point = torch.from_numpy(np.load(path))
            assert (point - data.test_x[r["index"]]).abs().max() <= 0.01 + 1e-7


@pytest.mark.slow
def test_resume_after_a_kill_skips_exactly_the_recorded_verdicts(run, calls, tmp_path):
    folder = tmp_path / "run"
    assert run("--out", str(folder), "--time-limit", "5")[0] == 0
    before = json.loads((folder / "summary.json").read_text())
    text = (folder / "verdicts.jsonl").read_text().splitlines(keepends=True)
    k = 9
    kept = [json.loads(s)["index"] for s in text[:k]]
    # the kill: the first k lines kept, the next one cut short
    (folder / "verdicts.jsonl").write_text("".join(text[:k]) + text[k][:20])
    calls.clear()
    status, out, err = run("--out", str(folder), "--time-limit", "5", "--resume")
    assert status == 0, err
    (x, _), = calls  # fmt: skip
    assert len(x) == N - k  # exactly the others (none of the first k was unknown)
    records = lines(folder)  # the cut line is gone; every line parses
    assert len(records) == N and [r["index"] for r in records[:k]] == kept
    after = json.loads((folder / "summary.json").read_text())
    for key in ("certified", "refuted", "unknown", "stages", "images"):
        assert after[key] == before[key], key


@pytest.mark.slow
def test_unknowns_are_recorded_and_retried(run, calls, tmp_path):
    folder = tmp_path / "run"
    assert run("--out", str(folder), "--time-limit", "0")[0] == 0
    first = {r["index"]: r for r in lines(folder)}
    unknown = [i for i, r in first.items() if r["verdict"] == "unknown"]
    assert len(first) == N and unknown  # no search time: some are left open, and recorded
    calls.clear()
    assert run("--out", str(folder), "--time-limit", "0", "--resume")[0] == 0
    assert not calls  # no more time than they had: the same search, not repeated
    assert run("--out", str(folder), "--time-limit", "5", "--resume")[0] == 0
    (x, _), = calls  # fmt: skip
    assert len(x) == len(unknown)  # only they are retried
    final = {r["index"]: r for r in lines(folder)}  # the last line of each index
    assert all(final[i]["verdict"] != "unknown" for i in unknown)
    assert json.loads((folder / "config.json").read_text())["time_limit"] == 5.0
    assert json.loads((folder / "summary.json").read_text())["unknown"] == 0


def test_refusals_of_the_folder(run, tmp_path):
    folder = tmp_path / "run"
    assert run("--out", str(folder), "--time-limit", "0", "--test-limit", "4")[0] == 0
    status, out, err = run("--out", str(folder), "--test-limit", "4", "--resume", eps="0.02")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "eps: 0.01 -> 0.02" in err
    status, _, err = run("--out", str(folder), "--test-limit", "4")
    assert status == 2 and "not empty" in err and "--resume" in err
    status, _, err = run("--out", str(tmp_path / "new"), "--resume")
    assert status == 2 and "nothing to resume" in err
    assert not (tmp_path / "new").exists()
    status, _, err = run("--resume")
    assert status == 2 and "--resume needs --out" in err
    with RunLock(folder):
        status, _, err = run("--out", str(folder), "--test-limit", "4", "--resume")
    assert status == 2 and "in use" in err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--eps", "-0.1"], "--eps"),
        (["--eps", "nan"], "--eps"),
        (["--time-limit", "-1"], "--time-limit"),
        (["--time-limit", "inf"], "--time-limit"),
        (["--input-range", "1", "0"], "LO must be below HI"),
        # data outside the range: the options to change named, not the library's argument
        (["--input-range", "0.45", "0.55"], "outside --input-range=(0.45, 0.55)"),
        (["--input-range", "0.45", "0.55"], "or --no-input-range for unbounded data"),
    ],
)
def test_bad_arguments_are_one_line(run, argv, words):
    status, _, err = run(*argv)  # a later --eps overrides the fixture's
    assert status == 2 and len(err.strip().splitlines()) == 1 and words in err


def test_missing_model_and_missing_highspy_are_one_line(run, monkeypatch, tmp_path):
    status, _, err = run(model=str(tmp_path / "none.pt"))
    assert status == 2 and len(err.strip().splitlines()) == 1 and "neither a file" in err
    monkeypatch.setitem(sys.modules, "highspy", None)  # import highspy raises ImportError
    status, _, err = run("--out", str(tmp_path / "run"))
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "pip install 'nemon[verify]'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_progress_lines_without_a_terminal(run, monkeypatch, tmp_path):
    monkeypatch.setattr(nemon.progress, "EVERY", 0.0)
    status, out, err = run("--time-limit", "0", "--test-limit", "6")
    assert status == 0 and "verify: " in err and "certified" in err
    assert out.strip().startswith("certified ")
    status, out, err = run("--time-limit", "0", "--test-limit", "6", "--no-progress")
    assert "verify: " not in err


@pytest.mark.slow
def test_chunks_record_each_chunk(run, calls, monkeypatch, tmp_path):
    monkeypatch.setattr(verify_run, "CHUNK", 10)
    folder = tmp_path / "run"
    assert run("--out", str(folder), "--time-limit", "0")[0] == 0
    assert [len(x) for x, _ in calls] == [10, 10, 4]
    assert sorted(r["index"] for r in lines(folder)) == list(range(N))


def test_a_model_file_with_a_max_pool(run, calls, monkeypatch, tmp_path):
    """A model file whose encoder max-pools verifies from the command line: each verdict
    recorded, the search reached, counterexamples in the ball."""
    torch.manual_seed(0)
    nn = torch.nn
    encoder = nn.Sequential(nn.Conv2d(1, 2, 4, stride=4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    layer = nemon.NEMONDense(18, 4, gamma=0.5)
    model = nemon.Classifier(layer, 10, encoder=encoder, input_shape=(1, 28, 28)).eval()
    with torch.no_grad():  # margins that the ball of 0.01 crosses for some images
        model.encoder[0].weight.mul_(2.0)
        model.readout.weight.mul_(2.0)
    path = nemon.save(model, tmp_path / "pooled.safetensors", data={"name": "mnist"})
    g = torch.Generator().manual_seed(2)
    x = 0.5 + 0.3 * (torch.rand(6, 1, 28, 28, generator=g) - 0.5)
    with torch.no_grad():
        y = model(x).argmax(1)
    monkeypatch.setattr(loading, "load_dataset", lambda *a, **k: Dataset("mnist", x, y, x, y))
    folder = tmp_path / "run"
    attack = ("--attack-steps", "5", "--attack-restarts", "1")
    status, _, err = run("--out", str(folder), "--time-limit", "10", *attack, model=str(path))
    assert status == 0, err
    records = lines(folder)
    assert sorted(r["index"] for r in records) == list(range(6))
    ((_, result),) = calls
    assert {"linear", "attack", "search"} <= set(result.stage) and not bool(result.unknown.any())
    for r in records:
        cx = folder / "counterexamples" / f"{r['index']}.npy"
        if cx.is_file():
            assert (torch.from_numpy(np.load(cx)) - x[r["index"]]).abs().max() <= 0.01 + 1e-7


def test_a_checkpoint_file_is_read_once(tiny, monkeypatch):
    from nemon.app import checkpoints

    path, _ = tiny
    reads = []
    real = checkpoints.read_torch_file

    def counted(*args, **kw):
        reads.append(args[0])
        return real(*args, **kw)

    monkeypatch.setattr(checkpoints, "read_torch_file", counted)
    monkeypatch.setattr(loading, "read_torch_file", counted)
    model, dataset = loading.load_model_named(str(path), "cpu")
    assert dataset == "mnist" and len(reads) == 1
