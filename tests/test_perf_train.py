"""Training-loop performance options keep semantics: gradient accumulation resumes exactly,
torch.compile gives the eager losses, the bank shards never leak into checkpoints twice."""

import lightning as L
import pytest
import torch

from soe.core.model import ModelConfig
from soe.core.soup import SoupConfig
from soe.data.datamodule import SoupDataModule
from soe.train.module import SoupModule
from soe.train.optim import OptimConfig

NET = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=16)


class Losses(L.Callback):
    def __init__(self, stop_at=None):
        self.by_batch, self.indices, self.stop_at = {}, [], stop_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.by_batch[int(batch["index"])] = outputs["loss"].item()
        if self.stop_at is not None and trainer.global_step == self.stop_at:
            trainer.should_stop = True


def make(prepared, **optim):
    L.seed_everything(0)  # φ's init uses the global RNG (see test_lowrank.test_init_depends_only_on_init_seed)
    dm = SoupDataModule(str(prepared), seq_len=16, batch_size=4, seed=3, val_windows=2, val_batch_size=2)
    model = SoupModule(
        net=NET,
        soup=SoupConfig(n_experts=2, router_hidden=8, router_depth=1),
        optim=OptimConfig(lr=1e-2, warmup_steps=2, **optim),
        n_domains=dm.num_domains,
        domain_names=dm.domain_names,
        prior=dm.prior,
    )
    return model, dm


def trainer(root, steps, callbacks, **kw):
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        callbacks=callbacks,
        default_root_dir=root,
        **kw,
    )


def test_gradient_accumulation_resumes_exactly(prepared, tmp_path):
    acc = 2
    full = Losses()
    trainer(tmp_path / "a", 6, [full], accumulate_grad_batches=acc, enable_checkpointing=False).fit(*make(prepared))
    assert sorted(full.by_batch) == list(range(6 * acc))  # 6 optimizer steps consumed 12 batches

    ck = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ck", every_n_train_steps=3, save_last=True, save_top_k=0
    )
    part = Losses(stop_at=3)
    trainer(tmp_path / "b", 6, [part, ck], accumulate_grad_batches=acc).fit(*make(prepared))
    assert sorted(part.by_batch) == list(range(3 * acc))

    L.seed_everything(99)
    rest = Losses()
    model, dm = make(prepared)
    trainer(tmp_path / "b", 6, [rest], accumulate_grad_batches=acc).fit(
        model, dm, ckpt_path=str(tmp_path / "ck" / "last.ckpt")
    )
    assert sorted(rest.by_batch) == list(range(3 * acc, 6 * acc))
    for i in rest.by_batch:
        assert rest.by_batch[i] == full.by_batch[i], (i, rest.by_batch[i], full.by_batch[i])


@pytest.mark.slow
def test_compiled_forward_matches_eager(prepared, tmp_path):
    runs = {}
    for compile_ in (False, True):
        L.seed_everything(0)
        rec = Losses()
        trainer(tmp_path / str(compile_), 3, [rec], enable_checkpointing=False).fit(*make(prepared, compile=compile_))
        runs[compile_] = rec.by_batch
    for i in runs[False]:
        assert abs(runs[False][i] - runs[True][i]) < 1e-4, (i, runs[False][i], runs[True][i])


def test_compiled_module_is_not_a_submodule(prepared):
    model, _ = make(prepared, compile=True)
    x = torch.randint(0, 64, (2, 9))
    object.__setattr__(model, "_compiled", model.soup)  # stand-in for the compiled wrapper
    model._forward(x[:, :-1], torch.tensor([1.0, 0.0, 0.0]), x[:, 1:])
    assert not any(k.startswith("_compiled") for k in model.state_dict())
