"""PNG figures of an experiment's report (studies/experiments/report.py writes the markdown around them)."""

from __future__ import annotations

import math
from pathlib import Path


def scalars(run_dir: Path, prefix: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith(prefix):
                out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {t: sorted(set(v)) for t, v in out.items()}


def plot_curves(out: Path, domains: list[str], soe_dir: Path, generic_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    soe = scalars(soe_dir, "loss/val/")
    gen = scalars(generic_dir, "loss/val/")
    cols = min(3, len(domains))
    rows = math.ceil(len(domains) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, d in zip(axes.flat, domains):
        for series, label, style in ((soe, "SoE, one-hot h", "-o"), (gen, "generic", "--s")):
            pts = series.get(f"loss/val/{d}", [])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=3, label=label)
        ax.set_title(d)
        ax.set_xlabel("training step")
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(domains) :]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.suptitle("Validation loss per pretraining domain")
    fig.tight_layout()
    path = out / "loss_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bars(out: Path, results: dict, domains: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sets = list(results["sets"])
    paths = []
    if not sets:
        return paths
    # estimated h per specialist set
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(domains) + 2), 3.8))
    width = 0.8 / len(sets)
    x = np.arange(len(domains))
    for i, s in enumerate(sets):
        ax.bar(x + i * width, [results["sets"][s]["h_hist"][d] for d in domains], width, label=s)
    ax.set_xticks(x + 0.4 - width / 2, domains, rotation=30, ha="right")
    ax.set_ylabel("estimated weight h_i")
    ax.set_xlabel("pretraining domain")
    ax.set_title("Domain weights estimated from each in-house sample")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "weights.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    # α per specialist set
    alphas = [results["sets"][s]["alpha_hist"] for s in sets]
    n = len(alphas[0])
    if n:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * n + 2), 3.8))
        width = 0.8 / len(sets)
        x = np.arange(n)
        for i, (s, a) in enumerate(zip(sets, alphas)):
            ax.bar(x + i * width, a, width, label=s)
        ax.set_xticks(x + 0.4 - width / 2, [f"E{j + 1}" for j in range(n)])
        ax.set_ylabel("coefficient α_j = φ(h)_j")
        ax.set_xlabel("expert")
        ax.set_title("Expert coefficients of each specialist")
        ax.axhline(0, color="black", lw=0.6)
        ax.legend()
        fig.tight_layout()
        paths.append(out / "alpha.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def plot_curve(out: Path, results: dict) -> list[Path]:
    """SoE − generic against tokens per instantiated parameter, one line per set, 95 % intervals as bars."""
    curve = results.get("curve") or []
    if not curve:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    x = [p["tokens_per_param"] for p in curve]
    for s in curve[0]["sets"]:
        d = [p["sets"][s]["delta"] for p in curve]
        err = [
            [v - p["sets"][s]["ci"][0] for v, p in zip(d, curve)],
            [p["sets"][s]["ci"][1] - v for v, p in zip(d, curve)],
        ]
        ax.errorbar(x, d, yerr=err, marker="o", ms=3, capsize=2, label=s)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens per instantiated parameter")
    ax.set_ylabel("SoE (histogram h) − generic (nats/token)")
    ax.set_title("Below 0: the soup's specialist beats the generic model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "budget_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
