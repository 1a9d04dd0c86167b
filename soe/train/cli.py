"""The LightningCLI behind ``train.py``: links data facts (k, domain names, prior, tokenizer) into
the model so a checkpoint is self-describing, and the model's vocabulary into the data check."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from soe.data.datamodule import SoupDataModule
from soe.train.module import SoupModule


class SoupCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.net.vocab_size", "data.vocab_size")
        parser.link_arguments("data.num_domains", "model.n_domains", apply_on="instantiate")
        for attr in ("domain_names", "prior", "tokenizer_sha256"):
            parser.link_arguments(f"data.{attr}", f"model.{attr}", apply_on="instantiate")


def main(args: list[str] | None = None, run: bool = True) -> SoupCLI:
    return SoupCLI(SoupModule, SoupDataModule, save_config_kwargs={"overwrite": True}, args=args, run=run,
                   auto_configure_optimizers=False)
