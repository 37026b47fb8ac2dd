"""How sure a difference between two methods is: a paired bootstrap over users.

Two methods ranked the same cases, so their difference is measured case by
case (paired), and the cases of one user are not independent draws (a
customer's invoices share its taste): the bootstrap resamples users with all
their cases, not single cases. With one case per user (a user split) it is
the ordinary paired bootstrap.

Each draw weighs every user by a Poisson(1) count (the Poisson bootstrap: the
multinomial's large-sample twin, drawn in chunks so that memory stays
bounded whatever the number of users), and the difference of a draw is the
weighted mean of the per-case differences. The interval is the draws' 2.5th
and 97.5th percentiles.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Bootstrap draws per interval: the percentiles of 1,000 draws move by about
# 0.001 HR between seeds on a few thousand cases, under the differences reported.
DRAWS = 1000
# Users x draws held at once.
CHUNK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class Interval:
    """A paired difference (a - b, means over the cases) and its 95% interval."""

    difference: float
    low: float
    high: float
    users: int

    @property
    def direction(self) -> str:
        """'above' (the interval is above 0), 'below', or 'within' (it holds 0)."""
        if self.low > 0:
            return "above"
        if self.high < 0:
            return "below"
        return "within"

    def as_dict(self) -> dict:
        return {"difference": self.difference, "interval95": [self.low, self.high],
                "users": self.users, "direction": self.direction}


def per_case(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each case's value of `metric` ("hr@K" or "ndcg@K", one relevant item), float64."""
    name, k = metric.split("@")
    ranks = np.asarray(ranks, np.float64)
    inside = ranks < int(k)
    if name == "hr":
        return inside.astype(np.float64)
    if name == "ndcg":
        return np.where(inside, 1.0 / np.log2(ranks + 2.0), 0.0)
    raise ValueError(f"unknown metric {metric!r}: expected hr@K or ndcg@K")


def paired_interval(a: np.ndarray, b: np.ndarray, users: np.ndarray | None = None,
                    draws: int = DRAWS, seed: int = 0) -> Interval | None:
    """The mean of a - b over the cases and its 95% bootstrap interval, users resampled.

    Args:
      a, b: [n] per-case values of two methods on the same cases.
      users: [n] the user of each case (default: every case its own user).
      draws: bootstrap draws.
      seed: the draws' seed (the same figures for the same cases and values).

    Returns:
      The `Interval`, or None without cases.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"per-case values of one shape expected, got {a.shape} and {b.shape}")
    if not len(a):
        return None
    if users is None:
        users = np.arange(len(a))
    users = np.asarray(users)
    if users.shape != a.shape:
        raise ValueError(f"{len(users)} users for {len(a)} cases")
    _, cluster = np.unique(users, return_inverse=True)
    count = int(cluster.max()) + 1
    sums = np.bincount(cluster, weights=a - b, minlength=count)
    sizes = np.bincount(cluster, minlength=count).astype(np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // count)
    means = []
    for start in range(0, draws, chunk):
        weights = rng.poisson(1.0, size=(min(chunk, draws - start), count)).astype(np.float64)
        total = weights @ sizes
        # A draw that picked no user at all (a handful of users) weighs them all once.
        empty = total == 0
        weights[empty], total[empty] = 1.0, sizes.sum()
        means.append((weights @ sums) / total)
    means = np.concatenate(means)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(float((a - b).mean()), float(low), float(high), count)
