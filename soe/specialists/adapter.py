"""A LoRA adapter kept beside its base weights (``soe finetune --keep-adapter``), folded in when loaded.

peft's files: ``adapter_config.json`` (rank ``r``, ``lora_alpha``) and ``adapter_model.safetensors`` with
``lora_A`` (r, in) and ``lora_B`` (out, r) per adapted projection; the fold is W += (alpha / r)·B·A. The
config and the tensors are checked against each other and against the base before anything is added.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from soe.fileio import read_json

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"


def _scale(where: Path) -> tuple[int, float]:
    """(r, alpha / r) of an adapter config, refusing a rank or alpha that is not a positive number."""
    cfg = read_json(where, "LoRA adapter config")
    if not isinstance(cfg, dict):
        raise ValueError(
            f"{where}: LoRA adapter config holds a {type(cfg).__name__}; expected an object with r and lora_alpha"
        )
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{where}: LoRA rank r={r!r}; expected an integer ≥ 1")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"{where}: lora_alpha={alpha!r}; expected a finite number > 0")
    return r, alpha / r


def fold_adapter(d: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Base weights ``state`` + the peft LoRA adapter of directory ``d`` folded in, per adapted layer."""
    from safetensors.torch import load_file

    r, scale = _scale(d / CONFIG_FILE)
    try:
        ad = load_file(str(d / ADAPTER_FILE), device="cpu")
    except Exception as e:  # safetensors' own error type on a corrupt file
        raise ValueError(f"{d / ADAPTER_FILE}: not a readable safetensors file ({e})") from None
    for key, a in ad.items():
        if ".lora_A." not in key:
            continue
        module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        b = ad.get(key.replace(".lora_A.", ".lora_B."))
        if b is None or f"{module}.weight" not in state:
            raise ValueError(f"{d / ADAPTER_FILE}: adapter {module} has no lora_B or matches no weight of the model")
        w = state[f"{module}.weight"]
        if a.shape[0] != r:
            raise ValueError(
                f"{d / ADAPTER_FILE}: adapter {module} has rank {a.shape[0]} (A {tuple(a.shape)}) but "
                f"{d / CONFIG_FILE} says r={r}; expected the rank the adapter was trained with"
            )
        if b.shape[0] != w.shape[0] or a.shape[1] != w.shape[1] or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"{d / ADAPTER_FILE}: adapter {module} (B {tuple(b.shape)}, A {tuple(a.shape)}) does not "
                f"match its base weight {tuple(w.shape)}: the adapter was trained on another model"
            )
        state[f"{module}.weight"] = w + scale * (b.float() @ a.float())
    return state
