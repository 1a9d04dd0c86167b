"""One command: raw sources -> tokenizer -> domains -> token shards (+ specialist sets).

    python -m data_prep.prepare --config data_prep/configs/demo.yaml [--out DIR] [--force] [--overwrite]
                                [--lock FILE [--allow-changed]] [--debug]

Stages (each skipped when its outputs are complete and were made from the same config, recorded
as a fingerprint in ``<out>/work/<stage>.json``; re-running a stage invalidates those after it):
  0. offline_corpus  (optional) assemble the Debian/PyPI corpus (`build_offline_corpus`), pinned by its
                     lock when one is given; the lock of the corpus used goes into meta.json (corpus_lock)
  1. ingest          sources -> chunked, deduplicated work files          (data_prep.ingest)
  2. tokenizer       byte-level BPE on a balanced sample -> tokenizer.json (data_prep.tokenizer)
  3. domains         labels or k-means -> centroids.npy (+ assignments)    (data_prep.domains)
  4. shards          <domain>/{train,val}.bin, specialists/, meta.json     (data_prep.tokenize_shards)
Each stage prints what it did (stdout); its long parts show a bar on stderr, on a terminal only (documents
ingested, chunks sampled, embedded, assigned and tokenised: soe/data/progress.py; SOE_PROGRESS=0/1 turns the
bars off/on). meta.json is written last, so its presence means the whole run completed. prepare writes only into a new
or empty directory or one it prepared (marker prepare.json; from another config only with --overwrite:
data_prep/outdir.py). A bad input (config, source file, lock, --out) is refused with one line naming it,
before anything is written where it can be checked up front; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from soe.data.progress import bar
from soe.data.shards import Meta, dtype_for_vocab, load_meta, sha256_file
from soe.errors import run_entry
from soe.fileio import atomic_write_json, read_json
from soe.malloc import keep_freed_memory

from . import build_offline_corpus, outdir
from . import config as C
from .corpus_lock import LOCK_FILE, read_lock
from .domains import DomainError, assign_path, kmeans_domains, label_domains
from .ingest import ingest, local_files, read_chunks
from .tokenize_shards import ShardWriter, encode_stream
from .tokenizer import EOS, train_bpe


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps([C.section(p) for p in parts], sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def _done(out: Path, stage: str, fp: str, log=print) -> dict | None:
    path = out / "work" / f"{stage}.json"
    if path.is_file():
        try:
            rec = read_json(path, "stage record")
        except ValueError as e:  # only a cache of finished work: redo the stage rather than stop
            log(f"  {e}; redoing the stage")
            return None
        if isinstance(rec, dict) and rec.get("fingerprint") == fp:
            return rec
    return None


def _mark(out: Path, stage: str, fp: str, **data) -> dict:
    path = out / "work" / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {"fingerprint": fp, **data}
    atomic_write_json(path, rec)
    return rec


def _invalidate(out: Path, *stages: str) -> None:
    for s in stages:
        (out / "work" / f"{s}.json").unlink(missing_ok=True)
    for m in (out / "meta.json", out / "specialists" / "meta.json", out / "targets" / "meta.json"):
        m.unlink(missing_ok=True)


def target_roles(cfg: C.PrepareConfig, stats: dict) -> dict[str, np.ndarray]:
    """{source: role per chunk} for the validation targets (0 pretraining, 1 in-house, 2 validation).

    Per pretraining source, whole chunks drawn at random (seeded by the config's seed and the source's name,
    so adding a source moves no other source's targets); a source too small for ``targets.min_docs`` chunks
    in each part gets none."""
    t = cfg.targets
    if t is None:
        return {}
    roles = {}
    for src in cfg.sources:
        n = stats[src.name]["chunks"]
        cap = int(n * t.max_share)
        n_in = min(t.inhouse_docs, cap * t.inhouse_docs // (t.inhouse_docs + t.val_docs))
        n_val = min(t.val_docs, cap - n_in)
        if src.holdout or min(n_in, n_val) < t.min_docs:
            continue
        rng = np.random.default_rng([cfg.seed, zlib.crc32(src.name.encode())])
        role = np.zeros(n, np.int8)
        perm = rng.permutation(n)
        role[perm[:n_in]], role[perm[n_in : n_in + n_val]] = 1, 2
        roles[src.name] = role
    return roles


def _routes(cfg: C.PrepareConfig, out: Path, stats: dict, dom: dict, writer: ShardWriter):
    """(key, text) for every chunk in corpus order: pretraining domains (and the validation targets drawn from
    their sources, which never enter a training shard), then specialist sets."""
    labels = dom["domain_source"]["method"] == "labels"
    seen: Counter = Counter()
    every = cfg.shards.val_every
    roles = target_roles(cfg, stats)
    for src in cfg.sources:
        if src.holdout:
            continue
        assign = None if labels else np.load(assign_path(out, src.name))
        role = roles.get(src.name)
        inhouse = None
        if role is not None:
            inhouse_path = out / "targets" / src.name / "inhouse.jsonl.tmp"
            inhouse_path.parent.mkdir(parents=True, exist_ok=True)
            writer.extra_tmp.append(inhouse_path)
            inhouse = open(inhouse_path, "w", encoding="utf-8")
        for i, (text, label) in enumerate(read_chunks(out, src.name)):
            if role is not None and role[i]:
                if role[i] == 1:
                    inhouse.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                yield (f"targets/{src.name}", "train" if role[i] == 1 else "val"), text
                continue
            d = label if labels else dom["domains"][assign[i]]
            seen[d] += 1
            yield (d, "val" if seen[d] % every == 2 % every else "train"), text  # 2nd, (2+every)th, ... -> val
        if inhouse is not None:
            inhouse.close()
    for d in dom["domains"]:
        if seen[d] < 2:
            raise DomainError(f"domain {d!r} has {seen[d]} document(s); expected at least 2 (train and val)")
    rng = np.random.default_rng(cfg.seed)
    sp = cfg.specialists
    for name in _sets(cfg):
        members = [s for s in cfg.sources if s.holdout == name]
        n = sum(stats[s.name]["chunks"] for s in members)
        if n < 2:
            raise DomainError(
                f"specialist set {name!r} (sources {[s.name for s in members]}) has {n} chunk(s); "
                "expected at least 2 (in-house sample and evaluation split)"
            )
        n_in, n_ev = _set_split(sp, n)
        role = np.zeros(n, np.int8)  # 0 unused, 1 in-house (train.bin + inhouse.jsonl), 2 evaluation (val.bin)
        perm = rng.permutation(n)
        role[perm[:n_in]], role[perm[n_in : n_in + n_ev]] = 1, 2
        inhouse = out / "specialists" / name / "inhouse.jsonl.tmp"
        inhouse.parent.mkdir(parents=True, exist_ok=True)
        writer.extra_tmp.append(inhouse)
        i = 0
        with open(inhouse, "w", encoding="utf-8") as f:
            for s in members:
                for text, _ in read_chunks(out, s.name):
                    if role[i] == 1:
                        f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                        yield (f"specialists/{name}", "train"), text
                    elif role[i] == 2:
                        yield (f"specialists/{name}", "val"), text
                    i += 1


def _sets(cfg: C.PrepareConfig) -> list[str]:
    return list(dict.fromkeys(s.holdout for s in cfg.sources if s.holdout))


def _set_split(sp, n: int) -> tuple[int, int]:
    """(in-house, evaluation) chunks drawn from a specialist set of ``n`` chunks."""
    n_in = min(sp.inhouse_docs, n // 2)
    return n_in, min(sp.eval_docs, n - n_in)


def _routed(cfg: C.PrepareConfig, stats: dict) -> int:
    """Chunks `_routes` yields: every pretraining chunk, and the drawn chunks of each specialist set."""
    n = sum(stats[s.name]["chunks"] for s in cfg.sources if not s.holdout)
    for name in _sets(cfg):
        n += sum(_set_split(cfg.specialists, sum(stats[s.name]["chunks"] for s in cfg.sources if s.holdout == name)))
    return n


def make_shards(
    cfg, out: Path, stats: dict, dom: dict, tok_info: dict, log=print, corpus_lock: dict | None = None
) -> Meta:
    dtype = dtype_for_vocab(tok_info["vocab_size"], cfg.shards.dtype)
    for p in list(out.rglob("*.bin")) + list(out.rglob("*.tmp")):  # stale shards from an older run
        if "work" not in p.relative_to(out).parts:
            p.unlink()
    writer = ShardWriter(out, dtype)
    t0 = time.time()
    with bar(desc="tokenize", unit="chunk", total=_routed(cfg, stats)) as pbar:
        for key, arr, ndocs, nbytes in encode_stream(
            _routes(cfg, out, stats, dom, writer),
            out / "tokenizer.json",
            tok_info["eos_id"],
            dtype,
            cfg.shards.workers,
            cfg.shards.batch_docs,
        ):
            writer.add(key, arr, ndocs, nbytes)
            pbar.update(ndocs)
    writer.commit()
    secs = time.time() - t0
    ntok = sum(writer.tokens.values())
    log(f"  shards: {ntok:,} tokens in {secs:.1f}s ({ntok / max(secs, 1e-9):,.0f} tokens/s)")

    def table(names, prefix=""):
        """tokens, documents, bytes as {name: {split: count}}."""
        return tuple(
            {n: {s: d.get((prefix + n, s), 0) for s in ("train", "val")} for n in names}
            for d in (writer.tokens, writer.docs, writer.bytes)
        )

    common = dict(
        vocab_size=tok_info["vocab_size"], tokenizer_sha256=tok_info["sha256"], eos_id=tok_info["eos_id"], dtype=dtype
    )
    targets = sorted(target_roles(cfg, stats), key=[s.name for s in cfg.sources].index)
    for what, names, prefix in (
        ("specialist sets", _sets(cfg), "specialists/"),
        ("validation targets", targets, "targets/"),
    ):
        if names:
            docs = {n: [writer.docs.get((prefix + n, sp), 0) for sp in ("train", "val")] for n in names}
            log(
                f"  {what} (in-house + held-out documents): "
                + ", ".join(f"{n} {a} + {b}" for n, (a, b) in docs.items())
            )
    if targets:
        t, d, b = table(targets, "targets/")
        Meta(
            domains=targets,
            tokenizer_file="../tokenizer.json",
            tokens=t,
            documents=d,
            bytes=b,
            domain_source={
                "method": "validation_targets",
                "sources": {n: [n] for n in targets},
                "labels": {s.name: s.domain for s in cfg.sources if s.name in targets},
            },
            **common,
        ).save(out / "targets")
    sets = _sets(cfg)
    if sets:
        t, d, b = table(sets, "specialists/")
        spec_meta = Meta(
            domains=sets,
            tokenizer_file="../tokenizer.json",
            tokens=t,
            documents=d,
            bytes=b,
            domain_source={
                "method": "heldout",
                "sources": {n: [s.name for s in cfg.sources if s.holdout == n] for n in sets},
            },
            **common,
        )
        spec_meta.save(out / "specialists")
    t, d, b = table(dom["domains"])
    meta = Meta(
        domains=dom["domains"],
        tokens=t,
        documents=d,
        bytes=b,
        domain_source={**dom["domain_source"], "chunk_chars": cfg.chunking.max_chars},
        specialists={n: "specialists" for n in sets},
        extra={
            "fingerprint": tok_info["shards_fp"],
            "targets": "targets" if targets else None,
            "seed": cfg.seed,
            "tokenize_seconds": round(secs, 2),
            "sources": {
                s.name: {
                    "domain": s.domain,
                    "domain_field": s.domain_field,
                    "holdout": s.holdout,
                    "path": s.path,
                    "hub": s.hub,
                    **{k: v for k, v in stats[s.name].items() if k != "labels"},
                }
                for s in cfg.sources
            },
            "command": " ".join(sys.argv),
        },
        corpus_lock=corpus_lock,
        **common,
    )
    meta.save(out)
    return meta


def print_table(out: Path, log=print) -> None:
    """Domains (and specialist sets) with documents, tokens and bytes per token."""
    meta = load_meta(out)
    rows = [("", meta)]
    if meta.specialists:
        rows.append(("specialist ", load_meta(out / "specialists")))
    if meta.extra.get("targets"):
        rows.append(("target ", load_meta(out / meta.extra["targets"])))
    log(f"{'domain':28s} {'documents':>10s} {'tokens':>13s} {'bytes/token':>11s}")
    for prefix, m in rows:
        for d in m.domains:
            docs = sum(m.documents[d].values())
            tok = sum(m.tokens[d].values())
            log(f"{prefix + d:28s} {docs:10,d} {tok:13,d} {sum(m.bytes[d].values()) / max(tok - docs, 1):11.2f}")
    tot = sum(sum(v.values()) for v in meta.tokens.values())
    log(f"{'total (pretraining)':28s} {sum(sum(v.values()) for v in meta.documents.values()):10,d} {tot:13,d}")


def offline_corpus(cfg: C.PrepareConfig, log=print) -> dict | None:
    """Stage 0: build (or check) the package corpus; returns its lock for meta.json (None without the stage)."""
    oc = cfg.offline_corpus
    if oc is None:
        return None
    log(f"[0/4] offline corpus -> {oc.out}" + (f" (lock {oc.lock})" if oc.lock else ""))
    lock = build_offline_corpus.build(
        Path(oc.out),
        Path(oc.cache),
        None,
        oc.chunk_chars,
        oc.skip_missing,
        lock=oc.lock,
        allow_changed=oc.allow_changed,
    )
    return {**lock, "lock_file": str(Path(oc.out) / LOCK_FILE)}


def config_fingerprint(cfg: C.PrepareConfig) -> str:
    """What a prepared directory was made from (its marker, data_prep/outdir.py): every section but ``out``."""
    return fingerprint(
        cfg.sources,
        cfg.chunking,
        cfg.tokenizer,
        cfg.domains,
        cfg.seed,
        cfg.shards,
        cfg.specialists,
        cfg.targets,
        cfg.offline_corpus,
    )


def run(cfg: C.PrepareConfig, force: bool = False, log=print, overwrite: bool = False) -> Meta:
    """Prepare ``cfg.out``; a directory prepare did not write is refused, one it prepared from another config
    is replaced only with ``overwrite`` (or ``force``), before anything is written (data_prep/outdir.py)."""
    out = Path(cfg.out)
    config_fp = config_fingerprint(cfg)
    outdir.check_out(out, config_fp, overwrite, force)
    if cfg.offline_corpus is not None and cfg.offline_corpus.lock:
        read_lock(cfg.offline_corpus.lock)  # a bad lock fails before any package is fetched
    t0 = time.time()
    corpus_lock = offline_corpus(cfg, log)
    for src in cfg.sources:  # missing local files fail before the output directory is made
        if src.path is not None:
            local_files(src)
    outdir.claim(out, config_fp)
    # the corpus's package versions are part of its identity: another lock re-runs every stage
    fp_ingest = fingerprint(cfg.sources, cfg.chunking, *([corpus_lock["id"]] if corpus_lock else []))
    rec = None if force else _done(out, "ingest", fp_ingest, log)
    if rec is None:
        log("[1/4] ingest")
        _invalidate(out, "ingest", "tokenizer", "domains")
        rec = _mark(out, "ingest", fp_ingest, stats=ingest(cfg, out, log))
    else:
        log("[1/4] ingest: complete, skipped")
    stats = rec["stats"]
    fp_tok = fingerprint(fp_ingest, cfg.tokenizer, cfg.domains.method, cfg.seed)
    tok = None if force else _done(out, "tokenizer", fp_tok, log)
    if tok is None or not (out / "tokenizer.json").is_file() or sha256_file(out / "tokenizer.json") != tok["sha256"]:
        log(f"[2/4] tokenizer: byte-level BPE, vocab {cfg.tokenizer.vocab_size}")
        _invalidate(out, "tokenizer")
        t = time.time()
        by = (
            (lambda n, lab: lab) if cfg.domains.method == "labels" else (lambda n, lab: n)
        )  # balance domains (or sources)
        pre = [s.name for s in cfg.sources if not s.holdout]
        from .ingest import sample_by_group

        n_pre = sum(stats[n]["chunks"] for n in pre)
        sample = sample_by_group(
            out, pre, by, cfg.tokenizer.sample_chunks_per_group, cfg.seed, n_pre, "tokenizer sample"
        )
        bpe = train_bpe(sample, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, out / "tokenizer.json")
        vocab = bpe.get_vocab_size()
        dtype_for_vocab(vocab, cfg.shards.dtype)
        tok = _mark(
            out,
            "tokenizer",
            fp_tok,
            vocab_size=vocab,
            eos_id=bpe.token_to_id(EOS),
            sha256=sha256_file(out / "tokenizer.json"),
            sample_mb=round(sum(len(x) for v in sample.values() for x in v) / 1e6, 1),
        )
        log(f"  tokenizer: vocab {vocab}, trained on {tok['sample_mb']} MB in {time.time() - t:.1f}s")
    else:
        log("[2/4] tokenizer: complete, skipped")
    fp_dom = fingerprint(fp_ingest, cfg.domains, cfg.seed)
    dom = None if force else _done(out, "domains", fp_dom, log)
    if dom is None or not (out / "centroids.npy").is_file():
        log(f"[3/4] domains: {cfg.domains.method}")
        _invalidate(out, "domains")
        fn = label_domains if cfg.domains.method == "labels" else kmeans_domains
        dom = _mark(out, "domains", fp_dom, **fn(cfg, out, stats, log))
    else:
        log("[3/4] domains: complete, skipped")
    # targets join the fingerprint only when set, so configs without them keep their prepared shards
    fp_shards = fingerprint(
        fp_tok, tok["sha256"], fp_dom, cfg.shards, cfg.specialists, *([cfg.targets] if cfg.targets is not None else [])
    )
    meta_ok = False
    if not force and (out / "meta.json").is_file():
        meta = load_meta(out)
        meta_ok = meta.extra.get("fingerprint") == fp_shards and all(
            (out / d / f"{s}.bin").is_file() for d in meta.domains for s in ("train", "val")
        )
    if meta_ok:
        log("[4/4] shards: complete, skipped")
    else:
        log("[4/4] shards")
        _invalidate(out)
        meta = make_shards(cfg, out, stats, dom, {**tok, "shards_fp": fp_shards}, log, corpus_lock)
    log(f"prepared {out} in {time.time() - t0:.1f}s")
    print_table(out, log)
    return meta


def build_parser(prog: str = "python -m data_prep.prepare") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog, description="Prepare token shards from a YAML spec (see data_prep/README.md)."
    )
    ap.add_argument("--config", required=True, help="YAML spec, e.g. data_prep/configs/demo.yaml")
    ap.add_argument("--out", default=None, help="prepared directory (overrides the config's 'out')")
    ap.add_argument("--force", action="store_true", help="re-run every stage")
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a directory prepare wrote from another config (one it did not write is always refused)",
    )
    ap.add_argument(
        "--lock", default=None, help="corpus lock for the offline_corpus stage (overrides offline_corpus.lock)"
    )
    ap.add_argument(
        "--allow-changed",
        action="store_true",
        help="with a lock: build with the available version of a package the archive no longer "
        "serves (named in a warning) instead of failing",
    )
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return ap


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m data_prep.prepare`` (and ``soe prepare``, with ``prog``: the name its messages give)."""
    keep_freed_memory()  # an entry point: freed memory stays in the process (soe/malloc.py)
    a = (build_parser(prog) if prog else build_parser()).parse_args(argv)

    def go() -> int:
        cfg = C.load_config(a.config, a.out)
        if a.lock is not None or a.allow_changed:
            if cfg.offline_corpus is None:
                raise C.ConfigError(
                    f"--lock/--allow-changed apply to the offline_corpus stage, which config "
                    f"{a.config} does not have (its sources are local files)"
                )
            if a.lock is not None:
                cfg.offline_corpus.lock = a.lock
            cfg.offline_corpus.allow_changed |= a.allow_changed
        run(cfg, force=a.force, overwrite=a.overwrite)
        return 0

    return run_entry(prog or "data_prep.prepare", go, a.debug)


if __name__ == "__main__":
    sys.exit(main())
