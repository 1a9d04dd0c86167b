"""SoE training step ÷ dense training step (same instantiated model, same batch, same process).

One step = router + instantiate + forward + backward + grad-norm clip + AdamW + zero_grad, exactly
what ``SoupModule.training_step`` and Lightning's automatic optimization do, without Lightning
(its overhead is bench_lightning's business). The dense side is the same code with n = 0.

Also prints where the soup's extra time goes (instantiate, backward into the bank, optimizer on
the bank) and the overhead against its memory-traffic floor (≈ 7·n·P fp32 numbers ÷ copy bandwidth).

Stacked models (data.h_per_step = M): SoE ÷ dense at M = 1, 4, 16 for the demo model and the small regime
model, both bank updates, the M models as one stacked computation next to the M-forward loop it replaced.

    python -m bench.bench_step                 # tiny + demo at n = 8, demo at n ∈ {4, 16, 64}, stacked models
    python -m bench.bench_step --quick
    python -m bench.bench_step --stacked       # only the stacked-models table (≈ 2 min on 2 cores)
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.func import functional_call

from bench.common import CONFIGS, copy_bandwidth, interleaved, machine, verdict
from soe.core.model import ModelConfig
from soe.core.soup import SoupConfig, SoupOfExperts
from soe.train.bank_update import BankAdamW
from soe.train.module import OptimConfig, make_optimizer

K = 9  # domains (the demo corpus)
# The stacked-models table's sizes, both at seq 128, batch 16, n = 8 (configs/demo-cpu.yaml; the small regime).
STACKED_SIZES = {
    "demo": ModelConfig(vocab_size=8192, n_layer=4, n_head=4, d_model=256, max_seq_len=128),
    "small": ModelConfig(vocab_size=2048, n_layer=2, n_head=2, d_model=64, max_seq_len=128),
}


class Stepper:
    """A soup, its optimizer and one fixed batch; ``step()`` runs one full training step."""

    def __init__(
        self,
        net,
        n: int,
        seq: int,
        batch: int,
        fused: bool = True,
        rank: int = 0,
        clip: float = 1.0,
        device: str = "cpu",
        compile: bool = False,
        h_per_step: int = 1,
        bank_update: str = "dense",
    ):
        self.soup = SoupOfExperts(net, K, SoupConfig(n_experts=n, expert_init="normal", expert_rank=rank)).to(device)
        self.opt = make_optimizer(self.soup, OptimConfig(fused=fused, bank_update=bank_update))
        g = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(0, net.vocab_size, (batch, seq + 1), generator=g).to(device)
        shape = (K,) if h_per_step == 1 else (h_per_step, K)
        self.h = torch.softmax(torch.randn(shape, generator=g), -1).to(device)
        self.clip = clip
        self.params = [p for p in self.soup.parameters()]

    def loss(self):
        if self.h.ndim == 2:  # M models from one GEMM, batch split into M groups (data.h_per_step)
            return self.soup(self.tokens[:, :-1], h=self.h, targets=self.tokens[:, 1:])[1]
        alpha = self.soup.coefficients(self.h)
        _, loss = self.soup(
            self.tokens[:, :-1], targets=self.tokens[:, 1:], params=self.soup.instantiate(self.h, alpha)
        )
        return loss

    def step(self):
        loss = self.loss()
        loss.backward()
        return self.update(loss)

    def accumulate(self):
        """The same step as M micro-batches of gradient accumulation (one h each, loss / M)."""
        M = self.h.shape[0]
        B = self.tokens.shape[0] // M
        for m in range(M):
            tok = self.tokens[m * B : (m + 1) * B]
            (self.soup(tok[:, :-1], h=self.h[m], targets=tok[:, 1:])[1] / M).backward()
        return self.update(None)

    def update(self, loss):
        if self.clip and isinstance(self.opt, BankAdamW):  # the factored bank's norm comes from (α, G)
            self.opt.clip_grad_norm_(self.clip)
        elif self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


class LoopStepper(Stepper):
    """The M models of a step as they ran before stacked models: one GEMM for the (M, P) rows, then M
    functional_call forwards, group m of the batch by row m (tests/test_batched_forward.py's reference)."""

    def loss(self):
        soup, M = self.soup, self.h.shape[0]
        rows = {g: theta.unbind(0) for g, theta in soup.flat(self.h).items()}
        x, y = self.tokens[:, :-1].chunk(M), self.tokens[:, 1:].chunk(M)
        losses = [
            functional_call(soup._template, soup._named({g: r[m] for g, r in rows.items()}), (x[m], y[m]))[1]
            for m in range(M)
        ]
        return torch.stack(losses).mean()


def stacked_models(
    iters: int = 2,
    repeats: int = 3,
    Ms=(1, 4, 16),
    sizes=("small", "demo"),
    n: int = 8,
    seq: int = 128,
    batch: int = 16,
) -> list[dict]:
    """SoE ÷ dense step with M domain weights per step, the M models stacked (one computation) and, for M > 1,
    as the loop of M forwards they replaced; both bank updates. M = 1 is the one-h path (h: (k,))."""
    rows = []
    for size in sizes:
        net = STACKED_SIZES[size]
        dense = Stepper(net, 0, seq, batch)
        for M in Ms:
            hp = M if M > 1 else 1
            steppers = {"dense": dense}
            for u in ("dense", "factored"):
                steppers[f"stacked-{u}"] = Stepper(net, n, seq, batch, h_per_step=hp, bank_update=u)
                if M > 1:
                    steppers[f"loop-{u}"] = LoopStepper(net, n, seq, batch, h_per_step=hp, bank_update=u)
            t = interleaved({k: s.step for k, s in steppers.items()}, iters=iters, repeats=repeats)
            row = {"size": size, "M": M, "n": n, **{f"{k}_s": v for k, v in t.items()}}
            cells = []
            for u in ("dense", "factored"):
                row[f"ratio_stacked_{u}"] = t[f"stacked-{u}"] / t["dense"]
                loop = f"{t[f'loop-{u}'] / t['dense']:.2f}" if M > 1 else "  — "
                if M > 1:
                    row[f"ratio_loop_{u}"] = t[f"loop-{u}"] / t["dense"]
                cells.append(
                    f"bank_update={u}: stacked {t[f'stacked-{u}'] * 1e3:7.1f} ms ({row[f'ratio_stacked_{u}']:.2f}×)"
                    f" loop {loop}×"
                )
            print(
                f"[stacked] {size:5s} n={n} M={M:2d} seq {seq} batch {batch}: dense {t['dense'] * 1e3:7.1f} ms | "
                + " | ".join(cells),
                flush=True,
            )
            rows.append(row)
            del steppers
    small16 = [r for r in rows if r["size"] == "small" and r["M"] == 16]
    for r in small16:
        print(
            f"  small M=16 SoE÷dense (stacked, dense bank update) {r['ratio_stacked_dense']:.2f} → "
            f"{verdict(r['ratio_stacked_dense'], 1.3)}"
        )
    return rows


def breakdown(st: Stepper, iters: int = 5) -> dict[str, float]:
    """Seconds per phase of a step (mean of iters after a warm-up). 'forward' includes the instantiation, which
    is also timed alone (without autograd) as 'instantiate'."""
    st.step()
    t = {"instantiate": 0.0, "forward": 0.0, "backward": 0.0, "clip": 0.0, "optimizer": 0.0, "zero_grad": 0.0}
    for _ in range(iters):
        t0 = time.perf_counter()
        with torch.no_grad():
            st.soup.flat(st.h)
        t1 = time.perf_counter()
        loss = st.loss()
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        if isinstance(st.opt, BankAdamW):
            st.opt.clip_grad_norm_(st.clip)
        else:
            torch.nn.utils.clip_grad_norm_(st.params, st.clip, foreach=True)
        t4 = time.perf_counter()
        st.opt.step()
        t5 = time.perf_counter()
        st.opt.zero_grad(set_to_none=True)
        t6 = time.perf_counter()
        for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            t[k] += dt / iters
    return t


def print_breakdown(steppers: dict[str, Stepper]) -> dict[str, dict[str, float]]:
    b = {k: breakdown(st) for k, st in steppers.items()}
    print("        phase (ms)     " + "".join(f"{k:>14s}" for k in b))
    for ph in next(iter(b.values())):
        print(f"        {ph:14s} " + "".join(f"{b[k][ph] * 1e3:14.1f}" for k in b))
    return b


def compare(name: str, n: int, iters: int, fused: bool = True, rank: int = 0, repeats: int = 5) -> dict:
    c = CONFIGS[name]
    dense = Stepper(c["net"], 0, c["seq"], c["batch"], fused=fused)
    soe = Stepper(c["net"], n, c["seq"], c["batch"], fused=fused, rank=rank)
    t = interleaved({"dense": dense.step, "soe": soe.step}, iters=iters, repeats=repeats)
    P = dense.soup.param_counts()["total"]
    bank = soe.soup.param_counts()["bank"]
    bw = copy_bandwidth(max(bank, P) * 4)
    floor = 7 * bank * 4 / bw  # read E (instantiate) + read E, m, v and write them (one fused update)
    over = t["soe"] - t["dense"]
    row = {
        "config": name,
        "n": n,
        "rank": rank,
        "P": P,
        "bank": bank,
        "dense_s": t["dense"],
        "soe_s": t["soe"],
        "ratio": t["soe"] / t["dense"],
        "overhead_s": over,
        "floor_s": floor,
        "overhead_vs_floor": over / floor if bank else float("nan"),
        "bw_GBps": bw / 1e9,
    }
    rk = f", expert_rank={rank}" if rank else ""
    print(
        f"[step] {name:5s} n={n:3d}{rk} P={P / 1e6:.2f}M bank={bank / 1e6:.1f}M  dense {t['dense'] * 1e3:8.1f} ms  "
        f"soe {t['soe'] * 1e3:8.1f} ms  SoE÷dense = {row['ratio']:.3f}   overhead {over * 1e3:7.1f} ms vs floor "
        f"{floor * 1e3:6.1f} ms (7·n·P·4 B at {bw / 1e9:.1f} GB/s) → {row['overhead_vs_floor']:.2f}",
        flush=True,
    )
    return row


def bank_updates(n: int, M: int, tokens: int, iters: int, repeats: int, show_breakdown: bool = False) -> dict:
    """Dense model vs the soup with each bank update (model.optim.bank_update), side by side, on the demo model
    at ``tokens`` per step (sequences of 128, as the demo trains) with M = h_per_step domain weights per step."""
    c = CONFIGS["demo"]
    seq = 128
    steppers = {
        "dense": Stepper(c["net"], 0, seq, tokens // seq),
        "soe-dense": Stepper(c["net"], n, seq, tokens // seq, h_per_step=M),
        "soe-factored": Stepper(c["net"], n, seq, tokens // seq, h_per_step=M, bank_update="factored"),
    }
    t = interleaved({k: s.step for k, s in steppers.items()}, iters=iters, repeats=repeats)
    bank = steppers["soe-dense"].soup.param_counts()["bank"]
    bw = copy_bandwidth(bank * 4)
    floor = 7 * bank * 4 / bw  # read E (instantiate) + read E, m, v and write them (one fused update)
    row = {"n": n, "M": M, "tokens": tokens, "floor_s": floor, **{f"{k}_s": v for k, v in t.items()}}
    for u in ("dense", "factored"):
        row[f"ratio_{u}"] = t[f"soe-{u}"] / t["dense"]
        row[f"overhead_vs_floor_{u}"] = (t[f"soe-{u}"] - t["dense"]) / floor
    print(
        f"[step] demo n={n} M={M} {tokens} tokens/step: dense {t['dense'] * 1e3:7.1f} ms | bank_update=dense "
        f"{t['soe-dense'] * 1e3:7.1f} ms, SoE÷dense {row['ratio_dense']:.3f}, overhead÷floor "
        f"{row['overhead_vs_floor_dense']:.2f} | bank_update=factored {t['soe-factored'] * 1e3:7.1f} ms, SoE÷dense "
        f"{row['ratio_factored']:.3f} ({verdict(row['ratio_factored'], 1.10)}), overhead÷floor "
        f"{row['overhead_vs_floor_factored']:.2f} ({verdict(row['overhead_vs_floor_factored'], 1.3)}) "
        f"[floor {floor * 1e3:.1f} ms]",
        flush=True,
    )
    if show_breakdown:
        row["breakdown"] = print_breakdown(steppers)
    return row


def h_per_step_vs_accumulation(name: str, n: int, M: int, iters: int, repeats: int) -> dict:
    """data.h_per_step = M (M models from one GEMM, one backward into the bank) ÷ M micro-batches of
    gradient accumulation (M instantiations, M rank-one bank gradients summed): the same update."""
    c = CONFIGS[name]
    one = Stepper(c["net"], n, c["seq"], c["batch"], h_per_step=M)
    acc = Stepper(c["net"], n, c["seq"], c["batch"], h_per_step=M)
    t = interleaved({"h_per_step": one.step, "accumulate": acc.accumulate}, iters=iters, repeats=repeats)
    row = {
        "config": name,
        "n": n,
        "M": M,
        "h_per_step_s": t["h_per_step"],
        "accumulate_s": t["accumulate"],
        "ratio": t["h_per_step"] / t["accumulate"],
    }
    print(
        f"[step] {name:5s} n={n:3d} M={M}: h_per_step {t['h_per_step'] * 1e3:8.1f} ms  accumulation "
        f"{t['accumulate'] * 1e3:8.1f} ms  h_per_step÷accumulation = {row['ratio']:.3f}",
        flush=True,
    )
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    ap.add_argument("--foreach", action="store_true", help="foreach AdamW instead of fused")
    ap.add_argument("--stacked", action="store_true", help="only the stacked-models table (M = 1, 4, 16)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"# bench_step on {machine()}; AdamW {'foreach' if args.foreach else 'fused'}")
    if args.stacked:
        return stacked_models()
    it, rep = (2, 3) if args.quick else (3, 5)
    fused = not args.foreach
    rows = [compare("tiny", 8, 10 * it, fused, repeats=rep), compare("demo", 8, it, fused, repeats=rep)]
    print(
        f"  demo n=8: SoE÷dense {rows[-1]['ratio']:.3f} → {verdict(rows[-1]['ratio'], 1.10)} (docs/soup.md targets; issue: ≤ 1.25); "
        f"overhead÷floor {rows[-1]['overhead_vs_floor']:.2f} → {verdict(rows[-1]['overhead_vs_floor'], 1.3)}"
    )
    for M, tokens in ((4, 2048), (4, 4096), (1, 2048), (1, 4096)):  # the demo's step (M = 4 h per step, 2,048
        # tokens), twice it, and one h per step (where the 7·n·P floor is the whole of the bank's traffic)
        rows.append(bank_updates(8, M, tokens, it, rep, show_breakdown=tokens == 2048))
    for n in (4, 16, 64):
        rows.append(compare("demo", n, it, fused, repeats=rep))
    for M in (4, 8):  # several h per step (the recipe of experiments/RECIPE.md)
        rows.append(h_per_step_vs_accumulation("demo", 8, M, it, rep))
    for r in (8, 32):  # low-rank experts E_j = A_j B_jᵀ: bank size and step time
        rows.append(compare("demo", 8, it, fused, rank=r, repeats=rep))
        print(
            f"        low-rank r={r}: bank {rows[-1]['bank'] / 1e6:.2f}M vs full-rank {rows[1]['bank'] / 1e6:.2f}M "
            f"({rows[-1]['bank'] / rows[1]['bank']:.3f}×); SoE÷dense {rows[-1]['ratio']:.3f} vs {rows[1]['ratio']:.3f}"
        )
    rows += stacked_models(*((1, 3) if args.quick else (2, 3)))
    return rows


if __name__ == "__main__":
    main()
