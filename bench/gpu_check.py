"""`make gpu-check`: one prepared script that measures what the first GPU can tell us, in ≤ 8 minutes (issue 26).

    python -m bench.gpu_check --device cuda --out bench/out/gpu_check      # the real sizes, on one H100/H200
    python -m bench.gpu_check --smoke --device cpu --out /tmp/gpu_check    # tiny sizes on CPU: every part, every branch
    python -m bench.gpu_check --device cuda --parts soe_ratio,decode --budget-s 120   # rerun some parts

Writes ``gpu_check.json`` (every number) and ``gpu_check.md`` (the tables) into --out after every part, so a run cut
short keeps what it measured. The real sizes are read from configs/soe-110m-1gpu.yaml (and checked against
configs/dense-110m.yaml): the 110M Llama (12 layers, d = 768, 32k vocab), sequences of 1024, 16 per step, n = 16.

Parts, in the order they run (most wanted first, the compile last: it is the slowest and the likeliest to overrun):

- ``dense_eager``: the dense model (n = 0) trained as ``SoupModule`` + Lightning's automatic optimization do it
  (forward under bf16 autocast = ``trainer.precision=bf16-mixed``, backward, norm clip 1.0, fused AdamW, zero_grad):
  tokens/s and MFU = ``ModelConfig.flops_per_token(seq)`` · tokens/s ÷ the card's dense bf16 peak (H100/H200:
  989 TFLOP/s; ``--peak-tflops`` for another card; none on CPU). Target MFU ≥ 40 %.
- ``soe_ratio``: SoE ÷ dense step time for the 1-GPU soup (n = 16) at M = 1, 4, 16 domain weights per step
  (``SoupOfExperts.forward(idx, h=(M, k), targets=...)``), with ``bank_update`` dense and factored, the dense step
  measured in the same process before and after; also the soup's overhead ÷ its traffic floor
  7·|E|·4 B ÷ copy bandwidth (as bench_step) and each configuration's peak memory.
- ``memory``: peak memory (``torch.cuda.max_memory_allocated``; on CPU the resident peak, VmHWM after
  /proc/self/clear_refs) of 3 steps against the estimate
  ``16·N + A + 10·M·P`` bytes with the dense bank update (``− 4·n·P`` with the factored one, which builds no ∂E):
  N = the soup's parameters (S, E, φ; 16 B each: fp32 weight, gradient, AdamW m and v), A = the dense model's
  measured peak − 16·P (activations, bf16 weight copies, workspace), 10·M·P = the M instantiated models Θ(h) in fp32
  (4 B), their bf16 autocast copies (2 B) and their gradient G (4 B); M = the config's data.h_per_step.
- ``bf16_vs_fp32``: the dense model's loss over the first 20 steps from the same init and the same batches (a
  learnable synthetic token chain), bf16 autocast against fp32 (no autocast, float32 matmul precision as found):
  agreement when |L_bf16 − L_fp32| ≤ 0.02 · L_fp32 at every step.
- ``instantiate``: ``soup.flat(h)`` latency ÷ the HBM floor = bank bytes ÷ copy bandwidth (``dst.copy_(src)``,
  read + write bytes counted, measured in the same run), n = 16 and 128, banks of random weights; target ≤ 1.5
  (docs/soup.md). ``soup.specialist(h)`` (the whole path to a standalone model) is timed beside it.
- ``decode``: tokens/s of one specialist's greedy decoding through ``soe.specialists.generate.generate`` (what
  ``soe generate`` runs: no KV cache, the whole context recomputed per token), fp32 as ``soe generate`` runs it and
  under bf16 autocast.
- ``dense_compile``: ``dense_eager`` with the soup's forward under ``torch.compile`` (as ``SoupModule._forward`` does
  with ``model.optim.compile``), against eager in the same process; compile time and graph breaks.

Time: ``--budget-s`` (480) is shared among the selected parts by weight, each part's box being its weight's share of
what is left when it starts (time a part leaves unused goes to those after it). Loops stop early, with what they
measured, when their box runs low; a part still running at the end of its box is stopped (SIGALRM in-process, a kill
in ``--isolate`` mode, the default on CUDA: each part in its own process, so an OOM, a hung compile or a broken CUDA
context costs that part only). A failed part is recorded with its error; the others still report.

Every CUDA-specific branch is the same code with the device as a parameter: bf16 autocast
(``torch.autocast(device.type)``), fused AdamW, pinned host batches copied with non_blocking, torch.compile, device
synchronize and device events for timing, the device's peak-memory counter. On a CPU-only torch, pinning and events
need an accelerator: those two calls are made and their refusal is recorded (``branches`` in the JSON), the copy
then being pageable and the clock the wall clock after synchronize. Test hooks: SOE_GPU_CHECK_FAIL=part[,part] makes
those parts raise, SOE_GPU_CHECK_HANG=part[,part] makes them hang until their box ends.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from bench.common import machine
from soe.core.model import ModelConfig
from soe.core.soup import SoupConfig, SoupOfExperts
from soe.specialists.generate import generate
from soe.train.bank_update import BankAdamW
from soe.train.module import SoupModule
from soe.train.optim import OptimConfig, make_optimizer

REPO = Path(__file__).resolve().parents[1]
K = 9  # domains (the demo corpus); the 110M configs take k from their data
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12}  # dense bf16 tensor-core FLOP/s
MFU_TARGET = 0.40
LOSS_RTOL = 0.02
INSTANTIATE_TARGET = 1.5
FAIL_ENV, HANG_ENV = "SOE_GPU_CHECK_FAIL", "SOE_GPU_CHECK_HANG"
GiB = 2**30


# ----------------------------------------------------------------------------------------------------- sizes
@dataclass
class Sizes:
    net: ModelConfig
    seq: int
    batch: int
    n: int  # experts of the 1-GPU soup
    n_big: int  # the second bank size of the instantiation part
    h_per_step: int  # M of the memory part
    router_hidden: int
    router_depth: int
    lr: float
    weight_decay: float
    Ms: tuple = (1, 4, 16)
    warmup: int = 3  # untimed steps before timing
    iters: int = 5  # steps per timed block
    repeats: int = 3  # timed blocks (median)
    loss_steps: int = 20
    decode_tokens: int = 128
    prompt_tokens: int = 4
    copy_bytes: int = GiB  # copy-bandwidth buffer
    memory_steps: int = 3
    source: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["net"] = self.net.to_dict()
        d["params"] = self.net.num_params()
        return d


def real_sizes() -> Sizes:
    soe_cfg = yaml.safe_load((REPO / "configs/soe-110m-1gpu.yaml").read_text())
    dense_cfg = yaml.safe_load((REPO / "configs/dense-110m.yaml").read_text())
    net = soe_cfg["model"]["net"]
    if dense_cfg["model"]["net"] != net or dense_cfg["data"]["seq_len"] != soe_cfg["data"]["seq_len"]:
        raise ValueError("configs/dense-110m.yaml and configs/soe-110m-1gpu.yaml disagree on the model's shape")
    soup, optim, data = soe_cfg["model"]["soup"], soe_cfg["model"]["optim"], soe_cfg["data"]
    return Sizes(
        net=ModelConfig(**net),
        seq=data["seq_len"],
        batch=data["batch_size"],
        n=soup["n_experts"],
        n_big=128,
        h_per_step=data.get("h_per_step", 1),
        router_hidden=soup["router_hidden"],
        router_depth=soup["router_depth"],
        lr=optim["lr"],
        weight_decay=optim["weight_decay"],
        source="configs/soe-110m-1gpu.yaml",
    )


def smoke_sizes() -> Sizes:
    """Tiny: every part and branch of the real run, seconds on one CPU thread."""
    net = ModelConfig(vocab_size=256, n_layer=2, n_head=2, d_model=32, max_seq_len=32)
    return Sizes(
        net=net,
        seq=16,
        batch=16,
        n=16,
        n_big=128,
        h_per_step=4,
        router_hidden=32,
        router_depth=2,
        lr=3e-3,
        weight_decay=0.1,
        warmup=1,
        iters=2,
        repeats=2,
        decode_tokens=8,
        copy_bytes=32 * 2**20,
        memory_steps=2,
        source="smoke (tiny)",
    )


# ---------------------------------------------------------------------------------------------------- device
class Device:
    """The device-dependent primitives; every part calls these, whatever the device."""

    def __init__(self, name: str):
        self.dev = torch.device(name)
        if self.dev.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(
                "gpu_check: --device cuda but torch sees no CUDA device (torch "
                f"{torch.__version__}); use --device cpu with --smoke"
            )
        self.mod = torch.get_device_module(self.dev.type)  # torch.cuda or torch.cpu: same calls
        self.branches: dict[str, str] = {
            "autocast": f"torch.autocast({self.dev.type!r}, dtype=torch.bfloat16)",
            "fused_adamw": "OptimConfig(fused=True)",
        }
        try:
            self._probe_events()
            self.events = True
            self.branches["timing"] = "device events (torch.Event), after synchronize"
        except RuntimeError as e:
            if self.dev.type == "cuda":
                raise
            self.events = False
            self.branches["timing"] = f"wall clock after synchronize (torch.Event refused: {e})"
        if self.dev.type == "cuda":
            self.branches["memory_probe"] = "torch.cuda.max_memory_allocated after reset_peak_memory_stats"
        else:
            self.branches["memory_probe"] = "VmHWM after /proc/self/clear_refs (resident peak of the process)"

    @property
    def name(self) -> str:
        return torch.cuda.get_device_name(self.dev) if self.dev.type == "cuda" else "CPU"

    def _event(self):
        return torch.Event(device=self.dev, enable_timing=True)

    def _probe_events(self) -> None:
        a, b = self._event(), self._event()
        a.record()
        b.record()
        b.synchronize()
        a.elapsed_time(b)

    def sync(self) -> None:
        self.mod.synchronize()

    def autocast(self, enabled: bool = True):
        return torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=enabled)

    def pinned(self, t: torch.Tensor) -> torch.Tensor:
        """Page-locked host memory (an asynchronous host→device copy, as a DataLoader with pin_memory gives)."""
        try:
            out = t.pin_memory()
            self.branches["pinned"] = "pin_memory() + to(non_blocking=True)"
            return out
        except RuntimeError as e:
            if self.dev.type == "cuda":
                raise
            self.branches["pinned"] = f"pageable + to(non_blocking=True) (pin_memory refused: {e})"
            return t

    def to_dev(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dev, non_blocking=True)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.dev).manual_seed(seed)

    def timed(self, fn, iters: int) -> float:
        """Seconds per call of fn over iters calls."""
        self.sync()
        ev = (self._event(), self._event()) if self.events else None
        t0 = time.perf_counter()
        if ev:
            ev[0].record()
        for _ in range(iters):
            fn()
        if ev:
            ev[1].record()
        self.sync()
        wall = time.perf_counter() - t0
        return (ev[0].elapsed_time(ev[1]) / 1e3 if ev else wall) / iters

    # memory: absolute bytes (allocated on CUDA, resident on CPU)
    def mem_now(self) -> int:
        if self.dev.type == "cuda":
            return torch.cuda.memory_allocated(self.dev)
        return _proc_status("VmRSS")

    def reset_peak(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size (Linux ≥ 4.0)

    def mem_peak(self) -> int:
        if self.dev.type == "cuda":
            return torch.cuda.max_memory_allocated(self.dev)
        return _proc_status("VmHWM")

    def free(self) -> None:
        gc.collect()
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()

    def copy_bandwidth(self, nbytes: int, iters: int = 3, repeats: int = 5) -> float:
        """bytes/s of dst.copy_(src) on nbytes, read + write counted (2·nbytes per copy); the best of repeats."""
        src = torch.empty(nbytes // 4, device=self.dev).normal_(generator=self.generator(7))
        dst = torch.empty_like(src)
        self.timed(lambda: dst.copy_(src), 1)  # noqa: F821
        t = min(self.timed(lambda: dst.copy_(src), iters) for _ in range(repeats))  # noqa: F821
        del src, dst
        return 2 * (nbytes // 4) * 4 / t


def _proc_status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


# ------------------------------------------------------------------------------------------------ the pieces
def optim(s: Sizes, bank_update: str = "dense") -> OptimConfig:
    """The config's AdamW (fused, as configs/*-110m*.yaml), constant learning rate (no schedule in a benchmark)."""
    return OptimConfig(lr=s.lr, weight_decay=s.weight_decay, fused=True, bank_update=bank_update)


def soup_module(s: Sizes, d: Device, n: int) -> SoupModule:
    """The training module of the config (n = 0: the dense model), on the device; experts random (never time zeros)."""
    m = SoupModule(
        s.net,
        SoupConfig(n_experts=n, router_hidden=s.router_hidden, router_depth=s.router_depth),
        optim(s),
        n_domains=K,
    ).to(d.dev)
    g = d.generator(1)
    with torch.no_grad():
        for E in m.soup.bank.values():
            E.normal_(0.0, 0.02, generator=g)
    return m


def random_soup(s: Sizes, d: Device, n: int, seed: int = 2) -> SoupOfExperts:
    """A soup built on the meta device and materialised on the device with random weights: no host copy of the bank
    (n = 128 at 110M is 56 GB in fp32)."""
    with torch.device("meta"):
        soup = SoupOfExperts(
            s.net, K, SoupConfig(n_experts=n, router_hidden=s.router_hidden, router_depth=s.router_depth)
        )
    soup.to_empty(device=d.dev)
    g = d.generator(seed)
    with torch.no_grad():
        for name, p in soup.named_parameters():
            if name == "shared.no_decay":
                p.fill_(1.0)  # RMSNorm gains
            else:
                p.normal_(0.0, 0.02, generator=g)
    return soup.eval()


def synthetic_tokens(n_batches: int, batch: int, seq: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """(n_batches, batch, seq + 1) token ids of a learnable chain: next = table[current], 10 % uniform noise."""
    g = torch.Generator().manual_seed(seed)
    rows = n_batches * batch
    table = torch.randint(0, vocab, (vocab,), generator=g)
    noise = torch.rand(rows, seq + 1, generator=g) < 0.1
    rand = torch.randint(0, vocab, (rows, seq + 1), generator=g)
    t = torch.empty(rows, seq + 1, dtype=torch.long)
    t[:, 0] = rand[:, 0]
    for j in range(1, seq + 1):
        t[:, j] = torch.where(noise[:, j], rand[:, j], table[t[:, j - 1]])
    return t.view(n_batches, batch, seq + 1)


class Batches:
    """Pinned host batches, each step's copied to the device with non_blocking (as Lightning's loader gives them)."""

    def __init__(self, d: Device, s: Sizes, n_batches: int, seed: int = 0):
        self.d = d
        self.host = [
            d.pinned(b.contiguous()) for b in synthetic_tokens(n_batches, s.batch, s.seq, s.net.vocab_size, seed)
        ]
        self.i = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.d.to_dev(self.host[self.i % len(self.host)])
        self.i += 1
        return b[:, :-1], b[:, 1:]


def domain_weights(M: int, d: Device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(M, K, generator=g), -1).to(d.dev)


LIBRARY_PATH = "SoupOfExperts.forward(idx, h=(M, k))"
FALLBACK_PATH = "fallback: Θ(h) instantiated outside autocast (fp32), each group's forward under autocast"


class Stepper:
    """One training step as SoupModule.training_step and Lightning's automatic optimization run it: forward under
    bf16 autocast (amp; trainer.precision=bf16-mixed autocasts the forward only), backward, norm clip (the factored
    bank's share from (α, G), as SoupModule.configure_gradient_clipping), AdamW, zero_grad.

    If the library's path fails on the first step of a soup under autocast (it did on torch 2.13: autocast runs the
    instantiation's addmm in bf16, and the bank's backward then multiplies fp32 α by a bf16 gradient), the error is
    kept in ``library_error`` and the steps go on by the fallback (FALLBACK_PATH), so that the timings still come."""

    def __init__(
        self,
        soup: SoupOfExperts,
        o: OptimConfig,
        d: Device,
        amp: bool = True,
        compile_backend: str | None = None,
        clip: float = 1.0,
    ):
        self.soup, self.d, self.amp, self.clip = soup, d, amp, clip
        self.opt = make_optimizer(soup, o)
        self.params = list(soup.parameters())
        # SoupModule._forward with model.optim.compile: torch.compile(self.soup) (its default backend: inductor)
        self.fwd = torch.compile(soup, backend=compile_backend) if compile_backend else soup
        self.steps = 0
        self.library_error: str | None = None
        self.path = LIBRARY_PATH

    def _loss(self, x, y, h) -> torch.Tensor:
        if self.library_error is None:
            with self.d.autocast(self.amp):
                return self.fwd(x, h=h, targets=y)[1]
        inst = self.soup.instantiate(h)  # fp32, as the dense model's views of S are
        rows = {k: v.unbind(0) for k, v in inst.items()}  # one backward stack per tensor, as forward's unbind
        M = h.shape[0]
        losses = []
        for m, (xm, ym) in enumerate(zip(x.chunk(M), y.chunk(M))):
            with self.d.autocast(self.amp):
                losses.append(self.soup(xm, targets=ym, params={k: r[m] for k, r in rows.items()})[1])
        return torch.stack(losses).mean()

    def step(self, x, y, h) -> torch.Tensor:
        try:
            loss = self._loss(x, y, h)
            loss.backward()
        except RuntimeError as e:
            if self.steps or not (self.amp and self.soup.n and h.ndim == 2) or isinstance(e, torch.OutOfMemoryError):
                raise
            self.opt.zero_grad(set_to_none=True)
            self.library_error, self.path = _err(e), FALLBACK_PATH
            print(f"  [library path failed under autocast, going on by the fallback] {self.library_error}", flush=True)
            loss = self._loss(x, y, h)
            loss.backward()
        self.steps += 1
        if isinstance(self.opt, BankAdamW):
            self.opt.clip_grad_norm_(self.clip)
        else:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    def close(self) -> None:
        self.opt = None
        self.soup.bank_grad_sink = None
        for p in self.params:
            p.grad = None


# ----------------------------------------------------------------------------------------------- the context
class PartTimeout(BaseException):
    """The part's box ran out (BaseException: no `except Exception` inside a part swallows it)."""


@dataclass
class Ctx:
    d: Device
    s: Sizes
    deadline: float  # time.monotonic() by which the part must be done
    peak_flops: float | None
    compile_backend: str
    branches: dict = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def measure(
        self, fn, share: float = 1.0, warmup: int | None = None, iters: int | None = None, repeats: int | None = None
    ) -> dict:
        """Median seconds per call of fn over timed blocks of iters calls, after warmup calls. Uses at most `share`
        of the part's time left: stops after fewer blocks (at least one) when the next would not fit."""
        s = self.s
        warmup, iters, repeats = (s.warmup if warmup is None else warmup), (iters or s.iters), (repeats or s.repeats)
        stop = time.monotonic() + max(0.0, self.left()) * share
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.monotonic()
            times.append(self.d.timed(fn, iters))
            if time.monotonic() + (time.monotonic() - t0) > stop:
                break
        return {
            "s": statistics.median(times),
            "blocks": len(times),
            "iters": iters,
            "spread": (max(times) - min(times)) / statistics.median(times) if len(times) > 1 else None,
        }


def throughput(c: Ctx, step_s: float) -> dict:
    tokens = c.s.batch * c.s.seq
    tps = tokens / step_s
    flops = c.s.net.flops_per_token(c.s.seq) * tps
    return {
        "step_ms": step_s * 1e3,
        "tokens_per_s": tps,
        "tflops": flops / 1e12,
        "mfu": flops / c.peak_flops if c.peak_flops else None,
    }


def _fmt_mfu(r: dict) -> str:
    return "n/a (no peak for this device)" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


# --------------------------------------------------------------------------------------------------- parts
def part_dense_eager(c: Ctx) -> dict:
    s, d = c.s, c.d
    m = soup_module(s, d, 0)
    st = Stepper(m.soup, optim(s), d)
    data, h = Batches(d, s, 4), domain_weights(1, d)
    t = c.measure(lambda: st.step(*data.next(), h))
    r = throughput(c, t["s"])
    ok = None if r["mfu"] is None else r["mfu"] >= MFU_TARGET
    return {
        "params": m.soup.param_counts()["total"],
        "flops_per_token": s.net.flops_per_token(s.seq),
        "peak_flops": c.peak_flops,
        **r,
        "timing": t,
        "mfu_target": MFU_TARGET,
        "pass": ok,
        "summary": f"{r['tokens_per_s']:,.0f} tokens/s, {r['step_ms']:.1f} ms/step, {r['tflops']:.1f} TFLOP/s, "
        f"MFU {_fmt_mfu(r)} ({_verdict(ok)}, target ≥ {100 * MFU_TARGET:.0f} %)",
    }


def part_dense_compile(c: Ctx) -> dict:
    s, d = c.s, c.d
    import torch._dynamo

    c.branches["compile"] = f"torch.compile(soup, backend={c.compile_backend!r})"
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    m = soup_module(s, d, 0)
    eager = Stepper(m.soup, optim(s), d)
    comp = Stepper(m.soup, optim(s), d, compile_backend=c.compile_backend)
    data, h = Batches(d, s, 4), domain_weights(1, d)
    t0 = time.perf_counter()
    comp.step(*data.next(), h)
    d.sync()
    compile_s = time.perf_counter() - t0
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    t_e = c.measure(lambda: eager.step(*data.next(), h), share=0.4)
    t_c = c.measure(lambda: comp.step(*data.next(), h))
    re, rc = throughput(c, t_e["s"]), throughput(c, t_c["s"])
    ok = None if rc["mfu"] is None else rc["mfu"] >= MFU_TARGET
    torch._dynamo.reset()
    rows = [
        ["eager", f"{re['step_ms']:.2f}", f"{re['tokens_per_s']:,.0f}", f"{re['tflops']:.2f}", _fmt_mfu(re)],
        [
            f"torch.compile ({c.compile_backend})",
            f"{rc['step_ms']:.2f}",
            f"{rc['tokens_per_s']:,.0f}",
            f"{rc['tflops']:.2f}",
            _fmt_mfu(rc),
        ],
    ]
    return {
        "backend": c.compile_backend,
        "compile_s": compile_s,
        "graph_breaks": breaks,
        "eager": re,
        "compiled": rc,
        "speedup": t_e["s"] / t_c["s"],
        "timing": {"eager": t_e, "compiled": t_c},
        "pass": ok,
        "table": {"header": ["mode", "step (ms)", "tokens/s", "TFLOP/s", "MFU"], "rows": rows},
        "summary": f"compiled {rc['tokens_per_s']:,.0f} tokens/s, MFU {_fmt_mfu(rc)} ({_verdict(ok)}); "
        f"{t_e['s'] / t_c['s']:.2f}× eager; compile {compile_s:.1f} s, {breaks} graph breaks",
    }


def part_soe_ratio(c: Ctx) -> dict:
    s, d = c.s, c.d
    dense = soup_module(s, d, 0)
    dst = Stepper(dense.soup, optim(s), d)
    soe = soup_module(s, d, s.n)
    data = Batches(d, s, 4)
    hs = {M: domain_weights(M, d, seed=M) for M in s.Ms}
    bank_bytes = sum(E.numel() * E.element_size() for E in soe.soup.bank.values())
    bw = d.copy_bandwidth(min(s.copy_bytes, max(bank_bytes, 2**20)))
    floor = 7 * bank_bytes / bw  # read E (instantiate) + read E, m, v, ∂E and write E, m, v (one fused update)
    n_cfg = 2 * len(s.Ms)
    t_dense = [c.measure(lambda: dst.step(*data.next(), hs[1]), share=0.5 / (n_cfg + 2))["s"]]
    rows = []
    for u in ("dense", "factored"):
        st = Stepper(soe.soup, optim(s, u), d)
        for M in s.Ms:
            row = {"bank_update": u, "M": M}
            try:
                d.reset_peak()
                done = len(rows)
                t = c.measure(lambda: st.step(*data.next(), hs[M]), share=1.0 / (n_cfg - done + 1))  # noqa: F821
                row.update(
                    status="ok",
                    step_ms=t["s"] * 1e3,
                    timing=t,
                    peak_bytes=d.mem_peak(),
                    path=st.path,
                    library_error=st.library_error,
                )
            except Exception as e:  # one configuration (an OOM at M = 16, say) must not lose the others
                row.update(status="failed", error=_err(e))
                st.opt.zero_grad(set_to_none=True)
                d.free()
            rows.append(row)
        st.close()
        del st
        d.free()
    t_dense.append(c.measure(lambda: dst.step(*data.next(), hs[1]), share=1.0)["s"])
    td = statistics.mean(t_dense)
    table = []
    for r in rows:
        if r["status"] == "ok":
            r["ratio"] = r["step_ms"] / 1e3 / td
            r["overhead_vs_floor"] = (r["step_ms"] / 1e3 - td) / floor
            table.append(
                [
                    r["bank_update"],
                    str(r["M"]),
                    f"{r['step_ms']:.2f}",
                    f"{r['ratio']:.3f}",
                    f"{r['overhead_vs_floor']:.2f}",
                    f"{r['peak_bytes'] / GiB:.2f}",
                    "ok" if r["library_error"] is None else "ok by the fallback",
                ]
            )
        else:
            table.append([r["bank_update"], str(r["M"]), "", "", "", "", "failed: " + r["error"][:120]])
    ok = [r for r in rows if r["status"] == "ok"]
    summ = ", ".join(f"{r['bank_update'][0]}M{r['M']} {r['ratio']:.2f}" for r in ok)
    lib_errors = sorted({r["library_error"] for r in ok if r.get("library_error")})
    return {
        "n": s.n,
        "bank_bytes": bank_bytes,
        "copy_bw_Bps": bw,
        "floor_s": floor,
        "dense_step_ms": td * 1e3,
        "dense_step_ms_before_after": [t * 1e3 for t in t_dense],
        "rows": rows,
        "library_path": "ok" if not lib_errors else "failed under bf16 autocast: " + "; ".join(lib_errors),
        "table": {
            "header": [
                "bank update",
                "M",
                "step (ms)",
                "SoE ÷ dense",
                "overhead ÷ floor",
                "process peak (GiB)",
                "status",
            ],
            "rows": table,
        },
        "summary": f"n={s.n}, dense {td * 1e3:.2f} ms/step; SoE÷dense (d=dense, f=factored update): {summ}"
        + (f"; {len(rows) - len(ok)} configuration(s) failed" if len(ok) < len(rows) else "")
        + (f"; LIBRARY PATH FAILED under bf16 autocast (timed by the fallback): {lib_errors[0]}" if lib_errors else ""),
    }


def part_memory(c: Ctx) -> dict:
    s, d = c.s, c.d
    M = s.h_per_step
    data = Batches(d, s, 2)
    d.free()
    base = d.mem_now()
    d.reset_peak()
    dense = soup_module(s, d, 0)
    st = Stepper(dense.soup, optim(s), d)
    h1 = domain_weights(1, d)
    for _ in range(s.memory_steps):
        st.step(*data.next(), h1)
    d.sync()
    peak_dense = d.mem_peak() - base
    P = dense.soup.param_counts()["total"]
    A = peak_dense - 16 * P
    st.close()
    del st, dense
    d.free()
    base = d.mem_now()
    soe = soup_module(s, d, s.n)
    counts = soe.soup.param_counts()
    Ps = sum(E.shape[1] for E in soe.soup.bank.values())  # the souped prefix (all of Θ here)
    hM = domain_weights(M, d, seed=M)
    rows = [{"model": "dense (n = 0)", "M": 1, "peak_bytes": peak_dense, "estimate_bytes": 16 * P + A, "ratio": 1.0}]
    for u in ("dense", "factored"):
        d.free()
        d.reset_peak()
        st = Stepper(soe.soup, optim(s, u), d)
        for _ in range(s.memory_steps):
            st.step(*data.next(), hM)
        d.sync()
        peak = d.mem_peak() - base
        est = 16 * counts["total"] + A + 10 * M * Ps - (4 * s.n * Ps if u == "factored" else 0)
        rows.append(
            {
                "model": f"soup n = {s.n}, bank update {u}",
                "M": M,
                "peak_bytes": peak,
                "estimate_bytes": est,
                "ratio": peak / est,
                "path": st.path,
                "library_error": st.library_error,
            }
        )
        st.close()
        del st
    table = [
        [
            r["model"],
            str(r["M"]),
            f"{r['peak_bytes'] / GiB:.3f}",
            f"{r['estimate_bytes'] / GiB:.3f}",
            f"{r['ratio']:.2f}",
            "fallback" if r.get("library_error") else "library",
        ]
        for r in rows
    ]
    return {
        "P": P,
        "soup_params": counts,
        "activations_A": A,
        "rows": rows,
        "probe": d.branches["memory_probe"],
        "formula": "16·N + A + 10·M·P (dense update); − 4·n·P with the factored update; A = dense peak − 16·P",
        "table": {
            "header": ["model", "M", "peak (GiB)", "estimate (GiB)", "measured ÷ estimate", "path"],
            "rows": table,
        },
        "summary": f"A = {A / GiB:.3f} GiB; measured ÷ estimate "
        + ", ".join(f"{r['model'].split(', ')[-1]} {r['ratio']:.2f}" for r in rows[1:]),
    }


def part_bf16_vs_fp32(c: Ctx) -> dict:
    s, d = c.s, c.d
    data, h = Batches(d, s, s.loss_steps, seed=3), domain_weights(1, d)
    losses = {}
    for name, amp in (("fp32", False), ("bf16", True)):
        m = soup_module(s, d, 0)  # the same init every time (SoupConfig.init_seed)
        st = Stepper(m.soup, optim(s), d, amp=amp)
        data.i = 0
        losses[name] = [float(st.step(*data.next(), h)) for _ in range(s.loss_steps)]
        st.close()
        del st, m
        d.free()
    rel = [abs(b - f) / abs(f) for f, b in zip(losses["fp32"], losses["bf16"])]
    ok = max(rel) <= LOSS_RTOL
    rows = [
        [str(i), f"{f:.4f}", f"{b:.4f}", f"{r:.2e}"]
        for i, (f, b, r) in enumerate(zip(losses["fp32"], losses["bf16"], rel))
    ]
    return {
        "losses": losses,
        "rel_diff": rel,
        "max_rel_diff": max(rel),
        "tolerance": LOSS_RTOL,
        "pass": ok,
        "fp32_matmul_precision": torch.get_float32_matmul_precision(),
        "table": {"header": ["step", "fp32 loss", "bf16 loss", "|Δ| ÷ fp32"], "rows": rows},
        "summary": f"max |Δ|/L = {max(rel):.2e} over {s.loss_steps} steps ({_verdict(ok)}, tolerance {LOSS_RTOL}); "
        f"fp32 {losses['fp32'][0]:.3f} → {losses['fp32'][-1]:.3f}, "
        f"bf16 {losses['bf16'][0]:.3f} → {losses['bf16'][-1]:.3f}",
    }


def part_instantiate(c: Ctx) -> dict:
    s, d = c.s, c.d
    bw = d.copy_bandwidth(s.copy_bytes)
    h = torch.full((K,), 1.0 / K, device=d.dev)
    rows = []
    for i, n in enumerate((s.n, s.n_big)):
        row = {"n": n}
        soup = None
        try:
            soup = random_soup(s, d, n)
            bank_bytes = sum(E.numel() * E.element_size() for E in soup.bank.values())
            floor = bank_bytes / bw
            with torch.no_grad():
                t = c.measure(lambda: soup.flat(h), share=0.6 / (2 - i))  # noqa: F821
            t_spec = c.measure(lambda: soup.specialist(h), share=0.5 / (2 - i), warmup=1, iters=1)  # noqa: F821
            row.update(
                status="ok",
                bank_bytes=bank_bytes,
                floor_s=floor,
                flat_s=t["s"],
                ratio=t["s"] / floor,
                specialist_s=t_spec["s"],
                timing=t,
                **{"pass": t["s"] / floor <= INSTANTIATE_TARGET},
            )
        except Exception as e:
            row.update(status="failed", error=_err(e))
        finally:
            del soup
            d.free()
        rows.append(row)
    table = [
        [
            str(r["n"]),
            f"{r['bank_bytes'] / 1e9:.3f}",
            f"{bw / 1e9:.1f}",
            f"{r['floor_s'] * 1e3:.3f}",
            f"{r['flat_s'] * 1e3:.3f}",
            f"{r['ratio']:.2f}",
            f"{r['specialist_s'] * 1e3:.2f}",
            _verdict(r["pass"]),
        ]
        if r["status"] == "ok"
        else [str(r["n"]), "", "", "", "", "", "", "failed: " + r["error"][:120]]
        for r in rows
    ]
    okr = [r for r in rows if r["status"] == "ok"]
    return {
        "copy_bw_Bps": bw,
        "rows": rows,
        "target": INSTANTIATE_TARGET,
        "formula": "floor = bank bytes ÷ copy bandwidth (dst.copy_(src), read + write bytes counted)",
        "table": {
            "header": [
                "n",
                "bank (GB)",
                "copy (GB/s)",
                "floor (ms)",
                "flat(h) (ms)",
                "ratio",
                "specialist(h) (ms)",
                f"≤ {INSTANTIATE_TARGET}",
            ],
            "rows": table,
        },
        "summary": f"copy {bw / 1e9:.1f} GB/s; flat(h) ÷ floor "
        + ", ".join(f"n={r['n']} {r['ratio']:.2f} ({_verdict(r['pass'])})" for r in okr)
        + ("" if len(okr) == len(rows) else f"; {len(rows) - len(okr)} size(s) failed"),
    }


def part_decode(c: Ctx) -> dict:
    s, d = c.s, c.d
    from tokenizers import Tokenizer, models, pre_tokenizers

    soup = random_soup(s, d, s.n)
    net = soup.specialist(domain_weights(1, d)[0])
    del soup
    d.free()
    N = min(s.decode_tokens, s.net.max_seq_len - s.prompt_tokens)
    prompt = " ".join(f"t{i}" for i in range(1, s.prompt_tokens + 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # a word-level tokenizer over the whole vocabulary: "t<i>" is token i, so every generated id decodes
        tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(s.net.vocab_size)}, unk_token="t0"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok_file = Path(tmp) / "tokenizer.json"
        tok.save(str(tok_file))
        out = {}

        def run(n_new):  # eos_id = -1 is never generated: exactly n_new tokens, as `soe generate` with no EOS
            out["text"] = generate(net, tok_file, eos_id=-1, prompt=prompt, max_new_tokens=n_new, temperature=0.0)

        for name, amp in (("fp32 (as soe generate)", False), ("bf16 autocast", True)):
            with d.autocast(amp):
                t = c.measure(lambda: run(N), share=0.5 if not amp else 1.0, warmup=1, iters=1)
            n_out = len(out["text"][len(prompt) :].split())  # generate returns prompt + decode(new ids)
            if n_out != N:
                raise RuntimeError(f"generate returned {n_out} new tokens, expected {N}")
            rows.append({"precision": name, "new_tokens": N, "s": t["s"], "tokens_per_s": N / t["s"], "timing": t})
    table = [[r["precision"], str(r["new_tokens"]), f"{r['s']:.3f}", f"{r['tokens_per_s']:,.1f}"] for r in rows]
    return {
        "prompt_tokens": s.prompt_tokens,
        "rows": rows,
        "kv_cache": False,
        "table": {"header": ["precision", "new tokens", "seconds", "tokens/s"], "rows": table},
        "summary": ", ".join(f"{r['precision']} {r['tokens_per_s']:,.1f} tokens/s" for r in rows)
        + f" ({N} greedy tokens after {s.prompt_tokens}, no KV cache)",
    }


# name: (weight of the budget, function); run in this order
PARTS = {
    "dense_eager": (1.0, part_dense_eager),
    "soe_ratio": (3.0, part_soe_ratio),
    "memory": (1.5, part_memory),
    "bf16_vs_fp32": (1.0, part_bf16_vs_fp32),
    "instantiate": (1.0, part_instantiate),
    "decode": (1.0, part_decode),
    "dense_compile": (3.5, part_dense_compile),
}
RESERVE_S = 5.0  # kept back from the budget for writing the outputs
MIN_BOX_S = 1.0  # a part offered less is skipped


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()[:2000]


def _injected(name: str, env: str) -> bool:
    return name in {p.strip() for p in os.environ.get(env, "").split(",") if p.strip()}


# ----------------------------------------------------------------------------------------------- the runner
def _alarm(signum, frame):
    raise PartTimeout()


def run_part_here(name: str, d: Device, s: Sizes, box: float, peak: float | None, backend: str) -> dict:
    """Run one part in this process within its box; never raises (but KeyboardInterrupt)."""
    c = Ctx(d=d, s=s, deadline=time.monotonic() + box, peak_flops=peak, compile_backend=backend)
    grace = max(3.0, 0.1 * box)
    hard = False
    try:
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, box + grace)
        hard = True
    except ValueError:  # not the main thread: loops still stop by themselves
        old = None
    t0 = time.monotonic()
    rec: dict = {"box_s": box}
    try:
        if _injected(name, FAIL_ENV):
            raise RuntimeError(f"injected failure ({FAIL_ENV})")
        while _injected(name, HANG_ENV):  # until SIGALRM (or, off the main thread, the end of the box)
            time.sleep(0.05)
            if time.monotonic() > c.deadline + grace:
                raise PartTimeout()
        rec.update(status="ok", result=PARTS[name][1](c))
    except PartTimeout:
        rec.update(status="timeout", error=f"stopped at the end of its box ({box + grace:.0f} s)")
    except Exception as e:
        rec.update(status="failed", error=_err(e), traceback=traceback.format_exc()[-4000:])
    finally:
        if hard:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    rec["seconds"] = time.monotonic() - t0
    rec["branches"] = {**d.branches, **c.branches}
    rec["env"] = env(d, peak)
    try:
        d.free()
    except Exception:
        pass
    return rec


def run_part_child(name: str, args: argparse.Namespace, box: float) -> dict:
    """Run one part in a child process (`--child`), killed if it outlives its box."""
    grace = max(5.0, 0.1 * box)
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "part.json"
        cmd = [
            sys.executable,
            "-m",
            "bench.gpu_check",
            "--child",
            name,
            "--child-out",
            str(res),
            "--child-deadline",
            str(time.time() + box),
            "--device",
            args.device,
            "--compile-backend",
            args.compile_backend,
        ]
        cmd += ["--smoke"] if args.smoke else []
        cmd += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, cwd=REPO, timeout=box + 2 * grace)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = None
        if res.exists():
            rec = json.loads(res.read_text())
        elif rc is None:
            rec = {"status": "timeout", "error": f"child process killed after {box + 2 * grace:.0f} s"}
        else:
            rec = {
                "status": "failed",
                "error": f"child process exited with status {rc} without a result (its output is above)",
            }
        rec.update(box_s=box, seconds=time.monotonic() - t0, isolated=True)
        return rec


def render(report: dict) -> str:
    env = report
    lines = [
        f"# GPU check (`bench/gpu_check.py`{' --smoke' if env['smoke'] else ''})",
        "",
        f"- device: {env['device_name']} (`--device {env['device']}`); {env['machine']}",
        f"- sizes: {env['sizes']['source']}: {env['sizes']['params'] / 1e6:.2f}M params "
        f"(L={env['sizes']['net']['n_layer']}, d={env['sizes']['net']['d_model']}, "
        f"V={env['sizes']['net']['vocab_size']}), seq {env['sizes']['seq']} × batch {env['sizes']['batch']}, "
        f"n = {env['sizes']['n']} / {env['sizes']['n_big']}, k = {K}",
        f"- budget {env['budget_s']:.0f} s, used {env['elapsed_s']:.1f} s; parts "
        f"{'each in its own process' if env['isolate'] else 'in one process'}; "
        f"{env['started']}",
        "",
        "| part | status | seconds / box | result |",
        "|---|---|---|---|",
    ]
    for name, rec in env["parts"].items():
        res = rec.get("result", {})
        what = res.get("summary", "") if rec["status"] == "ok" else rec.get("error", "")
        lines.append(
            f"| {name} | {rec['status']} | {rec.get('seconds', 0):.1f} / {rec.get('box_s', 0):.0f} | "
            f"{what.replace('|', chr(92) + '|')} |"
        )
    for name, rec in env["parts"].items():
        tab = rec.get("result", {}).get("table")
        if tab:
            lines += [
                "",
                f"### {name}",
                "",
                "| " + " | ".join(h.replace("|", chr(92) + "|") for h in tab["header"]) + " |",
                "|" + "---|" * len(tab["header"]),
            ]
            lines += ["| " + " | ".join(c.replace("|", chr(92) + "|") for c in row) + " |" for row in tab["rows"]]
    lines += ["", "Branches taken: " + "; ".join(f"{k}: {v}" for k, v in sorted(env["branches"].items())), ""]
    return "\n".join(lines)


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(render(report))


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds on CPU): every part and branch")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    ap.add_argument("--out", default="bench/out/gpu_check", help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--budget-s", type=float, default=480.0, help="seconds for all parts together")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of: " + ",".join(PARTS))
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (MFU's denominator)")
    ap.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of dense_compile (inductor, as SoupModule; aot_eager: cheap, no codegen)",
    )
    iso = ap.add_mutually_exclusive_group()
    iso.add_argument(
        "--isolate",
        dest="isolate",
        action="store_true",
        default=None,
        help="each part in its own process (default on cuda)",
    )
    iso.add_argument("--no-isolate", dest="isolate", action="store_false", help="all parts in this process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--child-deadline", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    bad = [p for p in a.parts.split(",") if p not in PARTS]
    if bad:
        ap.error(f"--parts: unknown {bad}; expected some of {list(PARTS)}")
    if a.isolate is None:
        a.isolate = a.device.startswith("cuda")
    return a


def peak_flops(d: Device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if d.dev.type != "cuda":
        return None
    return next((v for k, v in PEAK_BF16.items() if k in d.name), None)


def env(d: Device, peak: float | None) -> dict:
    return {"machine": machine(), "device_name": d.name, "torch": torch.__version__, "peak_flops": peak}


def main(argv=None) -> dict:
    a = parse(argv)
    torch.manual_seed(0)
    s = smoke_sizes() if a.smoke else real_sizes()
    if a.child:  # one part, in this process, for the parent's --isolate
        d = Device(a.device)
        box = max(MIN_BOX_S, a.child_deadline - time.time())
        rec = run_part_here(a.child, d, s, box, peak_flops(d, a.peak_tflops), a.compile_backend)
        Path(a.child_out).write_text(json.dumps(rec, default=str))
        return rec
    t0 = time.monotonic()
    names = a.parts.split(",")
    out = Path(a.out)
    # isolated, this process never touches the device (no CUDA context here): the children describe it
    d = None if a.isolate else Device(a.device)
    report = {
        "machine": "",
        "device": a.device,
        "device_name": a.device,
        "torch": torch.__version__,
        "smoke": a.smoke,
        "isolate": a.isolate,
        "budget_s": a.budget_s,
        "elapsed_s": 0.0,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "peak_flops": None,
        "sizes": s.to_dict(),
        "branches": {},
        "parts": {},
    }
    if d is not None:
        report.update(env(d, peak_flops(d, a.peak_tflops)))
        report["branches"].update(d.branches)
    print(
        f"# gpu_check on {report['device_name']} ({a.device}), {s.source}, budget {a.budget_s:.0f} s, "
        f"parts {names}{', isolated' if a.isolate else ''}",
        flush=True,
    )
    for i, name in enumerate(names):
        left = a.budget_s - (time.monotonic() - t0) - RESERVE_S
        box = left * PARTS[name][0] / sum(PARTS[p][0] for p in names[i:])
        if box < MIN_BOX_S:
            rec = {"status": "skipped", "error": "no budget left", "box_s": max(0.0, box), "seconds": 0.0}
        elif a.isolate:
            rec = run_part_child(name, a, box)
        else:
            rec = run_part_here(name, d, s, box, report["peak_flops"], a.compile_backend)
        report["branches"].update(rec.pop("branches", {}))
        part_env = rec.pop("env", None)
        if part_env and (a.isolate or not report["machine"]):
            report.update(part_env)
        report["parts"][name] = rec
        report["elapsed_s"] = time.monotonic() - t0
        what = rec.get("result", {}).get("summary", "") if rec["status"] == "ok" else rec.get("error", "")
        print(f"[{name}] {rec['status']} in {rec['seconds']:.1f} s (box {box:.0f} s): {what}", flush=True)
        write(report, out)
    print(render(report), flush=True)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}", flush=True)
    return report


if __name__ == "__main__":
    rep = main()
    if "parts" in rep:  # not a --child (whose result file is its answer): non-zero unless every part is ok
        sys.exit(0 if all(p["status"] == "ok" for p in rep["parts"].values()) else 1)
