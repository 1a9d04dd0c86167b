"""State files written atomically and read back with errors that name them.

A JSON/YAML state file (run.json, launch.json, weights.json, results.json, meta.json, ...) is written to a
unique temporary name in the same directory and renamed over the target: a crash leaves the old file or the
new one, never a truncated one. Reading a corrupt file (or one giving a key twice) raises a ValueError naming
the file and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from pathlib import Path
from typing import Any

from soe.checks import no_duplicate_keys

FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # no space left, over the file size limit, over quota


def disk_full(e: BaseException) -> str | None:
    """Why ``e`` is a full disk (an OSError, or a library's error quoting 'os error 28'), else None."""
    if isinstance(e, OSError) and e.errno in FULL:
        return os.strerror(e.errno)
    return next((os.strerror(n) for n in FULL if f"os error {n})" in str(e)), None)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and one rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if disk_full(e):
            raise OSError(e.errno, f"{path}: cannot be written ({disk_full(e)}); it was left as it was") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse ``path``; a missing file raises FileNotFoundError, a corrupt one a ValueError naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} not found") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: corrupt {what} (not UTF-8 text: {e.reason})") from None
    try:
        return json.loads(text, object_pairs_hook=no_duplicate_keys(f"{path}: {what}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt {what}, not valid JSON ({e})") from None
