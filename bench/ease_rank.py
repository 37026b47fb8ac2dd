"""How much of EASE a dot-product model of width d can hold: EASE's item-item
matrix truncated to its top d singular vectors, scored on the run config's
held-out cases beside full EASE.

A two-tower model scores item j for a query as q . v_j with d-wide vectors,
so its item-item scores form a rank-d matrix; EASE's B is full rank. This
prints HR@10 / NDCG@10 (warm targets) of B_d = U_d S_d V_dᵀ, as the
factorised model (query = x_query U_d S_d, candidate j = row j of V_d) a
d-wide two-tower could at best copy from EASE, for each d, and of full EASE.

    python bench/ease_rank.py                                     # Online Retail, λ 20
    python bench/ease_rank.py --config tfrec/configs/goodbooks.yaml --lam 100 \\
        --dims 256 512 1024 2048

Costs one EASE fit and one SVD of an n x n matrix (n = warm items): seconds
for Online Retail, about 6 minutes for goodbooks-10k on 2 cores.
"""

from __future__ import annotations

import argparse
import time

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np

from tfrec.ranking import item_item
from tfrec.metrics import hit_rate, ndcg, target_ranks
from tfrec.run import load_run_config, prepare_training_data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tfrec/configs/online_retail.yaml")
    parser.add_argument("--lam", type=float, default=20.0, help="EASE's λ")
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    args = parser.parse_args(argv)

    data = prepare_training_data(load_run_config(args.config))
    cases, vocab = data.cases, data.vocab
    started = time.perf_counter()
    active, gram = item_item.active_gram(item_item.basket_matrix(data.sessions, vocab.size))
    weights = item_item.ease_weights(gram, args.lam)
    fit = time.perf_counter() - started
    valid = np.ones(vocab.size, dtype=bool)
    valid[0] = False
    warm = ~cases.cold
    queries = item_item.multi_hot(cases.queries, vocab.size)[:, active].astype(np.float32)

    def score(query_vectors, item_vectors):
        items = np.zeros((vocab.size, item_vectors.shape[1]), np.float32)
        items[active] = item_vectors
        ranks = target_ranks(np.asarray(query_vectors, np.float32), items, cases.targets,
                             cases.queries, valid)
        return hit_rate(ranks[warm], 10), ndcg(ranks[warm], 10)

    print(f"{args.config}: {len(cases):,} cases ({int(warm.sum()):,} warm), "
          f"{len(active):,} warm items; EASE λ {args.lam:g} fitted in {fit:.0f}s")
    print(f"{'model':<12}{'HR@10 warm':>12}{'NDCG@10 warm':>14}")
    hr, nd = score(queries @ weights, np.eye(len(active), dtype=np.float32))
    print(f"{'EASE':<12}{hr:>12.4f}{nd:>14.4f}")
    started = time.perf_counter()
    left, singular, right = np.linalg.svd(weights)
    print(f"(SVD in {time.perf_counter() - started:.0f}s)")
    for d in args.dims:
        if d > len(active):
            continue
        hr, nd = score(queries @ (left[:, :d] * singular[:d]), right[:d].T)
        print(f"{'rank ' + str(d):<12}{hr:>12.4f}{nd:>14.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
