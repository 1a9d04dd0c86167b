"""Low-rank experts: Θ(h) = S + Σ_j α_j A_j B_jᵀ exactly, gradients match finite differences, sizes."""

import pytest
import torch
from numerics import directional_derivative

from soe.core.model import LlamaLM, ModelConfig
from soe.core.soup import SoupConfig, SoupOfExperts
from soe.train.optim import OptimConfig, make_optimizer

CFG = ModelConfig(vocab_size=23, n_layer=2, n_head=2, d_model=8, max_seq_len=8, d_ff=12)


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, CFG.vocab_size, (2, 7), generator=g)
    return t[:, :-1], t[:, 1:]


def explicit(soup, alpha):
    """Θ by hand, tensor by tensor: S + Σ_j α_j E_j with E_j = A_j B_jᵀ (low-rank) or the bank row."""
    lr_experts = [soup.lowrank.expert(j) for j in range(soup.n)] if soup.lowrank is not None else None
    out = {}
    for g in soup.shared:
        off = 0
        ps = soup.n_souped[g]
        lr_end = ps + (soup.lowrank.numel if g == "decay" and soup.lowrank is not None else 0)
        for name, shape in soup.layout[g]:
            n = shape.numel()
            t = soup.shared[g][off : off + n].view(shape).clone()
            for j in range(soup.n):
                if off < ps:
                    t += alpha[j] * soup.bank[g][j, off : off + n].view(shape)
                elif off < lr_end:
                    t += alpha[j] * lr_experts[j][off - ps : off - ps + n].view(shape)
            out[name] = t
            off += n
    return out


@pytest.mark.parametrize("init", ["zero", "normal"])
@pytest.mark.parametrize("souped", [["*"], ["*mlp*", "*norm*"]])
def test_instantiate_equals_explicit_low_rank_sum(init, souped):
    soup = SoupOfExperts(CFG, 3, SoupConfig(n_experts=3, expert_rank=2, expert_init=init, souped=souped))
    h = torch.tensor([0.2, 0.5, 0.3])
    alpha = soup.coefficients(h)
    params, ref = soup.instantiate(h), explicit(soup, alpha)
    assert params.keys() == ref.keys() == dict(LlamaLM(CFG).named_parameters()).keys()
    for name in ref:
        torch.testing.assert_close(params[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)
    s_only = SoupOfExperts(CFG, 3, SoupConfig(n_experts=0)).instantiate()
    moved = not torch.equal(params["model.layers.0.mlp.up_proj.weight"], s_only["model.layers.0.mlp.up_proj.weight"])
    assert moved == (init == "normal")  # 'zero' (LoRA-style A = 0): Θ(h) = S at init
    if souped != ["*"]:  # unsouped matrices are exactly S
        assert torch.equal(
            params["model.layers.0.self_attn.q_proj.weight"], s_only["model.layers.0.self_attn.q_proj.weight"]
        )


def test_low_rank_sizes_and_full_rank_fallback():
    n, r = 4, 2
    soup = SoupOfExperts(CFG, 3, SoupConfig(n_experts=n, expert_rank=r))
    mats = [p for p in LlamaLM(CFG).parameters() if p.ndim == 2]
    vecs = [p for p in LlamaLM(CFG).parameters() if p.ndim == 1]
    expect = n * r * sum(sum(p.shape) for p in mats) + n * sum(p.numel() for p in vecs)
    assert soup.param_counts()["bank"] == expect
    assert "decay" not in soup.bank  # every matrix is low-rank; norms keep full-rank experts
    big = SoupOfExperts(CFG, 3, SoupConfig(n_experts=n, expert_rank=8))  # r ≥ min(8, ·): full rank is cheaper
    assert big.lowrank is None and big.param_counts()["bank"] == n * CFG.num_params()
    with pytest.raises(ValueError, match="expert_rank"):
        SoupConfig(expert_rank=-1)


@pytest.mark.parametrize("init", ["zero", "normal"])
def test_low_rank_gradients_match_finite_differences(init):
    soup = SoupOfExperts(
        CFG, 3, SoupConfig(n_experts=2, expert_rank=2, expert_init=init, router_hidden=4, router_depth=1)
    ).double()
    h = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    x, y = data(1)
    params = dict(soup.named_parameters())
    loss = soup(x, h=h, targets=y)[1]
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    gen = torch.Generator().manual_seed(0)
    names = [nm for nm in params if nm.startswith("lowrank.")] + ["shared.decay", "router.net.0.weight"]
    for name in names:
        p = params[name]
        v = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        fd, an = directional_derivative(lambda: soup(x, h=h, targets=y)[1], p, v), (grads[name] * v).sum()
        assert torch.isclose(fd, an, rtol=1e-5, atol=1e-9), (name, fd.item(), an.item())
    assert grads["lowrank.A." + soup.lowrank.groups[0][0]].abs().sum() > 0


def test_low_rank_trains_through_the_optimizer():
    soup = SoupOfExperts(CFG, 3, SoupConfig(n_experts=2, expert_rank=2))
    opt = make_optimizer(soup, OptimConfig(lr=1e-2))
    assert any(g["name"] == "bank.lowrank" for g in opt.param_groups)
    covered = {id(p) for g in opt.param_groups for p in g["params"]}
    assert covered == {id(p) for p in soup.parameters()}  # every parameter is optimised exactly once
    h = torch.tensor([0.2, 0.3, 0.5])
    x, y = data(2)
    before = soup.lowrank.A[soup.lowrank.groups[0][0]].detach().clone()
    soup(x, h=h, targets=y)[1].backward()
    opt.step()
    assert not torch.equal(before, soup.lowrank.A[soup.lowrank.groups[0][0]])


def test_init_depends_only_on_init_seed():
    """S, E and φ come from SoupConfig.init_seed alone, not from the global RNG."""
    cfg = SoupConfig(n_experts=2, expert_rank=2, expert_init="normal", init_seed=4)
    torch.manual_seed(0)
    a = SoupOfExperts(CFG, 3, cfg).state_dict()
    torch.manual_seed(1)
    b = SoupOfExperts(CFG, 3, cfg).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
