import numpy as np
import pytest

from tfrec.data.negatives import MarketSampler, UnigramSampler, alias_table


def empirical(samples, size):
    return np.bincount(samples.ravel(), minlength=size) / samples.size


def test_alias_table_is_exact():
    weights = np.array([0.0, 1.0, 2.0, 7.0, 0.5])
    prob, alias = alias_table(weights)
    # Exact probability of each outcome from the tables themselves.
    n = len(weights)
    exact = np.zeros(n)
    for k in range(n):
        exact[k] += prob[k] / n
        exact[alias[k]] += (1 - prob[k]) / n
    np.testing.assert_allclose(exact, weights / weights.sum(), atol=1e-7)


def test_unigram_frequencies_match_power_075_on_a_large_sample():
    rng = np.random.RandomState(42)
    counts = np.concatenate([[0], rng.zipf(1.5, 500).clip(max=10_000)]).astype(np.int64)
    counts[7] = 0  # a cold item: never a negative
    sampler = UnigramSampler(counts, power=0.75)
    samples = sampler.sample(np.random.default_rng(42), (2_000_000,))
    expected = counts.astype(float) ** 0.75
    expected /= expected.sum()
    observed = empirical(samples, len(counts))
    assert observed[0] == 0 and observed[7] == 0
    # Each frequency within 5 standard errors of its expected value.
    se = np.sqrt(expected * (1 - expected) / samples.size)
    assert np.all(np.abs(observed - expected) <= 5 * se + 1e-12)
    # And clearly not the raw unigram distribution.
    raw = counts / counts.sum()
    assert np.abs(observed - raw).max() > 20 * se.max()


def test_unigram_sampler_is_deterministic_for_a_seed():
    sampler = UnigramSampler(np.array([0, 5, 3, 1]))
    a = sampler.sample(np.random.default_rng(7), (100, 5))
    b = sampler.sample(np.random.default_rng(7), (100, 5))
    c = sampler.sample(np.random.default_rng(8), (100, 5))
    assert a.shape == (100, 5) and a.dtype == np.int32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_market_negatives_always_come_from_the_centre_market():
    rng = np.random.RandomState(42)
    size = 300
    counts = np.concatenate([[0], rng.randint(1, 100, size - 1)])
    market = np.concatenate([[-1], rng.randint(0, 6, size - 1)]).astype(np.int32)
    sampler = MarketSampler(counts, market)
    centres = rng.randint(1, size, 20_000)
    negatives = sampler.sample(np.random.default_rng(1), centres, 4)
    assert negatives.shape == (20_000, 4)
    assert np.all(market[negatives] == market[centres][:, None])


def test_market_negatives_follow_power_law_within_market():
    counts = np.array([0, 100, 10, 1, 50, 50])
    market = np.array([-1, 0, 0, 0, 1, 1], dtype=np.int32)
    sampler = MarketSampler(counts, market, power=0.75)
    samples = sampler.sample(np.random.default_rng(3), np.full(400_000, 2), 1)
    expected = np.array([100, 10, 1]) ** 0.75
    expected /= expected.sum()
    observed = empirical(samples, 6)[1:4]
    np.testing.assert_allclose(observed, expected, atol=0.005)


def test_market_sampler_falls_back_when_market_is_unknown_or_empty():
    counts = np.array([0, 10, 10, 0])
    market = np.array([-1, 0, -1, 1], dtype=np.int32)  # market 1 holds only a cold item
    sampler = MarketSampler(counts, market)
    out = sampler.sample(np.random.default_rng(0), np.array([2, 3, 1]), 50)
    assert set(np.unique(out)) <= {1, 2}
    assert np.all(out[2] == 1)


def test_alias_table_rejects_all_zero_weights():
    with pytest.raises(ValueError):
        alias_table(np.zeros(3))
