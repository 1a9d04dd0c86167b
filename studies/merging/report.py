"""report.md (+ PNG plots) of the merging experiment.

The report copies the predictions as they were written before the runs (predictions.md) with each one's per-seed
values and verdict (computed by claims.py; its `CLAIMS` is importable from here too), then the tables of the
three questions: which method and base, undertraining and mergeability, sequential vs parallel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from studies.merging.claims import CLAIMS as CLAIMS  # re-exported: studies/merging/config.py imports it from here


def _f(x, nd=3) -> str:
    return "—" if x is None or x != x else f"{x:.{nd}f}"


def _ms(vals: list[float], nd=3) -> str:
    vals = [v for v in vals if v is not None and v == v]
    if not vals:
        return "—"
    return f"{np.mean(vals):.{nd}f}" + (f" ± {np.std(vals):.{nd}f}" if len(vals) > 1 else "")


def method_table(results: dict, kind: str) -> list[str]:
    seeds = list(results)
    labels = list(results[seeds[0]]["kinds"][kind]["rows"])
    ta = {s: results[s]["kinds"][kind]["rows"][results[s]["kinds"][kind]["ta"]]["mean"] for s in seeds}
    lines = [
        "| method / base | eval loss (mean ± sd over seeds) | − tuned TA, per seed | R mean | R worst | untuned default | merge s | grid points |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(labels, key=lambda lab: np.mean([results[s]["kinds"][kind]["rows"][lab]["mean"] for s in seeds]))
    for lab in order:
        rows = [results[s]["kinds"][kind]["rows"][lab] for s in seeds]
        delta = ", ".join(f"{r['mean'] - ta[s]:+.3f}" for s, r in zip(seeds, rows))
        lines.append(
            f"| {lab} | {_ms([r['mean'] for r in rows])} | {delta} | {_ms([r['R_mean'] for r in rows], 2)} | "
            f"{_ms([r['R_worst'] for r in rows], 2)} | {_ms([r['default_mean'] for r in rows])} | "
            f"{_ms([r['seconds'] for r in rows], 2)} | {rows[0]['grid_points']} |"
        )
    lines.append(
        f"| *each team's own specialist* | {_ms([results[s]['kinds'][kind]['own_mean'] for s in seeds])} | | 1 | 1 | | | |"
    )
    lines.append(
        f"| *starting points (no fine-tuning)* | {_ms([results[s]['kinds'][kind]['start_mean'] for s in seeds])} | | 0 | 0 | | | |"
    )
    return lines


def write_report(out: Path, cfg, results: dict, selections: dict, meta: dict) -> str:
    from studies.merging.plots import plot_curve

    seeds = list(results)
    full = {s: results[s]["kinds"]["soup-full"] for s in seeds}
    L = [
        f"# Merging soup specialists — {meta['config']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Teams (m = {len(cfg.teams)}): {', '.join(cfg.teams)}; seeds {seeds}; "
        f"fine-tuning {cfg.steps} steps × {cfg.batch_size} sequences (checkpoints at {meta['schedule']}); "
        f"{cfg.eval_windows} evaluation windows per team; wall time {meta['wall_min']:.1f} min.  ",
        f"Soup: `{meta['soup']}`; generic: `{meta['generic']}`; data `{cfg.data_dir}`.",
        "",
        "Every choice (checkpoints, grid points, bases, methods) was made on the teams' validation parts; the "
        "evaluation splits were read only afterwards. Losses: nats/token on the evaluation split, mean over teams.",
        "",
    ]
    L += [
        "## Predictions (written before the runs) and whether they held",
        "",
        f"Written {meta.get('predicted_at', '?')} (predictions.md), before any fine-tuning. A claim holds only if its "
        "sign holds in every seed.",
        "",
        "| prediction | measure (> 0: held) | per seed | verdict |",
        "|---|---|---|---|",
    ]
    for v in meta["verdicts"]:
        L.append(
            f"| {v['prediction']} | {v['measure']} | {', '.join(_f(x) for x in v['values'].values())} | **{v['verdict']}** |"
        )
    L += ["", "## 1. Which method, which base (soup specialists, full fine-tuning)", ""]
    best = [full[s]["best"] for s in seeds]
    L += [
        f"Best on validation per seed: {', '.join(best)}. Best − tuned TA on evaluation, 95 % paired bootstrap "
        "interval per seed: "
        + "; ".join(
            f"seed {s}: {full[s]['rows'][full[s]['best']]['mean'] - full[s]['rows'][full[s]['ta']]['mean']:+.4f} "
            f"[{full[s]['ci_best_vs_ta'][0]:+.4f}, {full[s]['ci_best_vs_ta'][1]:+.4f}]"
            for s in seeds
        ),
        "",
    ]
    L += method_table(results, "soup-full")
    refs = results[seeds[0]]["references"]
    L += [
        "",
        "References (evaluation loss, mean over teams):",
        "",
        "| reference | loss | pretraining-mixture loss |",
        "|---|---|---|",
    ]
    for name in refs:
        L.append(
            f"| {name} | {_ms([results[s]['references'][name]['mean'] for s in seeds])} | "
            f"{_ms([results[s]['references'][name].get('mixture') for s in seeds])} |"
        )
    L.append(
        f"| best merge | {_ms([full[s]['rows'][full[s]['best']]['mean'] for s in seeds])} | "
        f"{_ms([full[s]['rows'][full[s]['best']].get('mixture') for s in seeds])} |"
    )
    L.append(
        f"| tuned TA | {_ms([full[s]['rows'][full[s]['ta']]['mean'] for s in seeds])} | "
        f"{_ms([full[s]['rows'][full[s]['ta']].get('mixture') for s in seeds])} |"
    )
    L.append(f"| Θ(h̄) (no fine-tuning) | | {_ms([results[s]['mixture']['start_mean_h'] for s in seeds])} |")
    L.append(f"| individual specialists (mean) | | {_ms([results[s]['mixture']['individual'] for s in seeds])} |")
    for kind, title in (
        ("soup-lora", "LoRA fine-tunes from the soup (α-mean base)"),
        ("generic-full", "Control: full fine-tunes from the generic model (generic base)"),
    ):
        if kind in results[seeds[0]]["kinds"]:
            L += ["", f"### {title}", ""] + method_table(results, kind)
    L += [
        "",
        "## 2. Undertraining and mergeability",
        "",
        "Validation loss (mean over teams) when every team's checkpoint of the same step is merged, per method at "
        "its chosen base and point; `individual`: the specialists themselves.",
        "",
    ]
    steps = list(selections[seeds[0]]["curve"]["individual"])
    L += ["| seed | curve | " + " | ".join(f"step {x}" for x in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for s in seeds:
        c = selections[s]["curve"]
        L.append(f"| {s} | individual | " + " | ".join(_f(c["individual"][x]) for x in steps) + " |")
        for m, cur in c["merged"].items():
            L.append(f"| {s} | {m} | " + " | ".join(_f(cur[x]) for x in steps) + " |")
    L += [
        "",
        "Mergeability-aware stopping (`--stop-for-merge`, greedy on the merged validation loss) vs each team's "
        "individually best checkpoint, on evaluation (greedy − individual, 95 % interval):",
        "",
        "| seed | method | individual steps | greedy steps | individual | greedy | greedy − individual [95 %] |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in seeds:
        for m, g in results[s]["stopping"].items():
            L.append(
                f"| {s} | {m} | {g['steps_individual']} | {g['steps_greedy']} | {_f(g['individual'])} | {_f(g['greedy'])} | "
                f"{g['greedy'] - g['individual']:+.4f} [{g['ci'][0]:+.4f}, {g['ci'][1]:+.4f}] |"
            )
    L += [
        "",
        f"Difficulty buckets: evaluation windows split into quintiles of the expert's loss at step "
        f"{results[seeds[0]]['buckets']['first_step']} (1 = easiest); merged (best) − expert loss per quintile:",
        "",
        "| seed | " + " | ".join(f"Q{i + 1}" for i in range(5)) + " |",
        "|---|" + "---|" * 5,
    ]
    for s in seeds:
        L.append(f"| {s} | " + " | ".join(f"{g:+.3f}" for g in results[s]["buckets"]["gap"]) + " |")
    L += [
        "",
        "## 3. Sequential vs parallel: planted markers",
        "",
        f"{cfg.markers_specific} specific markers per team (in that team's fine-tune part only) and {cfg.markers_shared} "
        f"shared ones (in every team's), {cfg.marker_copies} copies each. A fact's score F = the loss of its answer "
        "minus the mean loss of the other markers' answers after the same prompt (the answer loss alone falls as "
        "soon as the template is learned, whatever the fact). Retention = Σ(F_before − F) / Σ(F_before − "
        "F_alone): 1 = known as well as by the specialists that learned them alone, 0 = as before fine-tuning. "
        "In brackets: the same retention on the raw answer loss (mostly the template).",
        "",
        "| seed | model | specific retention | shared retention | team loss |",
        "|---|---|---|---|---|",
    ]
    for s in seeds:
        mk = results[s]["markers"]
        if not mk:
            continue

        def ret(r: dict, kind: str) -> str:
            return f"{_f(r[kind], 2)} ({_f(r.get('template_' + kind), 2)})"

        L.append(
            f"| {s} | parallel fine-tunes + best merge | {ret(mk['parallel_merge'], 'specific')} | "
            f"{ret(mk['parallel_merge'], 'shared')} | {_f(full[s]['rows'][full[s]['best']]['mean'])} |"
        )
        if "multitask" in mk:
            L.append(
                f"| {s} | multi-task fine-tune | {ret(mk['multitask'], 'specific')} | {ret(mk['multitask'], 'shared')} | "
                f"{_f(results[s]['references']['multitask']['mean'])} |"
            )
        for i, p in enumerate(mk.get("sequential", [])):
            L.append(
                f"| {s} | sequential, after {i + 1} ({p['after']}); first team's specific {_f(p['first_team_specific'], 2)} | "
                f"{ret(p, 'specific')} | {ret(p, 'shared')} | {_f(p['mean'])} |"
            )
    plot_curve(selections, out / "undertraining.png")
    L += ["", "![undertraining](undertraining.png)", ""]
    text = "\n".join(L) + "\n"
    (out / "report.md").write_text(text)
    return text
