"""Training: loss falls, exact resume, the CLI writes logs and checkpoints, every config parses."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from soe.core.model import ModelConfig
from soe.core.soup import SoupConfig
from soe.data.datamodule import SoupDataModule
from soe.train.cli import main as train_main
from soe.train.module import SoupModule
from soe.train.optim import OptimConfig

ROOT = Path(__file__).resolve().parents[1]
NET = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=32)


class RecordLoss(L.Callback):
    def __init__(self, stop_at: int | None = None):
        self.losses: dict[int, float] = {}
        self.stop_at = stop_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = outputs["loss"].item()
        if self.stop_at is not None and trainer.global_step == self.stop_at:
            trainer.should_stop = True  # a clean "interruption" after step stop_at


def make(prepared, n_experts=2, seed=0, h_per_step=1, bank_update="dense"):
    dm = SoupDataModule(
        str(prepared), seq_len=32, batch_size=8, seed=seed, val_windows=4, val_batch_size=4, h_per_step=h_per_step
    )
    model = SoupModule(
        net=NET,
        soup=SoupConfig(n_experts=n_experts, router_hidden=8, router_depth=1),
        optim=OptimConfig(lr=1e-2, warmup_steps=2, bank_update=bank_update),
        n_domains=dm.num_domains,
        domain_names=dm.domain_names,
        prior=dm.prior,
        tokenizer_sha256=dm.tokenizer_sha256,
    )
    return dm, model


def trainer(tmp_path, max_steps, callbacks, **kw):
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=5,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        **kw,
    )


@pytest.mark.parametrize("n_experts,h_per_step", [(0, 1), (2, 1), (2, 4)])
def test_loss_falls(prepared, tmp_path, n_experts, h_per_step):
    dm, model = make(prepared, n_experts, h_per_step=h_per_step)
    rec = RecordLoss()
    trainer(tmp_path, 60, [rec], enable_checkpointing=False).fit(model, dm)
    first, last = sum(rec.losses[s] for s in range(1, 6)) / 5, sum(rec.losses[s] for s in range(56, 61)) / 5
    assert last < first - 1.0, (first, last)  # log(64) ≈ 4.16 at init; the Markov chains are learnable


@pytest.mark.parametrize("h_per_step,bank_update", [(1, "dense"), (2, "dense"), (1, "factored"), (2, "factored")])
def test_resume_is_exact(prepared, tmp_path, h_per_step, bank_update):
    """The factored bank update keeps m and v in AdamW's own state: saved and restored with it."""
    kw = dict(h_per_step=h_per_step, bank_update=bank_update)
    full = RecordLoss()
    L.seed_everything(0)
    trainer(tmp_path / "a", 12, [full], enable_checkpointing=False).fit(*make(prepared, **kw)[::-1])

    L.seed_everything(0)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ck", every_n_train_steps=3, save_last=True, save_top_k=0
    )
    part = RecordLoss(stop_at=6)
    trainer(tmp_path / "b", 12, [part, ckpt]).fit(*make(prepared, **kw)[::-1])
    assert max(part.losses) == 6

    L.seed_everything(123)  # resuming must not depend on the global seed
    rest = RecordLoss()
    dm, model = make(prepared, **kw)
    trainer(tmp_path / "b", 12, [rest]).fit(model, dm, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert sorted(rest.losses) == list(range(7, 13))
    for step in range(7, 13):
        assert rest.losses[step] == full.losses[step], (step, rest.losses[step], full.losses[step])


@pytest.mark.parametrize("max_steps", [7, 6])
def test_last_checkpoint_holds_the_final_step(prepared, tmp_path, max_steps):
    """Lightning's own ModelCheckpoint leaves last.ckpt at step 6 of a 7-step run with every_n_train_steps=3."""
    from soe.train.callbacks import ModelCheckpoint

    dm, model = make(prepared)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_last=True, save_top_k=0)
    trainer(tmp_path, max_steps, [ckpt]).fit(model, dm)
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == max_steps and state["SoupDataModule"]["next_index"] == max_steps
    live = model.state_dict()
    assert all(torch.equal(t, live[k]) for k, t in state["state_dict"].items())  # the trained weights, not step 6's


def test_checkpoint_loads_weights_only(prepared, tmp_path):
    dm, model = make(prepared)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0)
    trainer(tmp_path, 3, [ckpt]).fit(model, dm)
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True, map_location="cpu")
    hp = state["hyper_parameters"]
    assert hp["domain_names"] == ["dom0", "dom1", "dom2"] and hp["net"]["vocab_size"] == 64
    assert hp["tokenizer_sha256"] == dm.tokenizer_sha256 and state["SoupDataModule"]["next_index"] == 3
    assert state["datamodule_hyper_parameters"]["data_dir"] == str(prepared)  # the checkpoint knows its data
    restored = SoupModule(**hp)
    restored.load_state_dict(state["state_dict"])
    x = torch.zeros(1, 8, dtype=torch.long)
    h = torch.tensor([0.2, 0.3, 0.5])
    assert torch.equal(restored.soup(x, h=h), model.soup(x, h=h))


def test_cli_trains_logs_and_resumes(prepared, tmp_path):
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/tiny.yaml"),
        f"--data.data_dir={prepared}",
        "--model.net.vocab_size=64",
        "--trainer.max_steps=7",
        "--trainer.val_check_interval=3",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}/runs",
        f"--trainer.callbacks.init_args.dirpath={tmp_path}/ck",
        "--trainer.callbacks.init_args.every_n_train_steps=3",
    ]
    meta = json.loads((prepared / "meta.json").read_text())  # data built from a locked corpus
    (prepared / "meta.json").write_text(json.dumps({**meta, "corpus_lock": {"id": "0123456789ab", "packages": []}}))
    cli = train_main(args)
    assert cli.trainer.global_step == 7  # the shipped config's checkpoint callback keeps the final step
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == 7 and state["hyper_parameters"]["corpus_lock_id"] == "0123456789ab"
    events = list((tmp_path / "runs").rglob("events.out.tfevents*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "loss/train",
        "loss/val/dom0",
        "loss/val_prior/dom2",
        "loss/val_prior/mixture",
        "lr/shared",
        "throughput/tokens_per_s",
        "alpha/norm",
    ):
        assert tag in tags, (tag, tags)
    cli = train_main([a.replace("max_steps=7", "max_steps=9") for a in args] + ["--ckpt_path=last"])
    assert cli.trainer.global_step == 9


def test_cli_rejects_unknown_keys(prepared, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/tiny.yaml"),
                f"--data.data_dir={prepared}",
                "--model.net.n_layers=3",
            ]
        )
    assert "n_layers" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_config_parses(config, capsys):
    path = ROOT / "configs" / config
    assert path.read_text().startswith("#"), "each config starts with a comment: purpose, launch, hardware"
    with pytest.raises(SystemExit) as exit_info:  # full jsonargparse validation of every key, no data needed
        train_main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    net = ModelConfig(**cfg["model"]["net"])
    SoupConfig(**cfg["model"]["soup"])
    OptimConfig(**cfg["model"]["optim"])
    assert net.num_params() > 0 and cfg["trainer"]["max_steps"] > 0
