"""The query (session / user) tower: pools the shared item embeddings of a history."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfrec import draws
from tfrec.config import POOLINGS
from tfrec.towers.item_encoder import ItemEncoder
from tfrec.utils import derived_seed

PAD_ITEM = 0


@keras.utils.register_keras_serializable(package="tfrec")
class QueryTower(keras.layers.Layer):
    """Encodes the last N items of a session through the item encoder and pools them.

    Because the query is a pooled, re-normalised mix of item embeddings, it
    lives in the item space: nearest items of a query are found with the
    same index as nearest items of an item.

    Args:
      item_encoder: the ItemEncoder whose embeddings are pooled (with
        `query_items: shared`, the candidates' own one). Whether the query is
        normalised follows it.
      history_length: N, items looked at: the last N of a history.
      pooling: "mean", "recency" (weights decay by `recency_decay` per step
        back in time) or "attention" (learned: softmax over a content score
        plus a per-position bias).
      recency_decay: weight ratio between consecutive history items (recency).
      history_dropout: during training, hide each history item with this
        probability: a denoising query, as in Mult-DAE, must stand up to a
        basket it sees only part of; a history the draw would empty is kept
        whole.
      query_layers: widths of a ReLU MLP applied to the pooled history, its
        output, projected back to the embedding width, added to it (a
        non-linear query over the session); empty: the pooled mean itself.
      seed: seeds the history dropout.

    Call:
      history: [batch, N] int32 item indices, most recent last, left-padded
        with 0  ->  [batch, embedding_dim] float32 (zeros for an empty history).
    """

    def __init__(self, item_encoder: ItemEncoder | dict, *, history_length: int, pooling: str,
                 recency_decay: float, history_dropout: float, query_layers: Sequence[int],
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(item_encoder, dict):
            item_encoder = keras.layers.deserialize(item_encoder)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if isinstance(history_length, bool) or int(history_length) < 1 or \
                int(history_length) != history_length:
            raise ValueError(f"history_length must be a positive integer (the last N items a "
                             f"query reads), got {history_length!r}")
        self.item_encoder = item_encoder
        self._history_length = int(history_length)
        self.pooling = pooling
        self.recency_decay = float(recency_decay)
        self.history_dropout = float(history_dropout)
        self.query_layers = tuple(int(w) for w in query_layers)
        self.seed = seed
        self.mlp = None
        if self.query_layers:
            glorot = [keras.initializers.GlorotUniform(seed=derived_seed(seed, 2000 + i))
                      for i in range(len(self.query_layers) + 1)]
            self.mlp = keras.Sequential(
                [keras.layers.Dense(w, activation="relu", kernel_initializer=glorot[i],
                                    name=f"hidden_{i}")
                 for i, w in enumerate(self.query_layers)]
                + [keras.layers.Dense(item_encoder.embedding_dim, kernel_initializer=glorot[-1],
                                      name="projection")],
                name="mlp")
        if pooling == "attention":
            self.attention_query = self.add_weight(
                name="attention_query", shape=(item_encoder.embedding_dim,),
                initializer="zeros")
            self.position_bias = self.add_weight(
                name="position_bias", shape=(self.history_length,), initializer="zeros")

    @property
    def history_length(self) -> int:
        """N: the query looks at the last N items of a history."""
        return self._history_length

    def call(self, history, training=False):
        history = tf.cast(history, tf.int32)[:, -self.history_length:]
        mask = tf.not_equal(history, PAD_ITEM)
        if training and self.history_dropout > 0:
            keep = draws.uniform(tf.shape(history), self.seed) >= self.history_dropout
            # A history the draw would empty is kept whole.
            none_left = tf.logical_not(tf.reduce_any(tf.logical_and(keep, mask), -1))
            keep = tf.logical_or(keep, none_left[:, None])
            mask = tf.logical_and(mask, keep)
            history = tf.where(mask, history, PAD_ITEM)
        items = self.item_encoder(history, training=training)
        return self._pool(items, mask, training)

    def item_vectors(self, batch_size: int = 65_536) -> np.ndarray:
        """[num_items, embedding_dim] the item encoder's output for every item index: what
        `from_item_vectors` reads."""
        size = int(self.item_encoder.num_items)
        parts = [self.item_encoder(tf.range(start, min(start + batch_size, size))).numpy()
                 for start in range(0, size, batch_size)]
        return np.concatenate(parts)

    def from_item_vectors(self, history, item_vectors):
        """The query of `history` (inference) from precomputed item encodings.

        `item_vectors` [V, embedding_dim] holds `item_encoder(i)` for every item index i:
        the same query as calling the tower, with a gather in place of the item encoder
        (its text tower runs over every history slot otherwise).
        """
        history = tf.cast(history, tf.int32)[:, -self.history_length:]
        items = tf.gather(tf.convert_to_tensor(item_vectors), history)
        return self._pool(items, tf.not_equal(history, PAD_ITEM), training=False)

    def _pool(self, items, mask, training):
        length = tf.shape(items)[1]
        maskf = tf.cast(mask, items.dtype)
        if self.pooling == "attention":
            score = tf.einsum("bnd,d->bn", items, self.attention_query)
            score += self.position_bias[-length:][None, :]
            score = tf.where(mask, score, tf.fill(tf.shape(score), -1e9))
            weights = tf.nn.softmax(score, axis=-1) * maskf
        else:
            steps_back = tf.cast(tf.range(length - 1, -1, -1), items.dtype)
            decay = 1.0 if self.pooling == "mean" else self.recency_decay
            weights = maskf * tf.pow(tf.constant(decay, items.dtype), steps_back)[None, :]
        pooled = tf.einsum("bn,bnd->bd", weights, items)
        # A weighted mean (the final normalisation makes this matter only to the MLP).
        pooled = tf.math.divide_no_nan(pooled, tf.reduce_sum(weights, -1, keepdims=True))
        if self.mlp is not None:
            pooled += self.mlp(pooled, training=training)
        if not self.item_encoder.normalize:
            return pooled
        return tf.math.l2_normalize(pooled, axis=-1)

    def get_config(self):
        return {**super().get_config(),
                "item_encoder": keras.layers.serialize(self.item_encoder),
                "history_length": self.history_length, "pooling": self.pooling,
                "recency_decay": self.recency_decay, "history_dropout": self.history_dropout,
                "query_layers": list(self.query_layers), "seed": self.seed}
