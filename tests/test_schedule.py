"""Schedules follow the number of epochs: a preset shortened with --epochs scales its warm-up,
radius ramp and milestones (and says so); a resume may extend or shorten a run."""

import pytest
import torch

import nemon
from nemon.app.cli import build_parser
from nemon.app.commands.train import config_from as _config
from nemon.runs import RunFolderError


def test_scaled_recipe_keeps_the_shape_of_the_schedule():
    ibp = nemon.RECIPES["ibp-0.1"]  # 60 epochs: warm-up 1, ramp 15, milestones 40 and 52
    short = ibp.scaled(2)
    assert (short.epochs, short.warmup_epochs, short.cert_ramp_epochs) == (2, 0, 1)
    assert short.lr_milestones == (1,)  # 52 * 2 / 60 rounds to the end: dropped
    half = nemon.RECIPES["ibp-0.3"].scaled(60)  # 120: warm-up 1, ramp 35, milestones 90, 110
    assert (half.warmup_epochs, half.cert_ramp_epochs, half.lr_milestones) == (0, 18, (45, 55))
    longer = ibp.scaled(120)
    assert (longer.warmup_epochs, longer.cert_ramp_epochs, longer.lr_milestones) == (
        2,
        30,
        (80, 104),
    )
    assert ibp.scaled(60) == ibp
    swa = nemon.Recipe(epochs=10, swa_start=8).scaled(5)
    assert swa.swa_start == 4
    with pytest.raises(ValueError, match="epochs"):
        ibp.scaled(0)


def test_train_epochs_scales_the_preset_and_says_so(capsys):
    args = build_parser().parse_args(["train", "--preset", "mnist-cert-0.1", "--epochs", "2"])
    cfg = _config(args)
    assert (cfg.epochs, cfg.warmup_epochs, cfg.cert_ramp_epochs, cfg.lr_milestones) == (
        2,
        0,
        1,
        [1],
    )
    line = capsys.readouterr().err
    assert "scales mnist-cert-0.1's 60-epoch schedule" in line
    assert "cert_ramp_epochs 15 -> 1" in line and "lr_milestones [40, 52] -> [1]" in line
    given = ["train", "--preset", "mnist-cert-0.1", "--epochs", "4", "--cert-ramp-epochs", "3"]
    cfg = _config(build_parser().parse_args(given))
    assert (cfg.cert_ramp_epochs, cfg.lr_milestones) == (3, [3])  # what is given is kept
    resume = ["train", "--preset", "mnist-cert-0.1", "--epochs", "80", "--resume", "--out", "x"]
    cfg = _config(build_parser().parse_args(resume))
    assert (cfg.epochs, cfg.cert_ramp_epochs, cfg.lr_milestones) == (80, 15, [40, 52])


def _data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 4, 4, generator=g), torch.randint(0, 2, (40,), generator=g)
    return (x, y), (x, y)


def test_a_resume_extends_or_shortens_a_run(tmp_path):
    recipe = nemon.Recipe(epochs=1, batch_size=20, lr=1e-2)

    def run(epochs, resume):
        torch.manual_seed(0)
        model = nemon.Classifier(nemon.NEMONDense(16, 6), 2)
        return nemon.fit(
            model, _data(), recipe.replace(epochs=epochs), out=tmp_path / "run", resume=resume,
            progress=False,
        )  # fmt: skip

    run(1, False)
    extended = run(3, True)
    assert [h["epoch"] for h in extended.history] == [1, 2, 3]
    straight = tmp_path / "straight"
    torch.manual_seed(0)
    model = nemon.Classifier(nemon.NEMONDense(16, 6), 2)
    whole = nemon.fit(model, _data(), recipe.replace(epochs=3), out=straight, progress=False)
    assert extended.history[-1]["train_loss"] == whole.history[-1]["train_loss"]  # bit-exact
    with pytest.raises(RunFolderError, match="has finished 3 epochs"):
        run(2, True)


def test_a_scaled_run_resumes_with_the_schedule_it_began_with(tmp_path):
    """A run started with --epochs 3 (scaled) resumes with that schedule, not the preset's."""
    from dataclasses import asdict

    from nemon.runs import save_atomic, state_checksum

    new = ["train", "--preset", "mnist-cert-0.1", "--epochs", "3", "--out", str(tmp_path)]
    started = _config(build_parser().parse_args(new))
    config = asdict(started)
    ckpt = {"config": config, "input_shape": (1, 28, 28), "num_classes": 10, "model": {}}
    ckpt["checksum"] = state_checksum({}, config)
    save_atomic(ckpt, tmp_path / "checkpoint.pt")
    resumed = _config(build_parser().parse_args(["train", "--resume", "--out", str(tmp_path)]))
    assert resumed == started
    longer = ["train", "--resume", "--out", str(tmp_path), "--epochs", "5"]
    extended = _config(build_parser().parse_args(longer))
    assert extended.epochs == 5 and extended.lr_milestones == started.lr_milestones
