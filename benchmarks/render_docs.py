"""Render every results table of the README and the docs from the committed result files.

    python benchmarks/render_docs.py          # rewrite docs/results.md and the generated blocks
    python benchmarks/render_docs.py --check  # exit 1, naming the files, if any is out of date

``docs/results.md`` is generated whole. In ``README.md``, ``docs/guide/pretrained.md`` and
``docs/guide/training.md`` the blocks between ``<!-- generated: NAME -->`` and
``<!-- end generated -->`` are. Sources: each shipped model's ``evaluation.json`` and card,
``benchmarks/results/**`` (each table names the command that wrote its file) and
``benchmarks/results/published.json`` (published figures, with their papers).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PRETRAINED = ROOT / "src" / "nemon" / "pretrained"
BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def _json(path: Path):
    return json.loads(path.read_text())


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _f4(x) -> str:
    return "-" if x is None else f"{x:.4f}"


# -- shipped models ---------------------------------------------------------------------------
def shipped_models() -> list[dict]:
    """Each shipped model: name, radius, evaluation, training minutes, architecture."""
    out = []
    for folder in sorted(PRETRAINED.iterdir()):
        if not (folder / "evaluation.json").is_file():
            continue
        evaluation = _json(folder / "evaluation.json")
        info = _json(folder / "config.json")
        (eps,) = sorted({k.split("@")[1] for k in evaluation if k.startswith("interval@")})
        configs = info["members"] if "members" in info else [info["config"]]
        out.append(
            {
                "name": folder.name,
                "eps": eps,
                "evaluation": evaluation,
                "minutes": _card_minutes((folder / "card.md").read_text()),
                "architecture": _architecture(configs),
                "configs": configs,
            }
        )
    return sorted(out, key=lambda m: (m["eps"], -m["evaluation"][f"interval@{m['eps']}"]))


def _card_minutes(card: str) -> list[int]:
    """The minutes on a card's ``Training time`` line (one number per trained run)."""
    line = re.search(r"^Training time.*$", card, re.M).group(0)
    text = re.sub(r"\([^)]*\)", "", line.split("minutes")[0])
    return [int(m) for m in re.findall(r"\d+", text)]


def _architecture(configs: list[dict]) -> str:
    c = configs[0]
    single = f"{c['arch']} + NEMON {c['hidden']}"
    return single if len(configs) == 1 else f"ensemble of {len(configs)} {single}"


def shipped_table_docs() -> str:
    rows = []
    for m in shipped_models():
        e, r = m["evaluation"], m["eps"]
        minutes = " + ".join(str(x) for x in m["minutes"])
        verified = _verified_columns(m)
        rows.append(
            [f"`{m['name']}`", m["architecture"], r, _f4(e["clean"]), _f4(e[f"interval@{r}"])]
            + verified
            + [e[f"violations@{r}"], minutes]
        )
    header = ["name", "architecture", "eps", "clean", "certified", "verified robust", "refuted"]
    return _table([*header, "unknown", "not refuted", "broken", "training minutes"], rows)


def _verified_columns(m: dict) -> list:
    """Verified robust, refuted, unknown and not refuted of a shipped model: its finished
    verification's, else dashes and PGD's accuracy as "not refuted"."""
    e, r = m["evaluation"], m["eps"]
    v = _verification_of(m["name"], r)
    if v is None:
        return ["-", "-", "-", f"{_f4(e[f'pgd@{r}'])} (PGD)"]
    counts = [_f4(v["verified_robust_accuracy"]), v["refuted"], v["unknown"]]
    return counts + [_f4(v["not_refuted_accuracy"])]


def shipped_table_readme() -> str:
    rows = []
    for m in shipped_models():
        e, r = m["evaluation"], m["eps"]
        verified = _verified_columns(m)
        rows.append(
            [f"`{m['name']}` ({m['architecture']})", r, _f4(e["clean"]), _f4(e[f"interval@{r}"])]
            + verified
        )
    header = ["model", "eps", "clean", "certified (interval)", "verified robust", "refuted"]
    return _table([*header, "unknown", "not refuted"], rows)


def _verification_of(name: str, eps: str) -> dict | None:
    """The finished `nemon verify` run of a model at a radius, if one is committed."""
    for v in verifications():
        if v["folder"] == f"{name}-eps{float(eps):g}" and v["recorded"] == v["images"]:
            return v
    return None


# -- complete verification --------------------------------------------------------------------
def verifications() -> list[dict]:
    """Each ``nemon verify`` run folder's summary under ``benchmarks/results/verification``."""
    folders = sorted((RESULTS / "verification").glob("*/summary.json"))
    return [_json(path) | {"folder": path.parent.name} for path in folders]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def verification_table() -> str:
    rows = []
    for v in verifications():
        done = "" if v["recorded"] == v["images"] else f" ({v['recorded']} so far)"
        # an unfinished run: no unknown count or accuracy yet (its unrecorded images are open)
        final = [v["unknown"], _f4(v["verified_robust_accuracy"]), _f4(v["not_refuted_accuracy"])]
        rows.append(
            [f"`{v['folder']}`{done}", f"{v['eps']:g}", v["images"], v["certified"], v["refuted"]]
            + (final if not done else ["-", "-", "-"])
            + [_minutes(v.get("wall_seconds", v["seconds_total"])), f"{v['seconds_median']:.2f}"]
            + [f"{v['seconds_max']:.1f}"]
        )
    header = ["run folder", "eps", "images", "certified", "refuted", "unknown", "verified robust"]
    header += ["not refuted", "minutes", "median s / image", "max s / image"]
    return _table(header, rows) if rows else "No verification run is committed yet.\n"


def verified_ablation_table() -> str:
    """Each verified model beside its verified explicit ablation (folder ``NAME-explicit-epsR``
    beside ``NAME-epsR``), both finished."""
    done = {v["folder"]: v for v in verifications() if v["recorded"] == v["images"]}
    rows = []
    for folder, explicit in sorted(done.items()):
        if "-explicit-eps" not in folder:
            continue
        implicit = done.get(folder.replace("-explicit-eps", "-eps"))
        if implicit is None:
            continue
        gap = implicit["verified_robust_accuracy"] - explicit["verified_robust_accuracy"]
        rows.append(
            [f"`{implicit['folder']}`", f"{implicit['eps']:g}"]
            + [_f4(implicit["verified_robust_accuracy"]), _f4(implicit["not_refuted_accuracy"])]
            + [implicit["unknown"], _f4(explicit["verified_robust_accuracy"])]
            + [_f4(explicit["not_refuted_accuracy"]), explicit["unknown"], f"{100 * gap:+.2f}"]
        )
    header = ["model", "eps", "NEMON verified", "NEMON not refuted", "NEMON unknown"]
    header += ["explicit verified", "explicit not refuted", "explicit unknown"]
    header += ["NEMON - explicit (points, verified)"]
    return _table(header, rows) if rows else "No verified pair is committed yet.\n"


# -- implicit against explicit ----------------------------------------------------------------
def ablations() -> list[dict]:
    rows = []
    for path in sorted((RESULTS / "certified-models").glob("ablation-*.json")):
        result = _json(path)
        (eps,) = result["settings"]["eps"]
        runs = result["runs"]
        seeds = runs["nemon"].get("seeds") or [runs["nemon"]["config"]["seed"]]
        rows.append({"file": path.name, "preset": result["preset"], "eps": eps, "seeds": seeds})
        for family in ("nemon", "explicit"):
            rows[-1][family] = runs[family]
    return rows


def ablation_table() -> str:
    rows = []
    for a in ablations():
        r = f"{a['eps']:g}"
        line = [f"`{a['preset']}`", r, ", ".join(map(str, a["seeds"]))]
        for family in ("nemon", "explicit"):
            e = a[family]["evaluation"]
            line += [_f4(e["clean"]), _f4(e[f"interval@{r}"]), _f4(e[f"pgd@{r}"])]
        gap = (
            a["nemon"]["evaluation"][f"interval@{r}"] - a["explicit"]["evaluation"][f"interval@{r}"]
        )
        line.append(f"{100 * gap:+.2f}")
        rows.append(line)
    header = ["preset", "eps", "seeds", "NEMON clean", "NEMON certified", "NEMON PGD"]
    header += ["explicit clean", "explicit certified", "explicit PGD"]
    return _table([*header, "NEMON - explicit (points)"], rows)


def ablation_summary() -> str:
    """One line per ablation: certified accuracy of the implicit and the explicit layer."""
    lines = []
    for a in ablations():
        r = f"{a['eps']:g}"
        ours, theirs = (a[f]["evaluation"][f"interval@{r}"] for f in ("nemon", "explicit"))
        seeds = "one run"
        if len(a["seeds"]) > 1:
            seeds = "ensembles of seeds " + " and ".join(map(str, a["seeds"]))
        lines.append(
            f"- `{a['preset']}` at eps {r} ({seeds}): NEMON {ours:.4f}, explicit {theirs:.4f} "
            f"certified ({100 * (ours - theirs):+.2f} points)"
        )
    return "\n".join(lines) + "\n"


def ablation_verdict() -> str:
    """Where the implicit layer helps: per radius the range of the certified gap (ahead, level
    or behind by half a point) and what its solves cost in minutes against the explicit run's."""
    lines, every = [], ablations()
    for eps in sorted({a["eps"] for a in every}):
        rows = [a for a in every if a["eps"] == eps]
        r = f"{eps:g}"
        gaps = [
            100 * (a["nemon"]["evaluation"][f"interval@{r}"] - a[
                "explicit"]["evaluation"][f"interval@{r}"])
            for a in rows
        ]  # fmt: skip
        cost = [
            a["nemon"]["minutes"] / a["explicit"]["minutes"]
            for a in rows
            if a["nemon"]["minutes"] and a["explicit"]["minutes"]
        ]
        verdict = "ahead" if min(gaps) >= 0.5 else "behind" if max(gaps) <= -0.5 else "level"
        lines.append(
            f"- eps {r}: {verdict}, {_span(gaps, '{:+.2f}')} points certified over "
            f"{len(rows)} comparison{'s' if len(rows) > 1 else ''}; "
            f"{_span(cost, '{:.1f}')} times the explicit run's minutes of training"
        )
    return (
        "\nWhere the implicit layer helps (ahead or behind: by half a point or more in every "
        "comparison at that radius; level otherwise):\n\n" + "\n".join(lines) + "\n"
    )


def _span(values: list[float], fmt: str) -> str:
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low} to {high}"


def published_table() -> str:
    rows = [
        [p["method"], p["reference"], _f4(p.get("0.1")), _f4(p.get("0.3"))]
        for p in _json(RESULTS / "published.json")["certified"]
    ]
    return _table(["method", "paper", "certified at 0.1", "certified at 0.3"], rows)


def recipes_table() -> str:
    """The presets behind the shipped models and what their runs reached."""
    rows = []
    for m in shipped_models():
        c, e, r = m["configs"][0], m["evaluation"], m["eps"]
        steps = c.get("adv_steps", 0)  # runs older than the setting had none
        term = f"{steps}-step PGD" if steps else "clean"
        rows.append(
            [
                f"`{m['name']}`",
                c["arch"],
                c["epochs"],
                f"{c['cert_eps']:g}",
                f"{c['cert_weight']:g}",
            ]
            + [term, _f4(e["clean"]), f"{_f4(e[f'interval@{r}'])} at {r}"]
            + [" + ".join(str(x) for x in m["minutes"])]
        )
    header = ["shipped model", "encoder", "epochs", "training radius", "robust weight"]
    return _table([*header, "other term", "clean", "certified", "minutes"], rows)


# -- the paper's protocol, solvers, soundness -------------------------------------------------
def protocol_table() -> str:
    result = _json(RESULTS / "reproduce-mnist" / "results.json")
    rows = []
    for model, s in result["summary"].items():
        keys = ("best_accuracy", "forward_iterations", "backward_iterations", "train_seconds")
        acc, fwd, bwd, sec = (s[k] for k in keys)
        rows.append(
            [model, f"{acc[0]:.4f} +- {acc[1]:.4f}", f"{result['paper'][model]:.4f}"]
            + [f"{fwd[0]:.1f} +- {fwd[1]:.1f}", f"{bwd[0]:.1f} +- {bwd[1]:.1f}"]
            + [f"{sec[0]:.2f} +- {sec[1]:.2f}"]
        )
    header = ["model", "best test accuracy (5 runs)", "paper", "fwd iterations", "bwd iterations"]
    return _table([*header, "s / epoch"], rows)


def runs_table(file: str, key: str) -> str:
    result = _json(RESULTS / file)
    rows = []
    for run in result["runs"]:
        epochs = run["epochs"]
        fwd = statistics.fmean(e["forward_iterations"] for e in epochs)
        bwd = statistics.fmean(e["backward_iterations"] for e in epochs)
        sec = statistics.fmean(e["train_seconds"] for e in epochs)
        best = max(e["test_accuracy"] for e in epochs)
        rows.append([run[key].upper() if key == "model" else run[key], f"{best:.4f}"])
        rows[-1] += [f"{fwd:.1f}", f"{bwd:.1f}", f"{sec:.2f}"]
    header = [key, "best test accuracy", "fwd iterations", "bwd iterations", "s / epoch"]
    return _table(header, rows)


def soundness_table() -> str:
    result = _json(RESULTS / "soundness.json")
    rows = []
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        mine = [r for r in result["rows"] if r["model"] == model]
        cells = [model, ", ".join(f"{r['eps']:g}" for r in mine)]
        for method in ("lipschitz", "pairwise", "interval"):
            cells.append(sum(r[method] for r in mine))
        cells.append(
            sum(r[f"{m}_violations"] for r in mine for m in ("lipschitz", "pairwise", "interval"))
        )
        rows.append(cells)
    header = ["model", "radii", "Lipschitz certified", "pairwise certified", "interval certified"]
    return _table([*header, "certified but broken"], rows)


def tightness_table() -> str:
    result = _json(RESULTS / "tightness.json")
    rows = [
        [f"{r['eps']:g}", f"{r['embedding']:.4f}", f"{r['spread']:.4f}"]
        + [f"{r['embedding_over_spread']:.3f}", "yes" if r["sound"] else "no"]
        for r in result["rows"]
    ]
    header = ["eps", "embedding box width", "spread found by attacks", "ratio", "sound"]
    return _table(header, rows)


def tightness_summary() -> str:
    """One sentence: the embedding box against the attacked spread and the unrolled boxes."""
    result = _json(RESULTS / "tightness.json")
    rows = result["rows"]
    over = [r["embedding_over_spread"] for r in rows]
    unrolled = [r["unrolled_over_embedding"] for r in rows]
    radii = [r["eps"] for r in rows]
    return (
        f"On `{result['model']}` ({result['images']} test images) the embedding box is within "
        f"{100 * (min(over) - 1):.0f}-{100 * (max(over) - 1):.0f}% of the attacked spread for radii "
        f"{min(radii):g} to {max(radii):g}, and {min(unrolled):.0f} to {max(unrolled):.0f} times "
        "tighter than the unrolled interval arithmetic.\n"
    )


def headline() -> str:
    """The best certified accuracy per radius among the shipped models, as percentages."""
    best: dict[str, float] = {}
    for m in shipped_models():
        r = m["eps"]
        best[r] = max(best.get(r, 0.0), m["evaluation"][f"interval@{r}"])
    parts = [f"{100 * v:.1f}% at eps {r}" for r, v in sorted(best.items())]
    return (
        "The best shipped models certify " + " and ".join(parts) + " of the MNIST test images "
        "([results](results.md)).\n"
    )


def linear_rows() -> list[dict]:
    return _json(RESULTS / "certified-models" / "linear-vs-interval.json")["rows"]


def linear_table() -> str:
    rows = [
        [r["model"], f"{r['eps']:g}", _f4(r["interval"]), _f4(r["linear"])]
        + [f"{100 * r['added']:+.2f}", r["violations"]]
        + [f"{r['seconds']['interval']:.0f}", f"{r['seconds']['linear']:.0f}"]
        for r in linear_rows()
    ]
    header = ["model", "eps", "interval", "linear", "added (points)", "broken by PGD"]
    return _table([*header, "s interval", "s linear"], rows)


def linear_summary() -> str:
    """One sentence: what the linear certificate adds on the shipped models."""
    rows = linear_rows()
    added = [100 * r["added"] for r in rows]
    images = {r["images"] for r in rows}
    return (
        f"on the {len(rows)} shipped models it adds {min(added):.2f} to {max(added):.2f} points "
        f"of certified accuracy ({'/'.join(str(i) for i in sorted(images))} test images, "
        "[results](../results.md#linear-bounds-against-interval)).\n"
    )


def dense_step_table() -> str:
    """The FC training step against the MLP, before and after this work (medians of alternating
    rounds, milliseconds and ratios), then one run now with the eager floor and the operators a
    step runs (profiled)."""
    ab = _json(RESULTS / "speed" / "dense-step-ab.json")
    ms, ratio = ab["median_ms_per_step"], ab["median_over_mlp"]
    rows = [
        [model, f"{ms['before'][model]:.2f}", f"{ms['after'][model]:.2f}"]
        + [f"{ratio['before'][model]:.2f}x", f"{ratio['after'][model]:.2f}x"]
        for model in ratio["before"]
    ]
    header = [
        "model",
        f"ms at {ab['against']}",
        "ms now",
        f"vs MLP at {ab['against']}",
        "vs MLP now",
    ]
    text = _table(header, rows) + f"\n({len(ab['rounds']['after'])} rounds each, medians.)\n\n"
    now = _json(RESULTS / "speed" / "dense-step-current.json")["rows"]
    rows = [
        [r["model"], f"{r['ms_per_step']:.2f}", f"{r['over_mlp']:.2f}x"]
        + [f"{r['forward_iterations']} / {r['backward_iterations']}"]
        + [f"{r['profile']['aten_calls_per_step']:.0f}"]
        for r in now
    ]
    header = ["model (one run)", "ms a step", "vs MLP", "iterations", "operators a step"]
    return text + _table(header, rows)


def floor_ratio() -> str:
    """The eager floor's step against the MLP's, from the current run."""
    rows = _json(RESULTS / "speed" / "dense-step-current.json")["rows"]
    (floor,) = [r for r in rows if r["model"] == "eager floor"]
    return f"{floor['over_mlp']:.2f}x"


def five_runs_summary(file: str) -> str:
    """Mean and standard deviation of the best test accuracy, mean iterations and epoch time."""
    runs = _json(RESULTS / file)["runs"]
    best = [max(e["test_accuracy"] for e in run["epochs"]) for run in runs]
    fwd = statistics.fmean(e["forward_iterations"] for run in runs for e in run["epochs"])
    bwd = statistics.fmean(e["backward_iterations"] for run in runs for e in run["epochs"])
    return (
        f"{len(runs)} runs: best test accuracy {statistics.fmean(best):.4f} +- "
        f"{statistics.stdev(best):.4f} ({min(best):.4f} to {max(best):.4f}), "
        f"{fwd:.1f} forward and {bwd:.1f} backward iterations a step"
    )


def time_to_accuracy_table() -> str:
    result = _json(RESULTS / "speed" / "bench-1thread-10epochs.json")
    rows = []
    for r in result["epochs"]:
        reached = r["seconds_to_target"]
        rows.append(
            [r["model"].upper(), r["solver"], f"{r['seconds_per_epoch']:.2f}"]
            + [f"{r['forward_iterations']:.1f} / {r['backward_iterations']:.1f}"]
            + [f"{r['best_test_accuracy']:.4f}", "-" if reached is None else f"{reached:.1f}"]
        )
    target = result["epochs"][0]["target_accuracy"]
    header = ["model", "solver", "s / epoch", "iterations", "best accuracy", f"s to {target:g}"]
    return _table(header, rows)


def mutations_table() -> str:
    result = _json(RESULTS / "mutations.json")
    rows = [
        [m["name"], m["status"], (m["by"][0].removeprefix("FAILED ") if m["by"] else "-")]
        for m in result["mutations"]
    ]
    return _table(["mutation", "status", "first test that fails"], rows)


def mutation_count() -> str:
    result = _json(RESULTS / "mutations.json")
    return f"{result['killed']} of {result['total']}"


# -- pages ------------------------------------------------------------------------------------
RESULTS_PAGE = """---
hide:
  - toc
---

# Results

Every number on this page is rendered from a committed result file by
`python benchmarks/render_docs.py`, and a test checks that the page equals what the script
renders. Each section names the command that wrote its file; the machine is a 2-core CPU
(AMD EPYC) with torch 2.13.0 CPU unless a file says otherwise.

## Shipped certified models

Full MNIST test set ({images} images), interval certificate on the l_inf ball clipped to [0, 1],
float64, every solver error bound charged; PGD with {steps} steps and {restarts} restarts. "Broken" counts
images that are certified and yet misclassified by PGD. Made by
`python benchmarks/certified_models.py NAME --eps R` (each model's `evaluation.json`); minutes of
training steps as each card states them. "Verified robust", "refuted", "unknown" and "not
refuted" come from the complete verification below; where none is committed yet, "not refuted"
is PGD's.

{shipped}
## Complete verification

Each test image decided: certified robust, refuted by a counterexample (in the ball and the input
box, misclassified by the model as given and by its exact equilibrium), or unknown (out of time,
or robust at the exact equilibrium by less than the running charge). "Verified robust" is the
certified share: the exact robust accuracy lies between it and "not refuted" (PGD's and the
search's counterexamples together). Made by `nemon verify NAME --eps R --out
benchmarks/results/verification/FOLDER --json ...` on one thread of the 2-core machine
(`benchmarks/results/verification/*/summary.json`; a resume adds to a folder); minutes of wall
clock, all runs on the folder together.

{verification}
## Implicit against explicit, same recipe and budget

`python benchmarks/ablation.py PRESET` trains the preset twice, once with its NEMON layer and once
with an explicit ReLU layer of the same width (`ExplicitDense`), and evaluates both as above
(`benchmarks/results/certified-models/ablation-*.json`; two seeds: the mean logits of two runs).

{ablation}
The column "NEMON - explicit" is the difference in certified accuracy, in percentage points.
With both sides verified completely (`nemon verify` on the explicit run's checkpoint, folder
`NAME-explicit-epsR` in `benchmarks/results/verification`), exact numbers. The medium model's
explicit side is a second training of its ablation (same preset and seed, two threads instead
of one; `benchmarks/RUNS.md`), since the first one's weights are gone: its weights differ from
those of the certified-accuracy table above.

{verified_ablation}
{ablation_verdict}
## Published certified accuracies (MNIST, l_inf)

For context; from the papers, not run here (`benchmarks/results/published.json`). They use deeper
and wider networks, trained far longer on GPUs.

{published}
## The paper's MNIST protocol

`nemon reproduce mnist --runs 5` (section 6.2 of the paper: 100 states, ReLU, batch 300, 10
epochs, Adam 1.5e-2, tolerance 1e-4; `benchmarks/results/reproduce-mnist/results.json`):

{protocol}
Figures 1 and 2 of the paper, as reproduced:

![Figure 1](assets/results/figure1_curves.png)
![Figure 2, Lipschitz bound](assets/results/figure2_lipschitz.png)
![Figure 2, inversion attack](assets/results/figure2_inversion.png)

## The three families, one run each

`python benchmarks/mnist_fc.py --models nemon mon idl --epochs 10 --tag families`, each family's
default solver (`benchmarks/results/mnist_fc-families.json`):

{families}
## NEMON's solvers

`python benchmarks/mnist_fc.py --models nemon --solvers averaged diagonal anderson --epochs 10
--tag solvers` (`benchmarks/results/mnist_fc-solvers.json`): all stop on the same relative
residual, so they stop at the same accuracy.

{solvers}
## Linear bounds against interval

`python benchmarks/linear_certificate.py` (`benchmarks/results/certified-models/linear-vs-interval.json`):
each shipped model at its radius on all test images, `method="interval"` against `"linear"`
(interval with linear bounds through the encoder where interval leaves an image uncertified);
every image only the linear certificate certifies is attacked by PGD (50 steps, 2 restarts).

{linear}
The models were trained on interval bounds, whose ReLUs are mostly stable on the training
boxes: there the linear relaxation and the interval box nearly coincide (on an untrained
network the linear injection box is 2.7 times narrower, `tests/test_linear_bounds.py`).

## Training speed

The paper's FC step (batch 300, Adam) of NEMONDense 784-100 against the MLP 784-100-10, one
thread, side by side in one run. `python benchmarks/dense_step.py --against a16556d --rounds 5`
runs the library at commit `a16556d` (before two speed-ups: a solve from zero skips its first
product, and Adam's fused kernel) and the current library, each round in a fresh process, the
two taking turns (`benchmarks/results/speed/dense-step-ab.json`);
`python benchmarks/dense_step.py` (`dense-step-current.json`) adds the *eager floor*: the same
arithmetic as the 1e-2 step (4 + 4 iterations) in plain PyTorch, with no rounding, stopping rule,
error bound, measure or input checks. The second core of the machine was training a model
meanwhile: single runs vary by about 0.15 in the ratio.

Our targets for this step, 1.5x the MLP at the training tolerance and 2.5x at 1e-4, are not
met, and on this CPU the first cannot be by removing overhead: the floor, the extra matrix products (300 x 100 x 100) and their small
elementwise companions with nothing else, takes {floor_ratio} the MLP's step. Fused Adam makes every model faster
and the MLP most, so the ratios rose while the milliseconds fell.

{dense_steps}
Training tolerance: the `paper` recipe trains its solves at 1e-2 and evaluates at the layer's
1e-4. NEMON, `python benchmarks/mnist_fc.py --models nemon --seeds 0 1 2 3 4 --tol 1e-4
--solve-tol 1e-2 --threads 1 --tag train1e-2-eval1e-4-5runs` (with fused Adam):
{nemon_runs}. MON with its step tuned as MON's code tunes it (`tune_splitting_step`), the same
command with `--models mon --tag mon-tuned-train1e-2-5runs` (before fused Adam, two
threads): {mon_runs}.

Time to accuracy, `nemon bench --threads 1 --epochs 10 --target-accuracy 0.97`
(`benchmarks/results/speed/bench-1thread-10epochs.json`; training seconds until the first
epoch whose test accuracy reaches the target):

{time_to_accuracy}
## Tightness of the interval certificate

`python benchmarks/tightness.py` on `mnist-cert-0.1` (`benchmarks/results/tightness.json`): the
width of the embedding box of the implicit state against the spread that attacks find inside
the ball (a lower bound of the exact range).

{tightness}
## Soundness

`python benchmarks/soundness.py --quick` (`benchmarks/results/soundness.json`): trained,
regularised, interval-trained and random models, three certificates, PGD with restarts on
{soundness_images} test images; every certified point is attacked.

{soundness}
## Tests that bite

`python benchmarks/mutations.py` applies each source edit to a copy of the package and runs the
named tests there; each must make a test fail. Last run: {mutations_killed} killed
(`benchmarks/results/mutations.json`).

{mutations}"""


def _protocol() -> dict:
    """The evaluation settings the shipped models share (an error if they differ)."""
    settings = {
        (e["images"], e["pgd"]["steps"], e["pgd"]["restarts"])
        for e in (m["evaluation"] for m in shipped_models())
    }
    if len(settings) != 1:
        raise SystemExit(f"the shipped models were evaluated with different settings: {settings}")
    ((images, steps, restarts),) = settings
    return {"images": f"{images:,}".replace(",", " "), "steps": steps, "restarts": restarts}


def results_page() -> str:
    return RESULTS_PAGE.format(
        **_protocol(),
        shipped=shipped_table_docs(),
        verification=verification_table(),
        verified_ablation=verified_ablation_table(),
        ablation=ablation_table(),
        ablation_verdict=ablation_verdict(),
        published=published_table(),
        protocol=protocol_table(),
        families=runs_table("mnist_fc-families.json", "model"),
        solvers=runs_table("mnist_fc-solvers.json", "solver"),
        tightness=tightness_table(),
        linear=linear_table(),
        dense_steps=dense_step_table(),
        floor_ratio=floor_ratio(),
        nemon_runs=five_runs_summary("mnist_fc-train1e-2-eval1e-4-5runs.json"),
        mon_runs=five_runs_summary("mnist_fc-mon-tuned-train1e-2-5runs.json"),
        time_to_accuracy=time_to_accuracy_table(),
        soundness=soundness_table(),
        soundness_images=_json(RESULTS / "soundness.json")["images"],
        mutations=mutations_table(),
        mutations_killed=mutation_count(),
    )


def example_time(name: str):
    """The README line stating how long the example ``name`` took (benchmarks/readme_examples.py)."""

    def render() -> str:
        path = RESULTS / "readme-examples.json"
        runs = _json(path) if path.exists() else {}
        if name not in runs or runs[name]["returncode"] != 0:
            return "Not yet timed: `python benchmarks/readme_examples.py` measures it.\n"
        run = runs[name]
        seconds = run["seconds"]
        took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"
        return (
            f"Measured: {took} on a {run['cores']}-core CPU machine (load average "
            f"{run['load_average_at_start']:g} at the start; `python benchmarks/readme_examples.py "
            f"--only {name}`).\n"
        )

    return render


def tutorial_output(index: int):
    """What the tutorial's block ``index`` (from 1) prints (benchmarks/tutorial_output.py)."""

    def render() -> str:
        path = RESULTS / "tutorial-output.json"
        outputs = _json(path)["outputs"] if path.exists() else []
        printed = outputs[index - 1] if index <= len(outputs) else ""
        if not printed.strip():
            return ""
        return f"Output (`python benchmarks/tutorial_output.py`):\n\n```text\n{printed.rstrip()}\n```\n"

    return render


BLOCKS = {
    **{f"tutorial-output-{i}": tutorial_output(i) for i in range(1, 7)},
    "time-quick-start": example_time("quick-start"),
    "time-fifteen-lines": example_time("fifteen-lines"),
    "shipped-models-readme": shipped_table_readme,
    "shipped-models": shipped_table_docs,
    "recipes": recipes_table,
    "ablation": ablation_table,
    "ablation-summary": ablation_summary,
    "tightness-summary": tightness_summary,
    "linear-summary": linear_summary,
    "headline": headline,
    "verification": verification_table,
}
PAGES_WITH_BLOCKS = (
    "README.md",
    "docs/tutorial.md",
    "docs/index.md",
    "docs/guide/pretrained.md",
    "docs/guide/training.md",
    "docs/guide/certificates.md",
)
FIGURES = ("figure1_curves.png", "figure2_lipschitz.png", "figure2_inversion.png")


def render_blocks(text: str, source: str) -> str:
    def fill(match: re.Match) -> str:
        name = match.group(2)
        if name not in BLOCKS:
            raise SystemExit(f"{source}: unknown generated block {name!r}; known: {sorted(BLOCKS)}")
        return match.group(1) + BLOCKS[name]() + match.group(4)

    return BLOCK.sub(fill, text)


def rendered() -> dict[Path, bytes]:
    """Every generated file with the contents it should have."""
    out = {ROOT / "docs" / "results.md": results_page().encode()}
    for page in PAGES_WITH_BLOCKS:
        path = ROOT / page
        out[path] = render_blocks(path.read_text(), page).encode()
    for name in FIGURES:
        out[ROOT / "docs" / "assets" / "results" / name] = (
            RESULTS / "reproduce-mnist" / name
        ).read_bytes()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path, content in rendered().items():
        if not path.exists() or path.read_bytes() != content:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
    if args.check and stale:
        names = ", ".join(map(str, stale))
        print(f"out of date: {names}; run python benchmarks/render_docs.py", file=sys.stderr)
        return 1
    print("up to date" if not stale else f"wrote {', '.join(map(str, stale))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
