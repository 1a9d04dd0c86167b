"""Validation targets (the `targets:` section of a prepare config) on the committed fixture.

Per pretraining source, whole chunks go to <out>/targets/<source>/{train,val}.bin (+ inhouse.jsonl), never to a
domain shard; a config without the section keeps the shards (and the fingerprint) of the code before targets.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from bad_inputs import assert_refused

from data_prep import config as C
from data_prep.prepare import fingerprint, run, target_roles
from soe.data.shards import check_tokenizer, load_meta, open_shard

REPO = Path(__file__).resolve().parents[1]
FIXTURE_CFG = REPO / "data_prep" / "configs" / "fixture.yaml"
TARGETS = {"inhouse_docs": 4, "val_docs": 4, "max_share": 0.2, "min_docs": 2}
# fixture chunks per source: 0.2 of milton's 17 chunks is 3 (1 in-house < min_docs 2): no target;
# shakespeare's 33 give 6 = 3 + 3; the others at least 40, so 4 + 4. Held-out sources never get one.
EXPECTED = {
    "python_stdlib": 4,
    "licensedcode_en": 4,
    "licensedcode_intl": 4,
    "shakespeare": 3,
    "kjv": 4,
    "reference": 4,
    "python_docs": 4,
    "setmm": 4,
    "python_changelog": 4,
}
HOLDOUT = ("janeausten", "go_src", "metamath_other")


def fixture_raw(**extra) -> dict:
    raw = yaml.safe_load(FIXTURE_CFG.read_text())
    raw.update(extra)
    return raw


def prepare(raw: dict, out: Path, runner=run, log=None, **kw):
    """Run prepare from the repository root (the fixture config names its sources relative to it)."""
    logs: list[str] = []
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        meta = runner(C.from_dict({**raw, "out": str(out)}), log=(log or logs.append), **kw)
    finally:
        os.chdir(cwd)
    return meta, logs


def docs(directory: Path, meta, name: str, split: str) -> list[tuple[int, ...]]:
    """A shard split at EOS: one token tuple per document (EOS excluded)."""
    ids = np.asarray(open_shard(directory, meta, name, split), dtype=np.int64)
    assert len(ids) and ids[-1] == meta.eos_id, f"{directory}/{name}/{split}: every document ends with EOS"
    cuts = np.flatnonzero(ids == meta.eos_id)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [tuple(ids[s:e].tolist()) for s, e in zip(starts, cuts)]


def chunks(out: Path, source: str) -> list[str]:
    return [json.loads(line)["t"] for line in open(out / "work" / "chunks" / f"{source}.jsonl", encoding="utf-8")]


@pytest.fixture(scope="module")
def with_targets(tmp_path_factory):
    out = tmp_path_factory.mktemp("targets") / "prepared"
    meta, logs = prepare(fixture_raw(targets=TARGETS), out)
    return out, meta, logs


@pytest.fixture(scope="module")
def tokenizer(with_targets):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(with_targets[0] / "tokenizer.json"))


def test_targets_meta_lists_the_sources_that_got_targets(with_targets, tokenizer):
    out, meta, logs = with_targets
    assert meta.extra["targets"] == "targets"
    assert load_meta(out).extra["targets"] == "targets"
    tdir = out / "targets"
    tmeta = load_meta(tdir)
    assert tmeta.domains == list(EXPECTED)  # source order; milton (too small) and the held-out sources have none
    assert tmeta.domain_source["method"] == "validation_targets"
    assert tmeta.domain_source["sources"] == {s: [s] for s in EXPECTED}
    check_tokenizer(tmeta, tdir, expected_sha256=meta.tokenizer_sha256, expected_vocab=meta.vocab_size)
    assert sorted(p.name for p in tdir.iterdir() if p.is_dir()) == sorted(EXPECTED)
    for s, n in EXPECTED.items():
        for split in ("train", "val"):
            assert (tdir / s / f"{split}.bin").stat().st_size > 0, (s, split)
            assert tmeta.documents[s][split] == n == len(docs(tdir, tmeta, s, split)), (s, split)
            assert tmeta.tokens[s][split] == (tdir / s / f"{split}.bin").stat().st_size // 2
        inhouse = [json.loads(x)["text"] for x in open(tdir / s / "inhouse.jsonl", encoding="utf-8")]
        assert len(inhouse) == tmeta.documents[s]["train"]
        # the raw text of the in-house part is exactly what train.bin holds, document by document
        assert [tuple(tokenizer.encode(t).ids) for t in inhouse] == docs(tdir, tmeta, s, "train")
    assert any(line.startswith("target shakespeare") for line in logs), logs  # the summary table shows them
    assert not list(out.rglob("*.tmp")), "no temporary files left after a complete run"


def test_no_target_document_is_in_any_domain_shard(with_targets, tokenizer):
    out, meta, _ = with_targets
    tdir = out / "targets"
    tmeta = load_meta(tdir)
    shard_docs = Counter(d for dom in meta.domains for split in ("train", "val") for d in docs(out, meta, dom, split))
    target_docs = {s: docs(tdir, tmeta, s, "train") + docs(tdir, tmeta, s, "val") for s in tmeta.domains}
    for s, ds in target_docs.items():
        leaked = [d for d in ds if d in shard_docs]
        assert not leaked, f"{len(leaked)} validation-target document(s) of {s} are in a domain shard"
        assert len(set(ds)) == len(ds), f"{s}: a document in both parts"
        # whole chunks of their own source
        own = {tuple(tokenizer.encode(t).ids) for t in chunks(out, s)}
        assert set(ds) <= own, f"{s}: a target document is not one of its source's chunks"
    # nothing lost: domain shards + targets = every pretraining chunk, each once
    every = Counter(
        tuple(tokenizer.encode(t).ids) for s in fixture_sources() if s not in HOLDOUT for t in chunks(out, s)
    )
    assert shard_docs + Counter(d for ds in target_docs.values() for d in ds) == every
    assert sum(sum(meta.documents[d].values()) for d in meta.domains) == sum(every.values()) - 2 * sum(
        EXPECTED.values()
    )


def fixture_sources() -> list[str]:
    return [s["name"] for s in fixture_raw()["sources"]]


def test_targets_are_drawn_per_source_by_seed_and_name(with_targets):
    out = with_targets[0]
    stats = json.loads((out / "work" / "ingest.json").read_text())["stats"]
    cfg = C.from_dict(fixture_raw(targets=TARGETS))
    roles = target_roles(cfg, stats)
    assert list(roles) == list(EXPECTED)
    for s, r in roles.items():
        assert len(r) == stats[s]["chunks"]
        assert (r == 1).sum() == EXPECTED[s] == (r == 2).sum()
    # removing a source moves no other source's targets
    raw = fixture_raw(targets=TARGETS)
    raw["sources"] = [s for s in raw["sources"] if s["name"] != "kjv"]
    fewer = target_roles(C.from_dict(raw), stats)
    assert list(fewer) == [s for s in EXPECTED if s != "kjv"]
    assert all(np.array_equal(fewer[s], roles[s]) for s in fewer)
    # another seed draws other documents
    other = target_roles(C.from_dict(fixture_raw(targets=TARGETS, seed=1)), stats)
    assert any(not np.array_equal(other[s], roles[s]) for s in roles)
    assert target_roles(C.from_dict(fixture_raw()), stats) == {}


def _old_run(tmp: Path):
    """data_prep.prepare.run as it was before validation targets (71e29c6^), or skip without git history."""
    try:
        src = subprocess.run(
            ["git", "show", "71e29c6^:data_prep/prepare.py"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git history before the targets commit is not available")
    assert "target" not in src
    path = tmp / "prepare_before_targets.py"
    path.write_text(src)
    # named inside the data_prep package, so that its relative imports are today's data_prep modules
    spec = importlib.util.spec_from_file_location("data_prep._prepare_before_targets", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.run


def shard_bytes(out: Path, meta) -> dict[str, bytes]:
    return {f"{d}/{s}": (out / d / f"{s}.bin").read_bytes() for d in meta.domains for s in ("train", "val")}


def test_without_targets_the_old_shards_are_kept(tmp_path, with_targets):
    """Shards prepared by the code before targets: a config without `targets:` skips every stage (same
    fingerprints) and writes no targets/; the same directory with targets re-makes the shards."""
    out = tmp_path / "prepared"
    old_meta, _ = prepare(fixture_raw(), out, runner=_old_run(tmp_path))
    before = shard_bytes(out, old_meta)
    meta, logs = prepare(fixture_raw(), out)
    assert sum("complete, skipped" in line for line in logs) == 4, logs
    assert meta.extra["fingerprint"] == old_meta.extra["fingerprint"]
    assert meta.extra.get("targets") is None and not (out / "targets").exists()
    assert shard_bytes(out, meta) == before
    # the fingerprint without targets is the old formula (targets join it only when set)
    work = {s: json.loads((out / "work" / f"{s}.json").read_text()) for s in ("tokenizer", "domains")}
    cfg = C.from_dict({**fixture_raw(), "out": str(out)})
    assert meta.extra["fingerprint"] == fingerprint(
        work["tokenizer"]["fingerprint"],
        work["tokenizer"]["sha256"],
        work["domains"]["fingerprint"],
        cfg.shards,
        cfg.specialists,
    )
    # with targets: the shards stage runs again (ingest, tokenizer, domains are kept) and the shards change
    meta2, logs2 = prepare(fixture_raw(targets=TARGETS), out, overwrite=True)  # another config: replaced
    assert "[4/4] shards" in logs2 and sum("complete, skipped" in line for line in logs2) == 3, logs2
    assert meta2.extra["fingerprint"] != meta.extra["fingerprint"] and meta2.extra["targets"] == "targets"
    assert shard_bytes(out, meta2) == shard_bytes(with_targets[0], with_targets[1])  # as a fresh run with targets
    # and back without targets: the old shards again, no target set left to be read
    meta3, logs3 = prepare(fixture_raw(), out, overwrite=True)
    assert meta3.extra["fingerprint"] == old_meta.extra["fingerprint"] and meta3.extra.get("targets") is None
    assert shard_bytes(out, meta3) == before
    assert not (out / "targets" / "meta.json").exists() and not list((out / "targets").rglob("*.bin"))


@pytest.mark.parametrize(
    "targets, key",
    [
        ({"max_share": 0}, "targets.max_share"),
        ({"max_share": 0.9}, "targets.max_share"),
        ({"max_share": "0.1"}, "targets.max_share"),
        ({"max_share": True}, "targets.max_share"),
        ({"inhouse_docs": 0}, "targets.inhouse_docs"),
        ({"val_docs": -1}, "targets.val_docs"),
        ({"min_docs": 0}, "targets.min_docs"),
        ({"inhouse_docs": "60"}, "inhouse_docs"),
        ({"inhouse_docs": 4, "min_docs": 8}, "targets.min_docs"),  # no source could ever get a target
        ({"holdout": 3}, "unknown keys ['holdout']"),
        ("lots", "targets"),
        ([4, 4], "targets"),
    ],
)
def test_bad_targets_are_refused_naming_the_key(tmp_path, capsys, targets, key):
    with pytest.raises(C.ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        C.from_dict(fixture_raw(targets=targets))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(fixture_raw(targets=targets, out=str(tmp_path / "out"))))
    with pytest.raises(C.ConfigError, match="targets"):
        C.load_config(path)
    assert_refused(capsys, "prepare", ["--config", str(path)], "targets", watch=(tmp_path,))
    assert not (tmp_path / "out").exists()
