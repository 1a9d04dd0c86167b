"""``semantic``: data-free, layer-wise merge coefficients — our approximation in the spirit of SeMe (Gu et al. 2025).

No published algorithm of SeMe could be read in a form we could implement, so this is ours, stated plainly:

1. Probes without data: anchor hidden states a_v = W⁺ e_v, the pseudo-inverse of the LM head W (V × d) applied to
   one-hot logits, for a fixed seeded sample of vocabulary tokens v — the residual-stream vectors the head decodes
   as those tokens. They are arranged as ``probe_batch`` sequences of ``probe_len`` anchors.
2. Per block ℓ and model u: run the anchors through block ℓ of the base and of θ_u, decode both outputs with the
   *base's* final norm and head (one semantic space for everyone), and score the block's semantic change
   s_uℓ = mean KL(base ‖ θ_u) over the probe positions.
3. Per block, coefficients c_uℓ = w_u s_uℓ / Σ_v w_v s_vℓ; the block's tensors become base + λ Σ_u c_uℓ τ_u.
   A model that changed what a layer *means* more gets more of that layer. Tensors outside the blocks
   (embedding, final norm) use the weighted mean of the task vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from soe.core.model import LlamaLM, rotary_tables


def anchors(net: LlamaLM, n: int, seed: int) -> torch.Tensor:
    """(n, d) hidden states the head decodes as n seeded vocabulary tokens: rows of pinv(W)ᵀ (the least-squares
    solution of W a = e_v; with V > d the decoded logits are e_v projected on W's column space)."""
    w = (net.model.embed_tokens.weight if net.lm_head is None else net.lm_head.weight).detach().double()  # (V, d)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(w.shape[0], (n,), generator=g)  # with replacement: n may exceed the vocabulary
    return torch.linalg.pinv(w)[:, ids].T.float()  # (n, d)


@torch.no_grad()
def semantic_scores(
    base: LlamaLM, models: list[LlamaLM], probe_len: int = 32, probe_batch: int = 8, seed: int = 0
) -> torch.Tensor:
    """s: (m, L) semantic change of each model's blocks on the base's anchors (module docstring)."""
    T = min(probe_len, base.cfg.max_seq_len)
    x = anchors(base, T * probe_batch, seed).reshape(probe_batch, T, -1)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * (base.cfg.d_model**0.5)  # RMS 1, like a residual
    cos, sin = rotary_tables(T, base.cfg.head_dim, base.cfg.rope_theta, x.device, x.dtype)
    w = base.model.embed_tokens.weight if base.lm_head is None else base.lm_head.weight

    def decode(h):
        return F.log_softmax(F.linear(base.model.norm(h), w), dim=-1)

    scores = torch.zeros(len(models), base.cfg.n_layer)
    for ell, block in enumerate(base.model.layers):
        ref = decode(block(x, cos, sin))
        for u, m in enumerate(models):
            out = decode(m.model.layers[ell](x, cos, sin))
            scores[u, ell] = F.kl_div(out, ref, log_target=True, reduction="none").sum(-1).mean()
    return scores


def layer_coefficients(scores: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """c: (m, L), each layer's coefficients summing to 1; a layer no model changed gets the plain weights."""
    w = torch.tensor(weights, dtype=torch.float32)[:, None]
    s = w * scores
    total = s.sum(0, keepdim=True)
    plain = (w / w.sum()).expand_as(s)
    return torch.where(total > 1e-12, s / total.clamp_min(1e-12), plain)


def block_index(name: str) -> int | None:
    """``model.layers.3.mlp.up_proj.weight`` -> 3; None outside the blocks."""
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[:2] == ["model", "layers"] else None
