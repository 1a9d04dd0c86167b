"""Domain weights h: validation, the forms users write them in, and their JSON file.

h is a point of the simplex over the k pretraining domains, in the fixed domain order of the prepared
data's meta.json (index i of h is ``domains[i]``). Every place that takes h from outside — π's fixed_h,
the prior, the command line, weights.json — goes through `check_h`, so there is one validation rule.

Accepted forms (`parse_weights`): a {domain: weight} dict (missing domains are 0), a list of k numbers,
a domain name, inline "a=0.3,b=0.7" pairs, "prior", or a path to a weights file (any name). Parsed strictly,
for every caller (CLI, API, server, merge configs): a domain given twice ('law=1,law=0', or a key twice in
the file) is refused naming it, numbers follow `soe.checks.strict_number` ('1_0' is not 10), and a name that
looks like a file but is none is reported as a missing file, not as an unknown domain.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np
import torch

from soe.checks import strict_number
from soe.fileio import atomic_write_json, read_json


def _number(v, where: str, name) -> float:
    """One weight as a float; JSON booleans, strings, null and lists are refused (float(True) would be 1)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{where}: the weight of {name} is {v!r} ({type(v).__name__}); expected a number")
    return float(v)


def check_h(h, k: int, name: str = "h") -> torch.Tensor:
    """Validate domain weights and return them normalised to sum 1, as a float32 tensor of shape (k,).

    The sum and the division are done in float64: weights each finite in float32 (2e38 + 2e38) would
    overflow a float32 sum to inf and normalise to 0; the result is checked before it is narrowed."""
    if torch.is_tensor(h):
        if h.dtype == torch.bool:
            raise ValueError(f"{name} is a boolean tensor; expected numeric weights")
        t = h.double()
    else:
        t = torch.as_tensor(
            [_number(v, name, f"domain {i}") for i, v in enumerate(h)] if isinstance(h, (list, tuple)) else h,
            dtype=torch.float64,
        )
    if t.ndim != 1 or t.numel() != k:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected ({k},): one weight per domain")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}={t.tolist()} contains NaN or inf; expected finite non-negative weights")
    if (t < 0).any():
        raise ValueError(f"{name}={t.tolist()} has negative entries; expected non-negative weights")
    s = t.sum()
    if not s > 0:
        raise ValueError(f"{name} sums to {float(s)}; expected a positive total (a histogram over domains)")
    out = (t / s).float()
    if not torch.isfinite(out).all() or abs(float(out.double().sum()) - 1.0) > 1e-4:
        raise ValueError(f"{name}={t.tolist()} cannot be normalised to sum 1 in float32 (got {out.tolist()})")
    return out


def _read_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    spec = read_json(path, "weights file")
    if not isinstance(spec, (dict, list)):
        raise ValueError(f"{path}: weights file holds a {type(spec).__name__}; expected {{domain: weight}} or a list")
    return spec


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
    """Domain weights from any accepted form → validated h: (k,) float32 summing to 1."""
    k = len(domains)
    where = "weights"
    if isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        if s == "prior" and "prior" not in domains:
            if prior is None:
                raise ValueError("weights 'prior' requested but no prior is known")
            return check_h(torch.as_tensor(prior, dtype=torch.float64), k, "prior")
        if s in domains:
            spec = {s: 1.0}
        elif Path(s).is_file():  # a weights file, whatever its name
            spec, where = _read_file(Path(s)), s
        elif "=" in s:
            spec = inline_pairs(s)
        elif s.endswith(".json") or os.sep in s or Path(s).suffix:
            raise FileNotFoundError(f"weights file {s} not found (nor is {s!r} a domain: {domains})")
        else:
            spec = {s: 1.0}
    if isinstance(spec, dict):
        unknown = [d for d in spec if d not in domains]
        if unknown:
            raise ValueError(f"{where}: unknown domain(s) {unknown}; the checkpoint's domains are {domains}")
        return check_h([_number(spec.get(d, 0.0), where, repr(d)) for d in domains], k, where)
    if isinstance(spec, (list, tuple)):
        return check_h(
            [_number(v, where, repr(domains[i]) if i < k else f"entry {i}") for i, v in enumerate(spec)], k, where
        )
    if torch.is_tensor(spec) or isinstance(spec, np.ndarray):
        return check_h(torch.as_tensor(spec), k, where)
    raise ValueError(
        f"{where}: {spec!r} ({type(spec).__name__}) is not a form of domain weights; expected a "
        "{domain: weight} dict, a list of k numbers, a domain name, 'a=0.3,b=0.7', 'prior' or weights.json"
    )


def weights_dict(h, domains: list[str]) -> dict[str, float]:
    """{domain: weight} in meta.json's order (what weights.json holds)."""
    return {d: float(w) for d, w in zip(domains, torch.as_tensor(h).tolist())}


def save_weights(path: str | os.PathLike, h, domains: list[str]) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"weights output {path} is a directory; expected a file name such as weights.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, weights_dict(h, domains))


def top_domains(weights: dict[str, float], n: int = 5) -> list[tuple[str, float]]:
    """The n largest non-zero weights, largest first."""
    return sorted(((d, w) for d, w in weights.items() if w > 0), key=lambda x: -x[1])[:n]
