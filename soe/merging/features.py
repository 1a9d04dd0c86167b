"""Layer inputs of a specialist on a few unlabelled exemplars: what data-aware merging (RegMean, LOT, CAT) needs.

For every linear layer (``...q_proj`` ... ``down_proj``, and the untied ``lm_head``) we keep the Gram matrix of its
inputs G = XᵀX (d_in × d_in, X: the layer's input rows, one per exemplar token), and for every RMSNorm gain the
energy of its normalised input per dimension e = Σ x̂² (d,). Forward hooks accumulate them batch by batch, so
memory is the Gram matrices (Σ d_in² floats per layer) whatever the number of exemplar tokens, which is bounded.
Names are the weight tensors' names (``model.layers.0.self_attn.q_proj.weight``), as in the safetensors files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from soe.core.model import LlamaLM, RMSNorm
from soe.data.text import read_texts, token_stream
from soe.data.windows import eval_windows


@dataclass
class Features:
    gram: dict[str, torch.Tensor]
    """weight name -> XᵀX of the layer's inputs, float64 (d_in, d_in)."""
    energy: dict[str, torch.Tensor]
    """RMSNorm gain name -> Σ over tokens of the normalised input squared, float64 (d,)."""
    tokens: int
    """Exemplar tokens seen."""


def exemplar_windows(
    source, tokenizer_file: str | os.PathLike, eos_id: int, seq_len: int, max_tokens: int, text_field: str = "text"
) -> torch.Tensor:
    """(N, seq_len) token windows from unlabelled texts (any form `read_texts` accepts), at most ``max_tokens``."""
    if max_tokens < seq_len:
        raise ValueError(f"exemplar token budget {max_tokens} is below one window of {seq_len} tokens")
    stream = token_stream(read_texts(source, text_field), tokenizer_file, eos_id)
    if len(stream) < seq_len + 1:
        raise ValueError(f"exemplars {source}: {len(stream)} tokens; expected at least one window of {seq_len + 1}")
    wins = eval_windows(stream, seq_len, max_windows=max_tokens // seq_len)
    return wins[:, :seq_len]  # eval_windows adds the next-token targets; only the inputs run here


@torch.no_grad()
def collect(net: LlamaLM, windows: torch.Tensor, batch_size: int = 8) -> Features:
    """Run ``net`` on ``windows`` (N, T) and accumulate its layers' input statistics."""
    gram: dict[str, torch.Tensor] = {}
    energy: dict[str, torch.Tensor] = {}
    hooks = []

    def on_linear(name):
        def hook(_mod, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()  # (tokens, d_in)
            # one batch's Gram in float32 (a fast matmul), summed over batches in float64
            gram[name] = gram.get(name, 0) + (x.T @ x).double()

        return hook

    def on_norm(name, eps):
        def hook(_mod, args):
            x = args[0].float()
            xh = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).reshape(-1, x.shape[-1])
            energy[name] = energy.get(name, 0) + xh.pow(2).sum(0).double()

        return hook

    for mname, mod in net.named_modules():
        if isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_pre_hook(on_linear(f"{mname}.weight")))
        elif isinstance(mod, RMSNorm):
            hooks.append(mod.register_forward_pre_hook(on_norm(f"{mname}.weight", mod.eps)))
    try:
        net.eval()
        for i in range(0, len(windows), batch_size):
            net(windows[i : i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return Features(gram, energy, int(windows.numel()))
