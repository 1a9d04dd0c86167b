"""Sample text from a dense model with its tokenizer (temperature, top-k; stops at EOS)."""

from __future__ import annotations

import os

import torch

from soe.core.model import LlamaLM


@torch.no_grad()
def generate(net: LlamaLM, tokenizer_file: str | os.PathLike, eos_id: int, prompt: str = "", max_new_tokens: int = 100,
             temperature: float = 0.8, top_k: int | None = 50, seed: int = 0) -> str:
    """Sample a continuation of ``prompt`` (temperature 0: greedy); stops at EOS. Returns prompt + text."""
    from tokenizers import Tokenizer

    if temperature < 0 or max_new_tokens < 0 or (top_k is not None and top_k <= 0):
        raise ValueError(f"temperature={temperature}, max_new_tokens={max_new_tokens}, top_k={top_k}: expected "
                         "temperature ≥ 0, max_new_tokens ≥ 0, top_k > 0")
    tok = Tokenizer.from_file(str(tokenizer_file))
    dev = next(net.parameters()).device
    ids = tok.encode(prompt).ids if prompt else []
    idx = torch.tensor([ids or [eos_id]], dtype=torch.long, device=dev)  # (1, t)
    gen = torch.Generator(device=dev).manual_seed(seed)
    new: list[int] = []
    net.eval()
    for _ in range(max_new_tokens):
        logits = net(idx[:, -net.cfg.max_seq_len:])[0, -1].float()  # (V,)
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.numel():
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        if nxt == eos_id:
            break
        new.append(nxt)
        idx = torch.cat([idx, torch.tensor([[nxt]], device=dev)], dim=1)
    return prompt + tok.decode(new)

