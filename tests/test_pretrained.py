"""Shipped models: safetensors weights with a checked digest, loadable by name, CLI included."""

import json
from dataclasses import asdict

import pytest
import torch
from helpers import config, tiny_data

import nemon
from nemon import pretrained
from nemon.app import cli, loading
from nemon.app.shipping import save_pretrained
from nemon.app.train import PRESETS, TrainConfig, load_checkpoint, train
from nemon.losses import learning_rate, ramp_progress


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(config(epochs=1), run, data=tiny_data(), progress=False)
    root = tmp_path / "pretrained"
    save_pretrained(run / "checkpoint.pt", root / "tiny", "# tiny\n")
    monkeypatch.setattr(pretrained, "_root", lambda: root)
    return run, root


def test_round_trip_by_name(shipped):
    run, root = shipped
    assert nemon.pretrained_names() == ["tiny"]
    model = nemon.load_pretrained("tiny")
    original, _ = load_checkpoint(run / "checkpoint.pt")
    x = tiny_data().test_x
    with torch.no_grad():
        assert torch.equal(model(x), original.eval()(x))
    assert not model.training
    assert (root / "tiny" / "card.md").read_text() == "# tiny\n"


def test_damaged_weights_and_unknown_names_are_refused(shipped):
    _, root = shipped
    with pytest.raises(pretrained.PretrainedError, match="unknown pretrained model"):
        nemon.load_pretrained("nope")
    weights = root / "tiny" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="sha256"):
        nemon.load_pretrained("tiny")


def test_description_holds_only_data(shipped):
    _, root = shipped
    info = json.loads((root / "tiny" / "config.json").read_text())
    assert set(info) == {"config", "input_shape", "num_classes", "sha256", "config_sha256"}


def test_cli_accepts_a_name(shipped, monkeypatch, capsys):
    data = tiny_data()
    monkeypatch.setattr(loading, "load_dataset", lambda name, data_dir=None, **_: data)
    assert cli.main(["eval", "tiny"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert cli.main(["certify", "tiny", "--eps", "0.01", "--method", "interval"]) == 0


def test_ramp_and_learning_rate_schedule():
    cfg = nemon.app.train.TrainConfig(
        warmup_epochs=1, cert_ramp_epochs=2, ramp="smooth", lr=1.0, lr_milestones=[3, 5]
    )
    recipe = cfg.recipe()
    assert ramp_progress(recipe, 0, 5, 10) == 0.0  # warm-up: clean only
    mid = ramp_progress(recipe, 2, 0, 10)  # half-way through the ramp
    assert mid == pytest.approx(0.5) and ramp_progress(recipe, 1, 5, 10) < 0.25  # slow start
    assert ramp_progress(recipe, 3, 0, 10) == 1.0
    assert [learning_rate(recipe, e) for e in (0, 3, 5)] == pytest.approx([1.0, 0.2, 0.04])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name):
    TrainConfig(**PRESETS[name]).validate()


@pytest.mark.parametrize("name", nemon.pretrained_names())
def test_shipped_models_were_trained_by_their_preset(name):
    """A card's "retrain" command is ``nemon train --preset NAME`` (an ensemble: its members'
    preset, one seed each): every setting of the preset is the one the shipped run recorded (a
    setting older than the run's code: its default)."""
    info = json.loads((pretrained._root() / name / "config.json").read_text())
    if "members" in info:
        preset, recorded = info["member_preset"], info["members"]
        assert len({c["seed"] for c in recorded}) == len(recorded) > 1
    else:
        preset, recorded = name, [info["config"]]
    default = asdict(TrainConfig())
    for member in recorded:
        for key, value in asdict(TrainConfig(**PRESETS[preset])).items():
            if key != "seed" or preset == name:
                assert member.get(key, default[key]) == value, key
