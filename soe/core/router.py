"""φ, the router of the soup: domain weights h (..., k) ↦ expert coefficients α (..., n).

An MLP with GELU hidden layers. Its input transform exists because with many domains (k = 64) the entries of h
are O(1/k): the first layer's pre-activations stay tiny (median |x| ≈ 0.02–0.1), GELU is then in its linear
range and φ is nearly affine in h; 'log', 'times_k' and 'layernorm' spread them out (experiments/RECIPE.md
measures each). Its output is raw α ('none'), α on the simplex ('softmax') or α / n ('scaled').
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ROUTER_OUTPUTS = ("none", "softmax", "scaled")
ROUTER_INPUTS = ("identity", "log", "times_k", "layernorm")


class Router(nn.Module):
    """φ: (..., k) → (..., n), an MLP with GELU hidden layers."""

    def __init__(
        self,
        k: int,
        n: int,
        hidden: int,
        depth: int,
        output: str,
        generator: torch.Generator | None = None,
        input: str = "identity",
    ):
        super().__init__()
        self.input, self.k = input, k
        if input == "layernorm":
            self.norm = nn.LayerNorm(k)
        dims = [k] + [hidden] * depth + [n]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            lin = nn.Linear(dims[i], dims[i + 1])
            if generator is not None:  # nn.Linear's default U(±1/√fan_in), but from the soup's init generator
                with torch.no_grad():
                    bound = 1.0 / math.sqrt(dims[i])
                    lin.weight.uniform_(-bound, bound, generator=generator)
                    lin.bias.uniform_(-bound, bound, generator=generator)
            layers.append(lin)
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        self.output = output
        self.n = n

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.input == "log":
            h = torch.log(h + 1e-4)
        elif self.input == "times_k":
            h = h * self.k
        elif self.input == "layernorm":
            h = self.norm(h)
        a = self.net(h)
        if self.output == "softmax":
            return F.softmax(a, dim=-1)
        if self.output == "scaled":
            return a / self.n
        return a
