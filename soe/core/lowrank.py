"""Low-rank experts: for souped matrices, E_j = A_j B_jᵀ with a configurable rank r.

Matrices of one shape are stacked so instantiation is one batched product per shape (a Llama
block has four shapes, so a handful of kernels, never a per-tensor loop):

    A[s]: (n, G, out, r)     B[s]: (n, G, in, r)      G = number of matrices of shape (out, in)
    Δ[s] = Σ_j α_j A[s]_j B[s]_jᵀ  = bmm(A·α, Bᵀ) over the stacked (n·r) axis  → (G, out, in)

The bank then costs n·r·(out + in) numbers per matrix instead of n·out·in. Initialisation follows
LoRA for 'zero' (A = 0, B random, so Θ(h) = S at init but gradients reach A), and for 'normal'
draws both factors so that entries of A_j B_jᵀ have std ``expert_init_std``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def shape_key(shape: torch.Size) -> str:
    return "x".join(map(str, shape))


class LowRankBank(nn.Module):
    def __init__(
        self,
        n: int,
        rank: int,
        shapes: list[torch.Size],
        init: str,
        std: float,
        generator: torch.Generator | None = None,
    ):
        """shapes: the low-rank matrices in layout order, already grouped so equal shapes are adjacent."""
        super().__init__()
        self.n, self.rank = n, rank
        self.groups: list[tuple[str, torch.Size, int]] = []  # (key, (out, in), G) in layout order
        for shp in shapes:
            if self.groups and self.groups[-1][1] == shp:
                k, s, g = self.groups[-1]
                self.groups[-1] = (k, s, g + 1)
            else:
                if any(s == shp for _, s, _ in self.groups):
                    raise ValueError(f"low-rank shapes must be grouped; {tuple(shp)} appears twice")
                self.groups.append((shape_key(shp), shp, 1))
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        for key, (o, i), G in self.groups:
            A, B = torch.zeros(n, G, o, rank), torch.empty(n, G, i, rank)
            if init == "zero":
                B.normal_(0.0, 1.0 / math.sqrt(rank), generator=generator)
            else:
                s = math.sqrt(std / math.sqrt(rank))
                A.normal_(0.0, s, generator=generator)
                B.normal_(0.0, s, generator=generator)
            self.A[key], self.B[key] = nn.Parameter(A), nn.Parameter(B)
        self.numel = sum(G * o * i for _, (o, i), G in self.groups)

    def delta(self, alpha: torch.Tensor) -> torch.Tensor:
        """Σ_j α_j A_j B_jᵀ for every matrix, flattened in layout order: (numel,). alpha: (n,)."""
        out = []
        for key, (o, i), G in self.groups:
            A, B = self.A[key], self.B[key]
            a = alpha.to(A.dtype).view(-1, 1, 1, 1)
            # (n, G, o, r) → (G, o, n·r) and (n, G, i, r) → (G, n·r, i): contract experts and rank at once
            Aa = (A * a).permute(1, 2, 0, 3).reshape(G, o, self.n * self.rank)
            Bt = B.permute(1, 0, 3, 2).reshape(G, self.n * self.rank, i)
            out.append(torch.bmm(Aa, Bt).reshape(-1))
        return torch.cat(out) if len(out) > 1 else out[0]

    def expert(self, j: int) -> torch.Tensor:
        """E_j over the low-rank segment, flattened in layout order (for tests and analysis)."""
        return torch.cat([torch.bmm(self.A[k][j], self.B[k][j].transpose(1, 2)).reshape(-1) for k, _, _ in self.groups])
