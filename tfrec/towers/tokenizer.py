"""Item-text tokeniser: tensorflow-text ops only, so serving needs no Python preprocessing."""

from __future__ import annotations

import collections
from typing import Iterable

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text
import tf_keras as keras

PAD_ID = 0
OOV_ID = 1
# Everything but letters, digits and combining marks separates tokens ("T-LIGHT" -> "t",
# "light"); a mark (a Thai vowel or tone, a decomposed accent) is part of its word.
_SEPARATORS = r"[^\pL\pM\pN]+"
# HTML markup in a product text (a tag, a character entity) is not words of it: without
# this `<b>Red Mug</b> &amp;` would give "b red mug b amp", spending the token budget.
MARKUP = (r"</?[A-Za-z][A-Za-z0-9]{0,20}(?:\s[^<>]{0,200})?/?>|<!--[^<>]{0,200}-->"
          r"|&(?:[A-Za-z]{2,8}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")
# Chinese and Japanese write no spaces between words: each Han, Hiragana or Katakana
# character is a token of its own (as BERT's tokeniser does), so that two texts sharing
# words share tokens (a whole title would otherwise be one token, shared with nothing).
_CJK = r"(\p{Han}|\p{Hiragana}|\p{Katakana})"


# The tokeniser's rules: 2 strips HTML markup and splits Chinese and Japanese characters;
# 1 does neither (the rules of runs saved before 2: their token vocabularies were learned
# so, and a new item's text must be read as they were).
RULES = (1, 2)
LATEST_RULES = 2


def _normalise_and_split(texts: tf.Tensor, rules: int = LATEST_RULES) -> tf.RaggedTensor:
    if rules not in RULES:
        raise ValueError(f"tokeniser rules must be one of {RULES}, got {rules!r}")
    if rules >= 2:
        texts = tf.strings.regex_replace(texts, MARKUP, " ")
    folded = tf_text.case_fold_utf8(texts)
    spaced = tf.strings.regex_replace(folded, _SEPARATORS, " ")
    if rules >= 2:
        spaced = tf.strings.regex_replace(spaced, _CJK, r" \1 ")
    return tf_text.WhitespaceTokenizer().tokenize(spaced)


@keras.utils.register_keras_serializable(package="tfrec")
class TextTokenizer(keras.layers.Layer):
    """Strings -> padded token ids.

    Text is stripped of HTML markup (tags, character entities), case-folded
    (Unicode-aware), split on anything that is not a letter, digit or combining
    mark and around each Chinese or Japanese character, and looked up in a fixed
    vocabulary: id 0 pads, id 1 is an unknown token, known tokens start at 2.

    Args:
      vocabulary: the tokens, in id order from 2 (see build_token_vocabulary).
      sequence_length: output width; longer texts are cut, shorter padded.
      rules: `LATEST_RULES` as above; 1 neither strips markup nor splits Chinese or
        Japanese characters (the rules a vocabulary learned before them needs).

    Call:
      texts: [batch] tf.string  ->  [batch, sequence_length] int32 ids.
    """

    def __init__(self, vocabulary: list[str], sequence_length: int,
                 rules: int = LATEST_RULES, **kwargs):
        super().__init__(**kwargs)
        if rules not in RULES:
            raise ValueError(f"tokeniser rules must be one of {RULES}, got {rules!r}")
        self.vocabulary = [str(t) for t in vocabulary]
        self.sequence_length = int(sequence_length)
        self.rules = int(rules)
        self._lookup = keras.layers.StringLookup(
            vocabulary=self.vocabulary, mask_token="", num_oov_indices=1,
            output_mode="int", name="token_lookup")

    @property
    def vocabulary_size(self) -> int:
        """Ids in use, padding and unknown included."""
        return len(self.vocabulary) + 2

    def call(self, texts):
        texts = _text_batch(texts, type(self).__name__)
        tokens = _normalise_and_split(texts, self.rules)
        ids = tf.ragged.map_flat_values(self._lookup, tokens)
        ids = tf.cast(ids, tf.int32)
        return ids.to_tensor(default_value=PAD_ID,
                             shape=tf.concat([tf.shape(texts), [self.sequence_length]], 0))

    def get_config(self):
        return {**super().get_config(), "vocabulary": self.vocabulary,
                "sequence_length": self.sequence_length, "rules": self.rules}


def _text_batch(texts, layer: str):
    """`texts` as a [batch] string tensor; a single text is refused, naming the layer."""
    texts = tf.convert_to_tensor(texts, tf.string)
    if texts.shape.rank == 0:
        raise ValueError(f"{layer} reads a batch of texts, [batch] strings, got one text "
                         "(a scalar): pass a list, e.g. [text]")
    return texts


def build_token_vocabulary(texts: Iterable[str], max_tokens: int,
                           min_count: int, rules: int = LATEST_RULES) -> list[str]:
    """Learns the token vocabulary from item texts with the tokeniser's own ops.

    Tokens are counted once per text, kept if in at least `min_count` texts,
    ordered by count (ties alphabetically), at most `max_tokens`.
    """
    texts = np.asarray([t if isinstance(t, str) else "" for t in texts], dtype=object)
    counts: collections.Counter = collections.Counter()
    for start in range(0, len(texts), 65_536):
        tokens = _normalise_and_split(tf.constant(texts[start:start + 65_536].astype(str)),
                                      rules)
        for row in tokens.to_list():
            counts.update({t.decode("utf-8") for t in row})
    ranked = sorted((t for t, n in counts.items() if n >= min_count and t),
                    key=lambda t: (-counts[t], t))
    return ranked[:max_tokens]


@keras.utils.register_keras_serializable(package="tfrec")
class CharNgramHasher(keras.layers.Layer):
    """Strings -> hashed character n-grams of their words (fastText-style subwords).

    Each token of the text (as the word tokeniser splits it) is wrapped in
    boundary marks ("<mug>") and cut into character n-grams of every width in
    `widths`; each n-gram is hashed into one of `num_buckets` - 1 buckets
    (ids 1..num_buckets-1; 0 pads). No vocabulary: a new item's unseen word
    still shares n-grams with known ones ("heart" and "hearts"), which is what
    TF-IDF over character n-grams exploits on new items.

    Args:
      widths: n-gram widths, e.g. (3, 4).
      num_buckets: hash buckets, padding included.
      max_ngrams: output width; n-grams past it are cut.

    Call:
      texts: [batch] tf.string  ->  [batch, max_ngrams] int32 bucket ids.
    """

    def __init__(self, widths: tuple[int, ...], num_buckets: int, max_ngrams: int, **kwargs):
        super().__init__(**kwargs)
        self.widths = tuple(int(w) for w in widths)
        self.num_buckets = int(num_buckets)
        self.max_ngrams = int(max_ngrams)

    def call(self, texts):
        texts = _text_batch(texts, type(self).__name__)
        words = _normalise_and_split(texts)  # [batch, (words)]
        marked = tf.strings.join(["<", words, ">"])
        chars = tf.strings.unicode_split(marked, "UTF-8")  # [batch, (words), (chars)]
        grams = [tf.strings.ngrams(chars, w, separator="") for w in self.widths]
        grams = tf.concat(grams, axis=2).merge_dims(1, 2)  # [batch, (ngrams)]
        ids = tf.ragged.map_flat_values(
            lambda g: tf.strings.to_hash_bucket_fast(g, self.num_buckets - 1) + 1, grams)
        ids = tf.cast(ids, tf.int32)
        return ids.to_tensor(default_value=PAD_ID,
                             shape=tf.concat([tf.shape(texts), [self.max_ngrams]], 0))

    def get_config(self):
        return {**super().get_config(), "widths": list(self.widths),
                "num_buckets": self.num_buckets, "max_ngrams": self.max_ngrams}
