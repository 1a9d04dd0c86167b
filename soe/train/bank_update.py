"""The factored (rank-M) update of the expert bank: AdamW on ∂E = αᵀG without ever building ∂E.

With M domain weights per step (``data.h_per_step``) the bank's gradient is ∂E = αᵀG, α: (M, n) the
router's coefficients and G: (M, P) the gradient w.r.t. the M instantiated models' souped prefix. The dense
path writes it into a fresh (n, P) buffer every step, the clip reads it again and zero_grad frees it. Here
the soup's backward (``soe.core.mix.Mix``) hands (α, G) to ``SoupOfExperts.bank_grad_sink`` instead and
leaves E.grad None; `BankAdamW` then

- adds the bank's share to the global grad norm exactly from K×K Gram matrices (K = M times the backward
  passes since zero_grad, gradient accumulation concatenates them): ‖αᵀG‖² = Σ (ααᵀ) ∘ (GGᵀ);
- updates E, m and v in one pass over column chunks: the chunk's gradient αᵀG[:, a:b] (n × c) is written
  into a reused workspace, scaled by the clip coefficient, and handed with the chunk's rows of E, m, v to
  torch's fused AdamW kernel (decoupled decay, bias corrections), so the result equals torch.optim.AdamW on
  the materialised gradient up to float rounding, and its state (step, exp_avg, exp_avg_sq) is AdamW's own:
  checkpoints of both paths are interchangeable.

Low-rank experts (``soup.expert_rank``) are supported: their factors A, B are small ordinary parameters
(n·r·(out + in) per matrix) and keep their dense gradients; only the full-rank bank is factored. Under DDP a
``reducer`` (soe/train/bank_ddp.py `BankDDP`) averages G over ranks once per step, before the clip norm:
the factors, never ∂E, are what data parallelism sends.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_NUMEL = 1 << 20  # workspace per buffer (n × c numbers): 4 MB in fp32, cache-sized, never bank-sized
GRAM_BLOCK = 1 << 17  # columns per block of the Gram matrix


def gram(G: Tensor, block: int = GRAM_BLOCK) -> Tensor:
    """G Gᵀ for a short, very wide G: (K, P) → (K, K). On CPU one GEMM reducing over millions of columns runs at
    half of memory bandwidth (the library splits the work by output, and the output is K × K); accumulated over
    column blocks that stay in cache it reads G once at close to bandwidth (demo, K = 4: 16 → 8 ms, 2 threads)."""
    P = G.shape[-1]
    if G.device.type != "cpu" or P <= 2 * block:
        return G @ G.t()
    out = G.new_zeros(G.shape[0], G.shape[0])
    for c0 in range(0, P, block):
        out.addmm_(G[:, c0 : c0 + block], G[:, c0 : c0 + block].t())
    return out


class BankAdamW(torch.optim.AdamW):
    """torch.optim.AdamW whose full-rank bank parameters (``soup.bank``) are updated from (α, G)."""

    def __init__(self, params, soup, chunk_numel: int = CHUNK_NUMEL, **adamw_kwargs):
        super().__init__(params, **adamw_kwargs)
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
                raise ValueError(
                    "model.optim.bank_update=factored supports plain AdamW only "
                    "(no amsgrad, maximize, capturable or differentiable)"
                )
        self._bank: dict[str, Tensor] = dict(soup.bank.items())  # {group: E (n, P)}
        if any(E not in self._group_of() for E in self._bank.values()):
            raise ValueError("BankAdamW: every bank parameter of the soup must be in the optimizer")
        # {group: [(α (K, n), G (K, P)), ...]}: filled by the soup's backward. Lists are emptied in place,
        # never dropped: Lightning runs zero_grad between the forward (which picks the list) and the backward.
        self._pending: dict[str, list] = {}
        soup.bank_grad_sink = self._pending
        self._chunk = chunk_numel
        self._work: Tensor | None = None
        self._scale: Tensor | None = None  # clip coefficient of this step (norm clipping)
        self._clip_value: float | None = None  # value clipping of this step
        self.reducer = None  # BankDDP under DDP: (α, G) → factors of the ranks' mean αᵀG
        self._reduced: set[str] = set()  # groups whose factors this step were already reduced

    def _group_of(self) -> dict[Tensor, dict]:
        # looked up afresh: load_state_dict replaces the group dicts (and the scheduler sets lr in the new ones)
        return {p: group for group in self.param_groups for p in group["params"]}

    # ------------------------------------------------------------ gradients
    def _factors(self, g: str) -> tuple[Tensor, Tensor] | None:
        """(α: (K, n), G: (K, P)) of every backward since zero_grad, or None when there was none."""
        pairs = self._pending.get(g)
        if not pairs:
            return None
        if len(pairs) > 1:  # gradient accumulation: αᵀG summed over passes = one product over stacked rows
            pairs[:] = [(torch.cat([a for a, _ in pairs]), torch.cat([G for _, G in pairs]))]
        if self.reducer is not None and g not in self._reduced:  # once per step, whoever asks first
            pairs[:] = [self.reducer.reduce(*pairs[0])]
            self._reduced.add(g)
        return pairs[0]

    def _reset(self) -> None:
        for pairs in self._pending.values():
            pairs.clear()
        self._reduced.clear()
        self._scale, self._clip_value = None, None

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self._reset()

    @torch.no_grad()
    def bank_norms(self) -> list[Tensor]:
        """‖αᵀG‖ of each factored bank parameter, from K×K Grams (exact up to rounding)."""
        out = []
        for g in self._bank:
            f = self._factors(g)
            if f is not None:
                a, G = f
                sq = ((a @ a.t()) * gram(G).to(a.dtype)).sum()
                out.append(sq.clamp_min(0).sqrt())
        return out

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """torch.nn.utils.clip_grad_norm_ over all of this optimizer's parameters, the factored bank included
        (its scale is applied to G's chunks in `step`). Returns the total norm before clipping."""
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms = list(torch._foreach_norm(grads)) if grads else []  # one kernel for all, as clip_grad_norm_(foreach)
        if norms and hasattr(norms[0], "full_tensor"):  # FSDP2: DTensor norms of shards → one plain global norm
            norms = [torch.linalg.vector_norm(torch.stack(norms)).full_tensor()]
        norms += self.bank_norms()
        if not norms:
            return torch.tensor(0.0)
        total = torch.linalg.vector_norm(torch.stack(norms))
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # torch's formula, applied even when 1
        if grads:
            torch._foreach_mul_(grads, coef)
        self._scale = coef if self._scale is None else self._scale * coef
        return total

    @torch.no_grad()
    def clip_grad_value_(self, clip_value: float) -> None:
        """torch.nn.utils.clip_grad_value_ over all parameters, the factored bank's chunks in `step`."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.clamp_(-clip_value, clip_value)
        self._clip_value = clip_value

    # ------------------------------------------------------------ update
    def step(self, closure=None):
        """Run the closure (forward, backward, clipping under Lightning), AdamW on every parameter with a
        .grad (the bank has none), then the factored bank update; the factors are dropped afterwards."""
        loss = super().step(closure)
        with torch.no_grad():
            group_of = self._group_of()
            for g, E in self._bank.items():
                f = self._factors(g)
                if f is not None:
                    self._update_bank(E, f[0], f[1], group_of[E])
        self._reset()
        if self.reducer is not None:
            self.reducer.end_step()
        return loss

    def _update_bank(self, E: Tensor, alpha: Tensor, G: Tensor, group: dict) -> None:
        """`_update` on E, or, when the reducer shards E (FSDP2: soe/train/bank_fsdp.py `BankFSDP.update`),
        on this rank's rows of E, m and v (a DTensor's local shard) with the matching columns of α."""
        if self.reducer is not None and hasattr(self.reducer, "update"):
            self.reducer.update(self, E, alpha, G, group)
        else:
            self._update(E, alpha, G, group)

    def _workspace(self, numel: int, like: Tensor) -> Tensor:
        if (
            self._work is None
            or self._work.numel() < numel
            or self._work.dtype != like.dtype
            or self._work.device != like.device
        ):
            self._work = torch.empty(numel, dtype=like.dtype, device=like.device)
        return self._work

    def _update(self, E: Tensor, alpha: Tensor, G: Tensor, group: dict) -> None:
        """AdamW on E (n, P) with gradient αᵀG, α: (K, n), G: (K, P), one pass over column chunks.

        Each chunk's gradient (n × c) is one small GEMM into the reused workspace, then torch's fused AdamW
        kernel updates the chunk's rows of E, m and v in a single read-modify-write (the rows E[j, a:b] are
        contiguous). An update op by op (mul, lerp, addcmul, sqrt, div, addcdiv) streamed E, m, v ~10 times:
        3.8× slower on the demo bank."""
        state = self.state[E]
        if not state:  # AdamW's own lazy state, so state_dict/load_state_dict need nothing new
            state["step"] = (
                torch.zeros((), dtype=torch.float32, device=E.device)
                if group["fused"]
                else torch.tensor(0.0, dtype=torch.float32)
            )
            state["exp_avg"] = torch.zeros_like(E, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(E, memory_format=torch.preserve_format)
        state["step"] += 1
        step = state["step"] if state["step"].device == E.device else state["step"].to(E.device)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        a_t = alpha.t().to(E.dtype)  # (n, K)
        G, cv = G.to(E.dtype), self._clip_value
        n, P = E.shape
        c = max(1, min(P, self._chunk // n))
        work = self._workspace(n * c, E)
        kw = dict(
            lr=float(group["lr"]),
            beta1=float(group["betas"][0]),
            beta2=float(group["betas"][1]),
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            amsgrad=False,
            maximize=False,
        )
        for a0 in range(0, P, c):
            w = min(c, P - a0)
            grad = work[: n * w].view(n, w)
            torch.mm(a_t, G[:, a0 : a0 + w], out=grad)  # this chunk of αᵀG: (n, w)
            if self._scale is not None:
                grad.mul_(self._scale)
            if cv is not None:
                grad.clamp_(-cv, cv)
            e, mc, vc = (t[:, a0 : a0 + w].unbind(0) for t in (E, m, v))  # n contiguous rows each
            torch._fused_adamw_(e, grad.unbind(0), mc, vc, [], [step] * n, **kw)
