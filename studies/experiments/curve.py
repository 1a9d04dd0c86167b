"""The budget curve of an experiment (``budgets`` in its config): SoE − generic against tokens per parameter.

For each budget below the main runs' step count a generic and a SoE run are trained with only that many steps
(planned with the main runs, so with equal tokens); each point is SoE's histogram-h specialist minus generic on
every specialist set, with its paired bootstrap interval. The main runs are the last point, their windows' losses
reused from the main evaluation. Apart from experiment.py because only the curve trains these extra runs.
"""

from __future__ import annotations

from pathlib import Path

from soe.data.shards import open_shard
from soe.specialists.evaluate import paired_interval
from soe.train.checkpoint import load_checkpoint
from studies.experiments.config import ExperimentConfig
from studies.experiments.runs import train


def budget_curve(
    cfg: ExperimentConfig,
    curve_plans: dict,
    runs: dict,
    soe_name: str,
    sets: list[str],
    h_hist: dict,
    spec_dir: Path,
    spec_meta,
    wloss,
    main_windows: dict,
) -> list[dict]:
    """SoE (histogram h) − generic on every specialist set at each budget (the main runs are the last point)."""
    if not curve_plans:
        return []
    points = [(cfg.max_steps or runs["soe"]["steps"], runs["generic"], runs["soe"])]
    for b, planned in curve_plans.items():
        trained = {name: train(name, Path(runs["generic"]["dir"]).parent, *p) for name, p in planned.items()}
        points.append((b, trained[f"generic-{b}steps"], trained[f"{soe_name}-{b}steps"]))
    curve = []
    for steps, g_run, s_run in sorted(points, key=lambda p: p[1]["tokens"]):
        main = s_run is runs["soe"]
        soup, generic = (
            load_checkpoint(s_run["checkpoint"])[0],
            load_checkpoint(g_run["checkpoint"])[0].specialist(None),
        )
        point = {
            "steps": g_run["steps"],
            "tokens": g_run["tokens"],
            "tokens_per_param": g_run["tokens"] / g_run["params_instantiated"],
            "sets": {},
        }
        for s in sets:
            evalset = open_shard(spec_dir, spec_meta, s, "val")
            g, e = main_windows[s] if main else (wloss(generic, evalset), wloss(soup.specialist(h_hist[s]), evalset))
            point["sets"][s] = {
                "generic": float(g.mean()),
                "soe_hist": float(e.mean()),
                "delta": float((e - g).mean()),
                "ci": paired_interval(e, g, cfg.bootstrap, seed=cfg.seed),
            }
        curve.append(point)
        print(
            f"[experiment] curve at {point['tokens']:,} tokens ({point['tokens_per_param']:.1f}/param): "
            + ", ".join(f"{s} {v['delta']:+.3f}" for s, v in point["sets"].items())
        )
    return curve
