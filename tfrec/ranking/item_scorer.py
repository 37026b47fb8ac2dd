"""`ItemItemScorer`: the item-item table as a Keras layer a SavedModel carries.

The table's CSR arrays (`tfrec.ranking.item_table.ItemItemTable`) are
non-trainable weights. For a batch of histories it sums, per history, the
table rows of its distinct items: a sparse (history, co-item, weight) list
of at most L x M entries per history, never a dense [B, num_items] array,
so the cost does not grow with the catalogue.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras


def select(mask, *values):
    """The entries of each of `values` where `mask` holds, flattened (a 1-D result
    each): `tf.boolean_mask` in three ops, one `where` shared by all the values."""
    at = tf.reshape(tf.where(tf.reshape(mask, [-1])), [-1])
    out = [tf.gather(tf.reshape(v, [-1]), at) for v in values]
    return out if len(out) > 1 else out[0]


def spans(starts, limits):
    """(positions, owner): the ranges starts[i]..limits[i] - 1 (1-D int64) one after
    another, and the i each position comes from: `tf.ragged.range`'s flat values
    and value row ids without a ragged tensor."""
    lengths = limits - starts
    ends = tf.cumsum(lengths)
    at = tf.range(tf.reduce_sum(lengths), dtype=lengths.dtype)
    owner = tf.searchsorted(ends, at, side="right", out_type=lengths.dtype)
    return tf.gather(starts - (ends - lengths), owner) + at, owner


@keras.utils.register_keras_serializable(package="tfrec")
class ItemItemScorer(keras.layers.Layer):
    """Scores items for item histories by summed item-item table weights.

    Args:
      num_items: the catalogue size (rows of the table, OOV index 0 included).
      num_entries: the table's number of (item, co-item) entries.

    The weights `row_splits` [num_items + 1] int64, `indices` [num_entries]
    int32 and `weights` [num_entries] float32 are set with `set_table` (or
    built with `from_table`) and saved with the layer. Sums run in float64
    and are returned as float32, as `ItemItemTable.scores` does.
    """

    def __init__(self, num_items: int, num_entries: int, **kwargs):
        super().__init__(**kwargs)
        self.num_items = int(num_items)
        self.num_entries = int(num_entries)
        self.row_splits = self.add_weight(
            name="row_splits", shape=(self.num_items + 1,), dtype=tf.int64, trainable=False,
            initializer="zeros")
        self.indices = self.add_weight(name="indices", shape=(self.num_entries,),
                                       dtype=tf.int32, trainable=False, initializer="zeros")
        self.weights_ = self.add_weight(name="weights", shape=(self.num_entries,),
                                        dtype=tf.float32, trainable=False, initializer="zeros")
        self.built = True  # every weight is made here (a SavedModel then keeps its config)

    @classmethod
    def from_table(cls, table, **kwargs) -> "ItemItemScorer":
        layer = cls(table.num_items, table.num_entries, **kwargs)
        layer.set_table(table)
        return layer

    def set_table(self, table) -> None:
        if table.num_items != self.num_items or table.num_entries != self.num_entries:
            raise ValueError(f"a table of {table.num_items} items and {table.num_entries} "
                             f"entries for a layer of {self.num_items} and {self.num_entries}")
        self.row_splits.assign(np.asarray(table.row_splits, np.int64))
        self.indices.assign(np.asarray(table.indices, np.int32))
        self.weights_.assign(np.asarray(table.weights, np.float32))

    def sums(self, history):
        """What `score`, `pooled` and `candidates` read of a batch of histories (computed
        once when they are given it): (sorted unique keys b * num_items + c [E + 1]
        int64, summed weights [E + 1] float64, largest single weights [E + 1] float32,
        entries per key [E + 1] int64,
        sorted unique history keys b * num_items + h [H + 1] int64), each ending with a
        sentinel key larger than any other (so a lookup always has a last element to
        land on)."""
        history = tf.cast(history, tf.int64)
        n = tf.constant(self.num_items, tf.int64)
        batch = tf.shape(history, out_type=tf.int64)[0]
        rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(history, out_type=tf.int64))
        keep = (history > 0) & (history < n)
        history_keys = tf.sort(tf.unique(select(keep, rows * n + history))[0])
        owner, item = history_keys // n, history_keys % n
        # the table entries of each (history, item): positions starts..limits - 1
        flat, of = spans(tf.gather(self.row_splits, item), tf.gather(self.row_splits, item + 1))
        co_items = tf.cast(tf.gather(self.indices, flat), tf.int64)
        values = tf.cast(tf.gather(self.weights_, flat), tf.float64)
        keys = tf.gather(owner, of) * n + co_items
        order = tf.argsort(keys, stable=True)
        keys, values = tf.gather(keys, order), tf.gather(values, order)
        first = tf.concat([tf.ones([1], tf.bool)[:tf.size(keys)], keys[1:] != keys[:-1]], 0)
        slot = tf.cumsum(tf.cast(first, tf.int64)) - 1
        sums = tf.math.segment_sum(values, slot)
        largest = tf.math.segment_max(tf.cast(values, tf.float32), slot)
        entries = tf.math.segment_sum(tf.ones_like(slot), slot)
        sentinel = tf.constant([np.iinfo(np.int64).max], tf.int64)
        return (tf.concat([select(first, keys), sentinel], 0),
                tf.concat([sums, tf.zeros([1], tf.float64)], 0),
                tf.concat([largest, tf.zeros([1], tf.float32)], 0),
                tf.concat([entries, tf.zeros([1], tf.int64)], 0),
                tf.concat([history_keys, sentinel], 0))

    def _lookup(self, keys, candidate_ids):
        """(positions [B, N] of the candidates' keys in `keys`, found [B, N] bool)."""
        candidate_ids = tf.cast(candidate_ids, tf.int64)
        batch = tf.shape(candidate_ids, out_type=tf.int64)[0]
        wanted = tf.range(batch)[:, None] * self.num_items + candidate_ids
        at = tf.reshape(tf.searchsorted(keys, tf.reshape(wanted, [-1])), tf.shape(wanted))
        valid = (candidate_ids > 0) & (candidate_ids < self.num_items)
        return at, tf.logical_and(tf.gather(keys, at) == wanted, valid)

    def score(self, history, candidate_ids):
        """[B, N] float32 summed weight of each candidate (0 where the table has none,
        and for ids outside 1..num_items - 1)."""
        keys, sums, _, _, _ = self.sums(history)
        at, found = self._lookup(keys, candidate_ids)
        return tf.cast(tf.where(found, tf.gather(sums, at), tf.constant(0.0, tf.float64)),
                       tf.float32)

    def pooled(self, history, candidate_ids, sums=None):
        """(sum, max) [B, N] float32 over each history's distinct items i of the
        weight W[i, c] of each candidate c, W[i, c] = 0 where row i does not hold c:
        the sum is `score`; the max is the largest such weight (0 for an empty
        history and for ids outside 1..num_items - 1). `sums`: `sums(history)`, if
        computed already."""
        keys, sums, largest, entries, history_keys = sums or self.sums(history)
        at, found = self._lookup(keys, candidate_ids)
        batch = tf.shape(candidate_ids, out_type=tf.int64)[0]
        distinct = tf.math.bincount(history_keys[:-1] // self.num_items, minlength=batch,
                                    maxlength=batch, dtype=tf.int64)  # [B]
        total = tf.where(found, tf.gather(sums, at), tf.constant(0.0, tf.float64))
        # Some distinct history item lacks an entry for c: its weight 0 joins the max.
        some_zero = tf.gather(entries, at) < distinct[:, None]
        top = tf.where(some_zero, tf.maximum(tf.gather(largest, at), 0.0),
                       tf.gather(largest, at))
        return tf.cast(total, tf.float32), tf.where(found, top, 0.0)

    def candidates(self, history, n, sums=None):
        """(ids [B, n] int32, scores [B, n] float32): the n items of largest summed
        weight each history reaches, its own items and index 0 excluded; -1 and
        -inf where fewer exist. `n` may be a tensor; `sums`: `sums(history)`, if
        computed already. Equal scores rank the lower id first."""
        keys, sums, _, _, history_keys = sums or self.sums(history)
        batch = tf.shape(history, out_type=tf.int64)[0]
        n = tf.cast(n, tf.int64)
        keys, sums = keys[:-1], sums[:-1]
        own = tf.gather(history_keys, tf.searchsorted(history_keys, keys)) == keys
        keep = tf.logical_and(tf.logical_not(own), keys % self.num_items > 0)
        keys, scores = select(keep, keys, sums)
        scores = tf.cast(scores, tf.float32)
        # By history, then by score (the keys come sorted by history and id, and both
        # sorts are stable): each history's items in rank order, without a dense
        # [B, items reached] array.
        order = tf.argsort(-scores, stable=True)
        keys, scores = tf.gather(keys, order), tf.gather(scores, order)
        order = tf.argsort(keys // self.num_items, stable=True)
        keys, scores = tf.gather(keys, order), tf.gather(scores, order)
        rows = keys // self.num_items
        starts = tf.searchsorted(rows, tf.range(batch), side="left", out_type=tf.int64)
        place = tf.range(tf.size(rows, out_type=tf.int64)) - tf.gather(starts, rows)
        listed = place < n
        rows, place, items, scores = select(listed, rows, place, keys % self.num_items, scores)
        at = tf.stack([rows, place], 1)
        shape = tf.stack([batch, n])
        ids = tf.tensor_scatter_nd_update(
            tf.fill(shape, tf.constant(-1, tf.int32)), at, tf.cast(items, tf.int32))
        top = tf.tensor_scatter_nd_update(
            tf.fill(shape, tf.constant(-np.inf, tf.float32)), at, scores)
        return ids, top

    def call(self, inputs):
        """`score(history, candidate_ids)` for inputs {"history", "candidate_ids"}."""
        return self.score(inputs["history"], inputs["candidate_ids"])

    def get_config(self):
        config = super().get_config()
        config.update({"num_items": self.num_items, "num_entries": self.num_entries})
        return config
