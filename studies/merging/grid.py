"""Merge candidates (method × base × grid point), merged in memory by `soe merge`'s own rules, and scored.

Bases (docs/merging.md, "What a soup adds"): ``mean`` = Θ(h̄), h̄ the mean of the teams' h; ``alpha-mean`` =
S + Σ_j ᾱ_j E_j, ᾱ the mean of the α(h_u) (exactly the linear merge of the starting points); ``generic`` = the
generic model (the control runs' common start); ``none`` for the methods that need no base (``linear``: plain
averaging of the θ_u, ``regmean``). ``+proj``: bank projection on the α-mean base (task vectors' in-span parts
merged in α-space). Every merge goes through `soe.merging.merge.merge_tensors`, the rule `soe merge` applies
tensor by tensor, so a choice made here is a config a user can run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from soe.core.model import LlamaLM, ModelConfig
from soe.merging import semantic as S
from soe.merging.config import DATA_METHODS, PROJECTABLE, parse_config
from soe.merging.features import Features, collect
from soe.merging.merge import merge_tensors

NO_BASE = ("linear", "regmean")


@dataclass(frozen=True)
class Candidate:
    method: str
    base: str
    params: str
    """The grid point's merge parameters as sorted JSON (hashable)."""
    projection: bool = False

    @property
    def label(self) -> str:
        return f"{self.method}/{self.base}{'+proj' if self.projection else ''}"

    @property
    def key(self) -> str:
        return f"{self.label} {self.params}"

    @property
    def point(self) -> dict:
        return json.loads(self.params)


def candidates(grids: dict[str, list[dict]], bases: list[str], projection_base: str | None = None) -> list[Candidate]:
    """Every (method, base, grid point), and the projected variants of the projectable methods."""
    out = []
    for method, grid in grids.items():
        points = [json.dumps(p, sort_keys=True) for p in grid]
        for b in ["none"] if method in NO_BASE else bases:
            out += [Candidate(method, b, p) for p in points]
        if projection_base is not None and method in PROJECTABLE:
            out += [Candidate(method, projection_base, p, True) for p in points]
    return out


def merge_config(c: Candidate, m: int, seed: int = 0):
    """The `soe merge` config of a candidate over m equally weighted models (validated by its parser); ``seed``:
    DARE's masks and the semantic probes."""
    point = c.point
    density = point.pop("density", 1.0)
    params = {**point, "seed": point.get("seed", seed)}
    if c.projection:
        params["bank_projection"] = True
    base = None if c.base == "none" else ({"soup": "in-memory", "h": c.base} if c.projection else "in-memory")
    models = [
        {"model": f"team-{u}", "parameters": {"weight": 1.0, "density": density, "exemplars": "in-memory"}}
        for u in range(m)
    ]
    return parse_config(
        {"merge_method": c.method, "base_model": base, "models": models, "parameters": params}, f"candidate {c.key}"
    )


class Inputs:
    """One set of fine-tuned models to merge, with what every candidate over them needs, computed once."""

    def __init__(
        self,
        net_cfg: ModelConfig,
        thetas: list[dict[str, torch.Tensor]],
        bases: dict[str, dict],
        exemplars: list[torch.Tensor],
        bank: dict[str, torch.Tensor] | None = None,
        seed: int = 0,
    ):
        self.net_cfg, self.thetas, self.bases, self.exemplars, self.bank = net_cfg, thetas, bases, exemplars, bank
        self.seed = seed
        self._feats: list[Features] | None = None
        self._coeffs: dict[str, torch.Tensor] = {}

    def net(self, state: dict[str, torch.Tensor]) -> LlamaLM:
        net = LlamaLM(self.net_cfg)
        net.load_state_dict(state, strict=True)
        return net.eval()

    def feats(self) -> list[Features]:
        """Each model's layer-input statistics on its own team's exemplars (RegMean's convention)."""
        if self._feats is None:
            self._feats = [collect(self.net(t), w) for t, w in zip(self.thetas, self.exemplars)]
        return self._feats

    def coeffs(self, base: str, seed: int) -> torch.Tensor:
        if base not in self._coeffs:
            scores = S.semantic_scores(self.net(self.bases[base]), [self.net(t) for t in self.thetas], seed=seed)
            self._coeffs[base] = S.layer_coefficients(scores, [1.0] * len(self.thetas))
        return self._coeffs[base]

    def merge(self, c: Candidate) -> tuple[dict[str, torch.Tensor], float]:
        """(merged state dict, seconds); the data-aware and semantic statistics are computed once per Inputs
        and their time is not counted (the report gives them apart)."""
        cfg = merge_config(c, len(self.thetas), self.seed)
        feats = self.feats() if c.method in DATA_METHODS else None
        coeffs = self.coeffs(c.base, int(cfg.parameters["seed"])) if c.method == "semantic" else None
        base = None if c.base == "none" else self.bases[c.base]
        t0 = time.perf_counter()
        out = merge_tensors(cfg, base, self.thetas, feats, self.bank if c.projection else None, coeffs)
        return out, time.perf_counter() - t0


class Scorer:
    """Per-window losses of a state dict on fixed windows per team (one reusable model)."""

    def __init__(self, net_cfg: ModelConfig, windows: dict[str, torch.Tensor]):
        self.net, self.windows = LlamaLM(net_cfg).eval(), windows

    def windows_losses(self, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        from soe.specialists.evaluate import window_losses

        self.net.load_state_dict(state, strict=True)
        return {t: window_losses(self.net, w) for t, w in self.windows.items()}

    def losses(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        return {t: float(v.mean()) for t, v in self.windows_losses(state).items()}


@torch.no_grad()
def ensemble_losses(nets: list[LlamaLM], wins: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """Per-window loss of the output-space ensemble: −log of the mean of the models' next-token probabilities."""
    out = []
    for i in range(0, len(wins), batch_size):
        b = wins[i : i + batch_size]
        logp = torch.stack([F.log_softmax(n.eval()(b[:, :-1]).float(), -1) for n in nets])  # (m, B, T, V)
        mix = torch.logsumexp(logp, 0) - np.log(len(nets))
        nll = -mix.gather(-1, b[:, 1:, None]).squeeze(-1)  # (B, T)
        out.append(nll.mean(1).double())
    return torch.cat(out).numpy()


def mean_score(losses: dict[str, float]) -> float:
    """The selection criterion: the teams' mean validation loss, every team weighted equally."""
    return float(np.mean(list(losses.values())))
