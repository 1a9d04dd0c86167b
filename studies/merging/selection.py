"""Stage 3 of the merging study, selection: every choice of a seed, made on the teams' validation parts only.

Per kind of fine-tune, each merging method's grid point and base (`choose`), then for the soup's full fine-tunes
the undertraining curve (each method merging every team's checkpoint of one step) and the mergeability-aware
stopping rule (`greedy`). Every validation score is cached in scores.json, every seed's choices in
selection.json. `Selection` is a mixin of `Study` (study.py): its methods read the study's state (cfg, out,
log, the score cache) and call its stage-2 methods (teams, kinds, inputs, record, schedule).
"""

from __future__ import annotations

import numpy as np

from soe.data.windows import eval_windows
from soe.fileio import atomic_write_json, read_json
from studies.merging.grid import Candidate, Scorer, candidates, mean_score
from studies.merging.teams import Team

CURVE_METHODS = ("linear", "task_arithmetic", "ties", "cat")
GREEDY_METHODS = ("task_arithmetic", "ties")


class Selection:
    """`Study`'s stage 3 (see the module docstring): `select` and the curve, greedy stopping and cache it uses."""

    def validation_scorer(self, teams: dict[str, Team]) -> Scorer:
        return Scorer(
            self.net_cfg, {t: eval_windows(team.validation, self.T, self.cfg.val_windows) for t, team in teams.items()}
        )

    def score(self, key: str, compute) -> dict:
        """The cached validation losses of ``key`` (computed by ``compute()`` -> {team: loss} or a dict)."""
        if key not in self.scores:
            self.scores[key] = compute()
            self._unsaved += 1
            if self._unsaved >= 10:
                self.flush()
        return self.scores[key]

    def flush(self) -> None:
        atomic_write_json(self.scores_path, self.scores)
        self._unsaved = 0

    def grid_candidates(self, kind: str) -> list[Candidate]:
        if kind == "soup-full":
            return candidates(self.cfg.grids, ["mean", "alpha-mean"], projection_base="alpha-mean")
        return candidates(self.cfg.grids, ["alpha-mean"] if kind.startswith("soup") else ["generic"])

    def select(self, seed: int) -> dict:
        """Every choice of the seed, from validation parts only (cached in selection.json)."""
        path = self.out / f"seed-{seed}" / "selection.json"
        if path.is_file():
            return read_json(path, "selection")
        teams = self.teams(seed)
        scorer = self.validation_scorer(teams)
        sel: dict = {"kinds": {}}
        for kind in self.kinds():
            self.log(f"[merging] seed {seed}: choosing merges of the {kind} specialists on validation")
            inp = self.inputs(seed, kind, teams=teams)

            def run(c: Candidate) -> dict:
                sd, secs = inp.merge(c)
                return {"val": scorer.losses(sd), "seconds": secs}

            rows = {c.key: self.score(f"{seed}/{kind}/{c.key}", lambda c=c: run(c)) for c in self.grid_candidates(kind)}
            sel["kinds"][kind] = choose(self.grid_candidates(kind), rows)
        self.flush()
        sel["curve"] = self.curve(seed, teams, scorer, sel["kinds"]["soup-full"])
        sel["greedy"] = self.greedy(seed, teams, scorer, sel["kinds"]["soup-full"])
        self.flush()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, sel)
        return sel

    def curve(self, seed: int, teams, scorer: Scorer, chosen: dict) -> dict:
        """Undertraining vs mergeability: each method (at its chosen base and point) merging every team's
        checkpoint of the same step; and the individual models' validation loss at that step."""
        out = {"individual": {}, "merged": {}}
        for s in self.schedule():
            out["individual"][str(s)] = float(
                np.mean([self.record(seed, "soup-full", t)["checkpoints"][str(s)] for t in self.cfg.teams])
            )
        for method in CURVE_METHODS:
            if method not in chosen["methods"]:
                continue
            c = Candidate(**chosen["labels"][chosen["methods"][method]]["candidate"])
            out["merged"][method] = {}
            for s in self.schedule():

                def run(s=s, c=c):
                    sd, _ = self.inputs(seed, "soup-full", [s] * len(self.cfg.teams), teams).merge(c)
                    return {"val": scorer.losses(sd)}

                out["merged"][method][str(s)] = mean_score(self.score(f"{seed}/curve/{c.key}/{s}", run)["val"])
        return out

    def greedy(self, seed: int, teams, scorer: Scorer, chosen: dict) -> dict:
        """The mergeability-aware stopping rule (soe.merging.stopping.greedy_checkpoints) per method."""
        from soe.merging.stopping import greedy_checkpoints

        names, out = self.cfg.teams, {}
        start = [self.record(seed, "soup-full", t)["best_step"] for t in names]
        options = [sorted(set(self.schedule()) | {b}) for b in start]
        for method in GREEDY_METHODS:
            c = Candidate(**chosen["labels"][chosen["methods"][method]]["candidate"])

            def value(steps: list[int], c=c) -> float:
                def run():
                    sd, _ = self.inputs(seed, "soup-full", list(steps), teams).merge(c)
                    return {"val": scorer.losses(sd)}

                return mean_score(self.score(f"{seed}/greedy/{c.key}/{','.join(map(str, steps))}", run)["val"])

            choice, history = greedy_checkpoints(options, start, value)
            out[method] = {
                "candidate": c.__dict__,
                "individual": start,
                "greedy": choice,
                "history": history,
                "val_individual": value(start),
                "val_greedy": value(choice),
            }
        return out


def choose(cands: list[Candidate], rows: dict[str, dict]) -> dict:
    """Per label (method/base), its best grid point by mean validation loss, and its default (first) point; the
    best label overall; per method, its best label."""
    labels: dict[str, dict] = {}
    for c in cands:
        v = mean_score(rows[c.key]["val"])
        lab = labels.setdefault(c.label, {"default": {"candidate": c.__dict__, "val": v}, "points": 0})
        lab["points"] += 1
        if "best_val" not in lab or v < lab["best_val"]:
            lab.update(best_val=v, candidate=c.__dict__, seconds=rows[c.key].get("seconds"))
    methods: dict[str, str] = {}
    for label, lab in labels.items():
        m = label.split("/")[0]
        if m not in methods or lab["best_val"] < labels[methods[m]]["best_val"]:
            methods[m] = label
    best = min(labels, key=lambda k: labels[k]["best_val"])
    return {
        "labels": labels,
        "methods": methods,
        "best": best,
        "rows": {k: mean_score(v["val"]) for k, v in rows.items()},
    }
