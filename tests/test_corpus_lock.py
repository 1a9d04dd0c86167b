"""The corpus lock: which package versions the offline corpus was built from, and locked rebuilds.

apt-get, apt-cache, dpkg-deb and pip are replaced by a fake archive (`FakeArchive`, standing in for
``data_prep.fetch_packages._run``) that serves one version of each package and records every command.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from data_prep import build_offline_corpus as boc
from data_prep import corpus_lock as L
from data_prep import fetch_packages
from data_prep.offline_sources import SOURCES, Source
from data_prep.prepare import main as prepare_main
from soe.data.shards import Meta, load_meta

REPO = Path(__file__).resolve().parents[1]


def rec(name, version, sha="a", kind="deb", file=None):
    return {
        "name": name,
        "kind": kind,
        "version": version,
        "sha256": sha * 64,
        "file": file or f"{name}_{version}_all.deb",
    }


def test_lock_id_is_deterministic_and_order_independent():
    pk = [rec("a", "1"), rec("b", "2", "b"), rec("c", "3", "c", kind="pypi", file="c-3.tar.gz")]
    ids = {L.lock_id(random.Random(s).sample(pk, len(pk))) for s in range(6)}
    assert len(ids) == 1 and len(ids.pop()) == 12
    assert L.make_lock(pk)["id"] == L.make_lock(pk[::-1])["id"] == L.lock_id(pk)
    assert L.make_lock(pk)["packages"] == L.make_lock(pk[::-1])["packages"]  # stored sorted too
    # what identifies the corpus is (name, version, sha256); a renamed file is the same package
    assert L.lock_id([rec("a", "1", file="x.deb"), *pk[1:]]) == L.lock_id(pk)
    assert L.lock_id([rec("a", "1.1"), *pk[1:]]) != L.lock_id(pk)
    assert L.lock_id([rec("a", "1", "f"), *pk[1:]]) != L.lock_id(pk)


def test_committed_demo_lock_covers_every_package_and_demo_configs_use_it():
    lock = L.read_lock(REPO / "data_prep/locks/demo.lock.json")  # schema and id check
    needed = {p for s in SOURCES for p in s.debs} | {r.split("==")[0] for s in SOURCES for r in s.pypi}
    assert {p["name"] for p in lock["packages"]} == needed
    for name in ("demo.yaml", "demo-k64.yaml", "demo-16x8.yaml"):
        oc = yaml.safe_load((REPO / "data_prep/configs" / name).read_text())["offline_corpus"]
        assert oc["lock"] == "data_prep/locks/demo.lock.json", name
        assert oc["allow_changed"] is True, f"{name}: the demo must go on (with a warning) when Debian moved"


class FakeArchive:
    """Serves ``debs[name] = (version, content)`` and ``pypi[name] = (version, content)``."""

    def __init__(self, debs: dict, pypi: dict):
        self.debs, self.pypi, self.calls = debs, pypi, []

    def __call__(self, cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
        self.calls.append(cmd)
        ok = lambda out="": subprocess.CompletedProcess(cmd, 0, out, "")  # noqa: E731
        if cmd[:2] == ["apt-get", "download"]:
            name, _, asked = cmd[2].partition("=")
            if name not in self.debs:
                return subprocess.CompletedProcess(cmd, 100, "", f"E: Unable to locate package {name}")
            version, content = self.debs[name]
            if asked and asked != version:
                return subprocess.CompletedProcess(cmd, 100, "", f"E: Version '{asked}' for '{name}' was not found")
            (Path(cwd) / f"{name}_{quote(version, safe='')}_all.deb").write_text(content)
            return ok()
        if cmd[:2] == ["apt-cache", "policy"]:
            return ok(
                f"{cmd[2]}:\n  Installed: (none)\n  Candidate: {self.debs[cmd[2]][0]}\n" if cmd[2] in self.debs else ""
            )  # apt-cache prints nothing for a package it does not know
        if cmd[0] == "dpkg-deb":
            dest = Path(cmd[3]) / "usr/share/toy"
            dest.mkdir(parents=True)
            (dest / "text.txt").write_text(Path(cmd[2]).read_text())
            return ok()
        if cmd[1:4] == ["-m", "pip", "download"]:
            name, asked = cmd[-1].split("==")
            version, content = self.pypi[name]
            if asked != version:
                return subprocess.CompletedProcess(cmd, 1, "", f"ERROR: No matching distribution for {cmd[-1]}")
            (Path(cmd[cmd.index("-d") + 1]) / f"{name}-{version}.tar.gz").write_text(content)
            return ok()
        raise AssertionError(f"unexpected command {cmd}")

    def asked(self) -> list[str]:
        return [c[2] if c[0] == "apt-get" else c[-1] for c in self.calls if "download" in c]


def toy_docs(root: Path):
    deb = (root / "toy-doc/usr/share/toy/text.txt").read_text()
    whl = (root / "pypi/toypkg-1.0.tar.gz").read_text()
    for i in range(30):
        yield f"toy document {i}: {deb} {whl} " + f"word{i % 7} " * 20


@pytest.fixture
def archive(monkeypatch):
    fake = FakeArchive({"toy-doc": ("1.0-1", "deb one")}, {"toypkg": ("1.0", "sdist one")})
    monkeypatch.setattr(fetch_packages, "_run", fake)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(boc, "SOURCES", [Source("toy", "alpha", ("toy-doc",), ("toypkg==1.0",), "CC0-1.0", toy_docs)])
    return fake


def build(tmp_path, **kw):
    return boc.build(tmp_path / "corpus", tmp_path / "cache", None, 4096, False, **kw)


def test_build_records_versions_and_a_locked_rebuild_asks_for_them(tmp_path, archive):
    lock = build(tmp_path)
    assert {(p["name"], p["version"]) for p in lock["packages"]} == {("toy-doc", "1.0-1"), ("toypkg", "1.0")}
    assert L.read_lock(tmp_path / "corpus/corpus.lock.json") == lock
    manifest = json.loads((tmp_path / "corpus/manifest.json").read_text())
    assert manifest["toy"]["packages"] == lock["packages"]
    (tmp_path / "l.json").write_text(json.dumps(lock))

    # the archive moved on: a locked build from an empty cache asks for exactly the locked versions and fails,
    # naming the package, the locked and the available version
    archive.debs["toy-doc"] = ("1.0-2", "deb two")
    archive.calls.clear()
    with pytest.raises(boc.MissingError) as e:
        boc.build(tmp_path / "c2", tmp_path / "cache2", None, 4096, False, lock=tmp_path / "l.json")
    assert "toy-doc=1.0-1" in archive.asked() and "toypkg==1.0" in archive.asked()
    assert "toy-doc locked 1.0-1 -> available 1.0-2" in str(e.value) and "--allow-changed" in str(e.value)
    assert not list((tmp_path / "c2").glob("*.jsonl"))

    # with --allow-changed it goes on with the available version and records it (and the change)
    new = boc.build(
        tmp_path / "c2", tmp_path / "cache2", None, 4096, False, lock=tmp_path / "l.json", allow_changed=True
    )
    assert {p["name"]: p["version"] for p in new["packages"]}["toy-doc"] == "1.0-2" and new["id"] != lock["id"]
    assert new["requested_lock"] == lock["id"]
    assert [(c["name"], c["locked"], c["available"]) for c in new["changed"]] == [("toy-doc", "1.0-1", "1.0-2")]
    assert "deb two" in (tmp_path / "c2/toy.jsonl").read_text()


def test_locked_rebuild_uses_the_cache_and_rebuilds_sources_whose_packages_changed(tmp_path, archive):
    lock = build(tmp_path)
    (tmp_path / "l.json").write_text(json.dumps(lock))
    archive.calls.clear()
    assert build(tmp_path, lock=tmp_path / "l.json")["id"] == lock["id"]
    assert archive.calls == [], "everything locked is in the cache: nothing fetched, nothing unpacked"

    # a newer version (built without the lock) replaces the text; the old lock brings the old text back from
    # the cache (re-unpacked and the source rebuilt, nothing downloaded)
    old = next((tmp_path / "cache/_debs").glob("toy-doc_*.deb"))
    shutil.move(old, tmp_path / old.name)
    archive.debs["toy-doc"] = ("1.0-2", "deb two")
    assert build(tmp_path)["id"] != lock["id"]
    assert "deb two" in (tmp_path / "corpus/toy.jsonl").read_text()
    shutil.move(tmp_path / old.name, old)
    archive.calls.clear()
    assert build(tmp_path, lock=tmp_path / "l.json")["id"] == lock["id"]
    text = (tmp_path / "corpus/toy.jsonl").read_text()
    assert "deb one" in text and "deb two" not in text
    assert [c[0] for c in archive.calls] == ["dpkg-deb"]


def test_hash_mismatch_is_named(tmp_path, archive, capsys):
    lock = build(tmp_path)
    (tmp_path / "l.json").write_text(json.dumps(lock))
    archive.debs["toy-doc"] = ("1.0-1", "same version, other bytes")  # a rebuilt package under an old version
    with pytest.raises(boc.MissingError) as e:
        boc.build(tmp_path / "c2", tmp_path / "cache2", None, 4096, False, lock=tmp_path / "l.json")
    assert "toy-doc" in str(e.value)
    assert "CHANGED toy-doc: locked 1.0-1 -> available 1.0-1 (sha256" in capsys.readouterr().err


def test_no_package_lists_is_not_reported_as_a_version_change(tmp_path, archive):
    """On a fresh machine before `apt-get update` apt knows no package: say so, not "the lock moved"."""
    lock = build(tmp_path)
    (tmp_path / "l.json").write_text(json.dumps(lock))
    archive.debs.clear()
    with pytest.raises(boc.MissingError) as e:
        boc.build(tmp_path / "c2", tmp_path / "cache2", None, 4096, False, lock=tmp_path / "l.json", allow_changed=True)
    assert "apt-get update" in str(e.value) and "['toy-doc']" in str(e.value) and "lock" not in str(e.value)


def test_prepare_records_the_lock_in_meta_and_a_new_lock_reruns_ingest(tmp_path, archive, capsys):
    beta = tmp_path / "beta.jsonl"
    beta.write_text("".join(json.dumps({"text": f"beta text {i} " + f"b{i % 5} " * 12}) + "\n" for i in range(30)))
    cfg = {
        "out": str(tmp_path / "prep"),
        "offline_corpus": {"out": str(tmp_path / "corpus"), "cache": str(tmp_path / "cache")},
        "sources": [
            {"name": "toy", "path": str(tmp_path / "corpus/toy.jsonl"), "domain": "alpha"},
            {"name": "b", "path": str(beta), "domain": "beta"},
        ],
        "tokenizer": {"vocab_size": 300},
        "domains": {"embedder": {"kind": "tfidf", "svd_dim": 4}},
        "shards": {"val_every": 3},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert prepare_main(["--config", str(tmp_path / "c.yaml")]) == 0
    meta = load_meta(tmp_path / "prep")
    corpus = L.read_lock(tmp_path / "corpus/corpus.lock.json")
    assert meta.corpus_lock["id"] == corpus["id"] and meta.corpus_lock["packages"] == corpus["packages"]
    assert meta.corpus_lock["lock_file"] == str(tmp_path / "corpus/corpus.lock.json")
    (tmp_path / "l.json").write_text(json.dumps(corpus))

    # Debian moved a point release: with --lock and --allow-changed the text changes, so every stage re-runs
    archive.debs["toy-doc"] = ("1.0-2", "deb two")
    shutil.rmtree(tmp_path / "cache/_debs")
    capsys.readouterr()
    assert (
        prepare_main(
            ["--config", str(tmp_path / "c.yaml"), "--lock", str(tmp_path / "l.json"), "--allow-changed", "--overwrite"]
        )
        == 0
    )  # another lock: another config, replaced
    out, err = capsys.readouterr()
    assert "CHANGED toy-doc: locked 1.0-1 -> available 1.0-2" in err
    assert "[1/4] ingest\n" in out and "ingest: complete, skipped" not in out
    meta2 = load_meta(tmp_path / "prep")
    assert meta2.corpus_lock["id"] != corpus["id"] and meta2.corpus_lock["changed"][0]["name"] == "toy-doc"


def test_fixture_has_no_lock_and_old_meta_loads(tmp_path, fixture_prepared):
    assert load_meta(fixture_prepared).corpus_lock is None  # plain files: no packages, no lock
    assert L.describe(None) == ["corpus lock: none (no packages: a committed fixture or local files)"]
    Meta(domains=["a"], vocab_size=300, tokenizer_sha256="0" * 64, eos_id=0).save(tmp_path)
    raw = json.loads((tmp_path / "meta.json").read_text())
    del raw["corpus_lock"]  # a meta.json written before locks existed
    (tmp_path / "meta.json").write_text(json.dumps(raw))
    assert load_meta(tmp_path).corpus_lock is None


def test_demo_prints_the_lock_and_names_what_moved(tmp_path, fixture_prepared):
    import demo

    assert demo.lock_lines(str(fixture_prepared)) == [
        "corpus lock: none (no packages: a committed fixture or local files)"
    ]
    ref = L.read_lock(REPO / demo.DEMO_LOCK)
    meta = load_meta(fixture_prepared)
    meta.corpus_lock = {**ref, "lock_file": "data/offline_corpus/corpus.lock.json"}
    meta.save(tmp_path)
    lines = demo.lock_lines(str(tmp_path))
    assert (
        lines[0] == f"corpus lock {ref['id']}: {len(ref['packages'])} packages (data/offline_corpus/corpus.lock.json)"
    )
    assert "the committed demo corpus" in lines[1]
    moved = [dict(p) for p in ref["packages"]]
    moved[0]["version"] += "+deb12u9"
    meta.corpus_lock = L.make_lock(moved)
    meta.save(tmp_path)
    warning = demo.lock_lines(str(tmp_path))[-1]
    assert (
        "WARNING" in warning
        and f"{moved[0]['name']} {ref['packages'][0]['version']} -> {moved[0]['version']}" in warning
    )
