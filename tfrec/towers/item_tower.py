"""The item encoder shared by both sides of every pair (the Siamese tower)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfrec.config import ModelConfig, TextConfig
from tfrec.towers.text_tower import TextEncoder
from tfrec.towers.tokenizer import CharNgramHasher, TextTokenizer

# Layer defaults are the config's: one source of truth for every setting.
_MODEL, _TEXT = ModelConfig(), TextConfig()


@keras.utils.register_keras_serializable(package="tfrec")
class ItemEncoder(keras.layers.Layer):
    """Item index (and/or raw text) -> one L2-normalised item embedding.

    The embedding fuses an id embedding (item2vec behaviour) and a text
    embedding (Conv1D over the tokenised item text) before normalising:
    `fusion="sum"` adds them in one shared space; `fusion="concat"` gives
    each its own part of the width (`text_share` of it to the text, the rest to
    the id) and concatenates them, so a dot product
    is a behaviour score plus a text score and neither path has to share its
    directions with the other. During training the id part of each distinct
    item of a batch is hidden with probability `id_dropout`, so the text path
    alone must land near the behaviour space; an item without an id (cold:
    unseen in training, or unknown to the vocabulary) is always encoded from
    its text alone.

    The token ids of every catalogue item's text are held in a
    non-trainable weight, so training batches carry item indices only.

    Args:
      num_items: catalogue size, indices 0..num_items-1 (0 is the OOV bucket).
      num_id_items: indices 1..num_id_items-1 have an id embedding (the
        items seen in training: the vocabulary puts them first).
      embedding_dim: output width.
      use_ids: use the id embedding.
      use_text: use the text path.
      id_dropout: training-time probability of hiding an id (only with
        use_text: without a text path there is nothing to stand in for it).
      fusion: "sum" or "concat" (see above).
      text_share: with "concat", the text part's share of the width.
      text_vocabulary: token vocabulary of the tokeniser.
      sequence_length, token_dim, filters, widths, mean_tokens: text tower settings.
      text_gate: learn a weight in (0, 1) per warm item on its text part, so
        an item whose behaviour says more than its text can turn the text
        down (a cold item, or one whose id is dropped, is its text alone).
      normalize: L2-normalise the embedding (cosine scores); False keeps its
        length, so an item's norm can carry how strongly it is predicted.
      char_ngrams, ngram_buckets, max_ngrams: hashed character n-grams of
        these widths beside the word tokens (empty widths: none); see
        `tokenizer.CharNgramHasher`.

    Call:
      item_index: int tensor of any shape [...]  ->  [..., embedding_dim].
    """

    def __init__(self, num_items: int, num_id_items: int,
                 embedding_dim: int = _MODEL.embedding_dim, use_ids: bool = _MODEL.use_ids,
                 use_text: bool = _MODEL.use_text, id_dropout: float = _MODEL.id_dropout,
                 text_vocabulary: list[str] | None = None,
                 sequence_length: int = _TEXT.sequence_length, token_dim: int = _TEXT.token_dim,
                 filters: int = _TEXT.filters, widths: tuple[int, ...] = _TEXT.widths,
                 seed: int | None = None, fusion: str = _MODEL.fusion,
                 text_share: float = _MODEL.text_share, mean_tokens: bool = _TEXT.mean_tokens,
                 char_ngrams: tuple[int, ...] = _TEXT.char_ngrams,
                 ngram_buckets: int = _TEXT.ngram_buckets, max_ngrams: int = _TEXT.max_ngrams,
                 normalize: bool = _MODEL.normalize, text_gate: bool = _MODEL.text_gate,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_items = int(num_items)
        self.num_id_items = int(num_id_items)
        self.embedding_dim = int(embedding_dim)
        self.use_ids = bool(use_ids)
        self.use_text = bool(use_text)
        self.id_dropout = float(id_dropout)
        self.text_vocabulary = list(text_vocabulary or [])
        self.sequence_length = int(sequence_length)
        self.token_dim = int(token_dim)
        self.filters = int(filters)
        self.widths = tuple(int(w) for w in widths)
        self.mean_tokens = bool(mean_tokens)
        self.char_ngrams = tuple(int(w) for w in char_ngrams)
        self.ngram_buckets = int(ngram_buckets)
        self.max_ngrams = int(max_ngrams)
        self.normalize = bool(normalize)
        self.text_gate = bool(text_gate)
        self.seed = seed
        if fusion not in ("sum", "concat"):
            raise ValueError(f"fusion must be 'sum' or 'concat', got {fusion!r}")
        self.fusion = fusion
        self.text_share = float(text_share)
        # Widths of the two parts: each the whole width, or shares of it when concatenated.
        split = fusion == "concat" and self.use_ids and self.use_text
        id_dim = min(max(int(self.embedding_dim * (1.0 - self.text_share)), 1),
                     self.embedding_dim - 1)
        self.id_dim = id_dim if split else self.embedding_dim
        self.text_dim = self.embedding_dim - id_dim if split else self.embedding_dim
        if self.use_ids:
            self.id_embedding = keras.layers.Embedding(
                self.num_id_items, self.id_dim, name="id_embedding",
                embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed))
        if self.use_ids and self.use_text and self.text_gate:
            # Per warm item, a learned weight in (0, 1) on its text part.
            self.gate_embedding = keras.layers.Embedding(
                self.num_id_items, 1, name="text_gate",
                embeddings_initializer=keras.initializers.Constant(2.0))
        if self.use_text:
            self.tokenizer = TextTokenizer(self.text_vocabulary, self.sequence_length,
                                           name="tokenizer")
            self.hasher = None
            if self.char_ngrams:
                self.hasher = CharNgramHasher(self.char_ngrams, self.ngram_buckets,
                                              self.max_ngrams, name="ngram_hasher")
            self.text_encoder = TextEncoder(self.tokenizer.vocabulary_size, self.text_dim,
                                            self.token_dim, self.filters, self.widths,
                                            mean_tokens=self.mean_tokens,
                                            ngram_buckets=self.ngram_buckets if self.hasher
                                            else 0, name="text_encoder")
            self.item_tokens = self.add_weight(
                name="item_tokens", shape=(self.num_items, self.sequence_length),
                dtype=tf.int32, initializer="zeros", trainable=False)
            if self.hasher is not None:
                self.item_ngrams = self.add_weight(
                    name="item_ngrams", shape=(self.num_items, self.max_ngrams),
                    dtype=tf.int32, initializer="zeros", trainable=False)

    def set_item_texts(self, texts) -> None:
        """Tokenises the catalogue texts ([num_items] strings) into `item_tokens`."""
        if not self.use_text:
            return
        texts = np.asarray([t if isinstance(t, str) else "" for t in texts], dtype=object)
        if len(texts) != self.num_items:
            raise ValueError(f"expected {self.num_items} item texts, got {len(texts)}")
        chunks = [tf.constant(texts[i:i + 65_536].astype(str))
                  for i in range(0, len(texts), 65_536)]
        self.item_tokens.assign(tf.concat([self.tokenizer(c) for c in chunks], 0))
        if self.hasher is not None:
            self.item_ngrams.assign(tf.concat([self.hasher(c) for c in chunks], 0))

    def _has_id(self, index):
        return tf.logical_and(index >= 1, index < self.num_id_items)

    def _fuse(self, id_part, text_part, keep_id):
        """keep_id: [n] bool; id_part [n, id_dim] / text_part [n, text_dim] or None."""
        if id_part is not None:
            id_part = id_part * tf.cast(keep_id, id_part.dtype)[:, None]
        if id_part is None or text_part is None:
            total = id_part if text_part is None else text_part
        elif self.fusion == "concat":
            total = tf.concat([id_part, text_part], axis=-1)
        else:
            total = id_part + text_part
        return self._norm(total)

    def _norm(self, x):
        return tf.math.l2_normalize(x, axis=-1) if self.normalize else x

    def _text_only(self, text_part):
        """The full-width embedding of an item known by its text alone."""
        if self.fusion == "concat" and self.use_ids:
            text_part = tf.concat([tf.zeros([tf.shape(text_part)[0], self.id_dim],
                                            text_part.dtype), text_part], axis=-1)
        return self._norm(text_part)

    def call(self, item_index, training=False):
        return self.encode(item_index, training=training)[0]

    def encode(self, item_index, training=False):
        """Embeddings of `item_index` and the text-alignment loss of its items.

        Returns:
          (embeddings [..., embedding_dim], alignment): alignment is the mean
          cosine distance between the text-only embedding of each distinct
          warm item of the batch and its full embedding (held fixed), i.e.
          how far the cold-start path is from the behaviour space; 0 when
          the model lacks ids or text.
        """
        item_index = tf.cast(item_index, tf.int32)
        shape = tf.shape(item_index)
        flat = tf.reshape(item_index, [-1])
        # Encode each distinct item of the batch once: a batch of pairs with
        # negatives holds far fewer distinct items than occurrences.
        unique, position = tf.unique(flat)
        unique_has_id = self._has_id(unique)
        id_u = text_u = None
        if self.use_ids:
            id_u = self.id_embedding(tf.where(unique_has_id, unique, 0))
        if self.use_text:
            in_table = tf.logical_and(unique >= 0, unique < self.num_items)
            row = tf.where(in_table, unique, 0)
            tokens = tf.gather(self.item_tokens, row) * tf.cast(in_table, tf.int32)[:, None]
            ngrams = None
            if self.hasher is not None:
                ngrams = tf.gather(self.item_ngrams, row) * tf.cast(in_table, tf.int32)[:, None]
            text_u = self._encode_tokens(tokens, ngrams)
        keep_id = unique_has_id
        if training and self.use_ids and self.use_text and self.id_dropout > 0:
            # Each distinct item of this call hides its id with probability
            # id_dropout, at every place it occurs in the call (e.g. in all the
            # histories of a batch); a separate call draws again.
            drop = tf.random.uniform(tf.shape(unique), seed=self.seed) < self.id_dropout
            keep_id = tf.logical_and(unique_has_id, tf.logical_not(drop))
        gated = text_u
        if self.use_ids and self.use_text and self.text_gate:
            # An item with its id weighs its text part by its own gate; an item
            # known by its text alone (cold, or id dropped) is its text.
            gate = tf.sigmoid(self.gate_embedding(tf.where(keep_id, unique, 0)))
            gated = text_u * tf.where(keep_id[:, None], gate, tf.ones_like(gate))
        # Fuse and normalise each distinct item once, then gather: a batch of
        # pairs with negatives, or of histories, repeats items many times over.
        fused = tf.gather(self._fuse(id_u, gated, keep_id), position)
        alignment = tf.constant(0.0)
        if self.use_ids and self.use_text:
            full = tf.stop_gradient(self._fuse(id_u, text_u, unique_has_id))
            text_only = self._text_only(text_u)
            weight = tf.cast(unique_has_id, text_only.dtype)
            distance = 1.0 - tf.reduce_sum(text_only * full, axis=-1)
            alignment = tf.math.divide_no_nan(tf.reduce_sum(distance * weight),
                                              tf.reduce_sum(weight))
        return tf.reshape(fused, tf.concat([shape, [self.embedding_dim]], 0)), alignment

    def encode_text(self, texts):
        """[batch] strings -> [batch, embedding_dim]: the text path alone (new items)."""
        if not self.use_text:
            raise ValueError("this model has no text tower (use_text=False)")
        ngrams = self.hasher(texts) if self.hasher is not None else None
        return self._text_only(self._encode_tokens(self.tokenizer(texts), ngrams))

    def _encode_tokens(self, tokens, ngrams=None):
        """Text embeddings; an empty text gives zeros, not the projection bias."""
        has_tokens = tf.reduce_any(tokens != 0, axis=-1)
        if ngrams is not None:
            has_tokens = tf.logical_or(has_tokens, tf.reduce_any(ngrams != 0, axis=-1))
        encoded = self.text_encoder(tokens, ngrams)
        return encoded * tf.cast(has_tokens, encoded.dtype)[:, None]

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items,
                "num_id_items": self.num_id_items, "embedding_dim": self.embedding_dim,
                "use_ids": self.use_ids, "use_text": self.use_text,
                "id_dropout": self.id_dropout, "text_vocabulary": self.text_vocabulary,
                "sequence_length": self.sequence_length, "token_dim": self.token_dim,
                "filters": self.filters, "widths": list(self.widths), "seed": self.seed,
                "mean_tokens": self.mean_tokens, "char_ngrams": list(self.char_ngrams),
                "ngram_buckets": self.ngram_buckets, "max_ngrams": self.max_ngrams,
                "normalize": self.normalize, "text_gate": self.text_gate,
                "fusion": self.fusion, "text_share": self.text_share}
