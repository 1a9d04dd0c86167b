"""``soe prepare`` and ``soe train``: the two pipeline commands, each handed whole to its own parser.

    soe prepare --config data_prep/configs/fixture.yaml --out data/fixture     # = python -m data_prep.prepare
    soe train fit --config configs/tiny.yaml [--trainer.max_steps 50 …]      # = python train.py fit (LightningCLI)

Their arguments, help and errors are those of data_prep/prepare.py and soe/train/cli.py (every config field of
``soe train`` overridable as ``--section.field value``); only the program name in messages reads ``soe …``.

``data_prep`` is the repository's, not the package's: ``pip install`` installs ``soe`` alone, and data
preparation (the corpus builders, their configs, locks and fixture) stays in the checkout. ``soe prepare`` finds
it on the import path, else in the checkout that holds this ``soe`` (an editable install, as ``make`` makes) or in
the current directory; without one it says so in one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

PASSTHROUGH = {
    "prepare": "raw text -> tokenizer -> domains -> token shards (python -m data_prep.prepare)",
    "train": "pretrain a soup or a dense baseline with LightningCLI (python train.py): soe train fit --config CONFIG",
}


def add_parsers(sub) -> None:
    """Listed in ``soe --help``; `run` parses their arguments (argparse would stop at their options)."""
    for name, help in PASSTHROUGH.items():
        sub.add_parser(name, help=help, add_help=False)


def run(cmd: str, argv: list[str]) -> int:
    """``soe <cmd> ARGV``: the prepare or train entry point with ``argv``, its exit status."""
    if cmd == "prepare":
        if not _find_data_prep():
            print(
                "soe prepare: error: data preparation (data_prep/) comes with the repository, not the installed "
                "package: run it from a checkout (git clone, then pip install -e . or make)",
                file=sys.stderr,
            )
            return 2
        from data_prep.prepare import main

        return main(argv, prog="soe prepare")
    from soe.train.cli import cli_main

    return cli_main(argv, prog="soe train")


def _find_data_prep() -> bool:
    """Whether ``data_prep`` is importable, putting the checkout that holds it on sys.path when needed."""
    import importlib.util

    if importlib.util.find_spec("data_prep") is not None:
        return True
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "data_prep" / "prepare.py").is_file():
            sys.path.insert(0, str(root))
            return True
    return False
