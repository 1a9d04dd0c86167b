"""An experiment's configuration (`ExperimentConfig`) and the ablation / search files built on it.

A wrong value must be refused before anything trains: ``eval_windows: lots`` used to fail only after every
model had trained. Each field's type hint states its type and range; `soe.configfile.parse` refuses unknown keys
and values of the wrong type or out of range, with one line naming the YAML file, the key, the value and what was
expected; `validate` adds the rules across fields. `check_files` checks the files the experiment reads (kept
apart: shipped configs name data that is prepared later, and callers such as demo.py replace data_dir after
loading).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from annotated_types import Ge, Gt, Interval, MinLen
from pydantic import StringConstraints

from soe.configfile import Bool, ConfigError, Count, Expect, Float, Int, Str, config, parse, read_yaml

TrainArg = Annotated[
    str, StringConstraints(strict=True, pattern=r"^--"), Expect("a train.py argument starting with '--'")
]
"""One train.py argument, e.g. ``--model.soup.n_experts=2``."""
Overrides = Annotated[list[TrainArg], Expect("a list of train.py arguments starting with '--'")]
LearningRate = Annotated[Float, Interval(gt=0, lt=1), Expect("a learning rate in (0, 1)")]
Seed = Annotated[Int, Ge(0), Expect("a non-negative integer")]


@config
@dataclass
class ExperimentConfig:
    """One comparison run; paths are relative to the working directory."""

    data_dir: Str = "data/demo"
    """Prepared pretraining data with its specialist sets (data_dir/specialists)."""
    soe_config: Str = "configs/demo-cpu.yaml"
    """Training config of the soup."""
    generic_config: Str = "configs/dense-demo-cpu.yaml"
    """Training config of the dense baselines (generic and dedicated; its fixed_h is replaced for dedicated)."""
    max_steps: Count | None = None
    """Training steps of every model (None: each config's own max_steps; the runs' tokens must agree either way)."""
    dedicated: Bool = True
    """Train one dedicated dense model per specialist set (costs one training run per set)."""
    refine: Bool = True
    """Also evaluate the soup at h refined on the in-house sample (soe estimate-weights --refine)."""
    refine_steps: Count = 200
    """Maximum Adam steps of the refinement (it stops early on its held-out part)."""
    finetune: Bool = False
    """Also fine-tune the generic model and the SoE specialist (histogram h) on each set's in-house tokens,
    by the same procedure (soe/specialists/finetune.py), and evaluate both."""
    finetune_steps: Count = 100
    """Fine-tuning steps; early stopping on a 10 % held-out part of the in-house tokens."""
    finetune_batch_size: Count = 16
    """Fine-tuning batch size (sequences of the model's max_seq_len)."""
    finetune_lr: LearningRate = 3e-4
    """Peak fine-tuning learning rate (warmup, then cosine to 10 %)."""
    eval_windows: Count = 64
    """Evaluation windows per set/domain, at most (non-overlapping, evenly spread: soe/data/windows.py)."""
    bootstrap: Annotated[Int, Ge(100), Expect("an integer ≥ 100 (bootstrap resamples)")] = 2000
    """Bootstrap resamples of the windows for the 95 % interval of every SoE − generic difference."""
    budgets: list[Count] = field(default_factory=list)
    """Smaller step counts at which the generic model and the soup are also trained, each with its own
    schedule, for the curve of SoE − generic against tokens per parameter (histogram h; [] = no curve)."""
    overrides: Overrides = field(default_factory=list)
    """Extra train.py arguments applied to every run, e.g. ['--trainer.val_check_interval=100']."""
    soe_overrides: Overrides = field(default_factory=list)
    """Extra train.py arguments for the soup only (ablations), e.g. ['--model.soup.router_output=softmax']."""
    generic_overrides: Overrides = field(default_factory=list)
    """Extra train.py arguments for the dense baselines only (generic and dedicated), e.g. a tuned learning rate."""
    seed: Seed = 0
    """The seed of every run: seed_everything, the data stream (data.seed: which h and which windows) and the
    initialisation (model.soup.init_seed), so that runs with different seeds are different runs."""


def validate(cfg: ExperimentConfig, source: str = "experiment config") -> ExperimentConfig:
    """``cfg`` checked again (callers change fields after loading): every field's type and range, and the rules
    across fields; one line naming ``source``, the key, the value and the expectation."""
    cfg = parse(ExperimentConfig, dataclasses.asdict(cfg), source)
    if cfg.budgets != sorted(set(cfg.budgets)):
        raise ConfigError(
            f"{source}: budgets={cfg.budgets}: expected a list of positive, strictly increasing step counts"
        )
    if cfg.max_steps is not None and cfg.budgets and cfg.budgets[-1] >= cfg.max_steps:
        raise ConfigError(
            f"{source}: budgets: expected step counts below max_steps={cfg.max_steps} (the main runs are "
            f"the curve's last point), got {cfg.budgets}"
        )
    return cfg


def from_mapping(raw, source: str) -> ExperimentConfig:
    """An `ExperimentConfig` from a parsed YAML mapping, refusing unknown keys and invalid values."""
    return validate(parse(ExperimentConfig, raw, source), source)


def load_config(path: str | Path) -> ExperimentConfig:
    return from_mapping(read_yaml(path, "experiment config"), str(path))


VariantName = Annotated[
    str,
    StringConstraints(strict=True, pattern=r"^[^./][^/]*$"),
    Expect("a non-empty directory name (no '/', not starting with '.')"),
]


@config
@dataclass
class Variant:
    """One variant of an ablation: a name (its runs' directory) and the train.py arguments of its soup."""

    name: VariantName
    change: Str | None = None
    """What the variant changes, in words (the report's row)."""
    overrides: Overrides = field(default_factory=list)


@config
@dataclass
class AblationFile:
    """An ablation YAML: one experiment, several soups (variants) against the same generic model."""

    experiment: ExperimentConfig
    """The experiment every variant changes."""
    variants: Annotated[list[Variant], MinLen(1), Expect("a non-empty list of {name, change, overrides}")]
    out: Str | None = None
    """Output directory (default experiments/out/<file name>)."""


@config
@dataclass
class SearchVariant(Variant):
    """A variant of a recipe search (studies/experiments/search.py): its soup's and the generic model's
    arguments, or the runs of another variant scored differently (estimation-only levers)."""

    generic_overrides: Overrides = field(default_factory=list)
    """train.py arguments of this variant's generic model (the generic run is shared by variants without)."""
    shared_overrides: Overrides = field(default_factory=list)
    """train.py arguments of both the soup and the generic model."""
    soup: Str | None = None
    """Score this other variant's trained runs instead of training (estimation-only levers)."""
    temperature: Annotated[Float, Gt(0), Expect("a positive number (soft histogram) or none")] | None = None
    """Soft histograms: h from softmax(−distance / temperature) instead of nearest-centroid counts."""


@config
@dataclass
class SearchFile(AblationFile):
    variants: Annotated[list[SearchVariant], MinLen(1), Expect("a non-empty list of variants")]


def load_variants(path: str, file_type=AblationFile) -> tuple[ExperimentConfig, Path, list[dict]]:
    """The experiment, output directory and variants (as written, validated by ``file_type``) of an ablation
    (or search) YAML."""
    raw = read_yaml(path, "ablation config")
    f = parse(file_type, raw, str(path))
    base = validate(f.experiment, f"{path}: experiment")
    names = [v.name for v in f.variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: variants: names must be unique, got {names}")
    return base, Path(f.out or f"experiments/out/{Path(path).stem}"), list(raw["variants"])


def check_files(cfg: ExperimentConfig, source: str = "experiment config") -> None:
    """The prepared data and the training configs the experiment names must exist before anything trains."""
    data = Path(cfg.data_dir)
    if not (data / "meta.json").is_file():
        raise FileNotFoundError(
            f"{source}: data_dir: {data} is not a prepared-data directory (no meta.json); "
            "run `soe prepare` or fix the path"
        )
    for key in ("soe_config", "generic_config"):
        if not Path(getattr(cfg, key)).is_file():
            raise FileNotFoundError(f"{source}: {key}: training config {getattr(cfg, key)} not found")
