"""Matplotlib figures for the command line, benchmarks and reproduction (application side).

Never imported by ``import nemon``; matplotlib is loaded on first use, with the Agg backend.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["pyplot", "plot_curves"]


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: dict[str, list[float]], eps: list[float], path, title: str) -> None:
    """One line per entry of ``curves`` (accuracy against the l_inf radius), saved as PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, acc in curves.items():
        ax.plot(eps, acc, "o-", label=name)
    ax.set_xlabel("l_inf perturbation eps")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(path), dpi=120)
    plt.close(fig)
