"""``soe prepare`` and ``soe train``: the same arguments, output and errors as ``python -m data_prep.prepare`` and
``python train.py``, under the ``soe`` name; the public fine-tune function lives in the library (issue 28)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from soe.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for cmd in (
        "prepare",
        "train",
        "estimate-weights",
        "instantiate",
        "evaluate",
        "generate",
        "finetune",
        "merge",
        "serve",
    ):
        assert cmd in out, cmd


def test_prepare_errors_are_one_line_named_soe_prepare(tmp_path, capsys):
    assert main(["prepare", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("soe prepare: error: ") and "missing.yaml" in err[0], err


def test_prepare_usage_names_soe_prepare(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prepare"])
    assert e.value.code == 2 and "usage: soe prepare" in capsys.readouterr().err


def test_train_overrides_any_config_field(capsys):
    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                "fit",
                "--config",
                str(ROOT / "configs/tiny.yaml"),
                "--model.net.d_model=96",
                "--trainer.max_steps=3",
                "--print_config",
            ]
        )
    assert e.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["net"]["d_model"] == 96 and cfg["trainer"]["max_steps"] == 3


def test_train_errors_are_one_line_named_soe_train(capsys):
    code = main(["train", "fit", "--config", str(ROOT / "configs/tiny.yaml"), "--model.net.d_model=-4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == "soe train: error: model.net.d_model=-4 must be positive", err


def test_finetune_is_a_library_function():
    import soe
    from soe.specialists.finetune_run import run_finetune

    assert soe.finetune.__doc__ and run_finetune.__module__ == "soe.specialists.finetune_run"
