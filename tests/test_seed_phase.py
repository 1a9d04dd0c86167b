"""The seed phase (model.soup.experts_from_step): before that step S trains alone, E and φ stay untouched.

The bank and the router carry weight decay here, so a zero gradient (rather than none) would still move them:
the test holds only if E and φ are left out of the optimizer step altogether, as AdamW does for .grad None and
the factored bank update does for a bank without factors.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from soe.core.model import LlamaLM, ModelConfig
from soe.core.soup import SoupConfig, SoupOfExperts
from soe.data.datamodule import SoupDataModule
from soe.train.module import SoupModule
from soe.train.optim import OptimConfig

NET = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=32)


class Snapshots(L.Callback):
    """Every parameter of the soup, cloned at the start and after each optimizer step (key: global_step)."""

    def __init__(self):
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def _take(self, trainer, pl_module):
        self.at[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.soup.named_parameters()}

    def on_train_start(self, trainer, pl_module):
        self._take(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._take(trainer, pl_module)


def fit(
    prepared, tmp_path, steps: int, experts_from_step: int, bank_update: str, expert_rank: int, h_per_step: int = 1
) -> Snapshots:
    dm = SoupDataModule(
        str(prepared), seq_len=32, batch_size=8, seed=0, val_windows=4, val_batch_size=4, h_per_step=h_per_step
    )
    soup = SoupConfig(
        n_experts=2,
        router_hidden=8,
        router_depth=1,
        expert_init="normal",
        expert_rank=expert_rank,
        experts_from_step=experts_from_step,
    )
    optim = OptimConfig(
        lr=1e-2,
        warmup_steps=1,
        weight_decay=0.1,
        weight_decay_bank=0.1,
        weight_decay_router=0.1,
        bank_update=bank_update,
    )
    model = SoupModule(
        net=NET,
        soup=soup,
        optim=optim,
        n_domains=dm.num_domains,
        domain_names=dm.domain_names,
        prior=dm.prior,
        tokenizer_sha256=dm.tokenizer_sha256,
    )
    snaps = Snapshots()
    L.seed_everything(0)
    L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        callbacks=[snaps],
        default_root_dir=tmp_path,
    ).fit(model, dm)
    assert sorted(snaps.at) == list(range(steps + 1))
    return snaps


def groups(names) -> dict[str, list[str]]:
    out = {
        "shared": [n for n in names if n.startswith("shared.")],
        "bank": [n for n in names if n.startswith("bank.")],
        "lowrank": [n for n in names if n.startswith("lowrank.")],
        "router": [n for n in names if n.startswith("router.")],
    }
    assert sum(map(len, out.values())) == len(list(names)), names
    return out


def unchanged(a: dict, b: dict, names: list[str]) -> bool:
    return all(torch.equal(a[n], b[n]) for n in names)


def changed(a: dict, b: dict, names: list[str]) -> bool:
    return all(not torch.equal(a[n], b[n]) for n in names)


@pytest.mark.parametrize(
    "bank_update,expert_rank,h_per_step", [("dense", 0, 1), ("factored", 0, 1), ("dense", 2, 1), ("factored", 2, 2)]
)
def test_experts_untouched_during_seed_phase(prepared, tmp_path, bank_update, expert_rank, h_per_step):
    s = fit(prepared, tmp_path, 5, 3, bank_update, expert_rank, h_per_step)
    g = groups(s.at[0])
    assert g["bank"] and g["router"] and g["shared"]
    assert bool(g["lowrank"]) == (expert_rank > 0)
    experts = g["bank"] + g["lowrank"] + g["router"]
    for step in (1, 2, 3):  # the seed phase: steps with global_step 0, 1, 2 train S alone
        assert unchanged(s.at[0], s.at[step], experts), f"E or φ moved during the seed phase (step {step})"
        assert changed(s.at[step - 1], s.at[step], g["shared"]), f"S did not train at step {step}"
    # the first step with experts (global_step 3 = experts_from_step) moves E and φ, and so does the next
    for step in (4, 5):
        assert changed(s.at[step - 1], s.at[step], experts), f"E or φ did not train at step {step}"
        assert changed(s.at[step - 1], s.at[step], g["shared"])


@pytest.mark.parametrize("bank_update", ["dense", "factored"])
def test_no_seed_phase_trains_experts_from_step_one(prepared, tmp_path, bank_update):
    s = fit(prepared, tmp_path, 1, 0, bank_update, 0)
    g = groups(s.at[0])
    assert changed(s.at[0], s.at[1], g["bank"] + g["router"] + g["shared"])


@pytest.mark.parametrize("expert_rank", [0, 2])
def test_forward_without_experts_is_the_dense_model_at_S(expert_rank):
    torch.manual_seed(0)
    soup = SoupOfExperts(
        NET, 3, SoupConfig(n_experts=2, router_hidden=8, router_depth=1, expert_init="normal", expert_rank=expert_rank)
    )
    x, y = torch.randint(0, 64, (4, 16)), torch.randint(0, 64, (4, 16))
    dense = LlamaLM(NET)
    dense.load_state_dict({k: v.detach().clone() for k, v in soup.shared_params().items()}, strict=True)
    ref_logits, ref_loss = dense(x, y)
    for h in (torch.tensor([0.2, 0.3, 0.5]), torch.tensor([[1.0, 0.0, 0.0], [0.1, 0.1, 0.8]])):  # one h, M = 2
        logits, loss = soup(x, h=h, targets=y, experts=False)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
        with_experts = soup(x, h=h, targets=y)[1]
        assert not torch.allclose(with_experts, loss), "the experts (normal init) should change the loss"
    # E and φ are out of the graph: no gradient at all, S gets one
    soup.zero_grad(set_to_none=True)
    soup(x, h=torch.tensor([0.2, 0.3, 0.5]), targets=y, experts=False)[1].backward()
    for name, p in soup.named_parameters():
        if name.startswith("shared."):
            assert p.grad is not None, name
        else:
            assert p.grad is None, f"{name} got a gradient in the seed phase"


def test_negative_experts_from_step_is_refused():
    with pytest.raises(ValueError, match="experts_from_step"):
        SoupConfig(experts_from_step=-1)
