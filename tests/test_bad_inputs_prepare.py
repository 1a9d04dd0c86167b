"""Bad inputs of ``python -m data_prep.prepare``: one error line naming the input, no traceback, nothing
written among the inputs (and, for what can be checked up front, no output directory either).

Each row builds its inputs under ``<tmp>/in`` from a small valid spec (two labelled jsonl sources) and
breaks one thing. ``early`` rows must also leave ``<tmp>/out`` and ``<tmp>/corpus`` untouched (not created).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from bad_inputs import assert_refused

GOOD_LOCK = {
    "packages": [
        {"name": "toy-doc", "kind": "deb", "version": "1.0-1", "sha256": "a" * 64, "file": "toy-doc_1.0-1_all.deb"}
    ]
}


def spec(d: Path, offline: bool = False) -> dict:
    """A valid config; sources and output under ``d``."""
    for name in ("a", "b"):
        (d / "in" / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": f"{name} document {i} " + f"{name}{i % 5} " * 12}) + "\n" for i in range(30))
        )
    cfg = {
        "out": str(d / "out"),
        "sources": [
            {"name": "a", "path": str(d / "in/a.jsonl"), "domain": "alpha"},
            {"name": "b", "path": str(d / "in/b.jsonl"), "domain": "beta"},
        ],
        "tokenizer": {"vocab_size": 300},
        "domains": {"embedder": {"kind": "tfidf", "svd_dim": 4}},
        "shards": {"val_every": 3},
    }
    if offline:
        cfg["offline_corpus"] = {"out": str(d / "corpus"), "cache": str(d / "cache")}
    return cfg


def with_cfg(edit=None, offline=False, text=None, extra=()):
    """A row's setup: write the (edited) spec as in/c.yaml (or raw ``text``); argv = --config it + ``extra``."""

    def setup(d: Path) -> list[str]:
        cfg = spec(d, offline)
        if edit:
            edit(cfg, d)
        path = d / "in" / "c.yaml"
        if text is not None:
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
        else:
            path.write_text(yaml.safe_dump(cfg))
        return ["--config", str(path), *[a.format(d=d) for a in extra]]

    return setup


def write(rel: str, content):
    """An edit that also writes an input file ``in/<rel>``."""

    def edit(cfg, d):
        p = d / "in" / rel
        p.write_text(content if isinstance(content, str) else json.dumps(content))

    return edit


def sets(path: str, value):
    """An edit setting ``cfg[a][b]...`` (dotted path, list indices as numbers); ``value`` may be fn(tmp dir)."""

    def edit(cfg, d):
        *keys, last = path.split(".")
        node = cfg
        for k in keys:
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        node[last] = value(d) if callable(value) else value

    return edit


def tree(rel: str, files: dict):
    """An edit that writes a directory ``in/<rel>`` holding ``files`` (name -> text or JSON-able)."""

    def edit(cfg, d):
        root = d / "in" / rel
        for name, content in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(content if isinstance(content, str) else json.dumps(content))

    return edit


FOREIGN = {"meta.json": {"mine": 1}, "tokenizer.json": "{}", "work/notes.txt": "x", "alpha/keep.txt": "y"}
OTHER_CFG = {"prepare.json": {"tool": "data_prep.prepare", "config": "0123456789abcdef"}, "meta.json": "{}"}
LOCK = "--lock={d}/in/l.json"
# (id, setup, expected fragment of the error line, early: nothing under out/ or corpus/ may appear)
ROWS = [
    ("no-config-flag", lambda d: [], "--config", True),
    ("config-missing", lambda d: ["--config", str(d / "in" / "nope.yaml")], "nope.yaml not found", True),
    ("config-is-a-directory", lambda d: ["--config", str(d / "in")], "not found", True),
    ("yaml-syntax", with_cfg(text="sources: [a, b\nout: x\n"), "is not valid YAML", True),
    ("yaml-not-utf8", with_cfg(text=b"\xff\xfe sources: []\n"), "not UTF-8", True),
    ("yaml-empty", with_cfg(text=""), "expected a mapping with a 'sources' list", True),
    ("unknown-top-key", with_cfg(sets("tokeniser", {"vocab_size": 300})), "unknown keys ['tokeniser']", True),
    ("unknown-section-key", with_cfg(sets("shards.every", 3)), "unknown keys ['every']", True),
    ("seed-not-int", with_cfg(sets("seed", "zero")), "seed='zero': expected an integer", True),
    ("bool-for-count", with_cfg(sets("chunking.min_chars", True)), "min_chars=True", True),
    ("vocab-too-small", with_cfg(sets("tokenizer.vocab_size", 100)), "tokenizer.vocab_size=100", True),
    ("vocab-too-large", with_cfg(sets("tokenizer.vocab_size", 10**9)), "tokenizer.vocab_size=1000000000", True),
    ("seed-too-large", with_cfg(sets("seed", 2**64)), "seed=18446744073709551616", True),
    ("duplicate-top-key", with_cfg(text="sources: []\nseed: 1\nseed: 2\n"), "'seed' appears twice", True),
    (
        "duplicate-nested-key",
        with_cfg(text="tokenizer: {vocab_size: 300, vocab_size: 400}\nsources: []\n"),
        "'vocab_size' appears twice",
        True,
    ),
    ("val-every-one", with_cfg(sets("shards.val_every", 1)), "shards.val_every=1", True),
    ("bad-method", with_cfg(sets("domains.method", "lda")), "expected 'labels' or 'kmeans'", True),
    (
        "source-missing-file",
        with_cfg(sets("sources.1.path", lambda d: str(d / "in/gone.jsonl"))),
        "matches no readable file",
        True,
    ),
    ("source-path-and-hub", with_cfg(sets("sources.0.hub", "x/y")), "exactly one of 'path'", True),
    ("duplicate-source-name", with_cfg(sets("sources.1.name", "a")), "name must be unique", True),
    (
        "out-is-a-file",
        with_cfg(write("taken", "x"), extra=["--out={d}/in/taken"]),
        "exists and is not a directory",
        True,
    ),
    (
        "out-not-written-by-prepare",
        with_cfg(tree("mine", FOREIGN), extra=["--out={d}/in/mine"]),
        "was not written by data_prep.prepare",
        True,
    ),
    (
        "out-not-ours-even-with-overwrite",
        with_cfg(tree("mine", FOREIGN), extra=["--out={d}/in/mine", "--overwrite", "--force"]),
        "(no prepare.json",
        True,
    ),
    ("out-parent-is-a-file", with_cfg(write("taken", "x"), extra=["--out={d}/in/taken/sub"]), "its parent", True),
    (
        "out-other-config",
        with_cfg(tree("prep", OTHER_CFG), extra=["--out={d}/in/prep"]),
        "prepared from another config",
        True,
    ),
    (
        "out-marker-not-ours",
        with_cfg(tree("prep", {"prepare.json": {"tool": "x"}, "a": "b"}), extra=["--out={d}/in/prep"]),
        "is not a data_prep.prepare marker",
        True,
    ),
    ("lock-without-offline-stage", with_cfg(write("l.json", GOOD_LOCK), extra=[LOCK]), "offline_corpus stage", True),
    ("lock-missing", with_cfg(offline=True, extra=[LOCK]), "l.json not found", True),
    (
        "lock-corrupt-json",
        with_cfg(write("l.json", '{"packages": [}'), offline=True, extra=[LOCK]),
        "not valid JSON",
        True,
    ),
    (
        "lock-wrong-schema",
        with_cfg(write("l.json", {"packages": [{"name": "x", "kind": "rpm"}]}), offline=True, extra=[LOCK]),
        "packages[0]",
        True,
    ),
    (
        "lock-id-tampered",
        with_cfg(write("l.json", {**GOOD_LOCK, "id": "0123456789ab"}), offline=True, extra=[LOCK]),
        "does not match its packages",
        True,
    ),
    (
        "lock-in-config-missing",
        with_cfg(sets("offline_corpus.lock", "/nonexistent/demo.lock.json"), offline=True),
        "demo.lock.json not found",
        True,
    ),
    (
        "allow-changed-not-bool",
        with_cfg(sets("offline_corpus.allow_changed", "yes"), offline=True),
        "allow_changed='yes'",
        True,
    ),
    ("text-field-absent", with_cfg(sets("sources.0.text_field", "body")), "text_field 'body'", False),
    (
        "k-larger-than-data",
        with_cfg(sets("domains", {"method": "kmeans", "k": 500, "embedder": {"kind": "tfidf", "svd_dim": 4}})),
        "k=500",
        False,
    ),
]


@pytest.mark.parametrize("setup, expect, early", [pytest.param(*r[1:], id=r[0]) for r in ROWS])
def test_prepare_refuses(tmp_path, capsys, setup, expect, early):
    (tmp_path / "in").mkdir()
    argv = setup(tmp_path)
    watch = (tmp_path / "in",) + ((tmp_path / "out", tmp_path / "corpus", tmp_path / "cache") if early else ())
    assert_refused(capsys, "prepare", argv, expect, watch=watch)


def test_rows_are_distinct():
    assert len({r[0] for r in ROWS}) == len(ROWS) >= 12
    assert len({r[2] for r in ROWS}) == len(ROWS), "each row checks its own message"


def test_debug_shows_the_traceback(tmp_path):
    from data_prep.config import ConfigError
    from data_prep.prepare import main

    with pytest.raises(ConfigError):
        main(["--config", str(tmp_path / "nope.yaml"), "--debug"])


def test_own_directory_is_continued_and_replaced_only_with_overwrite(tmp_path, capsys):
    """Same config: every stage skipped (demo.py re-runs prepare); another config: refused without --overwrite
    (nothing changes), replaced with it; an older prepare's directory (no marker) is adopted."""
    from data_prep.prepare import main

    (tmp_path / "in").mkdir()
    argv = with_cfg()(tmp_path)
    assert main(argv) == 0
    out = tmp_path / "out"
    assert json.loads((out / "prepare.json").read_text())["tool"] == "data_prep.prepare"
    capsys.readouterr()
    assert main(argv) == 0 and capsys.readouterr().out.count("complete, skipped") == 4
    other = with_cfg(sets("shards.val_every", 4))(tmp_path)
    assert_refused(capsys, "prepare", other, "prepared from another config", watch=(out,))
    assert main(other + ["--overwrite"]) == 0
    assert "[4/4] shards\n" in capsys.readouterr().out
    (out / "prepare.json").unlink()  # as an older prepare left it
    assert main(other) == 0 and (out / "prepare.json").is_file()
