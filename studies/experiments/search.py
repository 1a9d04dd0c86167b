"""A recipe comparison that costs minutes, scored on validation targets, never on the evaluation sets.

    python -m studies.experiments.search --config experiments/search.yaml [--only a,b] [--seed N]
                                     [--table experiments/RECIPE.md]

The config is an ablation YAML (studies/experiments/ablate.py): one experiment and its variants. A variant may
change the soup (``overrides``), the generic baseline (``generic_overrides``) or both (``shared_overrides``,
e.g. the token budget); the generic model of each budget is trained once and reused by every variant that
shares it. Each variant's soup is scored on the prepared data's **validation targets** (``targets:`` in the
data_prep config: per pretraining source, whole documents that never entered a training shard, split into a
small in-house part and a validation part): h is estimated from each target's in-house part (the embedder's
nearest-centroid histogram, as ``soe estimate-weights``), Θ(h) and the generic model are evaluated on the same
windows of its validation part, and one row is appended to the table:

- targets won / lost outside noise (95 % paired bootstrap interval of SoE − generic excludes 0) of N;
- mean SoE − generic over targets, with a 95 % interval (windows resampled within every target);
- the soup at the prior h − generic on the pretraining mixture (its use as a generalist);
- pretraining domains won by their one-hot specialist;
- φ's nonlinearity: ‖Θ(h) − Σ_i h_i Θ(e_i)‖ / ‖Θ(h) − S‖ averaged over the targets' h (0: φ is affine in h,
  so a mixture's specialist is the average of the one-hot ones);
- the variant's wall time (training + scoring).
The specialist sets (data_dir/specialists) are not read: they are for confirming a choice, once. The scoring is
studies/experiments/targets.py; this module plans the variants' runs, trains them and writes the rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

from soe.errors import pop_debug, run_entry
from soe.fileio import atomic_write_json, atomic_write_text
from soe.malloc import keep_freed_memory
from studies.experiments.ablate import load_ablation
from studies.experiments.config import ExperimentConfig, SearchFile, check_files, validate
from studies.experiments.experiment import plan
from studies.experiments.runs import train
from studies.experiments.targets import mean_interval as mean_interval  # re-exported: tests/test_search.py
from studies.experiments.targets import nonlinearity as nonlinearity  # re-exported: tests/test_search.py
from studies.experiments.targets import score, target_weights, targets_of

HEADER = (
    "| variant | change | seed | steps | tokens/param | targets won (lost) outside noise | mean Δ targets [95 %] | "
    "Δ prior mixture | one-hot domains won | φ nonlinearity | wall | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def check_scoring_keys(v: dict, names: list[str], where: str) -> None:
    """A variant's `soup: <variant>` (score that variant's trained runs instead of training: estimation-only
    levers) must name another variant, which it scores instead of training (so it takes no overrides)."""
    if v.get("soup") is not None:
        if v["soup"] not in names or v["soup"] == v["name"]:
            raise ValueError(f"{where}: soup: {v['soup']!r}: expected the name of another variant of {names}")
        if any(v.get(k) for k in ("overrides", "generic_overrides", "shared_overrides")):
            raise ValueError(f"{where}: a variant with soup: {v['soup']!r} reuses its runs, so it takes no overrides")


def row(name: str, change: str, cfg: ExperimentConfig, run: dict, s: dict, wall: float, command: str) -> str:
    n = len(s["targets"])
    lo, hi = s["mean_ci"]
    return (
        f"| {name} | {change} | {cfg.seed} | {run['steps']} | {run['tokens'] / run['params_instantiated']:.0f} | "
        f"{s['won']}/{n} ({s['lost']}) | {s['mean_delta']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
        f"{s['prior_mixture_delta']:+.3f} | {s['onehot_won']}/{s['n_domains']} | {s['nonlinearity']:.2f} | "
        f"{wall / 60:.1f} min | `{command}` |\n"
    )


def variant_config(base: ExperimentConfig, v: dict, seed: int | None) -> tuple[ExperimentConfig, str]:
    """The experiment of one variant and the suffix of its generic run (shared by variants with the same
    baseline settings, so that a generic model is trained once per budget and seed)."""
    shared, gen = list(v.get("shared_overrides", [])), list(v.get("generic_overrides", []))
    cfg = dataclasses.replace(
        base,
        overrides=[*base.overrides, *shared],
        soe_overrides=list(v.get("overrides", [])),
        generic_overrides=[*base.generic_overrides, *gen],
        seed=base.seed if seed is None else seed,
    )
    key = shared + ["|"] + gen
    suffix = ("-" + hashlib.sha256(json.dumps(key).encode()).hexdigest()[:8]) if shared or gen else ""
    return validate(cfg), suffix + (f"-seed{cfg.seed}" if cfg.seed else "")


def append_row(text: str, line: str) -> str:
    """``text`` with ``line`` added as the last row of its search table (the table is started at the end of
    the file when it has none); other tables and prose are left as they are."""
    head = HEADER.splitlines()[0]
    lines = text.splitlines(keepends=True)
    at = [j for j, x in enumerate(lines) if x.startswith(head)]  # a table's header line, not a quote of it
    if not at:
        return text + ("\n" if text and not text.endswith("\n\n") else "") + HEADER + line
    i = at[0] + 1
    while i < len(lines) and lines[i].startswith("|"):
        i += 1
    if lines[i - 1] and not lines[i - 1].endswith("\n"):
        lines[i - 1] += "\n"
    return "".join(lines[:i] + [line] + lines[i:])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m studies.experiments.search", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="search YAML: {experiment: {...}, out: DIR, variants: [...]}")
    ap.add_argument("--only", default=None, help="comma-separated variant names to run (default: all)")
    ap.add_argument(
        "--seed", type=int, default=None, help="seed of every run (data stream, init; default: the config's)"
    )
    ap.add_argument("--table", default="experiments/RECIPE.md", help="markdown file the rows are appended to")
    return ap


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # an entry point: freed memory stays in the process (soe/malloc.py)
    argv, debug = pop_debug(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    return run_entry("studies.experiments.search", lambda: _main(args), debug)


def load_search(path: str) -> tuple[ExperimentConfig, Path, list[dict]]:
    """An ablation YAML whose variants may also carry ``generic_overrides``, ``shared_overrides``, ``soup`` and
    ``temperature`` (`SearchVariant`); every field checked."""
    base, out, variants = load_ablation(path, SearchFile)
    names = [v["name"] for v in variants]
    for i, v in enumerate(variants):
        check_scoring_keys(v, names, f"{path}: variants[{i}]")
    return base, out, variants


def _main(args: argparse.Namespace) -> int:
    base, out, variants = load_search(args.config)
    check_files(base, f"{args.config}: experiment")
    names = [v["name"] for v in variants]
    by_name = {v["name"]: v for v in variants}
    only = [x for x in args.only.split(",") if x] if args.only else names
    missing = sorted(set(only) - set(names))
    if missing or not only:
        raise ValueError(f"--only {args.only!r}: expected comma-separated variant names of {args.config}: {names}")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed {args.seed}: expected a non-negative integer")
    table = Path(args.table)
    if table.exists() and not table.is_file():
        raise IsADirectoryError(f"--table {table} is not a file")
    data_dir = Path(base.data_dir)
    targets_of(data_dir)  # refused before anything trains
    planned = {}
    for v in variants:  # every variant resolved (and its budget checked) before anything trains
        if v["name"] in only:
            trained_by = by_name[v.get("soup", v["name"])]  # estimation-only levers score another variant's runs
            cfg, suffix = variant_config(base, trained_by, args.seed)
            planned[v["name"]] = (
                v,
                cfg,
                suffix,
                trained_by["name"],
                plan(cfg, out / "runs", f"soe-{trained_by['name']}", {}, suffix=suffix),
            )
    weights = {}
    for name, (v, cfg, suffix, soup_name, runs) in planned.items():
        t0 = time.perf_counter()
        trained = {n: train(n, out / "runs", *p) for n, p in runs.items()}
        soe_run, gen_run = trained[f"soe-{soup_name}{suffix}"], trained[f"generic{suffix}"]
        T = v.get("temperature")
        if T not in weights:
            weights[T] = target_weights(data_dir, T)
        s = score(cfg, soe_run["checkpoint"], gen_run["checkpoint"], weights[T])
        wall = time.perf_counter() - t0
        seed = f" --seed {args.seed}" if args.seed is not None else ""
        command = f"python -m studies.experiments.search --config {args.config} --only {name}{seed}"
        line = row(name, v.get("change", " ".join(cfg.soe_overrides) or "—"), cfg, soe_run, s, wall, command)
        vdir = out / f"{name}{'-seed' + str(cfg.seed) if cfg.seed else ''}"
        vdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            vdir / "score.json",
            {
                **s,
                "weights": weights[T],
                "temperature": T,
                "wall_s": wall,
                "runs": trained,
                "config": dataclasses.asdict(cfg),
            },
        )
        atomic_write_text(table, append_row(table.read_text() if table.exists() else "", line))  # never rewritten
        print(f"[search] {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
