"""Bank-aware data parallelism for the factored bank update (``model.optim.bank_update: factored`` under DDP).

Dense DDP all-reduces every gradient, the bank's ∂E (n × P) included: (n + 1)·P numbers per step for the
souped tensors. With the factored update ∂E = αᵀG never exists and need not travel: α (K, n) is a function of
φ (kept identical by DDP) and h, which is one pure function of (seed, step) on every rank under
``data.rank_h: shared``, so α is the same everywhere and the average of the ranks' ∂E is αᵀ·mean_r(G_r).
Per step and bank group this sends K·P numbers (G) plus a 2·K·n check of α instead of n·P.

- The bank parameters (and the constant ``prior_h`` buffer) are excluded from DDP's reducer by
  ``SoupModule._ddp_params_and_buffers_to_ignore``: they get no .grad, so the reducer must not wait for them.
- ∂S, ∂φ and low-rank factors go through DDP's reducer as usual; a comm hook counts their bucket bytes.
- `BankDDP.reduce` (called by `BankAdamW` once per optimizer step, before the clip norm) checks that α is
  identical on all ranks (one MAX all-reduce of [α, -α]: max == -max(-α) = min) and all-reduces G (mean).
  If α differs (``data.rank_h: per_rank``) it all-gathers (α, G/W) instead: the stacked product
  Σ_r α_rᵀG_r / W is still the exact averaged ∂E, at W·K·P numbers per rank (warned once).

``last_step_bytes`` is what this rank handed to collectives in the last optimizer step (tensor bytes, not
wire bytes: a ring all-reduce moves ≈ 2·(W-1)/W of it per rank); `step_bytes` gives the expected count.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel


def ignored_names(soup_prefix: str, soup) -> list[str]:
    """Names DDP must leave alone with the factored update: the bank (no .grad ever) and prior_h (constant,
    so no per-forward buffer broadcast)."""
    return [f"{soup_prefix}bank.{g}" for g in soup.bank] + ["prior_h"]


def step_bytes(soup, M: int, world: int = 2, elem: int = 4) -> int:
    """Bytes one rank hands to collectives per optimizer step when α is shared: every non-bank parameter's
    gradient (DDP buckets: S, φ, low-rank factors) + per bank group, G (M × P_g) and the α check (2 × M × n)."""
    if world == 1:
        return 0
    bank = set(map(id, soup.bank.values()))
    other = sum(p.numel() for p in soup.parameters() if p.requires_grad and id(p) not in bank)
    return elem * (other + sum(M * E.shape[1] + 2 * M * soup.n for E in soup.bank.values()))


class BankDDP:
    """The factors' reduction and a byte counter of every collective of a training step (DDP's included)."""

    def __init__(self, group=None):
        self.group = group
        self.world = dist.get_world_size(group)
        self.bytes = 0  # handed to collectives since the last optimizer step
        self.last_step_bytes = 0  # … in the last optimizer step
        self.total_bytes = 0
        self.steps = 0
        self.gathered = 0  # reductions that fell back to all-gather (α differed across ranks)

    @classmethod
    def attach(cls, ddp: DistributedDataParallel, soup, soup_prefix: str = "soup.") -> "BankDDP":
        """Check DDP ignores the bank, sync the bank from rank 0 (DDP's own start-up broadcast skips ignored
        parameters) and count DDP's buckets with a comm hook (all-reduce mean, as DDP's default)."""
        missing = [nm for nm in ignored_names(soup_prefix, soup) if nm not in ddp.parameters_to_ignore]
        if missing:
            raise ValueError(
                f"DDP reduces {missing}: the factored bank update needs them in the module's "
                "_ddp_params_and_buffers_to_ignore (set by SoupModule) before DDP wraps it"
            )
        self = cls(ddp.process_group)
        with torch.no_grad():
            for E in soup.bank.values():
                dist.broadcast(E.data, src=dist.get_global_rank(self.group, 0), group=self.group)
        try:
            ddp.register_comm_hook(self, BankDDP._hook)
        except RuntimeError as e:  # a hook given to the strategy (ddp_comm_hook) was registered first
            raise ValueError(
                "model.optim.bank_update=factored registers its own DDP comm hook (to count "
                f"bytes); drop the strategy's ddp_comm_hook ({e})"
            ) from e
        return self

    @staticmethod
    def _hook(self, bucket):  # no annotations: DDP checks them literally (bucket: GradBucket → Future)
        buf = bucket.buffer()
        self.bytes += buf.numel() * buf.element_size()
        return default_hooks.allreduce_hook(self.group, bucket)

    @torch.no_grad()
    def reduce(self, alpha: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
        """(α (K, n), G (K, P)) of this rank → factors whose product is the ranks' mean αᵀG."""
        if self.world == 1:
            return alpha, G
        a = alpha.reshape(-1)
        both = torch.cat([a, -a])  # (2·K·n,): one MAX gives max and -min of every entry
        self._all_reduce(both, dist.ReduceOp.MAX)
        if torch.equal(both[: a.numel()], -both[a.numel() :]):  # same on every rank: all take this branch
            G = G.contiguous()  # G may be a strided view of θ's gradient (M > 1); the collective needs it dense
            self._all_reduce(G, dist.ReduceOp.SUM)
            return alpha, G.div_(self.world)
        if not self.gathered:
            warnings.warn(
                "BankDDP: α differs across ranks (data.rank_h=per_rank?): the bank's factors are "
                f"all-gathered ({self.world}×{G.shape[0]} rows of {G.shape[1]}) instead of all-reduced"
            )
        self.gathered += 1
        return self._gather(alpha.contiguous()), self._gather(G.contiguous()).div_(self.world)

    def _all_reduce(self, t: Tensor, op) -> None:
        self.bytes += t.numel() * t.element_size()
        dist.all_reduce(t, op=op, group=self.group)

    def _gather(self, t: Tensor) -> Tensor:  # (K, ·) per rank → (W·K, ·), ranks in order
        self.bytes += t.numel() * t.element_size()
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t, group=self.group)
        return torch.cat(parts)

    def end_step(self) -> None:
        """Called by BankAdamW after each optimizer step."""
        self.last_step_bytes, self.bytes = self.bytes, 0
        self.total_bytes += self.last_step_bytes
        self.steps += 1
