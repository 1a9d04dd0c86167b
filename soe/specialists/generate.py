"""Sample text from a dense model with its tokenizer (temperature, top-k; stops at EOS)."""

from __future__ import annotations

import os

import torch

from soe.checks import check_seed, check_temperature, check_token_count
from soe.core.model import LlamaLM


@torch.no_grad()
def generate(
    net: LlamaLM,
    tokenizer_file: str | os.PathLike,
    eos_id: int,
    prompt: str = "",
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
) -> str:
    """Sample a continuation of ``prompt`` (temperature 0: greedy); stops at EOS. Returns prompt + text."""
    from tokenizers import Tokenizer

    check_temperature(temperature, "temperature (--temperature)")
    check_token_count(max_new_tokens, "max_new_tokens (--max-tokens)", allow_zero=True)
    check_seed(seed, "seed (--seed)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k={top_k!r} (--top-k): expected an integer > 0, or None for all tokens")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # e.g. bytes of another encoding on the command line (surrogate escapes)
        raise ValueError(
            f"prompt (--prompt) is not valid UTF-8 text: {prompt[e.start : e.end]!r} at character "
            f"{e.start}; expected UTF-8"
        ) from None
    tok = Tokenizer.from_file(str(tokenizer_file))
    dev = next(net.parameters()).device
    ids = tok.encode(prompt).ids if prompt else []
    idx = torch.tensor([ids or [eos_id]], dtype=torch.long, device=dev)  # (1, t)
    gen = torch.Generator(device=dev).manual_seed(seed)
    new: list[int] = []
    net.eval()
    for _ in range(max_new_tokens):
        logits = net(idx[:, -net.cfg.max_seq_len :])[0, -1].float()  # (V,)
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
