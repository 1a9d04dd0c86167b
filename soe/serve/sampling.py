"""The next token from one row of logits: the rule of `soe.specialists.generate`, plus OpenAI's top_p.

With top_p = 1 the operations are exactly those of ``soe generate`` (temperature 0: argmax; else divide by the
temperature, keep the top_k largest, softmax, one ``torch.multinomial`` draw from the request's own generator
seeded with its seed), so a served completion equals ``soe generate`` on the exported specialist with the same
prompt, seed, temperature and top-k. top_p < 1 keeps the smallest set of most likely tokens whose probability
reaches top_p (nucleus sampling), after top-k.
"""

from __future__ import annotations

import torch


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float, gen: torch.Generator) -> int:
    """logits: (V,) float32 → a token id."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        probs, order = torch.sort(torch.softmax(logits, -1), descending=True)
        drop = (probs.cumsum(-1) - probs) >= top_p  # the mass before this token already reaches top_p
        drop[0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
