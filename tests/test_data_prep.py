"""data_prep on the committed fixture: round trip, meta counts, specialists, skipping, hub path, clustering."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from data_prep import config as C
from data_prep.prepare import run
from data_prep.text import Deduper, pack
from soe.data.shards import check_tokenizer, load_meta, open_shard
from soe.data.text import chunk_text

REPO = Path(__file__).resolve().parents[1]
FIXTURE_CFG = REPO / "data_prep" / "configs" / "fixture.yaml"


def decode_docs(directory: Path, meta, name: str, split: str, tok: Tokenizer) -> list[str]:
    """A shard split at EOS and decoded: one string per document."""
    ids = np.asarray(open_shard(directory, meta, name, split), dtype=np.int64)
    assert ids[-1] == meta.eos_id, "every document, the last included, ends with EOS"
    cuts = np.flatnonzero(ids == meta.eos_id)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [tok.decode(ids[s:e].tolist(), skip_special_tokens=False) for s, e in zip(starts, cuts)]


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    """The whole pipeline on the committed fixture (labelled domains, tfidf centroids, 3 specialist sets)."""
    out = tmp_path_factory.mktemp("fixture")
    cwd = os.getcwd()
    os.chdir(REPO)  # the config's paths are relative to the repository root
    try:
        logs: list[str] = []
        meta = run(C.load_config(FIXTURE_CFG, out=str(out)), log=logs.append)
    finally:
        os.chdir(cwd)
    return out, meta, logs


def test_round_trip_and_counts(fixture_run):
    out, meta, _ = fixture_run
    meta = load_meta(out)
    check_tokenizer(meta, out)
    tok = Tokenizer.from_file(str(out / meta.tokenizer_file))
    assert tok.id_to_token(meta.eos_id) == "<|endoftext|>"
    assert tok.get_vocab_size() == meta.vocab_size
    chunks: dict[str, list[str]] = {d: [] for d in meta.domains}
    for f in sorted((out / "work" / "chunks").glob("*.jsonl")):
        for line in open(f, encoding="utf-8"):
            r = json.loads(line)
            if r["d"] in chunks and f.stem not in ("janeausten", "go_src", "metamath_other"):
                chunks[r["d"]].append(r["t"])
    for d in meta.domains:
        docs = {s: decode_docs(out, meta, d, s, tok) for s in ("train", "val")}
        assert sorted(docs["train"] + docs["val"]) == sorted(chunks[d]), f"domain {d}: decode(shards) != chunks"
        for s in ("train", "val"):
            assert meta.documents[d][s] == len(docs[s]) > 0
            assert meta.tokens[d][s] == (out / d / f"{s}.bin").stat().st_size // 2
            assert meta.bytes[d][s] == sum(len(x.encode()) for x in docs[s])
    # the fixture texts themselves (chunks == fixture records: fixture chunks are <= max_chars)
    kjv = [json.loads(line)["text"] for line in open(REPO / "data_prep/fixture/kjv.jsonl", encoding="utf-8")]
    assert set(kjv) <= set(chunks["religious"])
    assert not list(out.rglob("*.tmp")), "no temporary files left after a complete run"


def test_specialists_and_centroids(fixture_run):
    out, meta, _ = fixture_run
    assert meta.specialists == {"austen": "specialists", "go": "specialists", "metamath": "specialists"}
    sm = load_meta(out / "specialists")
    check_tokenizer(sm, out / "specialists", expected_sha256=meta.tokenizer_sha256, expected_vocab=meta.vocab_size)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for name in sm.domains:
        inhouse = [json.loads(x)["text"] for x in open(out / "specialists" / name / "inhouse.jsonl", encoding="utf-8")]
        assert decode_docs(out / "specialists", sm, name, "train", tok) == inhouse
        assert 0 < len(inhouse) <= 12 and sm.documents[name]["val"] > 0
    austen = {json.loads(x)["text"] for x in open(REPO / "data_prep/fixture/janeausten.jsonl", encoding="utf-8")}
    pre = {t for d in meta.domains for s in ("train", "val") for t in decode_docs(out, meta, d, s, tok)}
    assert not austen & pre, "held-out text must not reach the pretraining shards"
    # centroids + embedder rebuilt from meta.json: most val documents land on their own domain
    from soe.data.centroids import nearest_centroid
    from soe.data.embed import build_embedder

    src = meta.domain_source
    assert src["method"] == "labels" and src["k"] == len(meta.domains) and src["chunk_chars"] == 2000
    cents = np.load(out / src["centroids_file"], allow_pickle=False)
    emb = build_embedder(src["embedder"], root=out)
    assert cents.shape == (len(meta.domains), emb.dim) and cents.dtype == np.float32
    hits = total = 0
    for i, d in enumerate(meta.domains):
        a = nearest_centroid(emb.encode(decode_docs(out, meta, d, "val", tok)), cents)
        hits, total = hits + int((a == i).sum()), total + len(a)
    assert hits / total > 0.8


def test_hf_tokenizer_loads(fixture_run):
    from transformers import PreTrainedTokenizerFast

    out, meta, _ = fixture_run
    hf = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    text = "def f(x):\n    return x  # café ünïcode"
    assert hf.decode(hf(text)["input_ids"]) == text


def test_rerun_skips_completed_stages(fixture_run):
    out, meta, _ = fixture_run
    logs: list[str] = []
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        run(C.load_config(FIXTURE_CFG, out=str(out)), log=logs.append)
    finally:
        os.chdir(cwd)
    assert sum("skipped" in line for line in logs) == 4, logs
    assert any(line.startswith("domain") and "bytes/token" in line for line in logs)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def tiny_config(tmp_path: Path, sources: list[dict], **sections) -> C.PrepareConfig:
    raw = {
        "out": str(tmp_path / "out"),
        "sources": sources,
        "tokenizer": {"vocab_size": 300, "sample_chunks_per_group": 200},
        "domains": {"embedder": {"kind": "tfidf", "svd_dim": 8}, "centroid_sample": 16},
        "shards": {"val_every": 3},
        "specialists": {"inhouse_docs": 2, "eval_docs": 2},
    }
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return C.from_dict(raw)


def test_eos_literal_and_local_formats(tmp_path):
    """A literal '<|endoftext|>' inside a document stays text; txt, jsonl.gz and parquet all ingest."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [f"line {i} with <|endoftext|> inside and ünïcode {i * 7}" for i in range(12)]
    write_jsonl(tmp_path / "a.jsonl", [{"body": d} for d in docs])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": f"gzip doc {i} " * 20}) + "\n" for i in range(6))
    for i in range(6):
        (tmp_path / "txt").mkdir(exist_ok=True)
        (tmp_path / "txt" / f"{i}.txt").write_text(f"plain file {i}\n" * 5)
    pq.write_table(pa.table({"text": [f"parquet row {i} " * 9 for i in range(6)]}), tmp_path / "c.parquet")
    cfg = tiny_config(
        tmp_path,
        [
            {"name": "a", "path": str(tmp_path / "a.jsonl"), "text_field": "body", "domain": "one"},
            {"name": "b", "path": str(tmp_path / "b.jsonl.gz"), "domain": "two"},
            {"name": "c", "path": str(tmp_path / "txt" / "*.txt"), "domain": "two"},
            {"name": "d", "path": str(tmp_path / "c.parquet"), "domain": "three"},
        ],
    )
    meta = run(cfg, log=lambda *_: None)
    out = Path(cfg.out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    got = decode_docs(out, meta, "one", "train", tok) + decode_docs(out, meta, "one", "val", tok)
    assert sorted(got) == sorted(docs)
    assert meta.documents["two"]["train"] + meta.documents["two"]["val"] == 12


def test_hub_path_with_local_dataset(tmp_path, monkeypatch):
    """`hub:` goes through datasets.load_dataset(name, streaming=True); a local dataset repo folder
    stands in for the hub, with the hub switched off so nothing can reach the network."""
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    repo = tmp_path / "my_dataset"
    (repo / "data").mkdir(parents=True)
    rows = {
        "content": [f"{'alpha' if i % 2 else 'omega'} record {i} " * 10 for i in range(40)],
        "topic": ["alpha" if i % 2 else "omega" for i in range(40)],
    }
    datasets.Dataset.from_dict(rows).to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))
    cfg = tiny_config(
        tmp_path,
        [
            {
                "name": "hubsrc",
                "hub": str(repo),
                "split": "train",
                "streaming": True,
                "text_field": "content",
                "domain_field": "topic",
            }
        ],
    )
    meta = run(cfg, log=lambda *_: None)
    assert meta.domains == ["alpha", "omega"]
    assert sum(meta.documents["alpha"].values()) == 20
    tok = Tokenizer.from_file(str(Path(cfg.out) / "tokenizer.json"))
    got = decode_docs(Path(cfg.out), meta, "omega", "train", tok) + decode_docs(
        Path(cfg.out), meta, "omega", "val", tok
    )
    assert sorted(got) == sorted(
        t.strip() for t, d in zip(rows["content"], rows["topic"]) if d == "omega"
    )  # chunks are stripped


def planted_mixture(tmp_path: Path, k: int = 4, n: int = 60, seed: int = 0) -> list[dict]:
    """k synthetic domains, shuffled into one file. Planted as a two-level tree: domain j draws from
    its own words, the words of its parent group j // 2 and a few shared words."""
    rng = random.Random(seed)
    own = [[f"w{j}x{i}" for i in range(40)] for j in range(k)]
    group = [[f"g{j}y{i}" for i in range(40)] for j in range(k // 2)]
    common = ["the", "and", "of", "a", "to"]
    recs = [
        {"text": " ".join(rng.choice(own[j] + group[j // 2] + common) for _ in range(80)), "label": f"d{j}"}
        for j in range(k)
        for _ in range(n)
    ]
    rng.shuffle(recs)
    return recs


@pytest.mark.parametrize("hierarchy", [None, {"k1": 2, "k2": 2}])
def test_kmeans_recovers_planted_domains(tmp_path, hierarchy):
    from sklearn.metrics import adjusted_rand_score

    recs = planted_mixture(tmp_path)
    write_jsonl(tmp_path / "mix.jsonl", recs)
    cfg = tiny_config(
        tmp_path,
        [{"name": "mix", "path": str(tmp_path / "mix.jsonl")}],
        domains={"method": "kmeans", "k": 4, "hierarchy": hierarchy, "fit_sample": 120},
    )
    meta = run(cfg, log=lambda *_: None)
    out = Path(cfg.out)
    assert meta.domains == ["c0", "c1", "c2", "c3"] and meta.domain_source["method"] == "kmeans"
    assign = np.load(out / "work" / "assign" / "mix.npy")
    assert adjusted_rand_score([r["label"] for r in recs], assign) > 0.95
    assert np.load(out / "centroids.npy").shape[0] == 4
    if hierarchy:
        assert meta.domain_source["hierarchy"]["k1"] == 2 and (out / "centroids_top.npy").is_file()
    # estimation path: the embedder rebuilt from meta.json + centroids.npy puts *new* text of planted
    # domain j into the cluster that holds most of domain j's corpus chunks
    from soe.data.centroids import nearest_centroid
    from soe.data.embed import build_embedder

    emb = build_embedder(meta.domain_source["embedder"], root=out)
    labels = np.array([r["label"] for r in recs])
    majority = {lab: np.bincount(assign[labels == lab]).argmax() for lab in set(labels)}
    new = planted_mixture(tmp_path, n=10, seed=1)
    got = nearest_centroid(emb.encode([r["text"] for r in new]), np.load(out / "centroids.npy"))
    assert np.mean([g == majority[r["label"]] for g, r in zip(got, new)]) > 0.95
    # and `soe estimate-weights` on an in-house file of one planted domain puts its weight on that cluster
    from soe.specialists.estimate import estimate_weights

    inhouse = tmp_path / "inhouse.jsonl"
    write_jsonl(inhouse, [r for r in new if r["label"] == "d2"])
    est = estimate_weights(out, str(inhouse))
    assert est.weights[meta.domains[majority["d2"]]] > 0.9, est.weights


def test_chunk_pack_dedupe():
    text = "".join(f"line {i} " * (i % 7) + "\n" + ("\n" if i % 5 == 0 else "") for i in range(400))
    chunks = chunk_text(text, 300)
    assert all(0 < len(c) <= 300 for c in chunks)
    assert " ".join(chunks).split() == text.split(), "chunking only cuts (and strips), never loses text"
    assert chunk_text("x" * 1000, 256)[0] == "x" * 256 and len(chunk_text("x" * 1000, 256)) == 4
    assert chunk_text("  \n ", 10) == []
    assert list(pack(["a" * 40] * 5, 100)) == ["a" * 40 + "\n\n" + "a" * 40] * 2 + ["a" * 40]
    d = Deduper()
    assert [d.is_new(x) for x in ["a", "b", "a"]] == [True, True, False] and d.dropped == 1
