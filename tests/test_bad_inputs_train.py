"""Bad inputs of train.py: each is refused with one line naming it, no traceback, and nothing written to the
prepared data or the checkpoint directory. Plus the harmful case of issue 14: a resume whose configuration
differs from the checkpoint trained the checkpoint's model and exited 0; and the opt-in that allows it."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from bad_inputs import assert_refused
from conftest import make_prepared

from soe.train.checkpoint import prepared_data
from soe.train.cli import cli_main, main

ROOT = Path(__file__).resolve().parents[1]


def base(prepared: Path, ckpt_dir: Path, runs: Path, steps: int = 2) -> list[str]:
    return [
        "fit",
        "--config",
        str(ROOT / "configs/tiny.yaml"),
        f"--data.data_dir={prepared}",
        "--model.net.vocab_size=64",
        f"--trainer.max_steps={steps}",
        "--trainer.val_check_interval=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={runs}",
        f"--trainer.callbacks.init_args.dirpath={ckpt_dir}",
        "--trainer.callbacks.init_args.every_n_train_steps=2",
    ]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One tiny trained checkpoint (2 steps) on the synthetic prepared dir, and a directory of broken inputs."""
    root = tmp_path_factory.mktemp("train_bad")
    prepared = make_prepared(root / "prepared")
    ckpt_dir = root / "ck"
    assert cli_main(base(prepared, ckpt_dir, root / "runs")) == 0
    ckpt = ckpt_dir / "last.ckpt"
    bad = root / "bad"
    bad.mkdir()

    def broken(name: str, edit) -> Path:
        shutil.copytree(prepared, bad / name)
        edit(bad / name)
        return bad / name

    broken("garbage_meta", lambda d: (d / "meta.json").write_text("{oops"))
    broken("no_shard", lambda d: (d / "dom1" / "train.bin").unlink())
    broken(
        "truncated_shard",
        lambda d: (d / "dom0" / "train.bin").write_bytes((d / "dom0" / "train.bin").read_bytes()[:1001]),
    )
    broken("garbage_shard", lambda d: np.full(1500, 60000, np.uint16).tofile(d / "dom2" / "val.bin"))
    make_prepared(bad / "other_prior", sizes=[6000, 4000, 3000])  # the same tokenizer and domains, other counts
    (bad / "truncated.ckpt").write_bytes(ckpt.read_bytes()[:3000])
    (bad / "garbage.ckpt").write_bytes(bytes(range(256)) * 20)
    torch.save({"foo": 1}, bad / "foreign.ckpt")
    state = torch.load(ckpt, weights_only=True)
    router = "soup.router.net.0.weight"
    state["state_dict"][router] = state["state_dict"][router][:, :2].clone()
    torch.save(state, bad / "reshaped.ckpt")
    state["payload"] = _Pickled()
    torch.save(state, bad / "pickled_code.ckpt")
    return SimpleNamespace(prepared=prepared, ckpt_dir=ckpt_dir, ckpt=ckpt, bad=bad, root=root)


class _Pickled:
    """Runs code when unpickled (a checkpoint from an untrusted source)."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('pickled code ran')",))


ROWS = {  # name: (extra train.py arguments, expected fragment of the error line)
    "negative_d_model": (["--model.net.d_model=-4"], "model.net.d_model=-4 must be positive"),
    "heads_not_dividing": (["--model.net.n_head=3"], "model.net.d_model=64 is not divisible by n_head=3"),
    "zero_lr": (["--model.optim.lr=0"], "model.optim.lr=0.0 must be > 0"),
    "beta_out_of_range": (["--model.optim.beta2=1.5"], "model.optim.beta2=1.5"),
    "unknown_router_output": (["--model.soup.router_output=sigmoid"], "model.soup.router_output='sigmoid'"),
    "unknown_soup_option": (["--model.soup.n_exprts=4"], "unrecognized arguments: --model.soup.n_exprts=4"),
    "not_an_int": (["--model.net.d_model=wide"], "\"model.net.d_model\": Expected a <class 'int'>"),
    "bad_mixture": (["--data.mixture.concentration=-1"], "data.mixture.concentration=-1.0"),
    "negative_max_steps": (["--trainer.max_steps=-5"], "max_steps"),
    "endless_max_steps": (["--trainer.max_steps=-1"], "trainer.max_steps=-1: the cosine schedule needs a positive"),
    "missing_data_dir": (
        ["--data.data_dir={bad}/nowhere"],
        "data.data_dir={bad}/nowhere: {bad}/nowhere/meta.json not found",
    ),
    "garbage_meta": (["--data.data_dir={bad}/garbage_meta"], "garbage_meta/meta.json: corrupt prepared-data metadata"),
    "missing_shard": (["--data.data_dir={bad}/no_shard"], "no_shard/dom1/train.bin for domain 'dom1' is missing"),
    "truncated_shard": (["--data.data_dir={bad}/truncated_shard"], "truncated_shard/dom0/train.bin: 1001 bytes"),
    "garbage_shard": (["--data.data_dir={bad}/garbage_shard"], "dom2/val.bin holds token id 60000 >= vocab_size=64"),
    "vocab_mismatch": (
        ["--model.net.vocab_size=100"],
        "vocab_size=64 in meta.json, but the model expects vocab_size=100",
    ),
    "seq_len_too_long": (["--data.seq_len=4000", "--model.net.max_seq_len=4000"], "data.seq_len=4000"),
    "missing_ckpt": (["--ckpt_path={bad}/nope.ckpt"], "--ckpt_path {bad}/nope.ckpt: no such checkpoint file"),
    "truncated_ckpt": (["--ckpt_path={bad}/truncated.ckpt"], "truncated.ckpt: not a readable checkpoint"),
    "garbage_ckpt": (["--ckpt_path={bad}/garbage.ckpt"], "garbage.ckpt: not a readable checkpoint"),
    "foreign_ckpt": (["--ckpt_path={bad}/foreign.ckpt"], "not a soe training checkpoint"),
    "reshaped_ckpt": (["--ckpt_path={bad}/reshaped.ckpt"], "soup.router.net.0.weight has shape (32, 2)"),
    "pickled_code_ckpt": (
        ["--ckpt_path={bad}/pickled_code.ckpt"],
        "refused: checkpoints are loaded with weights_only=True",
    ),
    "pickled_code_url": (
        ["--ckpt_path=file://{bad}/pickled_code.ckpt"],
        "file://{bad}/pickled_code.ckpt: holds pickled",
    ),
    "unreachable_url": (["--ckpt_path=file://{bad}/gone.ckpt"], "could not download it"),
    "unsafe_load": (["--ckpt_path={ckpt}", "--weights_only=false"], "--weights_only=false: train.py reads"),
    "remote_scheme": (["--ckpt_path=s3://bucket/last.ckpt"], "only local files and http(s)/ftp/file URLs"),
    "resume_other_data_seed": (
        ["--ckpt_path={ckpt}", "--data.seed=7"],
        "data.seed: 7 on the command line/config, 1234 in the checkpoint",
    ),
    "resume_other_data": (["--ckpt_path={ckpt}", "--data.data_dir={bad}/other_prior"], "model.prior: [0.4615"),
    "resume_other_soup": (
        ["--ckpt_path=last", "--model.soup.n_experts=2"],
        "model.soup.n_experts: 2 on the command line/config, 4",
    ),
}


@pytest.mark.parametrize("name", ROWS)
def test_bad_input_is_refused(name, env, tmp_path, capsys):
    extra, expect = ROWS[name]
    fmt = {"bad": env.bad, "ckpt": env.ckpt}
    argv = base(env.prepared, env.ckpt_dir, tmp_path / "runs", steps=4) + [a.format(**fmt) for a in extra]
    assert_refused(capsys, "train", argv, expect.format(**fmt), watch=(env.prepared, env.ckpt_dir))


def test_resume_with_other_model_settings_is_refused(env, tmp_path):
    """Issue 14, harmful case 2: this trained the checkpoint's d_model=64 model, exited 0, and said nothing."""
    args = base(env.prepared, env.ckpt_dir, tmp_path / "runs", steps=4) + [
        "--model.net.d_model=128",
        "--model.optim.lr=0.01",
        f"--ckpt_path={env.ckpt}",
    ]
    with pytest.raises(
        ValueError,
        match=r"model\.net\.d_model: 128 on the command line/config, 64 in the checkpoint; "
        r"model\.optim\.lr: 0\.01 on the command line/config, 0\.003 in the checkpoint",
    ):
        main(args)


def test_take_from_checkpoint_resumes_with_its_settings(env, tmp_path, capsys):
    ckpt_dir = tmp_path / "ck"
    shutil.copytree(env.ckpt_dir, ckpt_dir)
    cli = main(
        base(env.prepared, ckpt_dir, tmp_path / "runs", steps=3)
        + ["--model.net.d_model=128", "--ckpt_path=last", "--take_from_checkpoint=true"]
    )
    assert "model.net.d_model=64 (config: 128)" in capsys.readouterr().err
    assert cli.model.net_cfg.d_model == 64 and cli.trainer.global_step == 3
    saved = yaml.safe_load(next((tmp_path / "runs").rglob("config.yaml")).read_text())
    assert saved["model"]["net"]["d_model"] == 64  # the saved config is the run's, not the command line's


def test_resume_may_change_steps_logging_and_loading_from_a_url(env, tmp_path):
    """Settings that do not define the model or its data stream are not refused; a file:// URL is downloaded
    to a temporary file and read with weights_only=True."""
    ckpt_dir = tmp_path / "ck"
    cli = main(
        base(env.prepared, ckpt_dir, tmp_path / "runs", steps=3)
        + [
            "--trainer.log_every_n_steps=1",
            "--data.num_workers=0",
            "--data.val_windows=2",
            "--model.optim.warmup_steps=1",
            f"--ckpt_path={env.ckpt.as_uri()}",
        ]
    )
    assert cli.trainer.global_step == 3
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 3


def test_validate_may_change_the_training_stream(env, tmp_path):
    """Only fitting continues the training stream: `validate` with another batch size is not refused."""
    args = base(env.prepared, env.ckpt_dir, tmp_path / "runs")
    main(["validate"] + args[1:] + ["--data.batch_size=4", f"--ckpt_path={env.ckpt}"])


def test_module_refuses_a_checkpoint_of_another_model(env):
    """Trainer.fit(ckpt_path=...) from Python is checked too (SoupModule.on_load_checkpoint)."""
    from soe.train.module import SoupModule

    state = torch.load(env.ckpt, weights_only=True)
    hp = dict(state["hyper_parameters"], net={**state["hyper_parameters"]["net"], "n_layer": 1})
    with pytest.raises(ValueError, match="model.net.n_layer: 1 on the command line/config, 2 in the checkpoint"):
        SoupModule(**hp).on_load_checkpoint(state)


def test_checkpoint_finds_its_data_from_elsewhere(env, tmp_path, monkeypatch):
    """A checkpoint records data_dir as given (often relative) and also absolute with the directory training ran
    in; `soe` run from another directory finds the data, or says what it tried."""
    data_hp = torch.load(env.ckpt, weights_only=True)["datamodule_hyper_parameters"]
    assert data_hp["data_dir_resolved"] == str(env.prepared.resolve()) and data_hp["trained_in"]
    hp = dict(
        torch.load(env.ckpt, weights_only=True)["hyper_parameters"],
        data_dir="prepared",
        data_dir_resolved=str(env.prepared),
        trained_in=str(env.prepared.parent),
    )
    monkeypatch.chdir(tmp_path)  # "prepared" does not exist here
    assert prepared_data("prepared", hp, env.ckpt)[0] == env.prepared
    hp["data_dir_resolved"] = str(tmp_path / "moved")
    with pytest.raises(FileNotFoundError) as e:
        prepared_data("prepared", hp, env.ckpt)
    msg = str(e.value)
    assert str(tmp_path / "moved") in msg and str(tmp_path / "prepared") in msg
    assert f"training ran in {env.prepared.parent}" in msg and "--data DIR" in msg
    old = {k: v for k, v in hp.items() if k not in ("data_dir_resolved", "trained_in")}  # an older checkpoint
    with pytest.raises(FileNotFoundError, match="does not record where training ran.*--data DIR"):
        prepared_data("prepared", old, env.ckpt)


def test_debug_shows_the_traceback(env, tmp_path):
    with pytest.raises(ValueError, match="model.net.d_model=-4"):
        cli_main(base(env.prepared, env.ckpt_dir, tmp_path / "runs") + ["--model.net.d_model=-4", "--debug"])


# ---------------------------------------------------------------- issue 25: one training per checkpoint directory

HOLD = """
import sys, time
from soe.train.runlock import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_fit_on_one_checkpoint_directory_is_refused_until_the_first_ends(env, tmp_path, capsys):
    """Old code: two fits wrote the same checkpoints at once. Now the second names the first's pid; a lock
    left by a killed training (pid dead) is ignored; a fit releases its lock on exit."""
    import signal
    import subprocess
    import sys

    ck = tmp_path / "ck"
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(ck)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        argv = base(env.prepared, ck, tmp_path / "runs")
        assert_refused(capsys, "train", argv, f"in use by another training (pid {first.pid}", watch=(ck, env.prepared))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (ck / "train.lock").is_file()  # the killed holder's lock file: stale
    assert cli_main(argv) == 0
    assert (ck / "last.ckpt").is_file() and not (ck / "train.lock").exists()
    assert not [p.name for p in ck.iterdir() if p.suffix != ".ckpt"]


def test_the_lock_is_released_when_fit_fails_and_leaves_no_directory(env, tmp_path, capsys):
    from soe.train.runlock import RunLock

    ck = tmp_path / "new_ck"
    argv = base(env.prepared, ck, tmp_path / "runs") + ["--model.net.vocab_size=100"]  # refused in setup
    assert_refused(capsys, "train", argv, "vocab_size=64 in meta.json")
    assert not ck.exists()
    with RunLock(ck):  # nothing left held
        assert (ck / "train.lock").is_file()
    assert not ck.exists()
