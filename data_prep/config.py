"""The YAML spec of a data-preparation run, as dataclasses whose fields document themselves.

Each field's type hint states its type and range; `soe.configfile.parse` validates a YAML mapping against
them (unknown keys, wrong types, values out of range), and `validate` checks the rules across fields, before any
work, with the offending value, where it came from and what was expected.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Interval, MinLen
from pydantic import StringConstraints

from soe.checks import MAX_SEED
from soe.configfile import Bool, ConfigError, Count, Expect, Float, Int, Str, config, parse, read_yaml
from soe.data.embed import EMBEDDER_KINDS
from soe.data.shards import dtype_for_vocab

__all__ = ["ConfigError", "PrepareConfig", "load_config", "from_dict", "validate", "section"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_VOCAB = 1 << 20  # 1,048,576 tokens: the BPE trainer's memory grows with it (1e9 tried to allocate ~70 GB)
Name = Annotated[
    str, StringConstraints(strict=True, pattern=NAME_RE.pattern), Expect(f"a name matching {NAME_RE.pattern}")
]
PathText = Annotated[str, StringConstraints(strict=True, min_length=1), Expect("a path")]


@config
@dataclass
class SourceSpec:
    name: Name
    """Unique source name (letters, digits, _ . -); used for work files and provenance."""
    path: Str | list[Str] | None = None
    """Local file(s): a path, a glob or a list of them; .txt (one document per file), .jsonl/.json(.gz), .parquet."""
    hub: Str | None = None
    """Instead of ``path``: a `datasets` dataset name (hub id, or a local dataset folder)."""
    hub_config: Str | None = None
    """Dataset configuration name for ``hub``."""
    split: Str = "train"
    """Dataset split for ``hub``."""
    streaming: Bool = True
    """Stream ``hub`` datasets instead of downloading them whole (bounded memory and disk)."""
    text_field: Str = "text"
    """Field holding the document text (ignored for .txt files)."""
    domain: Name | None = None
    """Fixed domain label of every document of this source."""
    domain_field: Str | None = None
    """Or: the field holding each document's domain label."""
    holdout: Name | None = None
    """Specialist set name: this source is kept out of pretraining and written as that specialist set."""
    max_chunks: Count | None = None
    """Keep at most this many chunks of this source (the first ones; None: all)."""


@config
@dataclass
class ChunkingSpec:
    max_chars: Count = 4096
    """Documents are cut at line boundaries into chunks of at most this many characters."""
    min_chars: Annotated[Int, Ge(0)] = 1
    """Chunks shorter than this are dropped."""
    dedupe: Bool = True
    """Drop exact repeats of a chunk across the whole corpus (held-out sources are read first, so
    a repeat is removed from pretraining rather than from the evaluation sets)."""


@config
@dataclass
class TokenizerSpec:
    vocab_size: Annotated[Int, Interval(ge=258, le=MAX_VOCAB)] = 8192  # 256 bytes + <|endoftext|> + 1 merge
    """Byte-level BPE vocabulary size, including the 256 byte tokens and <|endoftext|>."""
    sample_chunks_per_group: Count = 2000
    """Balanced training sample: at most this many random chunks per domain (per source when clustering)."""
    min_frequency: Annotated[Int, Ge(0)] = 2
    """BPE merges need at least this many occurrences."""


@config
@dataclass
class DomainsSpec:
    method: Literal["labels", "kmeans"] = "labels"
    """'labels': domains are the sources' labels; 'kmeans': discovered by clustering chunk embeddings."""
    order: list[Name] | None = None
    """labels: the fixed domain order (index i of h); default: sorted labels. Every name must get documents."""
    embedder: dict[str, Any] = field(default_factory=lambda: {"kind": "tfidf"})
    """soe.data.embed spec: {'kind': 'minilm', ...}, {'kind': 'tfidf', 'svd_dim': 128, ...} or
    {'kind': 'model2vec', 'pca_dims': 256} (distilled from MiniLM; bench/bench_embed.py compares them)."""
    centroid_sample: Count = 64
    """labels: random chunks per domain whose mean embedding is the domain centroid."""
    k: Annotated[Int, Ge(2)] = 8
    """kmeans: number of domains (k1*k2 when ``hierarchy`` is set)."""
    hierarchy: dict[Str, Count] | None = None
    """kmeans: {'k1': top clusters, 'k2': sub-clusters per top cluster}; k must equal k1*k2."""
    fit_sample: Annotated[Int, Ge(2)] = 20000
    """kmeans: fit on at most this many random chunks; every other chunk goes to its nearest centroid."""
    prefix: Str = "c"
    """kmeans: domain names are <prefix><index>, zero-padded."""


@config
@dataclass
class ShardsSpec:
    val_every: Annotated[Int, Ge(2)] = 20
    """Every val_every-th chunk of a domain (in corpus order) goes to val.bin, the rest to train.bin."""
    dtype: Literal["uint16", "uint32"] | None = None
    """Force the token dtype ('uint16'/'uint32'); default: the smallest that holds the vocabulary."""
    workers: Annotated[Int, Ge(0)] = 0
    """Tokenizer processes; 0: encode_batch in this process (tokenizers' own threads use every core)."""
    batch_docs: Count = 512
    """Documents per encode_batch call."""


@config
@dataclass
class SpecialistsSpec:
    inhouse_docs: Count = 300
    """Chunks in a specialist set's small 'in-house' sample (train.bin + inhouse.jsonl); at most half the set."""
    eval_docs: Count = 300
    """Chunks in its evaluation split (val.bin), drawn from the rest."""


@config
@dataclass
class TargetsSpec:
    """Validation targets: per pretraining source, whole documents (chunks) held out of the training shards,
    so that recipe choices are made on targets apart from the evaluation sets. Each target is a small in-house
    part (h is estimated from it) and a validation part (the loss is measured on it); its h is a mixture of
    domains, like a user's. Written to <out>/targets/ in the specialist-set format."""

    inhouse_docs: Count = 60
    """Chunks of each source's in-house part (targets/<source>/train.bin + inhouse.jsonl)."""
    val_docs: Count = 40
    """Chunks of each source's validation part (targets/<source>/val.bin)."""
    max_share: Annotated[Float, Interval(gt=0, le=0.5)] = 0.1
    """At most this share of a source's chunks becomes target documents (small sources give fewer)."""
    min_docs: Count = 8
    """A source whose in-house or validation part would have fewer chunks than this gets no target."""


@config
@dataclass
class OfflineCorpusSpec:
    out: PathText = "data/offline_corpus"
    """Where `build_offline_corpus` writes <source>.jsonl (run first when ``offline_corpus`` is set)."""
    cache: PathText = "data/cache"
    """Where packages are downloaded and unpacked."""
    chunk_chars: Count = 4096
    """Chunk size of the built corpus."""
    skip_missing: Bool = False
    """Build what is available instead of failing when a package cannot be fetched."""
    lock: PathText | None = None
    """Corpus lock (e.g. data_prep/locks/demo.lock.json): fetch exactly the package versions it lists and
    check their sha256. None: take whatever the archive serves (the versions used are recorded either way)."""
    allow_changed: Bool = False
    """With ``lock``: when the archive no longer serves a locked version (or its hash differs), say which and
    build with the available one instead of failing."""


@config
@dataclass
class PrepareConfig:
    sources: Annotated[list[SourceSpec], MinLen(1), Expect("a non-empty list of sources (mappings)")]
    """Input sources; pretraining domains come from the non-held-out ones."""
    out: Str = "data/prepared"
    """Output (prepared) directory; --out overrides it."""
    seed: Annotated[Int, Interval(ge=0, le=MAX_SEED)] = 0
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


SECTIONS = ("chunking", "tokenizer", "domains", "shards", "specialists", "targets", "offline_corpus")


def validate(cfg: PrepareConfig) -> PrepareConfig:
    """The rules across fields (types and ranges were checked by `parse`)."""
    names = set()
    for i, s in enumerate(cfg.sources):
        w = f"sources[{i}] ({s.name!r})"
        if s.name in names:
            raise ConfigError(f"{w}: name must be unique and match {NAME_RE.pattern}")
        names.add(s.name)
        if (s.path is None) == (s.hub is None):
            raise ConfigError(f"{w}: give exactly one of 'path' (local files) or 'hub' (a datasets name)")
        if s.holdout is None and (s.domain is None) == (s.domain_field is None) and cfg.domains.method == "labels":
            raise ConfigError(f"{w}: with domains.method='labels' give exactly one of 'domain' or 'domain_field'")
    if all(s.holdout for s in cfg.sources):
        raise ConfigError("sources: every source is held out; expected at least one pretraining source")
    try:
        dtype_for_vocab(cfg.tokenizer.vocab_size, cfg.shards.dtype)
    except ValueError as e:
        raise ConfigError(f"shards.dtype / tokenizer.vocab_size: {e}") from e
    d = cfg.domains
    if d.embedder.get("kind") not in EMBEDDER_KINDS:
        raise ConfigError(f"domains.embedder.kind={d.embedder.get('kind')!r}: expected one of {EMBEDDER_KINDS}")
    if d.order is not None and len(set(d.order)) != len(d.order):
        raise ConfigError(f"domains.order={d.order!r}: expected unique names matching {NAME_RE.pattern}")
    if d.method == "kmeans" and d.hierarchy is not None:
        if set(d.hierarchy) != {"k1", "k2"} or d.hierarchy["k1"] * d.hierarchy["k2"] != d.k:
            raise ConfigError(f"domains.hierarchy={d.hierarchy!r}: expected {{k1, k2}} with k1*k2 == k={d.k}")
    t = cfg.targets
    if t is not None and t.min_docs > min(t.inhouse_docs, t.val_docs):  # no source could ever get a target
        raise ConfigError(
            f"targets.min_docs={t.min_docs}: expected at most inhouse_docs={t.inhouse_docs} and "
            f"val_docs={t.val_docs} (with more, no source gets a validation target)"
        )
    return cfg


def load_config(path: str | Path, out: str | None = None) -> PrepareConfig:
    return from_dict(read_yaml(path, "config"), str(path), out)


def from_dict(raw: dict, where: str = "config", out: str | None = None) -> PrepareConfig:
    if not isinstance(raw, dict) or "sources" not in raw:
        raise ConfigError(f"{where}: expected a mapping with a 'sources' list")
    # an empty section (``targets:``) means its defaults, as it always has
    raw = {k: ({} if k in SECTIONS and v is None else v) for k, v in raw.items()}
    cfg = parse(PrepareConfig, raw, where)
    if out is not None:
        cfg.out = str(out)
    return validate(cfg)


def section(obj: Any) -> Any:
    """A JSON-able view of a config (section), used to fingerprint stages."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
