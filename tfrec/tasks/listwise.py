"""The ranking stage's loss: a listwise softmax over each query's candidate list."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

# The score a padded slot of a candidate list gets: it never wins a softmax or a top k.
PADDING_SCORE = -1e9


@keras.utils.register_keras_serializable(package="tfrec")
class ListwiseSoftmaxTask(keras.layers.Layer):
    """Softmax cross-entropy over each query's candidate list (a loss task).

    loss = mean over the queries whose list holds a positive of
    -log(exp(s_pos) / sum over unmasked candidates of exp(s_j)).
    Queries without a positive in their list carry no loss (they do not
    count in the mean). Labels may mark one positive per list; its label
    value weighs its query's loss (1: an unweighted list).

    Call:
      labels: [B, N] the list's weight (usually 1) at the positive, 0 elsewhere.
      scores: [B, N] the ranker's scores.
      mask: [B, N] bool, False at padding (optional).

    Returns:
      The scalar loss.
    """

    def __init__(self, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, labels, scores, mask=None):
        labels = tf.cast(labels, tf.float32)
        scores = tf.cast(scores, tf.float32)
        if mask is not None:
            mask = tf.cast(mask, tf.bool)
            scores = tf.where(mask, scores, PADDING_SCORE)
            labels = labels * tf.cast(mask, tf.float32)
        has_positive = tf.cast(tf.reduce_sum(labels, axis=1) > 0, tf.float32)
        log_probs = tf.nn.log_softmax(scores, axis=1)
        per_query = -tf.reduce_sum(labels * log_probs, axis=1) * has_positive
        return tf.math.divide_no_nan(tf.reduce_sum(per_query), tf.reduce_sum(has_positive))

    def get_config(self):
        return super().get_config()
