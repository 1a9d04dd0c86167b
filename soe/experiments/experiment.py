"""The comparison protocol: generic vs Soup-of-Experts specialists vs dedicated models.

    python -m soe.experiments --config experiments/demo.yaml [--out DIR] [--runs RUNS_DIR]

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
uses. Training runs are resumable: a run whose last checkpoint reached max_steps is reused (soe/experiments/runs.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from soe.core.weights import parse_weights
from soe.data.shards import load_meta, open_shard
from soe.data.windows import eval_windows
from soe.experiments.report import write_report
from soe.experiments.runs import budget, fit_args, train
from soe.specialists.estimate import estimate_weights
from soe.specialists.evaluate import paired_interval, window_losses
from soe.specialists.finetune import finetune
from soe.specialists.refine import refine
from soe.train.checkpoint import load_checkpoint


@dataclass
class ExperimentConfig:
    """One comparison run; paths are relative to the working directory."""

    data_dir: str = "data/demo"
    """Prepared pretraining data with its specialist sets (data_dir/specialists)."""
    soe_config: str = "configs/demo-cpu.yaml"
    """Training config of the soup."""
    generic_config: str = "configs/dense-demo-cpu.yaml"
    """Training config of the dense baselines (generic and dedicated; its fixed_h is replaced for dedicated)."""
    max_steps: int | None = None
    """Training steps of every model (None: each config's own max_steps; the runs' tokens must agree either way)."""
    dedicated: bool = True
    """Train one dedicated dense model per specialist set (costs one training run per set)."""
    refine: bool = True
    """Also evaluate the soup at h refined on the in-house sample (soe estimate-weights --refine)."""
    refine_steps: int = 200
    """Maximum Adam steps of the refinement (it stops early on its held-out part)."""
    finetune: bool = False
    """Also fine-tune the generic model and the SoE specialist (histogram h) on each set's in-house tokens,
    by the same procedure (soe/specialists/finetune.py), and evaluate both."""
    finetune_steps: int = 100
    """Fine-tuning steps; early stopping on a 10 % held-out part of the in-house tokens."""
    finetune_batch_size: int = 16
    """Fine-tuning batch size (sequences of the model's max_seq_len)."""
    finetune_lr: float = 3e-4
    """Peak fine-tuning learning rate (warmup, then cosine to 10 %)."""
    eval_windows: int = 64
    """Evaluation windows per set/domain, at most (non-overlapping, evenly spread: soe/data/windows.py)."""
    bootstrap: int = 2000
    """Bootstrap resamples of the windows for the 95 % interval of every SoE − generic difference."""
    budgets: list[int] = field(default_factory=list)
    """Smaller step counts at which the generic model and the soup are also trained, each with its own
    schedule, for the curve of SoE − generic against tokens per parameter (histogram h; [] = no curve)."""
    overrides: list[str] = field(default_factory=list)
    """Extra train.py arguments applied to every run, e.g. ['--trainer.val_check_interval=100']."""
    soe_overrides: list[str] = field(default_factory=list)
    """Extra train.py arguments for the soup only (ablations), e.g. ['--model.soup.router_output=softmax']."""
    seed: int = 0
    """seed_everything of every run."""


def load_config(path: str | Path) -> ExperimentConfig:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"experiment config {p} not found")
    raw = yaml.safe_load(p.read_text()) or {}
    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{p}: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
    return ExperimentConfig(**raw)


# ------------------------------------------------------------------------------------ the protocol
def plan(cfg: ExperimentConfig, runs_dir: Path, soe_name: str, dedicated: dict[str, torch.Tensor],
         max_steps: int | None = None, suffix: str = "") -> dict:
    """Every training run of the experiment, {name: (train.py args, the run's own args, Budget)}, resolved
    before anything trains. Refuses runs that would see different numbers of tokens. ``max_steps``/``suffix``:
    a budget of the curve (runs named ``generic<suffix>``, ``<soe_name><suffix>``)."""
    steps = cfg.max_steps if max_steps is None else max_steps
    common = [f"--data.data_dir={cfg.data_dir}", f"--seed_everything={cfg.seed}"]
    common += [f"--trainer.max_steps={steps}"] if steps is not None else []
    dense = ["--model.soup.n_experts=0"]  # baselines are the same code with no experts
    own = {"generic" + suffix: (cfg.generic_config, dense + ["--data.mixture.fixed_h=prior"]),
           soe_name + suffix: (cfg.soe_config, list(cfg.soe_overrides))}
    for s, h in dedicated.items():
        fixed = "[" + ",".join(f"{w:.6g}" for w in h.tolist()) + "]"
        own[f"dedicated-{s}"] = (cfg.generic_config, dense + [f"--data.mixture.fixed_h={fixed}"])
    runs = {}
    for name, (config, extra) in own.items():
        args = fit_args(config, name, runs_dir, common, list(cfg.overrides), extra)
        runs[name] = (args, extra, budget(args))
    tokens = {name: b.tokens for name, (_, _, b) in runs.items()}
    if len(set(tokens.values())) > 1:
        raise ValueError("the runs of this experiment would not see the same tokens, so their losses would not be "
                         "comparable:\n" + "\n".join(f"  {n}: {b.describe()}" for n, (_, _, b) in runs.items()) +
                         "\nmake steps (max_steps), data.batch_size, data.seq_len and accumulation agree")
    return runs


def run(cfg: ExperimentConfig, out: Path, runs_dir: Path | None = None, soe_name: str = "soe") -> dict:
    """Train what is missing, evaluate, write out/results.json and out/report.md. ``runs_dir`` (default
    out/runs) may be shared between experiments so that e.g. ablations reuse one generic run."""
    out.mkdir(parents=True, exist_ok=True)
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
    curve_plans = {b: plan(cfg, runs_dir, soe_name, {}, max_steps=b, suffix=f"-{b}steps") for b in cfg.budgets}
    runs = {("soe" if name == soe_name else name): train(name, runs_dir, args, extra, b)
            for name, (args, extra, b) in planned.items()}
    soup, hp, _ = load_checkpoint(runs["soe"]["checkpoint"])
    generic_soup = load_checkpoint(runs["generic"]["checkpoint"])[0]  # n = 0: Θ is the same for every h
    generic = generic_soup.specialist(None)
    T = soup.net_cfg.max_seq_len

    def wloss(net, shard) -> np.ndarray:  # the rule of every reported loss: soe.specialists.evaluate
        return window_losses(net, eval_windows(shard, T, cfg.eval_windows))

    def loss(net, shard) -> float:
        return float(wloss(net, shard).mean())

    # ---- specialist sets: histogram h (and refined h), dedicated models, fine-tuned models
    results: dict = {"sets": {}, "domains": {}, "runs": runs, "config": dataclasses.asdict(cfg),
                     "tokens_per_run": runs["soe"]["tokens"], "eval": {"windows": cfg.eval_windows, "seq_len": T}}
    main_windows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for s in sets:
        h = h_hist[s]
        evalset = open_shard(spec_dir, spec_meta, s, "val")
        win = {"generic": wloss(generic, evalset), "soe_hist": wloss(soup.specialist(h), evalset)}
        row = {"h_hist": estimates[s].weights, "alpha_hist": soup.coefficients(h).tolist(), "n_docs": estimates[s].n_docs}
        stream = np.asarray(open_shard(spec_dir, spec_meta, s, "train"), dtype=np.int64)  # in-house tokens
        if cfg.refine:
            ref = refine(soup, h, stream, domains, steps=cfg.refine_steps)
            win["soe_refined"] = wloss(soup.specialist(parse_weights(ref.weights, domains)), evalset)
            row.update(h_refined=ref.weights, refine_fit=[ref.fit_loss_start, ref.fit_loss], refine_holdout=[ref.holdout_loss_start, ref.holdout_loss])
        if cfg.dedicated:
            win["dedicated"] = wloss(load_checkpoint(runs[f"dedicated-{s}"]["checkpoint"])[0].specialist(None), evalset)
        row.update({m: float(w.mean()) for m, w in win.items()}, windows=len(win["generic"]))
        for m in ("soe_hist", "soe_refined", "dedicated"):  # 95 % paired bootstrap interval of m − generic
            if m in win:
                row[f"ci_{m}"] = paired_interval(win[m], win["generic"], cfg.bootstrap, seed=cfg.seed)
        if cfg.finetune:
            for key, net in (("generic_ft", generic_soup.specialist(None)), ("soe_ft", soup.specialist(h))):
                ft = finetune(net, stream, steps=cfg.finetune_steps, lr=cfg.finetune_lr, batch_size=cfg.finetune_batch_size,
                              seq_len=T, seed=cfg.seed)
                win[key] = wloss(net, evalset)
                row[key], row[key + "_run"] = float(win[key].mean()), dataclasses.asdict(ft)
            row["ci_soe_ft"] = paired_interval(win["soe_ft"], win["generic_ft"], cfg.bootstrap, seed=cfg.seed)
        results["sets"][s] = row
        main_windows[s] = (win["generic"], win["soe_hist"])  # the curve's last point: not evaluated twice
        print(f"[experiment] {s}: " + ", ".join(f"{m}={row[m]:.3f}" for m in ("generic", "soe_hist", "soe_refined", "dedicated", "generic_ft", "soe_ft") if m in row))

    # ---- pretraining domains: the specialist at the one-hot h vs generic; soup at the prior
    prior = parse_weights("prior", domains, meta.prior("train"))
    at_prior = soup.specialist(prior)
    for i, d in enumerate(domains):
        val = open_shard(data_dir, meta, d, "val")
        onehot = parse_weights(d, domains)
        results["domains"][d] = {"prior_weight": float(prior[i]), "generic": loss(generic, val),
                                 "soe_onehot": loss(soup.specialist(onehot), val), "soe_prior": loss(at_prior, val),
                                 "alpha_onehot": soup.coefficients(onehot).tolist()}
    results["curve"] = budget_curve(cfg, curve_plans, runs, soe_name, sets, h_hist, spec_dir, spec_meta, wloss,
                                    main_windows)
    dom = results["domains"]
    results["mixture"] = {m: sum(v["prior_weight"] * v[m] for v in dom.values()) for m in ("generic", "soe_prior", "soe_onehot")}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(results, out, hp["domain_names"])
    return results


def budget_curve(cfg: ExperimentConfig, curve_plans: dict, runs: dict, soe_name: str, sets: list[str], h_hist: dict,
                 spec_dir: Path, spec_meta, wloss, main_windows: dict) -> list[dict]:
    """SoE (histogram h) − generic on every specialist set at each budget (the main runs are the last point)."""
    if not curve_plans:
        return []
    points = [(cfg.max_steps or runs["soe"]["steps"], runs["generic"], runs["soe"])]
    for b, planned in curve_plans.items():
        trained = {name: train(name, Path(runs["generic"]["dir"]).parent, *p) for name, p in planned.items()}
        points.append((b, trained[f"generic-{b}steps"], trained[f"{soe_name}-{b}steps"]))
    curve = []
    for steps, g_run, s_run in sorted(points, key=lambda p: p[1]["tokens"]):
        main = s_run is runs["soe"]
        soup, generic = load_checkpoint(s_run["checkpoint"])[0], load_checkpoint(g_run["checkpoint"])[0].specialist(None)
        point = {"steps": g_run["steps"], "tokens": g_run["tokens"],
                 "tokens_per_param": g_run["tokens"] / g_run["params_instantiated"], "sets": {}}
        for s in sets:
            evalset = open_shard(spec_dir, spec_meta, s, "val")
            g, e = main_windows[s] if main else (wloss(generic, evalset), wloss(soup.specialist(h_hist[s]), evalset))
            point["sets"][s] = {"generic": float(g.mean()), "soe_hist": float(e.mean()), "delta": float((e - g).mean()),
                                "ci": paired_interval(e, g, cfg.bootstrap, seed=cfg.seed)}
        curve.append(point)
        print(f"[experiment] curve at {point['tokens']:,} tokens ({point['tokens_per_param']:.1f}/param): " +
              ", ".join(f"{s} {v['delta']:+.3f}" for s, v in point["sets"].items()))
    return curve


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m soe.experiments", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="experiment YAML (see experiments/*.yaml)")
    ap.add_argument("--out", default=None, help="output directory (default: experiments/out/<config name>)")
    ap.add_argument("--runs", default=None, help="training runs directory to reuse/extend (default: OUT/runs), "
                                                 "e.g. another experiment's runs for a variant of its evaluation")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        out = Path(args.out or Path("experiments/out") / Path(args.config).stem)
        runs = Path(args.runs) if args.runs else None
        if runs is not None and not runs.is_dir():
            raise FileNotFoundError(f"--runs {runs} is not a directory")
        run(cfg, out, runs_dir=runs)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[experiment] report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
