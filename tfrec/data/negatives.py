"""Negative samplers: unigram^power over all items, or within the centre's market.

Both use Walker's alias method: O(1) per draw, fully vectorised (two random
arrays, one gather, one select), exact for any distribution. Building the
tables is O(number of items), once.
"""

from __future__ import annotations

import numpy as np

from tfrec.config import PairConfig


def alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Builds Walker/Vose alias tables for sampling index i with prob ∝ weights[i].

    Returns:
      (prob, alias): [n] float32 acceptance probabilities and [n] int64 alias
      indices. Draw k uniformly in [0, n), u in [0, 1): the sample is k if
      u < prob[k] else alias[k].
    """
    weights = np.asarray(weights, dtype=np.float64)
    n = len(weights)
    total = weights.sum()
    if n == 0 or not total > 0:
        raise ValueError("alias table needs at least one positive weight")
    scaled = weights * (n / total)
    prob = np.ones(n, dtype=np.float64)
    alias = np.arange(n, dtype=np.int64)
    small = list(np.flatnonzero(scaled < 1.0))
    large = list(np.flatnonzero(scaled >= 1.0))
    scaled = scaled.tolist()
    prob_list = prob.tolist()
    alias_list = alias.tolist()
    while small and large:
        s = small.pop()
        g = large[-1]
        prob_list[s] = scaled[s]
        alias_list[s] = g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        if scaled[g] < 1.0:
            large.pop()
            small.append(g)
    # Whatever is left is 1 up to rounding error.
    for rest in small + large:
        prob_list[rest] = 1.0
    return np.asarray(prob_list, dtype=np.float32), np.asarray(alias_list, dtype=np.int64)


class UnigramSampler:
    """Samples item indices with probability ∝ count ** power (word2vec: 0.75).

    Items with count 0 (the OOV bucket, cold items) are never drawn.
    """

    def __init__(self, counts: np.ndarray, power: float = PairConfig.negative_power):
        counts = np.asarray(counts, dtype=np.float64)
        self.probabilities = np.where(counts > 0, counts, 0.0) ** power
        self.probabilities[counts <= 0] = 0.0
        self.probabilities /= self.probabilities.sum()
        self._prob, self._alias = alias_table(self.probabilities)
        self._alias = self._alias.astype(np.int32)

    def sample(self, rng: np.random.Generator, shape) -> np.ndarray:
        """[*shape] int32 item indices."""
        k = rng.integers(0, len(self._prob), size=shape, dtype=np.int32)
        u = rng.random(size=shape, dtype=np.float32)
        return np.where(u < self._prob[k], k, self._alias[k])


class MarketSampler:
    """Samples, for each centre item, negatives from the centre's own market.

    Within a market items are drawn ∝ count ** power. A centre whose market is
    unknown (-1) or has no item with events falls back to the global
    unigram sampler.
    """

    def __init__(self, counts: np.ndarray, market: np.ndarray,
                 power: float = PairConfig.negative_power,
                 fallback: UnigramSampler | None = None):
        counts = np.asarray(counts, dtype=np.float64)
        market = np.asarray(market, dtype=np.int64)
        self.item_market = market
        self.fallback = fallback or UnigramSampler(counts, power)
        weights = np.where(counts > 0, counts, 0.0) ** power
        weights[counts <= 0] = 0.0
        eligible = np.flatnonzero((market >= 0) & (weights > 0))
        num_markets = int(market.max()) + 1 if len(market) and market.max() >= 0 else 0
        order = eligible[np.argsort(market[eligible], kind="stable")]
        sizes = np.bincount(market[order], minlength=num_markets)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if num_markets else np.zeros(0)
        prob = np.ones(len(order), dtype=np.float32)
        alias = np.zeros(len(order), dtype=np.int32)
        for m in np.flatnonzero(sizes):
            a, b = offsets[m], offsets[m] + sizes[m]
            p, al = alias_table(weights[order[a:b]])
            prob[a:b] = p
            alias[a:b] = order[a:b][al]
        self._items = order.astype(np.int32)
        self._prob, self._alias = prob, alias
        self._offsets = np.append(offsets, 0).astype(np.int64)
        self._sizes = np.append(sizes, 0).astype(np.int64)  # market -1 reads the last slot

    def sample(self, rng: np.random.Generator, centres: np.ndarray, num: int) -> np.ndarray:
        """[len(centres), num] int32 items from each centre's market."""
        markets = self.item_market[centres]
        sizes = self._sizes[markets][:, None]
        offsets = self._offsets[markets][:, None]
        u1 = rng.random((len(centres), num), dtype=np.float32)
        u2 = rng.random((len(centres), num), dtype=np.float32)
        slot = offsets + np.minimum((u1 * sizes).astype(np.int64), np.maximum(sizes - 1, 0))
        has = (sizes > 0)[:, 0]
        out = np.empty((len(centres), num), dtype=np.int32)
        if has.any():
            s = slot[has]
            out[has] = np.where(u2[has] < self._prob[s], self._items[s], self._alias[s])
        if not has.all():
            out[~has] = self.fallback.sample(rng, (int((~has).sum()), num))
        return out
