"""Markdown tables and PNG plots for an experiment's results.json (see studies/experiments/experiment.py)."""

from __future__ import annotations

import math
from pathlib import Path

from soe.fileio import atomic_write_text
from studies.experiments.plots import plot_bars, plot_curve, plot_curves, scalars

MODEL_COLUMNS = (
    ("generic", "generic"),
    ("soe_hist", "SoE (histogram h)"),
    ("soe_refined", "SoE (refined h)"),
    ("dedicated", "dedicated"),
)


def soe_answer(row: dict) -> float:
    """The SoE specialist's loss a user would get: at the refined h when refinement ran, else at the histogram
    h. Never the better of the two on the evaluation split: that would choose h on the test data (refinement
    already falls back to the histogram h when it does not help on the in-house sample's held-out part)."""
    return row.get("soe_refined", row["soe_hist"])


def _ci(r: dict, key: str) -> str:
    """' [lo, hi]' for a stored 95 % interval, '' for results from before intervals were recorded."""
    return f" [{r[key][0]:+.3f}, {r[key][1]:+.3f}]" if key in r else ""


def gap_closed(r: dict) -> float | None:
    """(generic − SoE) ÷ (generic − dedicated): 1 matches the dedicated model, < 0 is behind generic."""
    if "dedicated" not in r or r["generic"] - r["dedicated"] <= 1e-6:
        return None
    return (r["generic"] - soe_answer(r)) / (r["generic"] - r["dedicated"])


def set_table(results: dict) -> str:
    cols = [(k, label) for k, label in MODEL_COLUMNS if any(k in r for r in results["sets"].values())]
    head = (
        "| specialist set | "
        + " | ".join(f"{label} loss (ppl)" for _, label in cols)
        + " | SoE − generic [95 % interval] | gap closed |"
    )
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    closed_all = []
    for s, r in results["sets"].items():
        cells = [f"{r[k]:.3f} ({math.exp(r[k]):.1f})" if k in r else "–" for k, _ in cols]
        key = "soe_refined" if "soe_refined" in r else "soe_hist"
        closed = gap_closed(r)
        closed_all += [closed] if closed is not None else []
        lines.append(
            f"| {s} | "
            + " | ".join(cells)
            + f" | {soe_answer(r) - r['generic']:+.3f}{_ci(r, 'ci_' + key)} | "
            + (f"{closed:.0%}" if closed is not None else "–")
            + " |"
        )
    if closed_all:
        lines.append(
            "| **mean** |"
            + " |" * len(cols)
            + f" {sum(soe_answer(r) - r['generic'] for r in results['sets'].values()) / len(results['sets']):+.3f} | "
            f"{sum(closed_all) / len(closed_all):.0%} |"
        )
    return "\n".join(lines)


def curve_table(results: dict) -> str:
    """SoE (histogram h) − generic per set at each budget, with its 95 % interval ("" without a curve)."""
    curve = results.get("curve") or []
    if not curve:
        return ""
    sets = list(curve[0]["sets"])
    lines = [
        "| steps | tokens | tokens / param | " + " | ".join(sets) + " | sets won (interval < 0) |",
        "|" + "---|" * (len(sets) + 4),
    ]
    for p in curve:
        cells = [f"{v['delta']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]" for v in p["sets"].values()]
        won = sum(v["ci"][1] < 0 for v in p["sets"].values())
        lines.append(
            f"| {p['steps']} | {p['tokens']:,} | {p['tokens_per_param']:.1f} | "
            + " | ".join(cells)
            + f" | {won}/{len(sets)} |"
        )
    return "\n".join(lines)


def finetune_table(results: dict) -> str:
    """Generic vs SoE specialist, each fine-tuned the same way on the set's in-house tokens ("" if not run)."""
    rows = {s: r for s, r in results["sets"].items() if "generic_ft" in r and "soe_ft" in r}
    if not rows:
        return ""
    lines = [
        "| specialist set | generic → fine-tuned | SoE (histogram h) → fine-tuned | SoE ft − generic ft | "
        "best step (generic / SoE) | fine-tuning tokens, wall (each) |",
        "|---|---|---|---|---|---|",
    ]
    for s, r in rows.items():
        g, e = r["generic_ft_run"], r["soe_ft_run"]
        lines.append(
            f"| {s} | {r['generic']:.3f} → {r['generic_ft']:.3f} | {r['soe_hist']:.3f} → {r['soe_ft']:.3f} | "
            f"{r['soe_ft'] - r['generic_ft']:+.3f}{_ci(r, 'ci_soe_ft')} | {g['best_step']} / {e['best_step']} of {g['steps']} | "
            f"{g['tokens']:,}, {g['wall_s']:.0f} s / {e['wall_s']:.0f} s |"
        )
    return "\n".join(lines)


def domain_table(results: dict) -> str:
    lines = [
        "| domain | prior weight | generic | SoE one-hot h | SoE − generic | SoE at prior h |",
        "|---|---|---|---|---|---|",
    ]
    for d, r in results["domains"].items():
        lines.append(
            f"| {d} | {r['prior_weight']:.3f} | {r['generic']:.3f} | {r['soe_onehot']:.3f} | "
            f"{r['soe_onehot'] - r['generic']:+.3f} | {r['soe_prior']:.3f} |"
        )
    m = results["mixture"]
    lines.append(
        f"| **natural mixture** | 1.000 | {m['generic']:.3f} | {m['soe_onehot']:.3f} | "
        f"{m['soe_onehot'] - m['generic']:+.3f} | {m['soe_prior']:.3f} |"
    )
    return "\n".join(lines)


def domain_summary(results: dict) -> str:
    """The pretraining domains in three lines when there are many (clustered domains): how many one-hot
    specialists beat the generic model, the spread of their margins, and the natural mixture's row."""
    delta = sorted(r["soe_onehot"] - r["generic"] for r in results["domains"].values())
    m = results["mixture"]
    return (
        f"{sum(d < 0 for d in delta)}/{len(delta)} domains won by their one-hot SoE specialist "
        f"(SoE − generic: min {delta[0]:+.3f} / median {delta[len(delta) // 2]:+.3f} / max {delta[-1]:+.3f}).\n"
        f"Natural mixture: generic {m['generic']:.3f}, SoE at the prior h {m['soe_prior']:.3f} "
        f"({m['soe_prior'] - m['generic']:+.3f}: the soup used as a generalist)."
    )


def cost_table(results: dict) -> str:
    lines = [
        "| run | steps | tokens | params (instantiated / stored) | train FLOPs | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["runs"].items():
        lines.append(
            f"| {name} | {r['steps']} | {r['tokens']:,} | {r['params_instantiated'] / 1e6:.2f}M / "
            f"{r['params_total'] / 1e6:.2f}M | {r['train_flops']:.2e} | {r['wall_s'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def amortised_cost(results: dict) -> str:
    """One line: the soup's one-off cost vs the dedicated models' per-specialist cost ("" without dedicated)."""
    runs = results["runs"]
    ded = [r for name, r in runs.items() if name.startswith("dedicated-")]
    if not ded or "soe" not in runs:
        return ""
    soe, per = runs["soe"], sum(r["train_flops"] for r in ded) / len(ded)
    wall = sum(r["wall_s"] for r in ded) / len(ded)
    return (
        f"For N specialists the soup costs one training run ({soe['train_flops']:.2e} FLOPs, "
        f"{soe['wall_s'] / 60:.1f} min here) plus N instantiations (milliseconds); dedicated models cost N runs "
        f"({per:.2e} FLOPs, {wall / 60:.1f} min each here: {len(ded) * per:.2e} FLOPs for these {len(ded)})."
    )


def margin_table(domains: list[str], soe_dir: Path, generic_dir: Path) -> str:
    """Δ = SoE (one-hot h) − generic validation loss per domain at every step both runs validated at:
    does the soup's margin hold, grow or shrink as training goes on? Empty if fewer than 2 such steps."""
    soe, gen = scalars(soe_dir, "loss/val/"), scalars(generic_dir, "loss/val/")
    per = {d: (dict(soe.get(f"loss/val/{d}", [])), dict(gen.get(f"loss/val/{d}", []))) for d in domains}
    steps = sorted(set.intersection(*(set(a) & set(b) for a, b in per.values()))) if per else []
    if len(steps) < 2:
        return ""
    lines = ["| domain | " + " | ".join(f"step {s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for d, (a, b) in per.items():
        lines.append(f"| {d} | " + " | ".join(f"{a[s] - b[s]:+.3f}" for s in steps) + " |")
    won = [sum(per[d][0][s] < per[d][1][s] for d in domains) for s in steps]
    lines.append("| domains won | " + " | ".join(f"{w}/{len(domains)}" for w in won) + " |")
    return "\n".join(lines)


def evaluation_line(results: dict) -> str:
    """How the losses above were measured, from what the experiment recorded."""
    e = results["eval"]
    return (
        f"Losses: token-mean next-token loss of each model as a dense network on at most {e['windows']} "
        f"non-overlapping windows of {e['seq_len']} tokens per set, evenly spread (soe/data/windows.py; "
        "`soe evaluate --windows` measures the same)."
    )


def budget_line(results: dict) -> str:
    """What the experiment checked about the runs' budgets (it refuses to train runs whose tokens differ)."""
    runs = results["runs"]
    tokens = {r["tokens"] for r in runs.values()}
    if len(tokens) != 1:  # only possible for runs reused from an older experiment (studies.experiments --runs)
        return "**The runs did not see the same tokens**: " + ", ".join(f"{n} {r['tokens']:,}" for n, r in runs.items())
    b = next(iter(runs.values())).get("budget")
    how = ""
    if b:
        how = f" ({b['steps']} steps × {b['batch_size']} sequences × {b['seq_len']} tokens"
        how += f" × {b['accumulate']} accumulated" if b["accumulate"] != 1 else ""
        how += (f" × {b['processes']} processes" if b["processes"] != 1 else "") + ")"
    return (
        f"Every run saw the same {tokens.pop():,} training tokens{how}: checked on the resolved training "
        "configurations before training, and on each trained run."
    )


def data_line(results: dict) -> str:
    """Which prepared data the numbers come from: its directory, manifest hash and corpus lock when known."""
    d = results.get("data")
    if not d:  # results from before the data was recorded
        return ""
    lock = d.get("prepared_data.corpus_lock")
    return f"Prepared data: `{d['data_dir']}` (meta.json sha256 {d['prepared_data.meta_sha256'][:12]}…, " + (
        f"corpus lock {lock})." if lock else "no corpus lock recorded)."
    )


def write_report(results: dict, out: Path, domains: list[str]) -> Path:
    runs = results["runs"]
    figures = [
        plot_curves(out, domains, Path(runs["soe"]["dir"]), Path(runs["generic"]["dir"])),
        *plot_bars(out, results, domains),
        *plot_curve(out, results),
    ]
    parts = ["# Soup-of-Experts: specialists vs generic vs dedicated models", ""]
    parts += [data_line(results), ""] if data_line(results) else []
    if results["sets"]:
        parts += [
            "## Held-out specialist sets (loss in nats/token on each set's evaluation split; lower is better)",
            "",
            set_table(results),
            "",
            "*SoE − generic* and *gap closed* use the SoE at the refined h when it was computed (chosen on the in-house "
            "sample, never on the evaluation split), else at the histogram h; gap closed = (generic − SoE) ÷ "
            "(generic − dedicated), 100 % matches the dedicated model, negative: SoE behind generic. "
            + evaluation_line(results)
            + " Intervals: 95 % paired bootstrap over the evaluation windows "
            f"({results['config'].get('bootstrap', 2000)} resamples); a difference whose interval is below 0 is a win "
            "outside noise.",
            "",
        ]
    curve = curve_table(results)
    if curve:
        parts += [
            "## SoE − generic against the token budget (histogram h; each budget trained with its own schedule)",
            "",
            curve,
            "",
        ]
    ft = finetune_table(results)
    if ft:
        held = next(r["generic_ft_run"]["holdout"] for r in results["sets"].values() if "generic_ft_run" in r)
        parts += [
            "## Fine-tuned on the in-house sample (same procedure for both; soe/specialists/finetune.py)",
            "",
            ft,
            "",
            f"Each model is fine-tuned on the set's in-house tokens ({1 - held:.0%}; the other {held:.0%} picks the "
            "best step, step 0 = unchanged) and evaluated on the same evaluation split as above.",
            "",
        ]
    parts += (
        [
            "## Pretraining domains (validation split)",
            "",
            domain_table(results),
            "",
            evaluation_line(results),
            "",
            "## Training cost",
            "",
            budget_line(results),
            "",
            cost_table(results),
            "",
            amortised_cost(results),
            "",
            "## Figures",
            "",
        ]
        + [f"![{p.stem}]({p.name})" for p in figures]
        + [""]
    )
    margin = margin_table(domains, Path(runs["soe"]["dir"]), Path(runs["generic"]["dir"]))
    if margin:
        parts += [
            "## Margin over training (SoE at the one-hot h − generic, validation loss during training)",
            "",
            margin,
            "",
        ]
    parts += ["## Commands", ""] + [f"- {name}: `{r['command']}`" for name, r in results["runs"].items()] + [""]
    return atomic_write_text(out / "report.md", "\n".join(parts))
