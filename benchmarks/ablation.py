"""A certified preset with its implicit layer and with an explicit layer in its place, side by side.

The two runs share every setting but ``model`` (same encoder, width, recipe, seed and epochs):
each is trained, resumed, or reused when finished, then evaluated on the MNIST test set by
``certified_models.evaluate`` (clean, interval and pairwise certified, PGD, violations). An
evaluation is cached in its run folder under the checkpoint's sha256 and the settings. The
implicit side may instead be a shipped model (its name for ``--implicit``; its config must be
the preset's), with its run's ``metrics.jsonl`` for the minutes of steps; the evaluation it was
shipped with is reused when made with the same settings. With ``--seeds S S ...``
each side is the :class:`nemon.Ensemble` of one run per seed (a shipped ensemble on the implicit
side). Writes one JSON and prints a markdown table::

    python benchmarks/ablation.py mnist-cert-medium-mtl-h256-0.1 --threads 2
    python benchmarks/ablation.py mnist-cert-medium-mtl-h256-0.1 --threads 2 \
        --implicit mnist-cert-medium-mtl-h256-0.1 \
        --implicit-metrics benchmarks/results/certified-models/cert-0.1-medium-mtl-h256-38ep-metrics.jsonl
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from certified_models import evaluate

from nemon import Ensemble
from nemon.app.checkpoints import load_checkpoint, write_text_atomic
from nemon.app.config import PRESETS, TrainConfig
from nemon.app.train import train
from nemon.data import DataError, load_dataset
from nemon.pretrained import _root as pretrained_root
from nemon.pretrained import describe_pretrained, load_pretrained, pretrained_names

RESULTS = Path(__file__).parent / "results" / "certified-models"
FAMILIES = ("nemon", "explicit")


def configs(preset: str, **overrides) -> dict[str, TrainConfig]:
    """The preset's config per family; ``overrides`` (smoke runs) apply to both alike."""
    base = TrainConfig(**{**PRESETS[preset], **overrides}).validate()
    return {family: replace(base, model=family) for family in FAMILIES}


def trained(cfg: TrainConfig, folder: Path, data, threads: int | None) -> list[dict]:
    """The run's history: trained from scratch, resumed, or read back when finished."""
    resume = (folder / "checkpoint.pt").exists()
    return train(cfg, folder, data, resume=resume, progress=False, threads=threads)["history"]


def _minutes(history: list[dict]) -> float:
    return sum(h["train_seconds"] for h in history) / 60


def _evaluate(model, x, y, settings: dict, log) -> dict:
    return evaluate(model, x, y, settings["eps"], settings["steps"], settings["restarts"], log=log)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluated(folder: Path, x, y, settings: dict, log) -> dict:
    """``evaluate`` on the run's final checkpoint, or the cached result for the same file."""
    ckpt, cache = folder / "checkpoint.pt", folder / "evaluation.json"
    key = {"checkpoint_sha256": _sha256(ckpt), "settings": settings}
    if cache.exists():
        stored = json.loads(cache.read_text())
        if {k: stored.get(k) for k in key} == key:
            log(f"{folder}: cached evaluation")
            return stored["result"]
    result = _evaluate(load_checkpoint(ckpt)[0], x, y, settings, log)
    write_text_atomic(json.dumps({**key, "result": result}, indent=2) + "\n", cache)
    return result


def _read_history(path: Path) -> list[dict]:
    """The epochs of a ``metrics.jsonl``; a file that is not one is a ``ValueError`` naming it."""
    try:
        history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if all(isinstance(h, dict) and "train_seconds" in h for h in history):
            return history
    except json.JSONDecodeError:
        pass
    raise ValueError(f"{path} is not a metrics.jsonl (one JSON object with train_seconds a line)")


def _one_or_list(items: list):
    return str(items[0]) if len(items) == 1 else [str(i) for i in items]


def shipped(
    name: str, cfg: TrainConfig, metrics, x, y, settings, log, seeds: list[int] | None = None
) -> dict:
    """The row of a shipped model trained with ``cfg`` (an ensemble: one member per seed of
    ``seeds``): evaluated afresh, minutes of steps summed from the members' ``metrics`` logs."""
    info = describe_pretrained(name)
    seeds = seeds or [cfg.seed]
    stored = [asdict(TrainConfig(**c)) for c in info.get("members", [info.get("config")])]
    wanted = [json.loads(json.dumps(asdict(replace(cfg, seed=s)))) for s in seeds]
    if stored != wanted:  # older files: defaults fill in
        raise ValueError(f"shipped model {name!r} was not trained with this preset's config")
    logs = [metrics] if isinstance(metrics, Path) else list(metrics or [])
    if logs and len(logs) != len(seeds):
        raise ValueError(f"give one metrics.jsonl per member ({len(seeds)}), got {len(logs)}")
    minutes = None
    for path in logs:
        history = _read_history(path)
        if len(history) != cfg.epochs:
            raise ValueError(f"{path} holds {len(history)} epochs, the preset {cfg.epochs}")
        minutes = (minutes or 0.0) + _minutes(history)
    evaluation = card_evaluation(name, settings)
    if evaluation is None:
        evaluation = _evaluate(load_pretrained(name), x, y, settings, log)
    else:
        log(f"{name}: the evaluation it was shipped with (same settings)")
    return {
        "run": name,
        "metrics": _one_or_list(logs) if logs else None,
        "minutes": minutes,
        "config": asdict(cfg),
        "seeds": seeds,
        "evaluation": evaluation,
    }


def card_evaluation(name: str, settings: dict) -> dict | None:
    """A shipped model's ``evaluation.json`` (``certified_models.py`` on its weights, the figures
    of its card) when it was made with ``settings``; None otherwise."""
    path = pretrained_root() / name / "evaluation.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    pgd = {"steps": settings["steps"], "restarts": settings["restarts"]}
    radii = all(f"interval@{r:g}" in stored for r in settings["eps"])
    if stored.get("images") != settings["images"] or stored.get("pgd") != pgd or not radii:
        return None
    return {k: v for k, v in stored.items() if k != "model"}


def trained_row(cfg, folders: list[Path], seeds: list[int], data, x, y, settings, log, threads):
    """The row of run folders, one per seed: trained, resumed or reused, then evaluated (several:
    their :class:`nemon.Ensemble`; minutes of steps summed)."""
    histories = [trained(replace(cfg, seed=s), f, data, threads) for f, s in zip(folders, seeds)]
    if len(folders) == 1:
        evaluation = evaluated(folders[0], x, y, settings, log)
    else:
        members = [load_checkpoint(f / "checkpoint.pt")[0] for f in folders]
        evaluation = _evaluate(Ensemble(members).eval(), x, y, settings, log)
    return {
        "run": _one_or_list(folders),
        "config": asdict(cfg),
        "seeds": seeds,
        "minutes": sum(_minutes(h) for h in histories),
        "evaluation": evaluation,
    }


def table(rows: dict[str, dict], radii: list[float]) -> str:
    head = ["model", "clean"]
    for r in radii:
        head += [f"interval@{r:g}", f"pairwise@{r:g}", f"PGD@{r:g}", f"broken@{r:g}"]
    lines = ["| " + " | ".join(head + ["minutes of steps"]) + " |", "|---" * (len(head) + 1) + "|"]
    for family, row in rows.items():
        ev = row["evaluation"]
        cells = [family, f"{ev['clean']:.4f}"]
        for r in radii:
            cells += [f"{ev[f'{k}@{r:g}']:.4f}" for k in ("interval", "pairwise", "pgd")]
            cells.append(str(ev[f"violations@{r:g}"]))
        minutes = "?" if row["minutes"] is None else f"{row['minutes']:.0f}"
        lines.append("| " + " | ".join(cells + [minutes]) + " |")
    return "\n".join(lines)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def _radius(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite radius >= 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def _default_folder(preset: str, suffix: str, seed: int, seeds: list[int]) -> Path:
    return Path("runs") / (preset + suffix + (f"-seed{seed}" if len(seeds) > 1 else ""))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=[p for p in PRESETS if PRESETS[p].get("cert_eps")])
    parser.add_argument(
        "--seeds",
        type=_seed,
        nargs="+",
        help="several: each side is the ensemble of one run per seed (default: the preset's seed)",
    )
    parser.add_argument(
        "--implicit",
        nargs="+",
        help="run folders, one per seed (default runs/PRESET[-seedS]), or a shipped model's name",
    )
    parser.add_argument(
        "--implicit-metrics",
        type=Path,
        nargs="+",
        help="metrics.jsonl of a shipped model's training run (an ensemble: one per member)",
    )
    parser.add_argument(
        "--explicit",
        type=Path,
        nargs="+",
        help="run folders, one per seed (default runs/PRESET-explicit[-seedS])",
    )
    parser.add_argument("--eps", type=_radius, nargs="+", help="default: the preset's radii")
    parser.add_argument("--images", type=_positive, default=10000)
    parser.add_argument("--steps", type=_positive, default=50)
    parser.add_argument("--restarts", type=_positive, default=2)
    parser.add_argument("--threads", type=_positive)
    parser.add_argument("--epochs", type=_positive, help="override (smoke runs)")
    parser.add_argument("--train-limit", type=_positive, help="override (smoke runs)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("train_limit", args.train_limit)) if v}
    try:
        runs = configs(args.preset, **overrides)
    except ValueError as exc:
        parser.error(str(exc))
    seeds = args.seeds or [runs["nemon"].seed]
    implicit = args.implicit or [_default_folder(args.preset, "", s, seeds) for s in seeds]
    shipped_name = implicit[0] if implicit[0] in pretrained_names() else None
    if shipped_name and len(implicit) > 1:
        parser.error("--implicit: a shipped model's name stands alone (an ensemble is one name)")
    if args.implicit_metrics and not shipped_name:
        parser.error("--implicit-metrics goes with a shipped model's name for --implicit")
    explicit = args.explicit or [_default_folder(args.preset, "-explicit", s, seeds) for s in seeds]
    for side, folders in (("--implicit", implicit), ("--explicit", explicit)):
        if len(folders) != len(seeds) and not (side == "--implicit" and shipped_name):
            parser.error(f"{side}: give one run folder per seed ({len(seeds)}), got {len(folders)}")
    radii = args.eps or runs["nemon"].cert_eval_eps
    settings = {"images": args.images, "eps": radii, "steps": args.steps, "restarts": args.restarts}
    try:
        data = load_dataset("mnist")
    except DataError as exc:
        parser.error(str(exc))
    x, y = data.test_x[: args.images], data.test_y[: args.images]
    log = functools.partial(print, flush=True)
    rows = {}
    if shipped_name:
        try:
            rows["nemon"] = shipped(
                shipped_name, runs["nemon"], args.implicit_metrics, x, y, settings, log, seeds
            )
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
    else:
        folders = [Path(f) for f in implicit]
        rows["nemon"] = trained_row(
            runs["nemon"], folders, seeds, data, x, y, settings, log, args.threads
        )
    rows["explicit"] = trained_row(
        runs["explicit"], explicit, seeds, data, x, y, settings, log, args.threads
    )
    result = {"preset": args.preset, "settings": settings, "runs": rows}
    seeds_tag = f"-seeds{'-'.join(map(str, seeds))}" if len(seeds) > 1 else ""
    out = args.json or RESULTS / f"ablation-{args.preset}{seeds_tag}.json"
    write_text_atomic(json.dumps(result, indent=2) + "\n", out)
    print(table(rows, radii))
    gap = {
        r: rows["nemon"]["evaluation"][f"interval@{r:g}"]
        - rows["explicit"]["evaluation"][f"interval@{r:g}"]
        for r in radii
    }
    print(
        f"{args.preset}: implicit minus explicit certified "
        + ", ".join(f"{g:+.4f} at {r:g}" for r, g in gap.items())
        + f"; {out}"
    )
    return result


if __name__ == "__main__":
    main()
