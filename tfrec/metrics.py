"""Ranking metrics, and scoring a model on held-out cases.

Metrics are computed from the rank of the held-out item (0 = first). The
cases come from the run's split (`tfrec.data.split`). All catalogue items
are candidates (cold ones included: their text is known), except the
query's own items. Scores are given for all, warm and cold targets.

Training scores its held-out cases here; `tfrec.evaluate` builds the full
comparison (baselines, analyses, report) on top.
"""

from __future__ import annotations

import numpy as np

from tfrec.config import TrainConfig
from tfrec.data.sequences import histories_from_lists
from tfrec.data.split import Cases
from tfrec.data.vocab import OOV_INDEX
from tfrec.errors import InputError


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Share of cases whose held-out item ranks in the top k."""
    ranks = np.asarray(ranks)
    return float((ranks < k).mean()) if len(ranks) else float("nan")


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 2) inside the top k, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if not len(ranks):
        return float("nan")
    return float(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0).mean())


def target_ranks(query_embeddings, item_embeddings, targets: np.ndarray, exclude: list,
                 valid: np.ndarray | None = None, chunk: int | None = None,
                 tie_seed: int | None = 0, target_embeddings=None,
                 extra_scores=None) -> np.ndarray:
    """Rank of each target among all valid items by dot-product score.

    Args:
      query_embeddings: [n, d] (numpy, or a scipy sparse matrix).
      item_embeddings: [num_items, d] (numpy, or a scipy sparse matrix).
      targets: [n] item index of each case's held-out item.
      exclude: n lists of item indices not to rank (the query's own items).
      valid: [num_items] bool, items that may be recommended (default all).
      tie_seed: items scoring exactly as much as the target are put in a
        random order fixed by this seed, and those before the target count
        against it (an unbiased tie-break: a method scoring everything
        equally gets chance-level ranks). None counts no tie against it.
      target_embeddings: [n, d] dense, optional: score each case's target
        with this row instead of its own item embedding (e.g. its text-only
        embedding: the target as if it were a brand-new item).
      extra_scores: optional, (start, stop) -> [stop - start, num_items]
        scores added to the dot products of cases start..stop - 1 (a method
        scoring some items another way; not with `target_embeddings`).

    Returns:
      [n] int64 ranks (0 = first): how many valid, non-excluded items come
      before the target.
    """
    if extra_scores is not None and target_embeddings is not None:
        raise ValueError("extra_scores and target_embeddings cannot be combined")
    n, num_items = len(targets), item_embeddings.shape[0]
    if query_embeddings.shape[0] != n or len(exclude) != n:
        raise ValueError(f"{query_embeddings.shape[0]} queries and {len(exclude)} exclusion "
                         f"lists for {n} targets")
    valid = np.ones(num_items, dtype=bool) if valid is None else np.asarray(valid, bool)
    chunk = chunk or max(1, (1 << 24) // max(num_items, 1))
    priority = (None if tie_seed is None
                else np.random.default_rng(tie_seed).permutation(num_items))
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scores = query_embeddings[start:stop] @ item_embeddings.T
        scores = np.asarray(scores.toarray() if hasattr(scores, "toarray") else scores,
                            dtype=np.float64)
        if extra_scores is not None:
            scores += np.asarray(extra_scores(start, stop), np.float64)
        scores[:, ~valid] = -np.inf
        rows = np.concatenate([np.full(len(e), i) for i, e in
                               enumerate(exclude[start:stop])] + [np.zeros(0, int)])
        cols = np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude[start:stop]]
                              + [np.zeros(0, np.int64)])
        scores[rows.astype(np.int64), cols] = -np.inf
        target = targets[start:stop]
        if target_embeddings is None:
            own = scores[np.arange(stop - start), target]
        else:
            own = np.sum(np.asarray(query_embeddings[start:stop], np.float64)
                         * np.asarray(target_embeddings[start:stop], np.float64), axis=1)
            own = np.where(valid[target], own, -np.inf)
            scores[np.arange(stop - start), target] = -np.inf
        before = (scores > own[:, None]).sum(axis=1)
        if priority is not None:
            tied = (scores == own[:, None]) & (priority[None, :] < priority[target][:, None])
            before += tied.sum(axis=1)
        ranks[start:stop] = before
    return ranks


def top_k_items(query_emb: np.ndarray, item_emb: np.ndarray, exclude: list, valid: np.ndarray,
                k: int, chunk: int | None = None) -> np.ndarray:
    """[n, k] the k best valid items of each query, its own items excluded (unordered).
    Queries are scored `chunk` at a time (default: at most 16M scores a chunk)."""
    chunk = chunk or max(1, min(1024, (1 << 24) // max(item_emb.shape[0], 1)))
    out = []
    for start in range(0, len(query_emb), chunk):
        scores = query_emb[start:start + chunk] @ item_emb.T
        scores[:, ~valid] = -np.inf
        for row, own in enumerate(exclude[start:start + chunk]):
            scores[row, own] = -np.inf
        # A copy: the slice alone would hold the chunk's whole [chunk, V] partition.
        out.append(np.argpartition(-scores, k - 1, axis=1)[:, :k].copy())
    return np.concatenate(out)


# Held-out cases ----------------------------------------------------------------------------

def score_cases(ranks: np.ndarray, cases: Cases, k: int = TrainConfig.eval_k) -> dict:
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


def evaluate_model(model, cases: Cases, history_length: int,
                   k: int = TrainConfig.eval_k) -> dict:
    """Ranks every case's target with the model's query and item embeddings."""
    if len(cases) == 0:
        raise InputError("no evaluation cases: no held-out session has two distinct items")
    ranks, _, _ = rank_targets(model, cases.queries, cases.targets, history_length)
    return score_cases(ranks, cases, k)
