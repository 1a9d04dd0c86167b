"""Brief full fine-tuning of a dense model (a specialist Θ(h), or the generic model) on in-house tokens.

The same procedure for every starting point, so that "SoE specialist, then fine-tuned" and "generic,
then fine-tuned" are compared on equal terms: AdamW on non-overlapping windows of the first
1 − holdout of the token stream (reshuffled every epoch), linear warmup then cosine decay to 10 %,
gradient clipping at 1.0; the held-out tail is evaluated every ``eval_every`` steps and the model ends
in its best state (early stopping, so a too-long budget cannot make a start point look worse).
``save_at`` names steps (e.g. `geometric_steps`: 4, 8, 16, …, T) at which the held-out part is also evaluated and
``on_save(step, holdout_loss)`` is called, for checkpoints kept during the run; ``patience`` stops the run after
that many evaluations without a new best. With LoRA (soe/specialists/lora.py) only the adapters train.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from soe.core.model import LlamaLM
from soe.data.windows import eval_windows
from soe.specialists.evaluate import model_loss


@dataclass
class FineTune:
    """What one fine-tuning run did; losses in nats/token."""

    holdout_loss_start: float
    """Loss on the held-out part of the stream before fine-tuning."""
    holdout_loss: float
    """Best held-out loss (the state the model was left in)."""
    best_step: int
    """Step of that state (0: fine-tuning never helped and the model is unchanged)."""
    steps: int
    """Steps taken."""
    tokens: int
    """Training tokens seen (steps × batch × seq_len)."""
    wall_s: float
    holdout: float
    """Fraction of the stream held out to choose the best step."""
    history: list[dict]
    """[{step, holdout}] at every evaluation."""


def geometric_steps(total: int, first: int = 4) -> list[int]:
    """first, 2·first, 4·first, … below ``total``, then ``total``: where fine-tuning checkpoints are kept."""
    out, s = [], first
    while s < total:
        out.append(s)
        s *= 2
    return out + [total] if total > 0 else []


def check_stream_size(n_tokens: int, holdout: float, T: int) -> int:
    """Where the held-out part of ``n_tokens`` starts; refuses a stream without one window of T + 1 tokens in
    both parts (called before anything is written)."""
    cut = int(n_tokens * (1 - holdout))
    if cut - 1 < T or n_tokens - cut - 1 < T:
        raise ValueError(
            f"in-house data too small to fine-tune: {n_tokens} tokens cannot hold one window of "
            f"{T + 1} tokens in both the training part and the {holdout:.0%} held-out part"
        )
    return cut


def finetune(
    model: LlamaLM,
    stream: np.ndarray,
    *,
    steps: int = 100,
    lr: float = 3e-4,
    weight_decay: float = 0.0,
    batch_size: int = 16,
    warmup: int = 10,
    holdout: float = 0.1,
    eval_every: int = 20,
    seq_len: int | None = None,
    seed: int = 0,
    save_at: Iterable[int] = (),
    on_save: Callable[[int, float], None] | None = None,
    patience: int | None = None,
    holdout_windows: int = 256,
    log: Callable[[str], None] | None = None,
) -> FineTune:
    """Fine-tune ``model`` in place on ``stream`` (1-D token ids) and leave it in eval mode at its best
    held-out state. ``holdout_windows``: at most this many held-out windows are scored at each evaluation."""
    if steps < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(f"fine-tuning needs steps ≥ 0, batch_size ≥ 1, lr > 0; got {steps}, {batch_size}, {lr}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout} must be in (0, 1)")
    dev = next(model.parameters()).device
    T = min(seq_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
    cut = check_stream_size(len(stream), holdout, T)
    train, held = (
        eval_windows(stream[:cut], T).to(dev),
        eval_windows(stream[cut:], T, max_windows=holdout_windows).to(dev),
    )

    def held_loss() -> float:
        return model_loss(model, held)

    start = held_loss()
    best = (start, 0, {k: v.detach().clone() for k, v in model.state_dict().items()})
    hist = [{"step": 0, "holdout": start}]
    params = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    save_at, since_best = set(save_at), 0

    def lr_at(step: int) -> float:  # step counts from 1
        if step <= warmup:
            return lr * step / max(warmup, 1)
        t = (step - warmup) / max(steps - warmup, 1)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(train), generator=gen), 0
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        if pos + batch_size > len(order):  # new epoch
            order, pos = torch.randperm(len(train), generator=gen), 0
        b = train[order[pos : pos + batch_size].to(dev)]
        pos += batch_size
        model.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(b[:, :-1], targets=b[:, 1:])[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % eval_every == 0 or step == steps or step in save_at:
            hl = held_loss()
            hist.append({"step": step, "holdout": hl})
            since_best += 1
            if hl < best[0]:
                best, since_best = (hl, step, {k: v.detach().clone() for k, v in model.state_dict().items()}), 0
            if log:
                log(f"  step {step}/{steps}: held-out loss {hl:.4f} (best {best[0]:.4f} at step {best[1]})")
            if on_save and step in save_at:
                model.eval()
                on_save(step, hl)
            if patience is not None and since_best >= patience:
                if log:
                    log(f"  early stop: no better held-out loss in {patience} evaluations")
                if on_save and step not in save_at:  # the last state is always kept
                    on_save(step, hl)
                steps = step
                break
    wall = time.perf_counter() - t0
    model.load_state_dict(best[2])
    model.eval()
    return FineTune(start, best[0], best[1], steps, steps * min(batch_size, len(train)) * T, wall, holdout, hist)
