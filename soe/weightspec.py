"""Domain weights as users write them, parsed strictly before `soe.core.weights.parse_weights` validates them.

The core parser reads inline pairs with Python's float() and a dict: a domain given twice ('law=1,law=0')
kept the last value, '1_0' read as 10, and a weights file whose name does not end in .json was taken for a
domain name. This front end refuses those, naming the input (JSON files: duplicate keys are refused by
`soe.fileio.read_json`); everything else goes to the core parser unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from soe.checks import strict_number
from soe.core import weights as core


def inline_pairs(s: str) -> dict[str, float]:
    """'a=0.3,b=0.7' -> {a: 0.3, b: 0.7}, refusing empty names, a name twice and non-strict numbers."""
    pairs: dict[str, float] = {}
    for part in s.split(","):
        name, eq, val = part.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ValueError(f"weights {s!r}: {part!r} is not a domain=number pair")
        if name in pairs:
            raise ValueError(f"weights {s!r}: domain {name!r} is given twice; expected each domain once")
        if "_" in val:
            strict_number(val, float, f"weights {s!r}: {name}")  # names the '_' rule
        try:
            pairs[name] = float(val)
        except ValueError:
            raise ValueError(f"weights {s!r}: {part!r} is not a domain=number pair") from None
    return pairs


def parse_weights(spec, domains: list[str], prior=None) -> torch.Tensor:
    """Any accepted form of domain weights (see `soe.core.weights`) -> validated h: (k,) float32 summing to 1."""
    if isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        if s in domains or s == "prior":
            pass
        elif Path(s).is_file():  # a weights file, whatever its name (a path the core parser reads as a file)
            spec = os.path.abspath(s)
        elif "=" in s:
            spec = inline_pairs(s)
        elif s.endswith(".json") or os.sep in s or Path(s).suffix:
            raise FileNotFoundError(f"weights file {s} not found (nor is {s!r} a domain: {domains})")
    return core.parse_weights(spec, domains, prior)
