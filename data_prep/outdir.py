"""Whose is ``--out``: prepare writes only into a new or empty directory, or one it prepared itself.

A prepared directory holds ``prepare.json`` (the marker, written right after the directory is claimed):
the tool and a fingerprint of the config it was prepared from. Re-running the same config on it
continues or skips its stages; another config replaces its stages only with ``--overwrite`` (or
``--force``). A non-empty directory without the marker is refused whatever the flags: prepare replaces
and deletes meta.json, tokenizer.json, work/ and domain folders, and must never do so in a directory
someone else wrote. A directory an older prepare wrote (stage records in work/, no marker) is adopted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from soe.fileio import atomic_write_json

MARKER = "prepare.json"
TOOL = "data_prep.prepare"


def _legacy(out: Path) -> bool:
    """Stage records of a prepare from before the marker (work/<stage>.json with a fingerprint)."""
    try:
        rec = json.loads((out / "work" / "ingest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and "fingerprint" in rec and "stats" in rec


def check_out(out: Path, config_fp: str, overwrite: bool = False, force: bool = False) -> None:
    """Refuse an ``out`` this run must not write into (called before anything is written)."""
    if not os.path.lexists(out):
        if out.parent.exists() and not out.parent.is_dir():
            raise NotADirectoryError(
                f"output directory {out} (out / --out): its parent {out.parent} is a file; "
                "expected a directory or a new path"
            )
        return
    if not out.is_dir():
        raise NotADirectoryError(
            f"output directory {out} (out / --out) exists and is not a directory; expected a directory or a new path"
        )
    if not any(out.iterdir()):
        return
    marker = out / MARKER
    if marker.is_file():
        try:
            rec = json.loads(marker.read_text())
        except (OSError, ValueError):
            rec = None
        if not isinstance(rec, dict) or rec.get("tool") != TOOL:
            raise FileExistsError(
                f"output directory {out}: {MARKER} is not a {TOOL} marker; refusing to write "
                "into it: choose another --out"
            )
        if rec.get("config") != config_fp and not (overwrite or force):
            raise FileExistsError(
                f"output directory {out} was prepared from another config (fingerprint "
                f"{rec.get('config')}, this one {config_fp}); pass --overwrite to replace it, "
                "or choose another --out"
            )
        return
    if _legacy(out):
        return
    names = sorted(p.name for p in out.iterdir())
    raise FileExistsError(
        f"output directory {out} (out / --out) was not written by {TOOL} (no {MARKER}; it holds "
        f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); prepare writes only into a "
        "new or empty directory or one it prepared: remove it yourself or choose another --out"
    )


def claim(out: Path, config_fp: str) -> None:
    """Create ``out`` (checked by `check_out`) and write the marker naming this config."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MARKER, {"tool": TOOL, "config": config_fp})
