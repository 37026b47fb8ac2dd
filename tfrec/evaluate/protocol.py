"""Scoring a model on held-out cases: ranks, HR@k and NDCG@k.

The cases come from the run's split (`tfrec.data.split`). All catalogue
items are candidates (cold ones included: their text is known), except the
query's own items. Scores are given for all, warm and cold targets.
"""

from __future__ import annotations

import numpy as np

from tfrec.data.sequences import histories_from_lists
from tfrec.data.split import Cases
from tfrec.data.vocab import OOV_INDEX
from tfrec.errors import InputError
from tfrec.evaluate.metrics import hit_rate, ndcg, target_ranks


def score_cases(ranks: np.ndarray, cases: Cases, k: int = 10) -> dict:
    """HR@k and NDCG@k for all, warm and cold targets."""
    out = {}
    for name, mask in (("all", np.ones(len(cases), bool)), ("warm", ~cases.cold),
                       ("cold", cases.cold)):
        out[name] = {"cases": int(mask.sum()), f"hr@{k}": hit_rate(ranks[mask], k),
                     f"ndcg@{k}": ndcg(ranks[mask], k)}
    out["unknown_targets"] = cases.unknown_targets
    return out


def rank_targets(model, queries: list, targets: np.ndarray, history_length: int,
                 items: np.ndarray | None = None):
    """Ranks of `targets` over the catalogue, each query's own items excluded.

    Args:
      model: anything with `item_embeddings()` and `query_embeddings(history)`.
      queries: item index lists; the query tower sees the last history_length.
      targets: [n] item indices.
      items: the model's item embeddings, if already computed.

    Returns:
      (ranks [n], item embeddings, query embeddings).
    """
    items = model.item_embeddings() if items is None else items
    query_embeddings = model.query_embeddings(histories_from_lists(queries, history_length))
    valid = np.ones(len(items), dtype=bool)
    valid[OOV_INDEX] = False
    ranks = target_ranks(query_embeddings, items, np.asarray(targets), queries, valid)
    return ranks, items, query_embeddings


def evaluate_model(model, cases: Cases, history_length: int, k: int = 10) -> dict:
    """Ranks every case's target with the model's query and item embeddings."""
    if len(cases) == 0:
        raise InputError("no evaluation cases: no held-out session has two distinct items")
    ranks, _, _ = rank_targets(model, cases.queries, cases.targets, history_length)
    return score_cases(ranks, cases, k)
