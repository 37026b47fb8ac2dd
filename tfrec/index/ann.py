"""Building the retrieval index: TFRS ScaNN or BruteForce layers, and measuring recall."""

from __future__ import annotations

import dataclasses
import math
import time
import uuid

import numpy as np
import scann  # noqa: F401  (registers the Scann ops)
import tensorflow as tf
import tensorflow_recommenders as tfrs
from scann.scann_ops.py import scann_ops

from tfrec.config import IndexConfig  # noqa: F401  (the index settings, declared in the schema)
from tfrec.utils import quiet_native_stderr, utf8_text


# ScaNN's asymmetric hashing trains 16 centres per block on the catalogue's items.
SCANN_MIN_ITEMS = 16
# TFRS's `ScaNN` layer defaults, which `seeded_searcher_builder` builds with.
SCANN_TRAINING_ITERATIONS = 12
SCANN_DIMENSIONS_PER_BLOCK = 2


def release_searchers(*layers) -> bool:
    """Deletes the searchers of the ScaNN layers given (anything else is passed over); the
    next search makes its layer's anew.

    A loaded SavedModel's ScaNN layer makes its searcher under a name the loader gives it
    (TensorFlow's loader names every resource op of a load), so TensorFlow never deletes
    it: the SavedModel dropped, the searcher keeps its memory and a thread. Called from
    the loaded model (`release_index`), this deletes that searcher. Returns whether any
    layer had one.
    """
    released = False
    for layer in layers:
        state = getattr(layer, "_serialized_searcher", None)
        if isinstance(layer, tfrs.layers.factorized_top_k.ScaNN) and state is not None:
            tf.raw_ops.DestroyResourceOp(resource=state.recreate_handle(),
                                         ignore_lookup_error=True)
            released = True
    return released


def scann_parameters(num_items: int, config: IndexConfig) -> dict:
    """ScaNN tree and reordering settings for a catalogue of num_items."""
    leaves = config.num_leaves or int(min(2000, max(1, round(math.sqrt(num_items)))))
    leaves = max(1, min(leaves, num_items))
    reorder = config.num_reordering_candidates or max(200, 4 * config.max_k,
                                                      config.max_k + config.max_session_items)
    if reorder >= num_items:
        # Every leaf searched re-scores every item exactly: exact search, at the cost of
        # scoring a catalogue no larger than the reordering budget.
        default_search = leaves
    else:
        default_search = max(1, leaves // 10) if leaves >= 100 else max(1, leaves // 3)
    search = min(config.num_leaves_to_search or default_search, leaves)
    return {"num_leaves": leaves, "num_leaves_to_search": search,
            "num_reordering_candidates": min(reorder, num_items)}


def seeded_searcher_builder(name: str, k: int, params: dict):
    """candidates -> a ScaNN searcher: TFRS's `ScaNN` layer's build (dot products, the
    tree, asymmetric hashing of 2 dimensions a block, exact reordering) with the tree's
    centres started by ScaNN's seeded k-means++ instead of its random initialisation,
    which draws from an unseeded source: the same embeddings then always give the same
    index (an export made twice answers alike). On 1M generated items: 9.6-9.9 s to build
    against 6.5-6.6 s, recall@10 0.9999 against 0.9976-0.9987 (`bench/index_build.py`)."""

    def build(candidates):
        builder = scann_ops.builder(db=candidates, num_neighbors=k,
                                    distance_measure="dot_product")
        builder = builder.tree(num_leaves=params["num_leaves"],
                               num_leaves_to_search=params["num_leaves_to_search"],
                               training_iterations=SCANN_TRAINING_ITERATIONS,
                               random_init=False)
        builder = builder.score_ah(dimensions_per_block=SCANN_DIMENSIONS_PER_BLOCK)
        builder = builder.reorder(params["num_reordering_candidates"])
        # A name of its own, as TFRS gives it: no two searchers share one.
        return builder.build(shared_name=f"{name}/{uuid.uuid4()}")

    return build


def build_index(embeddings: np.ndarray, identifiers: np.ndarray, config: IndexConfig):
    """A TFRS top-k layer indexed over `embeddings` (rows named by `identifiers`).

    Its default k is max_k; the export's signatures ask for k plus the
    number of ids they exclude.
    """
    candidates = tf.constant(np.asarray(embeddings, dtype=np.float32))
    ids = tf.constant(np.asarray(identifiers).astype(str))
    k = min(config.max_k, len(embeddings))
    if config.kind == "brute_force":
        layer = tfrs.layers.factorized_top_k.BruteForce(k=k, name="brute_force")
        layer.num_items = len(embeddings)  # what `search` asks for at most
        return layer.index(candidates, ids)
    params = scann_parameters(len(embeddings), config)
    layer = tfrs.layers.factorized_top_k.ScaNN(k=k, name="scann", **params)
    layer.num_items = len(embeddings)
    layer.num_leaves = params["num_leaves"]  # what `search` widens to
    # The searcher TFRS builds to serialise is a resource it never deletes: kept here to be.
    built, build = [], layer._build_searcher
    seeded = seeded_searcher_builder(layer.name, k, params)
    layer._build_searcher = lambda candidates: built.append(seeded(candidates)) or built[-1]
    try:
        with quiet_native_stderr():  # ScaNN logs its tree training (absl, C++) to stderr
            layer.index(candidates, ids)
    finally:
        layer._build_searcher = build
        for searcher in built:
            tf.raw_ops.DestroyResourceOp(resource=searcher.searcher_handle,
                                         ignore_lookup_error=True)
    return layer


def search(index, queries, k):
    """(scores, ids) [batch, k]: an index layer's top k, never short while its leaves
    together hold k items.

    A ScaNN search scores only the items of the leaves it searches. When a
    query's leaves hold fewer than k items, ScaNN answers short: the batch only
    as wide as its fullest row, the missing slots of a row scored NaN and
    named by the first item's id (a duplicate). Such a batch is searched again
    over every leaf, and its short rows take that answer (which happens only
    when k nears the items of a few leaves: a small catalogue, or a long
    history to exclude). A slot still
    empty after that (k above the items or ScaNN's reordering budget) is
    scored -inf and named "", what the signatures read as no item. A brute-force
    layer is asked for at most its items, then padded the same way.
    """
    items = getattr(index, "num_items", None)
    scores, ids = index(queries, k=k if items is None else tf.minimum(k, items))

    def padded(scores, ids):
        empty = tf.math.is_nan(scores)
        scores = tf.where(empty, tf.constant(float("-inf"), scores.dtype), scores)
        ids = tf.where(empty, tf.zeros_like(ids), ids)
        pad = [[0, 0], [0, tf.maximum(k - tf.shape(scores)[1], 0)]]
        return (tf.pad(scores, pad, constant_values=float("-inf")),
                tf.pad(ids, pad, constant_values=tf.zeros([], ids.dtype)))

    leaves = getattr(index, "num_leaves", None)
    if not (isinstance(index, tfrs.layers.factorized_top_k.ScaNN) and leaves):
        return padded(scores, ids)

    def everywhere():
        searcher = scann_ops.searcher_from_module(index._serialized_searcher)
        result = searcher.search_batched(queries, final_num_neighbors=k, leaves_to_search=leaves)
        return padded(result.distances, tf.gather(index._identifiers, result.indices))

    # Only the short rows take the wider search's answer (a batch is as wide as its
    # fullest row: narrower than k, every row is short).
    short = tf.logical_or(tf.reduce_any(tf.math.is_nan(scores), axis=1),
                          tf.shape(scores)[1] < k)
    scores, ids = padded(scores, ids)
    wide_scores, wide_ids = tf.cond(tf.reduce_any(short), everywhere, lambda: (scores, ids))
    return (tf.where(short[:, None], wide_scores, scores),
            tf.where(short[:, None], wide_ids, ids))


def build_index_for_recall(embeddings: np.ndarray, identifiers: np.ndarray, config: IndexConfig,
                           queries: np.ndarray, k: int, log=None):
    """Builds the index and measures its recall@k on `queries`.

    A ScaNN index whose recall is under `config.recall_floor` is rebuilt
    searching twice as many leaves, up to all of them, unless the caller set
    `num_leaves_to_search` (then its choice stands and the caller decides).

    Returns:
      (index, config actually used, recall@k, seconds spent building).
    """
    seconds = 0.0
    may_widen = config.num_leaves_to_search is None
    if config.kind == "scann" and len(embeddings) < SCANN_MIN_ITEMS:
        if log is not None:
            log(f"a catalogue of {len(embeddings)} items: exact search (brute force) in place "
                f"of ScaNN, whose quantisation needs at least {SCANN_MIN_ITEMS} items")
        config = dataclasses.replace(config, kind="brute_force")
    while True:
        started = time.perf_counter()
        index = build_index(embeddings, identifiers, config)
        seconds += time.perf_counter() - started
        recall = recall_at_k(index, queries, embeddings, identifiers, k)
        if config.kind != "scann" or recall >= config.recall_floor or not len(queries):
            return index, config, recall, seconds
        params = scann_parameters(len(embeddings), config)
        if not may_widen or params["num_leaves_to_search"] >= params["num_leaves"]:
            return index, config, recall, seconds
        wider = min(params["num_leaves"], 2 * params["num_leaves_to_search"])
        if log is not None:
            log(f"recall@{k} {recall:.3f} is under the floor {config.recall_floor}; "
                f"searching {wider} of {params['num_leaves']} leaves instead of "
                f"{params['num_leaves_to_search']}")
        config = dataclasses.replace(config, num_leaves_to_search=wider)


def exact_top_k(queries: np.ndarray, embeddings: np.ndarray, k: int) -> np.ndarray:
    """[n, k] row indices of the k highest dot products (numpy oracle).

    Queries go in chunks so the score matrix stays near 256 MB whatever the
    catalogue size.
    """
    k = min(k, embeddings.shape[0])
    chunk = max(1, (1 << 26) // max(embeddings.shape[0], 1))
    out = []
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk] @ embeddings.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def recall_at_ks(index, queries: np.ndarray, embeddings: np.ndarray, identifiers: np.ndarray,
                 ks) -> dict[int, float]:
    """k -> share of the exact top k the index also returns, averaged over queries.

    An item the index returns counts when its exact score reaches the k-th exact
    score (`tied_hits`): an item tied with the k-th, or a hair from it in float32,
    is as good an answer, so exact search scores 1.0 whatever order it breaks ties
    in. One index call and one exact search at the largest k serve every k.
    """
    kmax = min(max(ks), len(embeddings))
    if len(queries) == 0:
        return {k: float("nan") for k in ks}
    _, found = search(index, tf.constant(queries, tf.float32), kmax)
    found = utf8_text(found.numpy())
    names = np.asarray(identifiers).astype(str)
    order = np.argsort(names, kind="stable")  # each returned id's row, by a binary search
    at = np.minimum(np.searchsorted(names[order], found), len(names) - 1)
    found_rows = np.where(names[order][at] == found, order[at], -1)
    exact = exact_top_k(queries, embeddings, kmax)
    return {k: tied_hits(queries, embeddings, found_rows, exact, min(k, kmax)) for k in ks}


def tied_hits(queries: np.ndarray, embeddings: np.ndarray, found: np.ndarray,
              exact: np.ndarray, k: int) -> float:
    """Recall@k of `found` rows (-1: no item) against the `exact` top k rows (any
    order), ties counted.

    A found row is a hit when its score is at least the query's k-th exact score,
    less float32 rounding (1e-5 of |query| times the largest |item|); distinct rows
    only, at most k a query.
    """
    queries = np.asarray(queries, dtype=np.float32)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    found, exact = np.asarray(found)[:, :k], np.asarray(exact)[:, :k]
    largest = np.linalg.norm(embeddings, axis=1).max()
    hits = []
    # Queries in chunks: the gathered vectors stay near 16 MB whatever k and the width.
    chunk = max(1, (1 << 22) // max(1, k * embeddings.shape[1]))
    for start in range(0, len(queries), chunk):
        q, f = queries[start:start + chunk], found[start:start + chunk]
        kth = np.einsum("nd,nkd->nk", q, embeddings[exact[start:start + chunk]]).min(axis=1)
        slack = 1e-5 * np.linalg.norm(q, axis=1) * largest
        scores = np.einsum("nd,nkd->nk", q, embeddings[np.maximum(f, 0)])
        good = (f >= 0) & (scores >= (kth - slack)[:, None])  # any order of the exact rows
        hits += [len(set(rows[keep].tolist())) for rows, keep in zip(f, good)]  # distinct
    return float(np.mean(hits) / k)


def recall_at_k(index, queries: np.ndarray, embeddings: np.ndarray, identifiers: np.ndarray,
                k: int) -> float:
    """Share of the exact top-k ids the index also returns, averaged over queries."""
    return recall_at_ks(index, queries, embeddings, identifiers, (k,))[k]
