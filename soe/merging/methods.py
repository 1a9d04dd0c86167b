"""Per-tensor merge rules: linear, task arithmetic, TIES, DARE (mergekit's conventions and defaults).

Notation (docs/merging.md): specialist u ends at θ_u = base + τ_u; w_u is its weight; λ scales the merged
task vector. Every function takes one tensor name's values: ``base`` (shape S) and ``thetas`` (a list of m
tensors of shape S) and returns the merged tensor (shape S, float32; the caller casts to the output dtype).

mergekit compatibility (so that a mergekit config means the same here):
- ``linear``: Σ w_u θ_u / Σ w_u (``normalize: false`` drops the division).
- ``task_arithmetic``: base + λ Σ w_u τ_u (not normalised by default).
- ``ties``: trim each τ_u to its top ``density`` share by magnitude, elect a sign per entry from the sum of the
  weighted kept values, average the kept weighted entries that agree with it (the "disjoint mean": dividing by
  the weights of the entries that agree; normalised by default), base + λ · that.
- ``dare_linear`` / ``dare_ties``: drop entries of τ_u with probability 1 − density, rescale the survivors,
  then task arithmetic / TIES (neither normalised by default). mergekit rescales to keep each τ_u's L1 norm
  (``rescale: l1``, its default); the DARE paper rescales by 1 / density, which keeps the expected sum
  (``rescale: inverse``).
"""

from __future__ import annotations

import zlib

import torch

RESCALES = ("l1", "inverse", "none")


def trim_topk(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep exactly ``int(density · numel)`` entries of largest magnitude (at least one), zero the rest."""
    if density >= 1:
        return tau
    k = max(int(density * tau.numel()), 1)
    flat = tau.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(k, sorted=False).indices] = True
    return (flat * keep).reshape(tau.shape)


def trim_threshold(tau: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep the entries with |τ| ≥ threshold (TIES over the whole model: the threshold is the model's)."""
    return tau * (tau.abs() >= threshold)


def model_threshold(magnitudes: torch.Tensor, density: float) -> float:
    """The magnitude above which a model keeps its top ``density`` share; ``magnitudes``: (P,) all |τ| entries."""
    if density >= 1:
        return 0.0
    k = max(int(density * magnitudes.numel()), 1)
    return float(magnitudes.float().topk(k, sorted=False).values.min())


def tensor_seed(seed: int, name: str, u: int) -> int:
    """A DARE mask seed per (seed, tensor, model): reproducible whatever order tensors are merged in."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 31 + u) % (2**63)


def dare_drop(tau: torch.Tensor, density: float, generator: torch.Generator, rescale: str = "l1") -> torch.Tensor:
    """Keep each entry with probability ``density``, then rescale the survivors (see module docstring)."""
    if rescale not in RESCALES:
        raise ValueError(f"rescale {rescale!r}: expected one of {', '.join(RESCALES)}")
    if density >= 1:
        return tau
    keep = torch.rand(tau.shape, generator=generator) < density
    kept = tau * keep
    if rescale == "inverse":
        return kept / density
    if rescale == "l1":
        before, after = tau.abs().sum(), kept.abs().sum()
        return kept * (before / after) if after > 1e-12 and before > 1e-12 else kept
    return kept


def elect_sign(weighted: torch.Tensor) -> torch.Tensor:
    """Per entry, +1 or −1: the sign of the sum of the weighted (kept) task vectors; weighted: (m, *S)."""
    return torch.where(weighted.sum(0) >= 0, 1.0, -1.0)


def combine(
    base: torch.Tensor,
    taus: list[torch.Tensor],
    weights: list[float],
    lam: float = 1.0,
    consensus: bool = False,
    normalize: bool = False,
) -> torch.Tensor:
    """base + λ · mix(w_u τ_u): a plain (optionally normalised) sum, or TIES's disjoint mean with ``consensus``."""
    if not consensus:  # accumulate in place: no (m, *S) stack, a third of the memory traffic
        mixed = torch.zeros(base.shape, dtype=torch.float32)
        for w, t in zip(weights, taus):
            mixed.add_(t.float(), alpha=w)
        if normalize and abs(sum(weights)) >= 1e-8:
            mixed /= sum(weights)
        return mixed.mul_(lam).add_(base.float())
    t = torch.stack([x.float() for x in taus])  # (m, *S)
    w = torch.tensor(weights, dtype=torch.float32).reshape(-1, *([1] * base.ndim))
    wt = t * w
    agree = (torch.sign(wt) == elect_sign(wt)).float()  # trimmed (zero) entries never agree
    mixed, divisor = (wt * agree).sum(0), (w * agree).sum(0)
    if normalize:
        mixed = mixed / torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
    return base.float() + lam * mixed


def linear(thetas: list[torch.Tensor], weights: list[float], normalize: bool = True) -> torch.Tensor:
    out = torch.zeros(thetas[0].shape, dtype=torch.float32)
    for w, t in zip(weights, thetas):
        out.add_(t.float(), alpha=w)
    return out / sum(weights) if normalize else out
