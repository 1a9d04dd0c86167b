"""Soup-of-Experts: shared parameters S, an expert bank E_1..E_n and a router φ: h ↦ α.

    Θ(h) = S + Σ_j α_j(h) · E_j,     α = φ(h) ∈ R^n,   h ∈ simplex(k)

Storage is flat, so instantiation is one matrix-vector product per parameter group and the
model runs through ``torch.func.functional_call`` on named views of the result:

    shared[g]: (P_g,)          all tensors of group g, the souped ones first
    bank[g]:   (n, Ps_g)       experts for the souped prefix of group g only

Groups split tensors by whether they get weight decay (matrices/embeddings: "decay"; RMSNorm
gains: "no_decay"), so the optimizer can treat them differently without per-tensor buffers.
The gradients are ∂E = α ⊗ g, ∂S = g, ∂α = E g, written by hand in `soe.core.mix.Mix`. With n = 0 the
soup *is* the dense model: the views are views of S, nothing else is added. The router φ is router.py,
low-rank experts lowrank.py. This module knows nothing of Lightning or data.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.func import functional_call

from soe.core.lowrank import LowRankBank
from soe.core.mix import Mix
from soe.core.model import LlamaLM, ModelConfig
from soe.core.router import ROUTER_INPUTS, ROUTER_OUTPUTS, Router
from soe.core.weights import check_h

GROUPS = ("decay", "no_decay")
EXPERT_INITS = ("zero", "normal")


@dataclass
class SoupConfig:
    """The soup around the dense model: bank size, router φ, which tensors are souped, init."""

    n_experts: int = 8
    """Number of experts n; 0 gives the plain dense model (the generic/dedicated baselines)."""
    router_hidden: int = 128
    """Width of φ's hidden layers."""
    router_depth: int = 2
    """Number of hidden layers of φ (0: a single linear map k → n)."""
    router_output: str = "none"
    """Output activation of φ: 'none' (raw α), 'softmax' (α on the simplex), 'scaled' (raw α / n)."""
    router_input: str = "identity"
    """Transform of h before φ's first layer: 'identity'; 'log' (log(h + 1e-4): small weights spread out);
    'times_k' (h·k: entries O(1) instead of O(1/k)); 'layernorm' (LayerNorm over the k weights, learned gain and
    bias). With k = 64 the identity's pre-activations are tiny (median |x| ≈ 0.02–0.1), so GELU stays linear
    and φ is nearly affine in h."""
    souped: list[str] = field(default_factory=lambda: ["*"])
    """fnmatch patterns of HF parameter names that get experts; the others are shared only."""
    expert_init: str = "zero"
    """Expert initialisation: 'zero' (Θ(h) = S at init) or 'normal' (std expert_init_std)."""
    expert_init_std: float = 0.02
    """Std of the 'normal' expert initialisation."""
    init_seed: int = 0
    """Seed of the parameter initialisation (S, E, φ), independent of the data seed."""
    expert_rank: int = 0
    """Low-rank experts: each souped matrix's E_j = A_j B_jᵀ with this rank (0: full-rank experts)."""
    experts_from_step: int = 0
    """Seed phase: for training steps < this, Θ(h) = S for every h (α is not computed), so S trains alone
    on π's batches and E and φ get no gradient (the optimizer leaves them untouched); 0: no seed phase.
    Branch-Train-Merge's lesson: experts combine well when they grow from one shared seed."""

    def __post_init__(self) -> None:
        if self.n_experts < 0:
            raise ValueError(f"SoupConfig.n_experts={self.n_experts} must be >= 0")
        if self.router_input not in ROUTER_INPUTS:
            raise ValueError(f"SoupConfig.router_input={self.router_input!r}; expected one of {ROUTER_INPUTS}")
        if self.router_output not in ROUTER_OUTPUTS:
            raise ValueError(f"SoupConfig.router_output={self.router_output!r}; expected one of {ROUTER_OUTPUTS}")
        if self.expert_init not in EXPERT_INITS:
            raise ValueError(f"SoupConfig.expert_init={self.expert_init!r}; expected one of {EXPERT_INITS}")
        if self.experts_from_step < 0:
            raise ValueError(f"SoupConfig.experts_from_step={self.experts_from_step} must be >= 0 (0: no seed phase)")
        if self.expert_rank < 0:
            raise ValueError(f"SoupConfig.expert_rank={self.expert_rank} must be >= 0 (0: full-rank experts)")
        if self.router_depth < 0 or self.router_hidden <= 0:
            raise ValueError(
                f"SoupConfig router_depth={self.router_depth}, router_hidden={self.router_hidden}: "
                "expected depth >= 0 and hidden > 0"
            )


class SoupOfExperts(nn.Module):
    """S, the bank E and φ for a dense model ``net`` and k = ``n_domains`` domains; `instantiate` /
    `forward` / `specialist` turn domain weights h: (k,) (or (M, k), M models at once) into Θ(h)."""

    def __init__(self, net: ModelConfig, n_domains: int, soup: SoupConfig | None = None):
        super().__init__()
        soup = soup or SoupConfig()
        if n_domains <= 0:
            raise ValueError(f"n_domains={n_domains}: a soup needs at least one domain")
        self.net_cfg, self.soup_cfg, self.k, self.n = net, soup, n_domains, soup.n_experts
        gen = torch.Generator().manual_seed(soup.init_seed)
        dense = LlamaLM(net)
        dense.reset_parameters(gen)
        named = dict(dense.named_parameters())
        for pat in soup.souped:
            if not any(fnmatch.fnmatchcase(nm, pat) for nm in named):
                raise ValueError(
                    f"SoupConfig.souped pattern {pat!r} matches no parameter; names look like {list(named)[:3]}"
                )
        is_souped = {nm: any(fnmatch.fnmatchcase(nm, p) for p in soup.souped) for nm in named}

        # Low-rank experts (expert_rank = r > 0) for souped matrices where r < min(out, in).
        r = soup.expert_rank
        is_lowrank = {
            nm: bool(self.n and r and is_souped[nm] and p.ndim == 2 and r < min(p.shape)) for nm, p in named.items()
        }
        shape_rank = {}
        for nm, p in named.items():
            if is_lowrank[nm]:
                shape_rank.setdefault(tuple(p.shape), len(shape_rank))

        # Layout per group: full-rank souped tensors first (the bank covers that contiguous prefix),
        # then low-rank souped matrices grouped by shape, then the shared-only tensors.
        def order(nm):
            if is_lowrank[nm]:
                return (1, shape_rank[tuple(named[nm].shape)])
            return (0, 0) if is_souped[nm] else (2, 0)

        self.layout: dict[str, list[tuple[str, torch.Size]]] = {}
        self.n_souped: dict[str, int] = {}
        self.shared = nn.ParameterDict()
        self.bank = nn.ParameterDict()
        lowrank_shapes = []
        for g in GROUPS:
            names = [nm for nm, p in named.items() if (p.ndim >= 2) == (g == "decay")]
            names.sort(key=order)  # stable: model order kept within each part
            self.layout[g] = [(nm, named[nm].shape) for nm in names]
            self.n_souped[g] = sum(named[nm].numel() for nm in names if is_souped[nm] and not is_lowrank[nm])
            lowrank_shapes += [named[nm].shape for nm in names if is_lowrank[nm]]  # only in 'decay'
            if not names:
                continue
            self.shared[g] = nn.Parameter(torch.cat([named[nm].detach().reshape(-1) for nm in names]))
            if self.n > 0 and self.n_souped[g] > 0:
                E = torch.zeros(self.n, self.n_souped[g])
                if soup.expert_init == "normal":
                    E.normal_(0.0, soup.expert_init_std, generator=gen)
                self.bank[g] = nn.Parameter(E)
        self.lowrank = (
            LowRankBank(self.n, r, lowrank_shapes, soup.expert_init, soup.expert_init_std, gen)
            if lowrank_shapes
            else None
        )
        self.router = (
            Router(n_domains, self.n, soup.router_hidden, soup.router_depth, soup.router_output, gen, soup.router_input)
            if self.n
            else None
        )  # φ from init_seed too, never the global RNG
        # The dense network is a stateless template on the meta device: it holds no memory and
        # is hidden from nn.Module so that .to()/state_dict()/optimizers never see it.
        with torch.device("meta"):
            object.__setattr__(self, "_template", LlamaLM(net))
        self._sizes = {g: [math.prod(s) for _, s in self.layout[g]] for g in GROUPS}
        self.bank_grad_sink: dict[str, list] | None = None  # {group: [(α, G), ...]}: set by a factored optimizer

    # ---------------------------------------------------------------- soup
    def coefficients(self, h: torch.Tensor) -> torch.Tensor:
        """α = φ(h): (k,) → (n,). Empty for n = 0."""
        if self.router is None:
            return h.new_zeros(0)
        w = next(self.router.parameters())
        return self.router(h.to(device=w.device, dtype=w.dtype))

    def flat(self, h: torch.Tensor | None, alpha: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Θ(h) per group as flat vectors: {g: (P_g,)}. One addmv per group, differentiable.
        With M domain weights, h: (M, k) (or alpha: (M, n)), every vector gets a leading M: {g: (M, P_g)}."""
        if self.n and alpha is None:
            if h is None:
                raise ValueError("h is required for a soup with experts (n_experts > 0)")
            alpha = self.coefficients(h)
        out = {}
        for g, S in self.shared.items():
            ps = self.n_souped[g]
            parts = []
            if self.n and g in self.bank:
                # S[:ps] + E^T α  — E: (n, ps), α: (n,) → (ps,)
                sink = None if self.bank_grad_sink is None else self.bank_grad_sink.setdefault(g, [])
                parts.append(Mix.apply(S[:ps], self.bank[g], alpha.to(S.dtype), sink))
            else:
                parts.append(S[:ps])
            end = ps
            if g == "decay" and self.lowrank is not None:
                end = ps + self.lowrank.numel
                delta = (
                    self.lowrank.delta(alpha)
                    if alpha.ndim == 1
                    else torch.stack([self.lowrank.delta(a) for a in alpha])
                )
                parts.append(S[ps:end] + delta)  # Σ_j α_j A_j B_jᵀ, (numel,) or (M, numel)
            if end < S.numel():
                parts.append(S[end:])
            parts = [p for p in parts if p.numel()]
            if alpha is not None and alpha.ndim == 2:  # M models: shared-only parts repeat along M
                parts = [p.expand(alpha.shape[0], -1) if p.ndim == 1 else p for p in parts]
            out[g] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return out

    def instantiate(self, h: torch.Tensor | None = None, alpha: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Θ(h) as a dict of HF-named tensors (views into the flat result). h: (k,) on the simplex.
        With h: (M, k) (or alpha: (M, n)) each tensor gets a leading M: one model per row."""
        return self._named(self.flat(h, alpha))

    def _named(self, flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{g: (..., P_g)} → HF-named views {name: (..., *shape)}."""
        params = {}
        for g, theta in flat.items():
            for (nm, shape), piece in zip(self.layout[g], theta.split(self._sizes[g], dim=-1)):
                params[nm] = piece.view(*theta.shape[:-1], *shape)
        return params

    def shared_params(self) -> dict[str, torch.Tensor]:
        """S alone as HF-named views (Θ with every α_j = 0, without computing α: the seed phase)."""
        return self._named(dict(self.shared.items()))

    def forward(
        self,
        idx: torch.Tensor,
        h: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        params: dict[str, torch.Tensor] | None = None,
        experts: bool = True,
        return_alpha: bool = False,
    ):
        """Run Θ(h) (or pre-instantiated ``params``) on idx: (B, T). Returns logits, or (logits, loss); with
        ``return_alpha`` also α = φ(h) as the last element ((n,) or (M, n); None when Θ did not use α: n = 0,
        the seed phase, or ``params`` given), so that a caller logs the α of this very step.

        With M domain weights, h: (M, k), the batch is M equal groups of B/M sequences, group m run by
        Θ(h_m); the loss is the mean over groups (= over tokens), logits (B, T, V) in batch order.
        ``experts=False`` runs S for every h (the seed phase, SoupConfig.experts_from_step): E and φ stay out
        of the graph. Equal groups make the mean over the whole batch the mean over groups."""
        if not experts and params is None:
            params = self.shared_params()
        if params is None and h is not None and h.ndim == 2 and self.n:  # (n = 0: Θ does not depend on h)
            M, B = h.shape[0], idx.shape[0]
            if B % M:
                raise ValueError(f"batch of {B} sequences cannot be split into {M} equal groups (one per h)")
        # With h: (M, k), one computation for the M models: every tensor of Θ gets a leading M (views of the
        # (M, P) rows of one GEMM) and the dense model runs group m by row m through batched matmuls
        # (soe/core/model.py, stacked models); its loss, the mean over all tokens, is the mean over the groups.
        alpha = None
        if params is None:
            alpha = self.coefficients(h) if self.n and h is not None else None  # (n,) or (M, n)
            params = self.instantiate(h, alpha)
        args = (idx,) if targets is None else (idx, targets)
        out = functional_call(self._template, params, args, strict=True)
        if not return_alpha:
            return out
        return (*out, alpha) if isinstance(out, tuple) else (out, alpha)

    @torch.no_grad()
    def specialist(self, h) -> LlamaLM:
        """Θ(h) as a standalone dense model in eval mode, sharing no memory with the soup.

        h: (k,) domain weights (validated by `check_h`); ignored when n = 0. Tensors that are fresh
        results of S + α·E are moved in as they are; only those that are plain views of S (shared-only
        tensors, or every tensor when n = 0) are copied, so instantiation reads the bank once."""
        h = check_h(h, self.k) if self.n else None
        dev = next(self.parameters()).device
        params = self.instantiate(h.to(dev) if h is not None else None)
        soup_storage = {p.untyped_storage().data_ptr() for p in self.parameters()}
        params = {nm: t.clone() if t.untyped_storage().data_ptr() in soup_storage else t for nm, t in params.items()}
        with torch.device("meta"):
            net = LlamaLM(self.net_cfg)
        net.load_state_dict(params, strict=True, assign=True)
        return net.eval()

    # ---------------------------------------------------------------- bookkeeping
    def param_counts(self) -> dict[str, int]:
        shared = sum(p.numel() for p in self.shared.values())
        bank = sum(p.numel() for p in self.bank.values())
        bank += sum(p.numel() for p in self.lowrank.parameters()) if self.lowrank is not None else 0
        router = sum(p.numel() for p in self.router.parameters()) if self.router else 0
        return {"shared": shared, "bank": bank, "router": router, "total": shared + bank + router}
