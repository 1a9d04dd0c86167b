"""The merging experiment's configuration (`MergingConfig`), checked field by field when it is loaded.

Every grid is fixed here, before anything runs: the experiment chooses among a grid's points on the teams'
validation parts only, and every tuned method gets the same number of validation evaluations (4 by default).
A method's first grid point is its untuned default (mergekit's, or the paper's when mergekit has none); the
report shows it beside the tuned choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Interval, MinLen

from soe.configfile import Bool, ConfigError, Count, Expect, Float, Int, Str, config, parse, read_yaml
from soe.merging.config import METHODS, parse_config
from studies.experiments.config import LearningRate, Overrides, Seed

# method -> grid of merge parameters; the first point is the method's untuned default
DEFAULT_GRIDS: dict[str, list[dict]] = {
    "linear": [{}],
    "task_arithmetic": [{"lambda": 1.0}, {"lambda": 0.25}, {"lambda": 0.5}, {"lambda": 0.75}],
    "ties": [
        {"density": 0.2, "lambda": 1.0},
        {"density": 0.2, "lambda": 2.0},
        {"density": 0.5, "lambda": 1.0},
        {"density": 0.5, "lambda": 2.0},
    ],
    "dare_ties": [
        {"density": 0.5, "lambda": 1.0},
        {"density": 0.5, "lambda": 0.5},
        {"density": 0.8, "lambda": 0.5},
        {"density": 0.8, "lambda": 1.0},
    ],
    "cat": [{"lambda": 1.0}, {"lambda": 0.25}, {"lambda": 0.5}, {"lambda": 0.75}],
    "lot": [{"lambda": 1.0}, {"lambda": 0.5}, {"lambda": 1.5}, {"lambda": 2.0}],
    "regmean": [{"alpha": 0.9}, {"alpha": 0.5}, {"alpha": 0.7}, {"alpha": 1.0}],
    "semantic": [{"lambda": 1.0}, {"lambda": 2.0}, {"lambda": 3.0}, {"lambda": 4.0}],
}


@config
@dataclass
class MergingConfig:
    """One merging experiment; paths are relative to the working directory."""

    data_dir: Str = "data/demo"
    """Prepared pretraining data; the teams are specialist sets under data_dir/specialists."""
    soe_config: Str = "configs/demo-cpu.yaml"
    """Training config of the soup (trained, or reused from --runs when its resolved configuration matches)."""
    generic_config: Str = "configs/dense-demo-cpu.yaml"
    """Training config of the generic dense model (the control start point)."""
    max_steps: Count | None = None
    """Pretraining steps (None: the configs' own)."""
    overrides: Overrides = field(default_factory=list)
    """Extra train.py arguments for both pretraining runs."""
    train_seed: Seed = 0
    """seed_everything of the pretraining runs (the soup and the generic model are trained once)."""
    teams: Annotated[list[Str], MinLen(2), Expect("a list of at least 2 distinct specialist sets")] = field(
        default_factory=lambda: ["go", "ruby", "vim", "rman"]
    )
    """Specialist sets used as teams: in-house tokens (split into fine-tune and validation parts) and an
    evaluation split never read while choosing anything."""
    seeds: Annotated[list[Seed], MinLen(1), Expect("a list of distinct seeds ≥ 0")] = field(
        default_factory=lambda: [0, 1, 2]
    )
    """Fine-tuning seeds (batch order, LoRA init, DARE masks, planted markers); a claim holds only if its sign
    holds in every seed."""
    validation_share: Annotated[Float, Interval(gt=0, lt=0.9)] = 0.2
    """Tail share of each team's in-house tokens kept for validation (early stopping and every choice)."""
    steps: Count = 64
    """Fine-tuning steps of every specialist (checkpoints at first_checkpoint, 2×, 4×, …, steps)."""
    first_checkpoint: Count = 4
    batch_size: Count = 8
    """Fine-tuning sequences per step (of the model's max_seq_len)."""
    lr: LearningRate = 3.0e-4
    """Peak learning rate of full fine-tuning."""
    lora_rank: Annotated[Int, Ge(0), Expect("an integer ≥ 0 (0: no LoRA)")] = 8
    """LoRA rank of the LoRA fine-tunes (0: no LoRA runs)."""
    lora_lr: LearningRate = 1.0e-3
    generic_control: Bool = True
    """Also fine-tune every team from the generic model (the control start) and merge those."""
    multitask: Bool = True
    """Reference: one fine-tune on the union of the teams' data, same steps, m × batch_size per step."""
    sequential: Bool = True
    """Sequential fine-tuning team after team (order rotated per seed), points after each team."""
    ensemble: Bool = True
    """Reference: the teams' specialists averaged in output (probability) space."""
    markers_specific: Annotated[Int, Ge(0)] = 3
    """Marker facts planted in one team's fine-tune part only, per team."""
    markers_shared: Annotated[Int, Ge(0)] = 3
    """Marker facts planted in every team's fine-tune part."""
    marker_copies: Count = 40
    """Copies of each marker in a team's fine-tune part."""
    val_windows: Count = 24
    """Validation windows per team scored for every choice."""
    eval_windows: Count = 48
    """Evaluation windows per team for the reported losses."""
    mixture_windows: Count = 16
    """Validation windows per pretraining domain for the pretraining-mixture loss."""
    exemplar_tokens: Count = 2048
    """Unlabelled fine-tune tokens per team for the data-aware methods (regmean, lot, cat)."""
    bootstrap: Annotated[Int, Ge(100)] = 1000
    """Bootstrap resamples for the 95 % intervals."""
    grids: dict[Str, list[dict[Str, Any]]] = field(
        default_factory=lambda: {k: [dict(p) for p in v] for k, v in DEFAULT_GRIDS.items()}
    )
    """method -> list of merge parameter sets (first = untuned default); every method of `soe merge` but
    dare_linear by default."""
    predictions: dict[Str, Str] = field(default_factory=dict)
    """claim id -> what we expect, written before the runs (ids: studies/merging/report.py CLAIMS); copied
    into predictions.md when the experiment starts and into the report with whether each held."""


def validate(cfg: MergingConfig, source: str) -> MergingConfig:
    if len(set(cfg.teams)) != len(cfg.teams):
        raise ConfigError(f"{source}: teams={cfg.teams}: expected a list of at least 2 distinct specialist sets")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"{source}: seeds={cfg.seeds}: expected a list of distinct seeds ≥ 0")
    if cfg.first_checkpoint > cfg.steps:
        raise ValueError(f"{source}: first_checkpoint: expected at most steps={cfg.steps}, got {cfg.first_checkpoint}")
    for method, grid in cfg.grids.items():
        where = f"{source}: grids.{method}"
        if method not in METHODS:
            raise ValueError(f"{where}: unknown merge method; expected some of {', '.join(METHODS)}")
        if not grid:
            raise ConfigError(f"{where}: expected a non-empty list of parameter mappings, got {grid!r}")
        for i, point in enumerate(grid):  # each point must be a merge `soe merge` accepts
            params = {k: v for k, v in point.items() if k != "density"}
            model = {"model": "x", "parameters": {"density": point.get("density", 1.0), "exemplars": "x"}}
            parse_config(
                {"merge_method": method, "base_model": "x", "models": [model], "parameters": params}, f"{where}[{i}]"
            )
    from studies.merging.report import CLAIMS

    unknown = sorted(set(cfg.predictions) - set(CLAIMS))
    if unknown:
        raise ValueError(
            f"{source}: predictions: expected claim ids among {sorted(CLAIMS)} mapped to the prediction's "
            f"text, got {unknown or cfg.predictions}"
        )
    if "task_arithmetic" not in cfg.grids:
        raise ValueError(
            f"{source}: grids: task_arithmetic is required (tuned task arithmetic is the bar every "
            "other method is compared with)"
        )
    return cfg


def load_config(path: str | Path) -> MergingConfig:
    return validate(parse(MergingConfig, read_yaml(path, "merging experiment config"), str(path)), str(path))


def check_files(cfg: MergingConfig, source: str) -> None:
    """The data, its specialist sets and the training configs must exist before anything runs."""
    data = Path(cfg.data_dir)
    if not (data / "meta.json").is_file():
        raise FileNotFoundError(f"{source}: data_dir: {data} is not a prepared-data directory (no meta.json)")
    for key in ("soe_config", "generic_config"):
        if not Path(getattr(cfg, key)).is_file():
            raise FileNotFoundError(f"{source}: {key}: training config {getattr(cfg, key)} not found")
    for t in cfg.teams:
        d = data / "specialists" / t
        if not (d / "inhouse.jsonl").is_file():
            raise FileNotFoundError(
                f"{source}: teams: {t}: no specialist set at {d} (expected inhouse.jsonl and "
                "its shards, written by data_prep.prepare)"
            )
