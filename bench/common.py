"""Shared pieces of the benchmarks: the configs measured, a step timer, the machine description.

Every benchmark compares two things measured in the same process, interleaved, so a noisy
machine slows both sides alike; we report the median of several repeats.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch

from soe.core.model import ModelConfig
from soe.malloc import keep_freed_memory

# As every soe entry point does (soe/malloc.py): both sides of every ratio run with freed memory kept.
KEEPS_FREED_MEMORY = keep_freed_memory()

# The configurations the issue names. "demo" is configs/demo-cpu.yaml's model at seq 256 (≈5.3M params).
CONFIGS = {
    "tiny": dict(net=ModelConfig(vocab_size=2048, n_layer=2, n_head=2, d_model=64, max_seq_len=64), seq=64, batch=8),
    "demo": dict(
        net=ModelConfig(vocab_size=8192, n_layer=4, n_head=4, d_model=256, max_seq_len=256), seq=256, batch=16
    ),
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{gpu}, Python {platform.python_version()}, freed memory {'kept' if KEEPS_FREED_MEMORY else 'returned'} "
        "(soe/malloc.py)"
    )


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], object]], iters: int, warmup: int = 2, repeats: int = 5
) -> dict[str, float]:
    """Median seconds per call of each fn; calls are interleaved in blocks so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            sync()
            times[k].append((time.perf_counter() - t0) / iters)
    return {k: statistics.median(v) for k, v in times.items()}


def copy_bandwidth(nbytes: int, device: str = "cpu", repeats: int = 5) -> float:
    """Measured bytes/s of ``dst.copy_(src)`` on nbytes (read + write counted: 2·nbytes per copy)."""
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    ok = value >= target if higher_is_better else value <= target
    return f"{'PASS' if ok else 'MISS'} (target {'≥' if higher_is_better else '≤'} {target:g})"
