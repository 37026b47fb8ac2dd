"""Conv1D text encoder: token ids -> a text embedding."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf
import tf_keras as keras

from tfrec.towers.tokenizer import PAD_ID
from tfrec.utils import derived_seed


@keras.utils.register_keras_serializable(package="tfrec")
class TextEncoder(keras.layers.Layer):
    """Token embeddings, one Conv1D per kernel width, masked max-pooling, dense projection.

    With `mean_tokens`, the masked mean of the token embeddings (a learned
    bag of words, like an averaged word-vector baseline) joins the pooled
    convolution features before the projection.

    Args:
      vocabulary_size: token ids in use (padding and unknown included).
      output_dim: width of the text embedding.
      token_dim: token embedding width.
      filters: Conv1D filters per kernel width.
      widths: kernel widths, e.g. (1, 2, 3) for unigram to trigram features.
      mean_tokens: also feed the masked mean of the token embeddings.
      ngram_buckets: hash buckets of the character n-grams (see
        `tokenizer.CharNgramHasher`) whose own embedding's masked mean joins
        the features (subword evidence for unseen words); None: no n-grams.
      seed: seeds every initialisation (Keras' default initialisers, each
        sub-layer its own seed derived from this one); None: unseeded.

    Call:
      token_ids: [batch, length] int32 (0 pads), ngram_ids: [batch, max_ngrams]
      int32 (with ngram_buckets)  ->  [batch, output_dim] float32.
      A text with no known token gives the projection of zeros (its bias).
    """

    def __init__(self, vocabulary_size: int, output_dim: int, *, token_dim: int, filters: int,
                 widths: Sequence[int], mean_tokens: bool, ngram_buckets: int | None,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = int(vocabulary_size)
        self.output_dim = int(output_dim)
        self.token_dim = int(token_dim)
        self.filters = int(filters)
        self.widths = tuple(int(w) for w in widths)
        self.mean_tokens = bool(mean_tokens)
        self.ngram_buckets = None if ngram_buckets is None else int(ngram_buckets)
        self.seed = seed

        def uniform(offset):  # Keras' Embedding default, seeded
            return keras.initializers.RandomUniform(-0.05, 0.05, seed=derived_seed(seed, offset))

        def glorot(offset):  # Keras' Conv1D / Dense default, seeded
            return keras.initializers.GlorotUniform(seed=derived_seed(seed, offset))

        if self.ngram_buckets is not None:
            self.ngram_embedding = keras.layers.Embedding(
                self.ngram_buckets, self.token_dim, embeddings_initializer=uniform(1001),
                name="ngram_embedding")
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size, self.token_dim, embeddings_initializer=uniform(1002),
            name="token_embedding")
        self.convolutions = [
            keras.layers.Conv1D(self.filters, w, padding="same", activation="relu",
                                kernel_initializer=glorot(1100 + j), name=f"conv_{w}")
            for j, w in enumerate(self.widths)]
        self.projection = keras.layers.Dense(self.output_dim, kernel_initializer=glorot(1003),
                                             name="projection")

    def call(self, token_ids, ngram_ids=None):
        mask = tf.not_equal(token_ids, PAD_ID)
        x = self.token_embedding(token_ids)
        x = x * tf.cast(mask, x.dtype)[..., None]
        pooled = []
        for conv in self.convolutions:
            h = conv(x)
            # ReLU outputs are >= 0, so zeroing padded steps leaves the max intact.
            h = h * tf.cast(mask, h.dtype)[..., None]
            pooled.append(tf.reduce_max(h, axis=1))
        if self.mean_tokens:
            count = tf.reduce_sum(tf.cast(mask, x.dtype), axis=1, keepdims=True)
            pooled.append(tf.math.divide_no_nan(tf.reduce_sum(x, axis=1), count))
        if self.ngram_buckets is not None:
            if ngram_ids is None:
                raise ValueError("this text encoder needs the character n-gram ids")
            nmask = tf.cast(tf.not_equal(ngram_ids, PAD_ID), x.dtype)[..., None]
            grams = self.ngram_embedding(ngram_ids) * nmask
            pooled.append(tf.math.divide_no_nan(tf.reduce_sum(grams, axis=1),
                                                tf.reduce_sum(nmask, axis=1)))
        return self.projection(tf.concat(pooled, axis=-1))

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "output_dim": self.output_dim, "token_dim": self.token_dim,
                "filters": self.filters, "widths": list(self.widths),
                "mean_tokens": self.mean_tokens, "ngram_buckets": self.ngram_buckets,
                "seed": self.seed}
