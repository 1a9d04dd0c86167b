"""Domain weights h: validation, the forms users write them in, and their JSON file.

h is a point of the simplex over the k pretraining domains, in the fixed domain order of the prepared
data's meta.json (index i of h is ``domains[i]``). Every place that takes h from outside — π's fixed_h,
the prior, the command line, weights.json — goes through `check_h`, so there is one validation rule.

Accepted forms (`parse_weights`): a {domain: weight} dict (missing domains are 0), a list of k numbers,
a domain name, inline "a=0.3,b=0.7" pairs, "prior", or a path to a weights.json file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def check_h(h, k: int, name: str = "h") -> torch.Tensor:
    """Validate domain weights and return them normalised to sum 1, as a float tensor of shape (k,)."""
    t = torch.as_tensor(h, dtype=torch.float32) if not torch.is_tensor(h) else h
    if t.ndim != 1 or t.numel() != k:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected ({k},): one weight per domain")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}={t.tolist()} contains NaN or inf; expected finite non-negative weights")
    if (t < 0).any():
        raise ValueError(f"{name}={t.tolist()} has negative entries; expected non-negative weights")
    s = t.sum()
    if s <= 0:
        raise ValueError(f"{name} sums to {float(s)}; expected a positive total (a histogram over domains)")
    return t / s


def parse_weights(spec, domains: list[str], prior=None) -> torch.Tensor:
    """Domain weights from any accepted form → validated h: (k,) float32 summing to 1."""
    k = len(domains)
    where = "weights"
    if isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        if s.endswith(".json") or (os.sep in s and Path(s).exists()):
            path = Path(s)
            if not path.is_file():
                raise FileNotFoundError(f"weights file {path} not found")
            try:
                spec = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"weights file {path}: invalid JSON ({e})") from e
            where = str(path)
        elif s == "prior" and "prior" not in domains:
            if prior is None:
                raise ValueError("weights 'prior' requested but no prior is known")
            return check_h(torch.as_tensor(prior, dtype=torch.float32), k, "prior")
        elif "=" in s:
            spec = {}
            for part in s.split(","):
                name, eq, val = part.partition("=")
                try:
                    spec[name.strip()] = float(val)
                except ValueError:
                    raise ValueError(f"weights {s!r}: {part!r} is not a domain=number pair") from None
        else:
            spec = {s: 1.0}
    if isinstance(spec, dict):
        unknown = [d for d in spec if d not in domains]
        if unknown:
            raise ValueError(f"{where}: unknown domain(s) {unknown}; the checkpoint's domains are {domains}")
        try:
            vals = [float(spec.get(d, 0.0)) for d in domains]
        except (TypeError, ValueError):
            raise ValueError(f"{where}: weights must be numbers, got {spec}") from None
        return check_h(torch.tensor(vals, dtype=torch.float32), k, where)
    return check_h(torch.as_tensor(spec, dtype=torch.float32), k, where)


def weights_dict(h, domains: list[str]) -> dict[str, float]:
    """{domain: weight} in meta.json's order (what weights.json holds)."""
    return {d: float(w) for d, w in zip(domains, torch.as_tensor(h).tolist())}


def save_weights(path: str | os.PathLike, h, domains: list[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(weights_dict(h, domains), indent=2) + "\n")
    return path


def top_domains(weights: dict[str, float], n: int = 5) -> list[tuple[str, float]]:
    """The n largest non-zero weights, largest first."""
    return sorted(((d, w) for d, w in weights.items() if w > 0), key=lambda x: -x[1])[:n]
