"""Scoring one trained soup against its generic model on the prepared data's validation targets.

The targets (``targets:`` in the data_prep config; data_dir/targets) are whole documents of each pretraining
source that never entered a training shard, split into a small in-house part and a validation part. `score` gives
the numbers of one row of the search table (studies/experiments/search.py, whose docstring lists them): per
target, h estimated from its in-house part (`target_weights`) and SoE − generic on the same windows of its
validation part with a paired interval; their mean with `mean_interval`; the soup at the prior and at one-hot h on
the pretraining domains; and φ's `nonlinearity`. Apart from search.py, which plans, trains and writes the rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from soe.core.weights import parse_weights
from soe.data.shards import load_meta, open_shard
from soe.data.windows import eval_windows
from soe.specialists.estimate import estimate_weights
from soe.specialists.evaluate import paired_interval, window_losses
from soe.train.checkpoint import load_checkpoint
from studies.experiments.config import ExperimentConfig


def targets_of(data_dir: Path) -> tuple[Path, object]:
    """The validation targets' directory and meta.json of a prepared directory (refused when it has none)."""
    tdir = data_dir / "targets"
    if not (tdir / "meta.json").is_file():
        raise FileNotFoundError(
            f"{data_dir} has no validation targets ({tdir}/meta.json); prepare the data with a "
            "`targets:` section (e.g. data_prep/configs/demo-small.yaml)"
        )
    return tdir, load_meta(tdir)


def target_weights(data_dir: Path, temperature: float | None = None) -> dict[str, dict[str, float]]:
    """h of every validation target, estimated from its in-house part (the data alone decides it): the
    nearest-centroid histogram, or the soft one at ``temperature``."""
    tdir, tmeta = targets_of(data_dir)
    return {
        t: estimate_weights(data_dir, str(tdir / t / "inhouse.jsonl"), temperature=temperature).weights
        for t in tmeta.domains
    }


def mean_interval(deltas: list[np.ndarray], n_boot: int, seed: int) -> tuple[float, float]:
    """95 % interval of the mean over targets of each target's mean window Δ, resampling windows within
    every target (the targets themselves are the fixed population we choose on)."""
    rng = np.random.default_rng(seed)
    boots = np.zeros(n_boot)
    for d in deltas:
        boots += d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    boots /= len(deltas)
    return float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


@torch.no_grad()
def nonlinearity(soup, hs: list[torch.Tensor]) -> float:
    """Mean over h of ‖Θ(h) − Σ_i h_i Θ(e_i)‖ / ‖Θ(h) − S‖ (0 when φ is affine in h)."""
    if not soup.n:
        return 0.0
    cat = lambda flat: torch.cat([flat[g] for g in sorted(flat)], dim=-1)
    S = cat(dict(soup.shared.items()))
    onehot = cat(soup.flat(torch.eye(soup.k)))  # (k, P): Θ(e_i)
    out = []
    for h in hs:
        theta = cat(soup.flat(h))
        out.append(float((theta - h @ onehot).norm() / (theta - S).norm().clamp_min(1e-12)))
    return float(np.mean(out))


def score(cfg: ExperimentConfig, soe_ckpt: str, generic_ckpt: str, weights: dict[str, dict[str, float]]) -> dict:
    """The row's numbers for one trained soup against its generic model (see the module docstring)."""
    data_dir = Path(cfg.data_dir)
    meta = load_meta(data_dir)
    domains = list(meta.domains)
    tdir, tmeta = targets_of(data_dir)
    soup = load_checkpoint(soe_ckpt)[0]
    generic = load_checkpoint(generic_ckpt)[0].specialist(None)
    T = soup.net_cfg.max_seq_len
    targets, deltas, hs = {}, [], []
    for t in tmeta.domains:
        h = parse_weights(weights[t], domains)
        wins = eval_windows(open_shard(tdir, tmeta, t, "val"), T, cfg.eval_windows)
        g, e = window_losses(generic, wins), window_losses(soup.specialist(h), wins)
        lo, hi = paired_interval(e, g, cfg.bootstrap, seed=cfg.seed)
        targets[t] = {
            "generic": float(g.mean()),
            "soe": float(e.mean()),
            "delta": float((e - g).mean()),
            "ci": [lo, hi],
            "windows": len(g),
        }
        deltas.append(e - g)
        hs.append(h)
    prior = parse_weights("prior", domains, meta.prior("train"))
    at_prior = soup.specialist(prior)
    dom = {}
    for i, d in enumerate(domains):
        wins = eval_windows(open_shard(data_dir, meta, d, "val"), T, cfg.eval_windows)
        g = float(window_losses(generic, wins).mean())
        dom[d] = {
            "generic": g,
            "onehot": float(window_losses(soup.specialist(parse_weights(d, domains)), wins).mean()),
            "prior": float(window_losses(at_prior, wins).mean()),
        }
    mix = sum(float(prior[i]) * (dom[d]["prior"] - dom[d]["generic"]) for i, d in enumerate(domains))
    return {
        "targets": targets,
        "domains": dom,
        "won": sum(v["ci"][1] < 0 for v in targets.values()),
        "lost": sum(v["ci"][0] > 0 for v in targets.values()),
        "mean_delta": float(np.mean([v["delta"] for v in targets.values()])),
        "mean_ci": mean_interval(deltas, cfg.bootstrap, cfg.seed),
        "prior_mixture_delta": mix,
        "onehot_won": sum(v["onehot"] < v["generic"] for v in dom.values()),
        "n_domains": len(dom),
        "nonlinearity": nonlinearity(soup, hs),
    }
