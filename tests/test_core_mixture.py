"""π and mix(h): sampling frequencies, supports, determinism, bad input."""

import numpy as np
import pytest

from soe.data.mixture import MetaDistribution, MixtureConfig, MixtureSampler


def test_sequence_domains_follow_h():
    arrays = [np.full(1000, i, dtype=np.uint16) for i in range(4)]  # domain i holds only token i
    sampler = MixtureSampler(arrays, seq_len=8)
    h = np.array([0.1, 0.2, 0.3, 0.4])
    rng = np.random.default_rng(0)
    n = 20000
    tokens, domains = sampler.sample(h, n, rng)
    assert tokens.shape == (n, 9) and tokens.dtype == np.int64
    assert (tokens == domains[:, None]).all()  # each window comes from its sampled domain
    freq = np.bincount(domains, minlength=4) / n
    # 5 standard errors of a binomial proportion: fails on a real bias, essentially never by chance
    assert np.all(np.abs(freq - h) < 5 * np.sqrt(h * (1 - h) / n)), freq


def test_windows_cover_the_shard_uniformly():
    arr = np.arange(110, dtype=np.uint16)
    sampler = MixtureSampler([arr], seq_len=9)
    tokens, _ = sampler.sample(np.array([1.0]), 5000, np.random.default_rng(1))
    starts = tokens[:, 0]
    assert starts.min() == 0 and starts.max() == 100  # every start in [0, len - T - 1] is reachable
    assert (np.diff(tokens, axis=1) == 1).all()  # contiguous windows


def test_pi_support_and_simplex():
    pi = MetaDistribution(MixtureConfig(support_size=2, concentration=0.5), 6, np.ones(6))
    rng = np.random.default_rng(0)
    hs = np.stack([pi.sample(rng) for _ in range(2000)])
    assert np.allclose(hs.sum(1), 1) and (hs >= 0).all()
    assert ((hs > 0).sum(1) <= 2).all()
    counts = (hs > 0).sum(0) / len(hs)  # uniform choice of the support: each domain in 1/3 of h's
    assert np.all(np.abs(counts - 1 / 3) < 0.05), counts


def test_pi_random_support_sizes_cover_one_to_s():
    pi = MetaDistribution(MixtureConfig(support_size=0, random_support=True), 5, np.ones(5))
    rng = np.random.default_rng(0)
    sizes = np.array([(pi.sample(rng) > 0).sum() for _ in range(5000)])
    freq = np.bincount(sizes, minlength=6)[1:] / len(sizes)  # sizes 1..5, each w.p. 1/5
    assert np.all(np.abs(freq - 0.2) < 0.03), freq
    fixed = MetaDistribution(MixtureConfig(support_size=3), 5, np.ones(5))
    assert {(fixed.sample(rng) > 0).sum() for _ in range(200)} == {3}


def test_pi_prior_sampling_and_fixed_h():
    prior = np.array([0.7, 0.1, 0.1, 0.1])
    pi = MetaDistribution(MixtureConfig(support_size=1, domain_sampling="prior"), 4, prior)
    rng = np.random.default_rng(0)
    first = np.mean([pi.sample(rng)[0] > 0.5 for _ in range(3000)])  # support of one: h is one-hot
    assert abs(first - 0.7) < 0.04
    fixed = MetaDistribution(MixtureConfig(fixed_h="prior"), 4, prior * 10)
    assert np.allclose(fixed.sample(rng), prior)
    listed = MetaDistribution(MixtureConfig(fixed_h=[1, 1, 0, 2]), 4, prior)
    assert np.allclose(listed.sample(rng), [0.25, 0.25, 0, 0.5])
    full = MetaDistribution(MixtureConfig(support_size=0), 4, prior)
    assert (full.sample(rng) > 0).sum() > 2


def test_same_generator_same_batch():
    arrays = [np.arange(500, dtype=np.uint16) + 500 * i for i in range(3)]
    sampler = MixtureSampler(arrays, seq_len=16)
    h = np.array([0.3, 0.3, 0.4])
    a = sampler.sample(h, 8, np.random.default_rng([7, 3]))[0]
    b = sampler.sample(h, 8, np.random.default_rng([7, 3]))[0]
    c = sampler.sample(h, 8, np.random.default_rng([7, 4]))[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"support_size": -1}, "support_size"),
        ({"concentration": 0}, "concentration"),
        ({"domain_sampling": "zipf"}, "domain_sampling"),
        ({"fixed_h": "natural"}, "fixed_h"),
        ({"full_support_prob": 2.0}, "full_support_prob"),
    ],
)
def test_bad_mixture_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        MixtureConfig(**kw)


def test_bad_fixed_h_and_short_domain():
    with pytest.raises(ValueError, match=r"mixture.fixed_h has shape \(2,\); expected \(3,\)"):
        MetaDistribution(MixtureConfig(fixed_h=[1, 1]), 3, np.ones(3))
    with pytest.raises(ValueError, match="'tiny' has 5 tokens"):
        MixtureSampler([np.zeros(100), np.zeros(5)], seq_len=8, names=["big", "tiny"])


def test_fixed_h_with_many_rounded_weights_samples():
    """A dedicated model's fixed_h is an estimated histogram printed with 6 digits: normalised in float32
    it missed numpy's sum-to-1 tolerance ("Probabilities do not sum to 1") before mix(h) renormalised."""
    import numpy as np

    from soe.data.mixture import MetaDistribution, MixtureConfig, MixtureSampler

    h = [0.135736, 0.0106845, 0.0, 0.0, 0.0125933, 0.559414, 0.132015, 0.138137, 0.0114207]
    pi = MetaDistribution(MixtureConfig(fixed_h=h), 9, np.full(9, 1 / 9))
    arrays = [np.arange(100, dtype=np.int64) + 100 * i for i in range(9)]
    tokens, domains = MixtureSampler(arrays, 8).sample(
        pi.sample(np.random.default_rng(0)), 64, np.random.default_rng(1)
    )
    assert tokens.shape == (64, 9) and set(domains.tolist()) <= {0, 1, 4, 5, 6, 7, 8}
    assert abs(pi.sample(np.random.default_rng(0)).sum() - 1) < 1e-12  # π's fixed h is normalised in float64 itself
