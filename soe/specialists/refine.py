"""Refine estimated domain weights on the soup's own loss: h = softmax(z), z optimised by Adam.

The histogram of `estimate` only looks at embeddings; refinement asks the soup which h makes the
in-house tokens most likely. It fits on the first 1 − holdout of the token stream, checks the rest every
``eval_every`` steps, and never returns an h whose in-sample loss is worse than the start's.

Cost (issue 17): every window costs a full forward of the soup's Θ(h) — the loss is not linear in α, so
nothing per window can be cached across h. Refinement therefore only avoids work that cannot change
its result: evaluations run without autograd, the in-sample check is evaluated only when the held-out
loss improves (otherwise the iterate is rejected whatever it is), and the gradient steps may run in
bfloat16 on a CPU that has bf16 matrix units (``bf16``): they only pick a direction, while every loss
that selects or reports an h stays float32. ``method="bfgs"`` hands the whole refinement to refine_bfgs.py
(BFGS on a fixed window sample); the `Refinement` both return and the fit/held-out `split` are refinement.py's.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from soe.core.soup import SoupOfExperts
from soe.core.weights import weights_dict
from soe.data.windows import eval_windows
from soe.specialists.evaluate import mean_loss
from soe.specialists.refine_bfgs import refine_bfgs
from soe.specialists.refinement import Refinement, cpu_bf16, split

METHODS = ("adam", "bfgs")


def refine(
    soup: SoupOfExperts,
    h0: torch.Tensor,
    stream: np.ndarray,
    domains: list[str],
    *,
    holdout: float = 0.2,
    steps: int | None = None,
    lr: float = 0.05,
    batch_size: int = 16,
    eval_every: int = 10,
    patience: int = 5,
    seq_len: int | None = None,
    seed: int = 0,
    tol: float = 0.0,
    bf16: bool | None = False,
    progress: Callable[[str], None] | None = None,
    method: str = "adam",
    fit_windows: int = 64,
) -> Refinement:
    """Minimise the soup's loss in h on the simplex (h = softmax(z), z from log h0) on the first
    1-holdout of the in-house token stream, early-stopping on the rest: an evaluation counts as an
    improvement when it beats the best held-out loss by more than ``tol`` (0: any decrease). ``bf16``: gradient
    steps under bfloat16 autocast (None: on a CPU with bf16 support; off by default, so that reported numbers do
    not move). ``progress`` gets one line per evaluation."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    steps = steps if steps is not None else {"adam": 200, "bfgs": 15}[method]
    if method == "bfgs":  # ~5x fewer model passes, the sample's optimum (refine_bfgs)
        return refine_bfgs(
            soup,
            h0,
            stream,
            domains,
            holdout=holdout,
            steps=steps,
            fit_windows=fit_windows,
            seq_len=seq_len,
            tol=tol,
            bf16=bf16,
            progress=progress,
        )
    dev = next(soup.parameters()).device
    cut, T = split(soup, stream, holdout, seq_len)
    fit, held = eval_windows(stream[:cut], T).to(dev), eval_windows(stream[cut:], T, max_windows=256).to(dev)
    # The in-sample check evaluates at most 256 evenly spaced fit windows: evaluating all of them every
    # eval_every steps made refinement on a 300k-token sample take minutes on CPU.
    fit_eval = eval_windows(stream[:cut], T, max_windows=256).to(dev)
    h0 = h0.to(dev)
    bf16 = cpu_bf16(dev) if bf16 is None else bf16
    say = progress or (lambda line: None)
    t0 = time.perf_counter()

    @torch.no_grad()  # losses only: a graph per window would cost memory and time for nothing
    def loss_at(h, wins):
        params = soup.instantiate(h)
        return mean_loss(lambda x, y: soup(x, targets=y, params=params)[1], wins)

    start = (loss_at(h0, fit_eval), loss_at(h0, held))
    say(
        f"refine: start fit {start[0]:.4f} held-out {start[1]:.4f} ({len(fit)} fit / {len(held)} held-out "
        f"windows of {T} tokens, {'bf16' if bf16 else 'fp32'} steps), {time.perf_counter() - t0:.1f}s"
    )
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
            params = soup.instantiate(torch.softmax(z, 0))  # float32 Θ(h): autocast casts per matmul
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = soup(b[:, :-1], targets=b[:, 1:], params=params)[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % eval_every and step != steps:
                continue
            h = torch.softmax(z.detach(), 0)
            # the fit loss only matters for an iterate that beats the best held-out loss: skip it otherwise
            hl = loss_at(h, held)
            fl = loss_at(h, fit_eval) if hl < best[0] - tol else None
            hist.append({"step": step, "fit": fl, "holdout": hl})
            if fl is not None and fl <= start[0]:
                best, bad = (hl, h.clone(), fl), 0
            else:
                bad += 1
            say(
                f"refine: step {step}/{steps} batch {float(loss.detach()):.4f} held-out {hl:.4f} best {best[0]:.4f}"
                + (f" fit {fl:.4f}" if fl is not None else "")
                + f", {time.perf_counter() - t0:.1f}s"
            )
            if bad >= patience:
                break
    finally:
        for p, f in zip(soup.parameters(), flags):
            p.requires_grad_(f)
    return Refinement(
        weights_dict(best[1].cpu(), domains),
        weights_dict(h0.cpu(), domains),
        start[0],
        best[2],
        start[1],
        best[0],
        step,
        len(fit),
        len(held),
        hist,
        step,
    )
