"""The skip-gram task: (target, context) pairs against sampled negatives."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tfrec.tasks.base import PAIRS, Task, checked_temperature, replicas


@keras.utils.register_keras_serializable(package="tfrec")
class SkipGramTask(Task):
    """Binary classification of each pair's context against its negatives
    (item2vec, with Airbnb's global context when the pipeline adds it).

    Logits are cosine (or dot product) / temperature plus a learned bias; the
    loss is the weighted mean over the batch of each pair's mean binary
    cross-entropy over its context and K negatives. One item encoder call
    encodes targets, contexts and negatives, so each distinct item of the
    batch is encoded once.

    Args:
      temperature: logits are scores / temperature.
      weight: the task's weight in the model's loss.

    Features:
      target [B], context [B], negatives [B, K] int32; weight [B] float32
      (optional: each pair's weight, 1 without it).
    """

    stream = PAIRS
    feature_names = ("target", "context", "negatives", "weight")
    index_features = ("target", "context", "negatives")
    optional_features = ("weight",)
    feature_shapes = {"target": "[B]", "context": "[B]", "negatives": "[B, K]", "weight": "[B]"}

    def __init__(self, temperature: float, weight: float, **kwargs):
        super().__init__(weight, **kwargs)
        self.temperature = checked_temperature("SkipGramTask", temperature)
        self.logit_bias = self.add_weight(name="logit_bias", shape=(), initializer="zeros")
        # SUM, weighted by 1 / global batch: Keras refuses the default (AUTO)
        # reduction of a loss called in a train step under a tf.distribute strategy.
        self._loss = keras.losses.BinaryCrossentropy(
            from_logits=True, reduction=keras.losses.Reduction.SUM)

    def checkpoint_aliases(self):
        return {"logit_bias": self.logit_bias}

    def call(self, features, item_encoder, query_tower=None, training=False):
        target, context = features["target"], features["context"]
        negatives = features["negatives"]
        batch, k = tf.shape(target)[0], tf.shape(negatives)[1]
        ids = tf.concat([target, context, tf.reshape(negatives, [-1])], 0)
        emb, alignment = item_encoder.encode(ids, training=training)
        # Split, not sliced: the gradient of a slice is a zero-filled copy of
        # the whole [batch * (k + 2), dim] tensor, three of them summed; the
        # gradient of a split is one concat (this halved the backward pass).
        t, c, n = tf.split(emb, [batch, batch, batch * k])
        n = tf.reshape(n, [batch, k, tf.shape(emb)[1]])  # (-1 is unknown in an empty batch)
        pos = tf.reduce_sum(t * c, -1, keepdims=True)
        neg = tf.einsum("bd,bkd->bk", t, n)
        logits = tf.concat([pos, neg], 1) / self.temperature + self.logit_bias
        labels = tf.concat([tf.ones([batch, 1]), tf.zeros([batch, k])], 1)
        scale = 1.0 / (tf.cast(batch, tf.float32) * replicas())
        weight = features.get("weight")
        weight = tf.fill([batch], scale) if weight is None else weight * scale
        return self._loss(labels, logits, sample_weight=weight), alignment

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
