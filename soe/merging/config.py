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

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Interval, MinLen
from pydantic import Field

from soe.configfile import Bool, ConfigError, Count, Expect, Float, Int, Str, config, parse, read_yaml

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
PROJECTABLE = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
Method = Literal["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "regmean", "lot", "cat", "semantic"]
Dtype = Literal["float32", "bfloat16", "float16"]


# -- the file, as written (mergekit's conventions) -------------------------------------------------------------


@config
@dataclass
class ModelParameters:
    """``models[i].parameters``."""

    weight: Annotated[Float, Ge(0)] = 1.0
    """The model's weight (normalized by the weights' sum where the method normalizes)."""
    density: Annotated[Float, Interval(gt=0, le=1)] = 1.0
    """Share of the task vector kept by TIES / DARE."""
    exemplars: Str | None = None
    """Unlabelled texts of this model's task (.txt/.jsonl/.json/.parquet; data-aware methods only)."""


@config
@dataclass
class ModelEntry:
    """``models[i]``: ``{model: DIR, parameters: {...}}`` (or just ``DIR``)."""

    model: Str
    """A specialist directory (model.safetensors + soe_specialist.json or config.json)."""
    parameters: ModelParameters = field(default_factory=ModelParameters)


@config
@dataclass
class SoupBase:
    """``base_model: {soup: CKPT, h: ...}``: the soup's own model at h as the base (soe/merging/soupbase.py)."""

    soup: Str
    """The soup checkpoint."""
    h: Str | dict[str, Any] | list[Any] = "alpha-mean"
    """mean, alpha-mean or domain weights."""


@config
@dataclass
class MergeParameters:
    """The global ``parameters`` (every key optional; mergekit's defaults)."""

    lam: Annotated[Float, Field(alias="lambda")] = 1.0
    """``lambda``: scale of the merged task vector."""
    normalize: Bool | None = None
    """Divide by the weights' sum (default per method, as in mergekit)."""
    trim: Literal["tensor", "model"] = "tensor"
    """TIES: ``tensor`` trims each tensor to its density (mergekit), ``model`` the whole flattened model (paper)."""
    rescale: Literal["l1", "inverse", "none"] = "l1"
    """DARE: ``l1`` keeps each task vector's L1 norm (mergekit), ``inverse`` divides by the density (paper)."""
    seed: Int = 0
    """DARE's drop masks."""
    int8_mask: Bool = False
    """mergekit's option, accepted for compatibility (soe's masks are bool tensors)."""
    exemplar_tokens: Count = 4096
    """Data-aware methods: exemplar tokens per model."""
    alpha: Annotated[Float, Interval(ge=0, le=1)] = 0.9
    """RegMean's shrinkage of the Gram matrices' off-diagonal."""
    ridge: Annotated[Float, Ge(0)] = 1e-6
    """LOT's ridge."""
    rank: Annotated[Int, Ge(0)] = 4
    """CAT's c."""
    conflict_lambda: Annotated[Float, Ge(0)] = 1.0
    """CAT's λ."""
    norm_share: Annotated[Float, Interval(ge=0, le=1)] = 0.1
    """CAT's share of gain dimensions."""
    bank_projection: Bool = False
    """Soup base only (task_arithmetic, ties, dare_*): merge the task vectors' parts in the span of the expert
    bank in α-space and only their residuals by the method."""


@config
@dataclass
class MergeFile:
    merge_method: Method
    models: Annotated[list[Str | ModelEntry], MinLen(1), Expect("a non-empty list of {model: DIR, parameters: {...}}")]
    base_model: Str | SoupBase | None = None
    """A specialist directory, or {soup: CKPT, h: ...} (required by all methods but linear and regmean)."""
    parameters: MergeParameters = field(default_factory=MergeParameters)
    dtype: Dtype = "float32"


# -- what the merge reads --------------------------------------------------------------------------------------


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
    """The global parameters as given (validated by `MergeParameters`; absent keys take its defaults)."""
    dtype: str = "float32"
    source: str = "<dict>"
    """Where the config came from (for error messages)."""

    @property
    def lam(self) -> float:
        return float(self.parameters.get("lambda", 1.0))

    def knob(self, key: str):
        return self.parameters.get(key, _DEFAULTS[key])

    @property
    def normalize(self) -> bool:
        return bool(self.parameters.get("normalize", METHODS[self.merge_method][1]))


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MergeParameters)}


def parse_config(raw: dict, source: str = "<dict>") -> MergeConfig:
    """A validated MergeConfig from a mergekit-style mapping; every error names ``source`` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with merge_method and models, got {type(raw).__name__}")
    raw = {k: ({} if k == "parameters" and v is None else v) for k, v in raw.items()}
    if isinstance(raw.get("models"), list):  # `parameters:` left empty means the defaults
        raw["models"] = [
            {**m, "parameters": {}} if isinstance(m, dict) and m.get("parameters", 0) is None else m
            for m in raw["models"]
        ]
    f = parse(MergeFile, raw, source)
    method, params, base = f.merge_method, dict(raw.get("parameters") or {}), raw.get("base_model")
    specs = []
    for i, m in enumerate(f.models):
        m = ModelEntry(m) if isinstance(m, str) else m
        if method in DATA_METHODS and m.parameters.exemplars is None:
            raise ConfigError(
                f"{source}: models[{i}].parameters.exemplars: merge_method {method} needs a file of a few unlabelled "
                "texts of this model's task, got None"
            )
        p = m.parameters
        specs.append(ModelSpec(m.model, float(p.weight), float(p.density), p.exemplars))
    total = sum(m.weight for m in specs)
    if total <= 0:
        raise ConfigError(f"{source}: the models' weights sum to 0; expected a positive total")
    if not math.isfinite(total):
        raise ConfigError(f"{source}: the models' weights sum to inf; expected weights whose sum is finite")
    seen: dict[str, int] = {}
    for i, m in enumerate(specs):
        key = os.path.normpath(m.model)
        if key in seen:
            raise ConfigError(
                f"{source}: models[{i}] {m.model!r} is models[{seen[key]}] again; expected each model "
                "once (give it a larger weight instead)"
            )
        seen[key] = i
    if f.parameters.bank_projection and not (isinstance(f.base_model, SoupBase) and method in PROJECTABLE):
        raise ConfigError(
            f"{source}: parameters.bank_projection needs base_model: {{soup: CKPT, ...}} and a merge_method "
            f"among {', '.join(PROJECTABLE)}"
        )
    if METHODS[method][0] and base is None:
        raise ConfigError(f"{source}: merge_method {method} needs base_model (the model the task vectors start from)")
    return MergeConfig(method, specs, base, params, f.dtype, source)


def load_config(path: str | os.PathLike) -> MergeConfig:
    path = Path(path)
    cfg = parse_config(read_yaml(path, "merge config"), str(path))

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
