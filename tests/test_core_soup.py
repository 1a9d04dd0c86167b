"""The soup: n = 0 is the dense model, instantiate is S + Σ α_j E_j, gradients match finite differences."""

import pytest
import torch
from numerics import directional_derivative

from soe.core.model import LlamaLM, ModelConfig
from soe.core.soup import SoupConfig, SoupOfExperts
from soe.core.weights import check_h

CFG = ModelConfig(vocab_size=23, n_layer=1, n_head=2, d_model=8, max_seq_len=8)


def idx_and_targets(seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, CFG.vocab_size, (2, 7), generator=g)
    return t[:, :-1], t[:, 1:]


def test_dense_soup_is_the_dense_model():
    soup = SoupOfExperts(CFG, 3, SoupConfig(n_experts=0, init_seed=5))
    net = LlamaLM(CFG)
    net.reset_parameters(torch.Generator().manual_seed(5))  # same init stream as the soup's S
    x, y = idx_and_targets()
    assert torch.equal(soup(x), net(x))
    assert torch.equal(soup(x, h=torch.tensor([0.0, 1.0, 0.0])), net(x))  # h is ignored with n = 0
    assert soup.param_counts()["total"] == CFG.num_params() and len(soup.bank) == 0 and soup.router is None


def test_instantiate_equals_explicit_sum():
    soup = SoupOfExperts(CFG, 3, SoupConfig(n_experts=4, expert_init="normal", souped=["*mlp*", "*norm*"]))
    h = torch.tensor([0.2, 0.5, 0.3])
    alpha = soup.coefficients(h)
    params = soup.instantiate(h)
    base = {}
    for g in soup.shared:  # by hand: unpack S and each E_j with the layout, sum tensor by tensor
        off = 0
        for name, shape in soup.layout[g]:
            n = shape.numel()
            t = soup.shared[g][off : off + n].view(shape).clone()
            if off < soup.n_souped[g]:
                for j in range(soup.n):
                    t += alpha[j] * soup.bank[g][j, off : off + n].view(shape)
            base[name] = t
            off += n
    assert params.keys() == base.keys() == dict(LlamaLM(CFG).named_parameters()).keys()
    for name in base:
        torch.testing.assert_close(params[name], base[name], rtol=1e-6, atol=1e-7)
    # unsouped tensors are exactly S; souped ones moved away from S
    assert torch.equal(params["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    s_only = SoupOfExperts(CFG, 3, SoupConfig(n_experts=0)).instantiate()
    assert not torch.equal(params["model.layers.0.mlp.up_proj.weight"], s_only["model.layers.0.mlp.up_proj.weight"])


def test_specialist_matches_soup_forward():
    soup = SoupOfExperts(CFG, 3, SoupConfig(n_experts=3, expert_init="normal"))
    h = torch.tensor([1.0, 0.0, 3.0])
    x, _ = idx_and_targets(1)
    spec = soup.specialist(h)
    assert isinstance(spec, LlamaLM)
    torch.testing.assert_close(spec(x), soup(x, h=h / h.sum()), rtol=0, atol=0)
    with torch.no_grad():  # a detached copy: editing the specialist leaves the soup alone
        spec.model.norm.weight.add_(1.0)
    assert not torch.equal(spec(x), soup(x, h=h / h.sum()))


@pytest.mark.parametrize("output", ["none", "softmax", "scaled"])
def test_gradients_match_finite_differences(output):
    soup = SoupOfExperts(
        CFG,
        3,
        SoupConfig(
            n_experts=2,
            expert_init="normal",
            router_hidden=4,
            router_depth=1,
            router_output=output,
            souped=["*proj*", "*norm*"],
        ),
    ).double()
    h = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    x, y = idx_and_targets(2)
    loss = soup(x, h=h, targets=y)[1]
    params = dict(soup.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    gen = torch.Generator().manual_seed(0)
    for name in (
        "shared.decay",
        "shared.no_decay",
        "bank.decay",
        "bank.no_decay",
        "router.net.0.weight",
        "router.net.2.bias",
    ):
        p = params[name]
        for _ in range(2):  # directional derivative along random directions
            v = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            fd = directional_derivative(lambda: soup(x, h=h, targets=y)[1], p, v)
            an = (grads[name] * v).sum()
            assert torch.isclose(fd, an, rtol=1e-5, atol=1e-8), (name, fd.item(), an.item())
        assert grads[name].abs().sum() > 0, name


def test_bank_gradient_is_rank_one():
    soup = SoupOfExperts(CFG, 3, SoupConfig(n_experts=3, expert_init="normal"))
    h = torch.tensor([0.3, 0.3, 0.4])
    x, y = idx_and_targets(3)
    alpha = soup.coefficients(h).detach()
    soup(x, h=h, targets=y)[1].backward()
    gE, gS = soup.bank["decay"].grad, soup.shared["decay"].grad[: soup.n_souped["decay"]]
    torch.testing.assert_close(gE, torch.outer(alpha, gS), rtol=1e-5, atol=1e-8)  # ∂E_j = α_j ∂S


@pytest.mark.parametrize(
    "h,msg",
    [
        ([0.5, 0.5], r"shape \(2,\); expected \(3,\)"),
        ([0.5, float("nan"), 0.5], "NaN"),
        ([1.0, -0.5, 0.5], "negative"),
        ([0.0, 0.0, 0.0], "positive total"),
    ],
)
def test_bad_h(h, msg):
    with pytest.raises(ValueError, match=msg):
        check_h(h, 3)
    soup = SoupOfExperts(CFG, 3, SoupConfig(n_experts=2))
    with pytest.raises(ValueError, match=msg):
        soup.specialist(h)


def test_check_h_normalises():
    torch.testing.assert_close(check_h([1.0, 3.0], 2), torch.tensor([0.25, 0.75]))


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"router_output": "relu"}, "router_output"),
        ({"n_experts": -1}, "n_experts"),
        ({"expert_init": "ones"}, "expert_init"),
        ({"souped": ["*nothing*"]}, "matches no"),
    ],
)
def test_bad_soup_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SoupOfExperts(CFG, 3, SoupConfig(**kw))


@pytest.mark.parametrize("rank", [0, 2])
def test_several_h_per_step_equal_gradient_accumulation(rank):
    """h: (M, k) runs group m of the batch with Θ(h_m) from one GEMM; loss and every gradient (S, E
    or the low-rank factors, φ) equal M micro-batches of gradient accumulation, each loss / M."""
    cfg = SoupConfig(n_experts=3, expert_init="normal", expert_rank=rank)
    H = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0], [0.0, 0.6, 0.4]])
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, CFG.vocab_size, (6, 7), generator=g)
    x, y = t[:, :-1], t[:, 1:]
    batched = SoupOfExperts(CFG, 3, cfg)
    logits, loss = batched(x, h=H, targets=y)
    loss.backward()
    accum = SoupOfExperts(CFG, 3, cfg)
    ref_loss, ref_logits = 0.0, []
    for m in range(3):
        lg, lm = accum(x[2 * m : 2 * m + 2], h=H[m], targets=y[2 * m : 2 * m + 2])
        (lm / 3).backward()
        ref_loss, ref_logits = ref_loss + lm.item() / 3, ref_logits + [lg]
    assert torch.allclose(loss, torch.tensor(ref_loss), atol=1e-6)
    assert torch.allclose(logits, torch.cat(ref_logits), atol=1e-5)
    grads = dict(accum.named_parameters())
    for name, p in batched.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-6, rtol=1e-4), name
    *_, alpha = batched(x, h=H, targets=y, return_alpha=True)  # α of the step, returned (no attribute left behind)
    assert (
        alpha.shape == (3, 3) and torch.allclose(alpha, batched.coefficients(H)) and not hasattr(batched, "last_alpha")
    )
    with pytest.raises(ValueError, match="cannot be split into 3 equal groups"):
        batched(x[:4], h=H, targets=y[:4])
