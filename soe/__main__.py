"""``python -m soe ...``: the specialist command line (see soe/cli.py)."""

from soe.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
