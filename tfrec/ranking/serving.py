"""The ranking stage in the serving graph: `TwoStageScorer`, and its tables for a catalogue.

An exported version runs both stages in one signature call (`tfrec.exporter`):
the index's top N for the query embedding (the query's items excluded) and
the item-item table's top N for the query's items are merged as
`tfrec.ranking.features.merge_candidates` merges them, the candidates'
features are computed by `CandidateFeatures` and the ranker scores them; the
signature returns the top k of the ranker's scores.

The merge is the numpy one's twin: the j-th item of a source has the key
(j + 1) / share, so the order in which the 2N slots of the two lists are
merged depends on N and the share alone and is computed once (`merge_order`);
a slot is dropped when its item came earlier from the other source (each
list's items looked up in the other's by a sort and a binary search: the only
duplicates two lists of distinct items can have), and the first N slots left
are the candidates.

The tables are in the version's serving index space: the run vocabulary's
indices (0 = padding / unknown) followed by the items the catalogue added
(`serving_tables`): an added item has its text vectors from the text tower,
its lexical row from its text, no events, no skip-gram vector and an empty
item-item row; a dropped item keeps its rows (it may still be in a query)
but leaves the table's columns, so neither source ever proposes it.
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import tensorflow as tf

from tfrec.ranking import features as F
from tfrec.ranking.item_scorer import spans
from tfrec.ranking.item_table import ItemItemTable
from tfrec.ranking.ranker import FoldedRanker

# The most values the features' largest intermediate may hold at once (rows x L x
# (N + m) x T); a batch over it is ranked in chunks of rows (`TwoStageScorer.rank`).
CHUNK_ELEMENTS = 1 << 22


def merge_order(width: int, table_share: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The order `merge_candidates` takes the slots of two `width`-long lists in.

    Returns:
      (order [2 width]: the slots (table's 0..width - 1, then the two-tower's)
      in merge order; rank [2 width]: each slot's place in that order; used
      [2 width] bool: does the slot's source take part (a share of 0 leaves
      its source out)).
    """
    keys, used = [], []
    for share in (table_share, 1.0 - table_share):
        # The numpy merge's keys, in float64 as there: equal keys order alike.
        keys.append((np.arange(width) + 1.0) / share if share > 0 else np.full(width, np.inf))
        used.append(np.full(width, share > 0))
    order = np.argsort(np.concatenate(keys), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return order.astype(np.int32), rank.astype(np.int32), np.concatenate(used)


def compact(values: list, keep, width):
    """The first `width` kept entries of each row, in order: ([B, width] tensors of each
    of `values` [B, M], [B, width] bool which are kept entries)."""
    order = tf.argsort(tf.cast(tf.logical_not(keep), tf.int32), axis=1, stable=True)
    order = order[:, :width]
    return ([tf.gather(v, order, batch_dims=1) for v in values],
            tf.gather(keep, order, batch_dims=1))


def _places(items, valid, ranked, ranked_valid):
    """(found [B, N] bool, place [B, N] int32) of each valid one of `items` in the
    valid ones of `ranked` [B, M] (distinct items): a sort and a binary search."""
    unused = tf.constant(np.iinfo(np.int32).max, tf.int32)
    ranked = tf.where(ranked_valid, ranked, unused)
    order = tf.argsort(ranked, axis=1, stable=True)
    ordered = tf.gather(ranked, order, batch_dims=1)
    at = tf.minimum(tf.searchsorted(ordered, items), tf.shape(ranked)[1] - 1)
    found = tf.logical_and(tf.equal(tf.gather(ordered, at, batch_dims=1), items), valid)
    return found, tf.gather(order, at, batch_dims=1)


class TwoStageScorer(tf.Module):
    """The ranking stage as a serving graph: candidates, features, ranker.

    Args:
      tables: the feature tables in the serving index space (`serving_tables`).
      ranker: the fitted `CandidateRanker` (served as a `FoldedRanker`).
      num_candidates: N.
      table_share: the share of the N slots the item-item table fills.
      columns: the feature columns the ranker reads (indices into `FEATURES`).
      new_slots: how many of the index's items without behaviour move to the
        front of its list before the merge (as `F.candidates` does).
      text_slots: m, the slots after the N for the items without behaviour whose
        text best matches the query's (as `F.text_picks` picks them).
      unavailable: items never picked by their text (the catalogue's dropped items).
    """

    def __init__(self, tables: F.Tables, ranker, num_candidates: int, table_share: float,
                 columns, new_slots: int = 0, text_slots: int = 0, unavailable=(),
                 name: str = "ranking_stage"):
        super().__init__(name=name)
        self.features = F.CandidateFeatures.from_tables(tables, name="candidate_features")
        self.ranker = FoldedRanker(ranker, columns, len(F.FEATURES), name="candidate_ranker")
        self.num_candidates = int(num_candidates)
        self.table_share = float(table_share)
        self.columns = tuple(int(c) for c in columns)
        self.num_items = len(tables.counts)
        self.new_slots = int(new_slots)
        new = np.asarray(tables.counts) == 0
        new[0] = False
        self._new = tf.constant(new)
        order, rank, used = merge_order(self.num_candidates, self.table_share)
        n = self.num_candidates
        self._order = tf.constant(order)
        self._table_rank, self._tt_rank = tf.constant(rank[:n]), tf.constant(rank[n:])
        self._use_table, self._use_tt = bool(used[0]), bool(used[n])
        self.text_slots = int(text_slots)
        if self.text_slots:
            self._text_source(tables, new, unavailable)
        # The chunks' path: traced once for every signature that ranks (the whole
        # batch's path is traced in line, the faster call).
        self._rank_rows = tf.function(self.rank_rows, autograph=False, input_signature=[
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, self.features.dims["item_embeddings"]], tf.float32),
            tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.bool),
            tf.TensorSpec([None, None], tf.int32)])

    def _text_source(self, tables: F.Tables, new: np.ndarray, unavailable) -> None:
        """The items the text slots pick from (without behaviour, available), and their
        lexical rows inverted: for each term, the items holding it and their weights (a
        query then reads the lists of its own terms, not every item)."""
        pickable = new.copy()
        pickable[np.asarray(unavailable, np.int64)] = False
        items = np.flatnonzero(pickable).astype(np.int32)
        position = np.full(len(pickable), -1, np.int32)
        position[items] = np.arange(len(items), dtype=np.int32)
        terms = np.asarray(tables.tfidf.terms, np.int64)[items]
        weights = np.asarray(tables.tfidf.weights, np.float32)[items]
        width = len(tables.tfidf.vocabulary) + 1
        rows, cols = np.nonzero(terms > 0)
        term_ids = terms[rows, cols]
        order = np.argsort(term_ids, kind="stable")
        splits = np.concatenate([[0], np.cumsum(np.bincount(term_ids, minlength=width))])
        if not len(items):  # nothing to pick: one empty item (its score is 0, never picked)
            items = np.zeros(1, np.int32)
        self._text_items = tf.Variable(items, trainable=False, name="text_items")
        self._text_position = tf.Variable(position, trainable=False, name="text_position")
        self._text_splits = tf.Variable(splits.astype(np.int64), trainable=False,
                                        name="text_term_splits")
        self._text_holders = tf.Variable(rows[order].astype(np.int64), trainable=False,
                                         name="text_term_items")
        self._text_weights = tf.Variable(weights[rows, cols][order].astype(np.float32),
                                         trainable=False, name="text_term_weights")
        self._text_shape = (len(items), width)

    def text_list(self, query_items, exclude, cands, mask, tt_ids, tt_valid, tt_order,
                  table_count):
        """The text slots' items and their places (the twin of `F.text_picks`).

        Args:
          query_items: [B, L] the query's items (0-padded).
          exclude: [B, E] items never to return (0: none).
          cands, mask: [B, N] the merged list (its items are not picked again).
          tt_ids, tt_valid, tt_order: the two-tower's list as `merge` read it.
          table_count: [B, 1] the table's list's length.

        Returns:
          (items [B, m] int32 (0 at padding), valid [B, m] bool, tt_place,
          table_place [B, m] float32).
        """
        f = self.features
        batch = tf.shape(query_items)[0]
        width = self._text_shape[1]
        # Each distinct query item's lexical row, summed into one dense row per query.
        same = tf.equal(query_items[:, :, None], query_items[:, None, :])
        earlier = tf.linalg.band_part(tf.ones_like(same, tf.int32), -1, 0) - tf.eye(
            tf.shape(query_items)[1], dtype=tf.int32)
        repeated = tf.reduce_any(tf.logical_and(same, tf.cast(earlier, tf.bool)), axis=2)
        keep = tf.logical_and(query_items > 0, tf.logical_not(repeated))
        terms = tf.cast(tf.gather(f.lexical_terms, query_items), tf.int64)  # [B, L, T]
        weights = tf.gather(f.lexical_weights, query_items)
        weights = tf.where(tf.logical_and(keep[:, :, None], terms > 0), weights, 0.0)
        rows = tf.broadcast_to(tf.range(tf.cast(batch, tf.int64))[:, None, None],
                               tf.shape(terms))
        dense = tf.reshape(tf.math.unsorted_segment_sum(
            tf.reshape(weights, [-1]), tf.reshape(rows * width + terms, [-1]),
            tf.cast(batch, tf.int64) * width), [batch, width])
        # Each (query, term) of a non-zero weight reads the term's items: their scores
        # are the sums of the products over the query's terms.
        size = self._text_shape[0]
        held = tf.where(tf.not_equal(dense, 0.0))  # [K, 2] (query, term)
        at, owner = spans(tf.gather(self._text_splits, held[:, 1]),
                          tf.gather(self._text_splits, held[:, 1] + 1))
        products = (tf.gather(tf.gather_nd(dense, held), owner)
                    * tf.gather(self._text_weights, at))
        keys = tf.gather(held[:, 0], owner) * size + tf.gather(self._text_holders, at)
        scores = tf.reshape(tf.math.unsorted_segment_sum(
            products, keys, tf.cast(batch, tf.int64) * size), [batch, size])
        # Items listed already, the query's own and the excluded ones are not picked.
        taken = tf.concat([tf.where(mask, cands, 0), query_items, exclude], 1)
        at = tf.gather(self._text_position, taken)
        hit = tf.where(tf.logical_and(at >= 0, taken > 0))
        scores = tf.tensor_scatter_nd_update(
            scores, tf.stack([hit[:, 0], tf.cast(tf.gather_nd(at, hit), tf.int64)], 1),
            tf.zeros(tf.shape(hit)[:1]))
        count = min(self.text_slots, self._text_shape[0])
        best, where = tf.math.top_k(scores, k=count)
        items = tf.gather(self._text_items, where)
        valid = best > 0
        pad = [[0, 0], [0, self.text_slots - count]]
        items, valid = tf.pad(tf.where(valid, items, 0), pad), tf.pad(valid, pad)
        found, place = _places(items, valid, tt_ids, tt_valid)
        if tt_order is not None:
            place = tf.gather(tt_order, place, batch_dims=1)
        tt_place = tf.where(found, place, self.num_candidates)
        table_place = tf.broadcast_to(table_count, tf.shape(items))
        return items, valid, tf.cast(tt_place, tf.float32), tf.cast(table_place, tf.float32)

    def table_list(self, query_items, exclude, sums=None):
        """(items [B, N] int32, valid [B, N] bool): the item-item table's top N items of
        positive summed weight for each query, none of `exclude` [B, E] (0: none) nor
        of the query's items, valid ones first. `sums`: the table's
        `sums(query_items)`, if computed already."""
        n = self.num_candidates
        extra = tf.reduce_max(tf.concat([tf.reduce_sum(tf.cast(exclude > 0, tf.int32), 1),
                                         [0]], 0))
        ids, scores = self.features.item_item.candidates(query_items, n + extra, sums)
        clash = tf.reduce_any(tf.logical_and(tf.equal(ids[:, :, None], exclude[:, None, :]),
                                             exclude[:, None, :] > 0), axis=-1)
        keep = tf.logical_and(scores > 0, tf.logical_not(clash))
        (ids,), valid = compact([ids], keep, n)
        return tf.where(valid, ids, 0), valid

    def promote_new(self, tt_ids, tt_valid):
        """The two-tower's list with its first `new_slots` items without behaviour moved
        to its front, in order, and each entry's place in the list given ([B, N] int32).
        """
        new = tf.logical_and(tt_valid, tf.gather(self._new, tt_ids))
        first = tf.logical_and(new, tf.cumsum(tf.cast(new, tf.int32), axis=1)
                               <= self.new_slots)
        order = tf.argsort(tf.cast(tf.logical_not(first), tf.int32), axis=1, stable=True)
        return (tf.gather(tt_ids, order, batch_dims=1), tf.gather(tt_valid, order, batch_dims=1),
                order)

    def merge(self, table_ids, table_valid, tt_ids, tt_valid, tt_order=None):
        """The candidate lists of `merge_candidates` from the two sources' lists.

        Args:
          table_ids, table_valid: [B, N] the table's list (valid ones first).
          tt_ids, tt_valid: [B, N] the two-tower's list (valid ones first),
            the query's own items already left out.
          tt_order: [B, N] int32, each entry's place in the two-tower's own
            order where `promote_new` reordered its list (default: as given).

        Returns:
          (candidates [B, N] int32 (0 at padding), mask [B, N] bool, tt_place,
          table_place [B, N] float32: the place in each source's list, its
          length (N for the two-tower's, the table's count of valid items)
          where the candidate is not in it).
        """
        n = self.num_candidates
        table_valid = tf.logical_and(table_valid, table_ids > 0)
        tt_valid = tf.logical_and(tt_valid, tt_ids > 0)
        # Each list's items' places in the other list (each list holds distinct items).
        in_tt, at_tt = _places(table_ids, table_valid, tt_ids, tt_valid)
        in_table, at_table = _places(tt_ids, tt_valid, table_ids, table_valid)
        keep_table = tf.logical_and(table_valid, self._use_table)
        keep_tt = tf.logical_and(tt_valid, self._use_tt)
        if self._use_tt:  # the two-tower had the item at an earlier slot
            keep_table = tf.logical_and(keep_table, tf.logical_not(tf.logical_and(
                in_tt, tf.gather(self._tt_rank, at_tt) < self._table_rank)))
        if self._use_table:
            keep_tt = tf.logical_and(keep_tt, tf.logical_not(tf.logical_and(
                in_table, tf.gather(self._table_rank, at_table) < self._tt_rank)))
        slots = tf.range(n)[None, :]
        table_count = tf.reduce_sum(tf.cast(table_valid, tf.int32), axis=1, keepdims=True)
        ids = tf.concat([table_ids, tt_ids], 1)
        keep = tf.concat([keep_table, keep_tt], 1)
        tt_slots = tf.broadcast_to(slots, tf.shape(tt_ids))
        if tt_order is not None:
            at_tt, tt_slots = tf.gather(tt_order, at_tt, batch_dims=1), tt_order
        tt_place = tf.concat([tf.where(in_tt, at_tt, n), tt_slots], 1)
        table_place = tf.concat([tf.broadcast_to(slots, tf.shape(table_ids)),
                                 tf.where(in_table, at_table, table_count)], 1)
        ordered = [tf.gather(v, self._order, axis=1) for v in (ids, tt_place, table_place)]
        (ids, tt_place, table_place), mask = compact(
            ordered, tf.gather(keep, self._order, axis=1), n)
        return (tf.where(mask, ids, 0), mask, tf.cast(tt_place, tf.float32),
                tf.cast(table_place, tf.float32))

    def scores(self, query_items, query_embeddings, candidates, mask, tt_place, table_place,
               sums=None):
        """[B, N] the ranker's scores of the candidates (-inf at padding)."""
        inputs = {"query_items": query_items, "query_embeddings": query_embeddings,
                  "candidates": candidates, "candidate_mask": mask, "tt_place": tt_place,
                  "table_place": table_place}
        if sums is not None:
            inputs["item_item_pooled"] = self.features.item_item.pooled(query_items, candidates,
                                                                        sums)
        # The ranker reads its columns of all the features (`FoldedRanker`).
        return tf.where(mask, self.ranker(self.features(inputs)), float("-inf"))

    def rank(self, query_items, query_embeddings, tt_ids, tt_valid, exclude):
        """Both stages' candidates and the ranker's scores (`rank_rows`), a batch
        whose features would exceed `CHUNK_ELEMENTS` taken in chunks of rows.

        The features' largest intermediate holds L x (N + m) x T values per row
        (L the longest query, T the lexical terms): a batch of 4,096 sessions of
        50 items would need gigabytes at once. Chunks bound it whatever the
        batch, with the same values; a batch under the budget (every
        single-session request) runs as one.
        """
        args = (tf.cast(query_items, tf.int32), tf.cast(query_embeddings, tf.float32),
                tf.cast(tt_ids, tf.int32), tf.cast(tt_valid, tf.bool), tf.cast(exclude, tf.int32))
        query_items = args[0]
        rows = tf.shape(query_items)[0]
        longest = tf.maximum(tf.reduce_max(tf.concat(
            [tf.reduce_sum(tf.cast(query_items > 0, tf.int32), 1), [0]], 0)), 1)
        per_row = longest * self.list_width * self.features.dims["text_terms"]
        chunk = tf.maximum(CHUNK_ELEMENTS // per_row, 1)

        def chunked():
            parts = [tf.TensorArray(dtype, size=0, dynamic_size=True, infer_shape=False)
                     for dtype in (tf.int32, tf.bool, tf.float32)]

            def body(start, parts):
                stop = tf.minimum(start + chunk, rows)
                out = self._rank_rows(*(a[start:stop] for a in args))
                index = start // chunk
                return stop, [p.write(index, o) for p, o in zip(parts, out)]

            _, parts = tf.while_loop(lambda start, _: start < rows, body,
                                     (tf.constant(0), parts))
            return tuple(p.concat() for p in parts)

        return tf.cond(rows <= chunk, lambda: self.rank_rows(*args), chunked)

    @property
    def list_width(self) -> int:
        """N + m: the candidates the ranker scores per query."""
        return self.num_candidates + self.text_slots

    def rank_rows(self, query_items, query_embeddings, tt_ids, tt_valid, exclude):
        """Both stages' candidates and the ranker's scores.

        Args:
          query_items: [B, L] int the query's items in the serving index
            space (0-padded; what the features and the table read).
          query_embeddings: [B, d] the stage-1 query embeddings.
          tt_ids, tt_valid: [B, M] the index's results in its order (serving
            indices), valid where not one of the query's items to exclude (M under
            N, a tiny catalogue, is padded to N).
          exclude: [B, E] int items never to return, any width (0: none).

        Returns:
          (candidates [B, N + m] int32, mask [B, N + m] bool, scores [B, N + m] float32
          (-inf at padding); m the text slots).
        """
        n = self.num_candidates
        query_items = tf.cast(query_items, tf.int32)
        exclude = tf.cast(exclude, tf.int32)
        # The item axis cut to the batch's longest query (0-padding on the left).
        longest = tf.maximum(tf.reduce_max(tf.concat(
            [tf.reduce_sum(tf.cast(query_items > 0, tf.int32), 1), [0]], 0)), 1)
        query_items = query_items[:, tf.shape(query_items)[1] - longest:]
        (tt_ids,), tt_valid = compact([tf.cast(tt_ids, tf.int32)], tt_valid, n)
        tt_ids = tf.where(tt_valid, tt_ids, 0)
        width = tf.shape(tt_ids)[1]
        # Fewer index results than N (a tiny catalogue): padded to N.
        tt_ids = tf.pad(tt_ids, [[0, 0], [0, n - width]])
        tt_valid = tf.pad(tt_valid, [[0, 0], [0, n - width]])
        # The table's sums over the query's items: read by the table's list and features.
        sums = self.features.item_item.sums(query_items)
        table_ids, table_valid = self.table_list(query_items, exclude, sums)
        tt_order = None
        if self.new_slots > 0:
            tt_ids, tt_valid, tt_order = self.promote_new(tt_ids, tt_valid)
        cands, mask, tt_place, table_place = self.merge(table_ids, table_valid, tt_ids,
                                                        tt_valid, tt_order)
        if self.text_slots:
            table_count = tf.reduce_sum(tf.cast(tf.logical_and(table_valid, table_ids > 0),
                                                tf.int32), axis=1, keepdims=True)
            extra = self.text_list(query_items, exclude, cands, mask, tt_ids, tt_valid,
                                   tt_order, table_count)
            merged = (cands, mask, tt_place, table_place)
            cands, mask, tt_place, table_place = (tf.concat([a, b], 1)
                                                  for a, b in zip(merged, extra))
        scores = self.scores(query_items, query_embeddings, cands, mask, tt_place, table_place,
                             sums)
        return cands, mask, scores

    def info(self) -> dict:
        return {"num_candidates": self.num_candidates, "table_share": self.table_share,
                "new_slots": self.new_slots, "text_slots": self.text_slots,
                "features": [F.FEATURES[j] for j in self.columns],
                "columns": list(self.columns), "items": self.num_items}


def text_vectors(model, texts) -> np.ndarray:
    """[n, t] the unit-length text vectors of new items' texts, as the ranking stage
    made the vocabulary's (`tfrec.ranking.stage.item_vectors`)."""
    from tfrec.ranking.stage import item_vectors

    texts = [str(t) if isinstance(t, str) else "" for t in texts]
    # item_vectors reads a vocabulary's size and texts, index 0 the padding row.
    vocab = types.SimpleNamespace(size=len(texts) + 1, text=[""] + texts)
    return item_vectors(model, vocab)[1][1:]


def serving_tables(tables: F.Tables, model, added_texts, added_embeddings: np.ndarray,
                   dropped: np.ndarray) -> F.Tables:
    """The ranking stage's tables for a catalogue that differs from the run vocabulary.

    Args:
      tables: the stage's tables (the run vocabulary's V rows).
      model: the two-tower (its text tower embeds the added items' texts).
      added_texts: [A] the texts of items the vocabulary lacks (rows V..V + A - 1).
      added_embeddings: [A, d] their two-tower embeddings.
      dropped: vocabulary indices no longer in the catalogue.

    Returns:
      Tables of V + A rows (see the module's docstring).
    """
    count = len(added_texts)
    table = tables.table
    dropped = np.asarray(dropped, np.int64)
    keep = ~np.isin(table.indices, dropped) if len(dropped) else np.ones(table.num_entries, bool)
    rows = np.repeat(np.arange(table.num_items), np.diff(table.row_splits))
    splits = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=table.num_items))])
    splits = np.concatenate([splits, np.full(count, splits[-1])])
    info = {**table.info, "dropped_items": int(len(dropped)), "added_items": int(count)}
    new_table = ItemItemTable(splits, table.indices[keep], table.weights[keep], info=info)
    if not count:
        return dataclasses.replace(tables, table=new_table, grams={})
    terms, weights = tables.tfidf.rows(list(added_texts))
    text = text_vectors(model, added_texts)
    if text.shape[1] != tables.text.shape[1]:  # no text tower: no text vectors
        text = np.zeros((count, tables.text.shape[1]), np.float32)
    return F.Tables(
        np.vstack([tables.item_embeddings, np.asarray(added_embeddings, np.float32)]),
        new_table, np.concatenate([tables.counts, np.zeros(count, tables.counts.dtype)]),
        np.vstack([tables.text, text]), tables.tfidf.with_rows(terms, weights),
        np.vstack([tables.i2v, np.zeros((count, tables.i2v.shape[1]), np.float32)]))
