"""Evaluate dense models: loss, perplexity and bits per byte on prepared sets or on any text.

The loss of a model on a token array is the token-mean next-token loss over the windows of
`soe.data.windows.eval_windows` (`mean_loss`); validation during training, experiments, ablations and
``soe evaluate`` all measure it that way, so their numbers agree for the same windows.

An evaluation set is either one domain's split of a prepared directory (the pretraining domains'
validation shards, or a specialist set under ``<prepared>/specialists/``), or raw documents
(txt/jsonl/json/parquet/`datasets`/``hf:``), tokenised with each model's own tokenizer and joined with
EOS as the shards are.

bits/byte = loss (nats/token) · tokens/bytes of the set / ln 2 (tokens include the EOS separators, bytes
are the UTF-8 bytes of the text); perplexity = e^loss per token; byte perplexity = 2^(bits/byte).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from soe.core.model import LlamaLM
from soe.data.progress import bar
from soe.data.shards import Meta, check_tokenizer, load_meta, open_shard
from soe.data.text import read_texts, token_stream
from soe.data.windows import eval_windows

DEFAULT_WINDOWS = 512
"""Windows per set evaluated by default (512 × 128 tokens ≈ 65k tokens for the demo model)."""


class DenseModel(Protocol):
    """What evaluation needs of a model: `soe.api.Specialist` is one."""

    model: LlamaLM
    tokenizer_file: Path
    eos_id: int
    tokenizer_sha256: str | None


@torch.no_grad()
def mean_loss(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    wins: torch.Tensor,
    batch_size: int = 32,
    on_batch: Callable[[int], object] | None = None,
) -> float:
    """Token-mean next-token loss of ``forward(x, y) -> mean loss`` over windows (W, T+1); ``on_batch`` gets
    the windows of each batch done (a progress bar's update)."""
    total, count = 0.0, 0
    for i in range(0, len(wins), batch_size):
        b = wins[i : i + batch_size]
        total += float(forward(b[:, :-1], b[:, 1:])) * b[:, 1:].numel()
        count += b[:, 1:].numel()
        if on_batch is not None:
            on_batch(len(b))
    return total / count


def model_loss(
    net: LlamaLM, wins: torch.Tensor, batch_size: int = 32, on_batch: Callable[[int], object] | None = None
) -> float:
    """`mean_loss` of a dense model (eval mode, on its own device)."""
    dev = next(net.parameters()).device
    net.eval()
    return mean_loss(lambda x, y: net(x.to(dev), y.to(dev))[1], wins, batch_size, on_batch)


@torch.no_grad()
def window_losses(net: LlamaLM, wins: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Each window's mean next-token loss, (W,) float64: their mean is `model_loss` (equal-length windows),
    and their spread is what a bootstrap interval over windows needs."""
    dev = next(net.parameters()).device
    net.eval()
    out = []
    for i in range(0, len(wins), batch_size):
        b = wins[i : i + batch_size].to(dev)
        logits = net(b[:, :-1]).float()  # (B, T, V)
        nll = F.cross_entropy(logits.flatten(0, 1), b[:, 1:].reshape(-1), reduction="none")  # (B*T,)
        out.append(nll.view(len(b), -1).mean(1).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def paired_interval(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a − b) over paired windows (the same windows scored by two
    models): windows are resampled with replacement, so the interval reflects which text was evaluated."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(
            f"paired_interval: expected two equal-length 1-D arrays of >= 2 windows, got {a.shape} and {b.shape}"
        )
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass
class EvalSet:
    """One evaluation set: a domain's split of a prepared directory, or raw documents."""

    name: str
    directory: Path | None = None
    meta: Meta | None = None
    domain: str | None = None
    split: str = "val"
    docs: list[str] | None = field(default=None, repr=False)

    def tokens(self, m: DenseModel) -> tuple[np.ndarray, float | None]:
        """The token array ``m`` is evaluated on, and the set's tokens per byte (None if unknown)."""
        if self.docs is not None:
            stream = token_stream(self.docs, m.tokenizer_file, m.eos_id)
            return stream, len(stream) / sum(len(d.encode("utf-8")) for d in self.docs)
        check_tokenizer(
            self.meta, self.directory, expected_sha256=m.tokenizer_sha256, expected_vocab=m.model.cfg.vocab_size
        )
        shard = open_shard(self.directory, self.meta, self.domain, self.split)
        n_bytes = self.meta.bytes.get(self.domain, {}).get(self.split)
        n_tok = self.meta.tokens.get(self.domain, {}).get(self.split, len(shard))
        return shard, (n_tok / n_bytes if n_bytes else None)


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
        elif Path(w).is_dir() and (Path(w) / "meta.json").is_file():
            add_named(Path(w).name, Path(w))
        else:
            raise ValueError(
                f"evaluation set {w!r} unknown: expected 'val', 'specialists', one of "
                f"{sorted(meta.specialists)} or a prepared directory"
            )
    if not out:
        raise ValueError(f"{data_dir}: no evaluation sets selected by {which}")
    return out


def text_set(source, text_field: str = "text", max_docs: int | None = None, name: str | None = None) -> EvalSet:
    """Raw documents as an evaluation set (see `soe.data.text.read_texts` for the accepted inputs)."""
    docs = read_texts(source, text_field, max_docs)
    return EvalSet(name or (Path(str(source)).stem if not isinstance(source, (list, tuple)) else "texts"), docs=docs)


MIN_TOKENS = 8  # fewer predicted tokens than this: no loss is reported


def evaluate(
    models: dict[str, DenseModel],
    sets: list[EvalSet],
    max_windows: int | None = DEFAULT_WINDOWS,
    batch_size: int = 16,
    progress: bool = False,
) -> list[dict]:
    """One row per (model, set): loss over at most ``max_windows`` windows of the model's max_seq_len.
    Every set is tokenised and checked before the first forward pass; ``progress``: a bar over the windows of
    all (set, model) pairs, with an ETA (stderr, on a terminal: soe/data/progress.py)."""
    if max_windows is not None and max_windows <= 0:
        raise ValueError(f"max_windows={max_windows} must be positive")
    jobs, streams = [], {}
    for es in sets:
        for label, m in models.items():
            if es.docs is None:
                stream, tok_per_byte = es.tokens(m)  # a shard, mapped: checked against each model's tokenizer
            else:  # raw documents: tokenised once per tokenizer
                key = (id(es), str(m.tokenizer_file), m.eos_id)
                if key not in streams:
                    streams[key] = es.tokens(m)
                stream, tok_per_byte = streams[key]
            if len(stream) - 1 < MIN_TOKENS:
                raise ValueError(
                    f"evaluation set {es.name}: {len(stream)} tokens, fewer than {MIN_TOKENS + 1}; a loss "
                    f"over so few tokens means nothing: expected at least one window of "
                    f"{m.model.cfg.max_seq_len + 1} tokens"
                )
            if len(stream) - 1 < m.model.cfg.max_seq_len:
                print(
                    f"warning: evaluation set {es.name} holds {len(stream)} tokens, less than one window of "
                    f"{m.model.cfg.max_seq_len + 1}: its loss is over {len(stream) - 1} tokens",
                    file=sys.stderr,
                )
            T = min(m.model.cfg.max_seq_len, len(stream) - 1)
            n = (len(stream) - 1) // T
            jobs.append((es, label, m, stream, tok_per_byte, T, n if max_windows is None else min(n, max_windows)))
    rows = []
    with bar(desc="evaluate", unit="window", total=sum(j[-1] for j in jobs), quiet=not progress) as pbar:
        for es, label, m, stream, tok_per_byte, T, _ in jobs:
            pbar.set_postfix_str(f"{label} on {es.name}", refresh=False)
            wins = eval_windows(stream, T, max_windows)
            loss = model_loss(m.model, wins, batch_size, pbar.update)
            if not math.isfinite(loss):
                raise ValueError(
                    f"model {label} on set {es.name}: the loss is {loss} (its outputs are non-finite: "
                    "NaN or inf weights?); expected a finite loss"
                )
            bpb = loss * tok_per_byte / math.log(2) if tok_per_byte else None
            rows.append(
                {
                    "model": label,
                    "set": es.name,
                    "split": es.split if es.docs is None else "texts",
                    "tokens": int(wins[:, 1:].numel()),
                    "loss": loss,
                    "perplexity": math.exp(min(loss, 700.0)),
                    "bits_per_byte": bpb,
                    "byte_perplexity": 2.0**bpb if bpb is not None else None,
                }
            )
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| model | set | tokens | loss (nats/token) | perplexity | bits/byte | byte perplexity |\n"
        "|---|---|---:|---:|---:|---:|---:|\n"
    )
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    return (
        head
        + "\n".join(
            f"| {r['model']} | {r['set']} | {r['tokens']} | {r['loss']:.4f} | "
            f"{fmt(r['perplexity'], '.2f')} | {fmt(r['bits_per_byte'], '.4f')} | "
            f"{fmt(r['byte_perplexity'], '.3f')} |"
            for r in rows
        )
        + "\n"
    )
