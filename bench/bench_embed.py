"""Embedders for domain discovery, side by side: chunks/s and cluster quality on the same chunks.

    python -m bench.bench_embed [--corpus data/offline_corpus] [--n 3000] [--k 64]

Each embedder encodes the same random sample of corpus chunks (every source of the offline corpus,
held-out ones included, or the committed fixture when no corpus is built). Reported per embedder:
  * chunks/s of ``encode`` (the fit — tf-idf vocabulary + SVD, model2vec's distillation — is
    timed separately: it runs once per prepared directory), and the projected time to embed the
    whole corpus (its chunk count ÷ chunks/s);
  * cluster quality of k-means (k clusters) on the sample: NMI and purity against the source each
    chunk came from (do clusters group like with like?), and the silhouette-free "split" score:
    the fraction of each source's chunks that land in its single most common cluster.
Target (issue: fast fine-grained domains): the chosen embedder embeds the demo corpus in <= 10 min on
2 cores. Takes ~3 min on 2 cores with the defaults (MiniLM dominates).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from soe.data.embed import build_embedder

REPO = Path(__file__).resolve().parents[1]
EMBEDDERS = {
    "tfidf+svd128": {"kind": "tfidf", "svd_dim": 128, "max_features": 20000},
    "minilm-1000ch": {"kind": "minilm", "max_seq_length": 128, "prefix_chars": 1000},
    "minilm-256ch": {"kind": "minilm", "max_seq_length": 64, "prefix_chars": 256},
    "model2vec-256": {"kind": "model2vec", "pca_dims": 256},
}


def load_sample(corpus: Path, n: int, seed: int) -> tuple[list[str], list[str], int]:
    """n random chunks (text, source) over the corpus's pretraining sources, and the corpus's chunk count."""
    files = sorted(corpus.glob("*.jsonl"))
    if not files:
        raise SystemExit(
            f"no <source>.jsonl under {corpus}; build the corpus (python -m data_prep."
            "build_offline_corpus) or pass --corpus data_prep/fixture"
        )
    rows = []
    for f in files:
        with open(f) as fh:
            rows += [(json.loads(line)["text"], f.stem) for line in fh]
    random.Random(seed).shuffle(rows)
    rows = rows[:n]
    return [t for t, _ in rows], [s for _, s in rows], sum(1 for f in files for _ in open(f))


def quality(x: np.ndarray, labels: list[str], k: int, seed: int) -> dict[str, float]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    c = KMeans(n_clusters=k, random_state=seed, n_init=3).fit_predict(x)
    y = np.unique(labels, return_inverse=True)[1]
    table = np.zeros((k, y.max() + 1), np.int64)
    np.add.at(table, (c, y), 1)
    return {
        "nmi": float(normalized_mutual_info_score(y, c)),
        "purity": float(table.max(1).sum() / len(y)),  # each cluster's majority source
        "together": float(table.max(0).sum() / len(y)),
    }  # each source's most common cluster


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_embed", description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=REPO / "data/offline_corpus")
    ap.add_argument("--n", type=int, default=3000, help="chunks embedded by every embedder")
    ap.add_argument("--k", type=int, default=64, help="k-means clusters for the quality scores")
    ap.add_argument("--only", default=None, help="comma-separated subset of: " + ",".join(EMBEDDERS))
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    corpus = args.corpus if args.corpus.is_dir() else REPO / "data_prep/fixture"
    texts, sources, total = load_sample(corpus, args.n, args.seed)
    k = min(args.k, len(texts) // 10)
    names = args.only.split(",") if args.only else list(EMBEDDERS)
    print(f"{len(texts)} chunks from {len(set(sources))} sources of {corpus} ({total} chunks in all); k-means k={k}")
    print(
        f"{'embedder':15s} {'fit s':>7s} {'chunks/s':>9s} {'corpus min':>10s} {'NMI':>6s} {'purity':>7s} "
        f"{'together':>8s}"
    )
    rates = {}
    for name in names:
        emb = build_embedder(EMBEDDERS[name])
        t0 = time.perf_counter()
        if hasattr(emb, "fit"):
            emb.fit(texts)
        fit_s = time.perf_counter() - t0
        emb.encode(texts[:32])  # warm-up (lazy init, first-call allocations)
        t0 = time.perf_counter()
        x = emb.encode(texts)
        rate = len(texts) / (time.perf_counter() - t0)
        rates[name] = rate
        q = quality(x, sources, k, args.seed)
        print(
            f"{name:15s} {fit_s:7.1f} {rate:9.0f} {total / rate / 60:10.1f} {q['nmi']:6.3f} {q['purity']:7.3f} "
            f"{q['together']:8.3f}",
            flush=True,
        )
    if "minilm-1000ch" in rates:
        print("speed ÷ minilm-1000ch: " + ", ".join(f"{n} {r / rates['minilm-1000ch']:.1f}x" for n, r in rates.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
