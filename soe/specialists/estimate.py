"""Estimate domain weights h from a small in-house dataset (the CRISP recipe, Grangier et al. 2024).

Cut the documents into chunks exactly as data preparation did, embed them with the prepared data's own
embedder (rebuilt from meta.json, fitted state included), assign each chunk to its nearest domain centroid,
and return the token-weighted histogram over the k domains.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from soe.core.weights import weights_dict
from soe.data.centroids import nearest_centroid, soft_assignment
from soe.data.embed import build_embedder
from soe.data.progress import encode
from soe.data.shards import check_tokenizer, load_meta
from soe.data.text import chunk_text, read_texts


@dataclass
class Estimate:
    weights: dict[str, float]
    """Token-weighted histogram of nearest-centroid assignments, {domain: weight} in meta order."""
    tokens: dict[str, int]
    """In-house tokens assigned to each domain."""
    n_docs: int
    """Documents read."""
    n_chunks: int
    """Chunks embedded (documents cut by `chunk_text` at the data's chunk size)."""


def estimate_weights(
    data_dir: str | os.PathLike,
    texts,
    *,
    max_docs: int | None = None,
    min_weight: float = 0.0,
    text_field: str = "text",
    chunk_chars: int | None = None,
    progress: Callable[[str], None] | None = None,
    temperature: float | None = None,
) -> Estimate:
    """Embed in-house documents with the data's embedder, assign each chunk to its nearest domain
    centroid and return the token-weighted histogram (weights below ``min_weight`` dropped).
    ``temperature`` T: a soft histogram instead, each chunk's tokens spread as softmax(−‖e − c‖² / T) over the
    centroids (c-BTM); T → 0 gives the nearest-centroid histogram.
    ``progress``: a bar over the chunks while they are embedded (stderr, on a terminal: soe/data/progress.py),
    then one line saying what was embedded, how fast."""
    from tokenizers import Tokenizer

    if not 0.0 <= min_weight < 1.0:
        raise ValueError(f"min_weight={min_weight} must be in [0, 1)")
    if temperature is not None and not (temperature > 0 and np.isfinite(temperature)):
        raise ValueError(f"temperature={temperature!r}: expected a positive finite number (or none: hard histogram)")
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    check_tokenizer(meta, data_dir)
    src = meta.domain_source or {}
    if not src.get("embedder") or not src.get("centroids_file"):
        raise ValueError(
            f"{data_dir}/meta.json: domain_source={src} records no embedder and centroids_file; "
            "estimating weights needs domains made by embedding (re-run data preparation)"
        )
    centroids = np.load(data_dir / src["centroids_file"], allow_pickle=False)
    if centroids.shape[0] != len(meta.domains):
        raise ValueError(
            f"{data_dir / src['centroids_file']}: {centroids.shape[0]} centroids for {len(meta.domains)} domains"
        )
    docs = read_texts(texts, text_field, max_docs)
    size = int(chunk_chars or src.get("chunk_chars") or 4096)
    chunks = [c for d in docs for c in chunk_text(d, size)]
    if not chunks:
        raise ValueError(f"{texts}: documents are whitespace only")
    tok = Tokenizer.from_file(str(data_dir / meta.tokenizer_file))
    n_tok = np.array([len(e.ids) for e in tok.encode_batch(chunks)], dtype=np.float64)  # (N,)
    embedder = build_embedder(src["embedder"], root=data_dir)
    t0 = time.perf_counter()
    emb = embed_blocks(embedder, chunks, progress)
    if progress is not None:
        dt = time.perf_counter() - t0
        progress(
            f"embedded {len(chunks):,} chunks of {len(docs):,} documents ({src['embedder'].get('kind')}) in "
            f"{dt:.1f}s, {len(chunks) / max(dt, 1e-9):.1f} chunks/s"
        )
    if temperature is None:
        assign = nearest_centroid(emb, centroids)  # (N,)
        counts = np.bincount(assign, weights=n_tok, minlength=len(meta.domains))  # (k,)
    else:
        counts = n_tok @ soft_assignment(emb, centroids, temperature)  # (N,) @ (N, k) -> (k,)
    if counts.sum() <= 0:
        raise ValueError(f"{texts}: the in-house documents contain no tokens")
    h = counts / counts.sum()
    if min_weight > 0:
        keep = h >= min_weight
        keep[np.argmax(h)] = True
        h = np.where(keep, h, 0.0)
        h = h / h.sum()
    return Estimate(
        weights_dict(torch.from_numpy(h), meta.domains),
        {d: int(c) for d, c in zip(meta.domains, counts)},
        len(docs),
        len(chunks),
    )


def embed_blocks(
    embedder, chunks: list[str], progress: Callable[[str], None] | None = None, block: int = 64
) -> np.ndarray:
    """``embedder.encode(chunks)``, in blocks of ``block`` chunks under a bar when ``progress`` is given, so
    that a slow embedder (MiniLM on 2 cores: ~20 chunks/s) shows its count, rate and ETA instead of going
    silent; without ``progress``, one call."""
    if progress is None:
        return embedder.encode(chunks)
    return encode(embedder, chunks, "embed", block)
