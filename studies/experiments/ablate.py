"""Ablations of the soup's training recipe against one generic baseline of the same budget.

    python -m studies.experiments.ablate --config experiments/recipe.yaml [--only name1,name2] [--table experiments/RECIPE.md]

The config holds one experiment (see studies/experiments/experiment.py; usually dedicated: false) and a list of
variants, each a set of train.py overrides for the soup only. Every variant trains one soup with the
same data, seed, steps, batch and evaluation windows; the generic model is trained once and shared.
Each finished variant appends one row to the results table (markdown), with the command that
reproduces it. Rows are never rewritten: negative results stay.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from soe.errors import pop_debug, run_entry
from soe.fileio import atomic_write_text
from soe.malloc import keep_freed_memory
from studies.experiments.config import AblationFile, ExperimentConfig, check_files, load_variants
from studies.experiments.experiment import run
from studies.experiments.report import soe_answer

HEADER = (
    "| variant | change vs naive | steps | domains won (one-hot h) | mean Δ domains | sets won (estimated h) | "
    "mean Δ sets | Δ mixture (prior h) | per-domain Δ | command |\n|---|---|---|---|---|---|---|---|---|---|\n"
)


def summarise(name: str, change: str, res: dict, command: str) -> str:
    """One markdown row; Δ = soup loss − generic loss (nats/token; negative: the soup wins)."""
    dom = {d: r["soe_onehot"] - r["generic"] for d, r in res["domains"].items()}
    sets = {s: soe_answer(r) - r["generic"] for s, r in res["sets"].items()}
    mix = res["mixture"]["soe_prior"] - res["mixture"]["generic"]
    if len(dom) <= 12:
        per_domain = " ".join(f"{d[:5]}{v:+.2f}" for d, v in dom.items())
    else:  # many clustered domains: the spread, not 64 numbers
        q = sorted(dom.values())
        per_domain = f"min {q[0]:+.2f} / median {q[len(q) // 2]:+.2f} / max {q[-1]:+.2f} over {len(q)}"
    won_ci = sum(r.get("ci_soe_refined", r.get("ci_soe_hist", [0, 0]))[1] < 0 for r in res["sets"].values())
    mean = lambda v: sum(v) / len(v) if v else float("nan")
    steps = res["runs"]["soe"]["steps"]
    return (
        f"| {name} | {change} | {steps} | {sum(v < 0 for v in dom.values())}/{len(dom)} | {mean(list(dom.values())):+.3f} | "
        f"{sum(v < 0 for v in sets.values())}/{len(sets)} ({won_ci} outside noise) | {mean(list(sets.values())):+.3f} | {mix:+.3f} | "
        f"{per_domain} | `{command}` |\n"
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m studies.experiments.ablate", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="ablation YAML: {experiment: {...}, out: DIR, variants: [...]}")
    ap.add_argument("--only", default=None, help="comma-separated variant names to run (default: all)")
    ap.add_argument("--table", default="experiments/RECIPE.md", help="markdown file the rows are appended to")
    return ap


def load_ablation(path: str, file_type=AblationFile) -> tuple[ExperimentConfig, Path, list[dict]]:
    """The experiment, output directory and variants of an ablation YAML, every field checked (``file_type``:
    `SearchFile` for a search's variants)."""
    return load_variants(path, file_type)


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # an entry point: freed memory stays in the process (soe/malloc.py)
    argv, debug = pop_debug(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    return run_entry("studies.experiments.ablate", lambda: _main(args), debug)


def _main(args: argparse.Namespace) -> int:
    base, out, variants = load_ablation(args.config)
    check_files(base, f"{args.config}: experiment")
    names = [v["name"] for v in variants]
    only = args.only.split(",") if args.only else names
    missing = set(only) - set(names)
    if missing:
        raise ValueError(f"--only names {sorted(missing)} are not variants of {args.config}: {names}")
    table = Path(args.table)
    if table.exists() and not table.is_file():
        raise IsADirectoryError(f"--table {table} is not a file")
    for v in variants:
        if v["name"] not in only:
            continue
        cfg = dataclasses.replace(base, soe_overrides=list(v.get("overrides", [])))
        res = run(
            cfg,
            out / v["name"],
            runs_dir=out / "runs",
            soe_name=f"soe-{v['name']}",
            source=f"{args.config}: experiment",
        )
        command = f"python -m studies.experiments.ablate --config {args.config} --only {v['name']}"
        row = summarise(v["name"], v.get("change", " ".join(cfg.soe_overrides) or "—"), res, command)
        text = table.read_text() if table.exists() else ""
        if HEADER.splitlines()[0] not in text:  # start the table (after any prose already in the file)
            text += ("\n" if text and not text.endswith("\n\n") else "") + HEADER
        atomic_write_text(table, text + row)  # rows are appended, and a crash never truncates the table
        atomic_write_text(out / v["name"] / "row.md", row)
        print(f"[ablate] {row}", flush=True)
        print(json.dumps(res["mixture"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
