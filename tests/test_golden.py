"""Golden losses: a tiny fixed-seed soup and its generic baseline must train to the recorded per-domain
losses. A change that silently alters training (init, data order, optimizer, loss) fails here.

Regenerate deliberately with:  SOE_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
"""

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from soe.core.model import ModelConfig
from soe.core.soup import SoupConfig
from soe.data.datamodule import SoupDataModule
from soe.data.mixture import MixtureConfig
from soe.train.module import SoupModule
from soe.train.optim import OptimConfig

GOLDEN = Path(__file__).parent / "golden" / "tiny_losses.json"
TOL = 2e-3  # nats: far above float noise on one machine, far below any real change in training


def train_and_evaluate(prepared, n_experts: int, fixed_h) -> dict[str, float]:
    torch.manual_seed(0)
    dm = SoupDataModule(
        str(prepared),
        seq_len=32,
        batch_size=8,
        seed=7,
        val_windows=8,
        val_batch_size=8,
        mixture=MixtureConfig(fixed_h=fixed_h),
    )
    model = SoupModule(
        net=ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=32),
        soup=SoupConfig(n_experts=n_experts, router_hidden=8, router_depth=1, init_seed=3),
        optim=OptimConfig(lr=1e-2, warmup_steps=3),
        n_domains=dm.num_domains,
        domain_names=dm.domain_names,
        prior=dm.prior,
        tokenizer_sha256=dm.tokenizer_sha256,
    )
    trainer = L.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        val_check_interval=30,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    return {k: round(float(v), 5) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("loss/val")}


def test_golden_losses(prepared):
    got = {"soe": train_and_evaluate(prepared, 2, None), "generic": train_and_evaluate(prepared, 0, "prior")}
    if os.environ.get("SOE_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"golden losses rewritten to {GOLDEN}")
    want = json.loads(GOLDEN.read_text())
    assert got.keys() == want.keys() and all(got[m].keys() == want[m].keys() for m in want)
    diffs = {(m, k): got[m][k] - want[m][k] for m in want for k in want[m] if abs(got[m][k] - want[m][k]) > TOL}
    assert not diffs, f"losses moved beyond {TOL} nats: {diffs}"
