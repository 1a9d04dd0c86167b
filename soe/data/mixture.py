"""π (the meta-distribution over domain weights h) and mix(h) (sequences drawn from a mixture).

All randomness comes from a ``numpy.random.Generator`` passed in by the caller. The data module
builds one per training step from (seed, step index), so "the generator state" of a run is two
integers: resuming at step t re-creates exactly the generator that step t would have used,
whatever the data loader prefetched before the interruption.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soe.core.weights import check_h  # one validation rule for h everywhere

DOMAIN_SAMPLING = ("uniform", "prior")


@dataclass
class MixtureConfig:
    """π: how each training step draws its domain weights h."""

    fixed_h: list[float] | str | None = None
    """Fixed h for every step (baselines): None samples h from π; 'prior' uses the token-count
    histogram (the generic model's natural mixture); a list gives one weight per domain."""
    support_size: int = 2
    """s: how many domains a sampled h mixes (clipped to k; 0 means all k)."""
    random_support: bool = False
    """Draw each h's support size uniformly from {1, …, s} instead of always s (so that π covers
    one-hot, few-domain and many-domain h alike)."""
    concentration: float = 1.0
    """Dirichlet concentration of the weights on the chosen support (small → near one-hot)."""
    domain_sampling: str = "uniform"
    """How the support domains are chosen: 'uniform' over domains or by the 'prior' (token counts)."""
    full_support_prob: float = 0.0
    """Probability that a step instead draws h over all k domains (Dirichlet(concentration·k·prior))."""

    def __post_init__(self) -> None:
        if self.support_size < 0:
            raise ValueError(f"MixtureConfig.support_size={self.support_size} must be >= 0")
        if not self.concentration > 0:
            raise ValueError(f"MixtureConfig.concentration={self.concentration} must be > 0")
        if self.domain_sampling not in DOMAIN_SAMPLING:
            raise ValueError(
                f"MixtureConfig.domain_sampling={self.domain_sampling!r}; expected one of {DOMAIN_SAMPLING}"
            )
        if not 0.0 <= self.full_support_prob <= 1.0:
            raise ValueError(f"MixtureConfig.full_support_prob={self.full_support_prob} must lie in [0, 1]")
        if isinstance(self.fixed_h, str) and self.fixed_h != "prior":
            raise ValueError(f"MixtureConfig.fixed_h={self.fixed_h!r}; expected None, 'prior' or a list of weights")


class MetaDistribution:
    """π over the simplex of k domains. ``sample(rng)`` → h: (k,) float64 summing to 1."""

    def __init__(self, cfg: MixtureConfig, k: int, prior: np.ndarray):
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != (k,) or not np.isfinite(prior).all() or (prior < 0).any() or prior.sum() <= 0:
            raise ValueError(f"prior={prior.tolist()} must be {k} non-negative weights with a positive sum")
        self.cfg, self.k, self.prior = cfg, k, prior / prior.sum()
        self.fixed: np.ndarray | None = None
        if cfg.fixed_h == "prior":
            self.fixed = self.prior
        elif cfg.fixed_h is not None:
            check_h(list(cfg.fixed_h), k, "mixture.fixed_h")  # validation only: it normalises in float32
            self.fixed = np.asarray(cfg.fixed_h, dtype=np.float64) / float(np.sum(cfg.fixed_h))
        self.s = k if cfg.support_size in (0,) or cfg.support_size > k else cfg.support_size

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        if self.fixed is not None:
            return self.fixed.copy()
        c = self.cfg
        if c.full_support_prob > 0 and rng.random() < c.full_support_prob:
            return rng.dirichlet(np.maximum(c.concentration * self.k * self.prior, 1e-3))
        p = self.prior if c.domain_sampling == "prior" else None
        s = int(rng.integers(1, self.s + 1)) if c.random_support else self.s
        support = rng.choice(self.k, size=s, replace=False, p=p)
        h = np.zeros(self.k)
        h[support] = rng.dirichlet(np.full(s, c.concentration))
        return h


class MixtureSampler:
    """mix(h): each sequence picks domain i ~ Categorical(h), then a uniform random window of it."""

    def __init__(self, arrays: list[np.ndarray], seq_len: int, names: list[str] | None = None):
        names = names or [str(i) for i in range(len(arrays))]
        for name, a in zip(names, arrays):
            if len(a) < seq_len + 1:
                raise ValueError(f"domain {name!r} has {len(a)} tokens; a window needs seq_len+1={seq_len + 1}")
        self.arrays, self.seq_len, self.names = arrays, seq_len, names

    def sample(self, h: np.ndarray, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """→ tokens: (B, T+1) int64 (inputs are [:, :-1], targets [:, 1:]) and domains: (B,) int64."""
        p = np.asarray(h, dtype=np.float64)
        p = p / p.sum()  # h may come normalised in float32 (check_h): numpy's choice wants sum 1 to ~1e-8
        domains = rng.choice(len(self.arrays), size=batch_size, p=p)
        out = np.empty((batch_size, self.seq_len + 1), dtype=np.int64)
        offsets = np.arange(self.seq_len + 1)
        for d in np.unique(domains):
            rows = np.flatnonzero(domains == d)
            arr = self.arrays[d]
            starts = rng.integers(0, len(arr) - self.seq_len, size=len(rows))
            out[rows] = arr[starts[:, None] + offsets]  # one fancy-indexed read per domain
        return out, domains
