"""model.optim.bank_update=factored: the bank's AdamW update from (α, G) equals torch's AdamW on the
materialised ∂E = αᵀG (clip norm included), resumes exactly, and allocates nothing bank-sized per step."""

import contextlib

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from soe.core.model import ModelConfig
from soe.core.soup import SoupConfig, SoupOfExperts
from soe.data.datamodule import SoupDataModule
from soe.train.bank_update import BankAdamW
from soe.train.module import SoupModule
from soe.train.optim import OptimConfig, make_optimizer

NET = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=16)
K = 3  # domains
TOL = dict(rtol=1e-5, atol=1e-6)


def soup(rank=0, n=4):
    return SoupOfExperts(
        NET, K, SoupConfig(n_experts=n, router_hidden=8, router_depth=1, expert_init="normal", expert_rank=rank)
    )


def optimizer(s, bank_update):
    o = OptimConfig(lr=1e-2, weight_decay=0.1, weight_decay_bank=0.05, bank_update=bank_update)
    opt = make_optimizer(s, o)
    if bank_update == "factored":
        assert isinstance(opt, BankAdamW)
        opt._chunk = 1000  # several column chunks and a ragged last one, even at this size
    return opt


def batches(M, steps, passes):
    """(h, tokens) per backward pass: h (M, k) on the simplex (or (k,) for M = 1), tokens (2M, 9)."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps * passes):
        h = torch.rand(M, K, generator=gen) + 0.1
        h = h / h.sum(-1, keepdim=True)
        out.append((h if M > 1 else h[0], torch.randint(0, 64, (2 * M, 9), generator=gen)))
    return out


def train(s, bank_update, M, steps=4, clip=0.05, passes=1):
    """`steps` AdamW steps, each over `passes` backward passes (gradient accumulation), clipped to norm `clip`;
    returns the pre-clip total norms."""
    opt = optimizer(s, bank_update)
    params = [p for g in opt.param_groups for p in g["params"]]
    data, norms = batches(M, steps, passes), []
    for i in range(steps):
        opt.zero_grad()
        for h, tok in data[i * passes : (i + 1) * passes]:
            (s(tok[:, :-1], h=h, targets=tok[:, 1:])[1] / passes).backward()
        if bank_update == "factored":
            assert all(E.grad is None for E in s.bank.values())  # ∂E never materialised
            norms.append(opt.clip_grad_norm_(clip))
        else:
            norms.append(torch.nn.utils.clip_grad_norm_(params, clip))
        opt.step()
    return torch.stack(norms), opt


@pytest.mark.parametrize("rank,M,passes", [(0, 1, 1), (0, 4, 1), (2, 1, 1), (2, 4, 1), (0, 2, 2)])
def test_factored_equals_adamw_on_materialised_gradient(rank, M, passes):
    dense, fact = soup(rank), soup(rank)
    assert len(fact.bank) > 0 and (rank == 0 or fact.lowrank is not None)
    n_dense, opt_d = train(dense, "dense", M, passes=passes)
    n_fact, opt_f = train(fact, "factored", M, passes=passes)
    assert (n_dense > 0.05).all()  # clipping is active at every step
    torch.testing.assert_close(n_fact, n_dense, **TOL)
    for (name, a), b in zip(dense.named_parameters(), fact.parameters()):
        torch.testing.assert_close(b, a, **TOL, msg=name)
    for E_d, E_f in zip(dense.bank.values(), fact.bank.values()):
        sd, sf = opt_d.state[E_d], opt_f.state[E_f]
        assert float(sd["step"]) == float(sf["step"]) == 4
        torch.testing.assert_close(sf["exp_avg"], sd["exp_avg"], **TOL)
        torch.testing.assert_close(sf["exp_avg_sq"], sd["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    assert all(E.grad is None for E in fact.bank.values())


@pytest.mark.parametrize("M", [1, 4])
def test_bank_norm_from_grams_equals_materialised(M):
    dense, fact = soup(), soup()
    opt_d, opt_f = optimizer(dense, "dense"), optimizer(fact, "factored")
    ((h, tok),) = batches(M, 1, 1)
    for s in (dense, fact):
        s(tok[:, :-1], h=h, targets=tok[:, 1:])[1].backward()
    want = [torch.linalg.vector_norm(E.grad) for E in dense.bank.values()]
    torch.testing.assert_close(torch.stack(opt_f.bank_norms()), torch.stack(want), rtol=1e-5, atol=0)
    total_d = torch.nn.utils.clip_grad_norm_([p for g in opt_d.param_groups for p in g["params"]], 1e9)
    torch.testing.assert_close(opt_f.clip_grad_norm_(1e9), total_d, rtol=1e-6, atol=0)


class FreshAllocations(TorchDispatchMode):
    """Records the bytes of every tensor an ATen op returns in storage that none of its inputs owns:
    every allocation torch makes for a result (empty, zeros, mm, outer, cat, ...) shows up; views,
    in-place ops and out= results share an input's storage and do not."""

    def __init__(self):
        super().__init__()
        self.sizes: list[tuple[int, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append((t.untyped_storage().nbytes(), str(func)))
        return out


@pytest.mark.parametrize("bank_update", ["dense", "factored"])
def test_no_bank_sized_allocation_per_step(bank_update):
    """Steps 2 and 3 (after the first step allocated AdamW's m and v): with factored no op returns a new
    buffer as large as the bank; the dense reference does (its ∂E), which shows the check can see one."""
    s = soup(n=8)
    bank_bytes = s.bank["decay"].untyped_storage().nbytes()  # the matrices' bank, 590 kB; θ (M, P) is half of it
    opt = optimizer(s, bank_update)
    if bank_update == "factored":
        opt._chunk = 4096  # a workspace well below the bank (n × P = 8 × 18,432), as at real sizes
    seen = FreshAllocations()
    for i, (h, tok) in enumerate(batches(4, 3, 1)):
        with seen if i else contextlib.nullcontext():
            opt.zero_grad()
            s(tok[:, :-1], h=h, targets=tok[:, 1:])[1].backward()
            opt.clip_grad_norm_(1.0) if bank_update == "factored" else torch.nn.utils.clip_grad_norm_(
                s.parameters(), 1.0
            )
            opt.step()
    big = [(b, f) for b, f in seen.sizes if b >= bank_bytes]
    assert len(seen.sizes) > 100  # the mode saw the forward, the backward and the optimizer
    if bank_update == "factored":
        assert not big, big
    else:
        assert big  # ∂E = αᵀG, twice (steps 2 and 3) per bank group


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_lightning_clipping_and_accumulation_match_dense(prepared, tmp_path, algorithm):
    """Through Lightning (configure_gradient_clipping, accumulate_grad_batches): factored = dense."""
    final = {}
    for bank_update in ("dense", "factored"):
        L.seed_everything(0)
        dm = SoupDataModule(
            str(prepared), seq_len=16, batch_size=4, seed=0, val_windows=4, val_batch_size=4, h_per_step=2
        )
        model = SoupModule(
            net=NET,
            soup=SoupConfig(n_experts=3, router_hidden=8, router_depth=1, expert_init="normal"),
            optim=OptimConfig(lr=1e-2, warmup_steps=2, bank_update=bank_update),
            n_domains=dm.num_domains,
            domain_names=dm.domain_names,
            prior=dm.prior,
            tokenizer_sha256=dm.tokenizer_sha256,
        )
        L.Trainer(
            max_steps=4,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            gradient_clip_val=0.05 if algorithm == "norm" else 1e-3,
            gradient_clip_algorithm=algorithm,
            accumulate_grad_batches=2,
            default_root_dir=tmp_path,
        ).fit(model, dm)
        final[bank_update] = {k: v.clone() for k, v in model.state_dict().items()}
        assert model.global_step == 4
    for k, v in final["dense"].items():
        torch.testing.assert_close(final["factored"][k], v, **TOL, msg=k)
    assert not torch.equal(final["dense"]["soup.bank.decay"], soup(n=3).bank["decay"])  # the bank did move


def test_factored_refuses_compile():
    with pytest.raises(ValueError, match="bank_update='factored' does not work with compile"):
        OptimConfig(bank_update="factored", compile=True)
    with pytest.raises(ValueError, match="bank_update='sparse'"):
        OptimConfig(bank_update="sparse")


def test_blocked_gram_equals_one_product():
    from soe.train.bank_update import gram

    G = torch.randn(4, 1003, generator=torch.Generator().manual_seed(0))
    for block in (7, 100, 501, 2000):  # ragged last block, several blocks, one call (P ≤ 2·block)
        torch.testing.assert_close(gram(G, block), G @ G.t(), rtol=1e-5, atol=1e-4)
