"""Shared fixtures: a tiny synthetic multi-domain prepared directory in the real shard format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from soe.data.shards import Meta, sha256_file, shard_path

# Entry points called in-process would switch the whole test session's allocator to keeping freed memory
# (soe/malloc.py) from that test on; the session keeps glibc's defaults, tests/test_malloc.py checks the feature.
os.environ.setdefault("SOE_KEEP_FREED_MEMORY", "0")


def write_shard(root: Path, domain: str, split: str, tokens: np.ndarray) -> None:
    path = shard_path(root, domain, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens.tofile(path)


def make_prepared(
    root: Path,
    k: int = 3,
    vocab: int = 64,
    n_train: int = 6000,
    n_val: int = 1500,
    seed: int = 0,
    sizes: list[int] | None = None,
) -> Path:
    """k domains, each a different noisy affine Markov chain over the vocabulary, so they are learnable
    and distinguishable. Writes meta.json, a stand-in tokenizer.json (its hash is what readers check)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tokenizer.json").write_text(json.dumps({"synthetic": True, "vocab": vocab}))
    rng = np.random.default_rng(seed)
    names = [f"dom{i}" for i in range(k)]
    sizes = sizes or [n_train] * k
    tokens = {}
    for i, name in enumerate(names):
        a, b = 2 * i + 3, 7 * i + 1
        tokens[name] = {}
        for split, n in (("train", sizes[i]), ("val", n_val)):
            t = np.empty(n, dtype=np.int64)
            t[0] = rng.integers(1, vocab)
            noise = rng.random(n) < 0.1
            rand = rng.integers(1, vocab, size=n)
            for j in range(1, n):
                t[j] = rand[j] if noise[j] else (a * t[j - 1] + b) % (vocab - 1) + 1
            t[rng.random(n) < 0.01] = 0  # EOS = 0 between "documents"
            write_shard(root, name, split, t.astype(np.uint16))
            tokens[name][split] = n
    Meta(
        domains=names,
        vocab_size=vocab,
        tokenizer_sha256=sha256_file(root / "tokenizer.json"),
        eos_id=0,
        tokens=tokens,
        domain_source={"method": "labels"},
    ).save(root)
    return root


@pytest.fixture
def prepared(tmp_path) -> Path:
    return make_prepared(tmp_path / "prepared")


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fixture_prepared(tmp_path_factory) -> Path:
    """The real pipeline on the committed fixture (9 labelled domains, tf-idf centroids, 3 specialist
    sets), prepared once per test session."""
    import os

    from data_prep.prepare import main as prepare

    out = tmp_path_factory.mktemp("fixture") / "prepared"
    cwd = os.getcwd()
    os.chdir(REPO)  # the fixture config names its sources relative to the repository
    try:
        assert prepare(["--config", "data_prep/configs/fixture.yaml", "--out", str(out)]) == 0
    finally:
        os.chdir(cwd)
    return out
