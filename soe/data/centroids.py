"""Embeddings to domains: the nearest centroid of each row (a hard histogram's counts) and soft memberships.

Used where documents are assigned to domains: data_prep (k-means clusters, labelled domains' centroids) and
``soe estimate-weights`` (the histogram h of a user's documents), on the rows of `soe.data.embed`'s embedders.
"""

from __future__ import annotations

import numpy as np


def soft_assignment(emb: np.ndarray, centroids: np.ndarray, temperature: float, block: int = 8192) -> np.ndarray:
    """Soft domain memberships softmax(−‖e − c‖² / T) of each row, (N, d), (k, d) -> (N, k) (c-BTM's soft
    histograms use T = 0.1 on normalised embeddings). As T → 0 each row becomes the one-hot of its nearest
    centroid (`nearest_centroid`)."""
    if not temperature > 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature={temperature!r}: expected a positive finite number")
    emb, centroids = np.asarray(emb, np.float64), np.asarray(centroids, np.float64)
    if emb.ndim != 2 or centroids.ndim != 2 or emb.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"soft_assignment: embeddings {emb.shape} and centroids {centroids.shape} "
            "must be (N, d) and (k, d) with the same d"
        )
    out = np.empty((len(emb), len(centroids)))
    for i in range(0, len(emb), block):
        e = emb[i : i + block]
        d2 = (e**2).sum(1, keepdims=True) - 2 * e @ centroids.T + (centroids**2).sum(1)  # (b, k)
        z = -d2 / temperature
        z -= z.max(1, keepdims=True)  # stable softmax; the nearest centroid gets exp(0) = 1
        p = np.exp(z)
        out[i : i + block] = p / p.sum(1, keepdims=True)
    return out


def nearest_centroid(emb: np.ndarray, centroids: np.ndarray, block: int = 8192) -> np.ndarray:
    """Index of the nearest centroid (Euclidean, as k-means assigns) for each row: (N, d), (k, d) -> (N,)."""
    emb, centroids = np.asarray(emb, np.float32), np.asarray(centroids, np.float32)
    if emb.ndim != 2 or centroids.ndim != 2 or emb.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"nearest_centroid: embeddings {emb.shape} and centroids {centroids.shape} "
            "must be (N, d) and (k, d) with the same d"
        )
    half_sq = 0.5 * (centroids**2).sum(1)  # (k,)
    out = np.empty(len(emb), np.int64)
    for i in range(0, len(emb), block):  # argmin |e-c|^2 = argmax e.c - |c|^2/2, blocked to bound memory
        out[i : i + block] = np.argmax(emb[i : i + block] @ centroids.T - half_sq, axis=1)
    return out
