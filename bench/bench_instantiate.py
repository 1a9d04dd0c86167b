"""Instantiation time of Θ(h) = S + Σ_j α_j·E_j against its memory floor, measured in one run.

    python bench/bench_instantiate.py                 # demo-size model (configs/demo-cpu.yaml), n = 8 and 32
    python bench/bench_instantiate.py --n 8 64 --device cuda

floor = bank bytes ÷ copy bandwidth, where the copy bandwidth is measured here by timing a torch
copy of a tensor the size of the bank (so floor = the time to copy the bank once). Instantiation
must read the whole bank at least once, so ratio = instantiate ÷ floor; target ≤ 1.5 (docs/soup.md, targets).
Also reported: the whole path to a standalone model (`SoupOfExperts.specialist`: instantiate, copy the
shared-only tensors, build the dense LlamaLM), for reference.
Runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from soe.core.model import ModelConfig
from soe.core.soup import SoupConfig, SoupOfExperts

DEMO = ModelConfig(vocab_size=8192, n_layer=4, n_head=4, d_model=256, max_seq_len=128)  # configs/demo-cpu.yaml
K = 9


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, dev: torch.device, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(n: int, cfg: ModelConfig, dev: torch.device, reps: int) -> dict:
    soup = SoupOfExperts(cfg, K, SoupConfig(n_experts=n, router_hidden=128, router_depth=2, expert_init="normal"))
    soup = soup.to(dev).eval()
    bank_bytes = sum(p.numel() * p.element_size() for p in soup.bank.values())
    h = torch.full((K,), 1.0 / K, device=dev)

    src = torch.empty(bank_bytes // 4, dtype=torch.float32, device=dev).normal_()
    dst = torch.empty_like(src)
    t_copy = median_time(lambda: dst.copy_(src), dev, reps)  # noqa: F821
    del src, dst
    bandwidth = bank_bytes / t_copy  # bytes/s
    floor = bank_bytes / bandwidth

    with torch.no_grad():
        t_inst = median_time(lambda: soup.instantiate(h), dev, reps)
    t_full = median_time(lambda: soup.specialist(h), dev, reps)
    return {
        "n": n,
        "P": soup.param_counts()["shared"],
        "bank_MB": bank_bytes / 1e6,
        "copy_GBps": bandwidth / 1e9,
        "floor_ms": floor * 1e3,
        "instantiate_ms": t_inst * 1e3,
        "ratio": t_inst / floor,
        "specialist_ms": t_full * 1e3,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[8, 32], help="bank sizes to measure")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--d-model", type=int, default=DEMO.d_model, help="width (default: the demo model's)")
    ap.add_argument("--n-layer", type=int, default=DEMO.n_layer)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    cfg = ModelConfig(**{**DEMO.to_dict(), "d_model": a.d_model, "n_layer": a.n_layer})
    print(
        f"device={dev} threads={torch.get_num_threads()} model: {cfg.num_params() / 1e6:.2f}M params "
        f"(d={cfg.d_model}, L={cfg.n_layer}, V={cfg.vocab_size}), k={K}, median of {a.reps}"
    )
    print(
        f"{'n':>4} {'bank MB':>9} {'copy GB/s':>10} {'floor ms':>9} {'inst. ms':>9} {'ratio':>6} {'specialist ms':>14}"
    )
    for n in a.n:
        r = bench(n, cfg, dev, a.reps)
        ok = "ok" if r["ratio"] <= 1.5 else "ABOVE TARGET 1.5"
        print(
            f"{r['n']:>4} {r['bank_MB']:>9.1f} {r['copy_GBps']:>10.2f} {r['floor_ms']:>9.2f} {r['instantiate_ms']:>9.2f} "
            f"{r['ratio']:>6.2f} {r['specialist_ms']:>14.2f}  {ok}"
        )


if __name__ == "__main__":
    main()
