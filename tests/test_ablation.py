"""benchmarks/ablation.py: a preset with its implicit layer and with an explicit one, same budget."""

import json
from dataclasses import asdict

import ablation  # noqa: E402
import pytest
from helpers import requires_mnist


def test_the_two_runs_differ_only_in_the_layer():
    runs = ablation.configs("mnist-cert-medium-mtl-h256-0.1", epochs=2)
    implicit, explicit = (asdict(runs[f]) for f in ("nemon", "explicit"))
    assert implicit.pop("model") == "nemon" and explicit.pop("model") == "explicit"
    assert implicit == explicit and implicit["epochs"] == 2 and implicit["adv_steps"] == 1


@pytest.mark.slow
@requires_mnist
def test_smoke_run_trains_evaluates_and_caches(tmp_path, capsys):
    base = ["mnist-cert-0.1", "--implicit", str(tmp_path / "a"), "--explicit", str(tmp_path / "b")]
    base += ["--epochs", "1", "--train-limit", "200", "--images", "20", "--restarts", "1"]
    out = tmp_path / "out.json"
    first = ablation.main([*base, "--steps", "3", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(first))
    assert set(first["runs"]) == {"nemon", "explicit"}
    for row in first["runs"].values():
        ev = row["evaluation"]
        assert ev["images"] == 20 and ev["violations@0.1"] == 0 and row["minutes"] > 0
        assert 0 <= ev["interval@0.1"] <= ev["pgd@0.1"] <= ev["clean"] <= 1
    text = capsys.readouterr().out
    assert "| nemon | " in text and "| explicit | " in text and "cached" not in text
    again = ablation.main([*base, "--steps", "3", "--json", str(out)])
    assert again["runs"] == first["runs"]
    assert capsys.readouterr().out.count("cached evaluation") == 2  # same files, same settings
    ablation.main([*base, "--steps", "4", "--json", str(out)])
    assert "cached" not in capsys.readouterr().out  # other settings: evaluated again


@pytest.mark.slow
@requires_mnist
def test_seeds_make_each_side_an_ensemble(tmp_path, capsys):
    implicit, explicit = (
        [str(tmp_path / f"a{s}") for s in (0, 1)],
        [tmp_path / "b0", tmp_path / "b1"],
    )
    argv = ["mnist-cert-0.1", "--seeds", "0", "1", "--implicit", *implicit, "--explicit"]
    argv += [*map(str, explicit), "--epochs", "1", "--train-limit", "200", "--images", "20"]
    result = ablation.main(
        [*argv, "--steps", "3", "--restarts", "1", "--json", str(tmp_path / "o")]
    )
    for family, folders in (("nemon", implicit), ("explicit", explicit)):
        row = result["runs"][family]
        assert row["run"] == [str(f) for f in folders] and row["seeds"] == [0, 1]
        assert row["evaluation"]["violations@0.1"] == 0
    seeds = [json.loads((tmp_path / f"b{s}" / "config.json").read_text())["seed"] for s in (0, 1)]
    assert seeds == [0, 1]
    with pytest.raises(SystemExit):
        ablation.main(["mnist-cert-0.1", "--seeds", "0", "1", "--explicit", str(explicit[0])])
    assert "one run folder per seed (2), got 1" in capsys.readouterr().err


def test_bad_arguments_are_refused_in_one_line(capsys):
    for bad in (["--images", "0"], ["--eps", "-1"], ["--epochs", "x"], ["--seeds", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            ablation.main(["mnist-cert-0.1", *bad])
        assert exit_info.value.code == 2
        assert "error: argument" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
@requires_mnist
def test_a_shipped_model_stands_for_the_implicit_run(tmp_path):
    from nemon.data import load_dataset

    cfg = ablation.configs("mnist-cert-0.1")["nemon"]
    data = load_dataset("mnist")
    x, y = data.test_x[:20], data.test_y[:20]
    settings = {"images": 20, "eps": [0.1], "steps": 3, "restarts": 1}
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"train_seconds": 30.0}) + "\n" for _ in range(cfg.epochs)))
    row = ablation.shipped("mnist-cert-0.1", cfg, log, x, y, settings, lambda *_: None)
    assert row["minutes"] == pytest.approx(cfg.epochs / 2) and row["run"] == "mnist-cert-0.1"
    ev = row["evaluation"]
    assert ev["images"] == 20 and ev["violations@0.1"] == 0
    assert 0 <= ev["interval@0.1"] <= ev["pgd@0.1"] <= ev["clean"] <= 1
    assert ablation.table({"nemon": {**row, "minutes": None}}, [0.1]).endswith(" | ? |")
    log.write_text(json.dumps({"train_seconds": 30.0}) + "\n")
    with pytest.raises(ValueError, match="holds 1 epochs"):
        ablation.shipped("mnist-cert-0.1", cfg, log, x, y, settings, print)
    for bad in ("not json\n", '{"epoch": 1}\n', "[1]\n"):
        log.write_text(bad)
        with pytest.raises(ValueError, match="is not a metrics.jsonl"):
            ablation.shipped("mnist-cert-0.1", cfg, log, x, y, settings, print)
    other = ablation.configs("mnist-cert-0.3")["nemon"]
    with pytest.raises(ValueError, match="not trained with this preset's config"):
        ablation.shipped("mnist-cert-0.1", other, None, x, y, settings, print)


def test_a_shipped_model_brings_its_own_full_evaluation():
    settings = {"images": 10000, "eps": [0.1], "steps": 50, "restarts": 2}
    stored = ablation.card_evaluation("mnist-cert-0.1", settings)
    card = json.loads(
        (ablation.pretrained_root() / "mnist-cert-0.1" / "evaluation.json").read_text()
    )
    assert stored["interval@0.1"] == card["interval@0.1"] and "model" not in stored
    for other in ({"images": 20}, {"steps": 3}, {"eps": [0.1, 0.3]}):
        assert ablation.card_evaluation("mnist-cert-0.1", {**settings, **other}) is None


def test_metrics_without_a_shipped_model_are_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        ablation.main(["mnist-cert-0.1", "--implicit-metrics", str(tmp_path / "m.jsonl")])
    assert exit_info.value.code == 2
    assert "goes with a shipped model's name" in capsys.readouterr().err


@pytest.mark.slow
@requires_mnist
def test_ensemble_pairs_score_as_certify_does(tmp_path):
    import ensemble_pairs

    import nemon
    from nemon.data import load_dataset

    names = ["mnist-cert-0.1", "mnist-cert-medium-mtl-h256-0.1"]
    argv = [*names, "--images", "60", "--threads", "1", "--cache", str(tmp_path)]
    result = ensemble_pairs.main(argv)
    data = load_dataset("mnist")
    x, y = data.test_x[:60], data.test_y[:60]
    models = [nemon.load_pretrained(n) for n in names]
    certified = nemon.certify(nemon.Ensemble(models), x, y, 0.1, method="interval")
    assert result["ensembles"][0]["interval"] == pytest.approx(float(certified.double().mean()))
    assert result["models"][names[0]]["interval"] == pytest.approx(
        float(nemon.certify(models[0], x, y, 0.1, method="interval").double().mean())
    )
    assert len(list(tmp_path.iterdir())) == 2
    assert ensemble_pairs.main(argv) == result  # read back from the cache
