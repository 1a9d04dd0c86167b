"""Progress outside training (soe/data/progress.py): prepare's stages, estimate-weights and evaluate show a bar
with the right total on stderr and one summary line each; stdout, which scripts parse, is unchanged."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from specialize_helpers import make_docs, text_env
from tqdm import tqdm

from data_prep.config import SourceSpec
from data_prep.ingest import open_records
from data_prep.prepare import main as prepare
from soe.cli import main
from soe.data import progress
from soe.data.embed import TfidfEmbedder
from soe.data.shards import load_meta

REPO = Path(__file__).resolve().parents[1]
BAR = re.compile(r"\d+%\|")  # what a drawn bar holds


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def bars(monkeypatch):
    """Every bar made, drawn on stderr (SOE_PROGRESS=1), in order."""
    made = []

    class Recorded(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(progress, "tqdm", Recorded)
    monkeypatch.setenv(progress.ENV, "1")
    return made


def lines(stream: str) -> str:
    """A bar's redraws (carriage returns) as lines."""
    return stream.replace("\r", "\n")


def finished(bars) -> dict[str, tuple]:
    """{description: (n, total)} of the bars (the last of each description)."""
    return {b.desc.rstrip(": "): (b.n, b.total) for b in bars}


@pytest.mark.parametrize(
    "env, quiet, stream, shown",
    [
        ("", False, TTY, True),  # a terminal: drawn
        ("", False, io.StringIO, False),  # a pipe, CI: not drawn
        ("0", False, TTY, False),
        ("1", False, io.StringIO, True),
        ("1", True, TTY, False),  # --quiet wins
    ],
)
def test_a_bar_shows_on_a_terminal_or_when_asked(monkeypatch, env, quiet, stream, shown):
    monkeypatch.setenv(progress.ENV, env)
    monkeypatch.setattr(sys, "stderr", stream())
    with progress.bar(desc="embed", unit="chunk", total=9, quiet=quiet) as b:
        b.update(3)
        assert b.disable is not shown  # (closing sets it)
        if shown:
            text = str(b)
            assert "embed:  33%|" in text and "| 3/9 chunks [" in text and " ETA, " in text and "chunk/s]" in text
    assert bool(BAR.search(sys.stderr.getvalue())) is shown
    if shown:
        with progress.bar(desc="ingest x", unit="document") as unknown:
            unknown.update(5)
            assert str(unknown).startswith("ingest x: 5 documents [") and "ETA" not in str(unknown)


def test_blocks_give_the_bits_of_one_call():
    texts = make_docs("law", 30, seed=0) + make_docs("space", 30, seed=1)
    emb = TfidfEmbedder(max_features=500, svd_dim=8).fit(texts)
    assert np.array_equal(progress.encode(emb, texts, block=7, quiet=True), emb.encode(texts))


def test_a_text_file_and_a_dataset_in_memory_say_how_many_documents(tmp_path):
    for i in range(3):
        (tmp_path / f"d{i}.txt").write_text(f"document {i}\n")
    records, total = open_records(SourceSpec(name="t", path=str(tmp_path / "*.txt"), domain="x"))
    assert total == 3 and len(list(records)) == 3
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(4)))
    records, total = open_records(SourceSpec(name="h", hub=str(folder), streaming=False, domain="x"))
    assert total == 4 and len(list(records)) == 4
    records, total = open_records(SourceSpec(name="j", path=str(folder / "train.jsonl"), domain="x"))
    assert total is None and len(list(records)) == 4  # a streamed file: counted as it goes


def _prepare(config: Path | str, out: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # the fixture config names its sources relative to the repository
    assert prepare(["--config", str(config), "--out", str(out)]) == 0


def test_prepare_labels(tmp_path, monkeypatch, capsys, bars, fixture_prepared):
    _prepare("data_prep/configs/fixture.yaml", tmp_path / "p", monkeypatch)
    out, err = capsys.readouterr()
    meta = load_meta(tmp_path / "p")
    sources = meta.extra["sources"]
    docs, chunks = (sum(s[k] for s in sources.values()) for k in ("documents", "chunks"))
    for line in (
        "[1/4] ingest",
        f"  ingest: {len(sources)} sources, {docs} documents -> {chunks} chunks (",
        "[2/4] tokenizer: byte-level BPE, vocab 4096",
        "[3/4] domains: labels",
        "  embedder: tfidf fitted on ",
        "[4/4] shards",
        "  specialist sets (in-house + held-out documents): austen 12 + 19, go 12 + 19, metamath 12 + 20",
    ):
        assert line in out, (line, out)
    assert not BAR.search(out) and "%|" in err  # bars on stderr only
    pre = sum(s["chunks"] for s in sources.values() if not s["holdout"])
    routed = pre + sum(
        sum(meta_docs.values()) for meta_docs in load_meta(tmp_path / "p/specialists").documents.values()
    )
    done = finished(bars)
    assert done["tokenize"] == (routed, routed) and f"/{routed} chunks [" in err
    assert done["tokenizer sample"] == done["domain sample"] == (pre, pre)
    assert (
        done["embed centroids"][0]
        == done["embed centroids"][1]
        == sum(min(64, n) for n in (sum(d.values()) for d in meta.documents.values()))
    )
    for name, s in sources.items():  # a .jsonl source: the count, no total
        assert done[f"ingest {name}"] == (s["documents"], None)
    assert all(b.n == b.total for b in bars if b.total)  # every bar with a total ends at it
    # the bars change no number: this run equals the session's (made without bars)
    assert (tmp_path / "p/centroids.npy").read_bytes() == (fixture_prepared / "centroids.npy").read_bytes()
    assert meta.tokens == load_meta(fixture_prepared).tokens


def test_prepare_kmeans(tmp_path, monkeypatch, capsys, bars):
    cfg = (REPO / "data_prep/configs/fixture.yaml").read_text()
    cfg = re.sub(r"  order: .*\n|  centroid_sample: .*\n", "", cfg)
    config = tmp_path / "km.yaml"
    config.write_text(cfg.replace("  method: labels\n", "  method: kmeans\n  k: 6\n  fit_sample: 300\n"))
    _prepare(config, tmp_path / "p", monkeypatch)
    out, err = capsys.readouterr()
    pre = sum(s["chunks"] for s in load_meta(tmp_path / "p").extra["sources"].values() if not s["holdout"])
    for line in (
        "[3/4] domains: kmeans",
        "  embedded the 300-chunk sample (tfidf) in ",
        "  k-means: k=6 on 300 chunks in ",
        f"; {pre:,} chunks assigned in ",
    ):
        assert line in out, (line, out)
    done = finished(bars)
    assert done["embed sample"] == (300, 300) and done["assign"] == (pre, pre)
    assert "embed sample:   0%|" in err and f"/{pre} chunks [" in err
    assert all(b.n == b.total for b in bars if b.total)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return text_env(tmp_path_factory)


def test_estimate_weights(env, tmp_path, capsys, bars):
    prepared, _ = env
    texts = tmp_path / "inhouse.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_docs("law", 150, seed=5)))
    args = ["estimate-weights", str(prepared), "--texts", str(texts), "--out", str(tmp_path / "w.json")]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out.startswith("estimated domain weights from 150 documents (150 chunks, ")
    assert finished(bars)["embed"] == (150, 150) and "| 0/150 chunks [" in err  # in blocks of 64
    assert re.search(
        r"^embedded 150 chunks of 150 documents \(tfidf\) in [\d.]+s, [\d.]+ chunks/s$", lines(err), re.M
    ), err
    assert not BAR.search(out) and "embedded" not in out
    weights = (tmp_path / "w.json").read_text()
    assert main([*args, "--quiet"]) == 0
    assert capsys.readouterr() == (out, "") and (tmp_path / "w.json").read_text() == weights
    assert finished(bars)["embed"] == (150, 150)  # --quiet: no new bar (one call, no blocks)


def test_evaluate(env, tmp_path, capsys, bars):
    prepared, ckpt = env
    args = ["evaluate", "--ckpt", str(ckpt), "--data", str(prepared), "--weights", "law", "--prior", "--windows", "20"]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    out, err = capsys.readouterr()
    rows = json.loads((tmp_path / "a.json").read_text())
    assert len(rows) == 2 * 4  # soup@law and soup@prior on 3 domains and the specialist set
    assert all(r["tokens"] == 20 * 32 for r in rows)  # 20 windows of 32 tokens each
    (bar,) = [b for b in bars if b.desc.startswith("evaluate")]
    assert (bar.n, bar.total) == (160, 160) and "| 0/160 windows [" in err and " ETA, " in err
    assert re.search(r"^evaluated 2 model\(s\) on 4 set\(s\): 5,120 tokens in [\d.]+s$", lines(err), re.M), err
    assert out.startswith("| model | set | tokens |") and not BAR.search(out) and "evaluated" not in out
    assert main([*args, "--json", str(tmp_path / "b.json"), "--quiet"]) == 0
    quiet_out, quiet_err = capsys.readouterr()
    assert quiet_out == out.replace("a.json", "b.json") and quiet_err == ""
    assert (tmp_path / "b.json").read_text() == (tmp_path / "a.json").read_text()  # the same numbers
