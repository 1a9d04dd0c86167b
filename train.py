"""Train a Soup-of-Experts (or a dense baseline) with LightningCLI.

    python train.py fit --config configs/tiny.yaml
    python train.py fit --config configs/tiny.yaml --ckpt_path last     # resume
    python train.py fit --config configs/demo-cpu.yaml --print_config

A bad input (config value, prepared data, checkpoint) prints one line ``train.py: error: ...`` and exits 2;
``--debug`` shows the traceback instead.

Resuming (``--ckpt_path last``, a file, or an http(s)/file URL, downloaded to a temporary file and read with
weights_only=True) refuses a configuration whose model or data settings differ from the checkpoint's, listing
the keys; ``--take_from_checkpoint=true`` resumes with the checkpoint's values instead (and prints them).
``trainer.max_steps``, logging, checkpointing and loader settings may change on resume.
"""

import sys

from soe.train.cli import cli_main

if __name__ == "__main__":
    sys.exit(cli_main())
