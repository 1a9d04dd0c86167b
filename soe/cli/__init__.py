"""``soe`` / ``python -m soe``: the one command line, from prepared data to served specialists.

    soe prepare --config data_prep/configs/fixture.yaml --out data/fixture      (data_prep/README.md)
    soe train fit --config configs/tiny.yaml [--trainer.max_steps 50]           (LightningCLI; docs/training.md)
    soe estimate-weights CKPT --texts inhouse.jsonl [--refine] --out weights.json
    soe instantiate CKPT --weights weights.json --out my-specialist [--format hf|soe] [--overwrite]
    soe evaluate --specialist my-specialist --ckpt CKPT --weights weights.json --prior --json eval.json
    soe evaluate --specialist my-specialist --texts my-eval-set.jsonl
    soe generate my-specialist --prompt "Once upon a time" --max-tokens 80
    soe finetune my-specialist --texts team.jsonl --out ft/team [--lora-rank 8]   (geometric checkpoints)
    soe merge --config merge.yaml --out merged/          (docs/merging.md)
    soe serve CKPT --port 8000 [--specialist name=weights.json]   (docs/serving.md)

CKPT is a Lightning checkpoint, a directory holding last.ckpt, or an http(s):// URL of one (downloaded
once into torch.hub's cache, loaded with weights_only=True); --data names its prepared-data directory
(estimate-weights also accepts the prepared directory itself instead of CKPT).
User errors print one line ``soe: error: ...`` and exit 2 (``--debug`` shows the traceback).

One module per command group (pipeline, estimate, specialists, finetune, merge, serve), each building its own
subparsers from the shared types and options of soe/cli/types.py.
"""

from __future__ import annotations

import argparse
import sys

from soe.cli import estimate, finetune, merge, pipeline, serve, specialists
from soe.errors import run_entry
from soe.malloc import keep_freed_memory

COMMANDS = {
    "estimate-weights": estimate.cmd_estimate,
    **specialists.COMMANDS,
    "finetune": finetune.cmd_finetune,
    "merge": merge.cmd_merge,
    "serve": serve.cmd_serve,
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="soe", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    pipeline.add_parsers(sub)
    estimate.add_parser(sub)
    specialists.add_parsers(sub)
    finetune.add_parser(sub)
    merge.add_parser(sub)
    serve.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # an entry point: freed memory stays in the process (soe/malloc.py)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in pipeline.PASSTHROUGH:  # prepare / train: their own parsers read the rest
        return pipeline.run(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    return run_entry("soe", lambda: COMMANDS[args.cmd](args), args.debug)
