"""How tight is the embedding box? Three widths of the implicit layer's state over an l_inf ball.

For each radius, on the first ``--images`` MNIST test images (box clipped to [0, 1]):

- ``embedding``: the box of the embedding system (what ``certify(method="interval")`` uses);
- ``spread``: the largest spread of each state coordinate found by attacks (random corners of the
  ball and, per coordinate, projected gradient ascent and descent on ``x*_i``): a lower bound of
  the true spread, which no sound box can undercut (``sound`` checks it, up to 1e-6 for the error
  of the attacked points' own solves);
- ``unrolled``: interval arithmetic through the solver's own iteration
  ``x <- x + [alpha] (Phi(A x + z) - x)`` from ``x_0 = 0``, for as many iterations as the box
  needs to settle (at most ``--max-iter``), the textbook way to bound an iterated map.

Mean width per coordinate, and the ratios embedding / spread (>= 1; 1 is exact) and
unrolled / embedding::

    python benchmarks/tightness.py mnist-cert-0.1 --eps 0.02 0.05 0.1 --images 20

Writes benchmarks/results/tightness.json and tightness.png.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

import nemon
from nemon.app.plots import pyplot
from nemon.data import load_dataset
from nemon.intervals import input_box
from nemon.solvers import diagonal_steps

RESULTS = Path(__file__).resolve().parent / "results"


def state(model, u):
    return model.layer(model.encode(model.prepare_input(u)))


def embedding_box(model, u, eps):
    lo, hi = input_box(model.prepare_input(u), eps, (0.0, 1.0))
    v_lo, v_hi = model.encode_interval(lo, hi)
    x_lo, x_hi, _ = model.layer.interval_bounds(v_lo, v_hi)
    return x_lo, x_hi


def attacked_spread(model, u, eps, steps: int, corners: int) -> torch.Tensor:
    """Per image and coordinate, ``max - min`` of ``x*_i`` over the points the attacks found."""
    n = model.layer.hidden
    widths = []
    for image in u:
        image = image[None]
        lo, hi = input_box(image, eps, (0.0, 1.0))
        signs = torch.randint(0, 2, (corners, *image.shape[1:])).to(image.dtype)
        points = [lo + (hi - lo) * signs]  # random corners of the clipped ball
        direction = torch.cat([torch.eye(n), -torch.eye(n)])  # ascend, then descend each x_i
        adv = image.repeat(2 * n, 1, 1, 1)
        for _ in range(steps):
            adv.requires_grad_(True)
            (grad,) = torch.autograd.grad((state(model, adv) * direction).sum(), adv)
            adv = torch.minimum(
                torch.maximum(adv.detach() + 2.5 * eps / steps * grad.sign(), lo), hi
            )
        points.append(adv)
        with torch.no_grad():
            x = state(model, torch.cat(points))
        widths.append(x.amax(0) - x.amin(0))
    return torch.stack(widths)


def unrolled_box(model, u, eps, max_iter: int):
    """Interval arithmetic through the diagonal-step iteration, until the box stops moving."""
    layer = model.layer
    lo, hi = input_box(model.prepare_input(u), eps, (0.0, 1.0))
    v_lo, v_hi = model.encode_interval(lo, hi)
    W = layer.B.weight
    z_c = layer.B((v_hi + v_lo) / 2)
    z_r = (v_hi - v_lo) / 2 @ W.abs().T
    A = layer.A
    alpha = diagonal_steps(torch.diagonal(A))
    x_lo = x_hi = torch.zeros_like(z_c)
    for _ in range(max_iter):
        c, r = (x_hi + x_lo) / 2, (x_hi - x_lo) / 2
        p_c, p_r = c @ A.T + z_c, r @ A.abs().T + z_r
        f_lo, f_hi = torch.relu(p_c - p_r), torch.relu(p_c + p_r)
        # x + alpha (f - x) = (1 - alpha) x + alpha f, with 1 - alpha >= 0 per coordinate
        new_lo = (1 - alpha) * x_lo + alpha * f_lo
        new_hi = (1 - alpha) * x_hi + alpha * f_hi
        done = float((new_hi - new_lo - (x_hi - x_lo)).abs().max()) < 1e-6
        x_lo, x_hi = new_lo, new_hi
        if done or not bool(torch.isfinite(x_hi).all()):
            break
    return x_lo, x_hi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="mnist-cert-0.1")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--corners", type=int, default=200)
    parser.add_argument("--max-iter", type=int, default=2000)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nemon.load_pretrained(args.model).double()
    model.layer.solver_options = replace(model.layer.solver_options, tol=1e-10, max_iter=10000)
    u = load_dataset("mnist").test_x[: args.images].double()
    rows = []
    for eps in args.eps:
        with torch.no_grad():
            e_lo, e_hi = embedding_box(model, u, eps)
            n_lo, n_hi = unrolled_box(model, u, eps, args.max_iter)
        spread = attacked_spread(model, u, eps, args.steps, args.corners)
        embedding, unrolled = (e_hi - e_lo), (n_hi - n_lo)
        row = {
            "eps": eps,
            "embedding": float(embedding.mean()),
            "spread": float(spread.mean()),
            "unrolled": float(unrolled.mean()),
            "embedding_over_spread": float(embedding.mean() / spread.mean()),
            "unrolled_over_embedding": float(unrolled.mean() / embedding.mean()),
            # the attacked states are solves to tol 1e-10: allow their own error, 1e-6
            "max_excess": float((spread - embedding).max()),
            "sound": bool((spread <= embedding + 1e-6).all()),
        }
        rows.append(row)
        print(
            f"eps {eps:<5g} embedding {row['embedding']:.4g}  spread >= {row['spread']:.4g}  "
            f"unrolled {row['unrolled']:.4g}  embedding/spread {row['embedding_over_spread']:.2f}  "
            f"unrolled/embedding {row['unrolled_over_embedding']:.2f}  sound {row['sound']}",
            flush=True,
        )
    RESULTS.mkdir(exist_ok=True)
    result = {"model": args.model, "images": args.images, "rows": rows}
    (RESULTS / "tightness.json").write_text(json.dumps(result, indent=2))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    radii = [r["eps"] for r in rows]
    for key, label in (
        ("unrolled", "interval arithmetic, unrolled iteration"),
        ("embedding", "embedding system (nemon)"),
        ("spread", "spread found by attacks (lower bound)"),
    ):
        ax.plot(radii, [r[key] for r in rows], "o-", label=label)
    ax.set_xlabel("l_inf radius")
    ax.set_ylabel("mean width of the state box")
    ax.set_yscale("log")
    ax.set_title(f"{args.model}: how tight is the box?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "tightness.png", dpi=120)


if __name__ == "__main__":
    main()
