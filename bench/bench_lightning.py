"""Dense-mode Lightning training step ÷ a minimal hand-written PyTorch loop of the same model.

Both sides: the demo model (n = 0), the same fixed batches, AdamW (fused), gradient clipping at
1.0, warmup+cosine LR. Lightning runs ``SoupModule`` under ``Trainer.fit`` (no logger, no
checkpoints, no progress bar: what remains is the loop's own overhead); the hand-written loop is
the ten lines every PyTorch tutorial has. Timed per step after warm-up, runs interleaved.

    python -m bench.bench_lightning [--steps 12]
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch

from bench.common import CONFIGS, machine, verdict
from soe.core.model import LlamaLM
from soe.core.soup import SoupConfig
from soe.train.module import SoupModule
from soe.train.optim import OptimConfig, lr_lambda

K = 9


class StepTimes(L.Callback):
    def __init__(self):
        self.t = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.t.append(time.perf_counter())


def batches(c, steps):
    g = torch.Generator().manual_seed(0)
    h = torch.full((K,), 1.0 / K)
    return [
        {"h": h, "tokens": torch.randint(0, c["net"].vocab_size, (c["batch"], c["seq"] + 1), generator=g), "index": i}
        for i in range(steps)
    ]


def lightning_run(c, data, warm) -> float:
    module = SoupModule(
        net=c["net"], soup=SoupConfig(n_experts=0), optim=OptimConfig(fused=True, warmup_steps=2), n_domains=K
    )
    cb = StepTimes()
    tr = L.Trainer(
        max_steps=len(data),
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        callbacks=[cb],
    )
    tr.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    dt = [b - a for a, b in zip(cb.t[warm:], cb.t[warm + 1 :])]
    return statistics.median(dt)


def plain_run(c, data, warm) -> float:
    net = LlamaLM(c["net"])
    net.reset_parameters(torch.Generator().manual_seed(0))
    decay = [p for p in net.parameters() if p.ndim >= 2]
    other = [p for p in net.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.95),
        fused=True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, 2, len(data), 0.1))
    t = []
    for b in data:
        x = b["tokens"]
        _, loss = net(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        t.append(time.perf_counter())
    return statistics.median([b - a for a, b in zip(t[warm:], t[warm + 1 :])])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--config", default="demo", choices=list(CONFIGS))
    args = ap.parse_args(argv)
    print(f"# bench_lightning on {machine()}")
    c = CONFIGS[args.config]
    data = batches(c, args.steps)
    warm = 2
    res = {"lightning": [], "plain": []}
    for _ in range(2):  # interleave the two sides twice
        res["plain"].append(plain_run(c, data, warm))
        res["lightning"].append(lightning_run(c, data, warm))
    pl, li = min(res["plain"]), min(res["lightning"])
    tok = c["batch"] * c["seq"]
    thr = pl / li  # dense-mode throughput ÷ plain-loop throughput
    print(
        f"[lightning] {args.config} dense: hand-written loop {pl * 1e3:.1f} ms/step ({tok / pl:,.0f} tok/s), "
        f"Lightning {li * 1e3:.1f} ms/step ({tok / li:,.0f} tok/s)  Lightning÷plain step = {li / pl:.3f}; "
        f"throughput ratio {thr:.3f} → {verdict(thr, 0.95, higher_is_better=True)}"
    )
    return {"plain_s": pl, "lightning_s": li, "throughput_ratio": thr}


if __name__ == "__main__":
    main()
