"""Bank-aware FSDP2 (soe/train/bank_fsdp.py): with model.optim.bank_update=factored under ModelParallelStrategy,
2 CPU processes (gloo) train exactly as one process on the global batch, each rank holds and updates half of the
bank (and of its AdamW m, v), each step hands collectives S's, φ's and G's bytes, never ∂E's, and a sharded
checkpoint resumes exactly.

Launched through tests/test_distributed.py's `launch` with this file as the script, replayed in one process with
its `single_process_on_global_batch`."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_bank_ddp import Bytes, N  # noqa: E402
from test_distributed import (  # noqa: E402
    NET,
    STEPS,
    B,
    Record,
    full_state,
    launch,
    make_module,
    single_process_on_global_batch,
    trainer_kw,
)

from soe.data.datamodule import SoupDataModule  # noqa: E402

W = 2


class Counts(Bytes):
    """BankFSDP's counters per optimizer step (reduce side, as Bytes; FSDP2's parameter all-gathers) and the
    global grad norm each rank's clip saw."""

    def __init__(self):
        super().__init__()
        self.gather, self.norms = [], []

    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        clip = opt.clip_grad_norm_

        def recorded(max_norm):
            total = clip(max_norm)
            self.norms.append(float(total))
            return total

        opt.clip_grad_norm_ = recorded

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.gather.append(trainer.optimizers[0].reducer.last_step_gather_bytes)


def fit(args, out: Path, callbacks=(), ckpt_path=None, save=False) -> tuple[L.Trainer, object]:
    L.seed_everything(0)
    dm = SoupDataModule(
        args.data,
        seq_len=NET.max_seq_len,
        batch_size=B,
        seed=7,
        val_windows=2,
        val_batch_size=2,
        rank_h=args.rank_h,
        h_per_step=args.h_per_step,
    )
    module = make_module(dm, bank_update="factored")
    strategy = L.pytorch.strategies.ModelParallelStrategy(
        data_parallel_size=W, tensor_parallel_size=1, process_group_backend="gloo"
    )
    kw = {**trainer_kw(out), "enable_checkpointing": save}
    tr = L.Trainer(devices=W, strategy=strategy, callbacks=list(callbacks), **kw)
    tr.fit(module, dm, ckpt_path=ckpt_path)
    return tr, module


def worker(args) -> None:
    """One rank: 4 factored FSDP2 steps (a sharded checkpoint after step 2), then a fresh run resumed from it."""
    torch.set_num_threads(1)
    out = Path(args.out)
    rec, counts = Record(), Counts()
    ckpt = ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=2, save_top_k=-1)
    tr, module = fit(args, out, [rec, counts, ckpt], save=True)
    opt = tr.optimizers[0]
    bank = {
        g: {
            "E": E.to_local().shape,
            "m": opt.state[E]["exp_avg"].to_local().shape,
            "v": opt.state[E]["exp_avg_sq"].to_local().shape,
            "full": E.shape,
            "grad": None if E.grad is None else E.grad.to_local().clone(),
            "rows": opt.reducer.rows(E),
        }
        for g, E in module.soup.bank.items()
    }
    local = sum(p.to_local().numel() * p.element_size() for p in module.soup.parameters())
    state = full_state(module)
    step2 = sorted((out / "ckpt").glob("*step=2*"))
    assert len(step2) == 1, list((out / "ckpt").iterdir())
    rec2 = Record()
    _, resumed = fit(args, out / "resumed", [rec2], ckpt_path=str(step2[0]))
    torch.save(
        {
            "batches": rec.batches,
            "losses": rec.losses,
            "bytes": counts.per_step,
            "gathered": counts.gathered,
            "gather": counts.gather,
            "norms": counts.norms,
            "bank": bank,
            "local_bytes": local,
            "total_bytes": sum(t.numel() * t.element_size() for t in state.values()),
            "state": state,
            "resumed": full_state(resumed),
            "resumed_steps": [b["index"] for b in rec2.batches],
        },
        out / f"rank{tr.global_rank}.pt",
    )


@pytest.fixture(scope="module", params=[1, 2], ids=["h_per_step1", "h_per_step2"])
def run(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"fsdp_factored_{request.param}")
    return tmp, request.param, launch(tmp, "fsdp2", h_per_step=request.param, script=__file__)


@pytest.mark.slow
def test_factored_fsdp2_matches_one_process_with_clipping(run):
    tmp, M, ranks = run
    for t in range(STEPS):
        assert torch.equal(ranks[0]["batches"][t]["h"], ranks[1]["batches"][t]["h"])
    state, losses = single_process_on_global_batch(tmp, ranks, M, bank_update="factored")
    init = make_module(SoupDataModule(str(tmp / "data"), seq_len=NET.max_seq_len, batch_size=B, seed=7))
    for r in ranks:
        assert r["state"].keys() == state.keys()
        for name, p in state.items():
            moved = (p - dict(init.soup.named_parameters())[name].detach()).abs().max()
            assert moved > 1e-4, (name, float(moved))
            torch.testing.assert_close(r["state"][name], p, rtol=1e-4, atol=1e-5, msg=name)
    for t in range(STEPS):
        assert abs((ranks[0]["losses"][t] + ranks[1]["losses"][t]) / 2 - losses[t]) < 1e-4
    # the clip was active every step, and both ranks clipped by the same (global) norm
    assert len(ranks[0]["norms"]) == STEPS and all(x > 1.0 for x in ranks[0]["norms"]), ranks[0]["norms"]
    assert ranks[0]["norms"] == ranks[1]["norms"]


@pytest.mark.slow
def test_each_rank_holds_and_updates_half_the_bank_and_no_bank_gradient(run):
    _, _, ranks = run
    for rank, r in enumerate(ranks):
        for g, b in r["bank"].items():
            n, P = b["full"]
            assert n == N and b["rows"] == range(rank * N // W, (rank + 1) * N // W)
            assert tuple(b["E"]) == tuple(b["m"]) == tuple(b["v"]) == (N // W, P), (g, b)  # E, m, v: 1/world
            assert b["grad"] is None  # ∂E never existed (nor was it reduce-scattered: see the byte count)
        assert abs(r["local_bytes"] / r["total_bytes"] - 1 / W) < 0.01, (r["local_bytes"], r["total_bytes"])


def expected_bytes(tmp: Path, M: int) -> tuple[int, int, int]:
    """(factored, dense, gathered) bytes per rank and step, by hand: FSDP2 reduce-scatters every gradient
    but the bank's (S, φ; dim 0 padded to a multiple of W), then per bank group G (M × P_g) and the α check
    (2 × M × n); dense FSDP2 would reduce-scatter ∂E (n × P_g) instead of sending G. The forward all-gathers
    every parameter's shard once per step (the root module keeps them until its backward)."""
    soup = make_module(SoupDataModule(str(tmp / "data"), seq_len=NET.max_seq_len, batch_size=B, seed=7)).soup
    pad = lambda p: math.ceil(p.shape[0] / W) * W * p[0].numel()  # noqa: E731
    shared = sum(pad(S) for S in soup.shared.values())
    router = sum(pad(p) for p in soup.router.parameters())
    souped = sum(E.shape[1] for E in soup.bank.values())
    bank = sum(pad(E) for E in soup.bank.values())
    assert soup.lowrank is None and soup.n == N and len(soup.bank) == 2 and N % W == 0
    return (
        4 * (shared + router + M * souped + len(soup.bank) * 2 * M * N),
        4 * (shared + router + bank),
        4 * (shared + router + bank) // W,
    )


@pytest.mark.slow
def test_bytes_per_step_are_s_phi_and_g(run):
    tmp, M, ranks = run
    factored, dense, gathered = expected_bytes(tmp, M)
    for r in ranks:
        assert r["bytes"] == [factored] * STEPS, (r["bytes"], factored)
        assert r["gather"] == [gathered] * STEPS, (r["gather"], gathered)
        assert r["gathered"] == 0
    assert factored < dense * (M + 1.1) / (N + 1)


@pytest.mark.slow
def test_sharded_checkpoint_resumes_exactly(run):
    _, _, ranks = run
    for r in ranks:
        assert r["resumed_steps"] == [2, 3], r["resumed_steps"]  # it did restart after step 2, with AdamW's state
        for name, p in r["state"].items():
            torch.testing.assert_close(r["resumed"][name], p, rtol=1e-6, atol=1e-7, msg=name)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--strategy", choices=["fsdp2"], default="fsdp2")
    ap.add_argument("--rank-h", choices=["shared", "per_rank"], default="shared")
    ap.add_argument("--h-per-step", type=int, default=1)
    worker(ap.parse_args())
