"""Fault injection for the write windows of the entry points (tests/test_fault_injection.py).

`run_killed` forks the test process (no second import of torch: a child costs milliseconds) and, in the child,
wraps the file operations on paths under ``root`` — open/os.open for writing, each write() to such a file,
os.replace/os.rename, safetensors' save_file — then runs an entry point of `tests/bad_inputs.ENTRIES`. The
child SIGKILLs itself at its ``at``-th operation, after doing half of it where that can be half done: a write
writes half its bytes, save_file leaves half the tensors file, an open leaves the file created and empty, a
rename does not happen. ``at`` = 0 never kills and returns the list of operations (the trace).
"""

from __future__ import annotations

import builtins
import io
import os
import signal
import tempfile
import time
from pathlib import Path

from bad_inputs import call

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _Writer:
    """A file opened for writing whose every write() is one operation."""

    def __init__(self, f, inj, path):
        self._f, self._inj, self._path = f, inj, path

    def write(self, data):
        def half():
            self._f.write(data[: len(data) // 2])
            self._f.flush()

        self._inj.tick("write", self._path, half)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __iter__(self):
        return iter(self._f)


class Injector:
    def __init__(self, root: Path, at: int, trace_fd: int | None):
        self.root, self.at, self.trace_fd, self.n = os.path.realpath(root) + os.sep, at, trace_fd, 0

    def inside(self, path) -> bool:
        try:
            return os.path.realpath(os.fspath(path)).startswith(self.root)
        except TypeError:  # a file descriptor
            return False

    def tick(self, op: str, path, half=None) -> None:
        self.n += 1
        if self.trace_fd is not None:
            os.write(self.trace_fd, f"{op} {os.path.relpath(os.fspath(path), self.root)}\n".encode())
        if self.n == self.at:
            if half is not None:
                half()
            os.kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:
        import safetensors.torch as st

        real_open, real_os_open, real_replace, real_rename, real_save = (
            io.open,
            os.open,
            os.replace,
            os.rename,
            st.save_file,
        )

        def open_(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax+") and self.inside(file):
                self.tick("open", file)
                return _Writer(f, self, file)
            return f

        def os_open(path, flags, *args, **kwargs):
            fd = real_os_open(path, flags, *args, **kwargs)
            if flags & WRITE_FLAGS and self.inside(path):
                self.tick("os.open", path)
            return fd

        def mover(real, name):
            def move(src, dst, *args, **kwargs):
                if self.inside(src) or self.inside(dst):
                    self.tick(name, dst)
                return real(src, dst, *args, **kwargs)

            return move

        def save_file(tensors, filename, *args, **kwargs):
            if self.inside(filename):

                def half():
                    real_save(tensors, filename, *args, **kwargs)
                    os.truncate(filename, os.path.getsize(filename) // 2)

                self.tick("save_file", filename, half)
            return real_save(tensors, filename, *args, **kwargs)

        builtins.open = io.open = open_
        os.open, os.replace, os.rename, st.save_file = (
            os_open,
            mover(real_replace, "replace"),
            mover(real_rename, "rename"),
            save_file,
        )


def run_killed(
    entry: str, argv: list[str], root: Path, at: int, timeout: float = 120.0, tempdir: str | None = None
) -> tuple[int, list[str]]:
    """Run ``entry argv`` in a forked child killed at its ``at``-th file operation under ``root``.
    Returns (exit status, or -9 if killed; the operations done, for ``at`` = 0). ``tempdir``: the child's
    system temporary directory (another file system shows writers that copy instead of renaming)."""
    import sys

    trace = tempfile.NamedTemporaryFile(prefix="soe-faults-", suffix=".txt", delete=False)
    trace.close()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            import torch

            torch.set_num_threads(1)
            if tempdir is not None:
                tempfile.tempdir = tempdir
            fd = os.open(trace.name, os.O_WRONLY | os.O_APPEND) if at == 0 else None
            Injector(root, at, fd).install()
            code = call(entry, argv)
        except BaseException:  # noqa: BLE001 - report as an exit status
            code = 71
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"{entry} {argv} (kill at {at}) ran over {timeout} s")
        time.sleep(0.02)
    ops = Path(trace.name).read_text().splitlines()
    os.unlink(trace.name)
    return (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)), ops


def sample(n_ops: int, k: int) -> list[int]:
    """k kill points spread over 1..n_ops (first and last included)."""
    if n_ops <= k:
        return list(range(1, n_ops + 1))
    return sorted({1 + round(i * (n_ops - 1) / (k - 1)) for i in range(k)})
