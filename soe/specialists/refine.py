"""Refine estimated domain weights on the soup's own loss: h = softmax(z), z optimised by Adam.

The histogram of `estimate` only looks at embeddings; refinement asks the soup which h makes the
in-house tokens most likely. It fits on the first 1 − holdout of the token stream, checks the rest every
``eval_every`` steps, and never returns an h whose in-sample loss is worse than the start's.

Cost (issue 17): every window costs a full forward of the soup's Θ(h) — the loss is not linear in α, so
nothing per window can be cached across h. Refinement therefore only avoids work that cannot change
its result: evaluations run without autograd, the in-sample check is evaluated only when the held-out
loss improves (otherwise the iterate is rejected whatever it is), and the gradient steps may run in
bfloat16 on a CPU that has bf16 matrix units (``bf16``): they only pick a direction, while every loss
that selects or reports an h stays float32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from scipy.optimize import minimize

from soe.core.soup import SoupOfExperts
from soe.core.weights import weights_dict
from soe.data.windows import eval_windows
from soe.specialists.evaluate import mean_loss

METHODS = ("adam", "bfgs")


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
    evaluations: int = 0
    """Gradient evaluations (Adam: one per step on a batch; BFGS: one pass over its fit sample each)."""
    method: str = "adam"

    @property
    def improved(self) -> bool:
        return self.weights != self.start_weights


def refine(soup: SoupOfExperts, h0: torch.Tensor, stream: np.ndarray, domains: list[str], *, holdout: float = 0.2,
           steps: int | None = None, lr: float = 0.05, batch_size: int = 16, eval_every: int = 10, patience: int = 5,
           seq_len: int | None = None, seed: int = 0, tol: float = 0.0, bf16: bool | None = False,
           progress: Callable[[str], None] | None = None, method: str = "adam", fit_windows: int = 64) -> Refinement:
    """Minimise the soup's loss in h on the simplex (h = softmax(z), z from log h0) on the first
    1-holdout of the in-house token stream, early-stopping on the rest: an evaluation counts as an
    improvement when it beats the best held-out loss by more than ``tol`` (0: any decrease). ``bf16``: gradient
    steps under bfloat16 autocast (None: on a CPU with bf16 support; off by default, so that reported numbers do
    not move). ``progress`` gets one line per evaluation."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    steps = steps if steps is not None else {"adam": 200, "bfgs": 15}[method]
    if method == "bfgs":  # ~5x fewer model passes, the sample's optimum (refine_bfgs)
        return refine_bfgs(soup, h0, stream, domains, holdout=holdout, steps=steps, fit_windows=fit_windows,
                           seq_len=seq_len, tol=tol, bf16=bf16, progress=progress)
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
    say(f"refine: start fit {start[0]:.4f} held-out {start[1]:.4f} ({len(fit)} fit / {len(held)} held-out "
        f"windows of {T} tokens, {'bf16' if bf16 else 'fp32'} steps), {time.perf_counter() - t0:.1f}s")
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
            say(f"refine: step {step}/{steps} batch {float(loss.detach()):.4f} held-out {hl:.4f} best {best[0]:.4f}"
                + (f" fit {fl:.4f}" if fl is not None else "") + f", {time.perf_counter() - t0:.1f}s")
            if bad >= patience:
                break
    finally:
        for p, f in zip(soup.parameters(), flags):
            p.requires_grad_(f)
    return Refinement(weights_dict(best[1].cpu(), domains), weights_dict(h0.cpu(), domains), start[0], best[2],
                      start[1], best[0], step, len(fit), len(held), hist, step)


# Cost (issue 17): every window costs a full forward of the soup's Θ(h) (the loss is not linear in α, so
# nothing per window can be cached across h), so refinement is priced in model passes. The objective has
# only k parameters, so here it is made deterministic — the mean loss on a fixed, evenly spaced sample of
# ``fit_windows`` fit windows — and minimised by BFGS with a Wolfe line search (scipy), which gets there in
# a handful of gradient evaluations where Adam on random 16-window batches needs ~200 noisy steps (~3,000
# window gradients on 200 documents). Per iteration: ~1 gradient pass over the sample and one no-grad pass
# over the held-out windows, which stop the iterations ``patience`` evaluations after their best. The
# in-sample loss is the objective itself, so checking it costs nothing.
#
# Measured on the demo's go set (README, "--refine"): 5–6× faster than Adam, but BFGS converges on the
# sample's optimum, not the whole fit part's: held-out 6.0091 against Adam's 6.0002. Hence not the default.
def refine_bfgs(soup: SoupOfExperts, h0: torch.Tensor, stream: np.ndarray, domains: list[str], *, holdout: float = 0.2,
           steps: int = 15, fit_windows: int = 64, patience: int = 2, seq_len: int | None = None,
           tol: float = 0.0, bf16: bool | None = False, batch_size: int = 32,
           progress: Callable[[str], None] | None = None) -> Refinement:
    """Minimise the soup's mean loss on ``fit_windows`` evenly spaced windows of the first 1-holdout of the
    in-house token stream over h on the simplex (h = softmax(z), z from log h0), by at most ``steps`` BFGS
    iterations; after each one the held-out loss (≤ 256 windows of the rest) is evaluated, and the iterations
    stop ``patience`` evaluations without an improvement larger than ``tol`` (0: any decrease). ``bf16``: the
    gradient passes run under bfloat16 autocast (None: on a CPU with bf16 support; the in-sample losses are then
    bf16 too, held-out losses stay float32). ``progress`` gets one line per iteration."""
    for name, v in (("steps", steps), ("fit_windows", fit_windows), ("patience", patience)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name}={v!r} must be an integer ≥ 1")
    if not tol >= 0:
        raise ValueError(f"tol={tol} must be ≥ 0")
    dev = next(soup.parameters()).device
    cut, T = split(soup, stream, holdout, seq_len)
    # a fixed sample makes the objective deterministic, which is what lets a line search work at all
    fit = eval_windows(stream[:cut], T, max_windows=fit_windows).to(dev)
    held = eval_windows(stream[cut:], T, max_windows=256).to(dev)
    h0 = h0.to(dev)
    bf16 = cpu_bf16(dev) if bf16 is None else bf16
    say = progress or (lambda line: None)
    t0 = time.perf_counter()
    # BFGS starts from a gradient step, and ∂L/∂z_i carries a factor h_i: a domain at 1e-3 would barely move
    # while one at 0.7 overshoots. Optimising u with z = log h0 + u/√h0 makes that first step scale with √h_i
    # (Adam's per-coordinate normalisation did this before); on go, u in plain z stopped ~0.006 nats higher.
    hc = h0.clamp_min(1e-3)
    z0, scale = torch.log(hc), hc.rsqrt()

    def h_of(u: np.ndarray) -> torch.Tensor:
        return torch.softmax(z0 + torch.as_tensor(u, dtype=z0.dtype, device=dev) * scale, 0)

    def loss_grad(u: np.ndarray) -> tuple[float, np.ndarray]:
        ut = torch.as_tensor(u, dtype=z0.dtype, device=dev).requires_grad_(True)
        params = soup.instantiate(torch.softmax(z0 + ut * scale, 0))
        total = 0.0
        for i in range(0, len(fit), batch_size):  # the token mean over the sample, one graph per batch
            b = fit[i:i + batch_size]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = soup(b[:, :-1], targets=b[:, 1:], params=params)[1] * (len(b) / len(fit))
            loss.backward(retain_graph=i + batch_size < len(fit))
            total += float(loss.detach())
        return total, ut.grad.double().cpu().numpy()

    @torch.no_grad()  # losses only: a graph per window would cost memory and time for nothing
    def held_loss(h: torch.Tensor) -> float:
        params = soup.instantiate(h)
        return mean_loss(lambda x, y: soup(x, targets=y, params=params)[1], held, batch_size)

    flags = [p.requires_grad for p in soup.parameters()]
    for p in soup.parameters():
        p.requires_grad_(False)
    calls = {"n": 0, "at": None, "value": None}

    def objective(u: np.ndarray):  # memoised: scipy re-evaluates the start, which `start` already did
        if calls["at"] is None or not np.array_equal(u, calls["at"]):
            calls["n"] += 1
            calls["at"], calls["value"] = np.array(u, copy=True), loss_grad(u)
        return calls["value"]

    try:
        u0 = np.zeros(len(hc))
        start = (objective(u0)[0], held_loss(h0))
        say(f"refine: start fit {start[0]:.4f} held-out {start[1]:.4f} ({len(fit)} fit / {len(held)} held-out "
            f"windows of {T} tokens, {'bf16' if bf16 else 'fp32'} gradients), {time.perf_counter() - t0:.1f}s")
        best = {"held": start[1], "h": h0, "fit": start[0], "bad": 0}
        hist = [{"step": 0, "fit": start[0], "holdout": start[1]}]

        def check(intermediate_result):  # after each BFGS iteration (scipy passes the iterate and its loss)
            h, fl = h_of(intermediate_result.x), float(intermediate_result.fun)
            hl = held_loss(h)
            hist.append({"step": len(hist), "fit": fl, "holdout": hl})
            # a Wolfe step never raises the objective; checked anyway, since the guarantee is the point
            if hl < best["held"] - tol and fl <= start[0]:
                best.update(held=hl, h=h, fit=fl, bad=0)
            else:
                best["bad"] += 1
            say(f"refine: step {len(hist) - 1}/{steps} fit {fl:.4f} held-out {hl:.4f} best {best['held']:.4f}, "
                f"{calls['n']} evaluations, {time.perf_counter() - t0:.1f}s")
            if best["bad"] >= patience:
                raise StopIteration  # scipy ends the minimisation cleanly

        if soup.n:  # dense (n = 0): h has no effect, nothing to optimise
            minimize(objective, u0, jac=True, method="BFGS", callback=check, options={"maxiter": steps, "gtol": 1e-6})
    finally:
        for p, f in zip(soup.parameters(), flags):
            p.requires_grad_(f)
    return Refinement(weights_dict(best["h"].cpu(), domains), weights_dict(h0.cpu(), domains), start[0], best["fit"],
                      start[1], best["held"], len(hist) - 1, len(fit), len(held), hist, calls["n"], "bfgs")



def split(soup: SoupOfExperts, stream: np.ndarray, holdout: float, seq_len: int | None) -> tuple[int, int]:
    """(cut, T): the fit part is stream[:cut], the held-out part the rest, both cut into windows of T tokens."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout} must be in (0, 1)")
    cut = int(len(stream) * (1 - holdout))
    T = min(seq_len or soup.net_cfg.max_seq_len, soup.net_cfg.max_seq_len, cut - 1, len(stream) - cut - 1)
    if T < 8:
        raise ValueError(f"in-house data too small to refine: {len(stream)} tokens (need ≥ 8 tokens per window "
                         f"in both the fit and the {holdout:.0%} held-out part)")
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
