"""RegMean / LOT closed forms and CAT's conflict removal (soe/merging/datamerge.py), on planted toys."""

from __future__ import annotations

import torch

from soe.core.model import LlamaLM, ModelConfig
from soe.merging import datamerge as D
from soe.merging.features import collect


def _g(s):
    return torch.Generator().manual_seed(s)


def test_regmean_and_lot_equal_the_least_squares_solution():
    d_in, d_out = 6, 4
    X = [torch.randn(50, d_in, generator=_g(i), dtype=torch.float64) for i in range(3)]
    base = torch.randn(d_out, d_in, generator=_g(9))
    taus = [torch.randn(d_out, d_in, generator=_g(10 + i)) for i in range(3)]
    W = [base + t for t in taus]
    grams = [x.T @ x for x in X]
    # least squares over the stacked exemplars: min_W Σ_k ‖X_k Wᵀ − X_k W_kᵀ‖²
    lhs = torch.cat(X)
    rhs = torch.cat([x @ w.double().T for x, w in zip(X, W)])
    want = torch.linalg.lstsq(lhs, rhs).solution.T
    assert torch.allclose(D.regmean(W, grams, alpha=1.0).double(), want, atol=1e-4)
    assert torch.allclose(D.lot_linear(base, taus, grams, ridge=0.0).double(), want, atol=1e-4)
    # shrinkage α < 1 changes it; λ = 0 is the base
    assert not torch.allclose(D.regmean(W, grams, alpha=0.5).double(), want, atol=1e-3)
    assert torch.allclose(D.lot_linear(base, taus, grams, lam=0.0), base)


def test_regmean_of_disjoint_features_keeps_each_models_map_on_its_own_inputs():
    # model 0 only sees input dims 0-1, model 1 only dims 2-3: the merge reproduces both exactly there
    e = torch.eye(4, dtype=torch.float64)
    grams = [e[:, :2] @ e[:, :2].T * 10, e[:, 2:] @ e[:, 2:].T * 10]
    W = [torch.randn(3, 4, generator=_g(i)) for i in range(2)]
    out = D.regmean(W, grams, alpha=1.0)
    assert torch.allclose(out[:, :2], W[0][:, :2], atol=1e-5) and torch.allclose(out[:, 2:], W[1][:, 2:], atol=1e-5)


def test_lot_gain_is_the_energy_weighted_mean():
    base = torch.ones(3)
    taus = [torch.tensor([1.0, 0.0, 2.0]), torch.tensor([3.0, 1.0, 0.0])]
    energies = [torch.tensor([1.0, 1.0, 0.0]), torch.tensor([3.0, 1.0, 1.0])]
    assert torch.allclose(D.lot_gain(base, taus, energies), torch.tensor([1 + 2.5, 1.5, 1.0]))


def test_cat_removes_the_planted_conflicting_direction_and_leaves_the_rest():
    # Inputs: task 1 lives on e1, task 2 on e2. τ_1 maps e1 -> a (its own job) and e2 -> u (it moves task 2's
    # features: the conflict). τ_2 maps e2 -> b. a, b, u orthonormal.
    d_in, d_out, g = 3, 4, 100.0
    e = torch.eye(d_in, dtype=torch.float64)
    a, b, u = torch.eye(d_out, dtype=torch.float64)[:3]
    T1 = torch.outer(e[0], a) + 0.5 * torch.outer(e[1], u)  # (d_in, d_out)
    T2 = torch.outer(e[1], b)
    grams = [g * torch.outer(e[0], e[0]), g * torch.outer(e[1], e[1])]
    t1, t2 = D.cat_linear([T1.T.float(), T2.T.float()], grams, rank=1)
    assert torch.allclose(e[1].float() @ t1.T, torch.zeros(d_out), atol=1e-5)  # conflict gone: e2 no longer moves
    assert torch.allclose(e[0].float() @ t1.T, a.float(), atol=1e-5)  # task 1's own map kept
    assert torch.allclose(t2, T2.T.float(), atol=1e-6)  # nothing of task 2 conflicts: unchanged


def test_cat_gain_zeroes_only_conflicting_dimensions():
    taus = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 0.0, 0.1])]
    energies = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([9.0, 0.0, 0.0, 1.0])]  # task 2 uses dim 0 a lot
    t0, t1 = D.cat_gain(taus, energies, norm_share=0.25)
    assert t0.tolist() == [0.0, 1.0, 1.0, 1.0] and torch.equal(t1, taus[1])


def test_collect_hooks_every_linear_layer_and_gain():
    cfg = ModelConfig(vocab_size=32, n_layer=2, n_head=2, d_model=8, max_seq_len=16)
    torch.manual_seed(0)
    net = LlamaLM(cfg)
    wins = torch.randint(0, 32, (5, 16), generator=_g(0))
    f = collect(net, wins, batch_size=2)
    linear = {n for n, p in net.named_parameters() if p.ndim == 2 and "embed" not in n}
    gains = {n for n, p in net.named_parameters() if p.ndim == 1}
    assert set(f.gram) == linear and set(f.energy) == gains and f.tokens == 80
    # q_proj's Gram is XᵀX of the first block's normalised input: check it by hand
    x = net.model.layers[0].input_layernorm(net.model.embed_tokens(wins)).reshape(-1, 8).double()
    assert torch.allclose(f.gram["model.layers.0.self_attn.q_proj.weight"], x.T @ x, atol=1e-4)
    assert f.gram["model.layers.0.mlp.down_proj.weight"].shape == (cfg.ff_dim, cfg.ff_dim)


def test_semantic_coefficients_follow_the_model_that_changed_a_layer():
    from soe.merging import semantic as S

    cfg = ModelConfig(vocab_size=40, n_layer=2, n_head=2, d_model=8, max_seq_len=16)
    torch.manual_seed(0)
    base = LlamaLM(cfg).eval()
    a, b = LlamaLM(cfg).eval(), LlamaLM(cfg).eval()
    a.load_state_dict(base.state_dict())
    b.load_state_dict(base.state_dict())
    with torch.no_grad():  # model a changes block 0 only, model b block 1 only
        a.model.layers[0].mlp.down_proj.weight.add_(0.5 * torch.randn(8, cfg.ff_dim, generator=_g(1)))
        b.model.layers[1].mlp.down_proj.weight.add_(0.5 * torch.randn(8, cfg.ff_dim, generator=_g(2)))
    s = S.semantic_scores(base, [a, b], probe_len=8, probe_batch=4)
    assert s[0, 0] > 0 and s[0, 1] == 0 and s[1, 0] == 0 and s[1, 1] > 0
    c = S.layer_coefficients(s, [1.0, 1.0])
    assert torch.allclose(c, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # each layer goes to the model that changed it
    assert torch.allclose(
        S.layer_coefficients(torch.zeros(2, 2), [1.0, 3.0]), torch.tensor([[0.25, 0.25], [0.75, 0.75]])
    )
    assert S.block_index("model.layers.1.mlp.up_proj.weight") == 1 and S.block_index("model.norm.weight") is None
    # each anchor is the least-squares preimage of its token's one-hot logits: W a_v = P e_v, so (W a_v)_v > 0
    x = S.anchors(base, 5, seed=0)
    w = base.model.embed_tokens.weight.detach()
    ids = torch.randint(40, (5,), generator=torch.Generator().manual_seed(0))
    proj = w @ torch.linalg.pinv(w)  # P, the projection on W's column space
    assert torch.allclose(x @ w.T, proj[:, ids].T, atol=1e-4)
