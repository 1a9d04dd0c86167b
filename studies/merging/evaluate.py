"""Evaluation of what the selection chose, on the teams' evaluation splits (read here and only here).

Per seed: every kind's starting models, individual specialists and chosen merges (each label's best grid point
and its untuned default) with per-team loss, normalised retention R_u = (L_start,u − L_merged,u) /
(L_start,u − L_u,u), merge time and loss on the pretraining mixture; the references (multi-task fine-tune,
output-space ensemble); greedy vs individual stopping; loss per difficulty bucket; the sequential path; markers.
Differences carry 95 % paired bootstrap intervals over the evaluation windows of all teams.
"""

from __future__ import annotations

import numpy as np

from soe.core.weights import parse_weights
from soe.data.shards import load_meta, open_shard
from soe.data.windows import eval_windows
from soe.specialists.evaluate import paired_interval, window_losses
from studies.merging import finetunes as FT
from studies.merging.grid import Candidate, Scorer, ensemble_losses
from studies.merging.teams import evaluation_windows, marker_scores


def _flat(w: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([w[t] for t in sorted(w)])


def _summary(w: dict[str, np.ndarray]) -> dict:
    losses = {t: float(v.mean()) for t, v in w.items()}
    return {"losses": losses, "mean": float(np.mean(list(losses.values())))}


def _retention(losses: dict, start: dict, own: dict) -> dict:
    r = {
        t: (start[t] - losses[t]) / (start[t] - own[t]) if abs(start[t] - own[t]) > 1e-9 else float("nan")
        for t in losses
    }
    vals = [v for v in r.values() if v == v]
    return {
        "R": r,
        "R_mean": float(np.mean(vals)) if vals else float("nan"),
        "R_worst": float(min(vals)) if vals else float("nan"),
    }


def marker_retention(loss: np.ndarray, before: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Σ (L_before − L_model) / Σ (L_before − L_ref) over the markers in ``mask``: 1 = as well known as by the
    specialists that learned them alone, 0 = as unknown as before fine-tuning."""
    den = float((before[mask] - ref[mask]).sum())
    return float((before[mask] - loss[mask]).sum() / den) if mask.any() and abs(den) > 1e-9 else float("nan")


class Evaluation:
    def __init__(self, study, seed: int, sel: dict):
        self.s, self.seed, self.sel, c = study, seed, sel, study.cfg
        self.T = study.T
        self.wins = {t: evaluation_windows(c.data_dir, t, self.T, c.eval_windows) for t in c.teams}
        self.scorer = Scorer(study.net_cfg, self.wins)
        meta = load_meta(c.data_dir)
        self.prior = parse_weights("prior", list(meta.domains), meta.prior("train"))
        self.mix = Scorer(
            study.net_cfg,
            {d: eval_windows(open_shard(c.data_dir, meta, d, "val"), self.T, c.mixture_windows) for d in meta.domains},
        )
        self.markers = study.markers(seed)

    def mixture(self, sd: dict) -> float:
        return float(sum(float(p) * v for p, v in zip(self.prior, self.mix.losses(sd).values())))

    def own_windows(self, states: list[dict]) -> dict[str, np.ndarray]:
        """Each team's window losses under its own model (states in team order)."""
        out = {}
        for t, sd in zip(self.s.cfg.teams, states):
            self.scorer.net.load_state_dict(sd, strict=True)
            out[t] = window_losses(self.scorer.net, self.wins[t])
        return out

    def own(self, states: list[dict]) -> dict[str, float]:
        return {t: float(v.mean()) for t, v in self.own_windows(states).items()}

    def marker_losses(self, sd: dict) -> np.ndarray:
        """(2, markers): the fact measure (teams.marker_scores; retention is computed on it) and the raw loss."""
        self.scorer.net.load_state_dict(sd, strict=True)
        loss, _, fact = marker_scores(self.scorer.net, self.markers, self.s.eos_id)
        return np.stack([fact, loss])

    def run(self) -> dict:
        s, c = self.s, self.s.cfg
        res: dict = {"kinds": {}}
        keep, inputs = {}, {}
        teams = s.teams(self.seed)
        for kind in s.kinds():
            s.log(f"[merging] seed {self.seed}: evaluating the {kind} merges")
            inp = inputs[kind] = s.inputs(self.seed, kind, teams=teams)
            start = self.own([s.start(kind, t) for t in c.teams])
            own = self.own(inp.thetas)
            chosen = self.sel["kinds"][kind]
            rows = {}
            for label, lab in chosen["labels"].items():
                cand = Candidate(**lab["candidate"])
                sd, secs = inp.merge(cand)
                w = self.scorer.windows_losses(sd)
                row = {
                    **_summary(w),
                    **_retention(_summary(w)["losses"], start, own),
                    "seconds": secs,
                    "val": lab["best_val"],
                    "point": cand.point,
                    "grid_points": lab["points"],
                }
                d = Candidate(**lab["default"]["candidate"])
                row["default_mean"] = (
                    row["mean"] if d == cand else _summary(self.scorer.windows_losses(inp.merge(d)[0]))["mean"]
                )
                if kind == "soup-full" and (label == chosen["best"] or label == chosen["methods"]["task_arithmetic"]):
                    keep[label] = (w, sd)
                    row["mixture"] = self.mixture(sd)
                rows[label] = row
            res["kinds"][kind] = {
                "start": start,
                "own": own,
                "rows": rows,
                "best": chosen["best"],
                "ta": chosen["methods"]["task_arithmetic"],
                "own_mean": float(np.mean(list(own.values()))),
                "start_mean": float(np.mean(list(start.values()))),
            }
        full = res["kinds"]["soup-full"]
        (wb, best_sd), (wt, _) = keep[full["best"]], keep[full["ta"]]
        full["ci_best_vs_ta"] = paired_interval(_flat(wb), _flat(wt), c.bootstrap, seed=self.seed)
        inp = inputs["soup-full"]  # the same models: loaded once
        res["mixture"] = {
            "start_mean_h": self.mixture(s.bases("soup-full")["mean"]),
            "individual": float(np.mean([self.mixture(t) for t in inp.thetas])),
        }
        res["references"] = self.references(inp, best_sd)
        res["stopping"] = self.stopping()
        res["buckets"] = self.buckets(inp, best_sd)
        res["markers"] = self.marker_study(inp, best_sd)
        return res

    def references(self, inp, best_sd) -> dict:
        s, c = self.s, self.s.cfg
        out = {"individual": _summary(self.own_windows(inp.thetas))}
        if c.multitask:
            d = s.out / "finetunes" / f"seed-{self.seed}" / "multitask"
            sd = FT.load_state(d, FT.read_json(d / FT.RECORD, "fine-tuning record")["best_step"])
            out["multitask"] = {**_summary(self.scorer.windows_losses(sd)), "mixture": self.mixture(sd)}
        if c.ensemble:
            nets = [inp.net(t) for t in inp.thetas]
            out["ensemble"] = _summary({t: ensemble_losses(nets, w) for t, w in self.wins.items()})
        return out

    def stopping(self) -> dict:
        """Greedy (merged-validation) checkpoints vs each team's individually best checkpoint, on evaluation."""
        out = {}
        for method, g in self.sel["greedy"].items():
            cand = Candidate(**g["candidate"])
            w = {
                k: self.scorer.windows_losses(self.s.inputs(self.seed, "soup-full", g[k]).merge(cand)[0])
                for k in ("individual", "greedy")
            }
            out[method] = {
                "individual": _summary(w["individual"])["mean"],
                "greedy": _summary(w["greedy"])["mean"],
                "steps_individual": g["individual"],
                "steps_greedy": g["greedy"],
                "ci": paired_interval(_flat(w["greedy"]), _flat(w["individual"]), self.s.cfg.bootstrap, seed=self.seed),
            }
        return out

    def buckets(self, inp, best_sd, n: int = 5) -> dict:
        """Windows bucketed by the expert's loss at its first checkpoint (quintiles, hardest last): mean loss of
        the expert and of the best merge per bucket, averaged over teams."""
        s, c = self.s, self.s.cfg
        first = s.schedule()[0]
        merged = self.scorer.windows_losses(best_sd)
        exp_rows, mer_rows = [], []
        for t, th in zip(c.teams, inp.thetas):
            self.scorer.net.load_state_dict(FT.load_state(s.run_dir(self.seed, "soup-full", t), first), strict=True)
            early = window_losses(self.scorer.net, self.wins[t])
            self.scorer.net.load_state_dict(th, strict=True)
            expert = window_losses(self.scorer.net, self.wins[t])
            edges = np.quantile(early, np.linspace(0, 1, n + 1)[1:-1])
            b = np.searchsorted(edges, early, side="right")
            exp_rows.append([float(expert[b == i].mean()) if (b == i).any() else np.nan for i in range(n)])
            mer_rows.append([float(merged[t][b == i].mean()) if (b == i).any() else np.nan for i in range(n)])
        e, m = np.nanmean(exp_rows, 0), np.nanmean(mer_rows, 0)
        return {"first_step": first, "expert": e.tolist(), "merged": m.tolist(), "gap": (m - e).tolist()}

    def marker_study(self, inp, best_sd) -> dict:
        """Marker losses and retention for the parallel merge, the sequential path, the multi-task model."""
        s, c = self.s, self.s.cfg
        if not self.markers:
            return {}
        before = self.marker_losses(s.bases("soup-full")["mean"])
        indiv = np.stack([self.marker_losses(t) for t in inp.thetas])  # (m, 2, markers)
        team_ix = {t: i for i, t in enumerate(c.teams)}
        # what the specialist(s) that learned each marker alone reached: its team's model, or the mean (shared)
        ref = np.stack(
            [indiv[team_ix[m.team], :, j] if m.team else indiv[:, :, j].mean(0) for j, m in enumerate(self.markers)],
            axis=1,
        )  # (2, markers)
        spec = np.array([m.kind == "specific" for m in self.markers])

        def row(sc: np.ndarray, seen: list[str] | None = None) -> dict:
            """Retention of the facts (sc[0]) and of the raw answer loss (sc[1], mostly the template)."""
            mask = spec & np.array([m.team in seen for m in self.markers]) if seen is not None else spec
            fact, loss = sc
            return {
                "specific": marker_retention(fact, before[0], ref[0], mask),
                "shared": marker_retention(fact, before[0], ref[0], ~spec),
                "template_specific": marker_retention(loss, before[1], ref[1], mask),
                "template_shared": marker_retention(loss, before[1], ref[1], ~spec),
                "fact_specific": float(fact[spec].mean()) if spec.any() else None,
                "fact_shared": float(fact[~spec].mean()) if (~spec).any() else None,
            }

        out = {"before": row(before), "individual": row(ref), "parallel_merge": row(self.marker_losses(best_sd))}
        if c.multitask:
            d = s.out / "finetunes" / f"seed-{self.seed}" / "multitask"
            out["multitask"] = row(
                self.marker_losses(FT.load_state(d, FT.read_json(d / FT.RECORD, "record")["best_step"]))
            )
        if c.sequential:
            path = []
            for i, t in enumerate(s.order(self.seed)):
                d = s.out / "finetunes" / f"seed-{self.seed}" / "sequential" / f"{i}-{t}"
                sd = FT.load_state(d, FT.read_json(d / FT.RECORD, "record")["best_step"])
                point = {"after": t, **row(self.marker_losses(sd)), **_summary(self.scorer.windows_losses(sd))}
                point["first_team_specific"] = row(self.marker_losses(sd), [s.order(self.seed)[0]])["specific"]
                path.append(point)
            out["sequential"] = path
        return out
