"""The YAML spec of a data-preparation run, as dataclasses whose fields document themselves.

Unknown keys, wrong types and impossible combinations fail here, before any work, with the
offending value, where it came from and what was expected.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from soe.checks import MAX_SEED, safe_load_yaml
from soe.data.embed import EMBEDDER_KINDS
from soe.data.shards import dtype_for_vocab

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(ValueError):
    """The spec is wrong; the message names the key, the value and what was expected."""


@dataclass
class SourceSpec:
    name: str
    """Unique source name (letters, digits, _ . -); used for work files and provenance."""
    path: str | list[str] | None = None
    """Local file(s): a path, a glob or a list of them; .txt (one document per file), .jsonl/.json(.gz), .parquet."""
    hub: str | None = None
    """Instead of ``path``: a `datasets` dataset name (hub id, or a local dataset folder)."""
    hub_config: str | None = None
    """Dataset configuration name for ``hub``."""
    split: str = "train"
    """Dataset split for ``hub``."""
    streaming: bool = True
    """Stream ``hub`` datasets instead of downloading them whole (bounded memory and disk)."""
    text_field: str = "text"
    """Field holding the document text (ignored for .txt files)."""
    domain: str | None = None
    """Fixed domain label of every document of this source."""
    domain_field: str | None = None
    """Or: the field holding each document's domain label."""
    holdout: str | None = None
    """Specialist set name: this source is kept out of pretraining and written as that specialist set."""
    max_chunks: int | None = None
    """Keep at most this many chunks of this source (the first ones; None: all)."""


@dataclass
class ChunkingSpec:
    max_chars: int = 4096
    """Documents are cut at line boundaries into chunks of at most this many characters."""
    min_chars: int = 1
    """Chunks shorter than this are dropped."""
    dedupe: bool = True
    """Drop exact repeats of a chunk across the whole corpus (held-out sources are read first, so
    a repeat is removed from pretraining rather than from the evaluation sets)."""


@dataclass
class TokenizerSpec:
    vocab_size: int = 8192
    """Byte-level BPE vocabulary size, including the 256 byte tokens and <|endoftext|>."""
    sample_chunks_per_group: int = 2000
    """Balanced training sample: at most this many random chunks per domain (per source when clustering)."""
    min_frequency: int = 2
    """BPE merges need at least this many occurrences."""


@dataclass
class DomainsSpec:
    method: str = "labels"
    """'labels': domains are the sources' labels; 'kmeans': discovered by clustering chunk embeddings."""
    order: list[str] | None = None
    """labels: the fixed domain order (index i of h); default: sorted labels. Every name must get documents."""
    embedder: dict[str, Any] = field(default_factory=lambda: {"kind": "tfidf"})
    """soe.data.embed spec: {'kind': 'minilm', ...}, {'kind': 'tfidf', 'svd_dim': 128, ...} or
    {'kind': 'model2vec', 'pca_dims': 256} (distilled from MiniLM; bench/bench_embed.py compares them)."""
    centroid_sample: int = 64
    """labels: random chunks per domain whose mean embedding is the domain centroid."""
    k: int = 8
    """kmeans: number of domains (k1*k2 when ``hierarchy`` is set)."""
    hierarchy: dict[str, int] | None = None
    """kmeans: {'k1': top clusters, 'k2': sub-clusters per top cluster}; k must equal k1*k2."""
    fit_sample: int = 20000
    """kmeans: fit on at most this many random chunks; every other chunk goes to its nearest centroid."""
    prefix: str = "c"
    """kmeans: domain names are <prefix><index>, zero-padded."""


@dataclass
class ShardsSpec:
    val_every: int = 20
    """Every val_every-th chunk of a domain (in corpus order) goes to val.bin, the rest to train.bin."""
    dtype: str | None = None
    """Force the token dtype ('uint16'/'uint32'); default: the smallest that holds the vocabulary."""
    workers: int = 0
    """Tokenizer processes; 0: encode_batch in this process (tokenizers' own threads use every core)."""
    batch_docs: int = 512
    """Documents per encode_batch call."""


@dataclass
class SpecialistsSpec:
    inhouse_docs: int = 300
    """Chunks in a specialist set's small 'in-house' sample (train.bin + inhouse.jsonl); at most half the set."""
    eval_docs: int = 300
    """Chunks in its evaluation split (val.bin), drawn from the rest."""


@dataclass
class TargetsSpec:
    """Validation targets: per pretraining source, whole documents (chunks) held out of the training shards,
    so that recipe choices are made on targets apart from the evaluation sets. Each target is a small in-house
    part (h is estimated from it) and a validation part (the loss is measured on it); its h is a mixture of
    domains, like a user's. Written to <out>/targets/ in the specialist-set format."""

    inhouse_docs: int = 60
    """Chunks of each source's in-house part (targets/<source>/train.bin + inhouse.jsonl)."""
    val_docs: int = 40
    """Chunks of each source's validation part (targets/<source>/val.bin)."""
    max_share: float = 0.1
    """At most this share of a source's chunks becomes target documents (small sources give fewer)."""
    min_docs: int = 8
    """A source whose in-house or validation part would have fewer chunks than this gets no target."""


@dataclass
class OfflineCorpusSpec:
    out: str = "data/offline_corpus"
    """Where `build_offline_corpus` writes <source>.jsonl (run first when ``offline_corpus`` is set)."""
    cache: str = "data/cache"
    """Where packages are downloaded and unpacked."""
    chunk_chars: int = 4096
    """Chunk size of the built corpus."""
    skip_missing: bool = False
    """Build what is available instead of failing when a package cannot be fetched."""
    lock: str | None = None
    """Corpus lock (e.g. data_prep/locks/demo.lock.json): fetch exactly the package versions it lists and
    check their sha256. None: take whatever the archive serves (the versions used are recorded either way)."""
    allow_changed: bool = False
    """With ``lock``: when the archive no longer serves a locked version (or its hash differs), say which and
    build with the available one instead of failing."""


@dataclass
class PrepareConfig:
    sources: list[SourceSpec]
    """Input sources; pretraining domains come from the non-held-out ones."""
    out: str = "data/prepared"
    """Output (prepared) directory; --out overrides it."""
    seed: int = 0
    """Seed of every random sample (tokenizer, centroids, k-means, specialist splits)."""
    chunking: ChunkingSpec = field(default_factory=ChunkingSpec)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    domains: DomainsSpec = field(default_factory=DomainsSpec)
    shards: ShardsSpec = field(default_factory=ShardsSpec)
    specialists: SpecialistsSpec = field(default_factory=SpecialistsSpec)
    targets: TargetsSpec | None = None
    """Validation targets held out of every pretraining source (None: none; see TargetsSpec)."""
    offline_corpus: OfflineCorpusSpec | None = None
    """If set, first assemble the Debian/PyPI corpus of docs/corpus.md (skipped when already built)."""


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; expected some of {sorted(fields)}")
    kw = {}
    for k, v in raw.items():
        sub = (
            {
                "chunking": ChunkingSpec,
                "tokenizer": TokenizerSpec,
                "domains": DomainsSpec,
                "shards": ShardsSpec,
                "specialists": SpecialistsSpec,
                "offline_corpus": OfflineCorpusSpec,
                "targets": TargetsSpec,
            }.get(k)
            if cls is PrepareConfig
            else None
        )
        kw[k] = _build(sub, v or {}, f"{where}.{k}") if sub else v
    for k, v in kw.items():
        _check_type(v, fields[k].type, where, k)
    try:
        return cls(**kw)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


_SIMPLE = {"int": int, "bool": bool, "str": str}


def _check_type(value: Any, annotation: str, where: str, key: str) -> None:
    """Scalars (int, bool, str, and those ``| None``) must have their declared type: a quoted number or a
    yes/no where a count is expected fails here, not as a TypeError deep inside a stage."""
    options = [a.strip() for a in str(annotation).split("|")]
    if not all(o in _SIMPLE or o == "None" for o in options):
        return  # containers and nested sections are checked by validate()
    if value is None and "None" in options:
        return
    ok = any(
        isinstance(value, _SIMPLE[o]) and not (o == "int" and isinstance(value, bool)) for o in options if o != "None"
    )
    if not ok:
        raise ConfigError(f"{where}: {key}={value!r}: expected {' or '.join(options)}, got {type(value).__name__}")


MAX_VOCAB = 1 << 20  # 1,048,576 tokens: the BPE trainer's memory grows with it (1e9 tried to allocate ~70 GB)


def _positive(value: Any, where: str, minimum: int = 1, maximum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or (maximum and value > maximum):
        rng = f"in [{minimum}, {maximum:,}]" if maximum else f">= {minimum}"
        raise ConfigError(f"{where}={value!r}: expected an integer {rng}")


def validate(cfg: PrepareConfig) -> PrepareConfig:
    if not cfg.sources:
        raise ConfigError("sources: empty; expected at least one source")
    names = set()
    for i, s in enumerate(cfg.sources):
        w = f"sources[{i}] ({s.name!r})"
        if not isinstance(s.name, str) or not NAME_RE.match(s.name) or s.name in names:
            raise ConfigError(f"{w}: name must be unique and match {NAME_RE.pattern}")
        names.add(s.name)
        if (s.path is None) == (s.hub is None):
            raise ConfigError(f"{w}: give exactly one of 'path' (local files) or 'hub' (a datasets name)")
        if s.holdout is None and (s.domain is None) == (s.domain_field is None) and cfg.domains.method == "labels":
            raise ConfigError(f"{w}: with domains.method='labels' give exactly one of 'domain' or 'domain_field'")
        for key in ("domain", "holdout"):
            v = getattr(s, key)
            if v is not None and not (isinstance(v, str) and NAME_RE.match(v)):
                raise ConfigError(f"{w}: {key}={v!r} must be a name matching {NAME_RE.pattern}")
        if s.max_chunks is not None:
            _positive(s.max_chunks, f"{w}.max_chunks")
    if all(s.holdout for s in cfg.sources):
        raise ConfigError("sources: every source is held out; expected at least one pretraining source")
    _positive(cfg.seed, "seed", 0, MAX_SEED)
    _positive(cfg.chunking.max_chars, "chunking.max_chars")
    _positive(cfg.tokenizer.vocab_size, "tokenizer.vocab_size", 258, MAX_VOCAB)  # 256 bytes + <|endoftext|> + 1 merge
    _positive(cfg.tokenizer.sample_chunks_per_group, "tokenizer.sample_chunks_per_group")
    try:
        dtype_for_vocab(cfg.tokenizer.vocab_size, cfg.shards.dtype)
    except ValueError as e:
        raise ConfigError(f"shards.dtype / tokenizer.vocab_size: {e}") from e
    d = cfg.domains
    if d.method not in ("labels", "kmeans"):
        raise ConfigError(f"domains.method={d.method!r}: expected 'labels' or 'kmeans'")
    if d.embedder.get("kind") not in EMBEDDER_KINDS:
        raise ConfigError(f"domains.embedder.kind={d.embedder.get('kind')!r}: expected one of {EMBEDDER_KINDS}")
    if d.order is not None and (len(set(d.order)) != len(d.order) or not all(NAME_RE.match(x) for x in d.order)):
        raise ConfigError(f"domains.order={d.order!r}: expected unique names matching {NAME_RE.pattern}")
    _positive(d.centroid_sample, "domains.centroid_sample")
    if d.method == "kmeans":
        _positive(d.k, "domains.k", 2)
        _positive(d.fit_sample, "domains.fit_sample", 2)
        if d.hierarchy is not None:
            if set(d.hierarchy) != {"k1", "k2"} or d.hierarchy["k1"] * d.hierarchy["k2"] != d.k:
                raise ConfigError(f"domains.hierarchy={d.hierarchy!r}: expected {{k1, k2}} with k1*k2 == k={d.k}")
    _positive(cfg.shards.val_every, "shards.val_every", 2)
    _positive(cfg.shards.workers, "shards.workers", 0)
    _positive(cfg.shards.batch_docs, "shards.batch_docs")
    _positive(cfg.specialists.inhouse_docs, "specialists.inhouse_docs")
    _positive(cfg.specialists.eval_docs, "specialists.eval_docs")
    t = cfg.targets
    if t is not None:
        _positive(t.inhouse_docs, "targets.inhouse_docs")
        _positive(t.val_docs, "targets.val_docs")
        _positive(t.min_docs, "targets.min_docs")
        if t.min_docs > min(t.inhouse_docs, t.val_docs):  # no source could ever get a target
            raise ConfigError(
                f"targets.min_docs={t.min_docs}: expected at most inhouse_docs={t.inhouse_docs} and "
                f"val_docs={t.val_docs} (with more, no source gets a validation target)"
            )
        if not isinstance(t.max_share, (int, float)) or isinstance(t.max_share, bool) or not 0 < t.max_share <= 0.5:
            raise ConfigError(f"targets.max_share={t.max_share!r}: expected a number in (0, 0.5]")
    oc = cfg.offline_corpus
    if oc is not None:
        _positive(oc.chunk_chars, "offline_corpus.chunk_chars")
        for key in ("out", "cache", "lock"):
            v = getattr(oc, key)
            if not (isinstance(v, str) and v) and not (key == "lock" and v is None):
                raise ConfigError(f"offline_corpus.{key}={v!r}: expected a path")
        for key in ("skip_missing", "allow_changed"):
            if not isinstance(getattr(oc, key), bool):
                raise ConfigError(f"offline_corpus.{key}={getattr(oc, key)!r}: expected true or false")
    return cfg


def load_config(path: str | Path, out: str | None = None) -> PrepareConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} not found")
    try:
        raw = safe_load_yaml(path.read_text(), f"config {path}")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text ({e.reason}); expected a YAML file") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    except ValueError as e:  # a key given twice
        raise ConfigError(str(e)) from None
    return from_dict(raw, str(path), out)


def from_dict(raw: dict, where: str = "config", out: str | None = None) -> PrepareConfig:
    if not isinstance(raw, dict) or "sources" not in raw:
        raise ConfigError(f"{where}: expected a mapping with a 'sources' list")
    if not isinstance(raw["sources"], list):
        raise ConfigError(f"{where}: sources must be a list, got {raw['sources']!r}")
    raw = dict(raw)
    raw["sources"] = [_build(SourceSpec, s, f"{where}: sources[{i}]") for i, s in enumerate(raw["sources"])]
    cfg = _build(PrepareConfig, raw, where)
    if out is not None:
        cfg.out = str(out)
    return validate(cfg)


def section(obj: Any) -> Any:
    """A JSON-able view of a config (section), used to fingerprint stages."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
