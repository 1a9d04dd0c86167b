"""M domain weights per step, h: (M, k), run as ONE computation (stacked models, soe/core/model.py) equal
the M separate dense forwards the soup ran before (the reference loop below, on the rows of the same
(M, P) instantiation): loss, logits and every gradient (S, the bank E or its low-rank factors, φ), with
the dense autograd bank gradient and with the factored one (the sink's (α, G) factors)."""

import pytest
import torch
from torch.func import functional_call

from soe.core.model import LlamaLM, ModelConfig
from soe.core.soup import SoupConfig, SoupOfExperts

K = 3  # domains
TIED = ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, max_seq_len=16)
UNTIED_GQA = ModelConfig(
    vocab_size=64, n_layer=1, n_head=4, n_kv_head=2, d_model=32, max_seq_len=16, tie_embeddings=False
)
TOL = dict(rtol=1e-5, atol=1e-6)  # fp32: summation order differs (bmm vs mm), nothing else


def loop_forward(soup, idx, h, targets=None):
    """Today's reference: one GEMM for the M parameter vectors, then M functional_call forwards, group m
    of the batch by row m; loss = mean of the M group losses."""
    M = h.shape[0]
    rows = {g: theta.unbind(0) for g, theta in soup.flat(h).items()}
    ys = targets.chunk(M) if targets is not None else [None] * M
    outs = [
        functional_call(
            soup._template, soup._named({g: r[m] for g, r in rows.items()}), (x,) if y is None else (x, y), strict=True
        )
        for m, (x, y) in enumerate(zip(idx.chunk(M), ys))
    ]
    if targets is None:
        return torch.cat(outs)
    return torch.cat([o[0] for o in outs]), torch.stack([o[1] for o in outs]).mean()


def make_soup(net=TIED, rank=0, souped=("*",)):
    return SoupOfExperts(
        net,
        K,
        SoupConfig(
            n_experts=4,
            router_hidden=8,
            router_depth=1,
            expert_init="normal",
            expert_rank=rank,
            souped=list(souped),
            init_seed=5,
        ),
    )


def data(M, net=TIED, per_group=2, T=9):
    g = torch.Generator().manual_seed(M)
    h = torch.rand(M, K, generator=g) + 0.05
    tok = torch.randint(0, net.vocab_size, (per_group * M, T), generator=g)
    return h / h.sum(-1, keepdim=True), tok[:, :-1], tok[:, 1:]


def run(soup, fn, factored):
    """(logits, loss, {param: grad}, sink) of one forward + backward through fn; grads reset first."""
    soup.zero_grad(set_to_none=True)
    soup.bank_grad_sink = {} if factored else None
    logits, loss = fn()
    loss.backward()
    grads = {nm: None if p.grad is None else p.grad.clone() for nm, p in soup.named_parameters()}
    sink, soup.bank_grad_sink = soup.bank_grad_sink, None
    return logits.detach(), loss.detach(), grads, sink


CASES = [  # (net, expert rank, souped patterns)
    (TIED, 0, ("*",)),
    (TIED, 2, ("*",)),
    (UNTIED_GQA, 0, ("*",)),
    (UNTIED_GQA, 2, ("*",)),
    (TIED, 0, ("*q_proj*", "*mlp.up_proj*", "*embed_tokens*", "*input_layernorm*")),  # shared-only tensors too
]


@pytest.mark.parametrize("factored", [False, True], ids=["dense-dE", "factored-dE"])
@pytest.mark.parametrize("net,rank,souped", CASES, ids=["tied", "tied-r2", "untied-gqa", "untied-gqa-r2", "partial"])
@pytest.mark.parametrize("M", [1, 4, 16])
def test_batched_forward_equals_loop(M, net, rank, souped, factored):
    soup = make_soup(net, rank, souped)
    assert len(soup.bank) and (rank == 0 or soup.lowrank is not None)
    h, x, y = data(M, net)
    lg_b, loss_b, gr_b, sink_b = run(soup, lambda: soup(x, h=h, targets=y), factored)
    lg_l, loss_l, gr_l, sink_l = run(soup, lambda: loop_forward(soup, x, h, y), factored)

    assert lg_b.shape == (x.shape[0], x.shape[1], net.vocab_size)
    torch.testing.assert_close(loss_b, loss_l, **TOL)
    torch.testing.assert_close(lg_b, lg_l, **TOL)
    assert gr_b.keys() == gr_l.keys()
    for nm in gr_l:
        if factored and nm.startswith("bank."):  # ∂E never built: the factors went to the sink
            assert gr_b[nm] is None and gr_l[nm] is None, nm
            continue
        assert gr_b[nm] is not None and gr_l[nm] is not None, nm
        scale = gr_l[nm].abs().max().item()
        assert scale > 0, nm  # every parameter gets a gradient here: the comparison is not vacuous
        torch.testing.assert_close(gr_b[nm], gr_l[nm], rtol=TOL["rtol"], atol=TOL["atol"] * max(scale, 1.0), msg=nm)
    if factored:
        assert sink_b.keys() == sink_l.keys() == set(soup.bank)
        for g in soup.bank:
            assert len(sink_b[g]) == len(sink_l[g]) == 1, g  # one (α, G) pair per group and step
            (a_b, G_b), (a_l, G_l) = sink_b[g][0], sink_l[g][0]
            assert a_b.shape == (M, soup.n) and G_b.shape == (M, soup.n_souped[g])
            torch.testing.assert_close(a_b, a_l, rtol=0, atol=0)
            torch.testing.assert_close(G_b, G_l, rtol=TOL["rtol"], atol=TOL["atol"] * G_l.abs().max().item())
            torch.testing.assert_close(a_b.t() @ G_b, a_l.t() @ G_l, **TOL)


@pytest.mark.parametrize("M", [1, 4])
def test_batched_logits_without_targets(M):
    soup = make_soup()
    h, x, _ = data(M)
    with torch.no_grad():
        torch.testing.assert_close(soup(x, h=h), loop_forward(soup, x, h), **TOL)


def test_stacked_parameters_run_each_group_by_its_own_model():
    """The dense model on parameters with a leading M (soe/core/model.py) is model m on group m."""
    soup = make_soup(UNTIED_GQA)
    h, x, y = data(3, UNTIED_GQA)
    with torch.no_grad():
        stacked = soup.instantiate(h)
        logits, loss = functional_call(soup._template, stacked, (x, y), strict=True)
        for m in range(3):
            net = LlamaLM(UNTIED_GQA)
            net.load_state_dict({nm: t[m] for nm, t in stacked.items()})
            lg, ls = net(x[2 * m : 2 * m + 2], y[2 * m : 2 * m + 2])
            torch.testing.assert_close(logits[2 * m : 2 * m + 2], lg, **TOL)
        with pytest.raises(ValueError, match="cannot be split into 3 equal groups"):
            functional_call(soup._template, stacked, (x[:4],), strict=True)


def test_seed_phase_and_params_paths_unchanged():
    """experts=False runs S on the whole batch whatever h; params= runs exactly those parameters."""
    soup = make_soup()
    h, x, y = data(4)
    with torch.no_grad():
        dense = LlamaLM(TIED)
        dense.load_state_dict({nm: t.clone() for nm, t in soup.shared_params().items()})
        lg, loss = soup(x, h=h, targets=y, experts=False)
        torch.testing.assert_close(lg, dense(x), rtol=0, atol=0)
        params = soup.instantiate(h[0])
        torch.testing.assert_close(
            soup(x, targets=y, params=params)[1], functional_call(soup._template, params, (x, y))[1], rtol=0, atol=0
        )


@pytest.mark.slow
def test_compiled_batched_forward_matches_eager():
    """torch.compile of the soup (optim.compile) with h: (M, k): same loss and gradients as eager."""
    soup = make_soup(rank=2)
    h, x, y = data(4)
    _, loss_e, gr_e, _ = run(soup, lambda: soup(x, h=h, targets=y), False)
    compiled = torch.compile(soup)
    _, loss_c, gr_c, _ = run(soup, lambda: compiled(x, h=h, targets=y), False)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for nm in gr_e:
        torch.testing.assert_close(
            gr_c[nm], gr_e[nm], rtol=1e-4, atol=1e-6 * max(gr_e[nm].abs().max().item(), 1.0), msg=nm
        )
