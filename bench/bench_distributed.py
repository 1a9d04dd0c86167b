"""2 CPU processes over gloo: DDP and FSDP2 (ModelParallelStrategy + fully_shard) against one process
on the same global batch: losses side by side, max parameter difference, per-rank parameter bytes.

Reuses the launcher of tests/test_distributed.py (the same worker the tests check).

    python -m bench.bench_distributed
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import test_distributed as td

    from bench.common import machine

    print(f"# bench_distributed on {machine()}; 2 processes × batch {td.B}, {td.STEPS} steps")
    out = {}
    for strategy in ("ddp", "fsdp2"):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            ranks = td.launch(Path(tmp), strategy)
            wall = time.perf_counter() - t0
            state, single = td.single_process_on_global_batch(Path(tmp), ranks)
            diff = max(float((ranks[0]["state"][k] - v).abs().max()) for k, v in state.items())
            mean = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
            print(
                f"[dist] {strategy:5s} (launch+fit {wall:.0f} s): losses 2-proc mean "
                f"{[round(x, 5) for x in mean]} vs 1-proc {[round(x, 5) for x in single]}; "
                f"max |Δparam| = {diff:.2e}; per-rank parameter bytes "
                f"{ranks[0]['local_bytes']:,} / {ranks[1]['local_bytes']:,} of {ranks[0]['total_bytes']:,} "
                f"(= {ranks[0]['local_bytes'] / ranks[0]['total_bytes']:.3f} of total; 1/world = 0.5)"
            )
            out[strategy] = {"diff": diff, "fraction": ranks[0]["local_bytes"] / ranks[0]["total_bytes"]}
    return out


if __name__ == "__main__":
    main()
