"""``python -m studies.merging --config experiments/merging.yaml --out DIR [--runs RUNS]`` (studies/merging/study.py)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shutil
import sys
import time
from pathlib import Path

from soe.errors import pop_debug, run_entry
from soe.fileio import atomic_write_json, atomic_write_text, read_json
from soe.malloc import keep_freed_memory
from studies.merging.config import MergingConfig, check_files, load_config, validate


def _settings(cfg: MergingConfig) -> dict:
    """What the results depend on (predictions are text, not settings)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "predictions"}


def _prepare_out(cfg: MergingConfig, out: Path, log) -> None:
    """Resume only under the same settings: another configuration's results are moved to ``<out>/stale-<n>``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    if path.is_file():
        old = read_json(path, "experiment settings")
        if old != _settings(cfg):
            changed = sorted(k for k in set(old) | set(_settings(cfg)) if old.get(k) != _settings(cfg).get(k))
            n = 1 + sum(1 for p in out.glob("stale-*"))
            stale = out / f"stale-{n}"
            stale.mkdir()
            for p in list(out.iterdir()):
                if p.name != "runs" and not p.name.startswith("stale-"):
                    shutil.move(str(p), stale / p.name)
            log(f"[merging] settings changed ({', '.join(changed)}): previous results moved to {stale}")
    atomic_write_json(path, _settings(cfg))
    pred = out / "predictions.md"
    if not pred.is_file():  # written once, before anything is fine-tuned
        when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        atomic_write_text(
            pred,
            f"# Predictions, written {when} before the runs\n\n"
            + "".join(f"- **{k}**: {v}\n" for k, v in cfg.predictions.items()),
        )


def run(
    cfg: MergingConfig,
    out: Path,
    runs_dir: Path | None = None,
    source: str = "merging config",
    command: str = "",
    log=print,
) -> dict:
    from soe.train.checkpoint import load_checkpoint
    from studies.experiments.config import ExperimentConfig
    from studies.experiments.experiment import plan
    from studies.experiments.runs import train
    from studies.merging import report
    from studies.merging.claims import verdicts
    from studies.merging.evaluate import Evaluation
    from studies.merging.study import Study, estimate_hs

    validate(cfg, source)
    check_files(cfg, source)
    t0 = time.perf_counter()
    out = Path(out)
    _prepare_out(cfg, out, log)
    runs_dir = runs_dir or out / "runs"
    ecfg = ExperimentConfig(
        data_dir=cfg.data_dir,
        soe_config=cfg.soe_config,
        generic_config=cfg.generic_config,
        max_steps=cfg.max_steps,
        dedicated=False,
        refine=False,
        overrides=list(cfg.overrides),
        seed=cfg.train_seed,
    )
    runs = {
        name: train(name, runs_dir, args, extra, b)
        for name, (args, extra, b) in plan(ecfg, runs_dir, "soe", {}).items()
    }
    soup, hp, _ = load_checkpoint(runs["soe"]["checkpoint"])
    if soup.n == 0:
        raise ValueError(f"{source}: soe_config trains a dense model (n_experts = 0); the experiment needs a soup")
    generic = {
        k: v.detach().clone()
        for k, v in load_checkpoint(runs["generic"]["checkpoint"])[0].specialist(None).state_dict().items()
    }
    domains = list(hp["domain_names"])
    study = Study(cfg, out, soup, generic, domains, estimate_hs(cfg, out, domains), log)
    timings = {}
    for seed in cfg.seeds:
        log(f"[merging] seed {seed}: fine-tuning")
        t = time.perf_counter()
        study.finetune_all(seed)
        timings[f"finetune-{seed}"] = time.perf_counter() - t
    t = time.perf_counter()
    selections = {seed: study.select(seed) for seed in cfg.seeds}  # every choice before any evaluation split is read
    timings["selection"] = time.perf_counter() - t
    results = {}
    for seed in cfg.seeds:
        path = out / f"seed-{seed}" / "evaluation.json"
        results[seed] = (
            read_json(path, "evaluation") if path.is_file() else Evaluation(study, seed, selections[seed]).run()
        )
        atomic_write_json(path, results[seed])
    timings["evaluation"] = time.perf_counter() - t - timings["selection"]
    pred = (out / "predictions.md").read_text().splitlines()[0]
    meta = {
        "config": source,
        "command": command or f"python -m studies.merging --config {source} --out {out}",
        "schedule": study.schedule(),
        "wall_min": (time.perf_counter() - t0) / 60,
        "soup": runs["soe"]["checkpoint"],
        "generic": runs["generic"]["checkpoint"],
        "predicted_at": pred.split("written ")[-1].split(" before")[0],
        "verdicts": verdicts(results, selections, cfg.predictions),
        "timings_s": timings,
    }
    atomic_write_json(
        out / "results.json",
        {
            "meta": meta,
            "teams_h": read_json(out / "teams.json", "teams"),
            "seeds": {str(k): v for k, v in results.items()},
            "selections": {str(k): v for k, v in selections.items()},
        },
    )
    report.write_report(out, cfg, results, selections, meta)
    log(f"[merging] report: {out / 'report.md'} ({meta['wall_min']:.1f} min)")
    return {"results": results, "selections": selections, "meta": meta}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m studies.merging",
        description="Merging soup specialists: methods, bases, stopping, markers (report.md).",
    )
    ap.add_argument("--config", required=True, help="experiment YAML (experiments/merging*.yaml)")
    ap.add_argument("--out", required=True, help="output directory (resumed when it holds a run of the same settings)")
    ap.add_argument(
        "--runs",
        default=None,
        help="training runs to reuse (make merging: merging_out/runs): the soup "
        "and generic model are trained there only if missing or stale",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # an entry point: freed memory stays in the process (soe/malloc.py)
    argv, debug = pop_debug(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    return run_entry("studies.merging", lambda: _main(args, argv), debug)


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    cfg = load_config(args.config)
    check_files(cfg, args.config)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory; expected an output directory")
    runs = Path(args.runs) if args.runs else None
    if runs is not None and not runs.is_dir():
        raise FileNotFoundError(f"--runs {runs} is not a directory")
    run(cfg, out, runs, source=args.config, command="python -m studies.merging " + " ".join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
