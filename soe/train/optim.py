"""The optimizer of a soup: AdamW with per-group learning rates and decay, warmup then cosine.

Each flat buffer of the soup (S per group, the bank per group, the low-rank factors, φ) is one parameter
of one AdamW group, so the optimizer runs a handful of large kernels, never a per-tensor loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from soe.core.soup import SoupOfExperts
from soe.train.bank_update import BankAdamW

BANK_UPDATES = ("dense", "factored")


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay; per-group learning rates and weight decay."""

    lr: float = 3e-3
    """Peak learning rate of the shared parameters S."""
    lr_bank: float | None = None
    """Peak learning rate of the expert bank E (None: same as lr). Θ's step from the bank is Σ_j α_j ΔE_j, so
    it grows with n: when changing n, scale lr_bank with 1/n (experiments/RECIPE.md, rows best+n16*)."""
    lr_router: float | None = None
    """Peak learning rate of the router φ (None: same as lr)."""
    weight_decay: float = 0.1
    """Decoupled weight decay of S's matrices (RMSNorm gains never decay)."""
    weight_decay_bank: float | None = None
    """Weight decay of the bank's matrices (None: same as weight_decay)."""
    weight_decay_router: float = 0.0
    """Weight decay of the router φ."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.95
    """AdamW β2."""
    eps: float = 1e-8
    """AdamW ε."""
    warmup_steps: int = 100
    """Linear warmup steps from 0 to the peak learning rates."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine schedule as a fraction of the peak."""
    fused: bool = False
    """Use the fused AdamW kernel (otherwise the foreach implementation)."""
    compile: bool = False
    """torch.compile the soup's forward (instantiate + dense model) for training steps."""
    bank_update: str = "dense"
    """How the full-rank bank E (n × P) is updated: 'dense' (autograd writes ∂E = αᵀG, n × P, every step;
    the reference) or 'factored' (∂E is never built: the clip norm and AdamW's update are computed from α and
    G, soe/train/bank_update.py; same update up to float rounding; under DDP only G is all-reduced,
    soe/train/bank_ddp.py; under FSDP2 G is all-reduced and each rank updates its own rows of E, m and v,
    soe/train/bank_fsdp.py; not with torch.compile or the fp16 scaler)."""

    def __post_init__(self) -> None:
        # Refused here, when the config is read, not steps later as NaN losses or a torch error.
        for name in ("lr", "lr_bank", "lr_router", "eps"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"OptimConfig.{name}={v} must be > 0")
        for name in ("weight_decay", "weight_decay_bank", "weight_decay_router", "warmup_steps"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ValueError(f"OptimConfig.{name}={v} must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"OptimConfig.{name}={getattr(self, name)} must lie in [0, 1)")
        if self.bank_update not in BANK_UPDATES:
            raise ValueError(f"OptimConfig.bank_update={self.bank_update!r}; expected one of {BANK_UPDATES}")
        if self.bank_update == "factored" and self.compile:
            # a compiled backward would not hand the factors to the optimizer: the bank would never move
            raise ValueError(
                "OptimConfig.bank_update='factored' does not work with compile=true; "
                "set model.optim.compile=false or model.optim.bank_update=dense"
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"OptimConfig.min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(soup: SoupOfExperts, o: OptimConfig) -> list[dict]:
    """AdamW groups: S (decay / no_decay), the bank (its own lr and decay), the router φ.

    Each flat buffer is one parameter, so the optimizer runs a handful of large kernels, never a
    per-tensor loop."""
    lr_bank = o.lr if o.lr_bank is None else o.lr_bank
    wd_bank = o.weight_decay if o.weight_decay_bank is None else o.weight_decay_bank
    groups = []
    for g, p in soup.shared.items():
        groups.append(
            {"params": [p], "lr": o.lr, "weight_decay": o.weight_decay if g == "decay" else 0.0, "name": f"shared.{g}"}
        )
    for g, p in soup.bank.items():
        groups.append(
            {"params": [p], "lr": lr_bank, "weight_decay": wd_bank if g == "decay" else 0.0, "name": f"bank.{g}"}
        )
    if soup.lowrank is not None:
        groups.append(
            {"params": list(soup.lowrank.parameters()), "lr": lr_bank, "weight_decay": wd_bank, "name": "bank.lowrank"}
        )
    if soup.router is not None:
        groups.append(
            {
                "params": list(soup.router.parameters()),
                "lr": o.lr if o.lr_router is None else o.lr_router,
                "weight_decay": o.weight_decay_router,
                "name": "router",
            }
        )
    return groups


def make_optimizer(soup: SoupOfExperts, o: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over `param_groups`, fused (one kernel per dtype/device) or foreach. With
    bank_update='factored' a `BankAdamW`, which makes the soup's backward hand it (α, G) instead of ∂E."""
    kwargs = {"fused": True} if o.fused else {"foreach": True}
    kwargs.update(betas=(o.beta1, o.beta2), eps=o.eps)
    if o.bank_update == "factored":
        return BankAdamW(param_groups(soup, o), soup, **kwargs)
    soup.bank_grad_sink = None  # the dense reference: autograd writes E.grad
    return torch.optim.AdamW(param_groups(soup, o), **kwargs)
