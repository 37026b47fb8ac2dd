"""The hybrid model: a Siamese skip-gram head and a TFRS two-tower retrieval head.

One ItemEncoder (id embedding + text) encodes both sides of every
(target, context) pair and every retrieval candidate; the query tower pools
the same item embeddings over a session. The model is a `tfrs.Model`: it
only implements `compute_loss`, and Keras `fit` / `evaluate` do the rest.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfrec.config import ModelConfig, as_config, config_dict
from tfrec.data.vocab import ItemVocabulary
from tfrec.towers.item_encoder import ItemEncoder
from tfrec.towers.query_tower import QueryTower
from tfrec.towers.tokenizer import build_token_vocabulary


@keras.utils.register_keras_serializable(package="tfrec")
class HybridModel(tfrs.Model):
    """Item2vec + text, trained with skip-gram pairs and/or next-item retrieval.

    Args:
      item_encoder: the candidate tower, shared by both sides of a pair.
      query_tower: the session tower (built on the same item encoder, or on
        one of its own with `query_items: separate`).
      config: the model settings (`ModelConfig`, or its dict; default: the
        item encoder's). The model reads `objective` ("skipgram",
        "retrieval" or "both"), `temperature` (logits are cosine similarity /
        temperature), `retrieval_weight` (of the retrieval loss in "both"),
        `text_alignment` (weight of the loss pulling each warm item's
        text-only embedding towards its full embedding: the cold-start
        path), `negatives` (how the retrieval softmax gets its negatives:
        the other candidates of the batch, with logQ correction; every warm
        item of the catalogue; or a uniform sample of `num_sampled` warm
        items shared by the batch) and `num_sampled`.

    Features (a dict per batch):
      skipgram: target [B], context [B], negatives [B, K] int32, weight [B].
      retrieval: history [B, N] int32, next_item [B] int32,
        candidate_probability [B] float32 (for the logQ correction).
    """

    def __init__(self, item_encoder: ItemEncoder, query_tower: QueryTower,
                 config: ModelConfig | Mapping | None = None, **kwargs):
        super().__init__(**kwargs)
        self.item_encoder = item_encoder
        # Checkpoints written before the rename name it "candidate_tower": keep
        # that path too, so earlier runs still restore.
        self._track_trackable(item_encoder, name="candidate_tower")
        self.query_tower = query_tower
        self.config = as_config(ModelConfig,
                                item_encoder.config if config is None else config)
        if self.uses_skipgram:
            self.logit_bias = self.add_weight(name="logit_bias", shape=(),
                                              initializer="zeros")
        # SUM, weighted by 1 / global batch below: Keras refuses the default
        # (AUTO) reduction of a loss called in a train step under a
        # tf.distribute strategy.
        self.skipgram_task = tfrs.tasks.Ranking(
            loss=keras.losses.BinaryCrossentropy(
                from_logits=True, reduction=keras.losses.Reduction.SUM))
        self.retrieval_task = tfrs.tasks.Retrieval(
            temperature=self.config.temperature, remove_accidental_hits=True)

    @property
    def uses_skipgram(self) -> bool:
        return self.config.objective in ("skipgram", "both")

    @property
    def uses_retrieval(self) -> bool:
        return self.config.objective in ("retrieval", "both")

    def compute_loss(self, features, training=False):
        """The loss of one replica's batch.

        Under a tf.distribute strategy, the gradients of the replicas are
        summed, so the batch-mean losses (skip-gram, text alignment) are
        divided by the number of replicas: the sum is then the mean over the
        global batch. The retrieval loss is a sum over the batch already.
        Without a strategy (one replica) nothing changes.
        """
        config = self.config
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        loss = tf.constant(0.0)
        if self.uses_skipgram:
            target, context = features["target"], features["context"]
            negatives = features["negatives"]
            batch, k = tf.shape(target)[0], tf.shape(negatives)[1]
            # One encoder call for all three: each distinct item is encoded once.
            ids = tf.concat([target, context, tf.reshape(negatives, [-1])], 0)
            emb, alignment = self.item_encoder.encode(ids, training=training)
            if config.text_alignment > 0:
                loss += config.text_alignment * alignment / replicas
            # Split, not sliced: the gradient of a slice is a zero-filled copy of
            # the whole [batch * (k + 2), dim] tensor, three of them summed; the
            # gradient of a split is one concat (this halved the backward pass).
            t, c, n = tf.split(emb, [batch, batch, batch * k])
            n = tf.reshape(n, [batch, k, -1])
            pos = tf.reduce_sum(t * c, -1, keepdims=True)
            neg = tf.einsum("bd,bkd->bk", t, n)
            logits = tf.concat([pos, neg], 1) / config.temperature + self.logit_bias
            labels = tf.concat([tf.ones([batch, 1]), tf.zeros([batch, k])], 1)
            scale = 1.0 / (tf.cast(batch, tf.float32) * replicas)
            weight = features.get("weight")
            weight = tf.fill([batch], scale) if weight is None else weight * scale
            loss += self.skipgram_task(labels=labels, predictions=logits,
                                       sample_weight=weight, training=training)
        if self.uses_retrieval:
            query = self.query_tower(features["history"], training=training)
            next_item = features["next_item"]
            weight = config.retrieval_weight if config.objective == "both" else 1.0
            if config.negatives == "in_batch":
                candidate, alignment = self.item_encoder.encode(next_item, training=training)
                # TFRS sums over the batch; divided by it, the loss is a batch
                # mean like the skip-gram one, so "both" weighs the two alike.
                scale = 1.0 / tf.cast(tf.shape(next_item)[0] * replicas, tf.float32)
                retrieval = scale * self.retrieval_task(
                    query, candidate,
                    candidate_sampling_probability=features.get("candidate_probability"),
                    candidate_ids=next_item, compute_metrics=not training)
            else:
                retrieval, alignment = self._softmax_loss(query, next_item, training)
                retrieval = retrieval / replicas
            if config.text_alignment > 0 and not self.uses_skipgram:
                loss += config.text_alignment * alignment / replicas
            loss += weight * retrieval
        return loss

    def _softmax_loss(self, query, next_item, training):
        """Mean cross-entropy of each next item against warm-item negatives.

        "catalogue": the softmax runs over every warm item (indices
        1..num_id_items-1, the items training can have as targets; cold items
        never are, so they are not pushed away from every query). "sampled":
        over the positive and `num_sampled` warm items drawn uniformly, shared
        by the batch (uniform proposal: the logQ correction is a constant and
        cancels), accidental hits masked.
        """
        config = self.config
        num_warm = self.item_encoder.num_id_items - 1
        next_item = tf.cast(next_item, tf.int32)
        if config.negatives == "catalogue":
            catalogue = tf.range(1, num_warm + 1, dtype=tf.int32)
            candidates, alignment = self.item_encoder.encode(catalogue, training=training)
            logits = tf.matmul(query, candidates, transpose_b=True) / config.temperature
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(next_item - 1, logits)
            return tf.reduce_mean(losses), alignment
        sampled = tf.random.uniform([config.num_sampled], 1, num_warm + 1, dtype=tf.int32)
        ids = tf.concat([next_item, sampled], 0)
        emb, alignment = self.item_encoder.encode(ids, training=training)
        positive, negative = tf.split(emb, [tf.shape(next_item)[0], config.num_sampled])
        pos = tf.reduce_sum(query * positive, -1, keepdims=True)
        neg = tf.matmul(query, negative, transpose_b=True)
        neg = tf.where(sampled[None, :] == next_item[:, None], -1e9, neg * 1.0)
        logits = tf.concat([pos, neg], 1) / config.temperature
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.zeros_like(next_item), logits)
        return tf.reduce_mean(losses), alignment

    def enable_topk_metrics(self, ks: tuple[int, ...] = (1, 10, 50)) -> None:
        """Adds TFRS `FactorizedTopK` metrics to the retrieval task for `evaluate`.

        The metric ranks every catalogue item (exact search over the current
        item embeddings), so call it after training, and again after further
        training. Training steps never compute it (too slow per step).
        """
        candidates = tf.constant(self.item_embeddings()[1:])
        ids = tf.range(1, self.item_encoder.num_items, dtype=tf.int32)
        index = tfrs.layers.factorized_top_k.BruteForce(k=max(ks)).index(candidates, ids)
        # A list: the TFRS setter drops a bare metric object.
        self.retrieval_task.factorized_metrics = [
            tfrs.metrics.FactorizedTopK(candidates=index, ks=ks)]
        if self.optimizer is not None:
            self.compile(optimizer=self.optimizer)  # retrace evaluate with the metric

    def item_embeddings(self, item_index=None, batch_size: int = 65_536) -> np.ndarray:
        """[n, dim] embeddings of the given item indices (default: the whole catalogue)."""
        if item_index is None:
            item_index = np.arange(self.item_encoder.num_items, dtype=np.int32)
        item_index = np.asarray(item_index, dtype=np.int32)
        parts = [self.item_encoder(tf.constant(item_index[i:i + batch_size])).numpy()
                 for i in range(0, len(item_index), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.embedding_dim), np.float32)

    def query_embeddings(self, history: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """[n, dim] query embeddings of [n, N] histories (0-padded on the left)."""
        history = np.asarray(history, dtype=np.int32)
        parts = [self.query_tower(tf.constant(history[i:i + batch_size])).numpy()
                 for i in range(0, len(history), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.embedding_dim), np.float32)

    @property
    def embedding_dim(self) -> int:
        return self.item_encoder.embedding_dim

    def get_config(self):
        return {"item_encoder": keras.layers.serialize(self.item_encoder),
                "query_tower": keras.layers.serialize(self.query_tower),
                "config": config_dict(self.config),
                "shared_items": self.query_tower.item_encoder is self.item_encoder}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.layers.deserialize(config.pop("item_encoder"))
        query_config = dict(config.pop("query_tower"))
        query_config = dict(query_config, config=dict(query_config["config"]))
        if config.pop("shared_items", True):
            query_config["config"]["item_encoder"] = encoder
        tower = QueryTower.from_config(query_config["config"])
        return cls(encoder, tower, **config)


def build_model(config: ModelConfig, vocab: ItemVocabulary, seed: int | None = 42,
                text_vocabulary: list[str] | None = None) -> HybridModel:
    """Builds the hybrid model for a catalogue.

    Items seen in training (count > 0) get an id embedding; the vocabulary
    orders them first, so they are indices 1..num_warm. The token vocabulary
    is learned from all catalogue texts (cold items included: their text is
    known, only their behaviour is not), unless `text_vocabulary` is given
    (a saved run's, to rebuild its model).
    """
    num_warm = int((vocab.counts[1:] > 0).sum())
    if not np.all(vocab.counts[1:num_warm + 1] > 0):
        raise ValueError("vocabulary is not ordered warm items first")
    text = config.text
    if text_vocabulary is not None:
        tokens = list(text_vocabulary)
    else:
        tokens = (build_token_vocabulary(vocab.text[1:], text.max_tokens, text.min_token_count)
                  if config.use_text else [])

    def make_item_encoder(name, seed=seed):
        encoder = ItemEncoder(vocab.size, num_warm + 1, config, text_vocabulary=tokens,
                              seed=seed, name=name)
        encoder.set_item_texts(vocab.text)
        return encoder

    encoder = make_item_encoder("item_encoder")
    query_items = (encoder if config.query_items == "shared"
                   else make_item_encoder("query_items", None if seed is None else seed + 1))
    tower = QueryTower(query_items, config, seed=seed, name="query_tower")
    return HybridModel(encoder, tower, config)
