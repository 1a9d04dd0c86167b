"""Data loader tokens/s ÷ training tokens/s (demo config, same process).

The loader side iterates ``SoupDataModule.train_dataloader()`` (h ~ π, then B windows from mix(h),
memmapped shards) with the training config's workers; the training side times full SoE steps
(n = 8) of the demo model on batches of the same shape. Uses data/demo when prepared, else the
committed data/fixture.

    python -m bench.bench_data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.bench_step import Stepper
from bench.common import CONFIGS, interleaved, machine, verdict
from soe.data.datamodule import SoupDataModule

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="prepared directory (default: data/demo, else data/fixture)")
    ap.add_argument("--batches", type=int, default=200)
    args = ap.parse_args(argv)
    data = args.data or next(str(ROOT / d) for d in ("data/demo", "data/fixture") if (ROOT / d / "meta.json").exists())
    print(f"# bench_data on {machine()}; data {data}")
    c = CONFIGS["demo"]
    dm = SoupDataModule(data, seq_len=c["seq"], batch_size=c["batch"], seed=0)
    it = iter(dm.train_dataloader())
    next(it)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        b = next(it)
    load_s = (time.perf_counter() - t0) / args.batches
    tok = b["tokens"][:, :-1].numel()
    st = Stepper(c["net"], 8, c["seq"], c["batch"])
    train_s = interleaved({"soe": st.step}, iters=2, repeats=3)["soe"]
    ratio = train_s / load_s
    print(
        f"[data] loader {tok / load_s:,.0f} tok/s ({load_s * 1e3:.2f} ms/batch of {tok} tokens)  training "
        f"{tok / train_s:,.0f} tok/s  loader÷training = {ratio:.1f} → {verdict(ratio, 20, higher_is_better=True)}"
    )
    return {"loader_tok_s": tok / load_s, "train_tok_s": tok / train_s, "ratio": ratio}


if __name__ == "__main__":
    main()
