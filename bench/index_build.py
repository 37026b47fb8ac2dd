"""The ScaNN index's build: seeded (this release) against TFRS's own build, side by side.

    python bench/index_build.py                    # 1M generated items, dimension 64
    python bench/index_build.py --items 50000 --gaussian

TFRS's `ScaNN` layer starts the tree's centres from ScaNN's random
initialisation, which draws from an unseeded source: two builds over the
same embeddings partition them differently, and an export made twice answers
differently. `tfrec.index.ann.build_index` builds with ScaNN's seeded
k-means++ start instead. For each builder, built twice in this process over
the same catalogue (`bench/export.py`'s planted clusters, or `--gaussian`
unstructured vectors, the harder case for a tree): the build time, recall@10
against exact search on session queries, and the share of the top-50 slots
the two builds fill alike (1.0: the same index).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tfrec  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

from tfrec.index import ann  # noqa: E402
from tfrec.index.ann import IndexConfig, build_index, recall_at_k  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--gaussian", action="store_true",
                        help="unstructured N(0, 1) vectors in place of planted clusters")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(__file__))
    from export import catalogue

    rng = np.random.default_rng(5)
    if args.gaussian:
        vectors = rng.normal(size=(args.items, args.dim)).astype(np.float32)
    else:
        vectors, _ = catalogue(args.items, args.dim)
    ids = np.char.add("i", np.arange(args.items).astype(str))
    picked = vectors[rng.integers(0, args.items, args.queries)]
    queries = (picked + 0.1 * rng.normal(size=picked.shape)).astype(np.float32)
    config = IndexConfig(kind="scann", max_k=100)
    builders = {"seeded k-means++ (tfrec)": build_index,
                "TFRS's own (random start)": _tfrs_index}
    rows = []
    for name, build in builders.items():
        answers, times, recalls = [], [], []
        for _ in range(2):
            start = time.perf_counter()
            index = build(vectors, ids, config)
            times.append(time.perf_counter() - start)
            recalls.append(recall_at_k(index, queries, vectors, ids, 10))
            answers.append(index(tf.constant(queries[:200]), k=50)[1].numpy())
            del index
        rows.append((name, times, recalls, float((answers[0] == answers[1]).mean())))
        print(f"  done: {name}", file=sys.stderr, flush=True)
    kind = "gaussian" if args.gaussian else "planted clusters"
    print(f"{args.items:,} items ({kind}), dimension {args.dim}, "
          f"{ann.scann_parameters(args.items, config)}")
    head = f"{'builder':<28}{'build s':>14}{'recall@10':>18}{'slots alike':>13}"
    print(head)
    print("-" * len(head))
    for name, times, recalls, alike in rows:
        print(f"{name:<28}{times[0]:>7.1f}{times[1]:>7.1f}{recalls[0]:>9.4f}{recalls[1]:>9.4f}"
              f"{alike:>13.3f}")


def _tfrs_index(vectors, ids, config):
    """The index as TFRS's `ScaNN` layer builds it (the searcher it serialises freed)."""
    import tensorflow_recommenders as tfrs

    params = ann.scann_parameters(len(vectors), config)
    layer = tfrs.layers.factorized_top_k.ScaNN(k=config.max_k, name="scann", **params)
    built, build = [], layer._build_searcher
    layer._build_searcher = lambda candidates: built.append(build(candidates)) or built[-1]
    layer.index(tf.constant(vectors), tf.constant(ids))
    for searcher in built:
        tf.raw_ops.DestroyResourceOp(resource=searcher.searcher_handle, ignore_lookup_error=True)
    return layer


if __name__ == "__main__":
    main()
