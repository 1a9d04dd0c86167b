"""The prepared-data format: the contract between ``data_prep`` (writer) and ``soe`` (reader).

Layout of a prepared directory::

    <prepared>/meta.json            schema version, tokenizer, dtype, domains, counts, provenance
    <prepared>/tokenizer.json       the `tokenizers` byte-level BPE used for every shard
    <prepared>/centroids.npy        (k, d) float32 domain centroids in embedding space (optional)
    <prepared>/<domain>/train.bin   flat token array, documents separated by EOS
    <prepared>/<domain>/val.bin     same, held-out split
    <prepared>/specialists/         specialist sets, the same format (their own meta.json),
                                    plus <set>/inhouse.jsonl (raw texts of the small in-house sample)

Token files are raw little-endian arrays (``uint16`` when vocab < 65536, else ``uint32``) so any
tool can ``np.memmap`` them, as in nanoGPT. Every reader checks the schema version and the
tokenizer hash before use (`load_meta`, `check_tokenizer`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soe.fileio import atomic_write_json, read_json

SCHEMA_VERSION = 1
SPLITS = ("train", "val")


def dtype_for_vocab(vocab_size: int, forced: str | None = None) -> str:
    """The smallest token dtype that holds ``vocab_size`` ids; ``forced`` is checked, not trusted."""
    need = "uint16" if vocab_size <= 65536 else "uint32"
    if forced is None:
        return need
    if forced not in ("uint16", "uint32"):
        raise ValueError(f"token dtype {forced!r} is not supported; expected 'uint16' or 'uint32'")
    if forced == "uint16" and need == "uint32":
        raise ValueError(f"vocab_size={vocab_size} does not fit dtype 'uint16' (max 65536 ids); use 'uint32'")
    return forced


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Meta:
    """Contents of ``meta.json``. ``tokens[domain][split]`` counts tokens including EOS separators."""

    domains: list[str]
    """Domain names in the fixed order used for h everywhere (index i of h is domains[i])."""
    vocab_size: int
    """Tokenizer vocabulary size; every token id is < vocab_size."""
    tokenizer_sha256: str
    """sha256 of the tokenizer file; readers refuse shards made by another tokenizer."""
    eos_id: int
    """Id of the end-of-document token written between documents."""
    dtype: str = "uint16"
    """Token dtype of the .bin files: 'uint16' or 'uint32'."""
    tokenizer_file: str = "tokenizer.json"
    """Tokenizer path, relative to the prepared directory."""
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    """tokens[domain][split] = number of tokens in <domain>/<split>.bin."""
    documents: dict[str, dict[str, int]] = field(default_factory=dict)
    """documents[domain][split] = number of documents (chunks) in that shard."""
    bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    """bytes[domain][split] = UTF-8 bytes of the text in that shard (for bits-per-byte)."""
    domain_source: dict[str, Any] = field(default_factory=dict)
    """How domains were made: {"method": "labels"|"kmeans", "embedder": {...}, "k": .., "centroids_file": ..}."""
    specialists: dict[str, str] = field(default_factory=dict)
    """Held-out specialist sets: name -> directory relative to this one (same format)."""
    schema_version: int = SCHEMA_VERSION
    """Version of this format; readers refuse other versions."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (sources, licences, command line)."""
    corpus_lock: dict[str, Any] | None = None
    """The package versions the text came from (data_prep/corpus_lock.py): {"id", "packages": [{name, kind,
    version, sha256, file}], ...}; None when the sources were plain files (older meta.json files lack it)."""

    def prior(self, split: str = "train") -> np.ndarray:
        """The natural mixture: token-count histogram over domains, (k,)."""
        counts = np.array([self.tokens.get(d, {}).get(split, 0) for d in self.domains], dtype=np.float64)
        if counts.sum() <= 0:
            raise ValueError(f"meta.json has no {split} token counts; cannot form the token-count prior")
        return counts / counts.sum()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write meta.json atomically (a unique temporary name, then rename)."""
        return atomic_write_json(Path(directory) / "meta.json", asdict(self))


def load_meta(directory: str | os.PathLike) -> Meta:
    """Read and validate ``<directory>/meta.json``."""
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected a prepared-data directory (run `python -m data_prep.prepare`)"
        )
    raw = read_json(path, "prepared-data metadata")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object (prepared-data metadata), got {type(raw).__name__}")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version={version!r}, expected {SCHEMA_VERSION}; re-run data preparation")
    known = set(Meta.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected only {sorted(known)}")
    missing = {"domains", "vocab_size", "tokenizer_sha256", "eos_id"} - set(raw)
    if missing:
        raise ValueError(f"{path}: missing required keys {sorted(missing)}")
    meta = Meta(**raw)
    if not meta.domains or len(set(meta.domains)) != len(meta.domains):
        raise ValueError(f"{path}: domains must be a non-empty list of unique names, got {meta.domains!r}")
    dtype_for_vocab(meta.vocab_size, meta.dtype)
    return meta


def check_tokenizer(
    meta: Meta, directory: str | os.PathLike, expected_sha256: str | None = None, expected_vocab: int | None = None
) -> None:
    """Refuse shards whose tokenizer file, hash or vocabulary differs from what the caller expects."""
    tok = Path(directory) / meta.tokenizer_file
    if tok.is_file():
        actual = sha256_file(tok)
        if actual != meta.tokenizer_sha256:
            raise ValueError(
                f"{tok}: sha256 {actual[:12]}… differs from meta.json's {meta.tokenizer_sha256[:12]}…; "
                "the shards were made with another tokenizer"
            )
    if expected_sha256 is not None and expected_sha256 != meta.tokenizer_sha256:
        raise ValueError(
            f"{directory}: tokenizer sha256 {meta.tokenizer_sha256[:12]}… does not match the expected "
            f"{expected_sha256[:12]}… (checkpoint/config was trained with another tokenizer)"
        )
    if expected_vocab is not None and expected_vocab != meta.vocab_size:
        raise ValueError(
            f"{directory}: vocab_size={meta.vocab_size} in meta.json, but the model expects vocab_size={expected_vocab}"
        )


def shard_path(directory: str | os.PathLike, domain: str, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} unknown; expected one of {SPLITS}")
    return Path(directory) / domain / f"{split}.bin"


def open_shard(directory: str | os.PathLike, meta: Meta, domain: str, split: str) -> np.memmap:
    """Memory-map one shard read-only, checking it exists, is non-empty and matches meta.json."""
    path = shard_path(directory, domain, split)
    if not path.is_file():
        raise FileNotFoundError(f"shard {path} for domain {domain!r} is missing")
    itemsize = np.dtype(meta.dtype).itemsize
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"shard {path} for domain {domain!r} is empty; expected tokens")
    if size % itemsize:
        raise ValueError(f"shard {path}: {size} bytes is not a multiple of {meta.dtype} ({itemsize} bytes)")
    expected = meta.tokens.get(domain, {}).get(split)
    if expected is not None and expected != size // itemsize:
        raise ValueError(f"shard {path}: holds {size // itemsize} tokens, meta.json says {expected}")
    return np.memmap(path, dtype=meta.dtype, mode="r")
