"""The item encoder shared by both sides of every pair (the Siamese tower)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfrec import draws
from tfrec.config import FUSIONS
from tfrec.towers.text_encoder import TextEncoder
from tfrec.towers.tokenizer import CharNgramHasher, TextTokenizer


def _layer(value):
    """A sub-layer, or None, from itself or its `keras.layers.serialize` dict."""
    return keras.layers.deserialize(value) if isinstance(value, dict) else value


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
      use_ids: learn an id embedding per warm item.
      use_text: encode the item text (needs `tokenizer` and `text_encoder`).
      fusion: "sum" or "concat" (see above).
      text_share: with "concat", the share of the width given to the text part.
      id_dropout: training-time probability of hiding an id (only with
        use_text: without a text path there is nothing to stand in for it).
      text_gate: a learned weight in (0, 1) per warm item on its text part,
        so an item whose behaviour says more than its text can turn the text
        down (a cold item, or one whose id is dropped, is its text alone).
      normalize: L2-normalise (cosine scores); False keeps the length, so an
        item's norm can carry how strongly it is predicted.
      tokenizer: the `TextTokenizer` of item texts (with use_text).
      text_encoder: the `TextEncoder`, of output width `part_widths(...)[1]`
        (with use_text).
      hasher: the `CharNgramHasher` of item texts, when the text encoder
        embeds character n-grams; None otherwise.
      seed: seeds the id embedding's initialisation and the id dropout.

    Call:
      item_index: int tensor of any shape [...]  ->  [..., embedding_dim].
    """

    def __init__(self, num_items: int, num_id_items: int, *, embedding_dim: int, use_ids: bool,
                 use_text: bool, fusion: str, text_share: float, id_dropout: float,
                 text_gate: bool, normalize: bool, tokenizer: TextTokenizer | dict | None = None,
                 text_encoder: TextEncoder | dict | None = None,
                 hasher: CharNgramHasher | dict | None = None, seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if not use_ids and not use_text:
            raise ValueError("an item encoder needs ids, text or both: use_ids and use_text "
                             "are both false")
        if int(num_items) < 1 or not 1 <= int(num_id_items) <= int(num_items):
            raise ValueError(f"num_id_items must be 1 to num_items ({num_items}): the items "
                             f"with an id embedding are the catalogue's first ones, got "
                             f"{num_id_items}")
        if int(embedding_dim) < 1:
            raise ValueError(f"embedding_dim must be at least 1, got {embedding_dim}")
        if not 0.0 <= float(id_dropout) < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {id_dropout}")
        if not 0.0 < float(text_share) < 1.0:
            raise ValueError(f"text_share must be in (0, 1), got {text_share}")
        self.num_items = int(num_items)
        self.num_id_items = int(num_id_items)
        self._embedding_dim = int(embedding_dim)
        self.use_ids = bool(use_ids)
        self.use_text = bool(use_text)
        self.fusion = fusion
        self.text_share = float(text_share)
        self.id_dropout = float(id_dropout)
        self.text_gate = bool(text_gate)
        self.normalize = bool(normalize)
        self.seed = seed
        self.id_dim, self.text_dim = self.part_widths(
            self._embedding_dim, self.use_ids, self.use_text, fusion, self.text_share)
        if self.use_ids:
            self.id_embedding = keras.layers.Embedding(
                self.num_id_items, self.id_dim, name="id_embedding",
                embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed))
        if self.use_ids and self.use_text and self.text_gate:
            # Per warm item, a learned weight in (0, 1) on its text part.
            self.gate_embedding = keras.layers.Embedding(
                self.num_id_items, 1, name="text_gate",
                embeddings_initializer=keras.initializers.Constant(2.0))
        self.tokenizer = self.hasher = self.text_encoder = None
        if self.use_text:
            if tokenizer is None or text_encoder is None:
                raise ValueError("use_text needs a tokenizer and a text_encoder")
            self.tokenizer = _layer(tokenizer)
            self.hasher = _layer(hasher)
            self.text_encoder = _layer(text_encoder)
            if self.text_encoder.output_dim != self.text_dim:
                raise ValueError(f"the text encoder's output_dim is "
                                 f"{self.text_encoder.output_dim}, the text part is "
                                 f"{self.text_dim} wide")
            if self.text_encoder.vocabulary_size < self.tokenizer.vocabulary_size:
                raise ValueError(f"the text encoder's vocabulary_size is "
                                 f"{self.text_encoder.vocabulary_size}, the tokenizer gives ids "
                                 f"up to {self.tokenizer.vocabulary_size - 1} (its "
                                 f"{len(self.tokenizer.vocabulary)} words, padding and unknown): "
                                 f"make it TextEncoder({self.tokenizer.vocabulary_size}, ...)")
            if self.hasher is not None and (self.text_encoder.ngram_buckets or 0) < \
                    self.hasher.num_buckets:
                raise ValueError(f"the text encoder's ngram_buckets is "
                                 f"{self.text_encoder.ngram_buckets}, the n-gram hasher gives "
                                 f"ids up to {self.hasher.num_buckets - 1}")
            self.item_tokens = self.add_weight(
                name="item_tokens", shape=(self.num_items, self.tokenizer.sequence_length),
                dtype=tf.int32, initializer="zeros", trainable=False)
            if self.hasher is not None:
                self.item_ngrams = self.add_weight(
                    name="item_ngrams", shape=(self.num_items, self.hasher.max_ngrams),
                    dtype=tf.int32, initializer="zeros", trainable=False)

    @staticmethod
    def part_widths(embedding_dim: int, use_ids: bool, use_text: bool, fusion: str,
                    text_share: float) -> tuple[int, int]:
        """(id part, text part) widths: each the whole width, or shares of it when
        concatenated."""
        split = fusion == "concat" and use_ids and use_text
        id_dim = min(max(int(embedding_dim * (1.0 - text_share)), 1), embedding_dim - 1)
        return (id_dim, embedding_dim - id_dim) if split else (embedding_dim, embedding_dim)

    @property
    def text_vocabulary(self) -> list[str]:
        """The tokeniser's vocabulary (empty without a text path)."""
        return [] if self.tokenizer is None else list(self.tokenizer.vocabulary)

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

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
        use_both = self.use_ids and self.use_text
        item_index = tf.convert_to_tensor(item_index)
        if item_index.dtype.size > 4:
            # Wider indices saturate before the cast (2**32 + 1 wrapped round to item 1):
            # one past the catalogue reads as any index outside it does.
            item_index = tf.clip_by_value(item_index, tf.cast(-1, item_index.dtype),
                                          tf.cast(self.num_items, item_index.dtype))
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
        if training and use_both and self.id_dropout > 0:
            # Each distinct item of this call hides its id with probability
            # id_dropout, at every place it occurs in the call (e.g. in all the
            # histories of a batch); a separate call draws again.
            drop = draws.uniform(tf.shape(unique), self.seed) < self.id_dropout
            keep_id = tf.logical_and(unique_has_id, tf.logical_not(drop))
        gated = text_u
        if use_both and self.text_gate:
            # An item with its id weighs its text part by its own gate; an item
            # known by its text alone (cold, or id dropped) is its text.
            gate = tf.sigmoid(self.gate_embedding(tf.where(keep_id, unique, 0)))
            gated = text_u * tf.where(keep_id[:, None], gate, tf.ones_like(gate))
        # Fuse and normalise each distinct item once, then gather: a batch of
        # pairs with negatives, or of histories, repeats items many times over.
        fused = tf.gather(self._fuse(id_u, gated, keep_id), position)
        alignment = tf.constant(0.0)
        if use_both:
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
                "use_ids": self.use_ids, "use_text": self.use_text, "fusion": self.fusion,
                "text_share": self.text_share, "id_dropout": self.id_dropout,
                "text_gate": self.text_gate, "normalize": self.normalize,
                "tokenizer": _serialize(self.tokenizer),
                "text_encoder": _serialize(self.text_encoder),
                "hasher": _serialize(self.hasher), "seed": self.seed}


def _serialize(layer):
    return None if layer is None else keras.layers.serialize(layer)
