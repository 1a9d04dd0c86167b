"""`make bench`: every benchmark in turn, each printing both sides and their ratio (≈ 10 min on 2 CPU cores).

python -m bench.run_all            # all
python -m bench.run_all --quick    # fewer repeats
python -m bench.run_all --only step,memory
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (name, module, args, args for --quick); bench_tokenize / bench_instantiate belong to other owners
# and run when present.
BENCHES = [
    ("step", "bench.bench_step", [], ["--quick"]),
    ("instantiate", "bench.bench_instantiate", [], []),
    ("lightning", "bench.bench_lightning", [], ["--steps", "8"]),
    ("data", "bench.bench_data", [], ["--batches", "50"]),
    ("memory", "bench.bench_memory", [], []),
    ("distributed", "bench.bench_distributed", [], []),
    ("tokenize", "bench.bench_tokenize", [], []),
    ("embed", "bench.bench_embed", [], ["--n", "500", "--k", "16"]),
    ("merge", "bench.bench_merge", [], ["--repeats", "1", "--models", "2"]),
    ("serve", "bench.bench_serve", [], ["--size", "tiny", "--requests", "64"]),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated subset of: " + ",".join(b[0] for b in BENCHES))
    args = ap.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    failed = []
    t_all = time.perf_counter()
    for name, mod, full, quick in BENCHES:
        if only and name not in only:
            continue
        if not (HERE / (mod.split(".")[-1] + ".py")).exists():
            print(f"== {name}: {mod} not present, skipped")
            continue
        print(f"\n== {name} ({mod})", flush=True)
        t0 = time.perf_counter()
        try:
            fn = importlib.import_module(mod).main
            argv_ = quick if args.quick else full
            if inspect.signature(fn).parameters:
                fn(argv_)
            else:  # a main() that reads sys.argv
                saved, sys.argv = sys.argv, [mod] + argv_
                try:
                    fn()
                finally:
                    sys.argv = saved
        except SystemExit as e:  # argparse in a script we do not own
            if e.code not in (0, None):
                failed.append(name)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"   ({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nbench total {time.perf_counter() - t_all:.0f} s; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
