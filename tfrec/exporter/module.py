"""What an exported version serves: `RecommenderModule`, its signatures and their tables.

The model's id vocabulary (what the towers know: item id -> embedding row, the
items of a session or of a user's history) is kept apart from the catalogue
(the rows of the retrieval index: what may be recommended). A full export
serves the whole vocabulary; `tfrec export --add-items / --drop-items` builds
a version whose catalogue has items the model never saw (embedded from their
text) and lacks dropped ones, with the same model.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrec.config import IndexConfig
from tfrec.exporter.catalogue import Catalogue
from tfrec.index.ann import release_searchers, search

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class UserCache:
    """The known users' query embeddings, computed once at export.

    Attributes:
      ids: [users] user ids (str).
      embeddings: [users, dim] float32 query embeddings of their histories.
      histories: [users, history_length] int32 vocabulary indices of the
        items each embedding was built from (0-padded on the left); served
        recommendations never include them.
    """

    ids: np.ndarray
    embeddings: np.ndarray
    histories: np.ndarray

    @classmethod
    def empty(cls, history_length: int, dim: int) -> "UserCache":
        return cls(np.zeros(0, dtype=object), np.zeros((0, dim), np.float32),
                   np.zeros((0, history_length), np.int32))


def _table(keys: np.ndarray, default: int) -> tf.lookup.StaticHashTable:
    """keys -> 1..n, anything else (and "") -> default. "" is a key so that the table is
    never empty (a table may not be)."""
    keys = np.concatenate([[""], np.asarray(keys).astype(str)])
    values = np.arange(len(keys), dtype=np.int32)
    values[0] = default
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string), tf.constant(values)),
        default_value=default)


def catalogue_changes(item_ids: np.ndarray,
                      catalogue: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    """The catalogue against the model's vocabulary `item_ids` (OOV first).

    Returns:
      (catalogue rows of the items the vocabulary lacks (added), in catalogue
      order; vocabulary indices of the items the catalogue lacks (dropped)).
    """
    vocab = np.asarray(item_ids[1:]).astype(str)
    ids = np.asarray(catalogue.ids).astype(str)
    added = np.flatnonzero(pd.Index(vocab).get_indexer(ids) < 0)
    dropped = np.flatnonzero(pd.Index(ids).get_indexer(vocab) < 0) + 1
    return added, dropped


class RecommenderModule(tf.Module):
    """What the SavedModel serves: text preprocessing, towers and the index.

    Signatures (named inputs -> named outputs):
      serving_default: item_ids [batch, length] string (sessions, padded with
        "", length at most max_session_items), k [] int32  ->  item_ids
        [batch, k] string, scores [batch, k] float32, fallback [batch] bool;
        the sessions' own items are never recommended. A session with no
        item known to the model gets the most popular items (scores: their
        share of the training events) and fallback true.
      similar_items: item_ids [batch] string, k  ->  item_ids, scores (the
        item itself excluded), known [batch] bool: is the item in the
        catalogue (an unknown or dropped item gets the most popular items).
      embed_items: item_ids [batch] string, texts [batch] string  ->
        embeddings [batch, dim], known [batch] bool. An id the model or the
        catalogue knows uses its embedding; an unknown one is embedded from
        its text.
      embed_query: item_ids [batch, length] string  ->  embeddings [batch, dim].
      item_texts: item_ids [batch] string  ->  texts [batch] string ("" for an
        id not in the catalogue).
      recommend_for_user: user_ids [batch] string, k [] int32  ->  item_ids
        [batch, k] string, scores [batch, k] float32, known [batch] bool: the
        top k for the user's cached embedding (`UserCache`, computed at
        export), never one of the items it was built from. An unknown or
        empty user id gets the most popular items and known false.
    Unknown ids in a session are skipped (they carry no behaviour). Only
    catalogue items are ever returned, the popular items included.

    With a ranking stage (`ranking`), serving_default, recommend_for_user
    and similar_items run both stages in the call: the index's top N for the
    query embedding (the excluded items left out) and the item-item table's
    top N for the query's items, merged, scored by the ranker
    (`tfrec.ranking.serving.TwoStageScorer`); scores are then the ranker's.
    The ranking stage's query items are all the session's distinct items
    (recommend; the query embedding alone reads its last history_length known
    items), the user's cached history (recommend_for_user), or the item
    itself (similar_items, whose query embedding is the item's own, as stage 1
    alone uses). k is at most N.

    Args:
      model: the towers (`item_encoder`, `query_tower`, `embedding_dim`).
      item_ids: [vocabulary] the model's item ids, OOV first.
      index: a top-k layer over the catalogue's embeddings, named by its ids.
      max_k: the largest k a request may ask.
      item_texts, item_counts: aligned with item_ids (the catalogue's when
        `catalogue` is None).
      max_session_items: the widest session a request may send.
      users: the cached user embeddings (None: no user is known).
      catalogue: the index rows (None: every vocabulary item); rows not in
        the vocabulary need their `embeddings`.
      ranking: the ranking stage over the serving index space (the
        vocabulary's indices, then the catalogue's added items in catalogue
        order: `catalogue_changes`), or None: stage 1 alone.
      item_vectors: [vocabulary, dim] the item encoder's output for every
        vocabulary index (`model.item_embeddings()`), if computed already.
      exact_new_items: with a ranking stage, the catalogue's items without
        behaviour (no training event: cold and added items) are scored exactly
        beside the index when there are at most this many, and join the index's
        top N (`_with_new_items`): the two-tower's list is the ranking stage's
        only source of them, and an approximate search at depth N misses some.

    With a text tower, the query tower's item encodings of every vocabulary
    item are computed here once and kept (`query_item_vectors`): a request's
    query pools gathered rows instead of running the text tower over each of
    its history's slots, the same values (`QueryTower.from_item_vectors`).
    """

    def __init__(self, model, item_ids: np.ndarray, index, max_k: int,
                 item_texts: np.ndarray | None = None, item_counts: np.ndarray | None = None,
                 max_session_items: int = IndexConfig.max_session_items,
                 users: UserCache | None = None,
                 catalogue: Catalogue | None = None, ranking=None,
                 item_vectors: np.ndarray | None = None, exact_new_items: int = 0):
        super().__init__(name="tfrec")
        self.max_session_items = int(max_session_items)
        self.item_encoder = model.item_encoder
        self.query_tower = model.query_tower
        self.index = index
        self.max_k = int(max_k)
        self.history_length = int(model.query_tower.history_length)
        dim = int(model.embedding_dim)
        self.query_item_vectors = None
        index_vectors = item_vectors  # the item tower's (the index's rows), not the query's
        encoder = model.query_tower.item_encoder
        self._shared_encoder = encoder is model.item_encoder
        if getattr(encoder, "use_text", False):
            if item_vectors is None or not self._shared_encoder:
                item_vectors = model.query_tower.item_vectors()
            self.query_item_vectors = tf.Variable(
                np.asarray(item_vectors, np.float32), trainable=False,
                name="query_item_vectors")
        vocab = np.asarray(item_ids[1:]).astype(str)
        if catalogue is None:
            n = len(vocab)
            catalogue = Catalogue(
                vocab, None,
                np.asarray(item_texts[1:] if item_texts is not None else [""] * n, dtype=object),
                np.asarray(item_counts[1:] if item_counts is not None else np.zeros(n)))
        self.num_items = len(catalogue)
        self.id_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(vocab), tf.range(1, len(vocab) + 1, dtype=tf.int32)),
            default_value=0)
        ids = np.asarray(catalogue.ids).astype(str)
        self.text_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(ids), tf.constant(np.asarray(catalogue.texts, dtype=object)
                                              .astype(str))), default_value="")
        # The catalogue against the vocabulary: items the model never saw (their embedding
        # held here) and vocabulary items no longer served. Both lists are short.
        added, dropped = catalogue_changes(item_ids, catalogue)
        dropped = vocab[dropped - 1]
        self.num_added, self.num_dropped = len(added), len(dropped)
        self.vocabulary_items = len(vocab)
        self.added_table = _table(ids[added], 0)
        self.ranking = ranking
        if ranking is not None:
            if ranking.num_items != len(vocab) + 1 + len(added):
                raise ValueError(f"a ranking stage of {ranking.num_items} items for "
                                 f"{len(vocab) + 1} vocabulary and {len(added)} added items")
            if self.max_k > ranking.num_candidates:
                raise ValueError(f"max_k {self.max_k} is over the ranking stage's "
                                 f"{ranking.num_candidates} candidates")
            # Serving index -> id: the vocabulary's, then the added items'.
            self.serving_ids = tf.constant(np.concatenate(
                [np.asarray(item_ids[:1]).astype(str), vocab, ids[added]]))
        self.new_items = None
        if ranking is not None:
            self._exact_new_items(model, catalogue, index_vectors, ids, exact_new_items)
        added_embeddings = (np.asarray(catalogue.embeddings)[added] if len(added)
                            else np.zeros((0, dim), np.float32))
        self.added_embeddings = tf.Variable(
            np.vstack([np.zeros((1, dim), np.float32), added_embeddings.astype(np.float32)]),
            trainable=False, name="added_item_embeddings")
        self.dropped_table = _table(dropped, 0)
        # The answer for a query with no known item: the most popular catalogue items, with
        # their share of the training events as scores, flagged by `fallback` / `known`.
        counts = np.asarray(catalogue.counts, dtype=np.float64)
        top = np.argsort(-counts, kind="stable")[:self.max_k]
        share = counts[top] / max(counts.sum(), 1.0)
        self.popular_ids = tf.constant(ids[top])
        self.popular_scores = tf.constant(share.astype(np.float32))
        users = users if users is not None else UserCache.empty(self.history_length, dim)
        self.num_users = len(users.ids)
        # Row 0 stands for "no such user" so that a lookup never gathers out of range.
        self.user_table = _table(users.ids, 0)
        self.user_embeddings = tf.Variable(
            np.vstack([np.zeros((1, dim), np.float32), users.embeddings.astype(np.float32)]),
            trainable=False, name="user_embeddings")
        self.user_histories = tf.Variable(
            np.vstack([np.zeros((1, self.history_length), np.int32),
                       users.histories.astype(np.int32)]),
            trainable=False, name="user_histories")

    def _exact_new_items(self, model, catalogue: Catalogue, item_vectors, ids: np.ndarray,
                         limit: int) -> None:
        """The catalogue's items without behaviour, for `_with_new_items`: their serving
        indices and embeddings (the index's rows: the catalogue's, else `item_vectors`,
        the item tower's output), when there are 1 to `limit` of them."""
        new = np.flatnonzero(np.asarray(catalogue.counts) == 0)
        if len(new) > limit:
            logger.info("%d catalogue items without behaviour, over index.exact_new_items "
                        "(%d): the index alone finds them for the ranking stage", len(new),
                        limit)
        if not len(new) or len(new) > limit:
            return
        if catalogue.embeddings is not None:
            rows = np.asarray(catalogue.embeddings, np.float32)[new]
        else:  # every catalogue item is the vocabulary's, in its order
            vectors = item_vectors if item_vectors is not None else model.item_embeddings()
            rows = np.asarray(vectors, np.float32)[1:][new]
        added = self.added_table.lookup(tf.constant(ids[new])).numpy()
        known = self.id_table.lookup(tf.constant(ids[new])).numpy()
        self.new_items = tf.constant(np.where(added > 0, added + self.vocabulary_items, known)
                                     .astype(np.int32))
        self.new_item_embeddings = tf.Variable(rows, trainable=False,
                                               name="new_item_embeddings")

    def _with_new_items(self, queries, scores, found):
        """The index's list (scores, serving indices [batch, width]) with the items
        without behaviour it missed: each query's exact top `width` of them, those the
        index returned left out, merged by score; the best `width` kept."""
        if self.new_items is None:
            return scores, found
        width = tf.shape(scores)[1]
        exact = tf.matmul(queries, self.new_item_embeddings, transpose_b=True)
        top, at = tf.math.top_k(exact, k=tf.minimum(width, tf.shape(exact)[1]))
        items = tf.gather(self.new_items, at)
        listed = tf.reduce_any(tf.equal(items[:, :, None], found[:, None, :]), axis=-1)
        top = tf.where(listed, float("-inf"), top)
        best, at = tf.math.top_k(tf.concat([scores, top], 1), k=width)
        return best, tf.gather(tf.concat([found, items], 1), at, batch_dims=1)

    def _history(self, item_ids):
        """[batch, length] string ids -> [batch, N] left-padded indices of the last N known."""
        index = self.id_table.lookup(item_ids)
        known = tf.ragged.boolean_mask(index, index > 0)
        lengths = tf.minimum(known.row_lengths(), self.history_length)
        n = self.history_length
        # Right-aligned copy of the last `lengths` known items of each row.
        total = known.row_lengths()
        cols = tf.range(n, dtype=tf.int64)[None, :]
        source = total[:, None] - n + cols
        valid = source >= (total - lengths)[:, None]
        padded = known.to_tensor(default_value=0)
        width = tf.shape(padded, out_type=tf.int64)[1]
        source = tf.clip_by_value(source, 0, tf.maximum(width - 1, 0))
        gathered = tf.gather(tf.pad(padded, [[0, 0], [0, 1]]), source, batch_dims=1)
        return tf.where(valid, gathered, tf.zeros_like(gathered))

    def _query(self, history):
        """[batch, dim] the query tower's embeddings of [batch, N] histories."""
        if self.query_item_vectors is None:
            return self.query_tower(history)
        return self.query_tower.from_item_vectors(history, self.query_item_vectors)

    def _in_catalogue(self, item_ids):
        """Which of `item_ids` (any shape) are index rows."""
        in_vocab = tf.logical_and(self.id_table.lookup(item_ids) > 0,
                                  self.dropped_table.lookup(item_ids) == 0)
        return tf.logical_or(in_vocab, self.added_table.lookup(item_ids) > 0)

    def _item_embeddings(self, item_ids):
        """[batch] ids -> ([batch, dim] the model's or the catalogue's embedding (zeros for
        an unknown id), [batch] is it one of them)."""
        index = self.id_table.lookup(item_ids)
        added = self.added_table.lookup(item_ids)
        if self.query_item_vectors is not None and self._shared_encoder:
            known = tf.gather(self.query_item_vectors, index)
        else:
            known = self.item_encoder(index)
        embeddings = tf.where((added > 0)[:, None], tf.gather(self.added_embeddings, added),
                              known)
        return embeddings, tf.logical_or(index > 0, added > 0)

    def _check_k(self, k):
        k = tf.convert_to_tensor(k, tf.int32)
        where = ("the index's max_k" if self.ranking is None else
                 "the export's max_k, at most the ranking stage's ranking.num_candidates")
        checks = [tf.debugging.assert_greater(k, 0, message="k must be at least 1"),
                  tf.debugging.assert_less_equal(
                      k, self.max_k, message=f"k must be at most {self.max_k} ({where})")]
        # Before anything that uses k: a k out of range fails with this message, never with
        # the error of an op that happened to run first.
        with tf.control_dependencies([c for c in checks if c is not None]):
            return tf.minimum(tf.identity(k), self.num_items)

    def _top_k_excluding(self, queries, exclude, k, fallback=None):
        """Top k of the index for each query, never one of the ids in `exclude` [batch, m].

        Rows flagged in `fallback` [batch] (default: those whose `exclude`
        holds no id known to the model: an unknown or empty query) get the
        most popular items instead. A slot left when fewer than k items
        remain is "" with score -inf.
        """
        k = self._check_k(k)
        if fallback is None:
            fallback = tf.logical_not(tf.reduce_any(self.id_table.lookup(exclude) > 0, axis=1))
        scores, ids = self._search(queries, k, self._in_catalogue(exclude))
        clash = tf.reduce_any(tf.equal(ids[:, :, None], exclude[:, None, :]), axis=-1)
        return self._top_k_of(scores, ids, clash, k, fallback)

    def _top_k_excluding_indices(self, queries, exclude, k, fallback):
        """`_top_k_excluding` with `exclude` as [batch, m] vocabulary indices (0: none)."""
        k = self._check_k(k)
        known = exclude > 0
        scores, ids = self._search(queries, k, known)
        found = self.id_table.lookup(ids)
        clash = tf.reduce_any(tf.logical_and(tf.equal(found[:, :, None], exclude[:, None, :]),
                                             known[:, None, :]), axis=-1)
        return self._top_k_of(scores, ids, clash, k, fallback)

    def _serving_index(self, item_ids):
        """The ranking stage's index (any shape) of each id: its vocabulary index, or
        after the vocabulary an added item's; 0 for an id neither holds."""
        added = self.added_table.lookup(item_ids)
        return tf.where(added > 0, added + self.vocabulary_items,
                        self.id_table.lookup(item_ids))

    @staticmethod
    def _distinct_items(items):
        """[batch, width] serving indices (0: none) -> the same width: each row's distinct
        items (in id order: the ranking stage reads a query as a set), 0-padded on the
        left. A session's query for the ranking stage: all its items, each once, as the
        stage was trained and evaluated on them (not only the last `history_length` the
        query tower reads). A sort, so memory grows with the width, not its square."""
        ordered = tf.sort(items, axis=1)
        first = tf.concat([tf.ones_like(ordered[:, :1], tf.bool),
                           tf.not_equal(ordered[:, 1:], ordered[:, :-1])], 1)
        keep = tf.logical_and(first, ordered > 0)
        order = tf.argsort(tf.cast(keep, tf.int32), axis=1, stable=True)
        return tf.where(tf.gather(keep, order, batch_dims=1),
                        tf.gather(ordered, order, batch_dims=1), tf.zeros_like(ordered))

    def _two_stage(self, queries, query_items, exclude, k, fallback):
        """Both stages: the top k of the ranker's scores of each query's candidates.

        Args:
          queries: [batch, dim] the stage-1 query embeddings.
          query_items: [batch, L] the query's items (serving indices, 0-padded on the
            left), what the features and the item-item table read.
          exclude: [batch, m] serving indices never to return (0: none).
          fallback: [batch] rows that get the popular items.
        """
        k = self._check_k(k)
        known = exclude > 0
        scores, ids = self._search(queries, self.ranking.num_candidates, known)
        scores, found = self._with_new_items(queries, scores, self._serving_index(ids))
        clash = tf.reduce_any(tf.logical_and(tf.equal(found[:, :, None], exclude[:, None, :]),
                                             known[:, None, :]), axis=-1)
        valid = tf.logical_and(tf.logical_not(clash), tf.logical_not(tf.math.is_inf(scores)))
        cands, mask, scores = self.ranking.rank(query_items, queries, found, valid, exclude)
        ids = tf.gather(self.serving_ids, cands)
        return self._top_k_of(scores, ids, tf.logical_not(mask), k, fallback)

    def _search(self, queries, k, excluded):
        """(scores, ids) [batch, k + the most excluded items of a row]: one index call that
        fetches enough to still have k after dropping each row's `excluded` [batch, m]."""
        # The export checks that the index can return max_k + max_session_items (ScaNN's
        # reordering) and that a user's history is no longer than max_session_items.
        extra = tf.reduce_max(tf.concat([tf.reduce_sum(tf.cast(excluded, tf.int32), axis=1),
                                         [0]], 0))
        return search(self.index, queries, tf.minimum(k + extra, self.num_items))

    def _top_k_of(self, scores, ids, clash, k, fallback):
        """The k best of (scores, ids) without the `clash` [batch, fetched] ones; the
        `fallback` [batch] rows get the popular items."""
        scores = tf.where(clash, tf.fill(tf.shape(scores), float("-inf")), scores)
        top_scores, position = tf.math.top_k(scores, k=tf.minimum(k, tf.shape(scores)[1]))
        top_ids = tf.gather(ids, position, batch_dims=1)
        top_ids = tf.where(tf.math.is_inf(top_scores), tf.fill(tf.shape(top_ids), ""), top_ids)
        n = tf.shape(top_ids)[1]
        popular_ids = tf.broadcast_to(self.popular_ids[None, :n], tf.shape(top_ids))
        popular_scores = tf.broadcast_to(self.popular_scores[None, :n], tf.shape(top_scores))
        out = {"item_ids": tf.where(fallback[:, None], popular_ids, top_ids),
               "scores": tf.where(fallback[:, None], popular_scores, top_scores),
               "fallback": fallback}
        # The signatures' metadata declares the outputs' ranks ([batch, k], [batch]).
        out["item_ids"].set_shape([None, None])
        out["scores"].set_shape([None, None])
        out["fallback"].set_shape([None])
        return out

    def _check_session_width(self, item_ids):
        tf.debugging.assert_less_equal(
            tf.shape(item_ids)[1], self.max_session_items,
            message=f"sessions may hold at most {self.max_session_items} items (the export's "
                    "max_session_items)")

    # The signatures' code branches on Python values only (its graph branches are explicit
    # tf.cond / tf.while_loop), so AutoGraph, which would rewrite every function they call
    # (half of an export's time), is off: a branch on a tensor fails at export, loudly.
    @tf.function(autograph=False,
                 input_signature=[tf.TensorSpec([None, None], tf.string, name="item_ids"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def recommend(self, item_ids, k):
        self._check_session_width(item_ids)
        history = self._history(item_ids)
        queries = self._query(history)
        if self.ranking is None:
            return self._top_k_excluding(queries, item_ids, k)
        fallback = tf.logical_not(tf.reduce_any(self.id_table.lookup(item_ids) > 0, axis=1))
        session = self._serving_index(item_ids)
        return self._two_stage(queries, self._distinct_items(session), session, k, fallback)

    @tf.function(autograph=False,
                 input_signature=[tf.TensorSpec([None], tf.string, name="item_ids"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def similar_items(self, item_ids, k):
        queries, _ = self._item_embeddings(item_ids)
        known = self._in_catalogue(item_ids)
        if self.ranking is None:
            out = self._top_k_excluding(queries, item_ids[:, None], k, tf.logical_not(known))
        else:
            # The query is the item alone: its own embedding (as stage 1 alone uses) and
            # the item as the query's one item.
            item = self._serving_index(item_ids)[:, None]
            out = self._two_stage(queries, item, item, k, tf.logical_not(known))
        return {"item_ids": out["item_ids"], "scores": out["scores"], "known": known}

    @tf.function(autograph=False,
                 input_signature=[tf.TensorSpec([None], tf.string, name="item_ids"),
                                  tf.TensorSpec([None], tf.string, name="texts")])
    def embed_items(self, item_ids, texts):
        # One text per id: a single text would otherwise be broadcast to every unknown id.
        tf.debugging.assert_equal(
            tf.shape(texts)[0], tf.shape(item_ids)[0],
            message="embed_items: texts must hold one text per item id (the same batch "
                    "size as item_ids; an empty text for an item known by its id)")
        by_id, known = self._item_embeddings(item_ids)
        if self.item_encoder.use_text:
            by_text = self.item_encoder.encode_text(texts)
        else:
            by_text = tf.zeros_like(by_id)
        return {"embeddings": tf.where(known[:, None], by_id, by_text), "known": known}

    @tf.function(autograph=False,
                 input_signature=[tf.TensorSpec([None, None], tf.string, name="item_ids")])
    def embed_query(self, item_ids):
        self._check_session_width(item_ids)
        return {"embeddings": self._query(self._history(item_ids))}

    @tf.function(autograph=False,
                 input_signature=[tf.TensorSpec([None], tf.string, name="item_ids")])
    def item_texts(self, item_ids):
        return {"texts": self.text_table.lookup(item_ids)}

    @tf.function(autograph=False,
                 input_signature=[tf.TensorSpec([None], tf.string, name="user_ids"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def recommend_for_user(self, user_ids, k):
        row = self.user_table.lookup(user_ids)
        known = row > 0
        queries = tf.gather(self.user_embeddings, row)
        history = tf.gather(self.user_histories, row)
        if self.ranking is None:
            out = self._top_k_excluding_indices(queries, history, k, tf.logical_not(known))
        else:
            # The ranking stage reads the history as a set of items, as every query.
            out = self._two_stage(queries, self._distinct_items(history), history, k,
                                  tf.logical_not(known))
        return {"item_ids": out["item_ids"], "scores": out["scores"], "known": known}

    @tf.function(autograph=False, input_signature=[])
    def release_index(self):
        """Deletes the ScaNN index's searcher (the next search makes it anew); a
        brute-force index has none. Not a signature: call it on a loaded version before
        dropping it (`tfrec.exporter.release_saved_model`, which `tfrec serve` calls once
        a version it unloaded has no call left), since TensorFlow never frees a loaded
        SavedModel's searcher itself. Returns whether there was one."""
        return tf.constant(release_searchers(self.index))

    def signatures(self) -> dict:
        return {"serving_default": self.recommend, "similar_items": self.similar_items,
                "embed_items": self.embed_items, "embed_query": self.embed_query,
                "item_texts": self.item_texts, "recommend_for_user": self.recommend_for_user}
