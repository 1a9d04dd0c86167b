"""Refine estimated domain weights on the soup's own loss: h = softmax(z), z optimised by Adam.

The histogram of `estimate` only looks at embeddings; refinement asks the soup which h makes the
in-house tokens most likely. It fits on the first 1 − holdout of the token stream, checks the rest every
``eval_every`` steps, and never returns an h whose in-sample loss is worse than the start's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from soe.core.soup import SoupOfExperts
from soe.core.weights import weights_dict
from soe.data.windows import eval_windows
from soe.specialists.evaluate import mean_loss


@dataclass
class Refinement:
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

    @property
    def improved(self) -> bool:
        return self.weights != self.start_weights


def refine(soup: SoupOfExperts, h0: torch.Tensor, stream: np.ndarray, domains: list[str], *, holdout: float = 0.2,
           steps: int = 200, lr: float = 0.05, batch_size: int = 16, eval_every: int = 10, patience: int = 5,
           seq_len: int | None = None, seed: int = 0) -> Refinement:
    """Minimise the soup's loss in h on the simplex (h = softmax(z), z from log h0) on the first
    1-holdout of the in-house token stream, early-stopping on the rest."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout} must be in (0, 1)")
    dev = next(soup.parameters()).device
    cut = int(len(stream) * (1 - holdout))
    T = min(seq_len or soup.net_cfg.max_seq_len, soup.net_cfg.max_seq_len, cut - 1, len(stream) - cut - 1)
    if T < 8:
        raise ValueError(f"in-house data too small to refine: {len(stream)} tokens (need ≥ 8 tokens per window "
                         f"in both the fit and the {holdout:.0%} held-out part)")
    fit, held = eval_windows(stream[:cut], T).to(dev), eval_windows(stream[cut:], T, max_windows=256).to(dev)
    # The in-sample check evaluates at most 256 evenly spaced fit windows: evaluating all of them every
    # eval_every steps made refinement on a 300k-token sample take minutes on CPU.
    fit_eval = eval_windows(stream[:cut], T, max_windows=256).to(dev)
    h0 = h0.to(dev)

    def loss_at(h, wins):
        params = soup.instantiate(h)
        return mean_loss(lambda x, y: soup(x, targets=y, params=params)[1], wins)

    start = (loss_at(h0, fit_eval), loss_at(h0, held))
    best = (start[1], h0, start[0])  # (holdout loss, h, fit loss)
    hist = [{"step": 0, "fit": start[0], "holdout": start[1]}]
    if soup.n == 0:  # dense: h has no effect
        steps = 0
    z = torch.log(h0.clamp_min(1e-3)).detach().requires_grad_(True)  # logits: (k,)
    opt = torch.optim.Adam([z], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    flags = [p.requires_grad for p in soup.parameters()]
    for p in soup.parameters():
        p.requires_grad_(False)
    bad, step = 0, 0
    try:
        for step in range(1, steps + 1):
            idx = torch.randperm(len(fit), generator=gen)[:batch_size].to(dev)
            b = fit[idx]
            loss = soup(b[:, :-1], targets=b[:, 1:], params=soup.instantiate(torch.softmax(z, 0)))[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % eval_every and step != steps:
                continue
            h = torch.softmax(z.detach(), 0)
            fl, hl = loss_at(h, fit_eval), loss_at(h, held)
            hist.append({"step": step, "fit": fl, "holdout": hl})
            if fl <= start[0] and hl < best[0]:
                best, bad = (hl, h.clone(), fl), 0
            else:
                bad += 1
                if bad >= patience:
                    break
    finally:
        for p, f in zip(soup.parameters(), flags):
            p.requires_grad_(f)
    return Refinement(weights_dict(best[1].cpu(), domains), weights_dict(h0.cpu(), domains), start[0], best[2],
                      start[1], best[0], step, len(fit), len(held), hist)
