"""Evaluate dense models on prepared sets (loss, perplexity, bits per byte) and sample from them.

An evaluation set is one domain's split of a prepared directory: the pretraining domains'
validation shards, or a specialist set under ``<prepared>/specialists/``. Windows are
non-overlapping (stride T), at most ``max_tokens`` per set, evenly spread over the shard.

bits/byte = loss (nats/token) · tokens/bytes of the split (meta.json) / ln 2; perplexity = e^loss per token,
byte perplexity = 2^(bits/byte).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from soe.model import LlamaLM
from soe.shards import Meta, check_tokenizer, load_meta, open_shard
from soe.specialize import mean_loss, windows


@dataclass
class EvalSet:
    name: str
    directory: Path
    meta: Meta
    domain: str
    split: str = "val"


def eval_sets(data_dir: str | os.PathLike, which: list[str] | None = None, split: str = "val") -> list[EvalSet]:
    """Sets named by ``which``: 'val' (every pretraining domain), 'specialists' (every specialist
    set), a specialist set's name, or a path to any prepared directory. Default: val + specialists."""
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    which = which or ["val", "specialists"]
    out: list[EvalSet] = []

    def add_named(name: str, d: Path) -> None:
        m = load_meta(d)
        if name in m.domains:  # the usual layout: specialists/meta.json lists every set as a domain
            out.append(EvalSet(name, d, m, name, split))
            return
        for dom in m.domains:
            out.append(EvalSet(name if len(m.domains) == 1 else f"{name}/{dom}", d, m, dom, split))

    for w in which:
        if w == "val":
            out += [EvalSet(d, data_dir, meta, d, split) for d in meta.domains]
        elif w == "specialists":
            for name, rel in meta.specialists.items():
                add_named(name, data_dir / rel)
        elif w in meta.specialists:
            add_named(w, data_dir / meta.specialists[w])
        elif Path(w).is_dir():
            add_named(Path(w).name, Path(w))
        else:
            raise ValueError(f"evaluation set {w!r} unknown: expected 'val', 'specialists', one of "
                             f"{sorted(meta.specialists)} or a prepared directory")
    if not out:
        raise ValueError(f"{data_dir}: no evaluation sets selected by {which}")
    return out


@torch.no_grad()
def evaluate(models: dict[str, tuple[LlamaLM, str | None]], sets: list[EvalSet], max_tokens: int = 65536,
             batch_size: int = 16) -> list[dict]:
    """models: {label: (dense model, its tokenizer sha256 or None)} → one row per (model, set)."""
    rows = []
    for es in sets:
        for label, (net, sha) in models.items():
            check_tokenizer(es.meta, es.directory, expected_sha256=sha, expected_vocab=net.cfg.vocab_size)
        shard = open_shard(es.directory, es.meta, es.domain, es.split)
        for label, (net, _) in models.items():
            T = min(net.cfg.max_seq_len, len(shard) - 1)
            wins = windows(shard, T, max_windows=max(1, max_tokens // T))
            dev = next(net.parameters()).device
            net.eval()
            loss = mean_loss(lambda x, y: net(x.to(dev), y.to(dev))[1], wins, batch_size)
            n_bytes = es.meta.bytes.get(es.domain, {}).get(es.split)
            n_tok = es.meta.tokens.get(es.domain, {}).get(es.split, len(shard))
            bpb = loss * n_tok / n_bytes / math.log(2) if n_bytes else None
            rows.append({"model": label, "set": es.name, "split": es.split, "tokens": int(wins[:, 1:].numel()),
                         "loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": bpb,
                         "byte_perplexity": 2.0 ** bpb if bpb is not None else None})
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = ("| model | set | tokens | loss (nats/token) | perplexity | bits/byte | byte perplexity |\n"
            "|---|---|---:|---:|---:|---:|---:|\n")
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    return head + "\n".join(f"| {r['model']} | {r['set']} | {r['tokens']} | {r['loss']:.4f} | "
                            f"{fmt(r['perplexity'], '.2f')} | {fmt(r['bits_per_byte'], '.4f')} | "
                            f"{fmt(r['byte_perplexity'], '.3f')} |" for r in rows) + "\n"


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

