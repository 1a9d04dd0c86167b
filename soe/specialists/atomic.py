"""Overwrite-safe output directories: `atomic_dir`, `check_out`, `recover`.

Every writer of a model directory (an export, a merge, a fine-tuning run) builds it in a hidden temporary
directory beside ``out`` (.OUT.tmp-*) and renames it into place when complete; an overwrite first moves the
old one aside (.OUT.old-*), so the swap is two renames and a killed process leaves ``out`` old or new, or the
old one in .OUT.old-*, which `recover` puts back. `check_out` refuses, before any work, an ``out`` this
project did not write. Split from export.py because merging and fine-tuning use it without exporting.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from soe.checks import check_out_parent
from soe.fileio import disk_full

SOE_FILE = "soe_specialist.json"  # a specialist's metadata (export.py), the marker of a directory soe may replace
LEFTOVER = re.compile(r"\..+\.(tmp|old)-[0-9a-f]{8}")  # .OUT.tmp-*: being written; .OUT.old-*: swapped out


def _leftovers(out: Path, kind: str) -> list[Path]:
    """Hidden directories an export to ``out`` leaves beside it: ``tmp`` (being written), ``old`` (swapped out)."""
    return sorted(out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"), key=lambda q: q.stat().st_mtime)


def interrupted(out: str | os.PathLike) -> bool:
    """Whether an export to ``out`` was killed between the two renames of its swap."""
    return bool(_leftovers(Path(out), "old"))


def recover(out: str | os.PathLike) -> None:
    """Repair what an export killed part-way left beside ``out``.

    The overwrite swap is two renames (out → .out.old-*, then the new .out.tmp-* → out). Killed between
    them, ``out`` is missing and the previous model waits in .out.old-*: it is renamed back. Then every
    .out.tmp-* (never finished, or finished but not swapped in) and .out.old-* is deleted. Called before
    every export to ``out`` and by `soe.load` when ``out`` is missing. Not safe against a concurrent
    export to the same ``out`` (two writers of one directory are a user error anyway)."""
    out = Path(out)
    old = _leftovers(out, "old")
    if old and not os.path.lexists(out):
        os.replace(old.pop(), out)  # the most recent previous model
    for d in _leftovers(out, "tmp") + old:
        shutil.rmtree(d, ignore_errors=True)


def check_out(out: str | os.PathLike, overwrite: bool = False, marker: str = SOE_FILE) -> None:
    """Refuse an output path that an export must not replace (called before any work is done).

    An existing ``out`` is replaced only with ``overwrite`` and only if this project wrote it (it holds
    ``marker`` (soe_specialist.json; a finetune run: finetune.json) or it is an empty directory: --overwrite
    never deletes anything else."""
    out = Path(out)
    if not os.path.lexists(out):
        check_out_parent(out)
        return
    if not overwrite:
        raise FileExistsError(f"output directory {out} already exists; pass --overwrite (overwrite=True) to replace it")
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a directory; refusing to replace it")
    if (out / marker).is_file() or not any(out.iterdir()):
        return
    names = sorted(q.name for q in out.iterdir())
    raise FileExistsError(
        f"output directory {out} was not written by soe (no {marker}; it holds "
        f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); --overwrite replaces only "
        "soe specialist directories: remove it yourself or choose another --out"
    )


@contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False, marker: str = SOE_FILE):
    """Yield a fresh temporary directory beside ``out``; on success rename it to ``out``.

    Refuses ``out`` as `check_out` does. On any error the temporary directory is removed and ``out`` is
    left as it was; a process killed at any point leaves ``out`` old or new, or (between the two renames
    of an overwrite) the old one in .out.old-*, which `recover` puts back."""
    out = Path(out)
    recover(out)
    check_out(out, overwrite, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old = None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():  # some writers (safetensors) create 0600 files; exports are meant to be shared
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)
        if os.path.lexists(out):  # overwrite: move the old one aside first so the swap is two renames
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException as e:
        if old is not None and old.exists() and not os.path.lexists(out):
            os.replace(old, out)  # the second rename failed: put the previous model back
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(e):  # e.g. safetensors' "I/O error: ... (os error 28)", raised from the middle of a file
            raise OSError(
                f"output {out} (--out): cannot be written ({disk_full(e)}); nothing was written, "
                f"{'the previous one is unchanged' if os.path.lexists(out) else 'it does not exist'}"
            ) from None
        raise
