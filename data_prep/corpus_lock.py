"""The corpus lock: which package versions (and which exact files) the offline corpus was built from.

The Debian archive serves whatever point release is current, so two builds of the corpus a month apart can
differ. The build records every package it read as ``{name, kind: deb|pypi, version, sha256, file}`` in
``<corpus>/corpus.lock.json``, whose ``id`` is a short hash of the sorted (name, version, sha256) triples:
two corpora with the same id were built from byte-identical packages. ``build_offline_corpus --lock FILE``
(or ``offline_corpus.lock`` in a prepare config) fetches exactly those versions again (docs/corpus.md).

    python -m data_prep.corpus_lock --cache data/cache [--out FILE]   # lock of what the cache holds now
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path
from urllib.parse import unquote

from soe.data.shards import sha256_file
from soe.fileio import atomic_write_json, read_json

LOCK_FILE = "corpus.lock.json"
KINDS = ("deb", "pypi")
FIELDS = ("name", "kind", "version", "sha256", "file")
# Sources read from the machine itself rather than from a package: the lock cannot pin them.
HOST_SOURCES = {
    "python_stdlib": "this Python's standard library",
    "common_licenses": "/usr/share/common-licenses",
    "debian_changelogs": "/usr/share/doc/*/changelog* of the installed system",
}


def lock_id(packages: list[dict]) -> str:
    """Short hash of the sorted (name, version, sha256) triples: independent of order and file names."""
    triples = sorted((p["name"], p["version"], p["sha256"]) for p in packages)
    return hashlib.sha256(json.dumps(triples).encode()).hexdigest()[:12]


def make_lock(packages: list[dict], **extra) -> dict:
    pk = sorted(({k: p[k] for k in FIELDS} for p in packages), key=lambda p: (p["kind"], p["name"]))
    host = {"python": platform.python_version(), "machine": platform.machine()}
    debian = Path("/etc/debian_version")
    if debian.is_file():
        host["debian"] = debian.read_text().strip()
    return {"id": lock_id(pk), "packages": pk, "host": host, "unpinned_sources": HOST_SOURCES, **extra}


def write_lock(path: str | Path, lock: dict) -> Path:
    return atomic_write_json(path, lock)


def read_lock(path: str | Path) -> dict:
    """Load and check a lock file; a wrong one raises a ValueError naming the file and the entry."""
    lock = read_json(path, "corpus lock")
    if not isinstance(lock, dict) or not isinstance(lock.get("packages"), list):
        raise ValueError(
            f"{path}: not a corpus lock; expected a JSON object with a 'packages' list "
            "(written by data_prep.build_offline_corpus)"
        )
    for i, p in enumerate(lock["packages"]):
        bad = not isinstance(p, dict) or any(not isinstance(p.get(k), str) or not p[k] for k in FIELDS)
        if bad or p["kind"] not in KINDS or len(p["sha256"]) != 64:
            raise ValueError(
                f"{path}: packages[{i}]={p!r}: expected {{{', '.join(FIELDS)}}} with kind in {KINDS} "
                "and a 64-hex-digit sha256"
            )
    names = [p["name"] for p in lock["packages"]]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a package is listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    if "id" in lock and lock["id"] != lock_id(lock["packages"]):
        raise ValueError(
            f"{path}: id {lock['id']!r} does not match its packages ({lock_id(lock['packages'])}); "
            "the file was edited by hand or is damaged"
        )
    return lock


def deb_name(file: str) -> tuple[str, str, str]:
    """(package, version, architecture) of a .deb named as `apt-get download` names it:
    <name>_<version, with ':' written %3a>_<arch>.deb."""
    name, version, arch = file[: -len(".deb")].split("_")
    return name, unquote(version), arch


def deb_record(path: Path) -> dict:
    name, version, _ = deb_name(path.name)
    return {"name": name, "kind": "deb", "version": version, "sha256": sha256_file(path), "file": path.name}


def pypi_record(path: Path, name: str, version: str) -> dict:
    return {"name": name, "kind": "pypi", "version": version, "sha256": sha256_file(path), "file": path.name}


def short(p: dict) -> dict:
    """What a built source records of each of its packages (its manifest entry)."""
    return {k: p[k] for k in FIELDS}


def describe(lock: dict | None, path: str | Path | None = None) -> list[str]:
    """A few lines for a log: the id, the package count, where the file is."""
    if not lock:
        return ["corpus lock: none (no packages: a committed fixture or local files)"]
    where = f" ({path})" if path else ""
    lines = [f"corpus lock {lock['id']}: {len(lock['packages'])} packages{where}"]
    for c in lock.get("changed", []):
        lines.append(f"  CHANGED {c['name']}: locked {c['locked']} -> available {c['available']} ({c['why']})")
    return lines


def lock_from_cache(cache: Path) -> dict:
    """The lock of what ``cache`` holds: the .deb each unpacked package came from and the PyPI artefacts."""
    packages = []
    for marker in sorted(cache.glob("*/.extracted")):
        deb = cache / "_debs" / marker.read_text().strip()
        if not deb.is_file():
            raise FileNotFoundError(f"{marker} names {deb.name}, which is not in {deb.parent}")
        packages.append(deb_record(deb))
    from .offline_sources import SOURCES  # the PyPI pins live next to their extractors

    for req in sorted({r for s in SOURCES for r in s.pypi}):
        name, version = req.split("==")
        hits = sorted((cache / "pypi").glob(f"{name.replace('-', '_')}-{version}*")) or sorted(
            (cache / "pypi").glob(f"{name}-{version}*")
        )
        if hits:
            packages.append(pypi_record(hits[0], name, version))
    return make_lock(packages)


def main(argv: list[str] | None = None) -> int:
    from soe.errors import pop_debug, run_entry
    from soe.malloc import keep_freed_memory

    keep_freed_memory()  # an entry point: freed memory stays in the process (soe/malloc.py)
    argv, debug = pop_debug(sys.argv[1:] if argv is None else list(argv))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("data/cache"), help="the corpus build's package cache")
    ap.add_argument("--out", type=Path, default=None, help="write the lock here (default: print it)")
    a = ap.parse_args(argv)

    def go() -> int:
        lock = lock_from_cache(a.cache)
        if a.out:
            write_lock(a.out, lock)
        print("\n".join(describe(lock, a.out)) if a.out else json.dumps(lock, indent=2))
        return 0

    return run_entry("data_prep.corpus_lock", go, debug)


if __name__ == "__main__":
    sys.exit(main())
