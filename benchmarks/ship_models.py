"""Write a trained run as a shipped model (``src/nemon/pretrained/NAME``) with its card.

    python benchmarks/ship_models.py RUN_DIR NAME EVAL_JSON [--threads N] [--shared] [--note TEXT]
    python benchmarks/ship_models.py RUN_DIR RUN_DIR... NAME EVAL_JSON --member-preset PRESET

Several run folders ship the ensemble of their models (trained by one preset, seeds apart).

``EVAL_JSON`` is the output of ``benchmarks/certified_models.py`` on the full test set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nemon.app.config import PRESETS
from nemon.app.shipping import save_pretrained
from nemon.explicit import ENCODER_DESCRIPTIONS

ROOT = Path(__file__).resolve().parents[1]


def _averaging(cfg: dict) -> str:
    start = cfg.get("swa_start", 0)
    if not start:
        return ""
    return f", weights averaged over the ends of epochs {start}-{cfg['epochs']} (`--swa-start`)"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or "CPU" where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def _other_term(cfg: dict) -> str:
    steps = cfg.get("adv_steps", 0)
    if not steps:
        return "the rest clean cross-entropy"
    return f"the rest cross-entropy at a {steps}-step PGD point of the same ball (MTL-IBP)"


def _minutes(run: Path) -> float:
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return sum(h["train_seconds"] for h in history) / 60


def _architecture(cfg: dict) -> str:
    return f"""an explicit encoder ({cfg["arch"]}:
{ENCODER_DESCRIPTIONS[cfg["arch"]]}) injects into a NEMON dense
implicit layer of {cfg["hidden"]} states with `mu_inf(A) <= {cfg["gamma"]}` (diagonal-step
solver, tolerance {cfg["tol"]:g}), then a linear readout to 10 classes"""


def _recipe(cfg: dict) -> str:
    return f"""Recipe: {cfg["epochs"]} epochs, batch {cfg["batch_size"]}, Adam lr {cfg["lr"]:g} decayed by
{cfg["lr_decay"]:g} at epochs {cfg["lr_milestones"]}, {cfg["warmup_epochs"]} clean warm-up epoch,
training radius {cfg["cert_eps"]:g} reached by a smooth ramp over {cfg["cert_ramp_epochs"]} epochs,
robust-loss weight ramped to {cfg["cert_weight"]:g}, {_other_term(cfg)}, gradient clipping {cfg["grad_clip"]:g},
initialisation: {cfg.get("init", "default")}{_averaging(cfg)}."""


def _results(name: str, evaluation: dict) -> str:
    radii = sorted({k.split("@")[1] for k in evaluation if "@" in k}, key=float)
    rows = "\n".join(
        f"| {r} | {evaluation[f'interval@{r}']:.4f} | {evaluation[f'pairwise@{r}']:.4f} | "
        f"{evaluation[f'pgd@{r}']:.4f} | {evaluation[f'violations@{r}']} |"
        for r in radii
    )
    return f"""Full MNIST test set ({evaluation["images"]} images), box clipped to [0, 1], float64, the
solver's error bound and the distance of the model as it runs (`error_tol`) charged; PGD: {evaluation["pgd"]["steps"]} steps, {evaluation["pgd"]["restarts"]}
restarts (`benchmarks/certified_models.py`). Clean accuracy: {evaluation["clean"]:.4f}.

| eps | interval certified | pairwise certified | PGD accuracy | certified but broken |
|---|---|---|---|---|
{rows}

The pairwise column is the per-class-pair Lipschitz certificate; it certifies nothing at these
radii (its bounds, products of the layers' norms, are 1e6 to 1e10 for these models, so eps
times a bound dwarfs every logit margin), which is why they are certified with interval bounds.

Reproduce: `nemon certify {name} --eps {" ".join(radii)} --method interval`."""


def _setting(threads: int, shared: bool) -> str:
    setting = "one thread" if threads == 1 else f"{threads} threads"
    return setting + (", another run sharing the machine" if shared else "")


def card(name: str, run: Path, evaluation: dict, note: str, threads: int, shared: bool) -> str:
    cfg = json.loads((run / "config.json").read_text())
    return f"""# {name}

Certified (interval-trained) MNIST classifier: {_architecture(cfg)}.

Retrain (the same command made it):

    nemon train --preset {name} --out runs/{name} --threads {threads}

{_recipe(cfg)}
Training time here: {_minutes(run):.0f} minutes of training steps (2-core {cpu_model()}, {_setting(threads, shared)}), plus the
per-epoch evaluation.

{_results(name, evaluation)}
{note}
"""


def ensemble_card(
    name: str, runs: list[Path], preset: str, evaluation: dict, note: str, threads: int
) -> str:
    cfgs = [json.loads((run / "config.json").read_text()) for run in runs]
    seeds = [c["seed"] for c in cfgs]
    train = "\n".join(
        f"    nemon train --preset {preset} --seed {s} --out runs/{preset}-seed{s} --threads {threads}"
        for s in seeds
    )
    members = " ".join(f"runs/{preset}-seed{s}" for s in seeds)
    minutes = ", ".join(f"{_minutes(run):.0f} (seed {s})" for run, s in zip(runs, seeds))
    radii = " ".join(f"{e:g}" for e in cfgs[0]["cert_eval_eps"])
    return f"""# {name}

Certified (interval-trained) MNIST classifier: an ensemble (`nemon.Ensemble`, the mean of the
logits) of {len(runs)} models trained separately by the preset `{preset}` with seeds
{", ".join(map(str, seeds))}. Each member: {_architecture(cfgs[0])}. The ensemble is certified
by the mean of its members' interval bounds on each logit difference; it is itself one NEMON
model (the layers side by side: one layer with a block-diagonal `A`, `mu_inf(A) <= {cfgs[0]["gamma"]}`).

Retrain: train the members, evaluate their ensemble, ship it:

{train}
    python benchmarks/certified_models.py {" ".join(f"runs/{preset}-seed{s}/checkpoint.pt" for s in seeds)} --eps {radii} --json eval.json
    python benchmarks/ship_models.py {members} {name} eval.json --member-preset {preset}

Each member's {_recipe(cfgs[0])[0].lower()}{_recipe(cfgs[0])[1:]}
Training time: {minutes} minutes of training steps ({_setting(threads, False)}; see below for the machines).

{_results(name, evaluation)}
{note}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="+", help="run folder (several: an ensemble)")
    parser.add_argument("name")
    parser.add_argument("evaluation", type=Path)
    parser.add_argument("--note", default="")
    parser.add_argument("--threads", type=int, default=1, help="torch threads it trained with")
    parser.add_argument("--shared", action="store_true", help="another run shared the machine")
    parser.add_argument("--member-preset", help="an ensemble's members' preset (required then)")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if len(args.run) > 1 and args.member_preset not in PRESETS:
        parser.error(
            f"an ensemble needs --member-preset, one of the presets; got {args.member_preset!r}"
        )
    files = [f for run in args.run for f in (run / "checkpoint.pt", run / "config.json")]
    for path in (*files, args.evaluation):
        if not path.is_file():
            parser.error(f"{path} is not a file")
    evaluation = json.loads(args.evaluation.read_text())
    if len(args.run) == 1:
        text = card(args.name, args.run[0], evaluation, args.note, args.threads, args.shared)
    else:
        text = ensemble_card(
            args.name, args.run, args.member_preset, evaluation, args.note, args.threads
        )
    folder = save_pretrained(
        [run / "checkpoint.pt" for run in args.run],
        ROOT / "src/nemon/pretrained" / args.name,
        text,
        member_preset=args.member_preset,
    )
    (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
