"""``soe prepare`` and ``soe train``: the two pipeline commands, each handed whole to its own parser.

    soe prepare --config data_prep/configs/fixture.yaml --out data/fixture     # = python -m data_prep.prepare
    soe train fit --config configs/tiny.yaml [--trainer.max_steps 50 …]      # = python train.py fit (LightningCLI)

Their arguments, help and errors are those of data_prep/prepare.py and soe/train/cli.py (every config field of
``soe train`` overridable as ``--section.field value``); only the program name in messages reads ``soe …``.
"""

from __future__ import annotations

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
        from data_prep.prepare import main

        return main(argv, prog="soe prepare")
    from soe.train.cli import cli_main

    return cli_main(argv, prog="soe train")
