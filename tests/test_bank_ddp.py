"""Bank-aware DDP (soe/train/bank_ddp.py): with model.optim.bank_update=factored, 2 CPU processes (gloo) train
exactly as one process on the global batch, and each step hands collectives S's, φ's and G's bytes, never ∂E's.

Launches this file as a script (Lightning's DDP launcher re-runs it for rank 1), as tests/test_distributed.py
does, and replays the global batch in one process with its helpers."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_prepared  # noqa: E402
from test_distributed import NET, STEPS, B, Record, full_state, make_module, single_process_on_global_batch, trainer_kw  # noqa: E402

from soe.data.datamodule import SoupDataModule  # noqa: E402

N = 4  # experts (make_module's default)


class Bytes(L.Callback):
    """Bytes this rank handed to collectives in each optimizer step (BankDDP's counter)."""

    def __init__(self):
        self.per_step, self.gathered = [], 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        reducer = trainer.optimizers[0].reducer
        self.per_step.append(reducer.last_step_bytes)
        self.gathered = reducer.gathered


def worker(args) -> None:
    torch.set_num_threads(1)
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
    rec, nbytes = Record(), Bytes()
    strategy = L.pytorch.strategies.DDPStrategy(process_group_backend="gloo")
    tr = L.Trainer(devices=2, strategy=strategy, callbacks=[rec, nbytes], **trainer_kw(Path(args.out)))
    tr.fit(module, dm)
    torch.save(
        {
            "batches": rec.batches,
            "losses": rec.losses,
            "bytes": nbytes.per_step,
            "gathered": nbytes.gathered,
            "bank_grads": [E.grad for E in module.soup.bank.values()],
            "state": full_state(module),
        },
        Path(args.out) / f"rank{tr.global_rank}.pt",
    )


def launch(tmp_path: Path, rank_h: str, h_per_step: int) -> list[dict]:
    data = make_prepared(tmp_path / "data", k=3, vocab=NET.vocab_size)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--data",
        str(data),
        "--out",
        str(out),
        "--rank-h",
        rank_h,
        "--h-per-step",
        str(h_per_step),
    ]
    r = subprocess.run(cmd, env=env, cwd=str(out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return [torch.load(out / f"rank{i}.pt", weights_only=False) for i in range(2)]


def expected_bytes(tmp_path: Path, M: int) -> tuple[int, int]:
    """(factored, dense) bytes per rank per step, counted by hand from the model's tensors: DDP's buckets hold
    every gradient but the bank's (S, φ); then per bank group G (M × P_g) and the α check [α, -α] (2 × M × n).
    Dense DDP would send S, φ and ∂E (n × P_g per group)."""
    soup = make_module(SoupDataModule(str(tmp_path / "data"), seq_len=NET.max_seq_len, batch_size=B, seed=7)).soup
    shared = sum(S.numel() for S in soup.shared.values())
    router = sum(p.numel() for p in soup.router.parameters())
    souped = sum(E.shape[1] for E in soup.bank.values())  # Σ_g P_g (here the whole of S)
    assert soup.lowrank is None and soup.n == N and len(soup.bank) == 2
    return 4 * (shared + router + M * souped + len(soup.bank) * 2 * M * N), 4 * (shared + router + N * souped)


@pytest.mark.slow
@pytest.mark.parametrize("h_per_step", [1, 2])
def test_factored_ddp_matches_one_process_and_sends_no_bank_gradient(tmp_path, h_per_step):
    ranks = launch(tmp_path, "shared", h_per_step)
    for t in range(STEPS):
        assert torch.equal(ranks[0]["batches"][t]["h"], ranks[1]["batches"][t]["h"])
    state, losses = single_process_on_global_batch(tmp_path, ranks, h_per_step, bank_update="factored")
    init = make_module(SoupDataModule(str(tmp_path / "data"), seq_len=NET.max_seq_len, batch_size=B, seed=7))
    for r in ranks:  # both ranks hold the same, trained parameters: those of one process on the global batch
        for name, p in state.items():
            moved = (p - dict(init.soup.named_parameters())[name].detach()).abs().max()
            assert moved > 1e-4, (name, float(moved))
            torch.testing.assert_close(r["state"][name], p, rtol=1e-4, atol=1e-5, msg=name)
        assert all(g is None for g in r["bank_grads"])  # ∂E never existed
    for t in range(STEPS):
        assert abs((ranks[0]["losses"][t] + ranks[1]["losses"][t]) / 2 - losses[t]) < 1e-4
    # bytes: exactly S + φ + G + the α check per step, on both ranks, far below dense DDP's S + φ + ∂E
    factored, dense = expected_bytes(tmp_path, h_per_step)
    for r in ranks:
        assert r["bytes"] == [factored] * STEPS, (r["bytes"], factored)
        assert r["gathered"] == 0
    assert factored < dense * (h_per_step + 1.1) / (N + 1)


@pytest.mark.slow
def test_per_rank_h_falls_back_to_gathering_the_factors(tmp_path):
    """α differs across ranks: the factors are all-gathered, and the result is one process with M = 2 whose
    group m is rank m's batch and h."""
    ranks = launch(tmp_path, "per_rank", 1)
    assert any(not torch.equal(ranks[0]["batches"][t]["h"], ranks[1]["batches"][t]["h"]) for t in range(STEPS))
    L.seed_everything(0)
    module = make_module(
        SoupDataModule(str(tmp_path / "data"), seq_len=NET.max_seq_len, batch_size=B, seed=7), bank_update="factored"
    )
    batches = [
        {
            "h": torch.stack([r["batches"][t]["h"] for r in ranks]),
            "tokens": torch.cat([r["batches"][t]["tokens"] for r in ranks]),
            "index": t,
        }
        for t in range(STEPS)
    ]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    L.Trainer(devices=1, **trainer_kw(tmp_path / "single")).fit(module, train_dataloaders=loader)
    for name, p in full_state(module).items():
        torch.testing.assert_close(ranks[0]["state"][name], p, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(ranks[1]["state"][name], p, rtol=1e-4, atol=1e-5, msg=name)
    assert all(r["gathered"] == STEPS * 2 for r in ranks), [r["gathered"] for r in ranks]  # 2 bank groups


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rank-h", choices=["shared", "per_rank"], default="shared")
    ap.add_argument("--h-per-step", type=int, default=1)
    worker(ap.parse_args())
