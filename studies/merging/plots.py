"""The merging experiment's plot: merged validation loss vs the fine-tuning step of its inputs."""

from __future__ import annotations

from pathlib import Path


def plot_curve(selections: dict, path: Path) -> None:
    """One panel per seed: the individual specialists' and each method's merged validation loss per step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot is optional (soe[plot]); the report's tables carry the same numbers
        return
    seeds = list(selections)
    fig, axes = plt.subplots(1, len(seeds), figsize=(4.5 * len(seeds), 3.6), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], seeds):
        c = selections[s]["curve"]
        steps = [int(x) for x in c["individual"]]
        ax.plot(steps, list(c["individual"].values()), "k--o", label="individual")
        for m, cur in c["merged"].items():
            ax.plot(steps, list(cur.values()), "-o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("fine-tuning step of the inputs")
        ax.set_title(f"seed {s}")
    axes[0][0].set_ylabel("validation loss (mean over teams)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
