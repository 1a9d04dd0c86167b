"""The training runs of an experiment: resolved before training, trained once, resumed, reused.

A run is one ``python train.py fit`` command under ``<runs>/<name>``. Before anything trains, `budget`
resolves a run's full configuration through the same LightningCLI parser that training uses (nothing is
instantiated) and returns the tokens it will see: steps × batch × sequence length × gradient accumulation
× processes. `train` then trains the run, or resumes it when it was interrupted with the same command
(``launch.json`` is written before training, ``run.json`` after), or reuses it when finished.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from soe.data.datamodule import SoupDataModule
from soe.train.cli import SoupCLI, main as cli_main
from soe.train.module import SoupModule


@dataclass
class Budget:
    """What one optimizer step of a run consumes, from its resolved configuration."""

    steps: int
    batch_size: int
    """Sequences per step and process (data.batch_size)."""
    seq_len: int
    accumulate: int
    """trainer.accumulate_grad_batches."""
    processes: int
    """trainer.devices × trainer.num_nodes (0 when devices is not a number, e.g. 'auto')."""

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len * self.accumulate * max(self.processes, 1)

    def describe(self) -> str:
        procs = f" × {self.processes} processes" if self.processes != 1 else ""
        acc = f" × {self.accumulate} accumulated" if self.accumulate != 1 else ""
        return f"{self.steps} steps × {self.batch_size} × {self.seq_len} tokens{acc}{procs} = {self.tokens:,} tokens"


class _ParseOnly(SoupCLI):
    def instantiate_classes(self) -> None:  # resolve and validate the configuration, build nothing
        pass

    def _set_seed(self) -> None:  # nor seed anything
        pass


def budget(fit_args: list[str]) -> Budget:
    """The token budget of ``python train.py <fit_args>`` (fit_args starts with 'fit')."""
    if not fit_args or fit_args[0] != "fit":
        raise ValueError(f"expected train.py fit arguments, got {fit_args[:2]}")
    with warnings.catch_warnings():  # LightningCLI warns that the experiment's own argv differs from args
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        c = _ParseOnly(SoupModule, SoupDataModule, args=fit_args[1:], run=False, auto_configure_optimizers=False).config
    devices = c.trainer.devices
    processes = (devices if isinstance(devices, int) else len(devices) if isinstance(devices, list) else 0) \
        * int(c.trainer.num_nodes or 1)
    steps = c.trainer.max_steps
    if steps is None or steps <= 0:
        raise ValueError(f"{fit_args}: trainer.max_steps={steps}; an experiment's runs need a positive step count")
    return Budget(int(steps), int(c.data.batch_size), int(c.data.seq_len), int(c.trainer.accumulate_grad_batches or 1),
                  int(processes))


def fit_args(config: str, name: str, runs_dir: Path, common: list[str], overrides: list[str],
             extra: list[str]) -> list[str]:
    """train.py arguments of run ``name``: its config, the experiment's common arguments (data, seed,
    steps), where it logs and checkpoints, the experiment's overrides, then the run's own arguments."""
    return ["fit", "--config", config, *common, f"--trainer.logger.init_args.save_dir={runs_dir}",
            f"--trainer.logger.init_args.name={name}", "--trainer.logger.init_args.version=tb",
            f"--trainer.callbacks.init_args.dirpath={runs_dir / name / 'checkpoints'}", *overrides, *extra]


def _step_of(ckpt: Path) -> int:
    """The global step a Lightning checkpoint was saved at (memory-mapped: no weights are read)."""
    return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def train(name: str, runs_dir: Path, args: list[str], extra: list[str], plan: Budget) -> dict:
    """Train (or resume, or reuse) run ``name`` with train.py ``args``; returns its run.json contents."""
    run_dir = runs_dir / name
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    info_file = run_dir / "run.json"
    steps = plan.steps
    if info_file.is_file() and ckpt.is_file():
        info = json.loads(info_file.read_text())
        if info.get("steps") == steps and info.get("args") == extra:
            saved = _step_of(ckpt)
            if saved == steps:
                print(f"[experiment] {name}: reusing {ckpt} ({steps} steps)")
                return info
            # written before soe.train.callbacks.ModelCheckpoint: last.ckpt stopped short of the final step
            print(f"[experiment] {name}: {ckpt} holds step {saved}, not {steps}: finishing the run", flush=True)
    # An interrupted run with the same command resumes from its last checkpoint (exact resume: the data
    # module's state travels in the checkpoint) instead of starting over.
    launch = run_dir / "launch.json"  # the exact command, written before training starts
    want = {"config": args[args.index("--config") + 1], "args": args}
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
    print(f"[experiment] training {name} ({plan.describe()}): python train.py {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    cli = cli_main(args)
    wall = time.perf_counter() - t0
    saved = _step_of(ckpt)
    if saved != steps:  # everything after this evaluates this file: it must be the trained model
        raise RuntimeError(f"{ckpt} holds step {saved}, not the final step {steps}: the run's checkpoint callback "
                           "must keep the final step (class_path: soe.train.callbacks.ModelCheckpoint)")
    module, dm, trainer = cli.model, cli.datamodule, cli.trainer
    seen = Budget(steps, dm.batch_size, dm.seq_len, trainer.accumulate_grad_batches, trainer.world_size)
    if seen.tokens != plan.tokens:
        raise RuntimeError(f"run {name} trained on {seen.describe()}, but its configuration resolved to "
                           f"{plan.describe()}")
    # 6·P·tokens for the dense model, plus the soup's instantiate, bank backward and update (≈ 6 per bank
    # number per step, full-rank or low-rank).
    counts = module.soup.param_counts()
    flops = module.net_cfg.flops_per_token(dm.seq_len) * seen.tokens + 6 * counts["bank"] * steps
    info = {"name": name, "dir": str(run_dir), "checkpoint": str(ckpt), "steps": steps, "tokens": seen.tokens,
            "budget": asdict(seen), "wall_s": wall, "train_flops": float(flops),
            "params_instantiated": module.net_cfg.num_params(), "params_total": counts["total"],
            "args": extra, "command": "python train.py " + " ".join(want["args"])}
    if any(a.startswith("--ckpt_path=") for a in args):
        info["resumed"] = True  # wall_s covers only the steps after the resume
    info_file.write_text(json.dumps(info, indent=2))
    return info
