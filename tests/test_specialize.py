"""Specialists from Python: histogram estimation, weights parsing, instantiation, refinement,
in-house readers, evaluation, generation, and the bad-input errors of issue 4."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from specialize_helpers import TOPICS, make_docs, text_env

import soe
from soe.core.weights import save_weights
from soe.data.shards import load_meta, sha256_file
from soe.data.text import read_texts, token_stream
from soe.data.windows import eval_windows
from soe.specialists.estimate import estimate_weights
from soe.specialists.evaluate import eval_sets, evaluate, mean_loss


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return text_env(tmp_path_factory)


@pytest.fixture(scope="module")
def soup(env):
    prepared, ckpt = env
    return soe.load(ckpt, data=prepared, device="cpu")


# ---------------------------------------------------------------- estimation
@pytest.mark.parametrize("domain", list(TOPICS))
def test_histogram_concentrates_on_the_source_domain(env, domain):
    prepared, _ = env
    est = estimate_weights(prepared, make_docs(domain, 20, seed=99))  # unseen documents of one domain
    assert list(est.weights) == load_meta(prepared).domains  # ordered as meta.json
    assert est.weights[domain] > 0.9, est.weights
    assert sum(est.weights.values()) == pytest.approx(1.0)
    assert est.n_docs == 20 and sum(est.tokens.values()) > 0


def test_histogram_is_token_weighted_and_min_weight_drops(env):
    prepared, _ = env
    law, cook = make_docs("law", 3, seed=1, words=200), make_docs("cooking", 3, seed=2, words=20)
    est = estimate_weights(prepared, law + cook)
    # equal document counts, but law documents are ~10x longer: the histogram follows tokens
    assert est.weights["law"] > 0.8 and 0.02 < est.weights["cooking"] < 0.2
    trimmed = estimate_weights(prepared, law + cook, min_weight=0.2)
    assert trimmed.weights == {"cooking": 0.0, "law": 1.0, "space": 0.0}
    limited = estimate_weights(prepared, law + cook, max_docs=3)
    assert limited.n_docs == 3 and limited.weights["law"] == 1.0


def test_estimate_needs_centroids(tmp_path, env):
    prepared, _ = env
    copy = shutil.copytree(prepared, tmp_path / "p")
    meta = load_meta(copy)
    meta.domain_source = {"method": "labels"}
    meta.save(copy)
    with pytest.raises(ValueError, match="no embedder and centroids_file"):
        estimate_weights(copy, ["the court"])


# ---------------------------------------------------------------- weights
def test_weights_forms(soup):
    doms = soup.domains
    assert soup.weights("law").tolist() == [0.0, 1.0, 0.0]
    assert soup.weights("law=3,space=1").tolist() == [0.0, 0.75, 0.25]
    assert soup.weights({"cooking": 2, "law": 2}).tolist() == [0.5, 0.5, 0.0]
    assert soup.weights([1, 1, 2]).tolist() == [0.25, 0.25, 0.5]
    torch.testing.assert_close(soup.weights("prior"), soup.prior / soup.prior.sum())
    assert doms == ["cooking", "law", "space"]


def test_weights_file_round_trip(soup, tmp_path):
    path = save_weights(tmp_path / "w.json", torch.tensor([0.2, 0.3, 0.5]), soup.domains)
    assert list(json.loads(path.read_text())) == soup.domains
    torch.testing.assert_close(soup.weights(str(path)), torch.tensor([0.2, 0.3, 0.5]))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"finance": 1.0}, r"unknown domain\(s\) \['finance'\]"),
        ("finance", "unknown domain"),
        ("law=-1,space=2", "negative"),
        ({"law": float("nan")}, "NaN"),
        ({"law": 0, "space": 0}, "sums to 0"),
        ([0, 0, 0], "sums to 0"),
        ([1, 2], r"shape \(2,\)"),
        ("law=abc", "not a domain=number pair"),
        ({"law": "x"}, "expected a number"),
    ],
)
def test_bad_weights_are_clear_errors(soup, bad, match):
    with pytest.raises(ValueError, match=match):
        soup.weights(bad)


def test_bad_weights_files(soup, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        soup.weights(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: corrupt weights file, not valid JSON"):
        soup.weights(str(tmp_path / "broken.json"))


# ---------------------------------------------------------------- instantiation
def test_one_hot_specialist_equals_soup_instantiate(soup):
    for i, d in enumerate(soup.domains):
        spec = soup.specialist(d)
        onehot = torch.zeros(len(soup.domains))
        onehot[i] = 1.0
        ref = soup.model.instantiate(onehot)
        got = dict(spec.model.named_parameters())
        assert set(got) == set(ref)
        for name in ref:
            assert torch.equal(got[name], ref[name]), (d, name)
        assert spec.instantiate_s > 0 and spec.weights[d] == 1.0


def test_specialist_is_independent_of_the_soup(soup):
    spec = soup.specialist("law")
    before = {k: v.clone() for k, v in soup.model.instantiate(soup.weights("law")).items()}
    with torch.no_grad():
        for p in spec.model.parameters():
            p.add_(1.0)
    after = soup.model.instantiate(soup.weights("law"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    # and different h give different models (the experts matter after training)
    a, b = soup.specialist("law").model, soup.specialist("space").model
    assert not torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)


# ---------------------------------------------------------------- refinement
@pytest.mark.parametrize("lr", [0.05, 50.0])  # 50: wild steps whose iterates are mostly worse
def test_refinement_never_worse_in_sample(soup, env, lr):
    prepared, _ = env
    texts = prepared / "specialists" / "legalfood" / "inhouse.jsonl"
    start = {"cooking": 0.0, "law": 0.0, "space": 1.0}  # a poor start leaves room to improve
    r = soup.refine(texts, start, steps=40, lr=lr, eval_every=5, patience=3)
    assert r.fit_loss <= r.fit_loss_start
    assert r.start_weights == start and sum(r.weights.values()) == pytest.approx(1.0, abs=1e-5)
    # the reported losses are those of the returned weights
    docs = read_texts(texts)
    meta = load_meta(prepared)
    stream = token_stream(docs, prepared / "tokenizer.json", meta.eos_id)
    cut = int(len(stream) * 0.8)
    params = soup.model.instantiate(soup.weights(r.weights))
    fit = eval_windows(stream[:cut], soup.model.net_cfg.max_seq_len)
    loss = mean_loss(lambda x, y: soup.model(x, targets=y, params=params)[1], fit)
    assert loss == pytest.approx(r.fit_loss, rel=1e-5)
    assert r.history[0]["fit"] == r.fit_loss_start and len(r.history) >= 2
    if r.improved:
        assert r.holdout_loss < r.holdout_loss_start


def test_refinement_rejects_tiny_data(soup):
    with pytest.raises(ValueError, match="too small to refine"):
        soup.refine(["law court"], "law")


# ---------------------------------------------------------------- in-house readers
def test_readers(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nline two\n\nsecond doc\n\n\n")
    assert read_texts(tmp_path / "a.txt") == ["first doc\nline two", "second doc"]
    (tmp_path / "b.jsonl").write_text('{"body": "x"}\n\n{"body": "y"}\n')
    assert read_texts(tmp_path / "b.jsonl", text_field="body") == ["x", "y"]
    (tmp_path / "c.json").write_text(json.dumps(["p", {"text": "q"}]))
    assert read_texts(tmp_path / "c.json") == ["p", "q"]
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["u", "v", "w"]})
    ds.to_parquet(str(tmp_path / "d.parquet"))
    assert read_texts(tmp_path / "d.parquet", max_docs=2) == ["u", "v"]
    ds.save_to_disk(str(tmp_path / "saved"))
    assert read_texts(tmp_path / "saved") == ["u", "v", "w"]


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.jsonl", "", "no non-empty texts"),
        ("blank.txt", "\n\n   \n", "no non-empty texts"),
        ("bad.jsonl", '{"text": "ok"}\n{oops\n', r"bad.jsonl:2: invalid JSON"),
        ("field.jsonl", '{"body": "x"}\n', "string field 'text'"),
        ("latin.txt", b"caf\xe9", "not UTF-8"),
        ("data.csv", "a,b", "unsupported suffix"),
        ("broken.parquet", b"PAR1garbage", "unreadable parquet"),
    ],
)
def test_bad_inhouse_files(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=match):
        read_texts(path)


def test_missing_inhouse_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_texts(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- checkpoints and tokenizers
def test_checkpoint_from_another_tokenizer_is_refused(env, tmp_path):
    prepared, ckpt = env
    other = shutil.copytree(prepared, tmp_path / "other")
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["model"]["vocab"] = dict(reversed(list(tok["model"]["vocab"].items())))  # a different tokenizer
    (other / "tokenizer.json").write_text(json.dumps(tok))
    meta = load_meta(other)
    meta.tokenizer_sha256 = sha256_file(other / "tokenizer.json")
    meta.save(other)
    s = soe.load(ckpt, data=other, device="cpu")
    with pytest.raises(ValueError, match="another tokenizer"):
        s.specialist("law")
    with pytest.raises(ValueError, match="another tokenizer"):
        s.estimate_weights(["the court"])


def test_checkpoint_without_data_dir_says_what_to_pass(env, tmp_path):
    from specialize_helpers import strip_data_dir

    _, ckpt = env
    s = soe.load(strip_data_dir(ckpt, tmp_path / "old.ckpt"), device="cpu")
    with pytest.raises(ValueError, match="--data"):
        s.specialist("law")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_unreadable_checkpoint(tmp_path, content):
    path = tmp_path / "x.ckpt"
    if content is None:
        torch.save({"foo": 1}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="not a"):
        soe.load(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        soe.load(tmp_path / "missing.ckpt")


# ---------------------------------------------------------------- evaluation and generation
def test_evaluate_rows_and_bits_per_byte(soup, env):
    prepared, _ = env
    rows = soup.evaluate(weights=["law"], prior=True)
    sets = {r["set"] for r in rows}
    assert sets == {"cooking", "law", "space", "legalfood"} and {r["model"] for r in rows} == {"soup@law", "soup@prior"}
    meta = load_meta(prepared)
    for r in rows:
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
        if r["set"] in meta.domains:
            d = r["set"]
            assert r["bits_per_byte"] == pytest.approx(
                r["loss"] * meta.tokens[d]["val"] / meta.bytes[d]["val"] / math.log(2)
            )
            assert r["byte_perplexity"] == pytest.approx(2 ** r["bits_per_byte"])
    # the exported model evaluates exactly like the soup at the same h
    spec_rows = soup.specialist("law").evaluate(prepared, sets=["val"], label="x")
    law = {r["set"]: r["loss"] for r in rows if r["model"] == "soup@law" and r["set"] in meta.domains}
    assert {r["set"]: r["loss"] for r in spec_rows} == pytest.approx(law, rel=1e-6)


def test_eval_sets_selection(env):
    prepared, _ = env
    assert [s.name for s in eval_sets(prepared, ["legalfood"])] == ["legalfood"]
    with pytest.raises(ValueError, match="unknown"):
        eval_sets(prepared, ["nope"])


def test_evaluate_refuses_a_model_of_another_tokenizer(soup, env):
    prepared, _ = env
    spec = soup.specialist("law")
    spec.info = {**spec.info, "tokenizer_sha256": "0" * 64}
    with pytest.raises(ValueError, match="another tokenizer"):
        evaluate({"m": spec}, eval_sets(prepared, ["val"]))


def test_evaluate_raw_texts(soup, env, tmp_path):
    """Any text file evaluates like its token stream: the same windows and loss function as everywhere."""
    prepared, _ = env
    docs = make_docs("cooking", 12, seed=5)
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    spec = soup.specialist("cooking")
    (row,) = spec.evaluate(texts=tmp_path / "mine.jsonl", max_windows=7)
    stream = token_stream(docs, spec.tokenizer_file, spec.eos_id)
    T = spec.model.cfg.max_seq_len
    wins = eval_windows(stream, T, 7)
    assert row["set"] == "mine" and row["split"] == "texts" and row["tokens"] == wins[:, 1:].numel()
    assert row["loss"] == pytest.approx(mean_loss(lambda x, y: spec.model(x, targets=y)[1], wins), rel=1e-6)
    n_bytes = sum(len(d.encode()) for d in docs)
    assert row["bits_per_byte"] == pytest.approx(row["loss"] * len(stream) / n_bytes / math.log(2))
    # the soup's own evaluate takes texts too, and a cooking text is better explained at the cooking h
    rows = {r["model"]: r["loss"] for r in soup.evaluate(weights=["cooking", "space"], texts=docs)}
    assert rows["soup@cooking"] < rows["soup@space"]


def test_generate_greedy_is_deterministic_and_sampling_is_seeded(soup):
    spec = soup.specialist("law")
    g1 = spec.generate("The court", max_new_tokens=10, temperature=0)
    assert g1.startswith("The court") and g1 == spec.generate("The court", max_new_tokens=10, temperature=0, seed=5)
    s1, s2 = (spec.generate("", max_new_tokens=15, temperature=1.0, top_k=20, seed=s) for s in (1, 2))
    assert s1 == spec.generate("", max_new_tokens=15, temperature=1.0, top_k=20, seed=1) and s1 != s2
    with pytest.raises(ValueError, match="temperature"):
        spec.generate("x", temperature=-1)


def test_generate_stops_at_eos(soup):
    spec = soup.specialist("law")
    forward = spec.model.forward

    def eos_first(idx, targets=None):  # the model always prefers EOS: generation must stop at once
        logits = forward(idx)
        logits[..., spec.eos_id] = logits.max() + 10.0
        return logits

    spec.model.forward = eos_first
    assert spec.generate("The", max_new_tokens=20, temperature=0) == "The"


def test_import_soe_is_light():
    import subprocess
    import sys

    code = "import soe, sys; assert 'torch' not in sys.modules and 'lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_eval_windows_are_non_overlapping_and_evenly_spread():
    w = eval_windows(np.arange(11), 3)
    assert w.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert eval_windows(np.arange(101), 10, max_windows=3)[:, 0].tolist() == [0, 40, 90]
    assert eval_windows(np.arange(101), 10, max_windows=50).shape == (10, 11)  # all there are
    for bad in ({"seq_len": 0}, {"max_windows": 0}):
        with pytest.raises(ValueError):
            eval_windows(np.arange(101), **{"seq_len": 10, **bad})
    with pytest.raises(ValueError, match="cannot hold one window"):
        eval_windows(np.arange(10), 10)
