"""Tokenise routed chunks into flat token shards, in parallel, with bounded memory and atomic writes.

A *key* is (directory relative to the prepared dir, split), e.g. ("code", "train") or
("specialists/janeausten", "val"). Chunks arrive as (key, text) in corpus order; they are grouped
into per-key batches, encoded with `encode_batch_fast` (no offsets needed) either in this process
(tokenizers' Rust threads use every core) or in worker processes, and appended to
``<key>.bin.tmp``; only when every shard is complete are all temporary files renamed. An
interrupted run therefore leaves ``*.tmp`` files and no finished-looking shard.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from soe.data.shards import shard_path

from .tokenizer import load_for_sharding

Key = tuple[str, str]
MAX_PENDING_CHARS = 32 << 20  # text waiting to be batched, all keys together
FLUSH_TOKENS = 1 << 20  # tokens buffered per key before an append to disk
FLUSH_ALL_TOKENS = 16 << 20  # tokens buffered over all keys (k can be thousands) before flushing all

_worker_tok = None  # the tokenizer inside a worker process


def encode_docs(tok, texts: list[str], eos_id: int, dtype: str) -> np.ndarray:
    """Documents -> one flat array with EOS after each document: (sum(len_i + 1),)."""
    encs = tok.encode_batch_fast(texts, add_special_tokens=False)
    return np.concatenate([np.array(e.ids + [eos_id], dtype=dtype) for e in encs])


def _init_worker(tok_path: str) -> None:
    global _worker_tok
    os.environ["RAYON_NUM_THREADS"] = "1"  # one process per core; no nested thread pools
    _worker_tok = load_for_sharding(Path(tok_path))


def _encode_job(job):
    key, texts, eos_id, dtype = job
    return key, encode_docs(_worker_tok, texts, eos_id, dtype), len(texts), sum(len(t.encode("utf-8")) for t in texts)


def batched(items: Iterable[tuple[Key, str]], batch_docs: int) -> Iterator[tuple[Key, list[str]]]:
    """Group (key, text) into per-key batches of ``batch_docs``; bounded by MAX_PENDING_CHARS overall."""
    pending: dict[Key, list[str]] = {}
    size: dict[Key, int] = {}
    total = 0
    for key, text in items:
        pending.setdefault(key, []).append(text)
        size[key] = size.get(key, 0) + len(text)
        total += len(text)
        if len(pending[key]) >= batch_docs or total > MAX_PENDING_CHARS:
            k = key if len(pending[key]) >= batch_docs else max(size, key=size.get)
            total -= size.pop(k)
            yield k, pending.pop(k)
    for k in list(pending):
        yield k, pending.pop(k)


class ShardWriter:
    """Appends token arrays to ``<root>/<dir>/<split>.bin.tmp``; `commit` renames them all."""

    def __init__(self, root: Path, dtype: str):
        self.root, self.dtype = root, dtype
        self.buf: dict[Key, list[np.ndarray]] = {}
        self.buffered: dict[Key, int] = {}
        self.tokens: dict[Key, int] = {}
        self.docs: dict[Key, int] = {}
        self.bytes: dict[Key, int] = {}
        self.total_buffered = 0
        self.extra_tmp: list[Path] = []  # other files (inhouse.jsonl) renamed with the shards

    def final(self, key: Key) -> Path:
        return shard_path(self.root, *key)  # <root>/<dir>/<split>.bin: the format's one path rule

    def tmp(self, key: Key) -> Path:
        return self.final(key).with_name(self.final(key).name + ".tmp")

    def add(self, key: Key, arr: np.ndarray, ndocs: int, nbytes: int) -> None:
        if key not in self.tokens:
            self.tmp(key).parent.mkdir(parents=True, exist_ok=True)
            self.tmp(key).write_bytes(b"")
            self.tokens[key] = self.docs[key] = self.bytes[key] = self.buffered[key] = 0
        self.buf.setdefault(key, []).append(arr)
        self.buffered[key] += len(arr)
        self.tokens[key] += len(arr)
        self.docs[key] += ndocs
        self.bytes[key] += nbytes
        self.total_buffered += len(arr)
        if self.buffered[key] >= FLUSH_TOKENS:
            self.flush(key)
        if self.total_buffered >= FLUSH_ALL_TOKENS:
            for k in self.buf:
                self.flush(k)

    def flush(self, key: Key) -> None:
        if self.buf.get(key):
            with open(self.tmp(key), "ab") as f:
                np.concatenate(self.buf[key]).astype(self.dtype, copy=False).tofile(f)
                f.flush()
                os.fsync(f.fileno())
        self.total_buffered -= self.buffered.get(key, 0)
        self.buf[key], self.buffered[key] = [], 0

    def commit(self) -> None:
        """Flush everything, check sizes, then rename every temporary file to its final name."""
        for key in list(self.tokens):
            self.flush(key)
            size = self.tmp(key).stat().st_size
            if size != self.tokens[key] * np.dtype(self.dtype).itemsize:
                raise RuntimeError(f"{self.tmp(key)}: {size} bytes written, expected {self.tokens[key]} tokens")
        for key in self.tokens:
            os.replace(self.tmp(key), self.final(key))
        for p in self.extra_tmp:
            os.replace(p, p.with_name(p.name[: -len(".tmp")]))


def encode_stream(
    items: Iterable[tuple[Key, str]], tok_path: Path, eos_id: int, dtype: str, workers: int, batch_docs: int
) -> Iterator[tuple[Key, np.ndarray, int, int]]:
    """Yield (key, tokens, documents, bytes) per batch, in input order."""
    if workers <= 0:
        tok = load_for_sharding(tok_path)
        for key, texts in batched(items, batch_docs):
            yield key, encode_docs(tok, texts, eos_id, dtype), len(texts), sum(len(t.encode("utf-8")) for t in texts)
        return
    # spawn: a fresh interpreter per worker (forking after tokenizers' threads started is unsafe).
    # At most 2*workers batches in flight (Pool.imap would read the whole input ahead: unbounded memory).
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(str(tok_path),)) as pool:
        inflight: deque = deque()
        for key, texts in batched(items, batch_docs):
            inflight.append(pool.apply_async(_encode_job, ((key, texts, eos_id, dtype),)))
            if len(inflight) >= 2 * workers:
                yield inflight.popleft().get()
        while inflight:
            yield inflight.popleft().get()
