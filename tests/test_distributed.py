"""Multi-process training on CPU over gloo: DDP equals one process on the same global batch, and
FSDP2 (ModelParallelStrategy + fully_shard) shards the bank with the same losses.

The distributed runs launch this file as a script (Lightning's DDP launcher re-runs the command
for rank 1), record each rank's batches, and the test replays the *global* batch (rank batches
concatenated, the shared h) in one process with the same module, then compares parameters.
"""

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

from soe.core.model import ModelConfig  # noqa: E402
from soe.core.soup import SoupConfig  # noqa: E402
from soe.data.datamodule import SoupDataModule  # noqa: E402
from soe.train.module import SoupModule  # noqa: E402
from soe.train.optim import OptimConfig  # noqa: E402

NET = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=16)
STEPS, B = 4, 4


def make_module(dm: SoupDataModule, n_experts: int = 4, bank_update: str = "dense") -> SoupModule:
    return SoupModule(
        net=NET,
        soup=SoupConfig(n_experts=n_experts, router_hidden=8, router_depth=1, expert_init="normal", init_seed=3),
        optim=OptimConfig(lr=1e-2, warmup_steps=1, bank_update=bank_update),
        n_domains=dm.num_domains,
        domain_names=dm.domain_names,
        prior=dm.prior,
        tokenizer_sha256=dm.tokenizer_sha256,
    )


class Record(L.Callback):
    """Keeps every consumed batch and loss of this rank."""

    def __init__(self):
        self.batches, self.losses = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append({"h": batch["h"].clone(), "tokens": batch["tokens"].clone(), "index": batch["index"]})
        self.losses.append(float(outputs["loss"]))


def trainer_kw(tmp: Path) -> dict:
    return dict(
        max_steps=STEPS,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        default_root_dir=str(tmp),
    )


def full_state(module: SoupModule) -> dict[str, torch.Tensor]:
    """Parameters as plain tensors (gathers FSDP2 DTensor shards)."""
    out = {}
    for name, p in module.soup.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = t.detach().clone()
    return out


def worker(args) -> None:
    """One rank of a 2-process run (launched via this file's __main__)."""
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
    module = make_module(dm)
    rec = Record()
    if args.strategy == "ddp":
        strategy = L.pytorch.strategies.DDPStrategy(process_group_backend="gloo")
    else:
        strategy = L.pytorch.strategies.ModelParallelStrategy(
            data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo"
        )
    tr = L.Trainer(devices=2, strategy=strategy, callbacks=[rec], **trainer_kw(Path(args.out)))
    tr.fit(module, dm)
    # per-rank parameter bytes actually held (local shards for FSDP2)
    local = sum(
        (p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size() for p in module.soup.parameters()
    )
    state = full_state(module)
    torch.save(
        {
            "batches": rec.batches,
            "losses": rec.losses,
            "local_bytes": local,
            "total_bytes": sum(t.numel() * t.element_size() for t in state.values()),
            "state": state if tr.global_rank == 0 else None,
        },
        Path(args.out) / f"rank{tr.global_rank}.pt",
    )


def launch(
    tmp_path: Path, strategy: str, rank_h: str = "shared", h_per_step: int = 1, script: str = __file__
) -> list[dict]:
    """Run ``script``'s worker (this file's, or another test's taking the same arguments) on 2 ranks."""
    data = make_prepared(tmp_path / "data", k=3, vocab=NET.vocab_size)
    out = tmp_path / f"run_{strategy}_{rank_h}_{h_per_step}"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(Path(script).resolve()),
        "--data",
        str(data),
        "--out",
        str(out),
        "--strategy",
        strategy,
        "--rank-h",
        rank_h,
        "--h-per-step",
        str(h_per_step),
    ]
    r = subprocess.run(cmd, env=env, cwd=str(out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return [torch.load(out / f"rank{i}.pt", weights_only=False) for i in range(2)]


def single_process_on_global_batch(
    tmp_path: Path, ranks: list[dict], M: int = 1, bank_update: str = "dense"
) -> tuple[dict, list[float]]:
    """Replay the global batch (ranks' sequences concatenated group by group, rank 0's h) in one process."""
    L.seed_everything(0)
    dm = SoupDataModule(str(tmp_path / "data"), seq_len=NET.max_seq_len, batch_size=B, seed=7)
    module = make_module(dm, bank_update=bank_update)

    def merged(t):  # group m of the global batch = group m of every rank (each rank: M groups of B/M)
        per_rank = [r["batches"][t]["tokens"].reshape(M, B // M, -1) for r in ranks]
        return torch.cat(per_rank, dim=1).reshape(len(ranks) * B, -1)

    batches = [{"h": ranks[0]["batches"][t]["h"], "tokens": merged(t), "index": t} for t in range(STEPS)]
    rec = Record()
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    L.Trainer(devices=1, callbacks=[rec], **trainer_kw(tmp_path / "single")).fit(module, train_dataloaders=loader)
    return full_state(module), rec.losses


@pytest.mark.slow
@pytest.mark.parametrize("strategy,h_per_step", [("ddp", 1), ("fsdp2", 1), ("fsdp2", 2)])
def test_two_processes_match_one_process_on_the_global_batch(tmp_path, strategy, h_per_step):
    ranks = launch(tmp_path, strategy, h_per_step=h_per_step)
    for t in range(STEPS):  # 'shared': one h per step on every rank, each rank its own step index
        assert torch.equal(ranks[0]["batches"][t]["h"], ranks[1]["batches"][t]["h"])
        assert ranks[0]["batches"][t]["index"] == ranks[1]["batches"][t]["index"] == t
    state, losses = single_process_on_global_batch(tmp_path, ranks, h_per_step)
    dist = ranks[0]["state"]
    assert dist.keys() == state.keys()
    init = make_module(SoupDataModule(str(tmp_path / "data"), seq_len=NET.max_seq_len, batch_size=B, seed=7))
    for name, p in state.items():
        moved = (p - dict(init.soup.named_parameters())[name].detach()).abs().max()
        assert moved > 1e-4, (name, float(moved))  # training moved every parameter...
        torch.testing.assert_close(dist[name], p, rtol=1e-4, atol=1e-5, msg=name)  # ...identically
    # the loss of the global batch is the mean of the ranks' losses (equal batch sizes)
    for t in range(STEPS):
        mean = (ranks[0]["losses"][t] + ranks[1]["losses"][t]) / 2
        assert abs(mean - losses[t]) < 1e-4, (t, mean, losses[t])
    if strategy == "fsdp2":  # the bank (and S) are sharded: each rank holds ≈ half the bytes
        for r in ranks:
            assert abs(r["local_bytes"] / r["total_bytes"] - 0.5) < 0.01, (r["local_bytes"], r["total_bytes"])
    else:
        assert all(r["local_bytes"] == r["total_bytes"] for r in ranks)


@pytest.mark.slow
def test_per_rank_h_differs_across_ranks(tmp_path):
    ranks = launch(tmp_path, "ddp", rank_h="per_rank")
    assert any(not torch.equal(ranks[0]["batches"][t]["h"], ranks[1]["batches"][t]["h"]) for t in range(STEPS))
    # parameters stay replicated (DDP averaged the two ranks' gradients)
    assert all(torch.isfinite(v).all() for v in ranks[0]["state"].values())


class _FakeTrainer:
    def __init__(self, rank):
        self.global_rank, self.training = rank, True


@pytest.mark.parametrize("rank_h", ["shared", "per_rank"])
def test_rank_streams_are_deterministic_and_resumable(prepared, rank_h):
    """Batch t of rank r is a pure function of (seed, t, r): a resumed rank redraws it exactly."""

    def batch(rank, index, seed=1):
        dm = SoupDataModule(str(prepared), seq_len=16, batch_size=4, seed=seed, rank_h=rank_h)
        dm.trainer = _FakeTrainer(rank)
        dm.setup()
        return dm.train_batch(index)

    for r in (0, 1):
        a, b = batch(r, 5), batch(r, 5)
        assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["h"], b["h"])
    r0, r1 = batch(0, 5), batch(1, 5)
    if rank_h == "shared":
        assert torch.equal(r0["h"], r1["h"])
    else:
        assert not torch.equal(r0["h"], r1["h"])


def test_shared_h_ranks_draw_different_sequences(prepared):
    dms = []
    for r in (0, 1):
        dm = SoupDataModule(str(prepared), seq_len=16, batch_size=4, seed=1, rank_h="shared")
        dm.trainer = _FakeTrainer(r)
        dm.setup()
        dms.append(dm.train_batch(3))
    assert not torch.equal(dms[0]["tokens"], dms[1]["tokens"])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--strategy", choices=["ddp", "fsdp2"], default="ddp")
    ap.add_argument("--rank-h", choices=["shared", "per_rank"], default="shared")
    ap.add_argument("--h-per-step", type=int, default=1)
    worker(ap.parse_args())
