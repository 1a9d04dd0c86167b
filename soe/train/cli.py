"""The LightningCLI behind ``train.py``: links data facts (k, domain names, prior, tokenizer) into
the model so a checkpoint is self-describing, and the model's vocabulary into the data check.

`cli_main` is the command line (one-line errors, exit 2, ``--debug`` for tracebacks); `main` builds (and
runs) the CLI for Python callers. Resuming (``--ckpt_path``) is checked against the configuration first
(soe/train/resume.py); ``--take_from_checkpoint=true`` resumes with the checkpoint's model and data
settings instead, printing each one that differs from the configuration.
"""

from __future__ import annotations

import sys
import tempfile
import warnings

from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from soe.core.model import ModelConfig
from soe.core.soup import SoupConfig
from soe.data.datamodule import SoupDataModule
from soe.data.mixture import MixtureConfig
from soe.errors import pop_debug, run_entry
from soe.malloc import keep_freed_memory
from soe.train import resume
from soe.train.module import SoupModule
from soe.train.optim import OptimConfig
from soe.train.progress import StepProgressBar
from soe.train.runlock import RunLock
from soe.train.trainer_checks import check_machine, check_settings

PROG = "train.py"
# Config groups built from dataclasses: validated before anything is instantiated, errors named by key.
GROUPS = {"model.net": ModelConfig, "model.soup": SoupConfig, "model.optim": OptimConfig, "data.mixture": MixtureConfig}
_HELD: list[RunLock] = []  # run-directory locks of the fit in progress (soe/train/runlock.py)


def _release() -> None:
    while _HELD:
        _HELD.pop().release()


def _named(key: str, cls: type, e: Exception) -> str:
    """'ModelConfig.d_model=-4 must be positive' -> 'model.net.d_model=-4 must be positive'."""
    msg = str(e).replace(f"{cls.__name__}.", f"{key}.").replace(f"{cls.__name__} ", f"{key}: ")
    return msg if key in msg else f"{key}: {msg}"


class _OneLineErrors(LightningArgumentParser):
    """jsonargparse's errors on one line, so the last line of stderr names the key: its type errors span two
    lines, 'Parser key "model.net.d_model":' then 'Expected a <class 'int'>. Got value: abc'."""

    def error(self, message: str, ex: Exception | None = None):
        super().error(" ".join(ln.strip() for ln in str(message).splitlines() if ln.strip()), ex)


class SoupCLI(LightningCLI):
    def __init__(self, *args, parser_class: type = _OneLineErrors, **kwargs):
        super().__init__(*args, parser_class=parser_class, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.net.vocab_size", "data.vocab_size")
        parser.link_arguments("data.num_domains", "model.n_domains", apply_on="instantiate")
        for attr in ("domain_names", "prior", "tokenizer_sha256", "corpus_lock_id"):
            parser.link_arguments(f"data.{attr}", f"model.{attr}", apply_on="instantiate")
        parser.add_argument(
            "--take_from_checkpoint",
            type=bool,
            default=False,
            help="With --ckpt_path: resume with the checkpoint's model and data settings where they "
            "differ from the configuration (each is printed); without it such a resume is refused.",
        )

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        check_settings(self._sub(), args)  # before the seed is set and anything is built

    def instantiate_classes(self) -> None:
        check_machine(self._sub())  # a GPU, enough cores: here, so that a GPU config still parses on a laptop
        super().instantiate_classes()

    def _instantiate_trainer(self, config: dict, callbacks: list):
        """The step bar (soe/train/progress.py) unless the config names a progress bar or turns it off."""
        given = config.get("callbacks") or []
        given = [*(given if isinstance(given, list) else [given]), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            callbacks = [*callbacks, StepProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def _sub(self):
        return self.config[self.config.subcommand] if self.config.get("subcommand") else self.config

    def before_instantiate_classes(self) -> None:
        cfg = self._sub()
        for key, cls in GROUPS.items():
            value = cfg.get(key)
            if value is None:
                continue
            try:
                cls(**(value.as_dict() if hasattr(value, "as_dict") else dict(value)))
            except (TypeError, ValueError) as e:
                raise ValueError(_named(key, cls, e)) from e

    def _parse_ckpt_path(self) -> None:
        """LightningCLI 2.6 replaces the parsed model settings with a checkpoint file's hyper-parameters here,
        silently; `_check_resume` compares them instead (and applies them only with --take_from_checkpoint)."""

    def _check_resume(self, fn: TrainerFn) -> None:
        cfg, init = self._sub(), self.config_init[self.config.subcommand]
        given = cfg.get("ckpt_path")
        if not given:
            return
        given = str(given)
        if cfg.get("weights_only") is False:
            raise ValueError(
                "--weights_only=false: train.py reads checkpoints with weights_only=True only (a soe "
                "checkpoint holds tensors and plain values; anything else would run pickled code)"
            )
        self._ckpt_tmp = tempfile.TemporaryDirectory(prefix="soe-ckpt-")  # removed with the CLI object
        path = shown = resume.localize(given, self._ckpt_tmp)
        if path != given:  # downloaded: named by its URL
            shown = given
        elif given in ("last", "best", "hpc") or given.startswith("registry"):  # as Trainer.fit resolves them
            path = self.trainer._checkpoint_connector._parse_ckpt_path(
                fn, given, model_provided=True, model_connected=False
            )
            if path is None:  # 'last' with no checkpoint yet: Lightning warns and trains from scratch
                return
            path, shown = str(path), f"{given} ({path})"
        state = resume.check_file(path, shown)
        diffs = resume.differences(self._settings(), state, fn == TrainerFn.FITTING)
        settable = {k: v for k, v in diffs.items() if not resume.from_data(k)}
        if settable and cfg.get("take_from_checkpoint"):
            for key, (_, value) in settable.items():
                cfg[key] = value
            print(
                f"{PROG}: --take_from_checkpoint: resuming with the settings of {shown}: "
                + ", ".join(f"{k}={v[1]!r} (config: {v[0]!r})" for k, v in settable.items()),
                file=sys.stderr,
            )
            self.instantiate_classes()  # model, data and trainer rebuilt from the updated configuration
            init = self.config_init[self.config.subcommand]
            diffs = resume.differences(self._settings(), state, fn == TrainerFn.FITTING)
        if diffs:
            raise ValueError(resume.refusal(diffs, shown))
        # Lightning gets the checked local file, and reads it with weights_only=True (no pickled code runs).
        init["ckpt_path"], init["weights_only"] = path, True

    def _settings(self) -> dict:
        return resume.settings(dict(self.model.hparams), dict(self.datamodule.hparams))

    def before_fit(self) -> None:
        steps = self.trainer.max_steps
        if steps is None or steps <= 0:  # refused before any log or checkpoint directory is written
            raise ValueError(f"trainer.max_steps={steps}: the cosine schedule needs a positive number of steps")
        self._check_resume(TrainerFn.FITTING)
        if self.trainer.global_rank == 0:  # one training per checkpoint directory (the other ranks are its own)
            dirs = {str(cb.dirpath) for cb in self.trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)}
            for d in sorted(dirs):
                _HELD.append(RunLock(d).acquire())

    def after_fit(self) -> None:
        _release()

    def before_validate(self) -> None:
        self._check_resume(TrainerFn.VALIDATING)

    def before_test(self) -> None:
        self._check_resume(TrainerFn.TESTING)

    def before_predict(self) -> None:
        self._check_resume(TrainerFn.PREDICTING)


def main(args: list[str] | None = None, run: bool = True, prog: str | None = None) -> SoupCLI:
    return SoupCLI(
        SoupModule,
        SoupDataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
        parser_kwargs={"prog": prog} if prog else None,
    )


def cli_main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """``train.py`` (and ``soe train``, with ``prog``: the name its messages give): a bad input prints one line ``train.py: error: ...`` and returns 2 (``--debug``: the
    traceback); jsonargparse's own parse errors exit 2 with its usage above the error line."""
    keep_freed_memory()  # an entry point: freed memory stays in the process (soe/malloc.py)
    argv, debug = pop_debug(list(sys.argv[1:] if argv is None else argv))
    with warnings.catch_warnings():  # LightningCLI warns when args (argv without --debug) differ from sys.argv
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        return run_entry(prog, lambda: _run(argv, prog), debug)


def _run(argv: list[str], prog: str) -> int:
    try:
        main(argv, prog=None if prog == PROG else prog)
    except MisconfigurationException as e:  # Lightning's word for a bad trainer setting
        raise ValueError(str(e)) from e
    finally:
        _release()
    return 0
