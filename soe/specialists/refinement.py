"""What both refiners of h share (refine.py's Adam, refine_bfgs.py's BFGS): the `Refinement` they return,
`split`, which cuts the in-house token stream into a fit part and a held-out part of windows, and `cpu_bf16`,
whether bfloat16 gradient steps pay on this CPU. Apart so that either optimiser imports them without the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from soe.core.soup import SoupOfExperts


@dataclass
class Refinement:
    """What a refinement returns: the chosen h, the losses at the start and at it, and the path between."""

    weights: dict[str, float]
    """The returned h: the start, or the iterate with the best held-out loss among those whose
    in-sample loss is not worse than the start's."""
    start_weights: dict[str, float]
    fit_loss_start: float
    """In-sample loss at the start h, on ≤ 256 evenly spaced windows of the fit part."""
    fit_loss: float
    holdout_loss_start: float
    holdout_loss: float
    steps: int
    fit_windows: int
    holdout_windows: int
    history: list[dict] = field(default_factory=list)
    evaluations: int = 0
    """Gradient evaluations (Adam: one per step on a batch; BFGS: one pass over its fit sample each)."""
    method: str = "adam"

    @property
    def improved(self) -> bool:
        return self.weights != self.start_weights


def split(soup: SoupOfExperts, stream: np.ndarray, holdout: float, seq_len: int | None) -> tuple[int, int]:
    """(cut, T): the fit part is stream[:cut], the held-out part the rest, both cut into windows of T tokens."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout} must be in (0, 1)")
    cut = int(len(stream) * (1 - holdout))
    T = min(seq_len or soup.net_cfg.max_seq_len, soup.net_cfg.max_seq_len, cut - 1, len(stream) - cut - 1)
    if T < 8:
        raise ValueError(
            f"in-house data too small to refine: {len(stream)} tokens (need ≥ 8 tokens per window "
            f"in both the fit and the {holdout:.0%} held-out part)"
        )
    return cut, T


def cpu_bf16(dev: torch.device) -> bool:
    """bfloat16 autocast pays on a CPU with bf16 matrix instructions (AVX512-BF16/AMX: ~1.7x on the demo
    soup); elsewhere it is emulated and slower, and on GPUs the caller decides."""
    if dev.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
