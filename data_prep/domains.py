"""Domains: from labels (one centroid per label) or discovered by k-means on chunk embeddings.

Both modes save ``centroids.npy`` (k, d) float32 and the embedder's spec (+ fitted state for
tfidf) so that specialist estimation embeds new text exactly as here and assigns it to the
nearest centroid (`soe.data.centroids.nearest_centroid`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from soe.data.centroids import nearest_centroid
from soe.data.embed import build_embedder
from soe.data.progress import bar, encode

from .config import PrepareConfig
from .ingest import read_chunks, sample_by_group

EMBED_BATCH = 1024  # chunks embedded per call when assigning the whole corpus
# embedders that embed text by text: blocks of any size give the bits of one call, so the k-means sample is
# embedded in blocks under a bar; MiniLM pads each batch, so its sample stays one call (as it always was)
ROW_WISE = ("tfidf", "model2vec")


class DomainError(ValueError):
    """Domains cannot be formed as asked (empty domain, k too large, ...)."""


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def _embedder(cfg: PrepareConfig, fit_texts: list[str], out: Path, log=print):
    emb = build_embedder(cfg.domains.embedder)
    if hasattr(emb, "fit"):  # tfidf: fit on the sample, save state next to meta.json
        kind, t = cfg.domains.embedder.get("kind"), time.time()
        if kind == "model2vec":
            log("  embedder: distilling model2vec from MiniLM (about a minute on 2 cores) ...")
        emb.fit(fit_texts)
        emb.save(out)
        log(f"  embedder: {kind} fitted on {len(fit_texts):,} chunks in {time.time() - t:.1f}s")
    return emb


def assign_path(out: Path, name: str) -> Path:
    return out / "work" / "assign" / f"{name}.npy"


def label_domains(cfg: PrepareConfig, out: Path, stats: dict, log=print) -> dict[str, Any]:
    """Domains = labels of the pretraining sources; centroid = mean embedding of a random sample."""
    pre = [s.name for s in cfg.sources if not s.holdout]
    counts: dict[str, int] = {}
    for name in pre:
        for label, n in stats[name]["labels"].items():
            counts[label] = counts.get(label, 0) + n
    order = cfg.domains.order or sorted(counts)
    extra = sorted(set(counts) - set(order))
    if extra:
        raise DomainError(
            f"domain labels {extra} (from sources {pre}) are not in domains.order={order}; add them or fix the labels"
        )
    empty = [d for d in order if counts.get(d, 0) == 0]
    if empty:
        raise DomainError(
            f"domains {empty} have no documents (chunks per label: {counts}); "
            "expected every domain in domains.order to get documents"
        )
    total = sum(stats[n]["chunks"] for n in pre)
    sample = sample_by_group(
        out, pre, lambda _n, label: label, cfg.domains.centroid_sample, cfg.seed, total, "domain sample"
    )
    emb = _embedder(cfg, [t for d in order for t in sample[d]], out, log)
    t, rows = time.time(), []
    with bar(desc="embed centroids", unit="chunk", total=sum(len(sample[d]) for d in order)) as b:
        for d in order:  # one call per domain, as always
            rows.append(emb.encode(sample[d]).mean(0))
            b.update(len(sample[d]))
    centroids = np.stack(rows).astype(np.float32)  # (k, d)
    _save_npy(out / "centroids.npy", centroids)
    log(
        f"  domains: {len(order)} labelled domains, centroids {centroids.shape} from "
        f"<= {cfg.domains.centroid_sample} chunks each ({emb.spec()['kind']}, {time.time() - t:.1f}s)"
    )
    return {
        "domains": order,
        "domain_source": {
            "method": "labels",
            "embedder": emb.spec(),
            "k": len(order),
            "centroids_file": "centroids.npy",
            "centroid_sample": cfg.domains.centroid_sample,
        },
    }


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N, d) -> (k, d) centroids with scikit-learn (MiniBatchKMeans for large samples)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(x) > 50_000:
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3)
    else:
        km = KMeans(n_clusters=k, random_state=seed, n_init=3)
    return km.fit(x).cluster_centers_.astype(np.float32)


def kmeans_domains(cfg: PrepareConfig, out: Path, stats: dict, log=print) -> dict[str, Any]:
    """Fit k-means (optionally k1 x k2 two-level) on a sample; assign every chunk to its nearest centroid."""
    d = cfg.domains
    pre = [s.name for s in cfg.sources if not s.holdout]
    total = sum(stats[n]["chunks"] for n in pre)
    if d.k > min(total, d.fit_sample):
        raise DomainError(
            f"domains.k={d.k} is larger than the number of chunks to cluster "
            f"({total} pretraining chunks, fit_sample={d.fit_sample}); expected k <= "
            f"{min(total, d.fit_sample)}"
        )
    sample = sample_by_group(out, pre, lambda _n, _l: "all", d.fit_sample, cfg.seed, total, "domain sample")["all"]
    emb = _embedder(cfg, sample, out, log)
    kind, t = emb.spec()["kind"], time.time()
    x = encode(emb, sample, "embed sample", EMBED_BATCH if kind in ROW_WISE else len(sample))  # (N, dim)
    log(f"  embedded the {len(sample):,}-chunk sample ({kind}) in {time.time() - t:.1f}s")
    t = time.time()
    source: dict[str, Any] = {
        "method": "kmeans",
        "embedder": emb.spec(),
        "k": d.k,
        "centroids_file": "centroids.npy",
        "fit_sample": len(sample),
    }
    if d.hierarchy:
        k1, k2 = d.hierarchy["k1"], d.hierarchy["k2"]
        top = _kmeans(x, k1, cfg.seed)  # (k1, dim)
        top_of = nearest_centroid(x, top)
        leaves = []
        for j in bar(range(k1), desc="k-means per top cluster", unit="cluster"):
            members = x[top_of == j]
            if len(members) < k2:
                raise DomainError(
                    f"domains.hierarchy k2={k2} is larger than the {len(members)} sample chunks in "
                    f"top cluster {j}; lower k2 or raise fit_sample"
                )
            leaves.append(_kmeans(members, k2, cfg.seed + 1 + j))
        centroids = np.concatenate(leaves)  # (k1*k2, dim), leaf j*k2+i is sub-cluster i of top cluster j
        _save_npy(out / "centroids_top.npy", top)
        # assignment below uses the flat nearest leaf, exactly what estimation does with centroids.npy
        source["hierarchy"] = {"k1": k1, "k2": k2, "top_centroids_file": "centroids_top.npy"}
    else:
        centroids = _kmeans(x, d.k, cfg.seed)
    how = f"k1={d.hierarchy['k1']} x k2={d.hierarchy['k2']}" if d.hierarchy else f"k={d.k}"
    log(f"  k-means: {how} on {len(sample):,} chunks in {time.time() - t:.1f}s")
    _save_npy(out / "centroids.npy", centroids)
    counts = np.zeros(d.k, np.int64)
    t = time.time()
    with bar(desc="assign", unit="chunk", total=total) as b:
        for name in pre:  # assign the whole corpus in bounded batches
            labels, batch = [], []
            for text, _ in read_chunks(out, name):
                batch.append(text)
                if len(batch) == EMBED_BATCH:
                    labels.append(nearest_centroid(emb.encode(batch), centroids))
                    b.update(len(batch))
                    batch = []
            if batch:
                labels.append(nearest_centroid(emb.encode(batch), centroids))
                b.update(len(batch))
            a = np.concatenate(labels).astype(np.int32)
            counts += np.bincount(a, minlength=d.k)
            path = assign_path(out, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            _save_npy(path, a)
    width = len(str(d.k - 1))
    names = [f"{d.prefix}{i:0{width}d}" for i in range(d.k)]
    small = {names[i]: int(counts[i]) for i in np.flatnonzero(counts < 2)}
    if small:  # every domain needs a train and a val chunk; say so here, not in the shard stage
        how = f"lower domains.hierarchy k2={d.hierarchy['k2']}" if d.hierarchy else f"lower domains.k={d.k}"
        raise DomainError(f"clusters {small} (name: chunks) received fewer than 2 chunks of the corpus; {how}")
    log(
        f"  domains: k-means k={d.k} on {len(sample)} chunks ({emb.spec()['kind']}); "
        f"cluster sizes min {counts.min()} / median {int(np.median(counts))} / max {counts.max()}; "
        f"{total:,} chunks assigned in {time.time() - t:.1f}s"
    )
    return {"domains": names, "domain_source": source}
