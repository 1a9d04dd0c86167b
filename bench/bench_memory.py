"""Peak memory of training steps vs the 16·(n+1)·P-byte estimate (fp32 params + grads + AdamW m, v).

Each configuration runs in a fresh process (peak RSS cannot be reset): it measures RSS after
imports, builds the soup and its optimizer, runs 3 steps, and reports peak − baseline. The dense
run (n = 0) gives the activation/workspace memory A = peak − 16·P; the estimate for the soup is
then 16·(n+1)·P + A, and its ratio to the measured peak says how well the bank's memory is
accounted for (the soup should add nothing beyond its parameters, gradients and AdamW state).

    python -m bench.bench_memory
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from bench.common import CONFIGS, machine, verdict


def hwm() -> int:
    """Peak resident bytes of this process image (VmHWM; unlike ru_maxrss it is not inherited across fork+exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(config: str, n: int, rank: int) -> None:
    import torch

    from bench.bench_step import Stepper

    torch.set_num_threads(2)
    base = hwm()
    c = CONFIGS[config]
    st = Stepper(c["net"], n, c["seq"], c["batch"], rank=rank)
    for _ in range(3):
        st.step()
    peak = hwm()
    counts = st.soup.param_counts()
    print(
        json.dumps(
            {"n": n, "rank": rank, "peak_bytes": peak - base, "params": counts["total"], "P": c["net"].num_params()}
        )
    )


def measure(config: str, n: int, rank: int = 0) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_memory", "--child", config, str(n), str(rank)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=3, metavar=("CONFIG", "N", "RANK"), help=argparse.SUPPRESS)
    ap.add_argument("--config", default="demo", choices=list(CONFIGS))
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return []
    print(f"# bench_memory on {machine()}")
    dense = measure(args.config, 0)
    P = dense["P"]
    act = dense["peak_bytes"] - 16 * P
    print(
        f"[memory] {args.config} dense: peak {dense['peak_bytes'] / 2**20:.0f} MiB = 16·P ({16 * P / 2**20:.0f} MiB) "
        f"+ activations/workspace A = {act / 2**20:.0f} MiB"
    )
    rows = [dense]
    for n, rank in ((4, 0), (8, 0), (16, 0), (8, 8)):
        r = measure(args.config, n, rank)
        est_states = 16 * r["params"]  # = 16·(n+1)·P for full-rank experts (+ the router)
        est = est_states + act
        ratio = r["peak_bytes"] / est
        lr = (
            f" (low-rank r={rank}: {r['params'] / 1e6:.1f}M params vs {(n + 1) * P / 1e6:.1f}M full-rank)"
            if rank
            else ""
        )
        print(
            f"[memory] n={n:3d}{lr}: peak {r['peak_bytes'] / 2**20:6.0f} MiB; estimate 16·params "
            f"{est_states / 2**20:6.0f} MiB + A = {est / 2**20:6.0f} MiB; measured÷estimate = {ratio:.2f} "
            f"→ {verdict(ratio, 1.15)}"
        )
        r["ratio"] = ratio
        rows.append(r)
    return rows


if __name__ == "__main__":
    main()
