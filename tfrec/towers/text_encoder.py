"""Conv1D text encoder: token ids -> a text embedding."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from typing import Mapping

from tfrec.config import TextConfig, as_config, config_dict
from tfrec.towers.tokenizer import PAD_ID


@keras.utils.register_keras_serializable(package="tfrec")
class TextEncoder(keras.layers.Layer):
    """Token embeddings, one Conv1D per kernel width, masked max-pooling, dense projection.

    With `mean_tokens`, the masked mean of the token embeddings (a learned
    bag of words, like an averaged word-vector baseline) joins the pooled
    convolution features before the projection.

    Args:
      vocabulary_size: token ids in use (padding and unknown included).
      output_dim: width of the text embedding.
      config: the text settings (`TextConfig`, or its dict; default: the
        defaults): `token_dim`, `filters`, `widths` (kernel widths, e.g.
        (1, 2, 3) for unigram to trigram features), `mean_tokens`; with
        `char_ngrams`, hashed character n-grams (see
        `tokenizer.CharNgramHasher`, `ngram_buckets` of them) get an
        embedding of their own whose masked mean joins the features
        (subword evidence for unseen words).

    Call:
      token_ids: [batch, length] int32 (0 pads)  ->  [batch, output_dim] float32.
      A text with no known token gives the projection of zeros (its bias).
    """

    def __init__(self, vocabulary_size: int, output_dim: int,
                 config: TextConfig | Mapping | None = None, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = int(vocabulary_size)
        self.output_dim = int(output_dim)
        self.config = as_config(TextConfig, config)
        token_dim = self.config.token_dim
        if self.config.char_ngrams:
            self.ngram_embedding = keras.layers.Embedding(self.config.ngram_buckets, token_dim,
                                                          name="ngram_embedding")
        self.token_embedding = keras.layers.Embedding(self.vocabulary_size, token_dim,
                                                      name="token_embedding")
        self.convolutions = [
            keras.layers.Conv1D(self.config.filters, w, padding="same", activation="relu",
                                name=f"conv_{w}") for w in self.config.widths]
        self.projection = keras.layers.Dense(self.output_dim, name="projection")

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
        if self.config.mean_tokens:
            count = tf.reduce_sum(tf.cast(mask, x.dtype), axis=1, keepdims=True)
            pooled.append(tf.math.divide_no_nan(tf.reduce_sum(x, axis=1), count))
        if self.config.char_ngrams:
            if ngram_ids is None:
                raise ValueError("this text encoder needs the character n-gram ids")
            nmask = tf.cast(tf.not_equal(ngram_ids, PAD_ID), x.dtype)[..., None]
            grams = self.ngram_embedding(ngram_ids) * nmask
            pooled.append(tf.math.divide_no_nan(tf.reduce_sum(grams, axis=1),
                                                tf.reduce_sum(nmask, axis=1)))
        return self.projection(tf.concat(pooled, axis=-1))

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "output_dim": self.output_dim, "config": config_dict(self.config)}
