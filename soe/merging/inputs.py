"""The inputs of a merge, opened lazily and checked for compatibility before any tensor is read.

Specialist directories are memory-mapped safetensors files read one tensor at a time (`Weights`); a soup base
is an in-memory model with the same interface (`Tensors`). `open_inputs` checks that every input has the same
tensor names, shapes and tokenizer, and builds the soup base when the config asks for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from soe.data.shards import sha256_file
from soe.fileio import read_json
from soe.merging.config import MergeConfig
from soe.merging.soupbase import SoupBase, soup_base
from soe.specialists.export import SOE_FILE, WEIGHTS_FILE


class Tensors:
    """An in-memory base (a soup's Θ) with the interface of `Weights`."""

    def __init__(self, tensors: dict[str, torch.Tensor], role: str, tokenizer_sha256: str | None):
        self.t, self.role, self.dir, self.tok = tensors, role, None, tokenizer_sha256
        self.names, self.bytes = list(tensors), 0

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.t[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self.t[name]


class Weights:
    """Lazy, memory-mapped access to one specialist directory's model.safetensors."""

    def __init__(self, directory: str, role: str):
        from safetensors import safe_open

        self.dir = Path(directory)
        path = self.dir / WEIGHTS_FILE
        if not self.dir.is_dir():
            raise FileNotFoundError(f"{role} {self.dir}: not a directory (expected a specialist directory)")
        if not path.is_file():
            raise FileNotFoundError(f"{role} {self.dir}: no {WEIGHTS_FILE} (expected a specialist directory)")
        try:
            self.f = safe_open(str(path), framework="pt")
            self.names = list(self.f.keys())
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"{role} {path}: not a readable safetensors file ({e})") from None
        self.role, self.bytes = role, path.stat().st_size
        self.tok = _tokenizer_hash(self.dir)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.f.get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self.f.get_tensor(name).float()


def _tokenizer_hash(d: Path) -> str | None:
    p = d / "tokenizer.json"
    return sha256_file(p) if p.is_file() else None


def _check_compatible(base: Weights, models: list[Weights]) -> list[str]:
    """The common tensor names, after checking every input has the same names, shapes and tokenizer."""
    names = base.names
    for m in models:
        if set(m.names) != set(names):
            diff = sorted(set(m.names) ^ set(names))[:3]
            raise ValueError(
                f"{m.role} {m.dir}: its tensors differ from {base.role} {base.dir} (e.g. {diff}): "
                "expected specialists of the same architecture"
            )
        for n in names:
            if m.shape(n) != base.shape(n):
                raise ValueError(
                    f"{m.role} {m.dir}: tensor {n} has shape {m.shape(n)}, {base.role} has "
                    f"{base.shape(n)}: expected specialists of the same architecture"
                )
        if base.tok is not None and m.tok != base.tok:
            raise ValueError(
                f"{m.role} {m.dir}: its tokenizer.json differs from {base.role}'s "
                f"({base.dir or 'the soup'}): merged models must share one tokenizer"
            )
    return names


def _specialist_info(d: Path) -> dict:
    p = d / SOE_FILE
    return read_json(p, "specialist metadata") if p.is_file() else {}


@dataclass
class Inputs:
    models: list[Weights]
    base: Weights | Tensors | None
    names: list[str]
    """The tensor names merged (those of the base, or of the first model)."""
    soup: SoupBase | None


def open_inputs(cfg: MergeConfig, with_bank: bool = True) -> Inputs:
    models = [Weights(m.model, f"models[{i}]") for i, m in enumerate(cfg.models)]
    sb = None
    if isinstance(cfg.base_model, dict):
        infos = [_specialist_info(m.dir) for m in models]
        sb = soup_base(cfg.base_model, infos, [m.weight for m in cfg.models], with_bank=with_bank)
        base = Tensors(sb.tensors, "base_model (soup)", sb.tokenizer_sha256)
    else:
        base = Weights(cfg.base_model, "base_model") if cfg.base_model else None
    names = _check_compatible(base or models[0], models if base else models[1:])
    return Inputs(models, base, names, sb)
