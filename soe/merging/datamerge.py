"""Data-aware merge rules from a few unlabelled exemplars per model: RegMean, LOT and CAT.

Shapes: a linear weight W is (d_out, d_in) as torch stores it (y = x Wᵀ); its task vector τ = W − W_base;
T = τᵀ (d_in, d_out) is the papers' orientation; G_k = X_kᵀ X_k (d_in, d_in) the Gram matrix of the layer's
inputs on model k's exemplars (soe/merging/features.py); an RMSNorm gain has energy e_k (d,) per dimension.

- RegMean (Jin et al., 2023): W* minimises Σ_k ‖X_k W*ᵀ − X_k W_kᵀ‖² with each G_k's off-diagonal shrunk by α:
  W*ᵀ = (Σ G̃_k)⁻¹ Σ G̃_k W_kᵀ, G̃ = α G + (1 − α) diag(G).
- LOT (Sun et al., 2025): the same least squares on task vectors, with a small ridge instead of shrinkage:
  T* = (Σ G_k + ρ I)⁺ Σ G_k T_k, W* = W_base + λ T*ᵀ; a gain: the energy-weighted mean of the τ_k per dimension.
- CAT (Sun et al., ICML 2025): before task arithmetic, remove from each T_i what moves the *other* tasks'
  features: for task k, B_k = the top-c eigenvectors (positive eigenvalues only) of
  Σ_{i≠k} T_iᵀ (G_k − λ_c G_i) T_i (d_out, d_out); every T_i (i ≠ k) loses T_i B_k B_kᵀ. A gain: per dimension
  score Σ_{k≠i} τ_i² (e_k − λ_c e_i) and zero the ``norm_share`` of dimensions with the highest positive scores.

Our choices (documented in docs/merging.md): X_k are the inputs of the fine-tuned model θ_k on its own
exemplars (RegMean's convention; CAT's paper runs base + s·τ_k); tensors that are not a linear layer's or a
gain (the tied token embedding) fall back to the weighted mean of the task vectors.
"""

from __future__ import annotations

import torch


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a⁺ b for symmetric positive semi-definite a (pseudo-inverse through lstsq for rank-deficient a)."""
    return torch.linalg.lstsq(a, b, driver="gelsd").solution if a.device.type == "cpu" else torch.linalg.pinv(a) @ b


def regmean(weights: list[torch.Tensor], grams: list[torch.Tensor], alpha: float = 0.9) -> torch.Tensor:
    """RegMean's merged linear weight (d_out, d_in) from the models' weights and input Gram matrices."""
    shrunk = [alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g)) for g in grams]
    lhs = sum(shrunk)
    rhs = sum(g @ w.double().T for g, w in zip(shrunk, weights))
    return _solve(lhs, rhs).T.float()


def lot_linear(
    base: torch.Tensor, taus: list[torch.Tensor], grams: list[torch.Tensor], lam: float = 1.0, ridge: float = 1e-6
) -> torch.Tensor:
    """LOT's merged linear weight: base + λ (Σ G_k + ρ I)⁺ Σ G_k T_k, transposed back; ρ relative to mean diag."""
    lhs = sum(grams)
    lhs = lhs + ridge * torch.diagonal(lhs).mean().clamp_min(1e-12) * torch.eye(lhs.shape[0], dtype=lhs.dtype)
    rhs = sum(g @ t.double().T for g, t in zip(grams, taus))
    return base.float() + lam * _solve(lhs, rhs).T.float()


def lot_gain(
    base: torch.Tensor, taus: list[torch.Tensor], energies: list[torch.Tensor], lam: float = 1.0
) -> torch.Tensor:
    """Per dimension, the energy-weighted mean of the gains' task vectors (the closed form of the drift)."""
    e = torch.stack([x.double() for x in energies])  # (m, d)
    t = torch.stack([x.double() for x in taus])
    return base.float() + lam * ((e * t).sum(0) / e.sum(0).clamp_min(1e-12)).float()


def cat_linear(
    taus: list[torch.Tensor], grams: list[torch.Tensor], rank: int, conflict_lambda: float = 1.0
) -> list[torch.Tensor]:
    """CAT's trimmed task vectors of one linear layer (each (d_out, d_in), like the inputs)."""
    T = [t.double().T for t in taus]  # (d_in, d_out)
    m = len(T)
    bases = []
    for k in range(m):  # every B_k from the untrimmed task vectors
        mat = sum(T[i].T @ (grams[k] - conflict_lambda * grams[i]) @ T[i] for i in range(m) if i != k)
        vals, vecs = torch.linalg.eigh((mat + mat.T) / 2)  # ascending order
        top = torch.argsort(vals, descending=True)[:rank]
        bases.append(vecs[:, top[vals[top] > 0]])  # (d_out, ≤ c): only directions that do conflict
    out = []
    for i in range(m):
        Ti = T[i]
        for k in range(m):
            if k != i and bases[k].shape[1]:
                Ti = Ti - Ti @ bases[k] @ bases[k].T
        out.append(Ti.T.float())
    return out


def cat_gain(
    taus: list[torch.Tensor], energies: list[torch.Tensor], norm_share: float = 0.1, conflict_lambda: float = 1.0
) -> list[torch.Tensor]:
    """CAT's masked gain task vectors: zero each one's dimensions that move the other tasks' features most."""
    out = []
    d = taus[0].numel()
    n_zero = int(norm_share * d)
    for i, t in enumerate(taus):
        score = sum(
            t.double().pow(2) * (energies[k] - conflict_lambda * energies[i]) for k in range(len(taus)) if k != i
        )
        if n_zero == 0 or not torch.is_tensor(score):
            out.append(t.float())
            continue
        top = torch.argsort(score, descending=True)[:n_zero]
        top = top[score[top] > 0]
        kept = t.float().clone()
        kept[top] = 0
        out.append(kept)
    return out
