"""The ranker's own serving cost: `CandidateRanker`'s call against the `FoldedRanker`
the exported graph runs, each in a `tf.function`, with an empty function as the floor.

    PYTHONPATH=. python bench/ranker_call.py --rounds 3000

An untrained ranker of the defaults' shape (`ranking.hidden_units`,
`ranking.members`) on one query's [1, N, 14] features; the three functions
take turns, so they meet the same load. Prints p50, p99 and min per call.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import tfrec  # noqa: F401  (first: it sets up tf.keras before TensorFlow is imported)
import tensorflow as tf  # noqa: I100

from tfrec.config import RankingConfig  # noqa: I100
from tfrec.ranking.features import FEATURES
from tfrec.ranking.ranker import CandidateRanker, FoldedRanker


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000, help="calls of each")
    parser.add_argument("--candidates", type=int, default=RankingConfig.num_candidates)
    parser.add_argument("--members", type=int, default=RankingConfig.members)
    parser.add_argument("--intra-op-threads", type=int, default=1,
                        help="TensorFlow's intra-op threads (default 1, as tfrec serve)")
    args = parser.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    width = len(FEATURES)
    rng = np.random.default_rng(0)
    ranker = CandidateRanker(width, RankingConfig.hidden_units, seed=1, members=args.members)
    ranker.adapt(rng.normal(size=(1000, width)).astype(np.float32))
    folded = FoldedRanker(ranker)
    features = tf.constant(rng.normal(size=(1, args.candidates, width)).astype(np.float32))
    mask = tf.ones([1, args.candidates], tf.bool)
    calls = {
        "CandidateRanker": tf.function(
            lambda f, m: ranker({"features": f, "candidate_mask": m})),
        "FoldedRanker": tf.function(lambda f, m: tf.where(m, folded(f), -1e9)),
        "empty": tf.function(lambda f, m: tf.where(m, f[..., 0], -1e9)),
    }
    a = calls["CandidateRanker"](features, mask).numpy()
    b = calls["FoldedRanker"](features, mask).numpy()
    times = {name: [] for name in calls}
    for r in range(args.rounds + 200):
        for name, call in (calls.items() if r % 2 == 0 else list(calls.items())[::-1]):
            started = time.perf_counter()
            call(features, mask)
            if r >= 200:  # the first calls trace and warm up
                times[name].append(time.perf_counter() - started)
    print(f"[1, {args.candidates}, {width}] features, {args.members} members, "
          f"{args.rounds} calls each, alternating; largest score difference "
          f"{np.abs(a - b).max():.2e}")
    print(f"{'function':<16} {'p50 us':>7} {'p99 us':>7} {'min us':>7}")
    for name, values in times.items():
        us = np.asarray(values) * 1e6
        print(f"{name:<16} {np.percentile(us, 50):7.0f} {np.percentile(us, 99):7.0f} "
              f"{us.min():7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
