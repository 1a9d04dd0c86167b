"""The argument types and options shared by the ``soe`` subcommands (each module of soe/cli imports them here).

The types themselves are `soe.checks` (their errors name the flag and the expected value; the library's
functions use the same checks), so a command module needs nothing passed in to build its parser.
"""

from __future__ import annotations

import argparse

from soe.checks import (
    check_out_file,
    device_arg,
    nonneg_float,
    nonneg_int,
    open_fraction,
    positive_float,
    positive_int,
    seed_arg,
    temperature_arg,
    token_count_arg,
    weight_floor,
)

__all__ = [
    "check_out_file",
    "common",
    "device_arg",
    "nonneg_float",
    "nonneg_int",
    "open_fraction",
    "positive_float",
    "positive_int",
    "seed_arg",
    "temperature_arg",
    "token_count_arg",
    "weight_floor",
]


def common(p: argparse.ArgumentParser) -> None:
    """--data, --device and --debug: the options of every model-loading subcommand."""
    p.add_argument("--data", help="prepared-data directory of the checkpoint (meta.json, tokenizer, centroids)")
    p.add_argument(
        "--device", type=device_arg, help="torch device: cpu, cuda, cuda:N, mps (default: cuda if available, else cpu)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
