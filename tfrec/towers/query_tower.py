"""The query (session / user) tower: pools the shared item embeddings of a history."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tfrec.towers.item_tower import ItemEncoder

PAD_ITEM = 0


@keras.utils.register_keras_serializable(package="tfrec")
class QueryTower(keras.layers.Layer):
    """Encodes the last N items of a session through the item encoder and pools them.

    Because the query is a pooled, re-normalised mix of item embeddings, it
    lives in the item space: nearest items of a query are found with the
    same index as nearest items of an item.

    Args:
      item_encoder: the shared ItemEncoder (both towers use the same one).
      history_length: N, items looked at (the last N).
      pooling: "mean"; "recency" (weights decay by `recency_decay` per step
        back in time); "attention" (learned: softmax over a content score plus
        a per-position bias).
      recency_decay: see pooling.

    Call:
      history: [batch, N] int32 item indices, most recent last, left-padded
        with 0  ->  [batch, embedding_dim] float32 (zeros for an empty history).
    """

    def __init__(self, item_encoder: ItemEncoder, history_length: int = 10,
                 pooling: str = "mean", recency_decay: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        if isinstance(item_encoder, dict):
            item_encoder = keras.layers.deserialize(item_encoder)
        self.item_encoder = item_encoder
        self.history_length = int(history_length)
        self.pooling = pooling
        self.recency_decay = float(recency_decay)
        if pooling == "attention":
            self.attention_query = self.add_weight(
                name="attention_query", shape=(item_encoder.embedding_dim,),
                initializer="zeros")
            self.position_bias = self.add_weight(
                name="position_bias", shape=(self.history_length,), initializer="zeros")

    def call(self, history, training=False):
        history = tf.cast(history, tf.int32)[:, -self.history_length:]
        length = tf.shape(history)[1]
        mask = tf.not_equal(history, PAD_ITEM)
        items = self.item_encoder(history, training=training)
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
        return tf.math.l2_normalize(pooled, axis=-1)

    def get_config(self):
        return {**super().get_config(),
                "item_encoder": keras.layers.serialize(self.item_encoder),
                "history_length": self.history_length, "pooling": self.pooling,
                "recency_decay": self.recency_decay}
