"""How every entry point reports a bad input: one line naming it (what, where from, what was expected),
exit status 2, and a traceback only with ``--debug``.

``train.py``, ``soe`` / ``python -m soe``, ``python -m studies.experiments`` and ``python -m data_prep.prepare`` all
end in `run_entry`. The errors caught are the ones a user's input causes (a missing or corrupt file, a value out
of range, an optional package not installed); anything else is a bug and keeps its traceback. Error handling
only: each entry point sets the allocator itself, as its own first step (`soe.malloc.keep_freed_memory`).
"""

from __future__ import annotations

import sys
from typing import Callable

# OSError covers FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (multi-line messages joined with '; ')."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return "; ".join(lines) or type(e).__name__


def pop_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug``, and whether it was there (for parsers that do not know the flag)."""
    return [a for a in argv if a != "--debug"], "--debug" in argv


def run_entry(prog: str, fn: Callable[[], int | None], debug: bool) -> int:
    """Run ``fn``; a user error prints ``<prog>: error: <message>`` and returns 2 (raised with ``debug``)."""
    try:
        return fn() or 0
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
