"""Shard tokenization throughput ÷ raw `tokenizers.encode_batch` throughput, same text, same run;
and peak memory of the shard stage as the corpus grows 4x (it should stay flat: streaming).

    python bench/bench_tokenize.py [--mb 16] [--workers 0] [--corpus data/offline_corpus]

The corpus is the committed fixture replicated to --mb MB (each copy tagged so dedupe keeps it),
or, with --corpus, the first --mb MB of a built offline corpus. The shard stage runs in a child
process (stages 1-3 already complete, so it only tokenises) and reports its own peak RSS.
Target (docs/soup.md, targets): ratio >= 0.8. Takes about a minute on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import json, resource, sys, time
from data_prep import config as C
from data_prep.prepare import run
t = time.time()
meta = run(C.from_dict(json.loads(sys.argv[1])), force=False, log=lambda *a: None)
print(json.dumps({"tokens": sum(sum(v.values()) for v in meta.tokens.values()),
                  "seconds": meta.extra["tokenize_seconds"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_corpus(path: Path, mb: float, corpus: Path | None) -> None:
    """Write ~mb MB of {"text", "domain"} records to one jsonl file."""
    files = sorted((corpus or REPO / "data_prep" / "fixture").glob("*.jsonl"))
    if not files:
        raise SystemExit(f"no *.jsonl under {corpus}")
    recs = [json.loads(line) for f in files for line in open(f, encoding="utf-8")]
    size, copy = 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while size < mb * 1e6:
            for r in recs:
                text = r["text"] if corpus else f"[copy {copy}] {r['text']}"
                out.write(json.dumps({"text": text, "domain": r.get("domain") or "misc"}, ensure_ascii=False) + "\n")
                size += len(text.encode())
                if size >= mb * 1e6:
                    break
            copy += 1


def config(src: Path, out: Path, workers: int) -> dict:
    return {
        "out": str(out),
        "sources": [{"name": "corpus", "path": str(src), "domain_field": "domain"}],
        "tokenizer": {"vocab_size": 8192, "sample_chunks_per_group": 300},
        "domains": {"embedder": {"kind": "tfidf", "svd_dim": 16}, "centroid_sample": 16},
        "shards": {"workers": workers, "val_every": 50},
    }


def raw_throughput(out: Path, batch: int = 512) -> tuple[float, float]:
    """tokens/s of encode_batch and encode_batch_fast over the same chunk texts, held in memory."""
    from tokenizers import Tokenizer

    texts = [json.loads(line)["t"] for line in open(out / "work" / "chunks" / "corpus.jsonl", encoding="utf-8")]
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.encode_special_tokens = True
    res = []
    for fn in (tok.encode_batch, tok.encode_batch_fast):
        t, n = time.perf_counter(), 0
        for i in range(0, len(texts), batch):
            n += sum(len(e.ids) for e in fn(texts[i : i + batch], add_special_tokens=False))
        res.append((n + len(texts)) / (time.perf_counter() - t))  # + one EOS per document, as in shards
    return res[0], res[1]


def shard_stage(cfg: dict) -> dict:
    """Prepare stages 1-3 here, then the shard stage alone in a child process (clean peak RSS)."""
    from data_prep import config as C
    from data_prep.prepare import run

    run(C.from_dict(cfg), log=lambda *a: None)  # includes one shard pass; the child redoes it
    (Path(cfg["out"]) / "meta.json").unlink()
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=16, help="corpus size (MB of text); memory check uses 4x this")
    ap.add_argument("--workers", type=int, default=0, help="shards.workers (0: in-process encode_batch)")
    ap.add_argument("--corpus", type=Path, default=None, help="directory of built offline-corpus *.jsonl")
    ap.add_argument("--skip-memory", action="store_true", help="skip the 4x-corpus peak-memory run")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=REPO / "data" if (REPO / "data").is_dir() else None) as tmp:
        tmp = Path(tmp)
        make_corpus(tmp / "small.jsonl", a.mb, a.corpus)
        small = shard_stage(config(tmp / "small.jsonl", tmp / "out_small", a.workers))
        raw1, fast1 = raw_throughput(tmp / "out_small")
        shard_tps = small["tokens"] / small["seconds"]
        raw2, fast2 = raw_throughput(tmp / "out_small")
        raw, fast = (raw1 + raw2) / 2, (fast1 + fast2) / 2
        print(f"corpus {a.mb:.0f} MB, {small['tokens']:,} tokens, workers={a.workers}")
        print(f"  shard stage (read work file, batch, encode, write .bin) {shard_tps:12,.0f} tokens/s")
        print(f"  raw encode_batch on the same texts in memory            {raw:12,.0f} tokens/s")
        print(f"  raw encode_batch_fast (no offsets)                      {fast:12,.0f} tokens/s")
        print(f"RATIO shard / raw encode_batch      = {shard_tps / raw:.2f}   (target >= 0.8)")
        print(f"      shard / raw encode_batch_fast = {shard_tps / fast:.2f}")
        print(f"  peak RSS of the shard stage: {small['peak_rss_mb']:.0f} MB at {a.mb:.0f} MB of text")
        if not a.skip_memory:
            make_corpus(tmp / "large.jsonl", 4 * a.mb, a.corpus)
            large = shard_stage(config(tmp / "large.jsonl", tmp / "out_large", a.workers))
            print(
                f"  peak RSS of the shard stage: {large['peak_rss_mb']:.0f} MB at {4 * a.mb:.0f} MB of text "
                f"(x{large['peak_rss_mb'] / small['peak_rss_mb']:.2f} for 4x the text: bounded if ~1)"
            )


if __name__ == "__main__":
    main()
