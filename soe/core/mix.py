"""The full-rank bank's product θ = S + Eᵀα, as an autograd Function with a hand-written backward.

The soup (soup.py) instantiates the souped prefix of each parameter group through `Mix`; it lives apart because
its backward, not its forward, is the point: autograd's own backward of ``addmv`` builds ∂E as (P, n) and
transposes it (~3× slower on CPU), and a factored optimizer (soe/train/bank_update.py) wants the factors
(α, G) of ∂E rather than ∂E itself. Shapes: S (P,), E (n, P), α (n,) or (M, n), θ (P,) or (M, P).
"""

from __future__ import annotations

import torch


class Mix(torch.autograd.Function):
    """θ = S + Eᵀα with a hand-written backward: ∂S = g, ∂E = α ⊗ g written contiguously in E's
    (n, P) layout (autograd's addmv backward builds g ⊗ α as (P, n) and transposes it: ~3× slower
    on CPU), ∂α = E g.

    With M domain weights per step (alpha: (M, n)) it instantiates all M models in one GEMM,
    θ: (M, P), and the backward reads and writes the bank once for all of them: ∂S = Σ_m g_m,
    ∂E = αᵀ G, ∂α = G Eᵀ (M micro-batches of gradient accumulation would touch it M times).
    With a ``sink`` list (the factored bank update, soe/train/bank_update.py) ∂E is never built: the
    backward appends (α: (M, n), G: (M, P)) to it and leaves E.grad None."""

    @staticmethod
    def forward(ctx, S, E, alpha, sink=None):  # S: (P,), E: (n, P), alpha: (n,) or (M, n)
        ctx.save_for_backward(E, alpha)
        ctx.sink = sink
        return torch.addmv(S, E.t(), alpha) if alpha.ndim == 1 else torch.addmm(S, alpha, E)

    @staticmethod
    def backward(ctx, g):  # g: (P,) or (M, P)
        E, alpha = ctx.saved_tensors
        if ctx.sink is not None and ctx.needs_input_grad[1]:  # keep the factors, not their (n, P) product
            ctx.sink.append((alpha.reshape(-1, alpha.shape[-1]), g.reshape(-1, g.shape[-1])))
        gE = ctx.sink is None and ctx.needs_input_grad[1]
        if alpha.ndim == 1:
            gE = torch.outer(alpha, g) if gE else None
            ga = torch.mv(E, g) if ctx.needs_input_grad[2] else None
            return g, gE, ga, None
        gE = alpha.t() @ g if gE else None  # (n, M) @ (M, P)
        # (n, P) @ (P, M), transposed: on CPU 2.4× faster than g @ Eᵀ, whose GEMM splits its tiny output
        ga = (E @ g.t()).t() if ctx.needs_input_grad[2] else None
        return g.sum(0), gE, ga, None
