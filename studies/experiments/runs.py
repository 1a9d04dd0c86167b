"""The training runs of an experiment: resolved before training, trained once, resumed, reused.

A run is one ``python train.py fit`` command under ``<runs>/<name>``. Before anything trains, `budget`
resolves a run's full configuration through the same LightningCLI parser that training uses (nothing is
instantiated) and returns the tokens it will see: steps × batch × sequence length × gradient accumulation
× processes. `train` then trains the run, or resumes it when it was interrupted under the same configuration
(``launch.json`` is written before training, ``run.json`` after), or reuses it when finished under the same
configuration (its key: studies/experiments/runkey.py). A run that cannot be reused or resumed (another
configuration, no key, a corrupt state file) is moved aside to ``<name>.stale-<n>``, never overwritten.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from soe.data.datamodule import SoupDataModule
from soe.fileio import atomic_write_json, read_json
from soe.train.cli import SoupCLI
from soe.train.cli import main as cli_main
from soe.train.module import SoupModule
from studies.experiments.runkey import describe_changes, run_key, with_added_settings


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


def resolve(fit_args: list[str], what: str = "train.py fit"):
    """The full configuration ``python train.py <fit_args>`` would run (fit_args starts with 'fit'), as
    LightningCLI resolves it (config files, then arguments, then defaults), instantiating nothing. A
    configuration train.py would refuse is refused here, in one line naming ``what``, before anything trains."""
    if not fit_args or fit_args[0] != "fit":
        raise ValueError(f"expected train.py fit arguments, got {fit_args[:2]}")
    with warnings.catch_warnings():  # LightningCLI warns that the experiment's own argv differs from args
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        try:
            return _ParseOnly(
                SoupModule,
                SoupDataModule,
                args=fit_args[1:],
                run=False,
                auto_configure_optimizers=False,
                parser_kwargs={"exit_on_error": False},
            ).config
        except argparse.ArgumentError as e:
            config = fit_args[fit_args.index("--config") + 1] if "--config" in fit_args else "its arguments"
            raise ValueError(
                f"{what}: train.py would refuse {config} with these arguments: {' '.join(str(e).split())}"
            ) from None


def budget(fit_args: list[str], config=None) -> Budget:
    """The token budget of ``python train.py <fit_args>`` (``config``: its `resolve` when already done)."""
    c = config if config is not None else resolve(fit_args)
    devices = c.trainer.devices
    processes = (devices if isinstance(devices, int) else len(devices) if isinstance(devices, list) else 0) * int(
        c.trainer.num_nodes or 1
    )
    steps = c.trainer.max_steps
    if steps is None or steps <= 0:
        raise ValueError(f"{fit_args}: trainer.max_steps={steps}; an experiment's runs need a positive step count")
    return Budget(
        int(steps),
        int(c.data.batch_size),
        int(c.data.seq_len),
        int(c.trainer.accumulate_grad_batches or 1),
        int(processes),
    )


def fit_args(
    config: str, name: str, runs_dir: Path, common: list[str], overrides: list[str], extra: list[str]
) -> list[str]:
    """train.py arguments of run ``name``: its config, the experiment's common arguments (data, seed,
    steps), where it logs and checkpoints, the experiment's overrides, then the run's own arguments."""
    return [
        "fit",
        "--config",
        config,
        *common,
        f"--trainer.logger.init_args.save_dir={runs_dir}",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.logger.init_args.version=tb",
        f"--trainer.callbacks.init_args.dirpath={runs_dir / name / 'checkpoints'}",
        *overrides,
        *extra,
    ]


def _step_of(ckpt: Path) -> int:
    """The global step a Lightning checkpoint was saved at (memory-mapped: no weights are read)."""
    return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def _state(path: Path, name: str) -> dict | None:
    """A state file the experiment wrote (run.json, launch.json); None, said, when it is corrupt."""
    try:
        state = read_json(path, "run state file")
        if isinstance(state, dict):
            return state
        raise ValueError(f"{path}: corrupt run state file, expected a JSON object")
    except ValueError as e:
        print(f"[experiment] {name}: {e}: treating the run as unfinished", flush=True)
        return None


def _move_aside(run_dir: Path, name: str, why: str) -> None:
    """Keep a run that cannot be reused out of the way (its checkpoints, logs and state) and say so."""
    n = 1
    while run_dir.with_name(f"{run_dir.name}.stale-{n}").exists():
        n += 1
    stale = run_dir.with_name(f"{run_dir.name}.stale-{n}")
    run_dir.rename(stale)
    print(f"[experiment] {name}: {why}: retraining from scratch; the previous run is kept in {stale}", flush=True)


def _previous(run_dir: Path, name: str, key: dict, steps: int) -> tuple[dict | None, bool]:
    """What the run directory offers under ``key``: (finished run.json to reuse, or None; resume from last.ckpt?).
    Anything it holds that cannot be reused or resumed is moved aside."""
    if not run_dir.exists():
        return None, False
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    for state_file in ("run.json", "launch.json"):  # finished runs first, then interrupted ones
        path = run_dir / state_file
        if not path.is_file():
            continue
        state = _state(path, name)
        if state is None:
            return _move_aside(run_dir, name, f"its {state_file} is corrupt"), False
        if "key" not in state:
            return _move_aside(
                run_dir,
                name,
                f"its {state_file} records no configuration key (written by an "
                "older soe), so it may have been trained under another configuration",
            ), False
        if with_added_settings(state["key"]) != key:
            return _move_aside(
                run_dir,
                name,
                "its configuration changed since it was trained (" + describe_changes(state["key"], key) + ")",
            ), False
        try:
            saved = _step_of(ckpt) if ckpt.is_file() else None
        except Exception as e:  # a truncated or foreign file: nothing to resume from, but keep it
            return _move_aside(run_dir, name, f"its {ckpt} cannot be read ({type(e).__name__})"), False
        if saved is None:
            break
        if state_file == "run.json" and saved == steps:
            return state, False
        # an interrupted run, or a finished one whose last.ckpt stopped short of the final step (written before
        # soe.train.callbacks.ModelCheckpoint): finish it (exact resume: the data module's state travels in it)
        print(f"[experiment] {name}: resuming from {ckpt} (step {saved} of {steps})", flush=True)
        return None, True
    _move_aside(run_dir, name, "it holds no finished or resumable run")
    return None, False


def train(name: str, runs_dir: Path, args: list[str], extra: list[str], plan: Budget) -> dict:
    """Train (or resume, or reuse) run ``name`` with train.py ``args``; returns its run.json contents."""
    run_dir = runs_dir / name
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    steps = plan.steps
    key = run_key(resolve(args, f"run {name}"))
    info, resume = _previous(run_dir, name, key, steps)
    if info is not None:
        print(f"[experiment] {name}: reusing {ckpt} ({steps} steps, same configuration)")
        return info
    want = {"config": args[args.index("--config") + 1], "args": args, "key": key}
    if resume:
        args = args + [f"--ckpt_path={ckpt}"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").unlink(missing_ok=True)  # a run being (re)trained is not finished
    atomic_write_json(run_dir / "launch.json", want)
    print(f"[experiment] training {name} ({plan.describe()}): python train.py {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    cli = cli_main(args)
    wall = time.perf_counter() - t0
    saved = _step_of(ckpt)
    if saved != steps:  # everything after this evaluates this file: it must be the trained model
        raise RuntimeError(
            f"{ckpt} holds step {saved}, not the final step {steps}: the run's checkpoint callback "
            "must keep the final step (class_path: soe.train.callbacks.ModelCheckpoint)"
        )
    module, dm, trainer = cli.model, cli.datamodule, cli.trainer
    seen = Budget(steps, dm.batch_size, dm.seq_len, trainer.accumulate_grad_batches, trainer.world_size)
    if seen.tokens != plan.tokens:
        raise RuntimeError(
            f"run {name} trained on {seen.describe()}, but its configuration resolved to {plan.describe()}"
        )
    # 6·P·tokens for the dense model, plus the soup's instantiate, bank backward and update (≈ 6 per bank
    # number per step, full-rank or low-rank).
    counts = module.soup.param_counts()
    flops = module.net_cfg.flops_per_token(dm.seq_len) * seen.tokens + 6 * counts["bank"] * steps
    info = {
        "name": name,
        "dir": str(run_dir),
        "checkpoint": str(ckpt),
        "steps": steps,
        "tokens": seen.tokens,
        "budget": asdict(seen),
        "wall_s": wall,
        "train_flops": float(flops),
        "params_instantiated": module.net_cfg.num_params(),
        "params_total": counts["total"],
        "args": extra,
        "command": "python train.py " + " ".join(want["args"]),
        "key": key,
    }
    if any(a.startswith("--ckpt_path=") for a in args):
        info["resumed"] = True  # wall_s covers only the steps after the resume
    atomic_write_json(run_dir / "run.json", info)
    return info
