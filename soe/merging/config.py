"""The merge config: mergekit's YAML conventions, validated before anything is read.

    merge_method: ties                 # linear | task_arithmetic | ties | dare_linear | dare_ties | regmean | lot | cat
                                       # | semantic (data-free, layer-wise: soe/merging/semantic.py)
    base_model: runs/generic-export    # a specialist directory (required by all but linear and regmean), or
                                       # {soup: CKPT, h: mean | alpha-mean | <weights>} (soe/merging/soupbase.py)
    models:
      - model: out/team-a              # fine-tuned specialist directories
        parameters: {weight: 1.0, density: 0.5}
      - model: out/team-b
        parameters: {weight: 1.0, density: 0.5}
    parameters: {lambda: 1.0, normalize: true, trim: tensor, rescale: l1, seed: 0}
    dtype: float32

Per-model ``parameters``: ``weight`` (default 1.0), ``density`` (share of each task vector kept by TIES /
DARE; default 1.0) and, for the data-aware methods (regmean, lot, cat), ``exemplars``: a few unlabelled texts of
that model's task (.txt/.jsonl/.json/.parquet; relative to the config file). Global ``parameters``: ``lambda`` (scale of the merged task vector, default 1.0),
``normalize`` (divide by the weights' sum; default per method as in mergekit), ``trim`` (TIES: ``tensor`` trims
each tensor to its density as mergekit does, ``model`` trims over the whole flattened model as the TIES
paper does), ``rescale`` (DARE: ``l1`` keeps each task vector's L1 norm as mergekit does, ``inverse`` divides by
the density as the DARE paper does), ``seed`` (DARE's drop masks). Data-aware methods (soe/merging/datamerge.py):
``exemplar_tokens`` (per model, default 4096), ``alpha`` (RegMean's shrinkage, 0.9), ``ridge`` (LOT, 1e-6),
``rank`` (CAT's c, 4), ``conflict_lambda`` (CAT's λ, 1.0), ``norm_share`` (CAT's share of gain dimensions, 0.1).
``bank_projection: true`` (soup base only; task_arithmetic, ties, dare_*): merge the task vectors' parts in the
span of the expert bank in α-space and only their residuals by the method.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from soe.checks import safe_load_yaml
from soe.merging.methods import RESCALES

# method -> (needs a base model, default of ``normalize``); mergekit's defaults
METHODS = {
    "linear": (False, True),
    "task_arithmetic": (True, False),
    "ties": (True, True),
    "dare_linear": (True, False),
    "dare_ties": (True, False),
    "regmean": (False, True),
    "lot": (True, False),
    "cat": (True, False),
    "semantic": (True, False),
}
DATA_METHODS = ("regmean", "lot", "cat")
DTYPES = ("float32", "bfloat16", "float16")
GLOBAL_KEYS = {
    "lambda",
    "normalize",
    "trim",
    "rescale",
    "seed",
    "int8_mask",
    "exemplar_tokens",
    "alpha",
    "ridge",
    "rank",
    "conflict_lambda",
    "norm_share",
    "bank_projection",
}
PROJECTABLE = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
MODEL_KEYS = {"weight", "density", "exemplars"}
# data-aware knobs: key -> (default, lower bound, upper bound, integer)
DATA_KNOBS = {
    "exemplar_tokens": (4096, 1, None, True),
    "alpha": (0.9, 0.0, 1.0, False),
    "ridge": (1e-6, 0.0, None, False),
    "rank": (4, 0, None, True),
    "conflict_lambda": (1.0, 0.0, None, False),
    "norm_share": (0.1, 0.0, 1.0, False),
}


@dataclass
class ModelSpec:
    model: str
    """A specialist directory (model.safetensors + soe_specialist.json or config.json)."""
    weight: float = 1.0
    density: float = 1.0
    exemplars: str | None = None
    """Unlabelled texts of this model's task (data-aware methods only)."""


@dataclass
class MergeConfig:
    merge_method: str
    models: list[ModelSpec]
    base_model: str | dict | None = None
    """A specialist directory, or {soup: CKPT, h: ...}."""
    parameters: dict = field(default_factory=dict)
    dtype: str = "float32"
    source: str = "<dict>"
    """Where the config came from (for error messages)."""

    @property
    def lam(self) -> float:
        return float(self.parameters.get("lambda", 1.0))

    def knob(self, key: str):
        return self.parameters.get(key, DATA_KNOBS[key][0])

    @property
    def normalize(self) -> bool:
        return bool(self.parameters.get("normalize", METHODS[self.merge_method][1]))


def _number(v, where: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where}: {v!r} is not a number")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{where}: {v} is not finite; expected a finite number")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
        rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else '∞'}]"
        raise ValueError(f"{where}: {v} is outside {rng}")
    return v


def parse_config(raw: dict, source: str = "<dict>") -> MergeConfig:
    """A validated MergeConfig from a mergekit-style mapping; every error names ``source`` and the key."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping with merge_method and models, got {type(raw).__name__}")
    unknown = set(raw) - {"merge_method", "models", "base_model", "parameters", "dtype"}
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {sorted(unknown)}; expected merge_method, models, base_model, parameters, dtype"
        )
    method = raw.get("merge_method")
    if method not in METHODS:
        raise ValueError(f"{source}: merge_method {method!r}; expected one of {', '.join(METHODS)}")
    models = raw.get("models")
    if not isinstance(models, list) or not models:
        raise ValueError(f"{source}: models must be a non-empty list of {{model: DIR, parameters: {{...}}}}")
    specs = []
    for i, m in enumerate(models):
        where = f"{source}: models[{i}]"
        if isinstance(m, str):
            m = {"model": m}
        if not isinstance(m, dict) or not isinstance(m.get("model"), str) or set(m) - {"model", "parameters"}:
            raise ValueError(f"{where}: expected {{model: DIR, parameters: {{weight, density}}}}, got {m!r}")
        p = m.get("parameters") or {}
        if not isinstance(p, dict) or set(p) - MODEL_KEYS:
            raise ValueError(f"{where}.parameters: expected keys among {sorted(MODEL_KEYS)}, got {p!r}")
        ex = p.get("exemplars")
        if method in DATA_METHODS and not isinstance(ex, str):
            raise ValueError(
                f"{where}.parameters.exemplars: merge_method {method} needs a file of a few unlabelled "
                f"texts of this model's task, got {ex!r}"
            )
        specs.append(
            ModelSpec(
                m["model"],
                _number(p.get("weight", 1.0), f"{where}.parameters.weight", 0),
                _number(p.get("density", 1.0), f"{where}.parameters.density", 0, 1, lo_open=True),
                ex,
            )
        )
    if sum(m.weight for m in specs) <= 0:
        raise ValueError(f"{source}: the models' weights sum to 0; expected a positive total")
    if not math.isfinite(sum(m.weight for m in specs)):
        raise ValueError(f"{source}: the models' weights sum to inf; expected weights whose sum is finite")
    seen: dict[str, int] = {}
    for i, m in enumerate(specs):
        key = os.path.normpath(m.model)
        if key in seen:
            raise ValueError(
                f"{source}: models[{i}] {m.model!r} is models[{seen[key]}] again; expected each model "
                "once (give it a larger weight instead)"
            )
        seen[key] = i
    params = raw.get("parameters") or {}
    if not isinstance(params, dict) or set(params) - GLOBAL_KEYS:
        raise ValueError(f"{source}: parameters: expected keys among {sorted(GLOBAL_KEYS)}, got {params!r}")
    if "lambda" in params:
        _number(params["lambda"], f"{source}: parameters.lambda")
    for key in ("normalize", "int8_mask"):
        if key in params and not isinstance(params[key], bool):
            raise ValueError(f"{source}: parameters.{key}: expected true or false, got {params[key]!r}")
    for key, (_, lo, hi, integer) in DATA_KNOBS.items():
        if key in params:
            _number(params[key], f"{source}: parameters.{key}", lo, hi)
            if integer and not isinstance(params[key], int):
                raise ValueError(f"{source}: parameters.{key}: expected an integer, got {params[key]!r}")
    if params.get("trim", "tensor") not in ("tensor", "model"):
        raise ValueError(f"{source}: parameters.trim {params['trim']!r}: expected tensor or model")
    if params.get("rescale", "l1") not in RESCALES:
        raise ValueError(f"{source}: parameters.rescale {params['rescale']!r}: expected one of {', '.join(RESCALES)}")
    if "seed" in params and (isinstance(params["seed"], bool) or not isinstance(params["seed"], int)):
        raise ValueError(f"{source}: parameters.seed: expected an integer, got {params['seed']!r}")
    base = raw.get("base_model")
    if isinstance(base, dict):
        if not isinstance(base.get("soup"), str) or set(base) - {"soup", "h"}:
            raise ValueError(
                f"{source}: base_model: expected a directory or {{soup: CKPT, h: mean | alpha-mean | "
                f"<weights>}}, got {base!r}"
            )
        if isinstance(base.get("h"), bool) or not isinstance(base.get("h", "alpha-mean"), (str, dict, list)):
            raise ValueError(f"{source}: base_model.h: expected mean, alpha-mean or domain weights, got {base['h']!r}")
    elif base is not None and not isinstance(base, str):
        raise ValueError(
            f"{source}: base_model: expected a specialist directory or {{soup: CKPT, h: ...}}, got {base!r}"
        )
    if params.get("bank_projection", False) not in (True, False):
        raise ValueError(
            f"{source}: parameters.bank_projection: expected true or false, got {params['bank_projection']!r}"
        )
    if params.get("bank_projection") and not (isinstance(base, dict) and method in PROJECTABLE):
        raise ValueError(
            f"{source}: parameters.bank_projection needs base_model: {{soup: CKPT, ...}} and a merge_method "
            f"among {', '.join(PROJECTABLE)}"
        )
    if METHODS[method][0] and base is None:
        raise ValueError(f"{source}: merge_method {method} needs base_model (the model the task vectors start from)")
    dtype = raw.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"{source}: dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return MergeConfig(method, specs, base, dict(params), dtype, source)


def load_config(path: str | os.PathLike) -> MergeConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"merge config {path} not found")
    import yaml

    try:
        raw = safe_load_yaml(path.read_text(), str(path))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    cfg = parse_config(raw, str(path))

    # Relative model paths are relative to the config file, as a user reading it would expect...
    # ...unless they exist relative to the working directory (mergekit resolves against the cwd).
    def resolve(p: str) -> str:
        return p if Path(p).exists() or Path(p).is_absolute() else str(path.parent / p)

    for m in cfg.models:
        m.model = resolve(m.model)
        m.exemplars = resolve(m.exemplars) if m.exemplars else None
    if isinstance(cfg.base_model, dict):
        cfg.base_model = {**cfg.base_model, "soup": resolve(cfg.base_model["soup"])}
    elif cfg.base_model is not None:
        cfg.base_model = resolve(cfg.base_model)
    return cfg


def check_paths(cfg: MergeConfig, out: str | os.PathLike) -> None:
    """Refuse the same model listed twice (after resolving links) and an ``out`` that is one of the inputs (its
    replacement would destroy an input). Called before anything is read or written."""
    real = os.path.realpath(out)
    inputs = [(f"models[{i}]", m.model) for i, m in enumerate(cfg.models)]
    inputs += [(f"models[{i}].exemplars", m.exemplars) for i, m in enumerate(cfg.models) if m.exemplars]
    base = cfg.base_model["soup"] if isinstance(cfg.base_model, dict) else cfg.base_model
    if base:
        inputs.append(("base_model", base))
    seen: dict[str, str] = {}
    for what, p in inputs:
        rp = os.path.realpath(p)
        if rp == real or real.startswith(rp.rstrip(os.sep) + os.sep) or rp.startswith(real.rstrip(os.sep) + os.sep):
            raise ValueError(
                f"--out {out} is (or contains, or is inside) {what} {p} of the merge; expected an output "
                "apart from every input"
            )
        if what.startswith("models[") and "exemplars" not in what and rp in seen:
            raise ValueError(f"{cfg.source}: {what} {p} is {seen[rp]} again; expected each model once")
        seen.setdefault(rp, what)
