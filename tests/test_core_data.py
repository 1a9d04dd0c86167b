"""Shard reading: validation of meta.json, tokenizer and shards; batches and their determinism."""

import json

import numpy as np
import pytest
import torch

from soe.data.datamodule import SoupDataModule
from soe.data.mixture import MixtureConfig
from soe.data.shards import dtype_for_vocab, load_meta


def test_batches_are_a_function_of_seed_and_index(prepared):
    dm = SoupDataModule(str(prepared), seq_len=16, batch_size=4, seed=3)
    dm.setup()
    a, b = dm.train_batch(5), dm.train_batch(5)
    assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["h"], b["h"]) and a["index"] == 5
    assert a["tokens"].shape == (4, 17) and a["h"].shape == (3,) and torch.isclose(a["h"].sum(), torch.tensor(1.0))
    assert not torch.equal(dm.train_batch(6)["tokens"], a["tokens"])
    stream = iter(dm.train_dataloader())
    assert [next(stream)["index"] for _ in range(3)] == [0, 1, 2]


def test_fixed_prior_and_validation_windows(prepared):
    dm = SoupDataModule(
        str(prepared), seq_len=16, batch_size=4, mixture=MixtureConfig(fixed_h="prior"), val_windows=6, val_batch_size=4
    )
    dm.setup()
    assert np.allclose(dm.train_batch(0)["h"].numpy(), dm.prior)
    loaders = dm.val_dataloader()
    assert len(loaders) == 3
    batches = list(loaders[1])
    assert [b["tokens"].shape[0] for b in batches] == [4, 2] and (batches[0]["domain"] == 1).all()
    again = list(SoupDataModule(str(prepared), seq_len=16, val_windows=6, val_batch_size=4).val_dataloader()[1])
    assert torch.equal(again[0]["tokens"], batches[0]["tokens"])  # validation data is fixed


def test_tokenizer_hash_mismatch(prepared):
    (prepared / "tokenizer.json").write_text('{"another": "tokenizer"}')
    with pytest.raises(ValueError, match="made with another tokenizer"):
        SoupDataModule(str(prepared))


def test_vocab_mismatch(prepared):
    with pytest.raises(ValueError, match="vocab_size=64 in meta.json, but the model expects vocab_size=128"):
        SoupDataModule(str(prepared), vocab_size=128)


def test_missing_and_empty_shards(prepared):
    (prepared / "dom1" / "train.bin").unlink()
    dm = SoupDataModule(str(prepared))
    with pytest.raises(FileNotFoundError, match="dom1/train.bin for domain 'dom1' is missing"):
        dm.setup()
    (prepared / "dom1" / "train.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        SoupDataModule(str(prepared)).setup()


def test_shard_count_mismatch(prepared):
    np.zeros(10, dtype=np.uint16).tofile(prepared / "dom2" / "val.bin")
    with pytest.raises(ValueError, match="holds 10 tokens, meta.json says 1500"):
        SoupDataModule(str(prepared)).setup()


def test_meta_errors(prepared, tmp_path):
    with pytest.raises(FileNotFoundError, match="data_prep.prepare"):
        load_meta(tmp_path / "nowhere")
    raw = json.loads((prepared / "meta.json").read_text())
    (prepared / "meta.json").write_text(json.dumps({**raw, "schema_version": 99}))
    with pytest.raises(ValueError, match="schema_version=99, expected 1"):
        load_meta(prepared)
    (prepared / "meta.json").write_text(json.dumps({**raw, "colour": "blue"}))
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        load_meta(prepared)


def test_window_longer_than_domain(prepared):
    with pytest.raises(ValueError, match="cannot hold one window"):
        SoupDataModule(str(prepared), seq_len=4000).setup()


def test_dtype_rules():
    assert dtype_for_vocab(8192) == "uint16" and dtype_for_vocab(70000) == "uint32"
    with pytest.raises(ValueError, match="does not fit dtype 'uint16'"):
        dtype_for_vocab(70000, "uint16")


def test_several_h_per_step(prepared):
    """h_per_step = M: M independent h per batch, group m of the batch drawn from mix(h_m) only."""
    one = SoupDataModule(str(prepared), seq_len=16, batch_size=6, seed=3, mixture=MixtureConfig(support_size=1))
    dm = SoupDataModule(
        str(prepared), seq_len=16, batch_size=6, seed=3, mixture=MixtureConfig(support_size=1), h_per_step=3
    )
    one.setup(), dm.setup()
    b = dm.train_batch(7)
    assert b["h"].shape == (3, 3) and b["tokens"].shape == (6, 17) and torch.equal(b["h"][0], one.train_batch(7)["h"])
    assert torch.equal(dm.train_batch(7)["tokens"], b["tokens"])  # still a function of (seed, index)
    assert len({tuple(r.tolist()) for r in torch.cat([dm.train_batch(i)["h"] for i in range(5)])}) > 1
    shards = [np.asarray(a) for a in dm._sampler.arrays]

    def occurs(window, arr):  # is this window a slice of that domain's shard?
        v = np.lib.stride_tricks.sliding_window_view(arr, len(window))
        return bool((v == window).all(1).any())

    for m in range(3):  # one-hot h (support 1): every sequence of group m comes from domain argmax(h_m)
        d = int(b["h"][m].argmax())
        assert all(occurs(row.numpy(), shards[d]) for row in b["tokens"][2 * m : 2 * m + 2])


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"batch_size": 0}, "data.batch_size=0"),
        ({"rank_h": "each"}, "rank_h"),
        ({"batch_size": 4, "h_per_step": 3}, "h_per_step=3 must be positive and divide"),
    ],
)
def test_bad_data_args(prepared, kw, msg):
    with pytest.raises(ValueError, match=msg):
        SoupDataModule(str(prepared), **kw)
