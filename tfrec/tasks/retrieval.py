"""The retrieval task: softmax of each query against its positive and negatives."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfrec.tasks.base import NEXT_ITEMS, Task, checked_temperature, replicas
from tfrec.tasks.samplers import NegativeSampler, deserialize_sampler, serialize_sampler

# What a hidden column's logit becomes (TFRS `RemoveAccidentalHits` adds the same).
_HIDDEN = float(np.finfo(np.float32).min / 100)


@keras.utils.register_keras_serializable(package="tfrec")
class RetrievalTask(Task):
    """Softmax cross-entropy of the query tower's session embedding against
    its next item and the sampler's negatives (TFRS `tasks.Retrieval`).

    Logits are query . candidate / temperature, minus the sampler's logQ
    correction; columns the sampler hides (and accidental hits, when it asks)
    are out of the softmax. The loss is the mean over the batch. All
    candidates are encoded in one item encoder call.

    Args:
      sampler: a `tfrec.tasks.samplers.NegativeSampler` (or its serialised dict).
      temperature: logits are scores / temperature.
      weight: the task's weight in the model's loss.

    Features:
      history [B, N] int32 (left-padded with 0), next_item [B] int32,
      candidate_probability [B] float32 (optional: for the logQ correction).

    `factorized_metrics` (TFRS `FactorizedTopK` metrics, e.g. from
    `HybridModel.enable_topk_metrics`) are updated outside training.
    """

    stream = NEXT_ITEMS
    feature_names = ("history", "next_item", "candidate_probability")
    index_features = ("history", "next_item")
    optional_features = ("candidate_probability",)
    feature_shapes = {"history": "[B, N]", "next_item": "[B]", "candidate_probability": "[B]"}

    def __init__(self, sampler: NegativeSampler | dict, temperature: float, weight: float,
                 **kwargs):
        super().__init__(weight, **kwargs)
        self.sampler = deserialize_sampler(sampler)
        self.temperature = checked_temperature("RetrievalTask", temperature)
        self._factorized_metrics = []

    @property
    def factorized_metrics(self) -> list:
        return self._factorized_metrics

    @factorized_metrics.setter
    def factorized_metrics(self, metrics) -> None:
        # A list attribute: Keras then tracks each metric (the model reports it).
        self._factorized_metrics = list(metrics or [])

    def call(self, features, item_encoder, query_tower, training=False):
        query = query_tower(features["history"], training=training)
        positive = tf.cast(features["next_item"], tf.int32)
        candidates = self.sampler.sample(positive, item_encoder.num_id_items - 1,
                                         features.get("candidate_probability"))
        emb, alignment = item_encoder.encode(candidates.ids, training=training)
        loss = self.loss_of(query, emb, candidates, positive)
        if not training:
            for metric in self._factorized_metrics:
                metric.update_state(query, tf.gather(emb, candidates.labels),
                                    true_candidate_ids=positive)
        return loss, alignment

    def loss_of(self, query, candidate_embeddings, candidates, positive):
        """The batch's loss from its query [B, D] and candidate [C, D] embeddings.

        Args:
          query: [B, D] float32 query embeddings.
          candidate_embeddings: [C, D] float32 embeddings of `candidates.ids`.
          candidates: the sampler's `SampledCandidates`.
          positive: [B] int each query's positive item.
        """
        positive = tf.cast(positive, tf.int32)
        logits = tf.matmul(query, candidate_embeddings, transpose_b=True) / self.temperature
        if candidates.log_q is not None:
            logits -= candidates.log_q[None, :]
        labels = candidates.labels
        visible = candidates.valid
        if candidates.remove_accidental_hits:
            columns = tf.range(tf.shape(candidates.ids)[0], dtype=tf.int32)
            hit = tf.logical_and(tf.equal(candidates.ids[None, :], positive[:, None]),
                                 tf.not_equal(columns[None, :], labels[:, None]))
            visible = tf.logical_not(hit) if visible is None else tf.logical_and(
                visible, tf.logical_not(hit))
        if visible is not None:
            logits = tf.where(visible, logits, _HIDDEN)
        batch = tf.shape(logits)[0]
        # An empty batch (an in-batch sampler then has no candidate either) costs 0.
        losses = tf.cond(tf.shape(logits)[1] > 0,
                         lambda: tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits),
                         lambda: tf.zeros([batch]))
        return (tf.reduce_sum(losses) / tf.cast(tf.maximum(batch, 1), tf.float32)
                / tf.cast(replicas(), tf.float32))

    def get_config(self):
        return {**super().get_config(), "sampler": serialize_sampler(self.sampler),
                "temperature": self.temperature}
