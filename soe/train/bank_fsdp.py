"""Bank-aware FSDP2 for the factored bank update (``model.optim.bank_update: factored`` under
ModelParallelStrategy, ``fully_shard(soup)`` in ``SoupModule.configure_model``).

FSDP2 shards every flat buffer along dim 0, so rank r holds rows R_r of the bank E (n, P) (≈ n/W experts,
torch.chunk's split) and the same rows of AdamW's m and v (DTensors, so distributed checkpoints save and load
them like the dense run's). Its forward all-gathers E; the soup's backward then hands (α, G) to `BankAdamW`
and builds no ∂E, so FSDP2's reduce-scatter (which skips parameters whose gradient is None) carries only S's,
φ's and the low-rank factors' gradients. The bank's reduction is `BankDDP.reduce`, inherited: α is identical
on every rank under ``data.rank_h: shared`` (checked by one 2·K·n MAX all-reduce), and G (K, P) is all-reduced
(mean) before the clip norm, so the Gram formula sees the global G and every rank computes the same global
norm. Each rank then updates only its shard: E_local (|R_r|, P) ← AdamW with gradient α[:, R_r]ᵀ·G.

Why all-reduce G and not shard E along P (Shard(1)) and reduce-scatter it: with rows each rank needs all of
G anyway, and the Gram norm needs the full GGᵀ; the tensor bytes handed in are the same (K·P), a ring moves
twice as much for an all-reduce, which only matters at K·P ≫ |S| (it is ≤ |S| per group here).

Bytes this rank hands to collectives per optimizer step (``last_step_bytes``, tensor bytes as in BankDDP):
FSDP2's reduce-scatter input (every gradient but the bank's, each padded to a multiple of W along dim 0) +
per bank group G (K × P_g) and the α check (2 × K × n); `step_bytes` gives the formula. FSDP2's all-gathers of
the parameters (the same for both bank updates) are counted apart, in ``last_step_gather_bytes``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather, ReduceScatter
from torch.distributed.tensor import DTensor, Shard

from soe.train.bank_ddp import BankDDP


def _padded(shape, world: int) -> int:
    """numel of a gradient in FSDP2's reduce-scatter input: dim 0 padded to a multiple of the world size."""
    return math.ceil(shape[0] / world) * world * math.prod(shape[1:])


def step_bytes(soup, M: int, world: int = 2, elem: int = 4) -> int:
    """Bytes one rank hands to reduce-scatter + the bank's reduction per optimizer step (α shared, M rows of
    G): every non-bank gradient, padded as FSDP2 pads it, + per bank group M·P_g + 2·M·n."""
    if world == 1:
        return 0
    bank = set(map(id, soup.bank.values()))
    other = sum(_padded(p.shape, world) for p in soup.parameters() if p.requires_grad and id(p) not in bank)
    return elem * (other + sum(M * E.shape[1] + 2 * M * soup.n for E in soup.bank.values()))


class _Counted(AllGather, ReduceScatter):
    """FSDP2's own collective (all-gather or reduce-scatter), counting the input bytes into ``counter``."""

    def __init__(self, inner, counter: "BankFSDP", attr: str):
        self.inner, self.counter, self.attr = inner, counter, attr

    def allocate(self, size, *, dtype, device):
        return self.inner.allocate(size, dtype=dtype, device=device)

    def __call__(self, output_tensor, input_tensor, group, *args, **kwargs):
        setattr(
            self.counter,
            self.attr,
            getattr(self.counter, self.attr) + input_tensor.numel() * input_tensor.element_size(),
        )
        return self.inner(output_tensor, input_tensor, group, *args, **kwargs)


class BankFSDP(BankDDP):
    """BankDDP's reduction of (α, G) + the update of this rank's shard of E, m, v; counts FSDP2's bytes."""

    def __init__(self, group=None):
        super().__init__(group)
        self.gather_bytes = 0  # FSDP2's parameter all-gathers since the last optimizer step
        self.last_step_gather_bytes = 0

    @classmethod
    def attach(cls, soup, optimizer) -> "BankFSDP":
        """Check that FSDP2 shards the bank by rows and will not reduce-scatter its (absent) gradient, count
        FSDP2's collectives, and become ``optimizer.reducer``."""
        if not isinstance(soup, FSDPModule):
            raise ValueError("BankFSDP: the soup is not sharded by fully_shard (FSDP2)")
        state = soup._get_fsdp_state()
        groups = state._fsdp_param_groups
        if len(groups) != 1:
            raise ValueError(f"BankFSDP expects one FSDP2 parameter group on the soup, got {len(groups)}")
        if groups[0].reduce_scatter_unused_params:  # would reduce-scatter zeros of E's size every step
            raise ValueError("BankFSDP: set_reduce_scatter_unused_params(True) would send a zero ∂E; keep False")
        for E in soup.bank.values():
            if not isinstance(E, DTensor) or E.device_mesh.ndim != 1 or tuple(E.placements) != (Shard(0),):
                raise ValueError(
                    f"BankFSDP expects the bank sharded by rows on a 1-D mesh, got "
                    f"{getattr(E, 'placements', 'a plain tensor')}"
                )
        self = cls(groups[0].mesh_info.shard_process_group)
        soup.set_custom_reduce_scatter(_Counted(groups[0]._reduce_scatter_comm, self, "bytes"))
        soup.set_custom_all_gather(_Counted(groups[0]._all_gather_comm, self, "gather_bytes"))
        optimizer.reducer = self
        return self

    @staticmethod
    def rows(E: DTensor) -> range:
        """The rows of E (n, P) this rank holds: torch.chunk's split over the mesh, as FSDP2 shards dim 0."""
        n, W, r = E.shape[0], E.device_mesh.size(), E.device_mesh.get_local_rank()
        c = math.ceil(n / W)
        return range(min(r * c, n), min((r + 1) * c, n))

    @torch.no_grad()
    def update(self, opt, E: DTensor, alpha: Tensor, G: Tensor, group: dict) -> None:
        """``opt._update`` on this rank's shard: E_local (|R|, P), α[:, R] (K, |R|), G (K, P) reduced.

        AdamW's state stays keyed by the DTensor parameter E (what state_dict and distributed checkpoints
        map), m, v DTensors sharded like E; `_update` sees it through a temporary entry for the local
        tensor, whose step counter and moments are the same tensors (copied back in case they are replaced)."""
        local, R = E.to_local(), self.rows(E)
        if local.shape[0] != len(R):
            raise RuntimeError(f"BankFSDP: local shard has {local.shape[0]} rows, expected {len(R)}")
        state = opt.state[E]
        if not state:  # AdamW's lazy state, as `_update` would make it, but sharded like E
            state["step"] = (
                torch.zeros((), dtype=torch.float32, device=local.device)
                if group["fused"]
                else torch.tensor(0.0, dtype=torch.float32)
            )
            state["exp_avg"] = torch.zeros_like(E)
            state["exp_avg_sq"] = torch.zeros_like(E)
        if local.numel() == 0:  # more ranks than experts: nothing to update, but the step still counts
            state["step"] += 1
            return
        view = {k: v.to_local() if isinstance(v, DTensor) else v for k, v in state.items()}
        opt.state[local] = view
        try:
            opt._update(local, alpha[:, R.start : R.stop], G, group)
        finally:
            del opt.state[local]
        for k, v in view.items():
            if isinstance(state.get(k), DTensor):
                if v is not state[k].to_local():
                    state[k].to_local().copy_(v)
            else:
                state[k] = v

    def end_step(self) -> None:
        super().end_step()
        self.last_step_gather_bytes, self.gather_bytes = self.gather_bytes, 0
