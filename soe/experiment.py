"""The comparison protocol: generic vs Soup-of-Experts specialists vs dedicated models.

    python -m soe.experiment --config experiments/demo.yaml [--out DIR] [--runs RUNS_DIR]

Every model trains for the same number of steps with the same batch and sequence length (so the same
tokens) and instantiates the same dense size:
- generic: the dense model (n = 0) on the natural token-count mixture;
- soe: one soup; for each held-out specialist set, h is estimated from its small in-house sample
  (nearest-centroid histogram), optionally refined on the in-house tokens, and Θ(h) evaluated;
- dedicated: one dense model per specialist set trained on its estimated mixture (CRISP-style), the
  costly upper reference;
- optionally, the generic model and the SoE specialist each fine-tuned briefly on the in-house tokens.
All are evaluated on the same windows of each set's evaluation split and of each pretraining domain's
validation split. Training runs are resumable: a run whose last checkpoint reached max_steps is reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from soe.shards import load_meta, open_shard


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
    """Training steps of every model (None: each config's own max_steps, which must then agree)."""
    dedicated: bool = True
    """Train one dedicated dense model per specialist set (costs one training run per set)."""
    refine: bool = True
    """Also evaluate the soup at h refined on the in-house sample (soe estimate-weights --refine)."""
    refine_steps: int = 200
    """Maximum Adam steps of the refinement (it stops early on its held-out part)."""
    finetune: bool = False
    """Also fine-tune the generic model and the SoE specialist (histogram h) on each set's in-house tokens,
    by the same procedure (soe/finetune.py), and evaluate both."""
    finetune_steps: int = 100
    """Fine-tuning steps; early stopping on a 10 % held-out part of the in-house tokens."""
    finetune_batch_size: int = 16
    """Fine-tuning batch size (sequences of the model's max_seq_len)."""
    finetune_lr: float = 3e-4
    """Peak fine-tuning learning rate (warmup, then cosine to 10 %)."""
    eval_windows: int = 64
    """Evaluation windows per set/domain (evenly spaced over its evaluation split)."""
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


# ------------------------------------------------------------------------------------ training
def _step_of(ckpt: Path) -> int:
    """The global step a Lightning checkpoint was saved at (memory-mapped: no weights are read)."""
    return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def train(name: str, config: str, runs_dir: Path, cfg: ExperimentConfig, extra: list[str]) -> dict:
    """Train (or reuse) one run under runs_dir/<name>; returns its checkpoint, steps and wall time."""
    from soe.cli_train import main as cli_main

    run_dir = runs_dir / name
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    info_file = run_dir / "run.json"
    steps = cfg.max_steps if cfg.max_steps is not None else yaml.safe_load(Path(config).read_text())["trainer"]["max_steps"]
    if info_file.is_file() and ckpt.is_file():
        info = json.loads(info_file.read_text())
        if info.get("steps") == steps and info.get("args") == extra:
            saved = _step_of(ckpt)
            if saved == steps:
                print(f"[experiment] {name}: reusing {ckpt} ({steps} steps)")
                return info
            # written before soe.checkpoint.ModelCheckpoint: last.ckpt stopped short of the final step
            print(f"[experiment] {name}: {ckpt} holds step {saved}, not {steps}: finishing the run", flush=True)
    args = ["fit", "--config", config, f"--data.data_dir={cfg.data_dir}", f"--seed_everything={cfg.seed}",
            f"--trainer.max_steps={steps}", f"--trainer.logger.init_args.save_dir={runs_dir}",
            f"--trainer.logger.init_args.name={name}", "--trainer.logger.init_args.version=tb",
            f"--trainer.callbacks.init_args.dirpath={run_dir / 'checkpoints'}", *cfg.overrides, *extra]
    # An interrupted run with the same command resumes from its last checkpoint (exact resume: the data
    # module's state travels in the checkpoint) instead of starting over.
    launch = run_dir / "launch.json"  # the exact command, written before training starts
    want = {"config": config, "args": args}
    if ckpt.is_file() and launch.is_file() and json.loads(launch.read_text()) == want:
        print(f"[experiment] {name}: resuming the interrupted run from {ckpt}", flush=True)
        args = args + [f"--ckpt_path={ckpt}"]
    elif (run_dir / "checkpoints").is_dir():
        # Checkpoints this run cannot resume from (another command's, or no last.ckpt): Lightning would write
        # this run's last.ckpt as last-v1.ckpt beside a stale last.ckpt, which every evaluation would load.
        # Keep them, out of the way.
        stale = run_dir / f"checkpoints.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        (run_dir / "checkpoints").rename(stale)
        print(f"[experiment] {name}: training from scratch; previous checkpoints kept in {stale}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    launch.write_text(json.dumps(want, indent=2))
    print(f"[experiment] training {name}: python train.py {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    cli = cli_main(args)
    wall = time.perf_counter() - t0
    saved = _step_of(ckpt)
    if saved != steps:  # everything below evaluates this file: it must be the trained model
        raise RuntimeError(f"{ckpt} holds step {saved}, not the final step {steps}: the run's checkpoint callback "
                           "must keep the final step (class_path: soe.checkpoint.ModelCheckpoint)")
    module, dm = cli.model, cli.datamodule
    tokens = steps * dm.batch_size * dm.seq_len * cli.trainer.world_size
    P = module.net_cfg.num_params()
    # 6·P·tokens for the dense model, plus the soup's instantiate, bank backward and update (≈ 6 per bank
    # number per step, full-rank or low-rank).
    flops = module.net_cfg.flops_per_token(dm.seq_len) * tokens + 6 * module.soup.param_counts()["bank"] * steps
    info = {"name": name, "dir": str(run_dir), "checkpoint": str(ckpt), "steps": steps, "tokens": tokens, "wall_s": wall,
            "train_flops": float(flops), "params_instantiated": P, "params_total": module.soup.param_counts()["total"],
            "args": extra, "command": "python train.py " + " ".join(want["args"])}
    if any(a.startswith("--ckpt_path=") for a in args):
        info["resumed"] = True  # wall_s covers only the steps after the resume
    info_file.write_text(json.dumps(info, indent=2))
    return info


# ------------------------------------------------------------------------------------ evaluation
def eval_windows(arr: np.ndarray, count: int, seq_len: int) -> torch.Tensor:
    from soe.data import evenly_spaced_windows

    return torch.from_numpy(evenly_spaced_windows(arr, count, seq_len))


def loss_of(soup, h, wins: torch.Tensor) -> float:
    from soe.specialize import mean_loss

    with torch.no_grad():
        params = soup.instantiate(h)
    return mean_loss(lambda x, y: soup(x, targets=y, params=params)[1], wins)


def run(cfg: ExperimentConfig, out: Path, runs_dir: Path | None = None, soe_name: str = "soe") -> dict:
    """Train what is missing, evaluate, write out/results.json and out/report.md. ``runs_dir`` (default
    out/runs) may be shared between experiments so that e.g. ablations reuse one generic run."""
    from soe.finetune import finetune
    from soe.specialize import estimate_weights, load_checkpoint, mean_loss, refine

    out.mkdir(parents=True, exist_ok=True)
    runs_dir = runs_dir or out / "runs"
    data_dir = Path(cfg.data_dir)
    meta = load_meta(data_dir)
    spec_dir = data_dir / "specialists"
    spec_meta = load_meta(spec_dir) if (spec_dir / "meta.json").is_file() else None
    sets = list(spec_meta.domains) if spec_meta else []
    if not sets:
        print(f"[experiment] {data_dir} has no specialist sets: comparing on pretraining domains only")

    dense = ["--model.soup.n_experts=0"]  # baselines are the same code with no experts
    runs = {"generic": train("generic", cfg.generic_config, runs_dir, cfg, dense + ["--data.mixture.fixed_h=prior"]),
            "soe": train(soe_name, cfg.soe_config, runs_dir, cfg, list(cfg.soe_overrides))}
    soup, hp, _ = load_checkpoint(runs["soe"]["checkpoint"])
    generic, _, _ = load_checkpoint(runs["generic"]["checkpoint"])
    T = soup.model_cfg.max_seq_len
    k = len(meta.domains)

    # ---- specialist sets: estimate h (and refine), train dedicated, evaluate everything
    results: dict = {"sets": {}, "domains": {}, "runs": runs, "config": dataclasses.asdict(cfg)}
    for s in sets:
        inhouse = spec_dir / s / "inhouse.jsonl"
        est = estimate_weights(data_dir, str(inhouse))
        h = torch.tensor([est.weights[d] for d in meta.domains])
        wins = eval_windows(open_shard(spec_dir, spec_meta, s, "val"), cfg.eval_windows, T)
        row = {"h_hist": est.weights, "generic": loss_of(generic, None, wins), "soe_hist": loss_of(soup, h, wins),
               "alpha_hist": soup.coefficients(h).tolist(), "n_docs": est.n_docs}
        stream = np.asarray(open_shard(spec_dir, spec_meta, s, "train"), dtype=np.int64)  # in-house tokens
        if cfg.refine:
            ref = refine(soup, h, stream, list(meta.domains), steps=cfg.refine_steps)
            h_ref = torch.tensor([ref.weights[d] for d in meta.domains])
            row.update(h_refined=ref.weights, soe_refined=loss_of(soup, h_ref, wins),
                       refine_fit=[ref.fit_loss_start, ref.fit_loss], refine_holdout=[ref.holdout_loss_start, ref.holdout_loss])
        if cfg.dedicated:
            fixed = "[" + ",".join(f"{w:.6g}" for w in h.tolist()) + "]"
            runs[f"dedicated-{s}"] = train(f"dedicated-{s}", cfg.generic_config, runs_dir, cfg,
                                           dense + [f"--data.mixture.fixed_h={fixed}"])
            ded, _, _ = load_checkpoint(runs[f"dedicated-{s}"]["checkpoint"])
            row["dedicated"] = loss_of(ded, None, wins)
        if cfg.finetune:
            for key, net in (("generic_ft", generic.specialist(None)), ("soe_ft", soup.specialist(h))):
                ft = finetune(net, stream, steps=cfg.finetune_steps, lr=cfg.finetune_lr, batch_size=cfg.finetune_batch_size,
                              seq_len=T, seed=cfg.seed)
                row[key] = mean_loss(lambda x, y, net=net: net(x, targets=y)[1], wins)
                row[key + "_run"] = dataclasses.asdict(ft)
        results["sets"][s] = row
        print(f"[experiment] {s}: " + ", ".join(f"{m}={row[m]:.3f}" for m in ("generic", "soe_hist", "soe_refined", "dedicated", "generic_ft", "soe_ft") if m in row))

    # ---- pretraining domains: the specialist at the one-hot h vs generic; soup at the prior
    prior = torch.tensor(meta.prior("train"), dtype=torch.float32)
    for i, d in enumerate(meta.domains):
        wins = eval_windows(open_shard(data_dir, meta, d, "val"), cfg.eval_windows, T)
        onehot = torch.zeros(k)
        onehot[i] = 1.0
        results["domains"][d] = {"prior_weight": float(prior[i]), "generic": loss_of(generic, None, wins),
                                 "soe_onehot": loss_of(soup, onehot, wins), "soe_prior": loss_of(soup, prior, wins),
                                 "alpha_onehot": soup.coefficients(onehot).tolist()}
    dom = results["domains"]
    results["mixture"] = {m: sum(v["prior_weight"] * v[m] for v in dom.values()) for m in ("generic", "soe_prior", "soe_onehot")}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    from soe.report import write_report

    write_report(results, out, hp["domain_names"])
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m soe.experiment", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="experiment YAML (see experiments/*.yaml)")
    ap.add_argument("--out", default=None, help="output directory (default: experiments/out/<config name>)")
    ap.add_argument("--runs", default=None, help="training runs directory to reuse/extend (default: OUT/runs), "
                                                 "e.g. another experiment's runs for a variant of its evaluation")
    args = ap.parse_args(argv)
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
