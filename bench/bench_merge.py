"""Merge time against its memory-traffic floor, and CAT's Gram collection per exemplar token.

    python -m bench.bench_merge [--config demo] [--models 4] [--repeats 3]

The floor of a streaming merge is moving its bytes: reading every input's model.safetensors and writing the
output once, at the machine's measured memcpy bandwidth (the files are in the page cache after the first
run, so memory, not disk, is the floor). Printed: seconds, floor seconds and their ratio for linear, TIES per
tensor and TIES over the whole model (which reads every input twice), then the seconds per exemplar token that
the data-aware methods spend collecting layer-input Gram matrices.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import CONFIGS, copy_bandwidth, machine
from soe.core.model import LlamaLM
from soe.merging.config import parse_config
from soe.merging.features import collect
from soe.merging.merge import merge
from soe.specialists.export import save_specialist


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="demo", choices=sorted(CONFIGS))
    ap.add_argument("--models", type=int, default=4, help="fine-tuned models merged")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--exemplar-tokens", type=int, default=4096)
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    net = CONFIGS[a.config]["net"]
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tokenizer.json").write_text(json.dumps({"stand-in": True}))
        torch.manual_seed(0)
        base = {k: v.detach().clone() for k, v in LlamaLM(net).named_parameters()}
        dirs = []
        for u in range(a.models + 1):
            p = base if u == 0 else {k: v + 0.01 * torch.randn_like(v) for k, v in base.items()}
            dirs.append(
                str(
                    save_specialist(
                        root / f"m{u}", p, net, tokenizer_file=root / "tokenizer.json", eos_id=0, info={}, fmt="soe"
                    )
                )
            )
        size = Path(dirs[0], "model.safetensors").stat().st_size
        bw = copy_bandwidth(size)
        print(
            f"{a.config}: {sum(v.numel() for v in base.values()) / 1e6:.2f}M params, {size / 1e6:.1f} MB per model, "
            f"{a.models} models + base; memcpy {bw / 1e9:.1f} GB/s (read+write)"
        )
        print(f"{'method':<18}{'seconds':>9}{'floor s':>9}{'ratio':>8}")
        for name, method, params, passes in (
            ("linear", "linear", {}, 1),
            ("ties (tensor)", "ties", {}, 1),
            ("ties (model)", "ties", {"trim": "model"}, 2),
        ):
            raw = {
                "merge_method": method,
                "models": [{"model": d, "parameters": {"density": 0.3}} for d in dirs[1:]],
                "parameters": params,
            }
            if method != "linear":
                raw["base_model"] = dirs[0]
            cfg = parse_config(raw)
            times = []
            for r in range(a.repeats):
                t0 = time.perf_counter()
                res = merge(cfg, root / f"out-{method}-{len(params)}-{r}", log=None)
                times.append(time.perf_counter() - t0)
            # read every input `passes` times + write the output once, each byte read and written by a copy
            floor = (passes * res.bytes_read + res.bytes_written) / (bw / 2)
            med = statistics.median(times)
            print(f"{name:<18}{med:>9.3f}{floor:>9.3f}{med / floor:>8.1f}")
        m = LlamaLM(net).eval()
        seq = CONFIGS[a.config]["seq"]
        wins = torch.randint(0, net.vocab_size, (max(a.exemplar_tokens // seq, 1), seq))
        t0 = time.perf_counter()
        collect(m, wins)
        gram_s = time.perf_counter() - t0
        with torch.no_grad():
            t0 = time.perf_counter()
            for i in range(0, len(wins), 8):
                m(wins[i : i + 8])
            fwd_s = time.perf_counter() - t0
        print(
            f"Gram collection: {gram_s / wins.numel() * 1e6:.1f} µs per exemplar token "
            f"({wins.numel()} tokens, {gram_s:.2f} s; a plain forward {fwd_s:.2f} s: ratio {gram_s / fwd_s:.1f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
