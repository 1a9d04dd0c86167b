"""The merging experiment's predictions as numbers: `CLAIMS` and the `verdicts` report.md gives them.

A claim is a number per seed whose sign says whether it held (> 0: held); it holds only if it held in every seed.
`CLAIMS` maps a prediction id of the config to that number, a function of one seed's results (evaluation.json)
and selection (selection.json); `verdicts` evaluates every prediction of the config in every seed.
"""

from __future__ import annotations


def _full(r: dict) -> dict:
    return r["kinds"]["soup-full"]


def _row(r: dict, kind: str, label: str) -> dict | None:
    return r["kinds"].get(kind, {}).get("rows", {}).get(label)


def _argmin_step(curve: dict) -> int:
    return int(min(curve, key=lambda s: curve[s]))


# claim id -> (what the number is, function of one seed's results and selection); > 0 means it held
CLAIMS = {
    "best_beats_ta": (
        "tuned TA − best method/base (eval loss)",
        lambda r, s: _full(r)["rows"][_full(r)["ta"]]["mean"] - _full(r)["rows"][_full(r)["best"]]["mean"],
    ),
    "data_aware_best": (
        "1 if the best method is cat, lot or regmean else −1",
        lambda r, s: 1.0 if _full(r)["best"].split("/")[0] in ("cat", "lot", "regmean") else -1.0,
    ),
    "alpha_mean_base_beats_mean": (
        "TA on Θ(h̄) − TA on α-mean (eval loss)",
        lambda r, s: (
            _row(r, "soup-full", "task_arithmetic/mean")["mean"]
            - _row(r, "soup-full", "task_arithmetic/alpha-mean")["mean"]
        ),
    ),
    "projection_helps": (
        "TA − TA with bank projection, α-mean base (eval loss)",
        lambda r, s: (
            _row(r, "soup-full", "task_arithmetic/alpha-mean")["mean"]
            - _row(r, "soup-full", "task_arithmetic/alpha-mean+proj")["mean"]
        ),
    ),
    "soup_more_mergeable": (
        "R_mean of tuned TA: soup start − generic start",
        lambda r, s: (
            _row(r, "soup-full", _full(r)["ta"])["R_mean"]
            - r["kinds"]["generic-full"]["rows"][r["kinds"]["generic-full"]["ta"]]["R_mean"]
        ),
    ),
    "greedy_beats_individual_ta": (
        "TA merge: individually early-stopped − greedy checkpoints (eval loss)",
        lambda r, s: r["stopping"]["task_arithmetic"]["individual"] - r["stopping"]["task_arithmetic"]["greedy"],
    ),
    "greedy_beats_individual_ties": (
        "TIES merge: individually early-stopped − greedy checkpoints (eval loss)",
        lambda r, s: r["stopping"]["ties"]["individual"] - r["stopping"]["ties"]["greedy"],
    ),
    "merge_prefers_earlier_steps": (
        "best step of the individuals − best step of the TA merge (validation curve)",
        lambda r, s: _argmin_step(s["curve"]["individual"]) - _argmin_step(s["curve"]["merged"]["task_arithmetic"]),
    ),
    "hard_examples_forgotten": (
        "merge − expert gap: hardest quintile − easiest quintile",
        lambda r, s: r["buckets"]["gap"][-1] - r["buckets"]["gap"][0],
    ),
    "specific_erodes_more_parallel": (
        "parallel merge: shared − specific marker retention",
        lambda r, s: r["markers"]["parallel_merge"]["shared"] - r["markers"]["parallel_merge"]["specific"],
    ),
    "specific_erodes_more_sequential": (
        "sequential end: shared − first team's specific marker retention",
        lambda r, s: r["markers"]["sequential"][-1]["shared"] - r["markers"]["sequential"][-1]["first_team_specific"],
    ),
    "parallel_beats_sequential": (
        "sequential end − parallel best merge (eval loss, mean over teams)",
        lambda r, s: r["markers"]["sequential"][-1]["mean"] - _full(r)["rows"][_full(r)["best"]]["mean"],
    ),
}


def verdicts(results: dict, selections: dict, predictions: dict[str, str]) -> list[dict]:
    out = []
    for cid, text in predictions.items():
        what, fn = CLAIMS[cid]
        vals = {}
        for seed, r in results.items():
            try:
                vals[seed] = float(fn(r, selections[seed]))
            except (KeyError, TypeError, IndexError):
                vals[seed] = float("nan")
        ok = all(v > 0 for v in vals.values()) and bool(vals)
        mixed = any(v > 0 for v in vals.values()) and not ok
        out.append(
            {
                "id": cid,
                "prediction": text,
                "measure": what,
                "values": vals,
                "verdict": "held" if ok else ("mixed (sign not the same in every seed)" if mixed else "did not hold"),
            }
        )
    return out
