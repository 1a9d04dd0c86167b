"""The merging experiment's stages: pretraining runs, fine-tunes, selection (validation only), evaluation.

    python -m studies.merging --config experiments/merging.yaml --out DIR [--runs RUNS]

1. The soup and the generic model are trained once, or reused from ``--runs`` when their resolved configuration
   matches (studies/experiments/runs.py). Each team's h is estimated from its in-house sample.
2. Per seed, every team is fine-tuned from Θ(h_u) (full and LoRA) and, as a control, from the generic model,
   with checkpoints at 4, 8, …, T; plus the references: a multi-task fine-tune on the union of the teams' data,
   and a sequential fine-tune team after team (both from Θ(h̄)).
3. Selection (studies/merging/selection.py), for every seed before any evaluation split is read: each method's
   grid point per base, the best method and base, the undertraining curve, the greedy mergeability-aware
   checkpoints — all on validation parts.
4. Evaluation (studies/merging/evaluate.py) of what was chosen, then report.md (report.py).
Everything is resumable: fine-tunes keep their checkpoints, every validation score is cached in scores.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from soe.core.weights import parse_weights
from soe.data.shards import load_meta
from soe.data.windows import eval_windows
from soe.fileio import atomic_write_json, read_json
from studies.merging import finetunes as FT
from studies.merging.config import MergingConfig
from studies.merging.grid import Inputs
from studies.merging.selection import Selection
from studies.merging.teams import Team, load_teams, make_markers


class Study(Selection):
    """Shared state of one experiment: models, teams, caches. ``log``: progress lines. Stages 1–2 (data, bases,
    fine-tunes) are here; stage 3, `select` and what it calls, is the `Selection` it inherits (selection.py)."""

    def __init__(
        self, cfg: MergingConfig, out: Path, soup, generic_state: dict, domains: list[str], hs: dict, log=print
    ):
        self.cfg, self.out, self.soup, self.log = cfg, Path(out), soup, log
        self.generic_state, self.domains, self.hs = generic_state, domains, hs
        self.net_cfg = soup.net_cfg
        self.T = soup.net_cfg.max_seq_len
        meta = load_meta(cfg.data_dir)
        self.eos_id, self.tokenizer = meta.eos_id, Path(cfg.data_dir) / "tokenizer.json"
        self.scores_path = self.out / "scores.json"
        self.scores = read_json(self.scores_path, "score cache") if self.scores_path.is_file() else {}
        self._unsaved = 0
        self._bases: dict[str, dict] = {}
        self._bank: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ data and bases
    def markers(self, seed: int):
        return make_markers(self.cfg.teams, self.cfg.markers_specific, self.cfg.markers_shared, seed, self.tokenizer)

    def teams(self, seed: int) -> dict[str, Team]:
        c = self.cfg
        return load_teams(
            c.data_dir,
            c.teams,
            self.hs,
            c.validation_share,
            self.markers(seed),
            c.marker_copies,
            self.T,
            self.eos_id,
            seed,
        )

    @torch.no_grad()
    def state(self, h: torch.Tensor | None = None, alpha: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self.soup.instantiate(h=h, alpha=alpha).items()}

    @torch.no_grad()
    def bases(self, kind: str) -> dict[str, dict]:
        if kind.startswith("generic"):
            return {"generic": self.generic_state}
        if not self._bases:
            hs = torch.stack([self.hs[t] for t in self.cfg.teams])
            alpha_mean = self.soup.coefficients(hs).mean(0)  # φ row by row, then the mean α
            self._bases = {"mean": self.state(h=hs.mean(0)), "alpha-mean": self.state(alpha=alpha_mean)}
        return self._bases

    @torch.no_grad()
    def bank(self) -> dict[str, torch.Tensor]:
        """Expert directions per tensor, (n, *shape): Θ(α = e_j) − Θ(α = 0) (low-rank experts included)."""
        if self._bank is None:
            n = self.soup.n
            zero = self.soup.instantiate(alpha=torch.zeros(n))
            self._bank = {
                k: (v - zero[k]).detach().float() for k, v in self.soup.instantiate(alpha=torch.eye(n)).items()
            }
        return self._bank

    def start(self, kind: str, team: str) -> dict[str, torch.Tensor]:
        return self.generic_state if kind.startswith("generic") else self.state(h=self.hs[team])

    def kinds(self) -> list[str]:
        c = self.cfg
        return ["soup-full"] + (["soup-lora"] if c.lora_rank else []) + (["generic-full"] if c.generic_control else [])

    def run_dir(self, seed: int, kind: str, team: str) -> Path:
        return self.out / "finetunes" / f"seed-{seed}" / kind / team

    def schedule(self) -> list[int]:
        """The fine-tunes' checkpoint steps: first_checkpoint, doubling, up to steps."""
        return FT.geometric_steps(self.cfg.steps, self.cfg.first_checkpoint)

    # ------------------------------------------------------------------ stage 2: fine-tunes
    def finetune_all(self, seed: int) -> None:
        c, teams = self.cfg, self.teams(seed)
        common = dict(
            steps=c.steps, first=c.first_checkpoint, batch_size=c.batch_size, val_windows=c.val_windows, log=self.log
        )
        for kind in self.kinds():
            lora = c.lora_rank if kind.endswith("lora") else 0
            for u, (name, team) in enumerate(teams.items()):
                FT.run(
                    self.run_dir(seed, kind, name),
                    self.start(kind, name),
                    self.net_cfg,
                    team.stream,
                    holdout_of(team),
                    lr=c.lora_lr if lora else c.lr,
                    seed=seed * 100 + u,
                    lora_rank=lora,
                    **common,
                )
        mean_start = self.bases("soup-full")["mean"]
        if c.multitask:  # the union of the fine-tune parts, then the union of the validation parts
            ft = np.concatenate([t.finetune for t in teams.values()])
            val = np.concatenate([t.validation for t in teams.values()])
            stream = np.concatenate([ft, val])
            FT.run(
                self.out / "finetunes" / f"seed-{seed}" / "multitask",
                mean_start,
                self.net_cfg,
                stream,
                (len(val) - 0.5) / len(stream),
                lr=c.lr,
                seed=seed * 100 + 99,
                **{**common, "batch_size": c.batch_size * len(teams), "val_windows": c.val_windows * len(teams)},
            )
        if c.sequential:
            state = mean_start
            for i, name in enumerate(self.order(seed)):
                d = self.out / "finetunes" / f"seed-{seed}" / "sequential" / f"{i}-{name}"
                rec = FT.run(
                    d,
                    state,
                    self.net_cfg,
                    teams[name].stream,
                    holdout_of(teams[name]),
                    lr=c.lr,
                    seed=seed * 100 + 50 + i,
                    **common,
                )
                state = FT.load_state(d, rec["best_step"])

    def order(self, seed: int) -> list[str]:
        """The sequential order: the teams rotated by the seed's index (so no team is always first)."""
        i = self.cfg.seeds.index(seed) % len(self.cfg.teams)
        return self.cfg.teams[i:] + self.cfg.teams[:i]

    def record(self, seed: int, kind: str, team: str) -> dict:
        return read_json(self.run_dir(seed, kind, team) / FT.RECORD, "fine-tuning record")

    def inputs(self, seed: int, kind: str, steps: list[int] | None = None, teams: dict | None = None) -> Inputs:
        """The teams' fine-tuned models of ``kind`` at ``steps`` (default: each one's best validation step)."""
        teams = teams or self.teams(seed)
        names = self.cfg.teams
        steps = steps or [self.record(seed, kind, t)["best_step"] for t in names]
        thetas = [FT.load_state(self.run_dir(seed, kind, t), s) for t, s in zip(names, steps)]
        ex = [
            eval_windows(teams[t].finetune, self.T, max(1, self.cfg.exemplar_tokens // self.T))[:, : self.T]
            for t in names
        ]
        return Inputs(self.net_cfg, thetas, self.bases(kind), ex, self.bank() if kind == "soup-full" else None, seed)


def holdout_of(team: Team) -> float:
    """The holdout share for which `finetune` cuts ``team.stream`` exactly at the validation part (int() of the
    cut rounds down, so half a token of margin)."""
    n = len(team.finetune) + len(team.validation)
    return (len(team.validation) - 0.5) / n


def estimate_hs(cfg: MergingConfig, out: Path, domains: list[str]) -> dict[str, torch.Tensor]:
    """Each team's h from its in-house sample (cached in teams.json: the embedder is the slow part)."""
    from soe.specialists.estimate import estimate_weights

    path = out / "teams.json"
    cached = read_json(path, "team estimates") if path.is_file() else {}
    for t in cfg.teams:
        if t not in cached:
            cached[t] = estimate_weights(
                cfg.data_dir, str(Path(cfg.data_dir) / "specialists" / t / "inhouse.jsonl")
            ).weights
    atomic_write_json(path, cached)
    return {t: parse_weights(cached[t], domains) for t in cfg.teams}
