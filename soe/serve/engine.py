"""The decode engine: one background thread that owns the models and decodes up to ``max_batch`` requests.

Each loop it admits queued requests into free slots (instantiating Θ(h) through the cache, in this thread),
then runs one *step*: every active request gets one token. There is no KV cache: each token recomputes its whole
window, as ``soe generate`` does. Windows of different lengths share a forward *right-padded* to the longest:
attention is causal, so a position never sees the padding after it and each row's logits at its own last
position are those of its unpadded window. The active requests are packed from the longest window down into
groups whose padded tokens stay within ``PAD_SLACK`` × their real tokens (a short window is not padded to 8×
its length); one group is one forward:

- one request: its dense model alone, unpadded, the very computation of ``soe generate``;
- several requests of one h: that model on the batch;
- requests of different h: one forward of the *stacked* models (every weight with a leading M, group m of the
  batch run by model m through batched matmuls: `soe.core.model`'s stacked models, the path the soup's training
  forward with h: (M, k) uses). The stacked weights are cached while the group keeps its members. Where the dense
  model does not accept stacked weights (probed once, compared with the plain forward), each h's sub-batch runs
  its own forward in the same step instead.

Admission is FIFO; no request waits for another to finish once admitted. A cancelled request (the client went away) leaves its slot
at the next step. Events go to each request's ``sink`` (called from this thread): ("start", info),
("token", id), ("done", "stop" | "length"), ("error", message). An exception in a step fails the requests of
that step, is logged with its traceback on the server, and the engine goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.func import functional_call

from soe.core.model import LlamaLM
from soe.serve.cache import SpecialistCache
from soe.serve.sampling import next_token

log = logging.getLogger("soe.serve")
PAD_SLACK = 2.0  # a group's padded tokens (rows × its longest window) ≤ PAD_SLACK × its real tokens


@dataclass(eq=False)
class Job:
    key: bytes
    h: torch.Tensor | None
    tokens: list[int]  # the prompt's ids ([eos] for an empty prompt); generated ids are appended
    max_new: int
    temperature: float
    top_k: int | None
    top_p: float
    seed: int
    eos_id: int
    sink: Callable[[tuple], None]
    cancelled: bool = False
    n_new: int = 0
    model: torch.nn.Module | None = None
    gen: torch.Generator | None = None
    t_submit: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled = True


class Busy(Exception):
    """The request queue is full."""


class Engine:
    def __init__(self, cache: SpecialistCache, cfg, max_batch: int = 8, max_queue: int = 256):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch={max_batch}, max_queue={max_queue}: expected ≥ 1")
        self.cache, self.cfg, self.max_batch = cache, cfg, max_batch
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._active: list[Job] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soe-serve-engine", daemon=True)
        with torch.device("meta"):
            self._template = LlamaLM(cfg)
        self._stacks: dict[tuple[bytes, ...], dict[str, torch.Tensor]] = {}
        self.stacked: bool | None = None  # None: not probed yet
        self.steps = self.forwards = self.rows = self.served = self.failed = self.cancelled = 0

    # ------------------------------------------------------------ outside the engine thread
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Busy(f"{self._queue.maxsize} requests are already queued") from None

    def stats(self) -> dict:
        return {
            "active": len(self._active),
            "queued": self._queue.qsize(),
            "max_batch": self.max_batch,
            "batching": {None: "not probed yet", True: "stacked", False: "per-model"}[self.stacked],
            "steps": self.steps,
            "forwards": self.forwards,
            "rows": self.rows,
            "served": self.served,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "cache": self.cache.stats(),
        }

    # ------------------------------------------------------------ the engine thread
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._admit()
                gone = [j for j in self._active if j.cancelled]
                if gone:  # their clients went away: free the slots
                    self.cancelled += len(gone)
                    self._active = [j for j in self._active if not j.cancelled]
                if self._active:
                    with torch.inference_mode():
                        self._step()
            except Exception:  # never let the thread die: fail what was running, keep serving
                log.exception("engine step failed")
                for j in self._active:
                    self._emit(j, ("error", "internal error while decoding"))
                self.failed += len(self._active)
                self._active = []

    def _emit(self, job: Job, event: tuple) -> None:
        try:
            job.sink(event)
        except Exception:  # the request's loop is gone (server shutting down): drop it
            job.cancel()

    def _admit(self) -> None:
        while len(self._active) < self.max_batch:
            try:
                job = self._queue.get(timeout=0.05) if not self._active else self._queue.get_nowait()
            except queue.Empty:
                return
            if job.cancelled:  # its client went away while it waited
                self.cancelled += 1
                continue
            t_admit = time.perf_counter()
            try:
                with torch.inference_mode():
                    job.model, cached, secs = self.cache.get(job.key, job.h)
            except Exception:
                log.exception("instantiation failed")
                self.failed += 1
                self._emit(job, ("error", "internal error while instantiating the specialist"))
                continue
            dev = next(job.model.parameters()).device
            job.gen = torch.Generator(device=dev).manual_seed(job.seed)
            self._emit(
                job,
                ("start", {"cached": cached, "instantiate_ms": secs * 1e3, "queue_ms": (t_admit - job.t_submit) * 1e3}),
            )
            self._active.append(job)

    def _step(self) -> None:
        self.steps += 1
        stacks, finished = {}, set()
        for group in self._pack(self._active):
            try:
                rows = self._forward(group, stacks)
            except Exception:
                log.exception("forward of %d request(s) failed", len(group))
                for j in group:
                    self._emit(j, ("error", "internal error while decoding"))
                self.failed += len(group)
                finished.update(group)
                continue
            for j, logits in zip(group, rows):
                try:
                    nxt = next_token(logits, j.temperature, j.top_k, j.top_p, j.gen)
                except Exception:  # this request's sampling alone (e.g. non-finite probabilities): fail it only
                    log.exception("sampling failed")
                    self._emit(j, ("error", "internal error while sampling"))
                    self.failed += 1
                    finished.add(j)
                    continue
                if nxt == j.eos_id:
                    self._emit(j, ("done", "stop"))
                    self.served += 1
                    finished.add(j)
                    continue
                j.tokens.append(nxt)
                j.n_new += 1
                self._emit(j, ("token", nxt))
                if j.n_new >= j.max_new:
                    self._emit(j, ("done", "length"))
                    self.served += 1
                    finished.add(j)
        self._stacks = stacks  # keep the stacked weights of this step's groups only
        self._active = [j for j in self._active if j not in finished]

    def _pack(self, jobs: list[Job]) -> list[list[Job]]:
        """The groups of one step, one forward each: from the longest window down, a group grows while its padded
        tokens stay ≤ PAD_SLACK × its real ones."""
        T = self.cfg.max_seq_len
        groups: list[list[Job]] = []
        real = 0
        for j in sorted(jobs, key=lambda j: -min(len(j.tokens), T)):
            n = min(len(j.tokens), T)
            if groups and (len(groups[-1]) + 1) * min(len(groups[-1][0].tokens), T) <= PAD_SLACK * (real + n):
                groups[-1].append(j)
                real += n
            else:
                groups.append([j])
                real = n
        return groups

    def _forward(self, group: list[Job], stacks: dict) -> list[torch.Tensor]:
        """Logits (V,) float32 at the last position of each request's window, in group order."""
        T = self.cfg.max_seq_len
        dev = next(group[0].model.parameters()).device
        keys = list(dict.fromkeys(j.key for j in group))  # distinct h, in order of appearance
        order = sorted(range(len(group)), key=lambda i: keys.index(group[i].key))  # rows grouped by h
        lens = [min(len(group[i].tokens), T) for i in order]
        L = max(lens)
        idx = torch.tensor(
            [group[i].tokens[-T:] + [0] * (L - n) for i, n in zip(order, lens)], dtype=torch.long, device=dev
        )  # (B, L), right-padded
        last = torch.tensor(lens, device=dev) - 1  # (B,)

        def pick(logits: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:  # (b, L, V) → (b, V)
            return logits[torch.arange(logits.shape[0], device=dev), last[rows]].float()

        self.forwards += 1
        self.rows += len(group)
        if len(keys) == 1:
            out = pick(group[0].model(idx))  # one request: exactly soe generate's forward
        else:
            per_h = {k: sum(1 for j in group if j.key == k) for k in keys}
            equal = len(set(per_h.values())) == 1
            members = [next(j for j in group if j.key == k) for k in keys] if equal else [group[i] for i in order]
            if self.stacked is None:
                self.stacked = self._probe(members[0].model)
            if self.stacked:
                stack_key = tuple(j.key for j in members)
                params = self._stacks.get(stack_key) or stacks.get(stack_key)
                if params is None:
                    params = stack_models([j.model for j in members])
                stacks[stack_key] = params
                out = pick(functional_call(self._template, params, (idx,), strict=True))
            else:  # one forward per h, in the same step
                self.forwards += len(keys) - 1
                parts, start = [], 0
                for k in keys:
                    n = per_h[k]
                    part = next(j for j in group if j.key == k).model(idx[start : start + n])
                    parts.append(pick(part, slice(start, start + n)))
                    start += n
                out = torch.cat(parts)
        rows: list[torch.Tensor] = [None] * len(group)  # type: ignore[list-item]
        for r, i in enumerate(order):
            rows[i] = out[r]
        return rows

    def _probe(self, model: torch.nn.Module) -> bool:
        """Does the dense model run stacked weights (a leading M), and give the plain model's logits?"""
        V = self.cfg.vocab_size
        idx = torch.tensor([[0, 1 % V], [2 % V, 3 % V]], dtype=torch.long, device=next(model.parameters()).device)
        try:
            got = functional_call(self._template, stack_models([model, model]), (idx,), strict=True)
            ok = bool(torch.allclose(got.float(), model(idx).float(), rtol=1e-3, atol=1e-4))
        except Exception as e:
            log.info("stacked weights not supported by the dense model (%s): one forward per h", type(e).__name__)
            return False
        log.info(
            "batching requests of different h in one stacked forward"
            if ok
            else "stacked forward disagrees with the plain one: one forward per h"
        )
        return ok


def stack_models(models: list[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """M dense models → their parameters with a leading M: {name: (M, *shape)}."""
    named = [dict(m.named_parameters()) for m in models]
    return {n: torch.stack([p[n] for p in named]) for n in named[0]}
