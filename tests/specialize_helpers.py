"""Helpers for the specialist tests: a small *text* prepared directory with a real byte-level BPE
tokenizer, a tf-idf embedder with domain centroids and a specialist set, plus a trained checkpoint.

Everything is synthetic and built in seconds: three domains with disjoint topical vocabularies
(so nearest-centroid assignment is unambiguous) over shared function words.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
from conftest import write_shard

from soe.core.model import ModelConfig
from soe.core.soup import SoupConfig
from soe.data.embed import TfidfEmbedder
from soe.data.shards import Meta, sha256_file
from soe.train.module import SoupModule
from soe.train.optim import OptimConfig

EOS = "<|endoftext|>"
TOPICS = {
    "cooking": "oven flour butter sugar bake whisk simmer garlic onion salt pepper dough knead sauce roast".split(),
    "law": "court judge statute plaintiff defendant appeal verdict counsel contract tort liability ruling clause".split(),
    "space": "orbit rocket planet comet galaxy nebula launch thrust module lunar asteroid telescope gravity".split(),
}
GLUE = "the a of and to in is was with for on".split()
VOCAB = 320
NET = ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=32, max_seq_len=32)


def make_docs(domain: str, n: int, seed: int, words: int = 40) -> list[str]:
    rng = np.random.default_rng(seed)
    topic = TOPICS[domain]
    docs = []
    for _ in range(n):
        toks = [
            topic[rng.integers(len(topic))] if rng.random() < 0.6 else GLUE[rng.integers(len(GLUE))]
            for _ in range(words)
        ]
        docs.append(" ".join(toks).capitalize() + ".")
    return docs


def train_tokenizer(texts: list[str], path: Path, vocab: int = VOCAB) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))


def write_set(
    root: Path, splits: dict[str, dict[str, list[str]]], tokenizer_file: str = "tokenizer.json", **meta_kw
) -> Meta:
    """splits: {domain: {split: docs}} → shards + meta.json under root (tokenizer_file relative to root)."""
    from tokenizers import Tokenizer

    root.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(root / tokenizer_file))
    eos = tok.token_to_id(EOS)
    tokens, documents, nbytes = {}, {}, {}
    for dom, by_split in splits.items():
        tokens[dom], documents[dom], nbytes[dom] = {}, {}, {}
        for split, docs in by_split.items():
            ids = np.concatenate([np.append(e.ids, eos) for e in tok.encode_batch(docs)]).astype(np.uint16)
            write_shard(root, dom, split, ids)
            tokens[dom][split], documents[dom][split] = len(ids), len(docs)
            nbytes[dom][split] = sum(len(d.encode()) for d in docs)
    assert tok.get_vocab_size() <= VOCAB, tok.get_vocab_size()
    meta = Meta(
        domains=list(splits),
        vocab_size=VOCAB,
        tokenizer_sha256=sha256_file(root / tokenizer_file),
        eos_id=eos,
        tokenizer_file=tokenizer_file,
        tokens=tokens,
        documents=documents,
        bytes=nbytes,
        **meta_kw,
    )
    meta.save(root)
    return meta


def make_text_prepared(root: Path, n_train: int = 120, n_val: int = 30) -> Path:
    docs = {d: make_docs(d, n_train + n_val, seed=i) for i, d in enumerate(TOPICS)}
    root.mkdir(parents=True, exist_ok=True)
    train_tokenizer([t for ds in docs.values() for t in ds], root / "tokenizer.json")
    emb = TfidfEmbedder(max_features=2000, svd_dim=8).fit([t for ds in docs.values() for t in ds[:n_train]])
    emb.save(root)
    cents = np.stack([emb.encode(ds[:n_train]).mean(0) for ds in docs.values()]).astype(np.float32)  # (k, d)
    np.save(root / "centroids.npy", cents)
    # specialist set (data_prep's layout: specialists/meta.json lists each set as a domain):
    # mostly law, some cooking, with its raw in-house texts
    spec_docs = make_docs("law", 30, seed=10) + make_docs("cooking", 10, seed=11)
    write_set(
        root / "specialists",
        {"legalfood": {"train": spec_docs[:30], "val": spec_docs[30:] + spec_docs[:5]}},
        "../tokenizer.json",
    )
    with open(root / "specialists" / "legalfood" / "inhouse.jsonl", "w") as f:
        for t in spec_docs:
            f.write(json.dumps({"text": t}) + "\n")
    write_set(
        root,
        {d: {"train": ds[:n_train], "val": ds[n_train:]} for d, ds in docs.items()},
        specialists={"legalfood": "specialists"},
        domain_source={"method": "kmeans", "embedder": emb.spec(), "k": len(TOPICS), "centroids_file": "centroids.npy"},
    )
    return root


def train_checkpoint(prepared: Path, out: Path, steps: int = 30, n_experts: int = 2) -> Path:
    """A few training steps; returns the path of last.ckpt."""
    from soe.data.datamodule import SoupDataModule

    L.seed_everything(0)
    dm = SoupDataModule(str(prepared), seq_len=32, batch_size=8, val_windows=4, val_batch_size=4, vocab_size=VOCAB)
    model = SoupModule(
        net=NET,
        soup=SoupConfig(n_experts=n_experts, router_hidden=8, router_depth=1, expert_init="normal"),
        optim=OptimConfig(lr=1e-2, warmup_steps=2),
        n_domains=dm.num_domains,
        domain_names=dm.domain_names,
        prior=dm.prior,
        tokenizer_sha256=dm.tokenizer_sha256,
    )
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=out, save_last=True, save_top_k=0)
    L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[ckpt],
        default_root_dir=out,
    ).fit(model, dm)
    return out / "last.ckpt"


_CACHE: dict[str, Path] = {}


def text_env(tmp_path_factory) -> tuple[Path, Path]:
    """(prepared dir, last.ckpt) built once per test session and shared by all specialist tests.
    Tests must not modify them (copy first)."""
    if "env" not in _CACHE:
        root = tmp_path_factory.mktemp("specialize_env")
        prepared = make_text_prepared(root / "prepared")
        _CACHE["env"] = (prepared, train_checkpoint(prepared, root / "ckpt"))
    return _CACHE["env"]


def strip_data_dir(ckpt, out):
    """A copy of a checkpoint that does not record its prepared-data directory (older checkpoints)."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state.pop("datamodule_hyper_parameters", None)
    torch.save(state, out)
    return out


def perturbed_specialists(
    root: Path,
    net: ModelConfig,
    tokenizer_file: Path,
    names=("base", "a", "b", "c"),
    scale: float = 0.01,
    fmt: str = "soe",
    info: dict | None = None,
) -> dict[str, Path]:
    """Specialist directories for merge tests: names[0] a random model (seed 0), the others it plus a random
    task vector of std ``scale`` (generator seeded by the name's position)."""
    import torch

    from soe.core.model import LlamaLM
    from soe.specialists.export import save_specialist

    torch.manual_seed(0)
    base = {k: v.detach().clone() for k, v in LlamaLM(net).named_parameters()}
    dirs = {}
    for i, name in enumerate(names):
        g = torch.Generator().manual_seed(i)
        p = base if i == 0 else {k: v + scale * torch.randn(v.shape, generator=g) for k, v in base.items()}
        dirs[name] = save_specialist(
            root / name, p, net, tokenizer_file=tokenizer_file, eos_id=0, info=info or {}, fmt=fmt
        )
    return dirs
