"""What a soup adds to merging: bases no other tool has, and the bank's coordinates (docs/merging.md).

Specialists instantiated from one soup started at Θ(h_u) = S + Σ_j α_j(h_u) E_j. A merge needs one base:
- ``h: mean``        Θ(h̄), h̄ = the weight-averaged h_u (the soup at the teams' mixed data);
- ``h: alpha-mean``  S + Σ_j ᾱ_j E_j, ᾱ = the weight-averaged α(h_u): exactly the linear merge of the starting
                     points (φ is nonlinear, so this differs from Θ(h̄));
- ``h: <weights>``   Θ(h) for any accepted form of domain weights ("prior", a domain, a=0.3,b=0.7, a file).
Each model's h_u is read from its soe_specialist.json (recorded by ``soe instantiate``).

Bank projection: each task vector τ_u is split into its least-squares part in the span of the expert directions,
Σ_j δ_uj E_j (an n × n solve against the bank's Gram matrix), and a residual r_u. The in-span parts are changes of α
and are combined in α-space; only the residuals go through the merge method. The in-span share ‖Σ_j δ_uj E_j‖ / ‖τ_u‖
says whether this can pay: `soe merge --report` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from soe.core.weights import weights_dict
from soe.train.checkpoint import load_checkpoint
from soe.weightspec import parse_weights

H_MODES = ("mean", "alpha-mean")


@dataclass
class SoupBase:
    tensors: dict[str, torch.Tensor]
    """The base model's HF-named tensors."""
    info: dict
    """What the base is: checkpoint, mode, h or α (recorded in the merged model's soe_specialist.json)."""
    tokenizer_sha256: str | None
    bank: dict[str, torch.Tensor] = field(default_factory=dict)
    """Expert directions per tensor name, (n, *shape): Θ(α = e_j) − Θ(α = 0); only with bank projection."""


def _model_h(info: dict, where: str, domains: list[str]) -> torch.Tensor:
    w = info.get("weights")
    if not isinstance(w, dict):
        raise ValueError(
            f"{where}: its soe_specialist.json records no domain weights (it was not instantiated from "
            "a soup); give the soup base an explicit h (base_model: {soup: CKPT, h: <weights>})"
        )
    return parse_weights(w, domains)


@torch.no_grad()
def soup_base(spec: dict, model_infos: list[dict], weights: list[float], with_bank: bool) -> SoupBase:
    """The base of ``base_model: {soup: CKPT, h: mean | alpha-mean | <weights>}``."""
    soup, hp, path = load_checkpoint(spec["soup"])
    if soup.n == 0:
        raise ValueError(
            f"base_model.soup {path}: a dense checkpoint (n = 0 experts) has no bank; "
            "export it with `soe instantiate` and use that directory as base_model"
        )
    domains = list(hp["domain_names"])
    w = torch.tensor(weights, dtype=torch.float32)
    w = w / w.sum()
    mode = spec.get("h", "alpha-mean")
    info = {"soup": str(path), "h_mode": mode if mode in H_MODES else "weights"}
    if mode in H_MODES:
        hs = torch.stack([_model_h(m, f"models[{i}]", domains) for i, m in enumerate(model_infos)])  # (m, k)
        if mode == "mean":
            h = (w[:, None] * hs).sum(0)
            alpha = soup.coefficients(h)
            info["h"] = weights_dict(h, domains)
        else:
            alpha = (w[:, None] * soup.coefficients(hs)).sum(0)  # φ applied row by row: (m, n) -> (n,)
    else:
        h = parse_weights(mode, domains, hp.get("prior"))
        alpha = soup.coefficients(h)
        info["h"] = weights_dict(h, domains)
    info["alpha"] = [round(float(a), 6) for a in alpha]
    tensors = {k: v.detach().float().clone() for k, v in soup.instantiate(alpha=alpha).items()}
    bank = {}
    if with_bank:
        n = soup.n
        dirs = soup.instantiate(alpha=torch.eye(n))  # (n, *shape) per name: Θ(e_j)
        zero = soup.instantiate(alpha=torch.zeros(n))
        bank = {k: (dirs[k] - zero[k]).detach().float() for k in dirs}
    return SoupBase(tensors, info, hp.get("tokenizer_sha256"), bank)


def bank_coordinates(bank_dot: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """δ: (m, n) least-squares coordinates of m task vectors in the bank, from their inner products with the
    expert directions ``bank_dot`` (m, n) and the directions' Gram matrix (n, n)."""
    return torch.linalg.lstsq(gram.double(), bank_dot.double().T, driver="gelsd").solution.T


def bank_projection(base, models: list, bank: dict[str, torch.Tensor], names: list[str]):
    """(δ (m, n), in-span share per model): the task vectors' least-squares coordinates in the expert bank."""
    n = next(iter(bank.values())).shape[0]
    gram, dots, norms = torch.zeros(n, n, dtype=torch.float64), torch.zeros(len(models), n, dtype=torch.float64), []
    sq = torch.zeros(len(models), dtype=torch.float64)
    for name in names:
        e = bank[name].reshape(n, -1).double()
        gram += e @ e.T
        b = base.get(name).reshape(-1).double()
        for u, m in enumerate(models):
            tau = m.get(name).reshape(-1).double() - b
            dots[u] += e @ tau
            sq[u] += tau @ tau
    delta = bank_coordinates(dots, gram)
    span = torch.einsum("un,nm,um->u", delta, gram, delta).clamp_min(0).sqrt()
    norms = (span / sq.sqrt().clamp_min(1e-30)).tolist()
    return delta, norms
