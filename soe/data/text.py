"""Text in, tokens out: chunking documents, reading users' text files, tokenising them like the shards.

``chunk_text`` is the one chunking rule: data preparation cuts the corpus with it and specialist
estimation cuts in-house documents with it, so both embed pieces of the same size. ``read_texts``
accepts what users have (txt, jsonl, json, parquet, a saved `datasets` directory, ``hf:NAME[:SPLIT]``);
``token_stream`` tokenises documents and joins them with EOS exactly as the shards do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split ``text`` into pieces of at most ``max_chars`` characters, at line boundaries.

    Documents in real corpora are very unequal (a whole play, a whole dictionary), so they are cut
    into chunks of a few KB. A cut prefers a blank line once the chunk is half full; a single line
    longer than ``max_chars`` is cut hard. Pieces are stripped; whitespace-only pieces are dropped.
    """
    if max_chars <= 0:
        raise ValueError(f"chunk size max_chars={max_chars} must be positive")
    if len(text) <= max_chars:
        return [text.strip()] if text.strip() else []
    out, cur, size = [], [], 0

    def flush():
        nonlocal cur, size
        piece = "".join(cur).strip()
        if piece:
            out.append(piece)
        cur, size = [], 0

    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:  # one huge line: cut hard
            flush()
            head, line = line[:max_chars], line[max_chars:]
            if head.strip():
                out.append(head.strip())
        if size + len(line) > max_chars or (size > max_chars // 2 and not line.strip()):
            flush()
        cur.append(line)
        size += len(line)
    flush()
    return out


TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


# ---------------------------------------------------------------------------- in-house texts
def read_texts(
    source: str | os.PathLike | list[str], text_field: str = "text", max_docs: int | None = None
) -> list[str]:
    """Documents from a list, a .txt (blank-line-separated), .jsonl/.json/.parquet file, a saved
    `datasets` directory, or ``hf:NAME[:SPLIT]`` (datasets.load_dataset). Raises on empty input."""
    if isinstance(source, (list, tuple)):
        docs, where = [str(t) for t in source], "the given list"
    else:
        where = str(source)
        docs = _read_source(where, text_field)
    docs = [d for d in docs if d and d.strip()]
    if max_docs is not None:
        if max_docs <= 0:
            raise ValueError(f"max_docs={max_docs} must be positive")
        docs = docs[:max_docs]
    if not docs:
        raise ValueError(f"{where}: no non-empty texts found (expected documents in field {text_field!r})")
    return docs


def _read_source(src: str, field_: str) -> list[str]:
    if src.startswith("hf:"):
        import datasets

        name, _, split = src[3:].partition(":")
        return list(datasets.load_dataset(name, split=split or "train")[field_])
    path = Path(src)
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:
            raise ValueError(f"{path}: not a saved `datasets` directory ({e})") from e
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return _column(ds.column_names, lambda: ds[field_], field_, path)
    if not path.is_file():
        raise FileNotFoundError(f"in-house text file {path} not found")
    if path.suffix not in TEXT_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported suffix {path.suffix!r}; expected one of {TEXT_SUFFIXES} or a datasets dir"
        )
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:
            raise ValueError(f"{path}: unreadable parquet file ({e})") from e
        return _column(table.column_names, lambda: table.column(field_).to_pylist(), field_, path)
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    if path.suffix == ".txt":
        return [p.strip() for p in raw.split("\n\n")]
    if path.suffix == ".json":
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of strings or objects, got {type(items).__name__}")
        return [_field(it, field_, f"{path}[{i}]") for i, it in enumerate(items)]
    docs = []
    for i, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            try:
                docs.append(_field(json.loads(line), field_, f"{path}:{i}"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: invalid JSON line ({e})") from e
    return docs


def _field(item, field_: str, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get(field_), str):
        return item[field_]
    raise ValueError(f"{where}: expected a string or an object with a string field {field_!r}")


def _column(names, get, field_: str, where) -> list[str]:
    if field_ not in names:
        raise ValueError(f"{where}: no column {field_!r}; columns are {list(names)} (use --text-field)")
    return [str(t) for t in get() if t is not None]


def token_stream(docs: list[str], tokenizer_file: str | os.PathLike, eos_id: int) -> np.ndarray:
    """Documents tokenised and joined with EOS, as in the shards: (N,) int64."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    ids = [np.append(np.asarray(e.ids, np.int64), eos_id) for e in tok.encode_batch(docs)]
    return np.concatenate(ids)
