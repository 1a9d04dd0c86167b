"""The comparison protocol: generic vs Soup-of-Experts specialists vs dedicated models.

    python -m studies.experiments --config experiments/demo.yaml [--out DIR] [--runs RUNS_DIR]

Every model sees the same number of training tokens (checked on the resolved configurations before anything
trains: steps × batch × sequence length × accumulation × processes) and instantiates the same dense size:
- generic: the dense model (n = 0) on the natural token-count mixture;
- soe: one soup; for each held-out specialist set, h is estimated from its small in-house sample
  (nearest-centroid histogram), optionally refined on the in-house tokens, and Θ(h) evaluated;
- dedicated: one dense model per specialist set trained on its estimated mixture (CRISP-style), the
  costly upper reference;
- optionally, the generic model and the SoE specialist each fine-tuned briefly on the in-house tokens.
All are evaluated as dense models on the same windows (soe/data/windows.py, ``eval_windows`` of them) of each
set's evaluation split and of each pretraining domain's validation split, by the function ``soe evaluate``
uses. Training runs are resumable and reused only when their resolved configuration, prepared data and soe
version are the ones they were trained under (studies/experiments/runs.py). The experiment config is checked
field by field before anything trains (studies/experiments/config.py). The optional budget curve (shorter runs,
SoE − generic at each budget) is studies/experiments/curve.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from soe.core.weights import parse_weights
from soe.data.shards import load_meta, open_shard
from soe.data.windows import eval_windows
from soe.errors import pop_debug, run_entry
from soe.fileio import atomic_write_json
from soe.malloc import keep_freed_memory
from soe.specialists.estimate import estimate_weights
from soe.specialists.evaluate import paired_interval, window_losses
from soe.specialists.finetune import finetune
from soe.specialists.refine import refine
from soe.train.checkpoint import load_checkpoint
from studies.experiments.config import ExperimentConfig, check_files, load_config, validate
from studies.experiments.curve import budget_curve
from studies.experiments.report import write_report
from studies.experiments.runkey import data_manifest
from studies.experiments.runs import budget, fit_args, resolve, train


# ------------------------------------------------------------------------------------ the protocol
def plan(
    cfg: ExperimentConfig,
    runs_dir: Path,
    soe_name: str,
    dedicated: dict[str, torch.Tensor],
    max_steps: int | None = None,
    suffix: str = "",
) -> dict:
    """Every training run of the experiment, {name: (train.py args, the run's own args, Budget)}, resolved
    before anything trains. Refuses runs that would see different numbers of tokens. ``max_steps``/``suffix``:
    a budget of the curve (runs named ``generic<suffix>``, ``<soe_name><suffix>``)."""
    steps = cfg.max_steps if max_steps is None else max_steps
    # seed means what it says: the data stream and the initialisation change with it, not only seed_everything
    common = [
        f"--data.data_dir={cfg.data_dir}",
        f"--seed_everything={cfg.seed}",
        f"--data.seed={cfg.seed}",
        f"--model.soup.init_seed={cfg.seed}",
    ]
    common += [f"--trainer.max_steps={steps}"] if steps is not None else []
    dense = ["--model.soup.n_experts=0", *cfg.generic_overrides]  # baselines: the same code with no experts
    own = {
        "generic" + suffix: (cfg.generic_config, dense + ["--data.mixture.fixed_h=prior"]),
        soe_name + suffix: (cfg.soe_config, list(cfg.soe_overrides)),
    }
    for s, h in dedicated.items():
        fixed = "[" + ",".join(f"{w:.6g}" for w in h.tolist()) + "]"
        own[f"dedicated-{s}"] = (cfg.generic_config, dense + [f"--data.mixture.fixed_h={fixed}"])
    runs = {}
    for name, (config, extra) in own.items():
        args = fit_args(config, name, runs_dir, common, list(cfg.overrides), extra)
        runs[name] = (args, extra, budget(args, resolve(args, f"run {name}")))
    tokens = {name: b.tokens for name, (_, _, b) in runs.items()}
    if len(set(tokens.values())) > 1:
        raise ValueError(
            "the runs of this experiment would not see the same tokens, so their losses would not be "
            "comparable:\n"
            + "\n".join(f"  {n}: {b.describe()}" for n, (_, _, b) in runs.items())
            + "\nmake steps (max_steps), data.batch_size, data.seq_len and accumulation agree"
        )
    return runs


def run(
    cfg: ExperimentConfig,
    out: Path,
    runs_dir: Path | None = None,
    soe_name: str = "soe",
    source: str = "experiment config",
) -> dict:
    """Train what is missing, evaluate, write out/results.json and out/report.md. ``runs_dir`` (default
    out/runs) may be shared between experiments so that e.g. ablations reuse one generic run. ``source``
    names the config in errors."""
    validate(cfg, source)  # callers may have changed fields after loading
    check_files(cfg, source)
    runs_dir = runs_dir or out / "runs"
    data_dir = Path(cfg.data_dir)
    meta = load_meta(data_dir)
    domains = list(meta.domains)
    spec_dir = data_dir / "specialists"
    spec_meta = load_meta(spec_dir) if (spec_dir / "meta.json").is_file() else None
    sets = list(spec_meta.domains) if spec_meta else []
    if not sets:
        print(f"[experiment] {data_dir} has no specialist sets: comparing on pretraining domains only")

    # ---- h of each specialist set from its in-house sample (the embedder only: no model needed yet)
    estimates = {s: estimate_weights(data_dir, str(spec_dir / s / "inhouse.jsonl")) for s in sets}
    h_hist = {s: parse_weights(e.weights, domains) for s, e in estimates.items()}

    # ---- every training run, resolved and checked for equal tokens before anything trains
    planned = plan(cfg, runs_dir, soe_name, h_hist if cfg.dedicated else {})
    main_steps = next(iter(planned.values()))[2].steps
    if cfg.budgets and cfg.budgets[-1] >= main_steps:
        raise ValueError(
            f"{source}: budgets: expected step counts below the runs' {main_steps} steps "
            f"(the main runs are the curve's last point), got {cfg.budgets}"
        )
    curve_plans = {b: plan(cfg, runs_dir, soe_name, {}, max_steps=b, suffix=f"-{b}steps") for b in cfg.budgets}
    out.mkdir(parents=True, exist_ok=True)  # only once every input has been checked
    runs = {
        ("soe" if name == soe_name else name): train(name, runs_dir, args, extra, b)
        for name, (args, extra, b) in planned.items()
    }
    soup, hp, _ = load_checkpoint(runs["soe"]["checkpoint"])
    generic_soup = load_checkpoint(runs["generic"]["checkpoint"])[0]  # n = 0: Θ is the same for every h
    generic = generic_soup.specialist(None)
    T = soup.net_cfg.max_seq_len

    def wloss(net, shard) -> np.ndarray:  # the rule of every reported loss: soe.specialists.evaluate
        return window_losses(net, eval_windows(shard, T, cfg.eval_windows))

    def loss(net, shard) -> float:
        return float(wloss(net, shard).mean())

    # ---- specialist sets: histogram h (and refined h), dedicated models, fine-tuned models
    results: dict = {
        "sets": {},
        "domains": {},
        "runs": runs,
        "config": dataclasses.asdict(cfg),
        "tokens_per_run": runs["soe"]["tokens"],
        "eval": {"windows": cfg.eval_windows, "seq_len": T},
        "data": {"data_dir": str(data_dir), **data_manifest(data_dir)},
    }
    main_windows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for s in sets:
        h = h_hist[s]
        evalset = open_shard(spec_dir, spec_meta, s, "val")
        win = {"generic": wloss(generic, evalset), "soe_hist": wloss(soup.specialist(h), evalset)}
        row = {
            "h_hist": estimates[s].weights,
            "alpha_hist": soup.coefficients(h).tolist(),
            "n_docs": estimates[s].n_docs,
        }
        stream = np.asarray(open_shard(spec_dir, spec_meta, s, "train"), dtype=np.int64)  # in-house tokens
        if cfg.refine:
            ref = refine(soup, h, stream, domains, steps=cfg.refine_steps)
            win["soe_refined"] = wloss(soup.specialist(parse_weights(ref.weights, domains)), evalset)
            row.update(
                h_refined=ref.weights,
                refine_fit=[ref.fit_loss_start, ref.fit_loss],
                refine_holdout=[ref.holdout_loss_start, ref.holdout_loss],
            )
        if cfg.dedicated:
            win["dedicated"] = wloss(load_checkpoint(runs[f"dedicated-{s}"]["checkpoint"])[0].specialist(None), evalset)
        row.update({m: float(w.mean()) for m, w in win.items()}, windows=len(win["generic"]))
        for m in ("soe_hist", "soe_refined", "dedicated"):  # 95 % paired bootstrap interval of m − generic
            if m in win:
                row[f"ci_{m}"] = paired_interval(win[m], win["generic"], cfg.bootstrap, seed=cfg.seed)
        if cfg.finetune:
            for key, net in (("generic_ft", generic_soup.specialist(None)), ("soe_ft", soup.specialist(h))):
                ft = finetune(
                    net,
                    stream,
                    steps=cfg.finetune_steps,
                    lr=cfg.finetune_lr,
                    batch_size=cfg.finetune_batch_size,
                    seq_len=T,
                    seed=cfg.seed,
                )
                win[key] = wloss(net, evalset)
                row[key], row[key + "_run"] = float(win[key].mean()), dataclasses.asdict(ft)
            row["ci_soe_ft"] = paired_interval(win["soe_ft"], win["generic_ft"], cfg.bootstrap, seed=cfg.seed)
        results["sets"][s] = row
        main_windows[s] = (win["generic"], win["soe_hist"])  # the curve's last point: not evaluated twice
        print(
            f"[experiment] {s}: "
            + ", ".join(
                f"{m}={row[m]:.3f}"
                for m in ("generic", "soe_hist", "soe_refined", "dedicated", "generic_ft", "soe_ft")
                if m in row
            )
        )

    # ---- pretraining domains: the specialist at the one-hot h vs generic; soup at the prior
    prior = parse_weights("prior", domains, meta.prior("train"))
    at_prior = soup.specialist(prior)
    for i, d in enumerate(domains):
        val = open_shard(data_dir, meta, d, "val")
        onehot = parse_weights(d, domains)
        results["domains"][d] = {
            "prior_weight": float(prior[i]),
            "generic": loss(generic, val),
            "soe_onehot": loss(soup.specialist(onehot), val),
            "soe_prior": loss(at_prior, val),
            "alpha_onehot": soup.coefficients(onehot).tolist(),
        }
    results["curve"] = budget_curve(
        cfg, curve_plans, runs, soe_name, sets, h_hist, spec_dir, spec_meta, wloss, main_windows
    )
    dom = results["domains"]
    results["mixture"] = {
        m: sum(v["prior_weight"] * v[m] for v in dom.values()) for m in ("generic", "soe_prior", "soe_onehot")
    }
    atomic_write_json(out / "results.json", results)
    write_report(results, out, hp["domain_names"])
    return results


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m studies.experiments", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="experiment YAML (see experiments/*.yaml)")
    ap.add_argument("--out", default=None, help="output directory (default: experiments/out/<config name>)")
    ap.add_argument(
        "--runs",
        default=None,
        help="training runs directory to reuse/extend (default: OUT/runs), "
        "e.g. another experiment's runs for a variant of its evaluation",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # an entry point: freed memory stays in the process (soe/malloc.py)
    argv, debug = pop_debug(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    return run_entry("studies.experiments", lambda: _main(args), debug)


def _main(args: argparse.Namespace) -> int:
    """Every input is checked before anything trains or is written."""
    cfg = load_config(args.config)
    check_files(cfg, args.config)
    out = Path(args.out or Path("experiments/out") / Path(args.config).stem)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory; expected an output directory")
    runs = Path(args.runs) if args.runs else None
    if runs is not None and not runs.is_dir():
        raise FileNotFoundError(f"--runs {runs} is not a directory")
    run(cfg, out, runs_dir=runs, source=args.config)
    print(f"[experiment] report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
