"""The training bar counts steps of trainer.max_steps with loss, tokens/s and an ETA (soe/train/progress.py)."""

from __future__ import annotations

from pathlib import Path

from soe.train.cli import main as train_main
from soe.train.progress import StepProgressBar

ROOT = Path(__file__).resolve().parents[1]


def _args(prepared, tmp_path, *extra):
    return [
        "fit",
        "--config",
        str(ROOT / "configs/tiny.yaml"),
        f"--data.data_dir={prepared}",
        "--model.net.vocab_size=64",
        "--trainer.max_steps=6",
        "--trainer.val_check_interval=3",
        "--trainer.log_every_n_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp_path}/runs",
        f"--trainer.callbacks.init_args.dirpath={tmp_path}/ck",
        *extra,
    ]


def test_the_bar_counts_steps_of_max_steps(prepared, tmp_path, capsys):
    cli = train_main(_args(prepared, tmp_path))
    bars = [c for c in cli.trainer.callbacks if isinstance(c, StepProgressBar)]
    assert len(bars) == 1  # added by soe/train/cli.py: the config names no bar
    bar = bars[0].train_progress_bar
    assert (bar.total, bar.n, bar.desc) == (6, 6, "train: ")
    shown = str(bar)
    assert "step 6/6" in shown and "ETA" in shown and "tok/s=" in shown and "loss=" in shown, shown
    out = capsys.readouterr().out
    assert "step 6/6" in out and "Epoch 0" not in out


def test_a_resumed_bar_starts_at_the_checkpoint(prepared, tmp_path):
    train_main(_args(prepared, tmp_path, "--trainer.enable_progress_bar=false"))
    cli = train_main(
        [a.replace("max_steps=6", "max_steps=8") for a in _args(prepared, tmp_path)] + ["--ckpt_path=last"]
    )
    bar = next(c for c in cli.trainer.callbacks if isinstance(c, StepProgressBar)).train_progress_bar
    assert (bar.total, bar.initial, bar.n) == (8, 6, 8)


def test_no_bar_when_turned_off(prepared, tmp_path):
    cli = train_main(_args(prepared, tmp_path, "--trainer.enable_progress_bar=false"))
    assert not any(isinstance(c, StepProgressBar) for c in cli.trainer.callbacks)
