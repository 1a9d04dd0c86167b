"""The per-tensor merge rules against their definitions (soe/merging/methods.py)."""

from __future__ import annotations

import pytest
import torch

from soe.merging import methods as M


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_merging_identical_models_returns_the_model():
    base = torch.randn(8, 5, generator=_g(0))
    theta = base + torch.randn(8, 5, generator=_g(1))
    taus = [theta - base] * 3
    assert torch.allclose(M.linear([theta] * 3, [1.0, 2.0, 0.5]), theta, atol=1e-6)
    assert torch.allclose(M.combine(base, taus, [1 / 3] * 3), theta, atol=1e-6)  # TA with weights summing to 1
    assert torch.allclose(M.combine(base, taus, [1.0] * 3, consensus=True, normalize=True), theta, atol=1e-6)


def test_task_arithmetic_lambda_zero_is_the_base():
    base = torch.randn(4, 4, generator=_g(2))
    taus = [torch.randn(4, 4, generator=_g(i)) for i in range(3)]
    assert torch.equal(M.combine(base, taus, [1.0] * 3, lam=0.0), base)
    want = base + 0.3 * (taus[0] + 2 * taus[1] + taus[2])
    assert torch.allclose(M.combine(base, taus, [1.0, 2.0, 1.0], lam=0.3), want, atol=1e-6)


@pytest.mark.parametrize("density", [0.1, 0.25, 0.5, 0.9])
def test_ties_trim_keeps_exactly_the_requested_share(density):
    tau = torch.randn(37, 11, generator=_g(3))
    kept = M.trim_topk(tau, density)
    k = int(density * tau.numel())
    assert int((kept != 0).sum()) == k
    assert kept.abs()[kept != 0].min() >= tau.abs()[kept == 0].max()  # the largest ones
    assert torch.equal(kept[kept != 0], tau[kept != 0])  # kept values unchanged


def test_ties_resolves_a_planted_sign_conflict_as_the_paper_says():
    # entry 0: +3 and +1 against -2 -> elected +, disjoint mean of (3, 1) = 2
    # entry 1: -5 against +1, +1 -> sum -3 -> elected -, mean of (-5) = -5
    # entry 2: trimmed everywhere but model 2 -> its value alone
    base = torch.zeros(3)
    taus = [torch.tensor([3.0, -5.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]), torch.tensor([-2.0, 1.0, 0.7])]
    out = M.combine(base, taus, [1.0, 1.0, 1.0], consensus=True, normalize=True)
    assert torch.allclose(out, torch.tensor([2.0, -5.0, 0.7]))
    plain = M.combine(base, taus, [1 / 3] * 3)  # task arithmetic averages the conflict away
    assert plain[1] == pytest.approx(-1.0)


def test_model_level_trim_uses_one_threshold_over_all_tensors():
    a, b = torch.tensor([10.0, 9.0, 8.0, 7.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    thr = M.model_threshold(torch.cat([a, b]).abs(), 0.5)
    assert thr == 7.0
    assert int((M.trim_threshold(a, thr) != 0).sum()) == 4 and int((M.trim_threshold(b, thr) != 0).sum()) == 0
    assert int((M.trim_topk(b, 0.5) != 0).sum()) == 2  # per tensor keeps half of each instead


def test_dare_inverse_rescale_keeps_the_expected_sum_and_l1_keeps_the_norm():
    tau = torch.rand(200, 50, generator=_g(4)) + 0.5
    sums = torch.stack([M.dare_drop(tau, 0.3, _g(s), "inverse").sum() for s in range(40)])
    assert abs(float(sums.mean()) / float(tau.sum()) - 1) < 0.01
    dropped = M.dare_drop(tau, 0.3, _g(0), "l1")
    assert float(dropped.abs().sum()) == pytest.approx(float(tau.abs().sum()), rel=1e-5)
    assert 0.27 < float((dropped != 0).float().mean()) < 0.33
    assert torch.equal(M.dare_drop(tau, 0.3, _g(7)), M.dare_drop(tau, 0.3, _g(7)))  # seeded
    with pytest.raises(ValueError, match="rescale"):
        M.dare_drop(tau, 0.3, _g(0), "l2")


def test_tensor_seed_depends_on_name_and_model_not_order():
    assert M.tensor_seed(0, "a", 0) == M.tensor_seed(0, "a", 0)
    assert (
        len({M.tensor_seed(0, "a", 0), M.tensor_seed(0, "b", 0), M.tensor_seed(0, "a", 1), M.tensor_seed(1, "a", 0)})
        == 4
    )
