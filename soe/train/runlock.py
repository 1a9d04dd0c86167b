"""One training per checkpoint directory: ``train.py fit`` holds ``<dirpath>/train.lock`` while it runs.

The lock is an advisory ``flock`` on that file, which records the holder's pid, host and start time. A
second ``fit`` on the same directory finds it held and is refused, naming the first one's pid. The kernel
drops the lock when its process ends, however it ends, so a lock file left by a killed training (its pid
dead) is stale and simply taken over; a normal exit also deletes the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "train.lock"


class RunDirInUse(ValueError):
    """Another live process trains into this directory."""


class RunLock:
    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.path = self.dir / LOCK_FILE
        self._fd: int | None = None
        self._made_dir = False

    def acquire(self) -> "RunLock":
        if os.path.lexists(self.dir) and not self.dir.is_dir():
            raise NotADirectoryError(
                f"checkpoint directory {self.dir} (ModelCheckpoint dirpath) exists and is not a directory"
            )
        self._made_dir = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read(fd)
            os.close(fd)
            self._undo_dir()
            raise RunDirInUse(
                f"checkpoint directory {self.dir} is in use by another training (pid "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')}, started "
                f"{holder.get('started', '?')}; {self.path}): wait for it to end or set another "
                "ModelCheckpoint dirpath"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            (
                json.dumps(
                    {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
                )
                + "\n"
            ).encode(),
            0,
        )
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still locked by us: no other process can hold it now
        finally:
            os.close(self._fd)
            self._fd = None
        self._undo_dir()

    def _undo_dir(self) -> None:
        """A directory the lock created and nothing else used is removed again (a refusal leaves no trace)."""
        if self._made_dir:
            try:
                self.dir.rmdir()
            except OSError:
                pass
            self._made_dir = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        rec = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}
