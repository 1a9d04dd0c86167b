"""An experiment's configuration (`ExperimentConfig`), checked field by field when it is loaded.

A wrong value must be refused before anything trains: ``eval_windows: lots`` used to fail only after every
model had trained. `load_config` refuses unknown keys and checks every field's type and range against the
dataclass's type hints and `RULES`, with one line naming the YAML file, the key and what was expected;
`check_files` checks the files the experiment reads (kept apart: shipped configs name data that is
prepared later, and callers such as demo.py replace data_dir after loading).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


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
    generic_overrides: list[str] = field(default_factory=list)
    """Extra train.py arguments for the dense baselines only (generic and dedicated), e.g. a tuned learning rate."""
    seed: int = 0
    """The seed of every run: seed_everything, the data stream (data.seed: which h and which windows) and the
    initialisation (model.soup.init_seed), so that runs with different seeds are different runs."""


def _positive(v) -> bool:
    return v > 0


# field -> (test beyond the type, what the value must be); the type itself comes from the type hints
RULES = {
    "max_steps": (_positive, "a positive integer or null"),
    "refine_steps": (_positive, "a positive integer"),
    "finetune_steps": (_positive, "a positive integer"),
    "finetune_batch_size": (_positive, "a positive integer"),
    "finetune_lr": (lambda v: 0 < v < 1, "a learning rate in (0, 1)"),
    "eval_windows": (_positive, "a positive integer"),
    "bootstrap": (lambda v: v >= 100, "an integer ≥ 100 (bootstrap resamples)"),
    "budgets": (
        lambda v: all(b > 0 for b in v) and v == sorted(set(v)),
        "a list of positive, strictly increasing step counts",
    ),
    "overrides": (lambda v: all(a.startswith("--") for a in v), "a list of train.py arguments starting with '--'"),
    "soe_overrides": (lambda v: all(a.startswith("--") for a in v), "a list of train.py arguments starting with '--'"),
    "generic_overrides": (
        lambda v: all(a.startswith("--") for a in v),
        "a list of train.py arguments starting with '--'",
    ),
    "seed": (lambda v: v >= 0, "a non-negative integer"),
}


def _is(value, hint) -> bool:
    """``value`` has the type ``hint`` (int, float, bool, str, X | None, list[X]) as YAML would give it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return isinstance(value, list) and all(_is(v, args[0]) for v in value)
    if args:  # a union such as int | None
        return any(_is(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:  # YAML reads 3e-4 as a string: PyYAML follows YAML 1.1, which needs the dot (3.0e-4)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return f"a list of {_type_name(args[0])}s"
    if args:
        return " or ".join(_type_name(a) for a in args)
    return {int: "integer", float: "number", bool: "boolean (true/false)", str: "string", type(None): "null"}.get(
        hint, hint.__name__
    )


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def check_fields(cfg, rules: dict, source: str) -> None:
    """Refuse any field of the dataclass ``cfg`` whose value does not have its type hint's type or fails its
    ``rules[field]`` test: one line naming ``source``, the key and what was expected."""
    cls = type(cfg)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(cfg, f.name)
        if not _is(value, hints[f.name]):
            hint = ""
            if isinstance(value, str) and hints[f.name] is float and _parses_as_float(value):
                hint = f" (YAML reads {value} as text: write it with a dot, e.g. {float(value):.1e})"
            raise ValueError(f"{source}: {f.name}: expected {_type_name(hints[f.name])}, got {value!r}{hint}")
        test, expected = rules.get(f.name, (None, ""))
        if test is not None and value is not None and not test(value):
            raise ValueError(f"{source}: {f.name}: expected {expected}, got {value!r}")


def validate(cfg: ExperimentConfig, source: str = "experiment config") -> ExperimentConfig:
    """Refuse any field of the wrong type or out of range: one line naming ``source``, the key, the expectation."""
    check_fields(cfg, RULES, source)
    if cfg.max_steps is not None and cfg.budgets and cfg.budgets[-1] >= cfg.max_steps:
        raise ValueError(
            f"{source}: budgets: expected step counts below max_steps={cfg.max_steps} (the main runs are "
            f"the curve's last point), got {cfg.budgets}"
        )
    return cfg


def build(cls, raw, source: str, what: str = "experiment settings"):
    """An instance of the dataclass ``cls`` from a parsed YAML mapping, refusing non-mappings and unknown keys
    (the caller validates the values)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping of {what}, got {type(raw).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(map(str, raw)) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; expected some of {sorted(known)}")
    return cls(**raw)


def from_mapping(raw, source: str) -> ExperimentConfig:
    """An `ExperimentConfig` from a parsed YAML mapping, refusing unknown keys and invalid values."""
    return validate(build(ExperimentConfig, raw, source), source)


def read_yaml(path: str | Path, what: str):
    """Parse the YAML file ``path``; a missing or unparsable one is refused naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        return yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: {what} is not valid YAML ({' '.join(str(e).split())})") from None


def load_config(path: str | Path) -> ExperimentConfig:
    return from_mapping(read_yaml(path, "experiment config"), str(path))


def check_files(cfg: ExperimentConfig, source: str = "experiment config") -> None:
    """The prepared data and the training configs the experiment names must exist before anything trains."""
    data = Path(cfg.data_dir)
    if not (data / "meta.json").is_file():
        raise FileNotFoundError(
            f"{source}: data_dir: {data} is not a prepared-data directory (no meta.json); "
            "run `python -m data_prep.prepare` or fix the path"
        )
    for key in ("soe_config", "generic_config"):
        if not Path(getattr(cfg, key)).is_file():
            raise FileNotFoundError(f"{source}: {key}: training config {getattr(cfg, key)} not found")
