"""Ingestion: read every source through `datasets` (streaming), chunk, dedupe, write work files.

Output per source: ``<out>/work/chunks/<source>.jsonl`` with one ``{"t": text, "d": label}`` per
chunk (``d`` is null when the source has no label), written under a temporary name and renamed
when complete. Later stages re-read these files in order, so memory stays bounded by a batch.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

from soe.data.progress import bar
from soe.data.text import chunk_text

from .config import PrepareConfig, SourceSpec
from .text import Deduper

BATCH = 1000  # records per `datasets` batch: batched iteration is ~8x faster than per record


class SourceError(ValueError):
    """A source cannot be read or yields nothing usable; the message names the source and value."""


def _builder_for(files: list[str], src: SourceSpec) -> tuple[str, dict]:
    kinds = set()
    for f in files:
        low = f.lower()
        if low.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")):
            kinds.add("json")
        elif low.endswith((".parquet", ".pq")):
            kinds.add("parquet")
        elif low.endswith((".txt", ".txt.gz", ".md", ".rst")):
            kinds.add("text")
        else:
            raise SourceError(
                f"source {src.name!r}: file {f!r} has an unknown format; expected "
                ".txt, .jsonl, .jsonl.gz, .json or .parquet"
            )
    if len(kinds) > 1:
        raise SourceError(f"source {src.name!r}: mixes formats {sorted(kinds)}; use one source per format")
    kind = kinds.pop()
    return kind, ({"sample_by": "document"} if kind == "text" else {})


def local_files(src: SourceSpec) -> list[str]:
    pats = [src.path] if isinstance(src.path, str) else list(src.path)
    files: list[str] = []
    for p in pats:
        p = os.path.expanduser(str(p))
        hits = sorted(glob.glob(p, recursive=True)) if glob.has_magic(p) else ([p] if os.path.exists(p) else [])
        hits = [h for h in hits if os.path.isfile(h)]
        if not hits:
            raise SourceError(f"source {src.name!r}: path {p!r} matches no readable file")
        for h in hits:
            if not os.access(h, os.R_OK):
                raise SourceError(f"source {src.name!r}: file {h!r} is not readable (permissions)")
        files += hits
    return files


def iter_records(src: SourceSpec) -> Iterator[tuple[str, str | None]]:
    """Yield (text, domain label or None) for every document of a source, in order, streaming."""
    return open_records(src)[0]


def _num_examples(ds, split) -> int | None:
    """Documents in a loaded dataset where it says (a dataset in memory; a streamed one whose card records the
    split's size), else None: only the progress bar's total."""
    try:
        return len(ds)
    except Exception:
        pass
    try:
        n = ds.info.splits[split].num_examples
        return int(n) if n else None
    except Exception:
        return None


def open_records(src: SourceSpec) -> tuple[Iterator[tuple[str, str | None]], int | None]:
    """`iter_records`, and the number of documents it will yield where known beforehand (a text file is one
    document; a hub dataset may say), else None."""
    import datasets

    if src.path is not None:
        files = local_files(src)
        kind, kw = _builder_for(files, src)
        what = f"files {files[:3]}{'…' if len(files) > 3 else ''}"
        text_field = "text" if kind == "text" else src.text_field
        try:
            ds = datasets.load_dataset(kind, data_files=files, split="train", streaming=True, **kw)
        except Exception as e:
            raise SourceError(f"source {src.name!r}: cannot open {what}: {e}") from e
        total = len(files) if kind == "text" else None
    else:
        what = f"dataset {src.hub!r} (config {src.hub_config!r}, split {src.split!r})"
        text_field = src.text_field
        try:
            ds = datasets.load_dataset(src.hub, src.hub_config, split=src.split, streaming=src.streaming)
        except Exception as e:
            raise SourceError(f"source {src.name!r}: cannot load {what}: {e}") from e
        total = _num_examples(ds, src.split)
    return _records(src, ds, what, text_field), total


def _records(src: SourceSpec, ds, what: str, text_field: str) -> Iterator[tuple[str, str | None]]:
    try:
        batches = ds.iter(batch_size=BATCH)
        for batch in batches:
            if text_field not in batch:
                raise SourceError(
                    f"source {src.name!r}: text_field {text_field!r} not in {what}; available fields: {sorted(batch)}"
                )
            if src.domain_field is not None and src.domain_field not in batch:
                raise SourceError(
                    f"source {src.name!r}: domain_field {src.domain_field!r} not in {what}; "
                    f"available fields: {sorted(batch)}"
                )
            labels = batch[src.domain_field] if src.domain_field else [src.domain] * len(batch[text_field])
            for text, label in zip(batch[text_field], labels):
                if text is not None and not isinstance(text, str):
                    raise SourceError(
                        f"source {src.name!r}: field {text_field!r} holds {type(text).__name__}, expected a string"
                    )
                yield (text or ""), (str(label) if label is not None else None)
    except SourceError:
        raise
    except Exception as e:  # unreadable / corrupt files surface while iterating
        raise SourceError(f"source {src.name!r}: error reading {what}: {type(e).__name__}: {e}") from e


def chunk_path(out: Path, name: str) -> Path:
    return out / "work" / "chunks" / f"{name}.jsonl"


def ingest(cfg: PrepareConfig, out: Path, log=print) -> dict:
    """Chunk and dedupe every source into work files; returns stats per source (chunks, bytes, labels)."""
    dedupe = Deduper() if cfg.chunking.dedupe else None
    stats = {}
    t0 = time.time()
    # held-out sources first: an exact repeat is then dropped from pretraining, not from evaluation
    order = sorted(cfg.sources, key=lambda s: s.holdout is None)
    for src in order:
        path = chunk_path(out, src.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        n = nbytes = docs = 0
        labels: Counter = Counter()
        records, total = open_records(src)
        with open(tmp, "w", encoding="utf-8") as f, bar(desc=f"ingest {src.name}", unit="document", total=total) as b:
            for text, label in records:
                docs += 1
                b.update()
                if docs % 64 == 0:
                    b.set_postfix_str(f"{n} chunks", refresh=False)
                if src.domain_field is not None and src.holdout is None and not label:
                    raise SourceError(
                        f"source {src.name!r}: document {docs} has an empty domain_field "
                        f"{src.domain_field!r}; expected a domain name"
                    )
                for c in chunk_text(text, cfg.chunking.max_chars):
                    if len(c) < cfg.chunking.min_chars or (dedupe and not dedupe.is_new(c)):
                        continue
                    f.write(json.dumps({"t": c, "d": label}, ensure_ascii=False) + "\n")
                    n += 1
                    nbytes += len(c.encode("utf-8"))
                    labels[label] += 1
                    if src.max_chunks and n >= src.max_chunks:
                        break
                if src.max_chunks and n >= src.max_chunks:
                    break
        if n == 0:
            tmp.unlink()
            raise SourceError(
                f"source {src.name!r}: no text ({docs} documents read, all empty or duplicates); "
                "expected at least one non-empty document"
            )
        os.replace(tmp, path)
        stats[src.name] = {
            "chunks": n,
            "bytes": nbytes,
            "documents": docs,
            "labels": dict(labels),
            "holdout": src.holdout,
        }
        log(f"  ingest {src.name:20s} {docs:8d} docs -> {n:8d} chunks {nbytes / 1e6:8.1f} MB")
    total_docs, total_chunks = (sum(st[k] for st in stats.values()) for k in ("documents", "chunks"))
    log(
        f"  ingest: {len(stats)} sources, {total_docs:,} documents -> {total_chunks:,} chunks "
        f"({sum(st['bytes'] for st in stats.values()) / 1e6:.1f} MB) in {time.time() - t0:.1f}s"
    )
    return {s.name: stats[s.name] for s in cfg.sources}  # config order


def read_chunks(out: Path, name: str) -> Iterator[tuple[str, str | None]]:
    """Stream (text, label) back from a source's work file."""
    with open(chunk_path(out, name), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            yield r["t"], r["d"]


def sample_by_group(
    out: Path, names: list[str], group_of, cap: int, seed: int, total: int | None = None, desc: str = "sample"
) -> dict[str, list[str]]:
    """Uniform random sample of at most ``cap`` chunks per group (reservoir sampling, one pass).

    ``group_of(source_name, label) -> group or None`` (None: skip). Memory: cap chunks per group.
    ``total``: the chunks of ``names``, the total of the bar ``desc`` over the pass.
    """
    import random

    rng = random.Random(seed)
    res: dict[str, list[str]] = {}
    seen: Counter = Counter()
    with bar(desc=desc, unit="chunk", total=total) as b:
        for name in names:
            for text, label in read_chunks(out, name):
                b.update()
                g = group_of(name, label)
                if g is None:
                    continue
                seen[g] += 1
                bucket = res.setdefault(g, [])
                if len(bucket) < cap:
                    bucket.append(text)
                else:
                    j = rng.randrange(seen[g])
                    if j < cap:
                        bucket[j] = text
    return res
