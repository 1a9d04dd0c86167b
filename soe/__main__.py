"""``python -m soe ...``: the ``soe`` command line (see soe/cli/__init__.py)."""

from soe.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
