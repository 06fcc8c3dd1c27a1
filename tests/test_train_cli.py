import json
import math

import pytest
import torch
from helpers import config, mnist_dir, requires_mnist, save_with_checksum, tiny_data

from nemon.app.cli import main
from nemon.app.train import (
    RunFolderError,
    TrainConfig,
    build_from_config,
    certified_accuracy,
    evaluate,
    load_checkpoint,
    read_checkpoint,
    train,
)


@pytest.mark.parametrize("model", ["nemon", "mon", "idl"])
def test_training_reduces_loss_and_logs(model, tmp_path):
    result = train(config(model=model), tmp_path, data=tiny_data(), progress=False)
    hist = result["history"]
    assert len(hist) == 2 and hist[-1]["train_loss"] < hist[0]["train_loss"] + 0.1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert hist[0]["forward_iterations"] > 0 and hist[0]["backward_iterations"] > 0


def test_training_lowers_the_loss_of_the_initial_model(tmp_path):
    """The trained model's test loss is well below that of the same initial parameters."""
    data, cfg = tiny_data(), config(epochs=8, lr=3e-2)
    torch.manual_seed(cfg.seed)
    initial = build_from_config(cfg, data.input_shape, data.num_classes)
    before = evaluate(initial, data.test_x, data.test_y)["loss"]
    model = train(cfg, tmp_path, data=data, progress=False)["model"]
    after = evaluate(model, data.test_x, data.test_y)["loss"]
    assert after < 0.9 * before


def test_resume_after_kill_mid_epoch_loses_nothing(tmp_path):
    data, cfg = tiny_data(), config(epochs=2)
    full = train(cfg, tmp_path / "full", data=data, progress=False)
    # "kill" after 9 steps (epoch 1 has 7 batches): the next run resumes inside epoch 2
    stopped = train(cfg, tmp_path / "cut", data=data, progress=False, stop_after_steps=9)
    assert stopped["stopped"]
    resumed = train(cfg, tmp_path / "cut", data=data, progress=False, resume=True)
    a = full["model"].state_dict()
    b = resumed["model"].state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_resume_refuses_a_different_config(tmp_path):
    data = tiny_data()
    train(config(epochs=1), tmp_path, data=data, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(config.lr: 0.01 -> 0.5"):
        train(config(epochs=1, lr=0.5), tmp_path, data=data, progress=False, resume=True)


def _without_setting(folder, name):
    """The checkpoint as written before the setting ``name`` existed."""
    ckpt = read_checkpoint(folder / "checkpoint.pt")
    del ckpt["config"][name]
    del ckpt["recipe"][name]
    save_with_checksum(ckpt, folder / "checkpoint.pt")


def test_resume_of_a_checkpoint_older_than_a_setting_takes_its_default(tmp_path):
    data = tiny_data()
    train(config(epochs=1), tmp_path, data=data, progress=False, stop_after_steps=3)
    _without_setting(tmp_path, "tune_splitting_step")
    with pytest.warns(UserWarning, match=r"does not record config.tune_splitting_step"):
        result = train(config(epochs=1), tmp_path, data=data, progress=False, resume=True)
    assert [h["epoch"] for h in result["history"]] == [1]


def test_resume_refuses_a_checkpoint_missing_a_model_setting_even_at_its_default(tmp_path):
    data = tiny_data()
    train(config(epochs=1), tmp_path, data=data, progress=False)
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    del ckpt["config"]["gamma"]  # a model setting: no default is guessed
    save_with_checksum(ckpt, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"config.gamma: \(not recorded\) -> 0.95"):
        train(config(epochs=1), tmp_path, data=data, progress=False, resume=True)


def test_resume_refuses_a_non_default_value_for_a_setting_the_file_lacks(tmp_path):
    data = tiny_data()
    train(config(epochs=1), tmp_path, data=data, progress=False)
    _without_setting(tmp_path, "adv_steps")
    with pytest.raises(ValueError, match=r"config.adv_steps: 0 -> 2"):
        train(config(epochs=1, adv_steps=2), tmp_path, data=data, progress=False, resume=True)


def test_checkpoint_rebuilds_the_model(tmp_path):
    data = tiny_data()
    result = train(config(epochs=1, model="idl"), tmp_path, data=data, progress=False)
    model, ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    with torch.no_grad():
        assert torch.allclose(model(data.test_x), result["model"](data.test_x), atol=1e-6)


@requires_mnist
def test_cli_train_eval_certify(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data-dir", str(mnist_dir())]
    common = ["--epochs", "1", "--train-limit", "900", "--test-limit", "300", "--no-progress"]
    assert main(["train", "--hidden", "20", "--out", str(out), *common, *args]) == 0
    assert "best test accuracy" in capsys.readouterr().out
    assert main(["eval", str(out / "checkpoint.pt"), "--test-limit", "300", *args]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.3 < result["accuracy"] <= 1 and result["lipschitz_bound"] > 0
    js = tmp_path / "cert.json"
    code = main(
        [
            "certify",
            str(out / "checkpoint.pt"),
            "--eps",
            "0",
            "1e-5",
            "--json",
            str(js),
            *args,
            "--test-limit",
            "300",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "on 300 test images" in printed and "interval" in printed  # the default method
    cert = json.loads(js.read_text())
    assert cert["images"] == 300 and set(cert) >= {"interval"} and "pairwise" not in cert
    code = main(
        ["certify", str(out / "checkpoint.pt"), "--eps", "0", "1e-5", "--json", str(js)]
        + ["--method", "interval", "pairwise", "lipschitz", *args, "--test-limit", "300"]
    )
    assert code == 0
    cert = json.loads(js.read_text())
    assert cert["interval"]["1e-05"] >= cert["pairwise"]["1e-05"] >= cert["lipschitz"]["1e-05"]
    assert cert["pairwise"]["0.0"] >= cert["pairwise"]["1e-05"]


def test_cli_reports_errors(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("nemon.data.urllib.request.urlopen", offline)
    code = main(
        ["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r"), "--gamma", "0.5"]
    )
    # the data is absent and the download fails: a clear error and exit code 2
    assert code == 2
    assert "nemon train: error" in capsys.readouterr().err


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from helpers import config, tiny_data
from nemon.app.train import train
from pathlib import Path
resume = (Path({out!r}) / "checkpoint.pt").exists()
train(config(epochs=30, checkpoint_every=1), {out!r}, data=tiny_data(), progress=False, resume=resume)
"""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    """A real SIGKILL between checkpoints: the resumed run ends with the same parameters."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "killed"
    code = CHILD.format(tests=str(Path(__file__).parent), out=str(out))
    child = subprocess.Popen([sys.executable, "-c", code])
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and child.poll() is None:
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=True)
            if state["epoch"] >= 2 and state["step"] > 0:
                child.send_signal(signal.SIGKILL)
                killed_at = (state["epoch"], state["step"])
                break
        time.sleep(0.05)
    child.wait()
    assert killed_at is not None, "the run finished before it could be killed"
    assert torch.load(ckpt, weights_only=True)["epoch"] < 30
    subprocess.run([sys.executable, "-c", code], check=True)  # resume to the end
    resumed = torch.load(ckpt, weights_only=True)
    full = train(
        config(epochs=30, checkpoint_every=1), tmp_path / "full", data=tiny_data(), progress=False
    )["model"].state_dict()
    for key, value in full.items():
        assert torch.allclose(value, resumed["model"][key], atol=1e-6), key
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, 31))


def test_tensorboard_logs_the_epoch_records(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(
        config(epochs=2),
        tmp_path / "run",
        data=tiny_data(),
        progress=False,
        tensorboard=tmp_path / "tb",
    )
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("test_accuracy")]
    expected = [(h["epoch"], h["test_accuracy"]) for h in result["history"]]
    assert [s for s, _ in logged] == [s for s, _ in expected]
    assert [v for _, v in logged] == pytest.approx([v for _, v in expected])
    assert "train_seconds" in events.Tags()["scalars"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        train(config(), tmp_path / "run2", data=tiny_data(), tensorboard=tmp_path / "file")
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_robust_only_loss_skips_the_clean_graph_but_not_its_gradient(weight):
    from nemon.intervals import interval_loss
    from nemon.losses import recipe_loss

    torch.manual_seed(0)
    cfg = TrainConfig(arch="conv-small", hidden=16, gamma=0.5, cert_weight=weight, ramp="linear")
    model = build_from_config(cfg, (1, 28, 28), 10).double()
    u, y = torch.rand(6, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (6,))
    logits, loss = recipe_loss(model, model, cfg.recipe(), u, y, 0.1, 1.0)
    expected = (1 - weight) * torch.nn.functional.cross_entropy(model(u), y)
    expected = expected + weight * interval_loss(model, u, y, 0.1)
    params = list(model.parameters())
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(logits, model(u)) and logits.requires_grad == (weight < 1)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_adversarial_term_replaces_the_clean_one(weight):
    """MTL-IBP: ``(1 - w) CE(PGD point) + w IBP``, the PGD point computed in eval mode from a
    seeded start; the logits returned (the accuracy metric) are those at the PGD point, with no
    clean pass. Fails if the clean term is kept."""
    from nemon.intervals import interval_loss
    from nemon.losses import adversarial_points, recipe_loss

    torch.manual_seed(0)
    cfg = TrainConfig(
        arch="conv-small-bn", hidden=16, gamma=0.5, cert_weight=weight, ramp="linear",
        adv_steps=2,
    )  # fmt: skip
    model = build_from_config(cfg, (1, 28, 28), 10).double().train()
    u, y = torch.rand(6, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (6,))
    model(u)  # record training-mode statistics, as every step's clean pass does
    bn = model.encoder[1]
    running = bn.running_mean.clone()
    adv = adversarial_points(model, u, y, 0.1, 2, seed=7)
    assert model.training and torch.equal(bn.running_mean, running)  # attack in eval mode
    assert (adv - u).abs().max() <= 0.1 + 1e-12 and adv.min() >= 0 and adv.max() <= 1
    assert (adv - u).abs().max() > 0.05  # it moved
    logits, loss = recipe_loss(model, model, cfg.recipe(), u, y, 0.1, 1.0, step=7)
    ce = torch.nn.functional.cross_entropy
    expected = (1 - weight) * ce(model(adv), y)
    if weight > 0:
        expected = expected + weight * interval_loss(model, u, y, 0.1)
    assert torch.allclose(loss, expected, atol=1e-12)
    clean_mix = (1 - weight) * ce(model(u), y) + weight * interval_loss(model, u, y, 0.1)
    assert not torch.allclose(loss, clean_mix, atol=1e-6)
    assert torch.allclose(logits, model(adv)) and not logits.requires_grad
    assert not torch.allclose(logits, model(u), atol=1e-6)
    params = list(model.parameters())
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        assert torch.allclose(got, want, atol=1e-10)


def test_adversarial_training_runs_and_is_clean_at_radius_zero(tmp_path):
    """``adv_steps`` only acts once the radius is positive: the warm-up epoch matches a run
    without it, bit for bit; afterwards the runs differ."""
    data = tiny_data()
    kw = dict(arch="conv-small", gamma=0.5, warmup_epochs=1, cert_eps=0.05, cert_ramp_epochs=1)
    plain = train(config(**kw), tmp_path / "plain", data=data, progress=False)["history"]
    adv = train(config(**kw, adv_steps=1), tmp_path / "adv", data=data, progress=False)
    adv = adv["history"]
    assert adv[0]["train_loss"] == plain[0]["train_loss"]
    assert adv[1]["train_loss"] != plain[1]["train_loss"]
    assert all(math.isfinite(h["train_loss"]) for h in adv)


def test_interval_training_with_batch_norm_trains_its_statistics_and_certifies(tmp_path):
    """conv-small-bn: the interval pass runs through batch norms in training mode (the clean
    batch's statistics), the running statistics learn the data, and the loaded checkpoint (eval
    mode) gives its Lipschitz bound and certificates."""
    data = tiny_data()
    cfg = config(
        arch="conv-small-bn", gamma=0.5, epochs=2, warmup_epochs=1, cert_eps=0.05,
        cert_ramp_epochs=1, cert_eval_eps=[0.01], cert_eval_limit=20,
    )  # fmt: skip
    result = train(cfg, tmp_path, data=data, progress=False)
    assert result["history"][-1]["certified"]["0.01"] >= 0
    model, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    assert not model.training
    bn = model.encoder[1]
    assert int(bn.num_batches_tracked) == 2 * 7 and float(bn.running_var.min()) != 1.0
    assert float(model.lipschitz_bound()) > 0
    assert 0 <= certified_accuracy(model, data.test_x, data.test_y, [0.01], "interval")[0.01]


def _close(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_weight_averaging_keeps_the_mean_of_the_epoch_ends_and_resumes_exactly(tmp_path):
    data, cfg = tiny_data(), config(epochs=3, swa_start=2, checkpoint_every=0)
    full = train(cfg, tmp_path / "full", data=data, progress=False)
    # stopped one step into epoch 3: the average holds epoch 2's end only
    train(cfg, tmp_path / "cut", data=data, progress=False, stop_after_steps=15)
    after_two = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert after_two["average"]["count"] == 1 and not _close(
        after_two["model"], after_two["live_model"]
    )
    resumed = train(cfg, tmp_path / "cut", data=data, progress=False, resume=True)
    final = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert final["average"]["count"] == 2
    w2, w3 = after_two["model"], final["live_model"]
    mean = {k: (w2[k] + w3[k]) / 2 if w2[k].is_floating_point() else w3[k] for k in w2}
    assert _close(final["model"], mean) and not _close(final["model"], w3)
    assert _close(resumed["model"].state_dict(), mean)
    assert _close(full["model"].state_dict(), mean)  # the interruption changed nothing
    # the averaged epochs report the average's accuracy; load_checkpoint gives the average
    model, _ = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert evaluate(model, data.test_x, data.test_y)["accuracy"] == pytest.approx(
        resumed["history"][-1]["test_accuracy"]
    )
    assert [h.get("averaged_epochs") for h in resumed["history"]] == [None, 1, 2]


def test_weight_averaging_over_the_last_epoch_alone_changes_nothing(tmp_path):
    data = tiny_data()
    plain = train(config(epochs=2), tmp_path / "plain", data=data, progress=False)
    last = train(config(epochs=2, swa_start=2), tmp_path / "last", data=data, progress=False)
    assert _close(plain["model"].state_dict(), last["model"].state_dict())
    assert plain["history"][-1]["test_loss"] == pytest.approx(last["history"][-1]["test_loss"])


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(epochs=2, swa_start=3), "swa_start must be at most epochs"),
        (dict(swa_start=-1), "swa_start must be an integer >= 0"),
        (dict(arch="conv-small-bn", swa_start=1), "without batch norm"),
    ],
)
def test_weight_averaging_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        config(**settings).validate()
