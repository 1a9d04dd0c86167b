"""Harness of the table-driven bad-input tests (tests/test_bad_inputs_*.py).

Every entry point must answer a bad input with a non-zero exit, one line ``<prog>: error: ...`` naming the
input (the last line of stderr; argparse may print its usage above it), no traceback, and no file changed
or deleted. A row is ``(entry, argv, expected message fragment)``; ``entry`` names one of `ENTRIES`.
Entries run in-process (a subprocess per row would cost seconds of imports each).
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

# entry name -> (module, function taking argv and returning an exit status)
ENTRIES = {
    "soe": ("soe.cli", "main"),
    "train": ("soe.train.cli", "cli_main"),
    "experiment": ("studies.experiments.experiment", "main"),
    "prepare": ("data_prep.prepare", "main"),
}


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` -> sha256 of its bytes (directories as markers), to show nothing changed."""
    snap = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for p in sorted([root, *root.rglob("*")]):
            snap[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return snap


def call(entry: str, argv: list[str]) -> int:
    mod, fn = ENTRIES[entry]
    try:
        code = getattr(importlib.import_module(mod), fn)(list(argv))
    except SystemExit as e:  # argparse and jsonargparse exit on their own errors
        code = e.code
    return 0 if code is None else code if isinstance(code, int) else 1


def assert_refused(capsys, entry: str, argv: list[str], expect: str, watch: tuple[Path, ...] = ()) -> str:
    """Run one bad input; returns the error line after checking the contract above."""
    before = snapshot(*watch)
    capsys.readouterr()
    code = call(entry, argv)
    out, err = capsys.readouterr()
    assert code != 0, f"{entry} {argv}: exit 0, expected a refusal\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert "Traceback" not in err + out, f"{entry} {argv}: traceback without --debug:\n{err[-3000:]}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, f"{entry} {argv}: nothing on stderr"
    last = lines[-1]
    assert "error" in last.lower(), f"{entry} {argv}: last stderr line is not an error line: {last!r}\n{err[-2000:]}"
    assert expect.lower() in last.lower(), f"{entry} {argv}: expected {expect!r} in the error line, got {last!r}"
    assert snapshot(*watch) == before, f"{entry} {argv}: files changed or deleted under {watch}"
    return last
