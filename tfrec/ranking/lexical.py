"""`LexicalTable`: each item's text as its few strongest TF-IDF terms.

The ranking stage's lexical feature is the TF-IDF cosine of a candidate's
text with the query items' texts (what makes TF-IDF strong on new items).
A full TF-IDF row per item is as wide as the term vocabulary, too wide to
serve; so each item keeps its `max_terms` terms of largest TF-IDF weight,
re-normalised to unit length, as two [V, T] arrays (term ids, 0 = none, and
weights). The cosine of two items is then the sum of the products of the
weights of the terms they share, computed the same way in numpy
(`similarity`) and in TensorFlow (`tf_similarity`) from the same arrays. A
new item's row is made from its text with the stored term vocabulary and
IDF (`rows`), so an item added after training has its lexical feature.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import unicodedata

import numpy as np
import tensorflow as tf

from tfrec.errors import InputError

# Chinese and Japanese characters (Han, Hiragana, Katakana): each a term of its own, as
# the text tower's tokeniser splits them (`tfrec.towers.tokenizer`).
_CJK = ((0x2E80, 0x2FDF), (0x3005, 0x3005), (0x3007, 0x3007), (0x3021, 0x3029),
        (0x3038, 0x303B), (0x3040, 0x30FF), (0x31F0, 0x31FF), (0x3400, 0x4DBF),
        (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF66, 0xFF9F), (0x20000, 0x3134F))


_ASCII_TOKEN = re.compile(r"[0-9a-z]+")


def _char_class(ranges) -> str:
    return "".join(re.escape(chr(a)) + (f"-{re.escape(chr(b))}" if b > a else "")
                   for a, b in ranges)


@functools.lru_cache(maxsize=None)
def _token_pattern() -> re.Pattern:
    """Terms as the text tower reads words: runs of letters, combining marks and digits
    (any script; Python's `\\w` would cut a word at each Thai vowel or decomposed accent),
    and each Chinese or Japanese character alone. Built once from Unicode's categories."""
    cjk = np.zeros(sys.maxunicode + 1, bool)
    for a, b in _CJK:
        cjk[a:b + 1] = True
    ranges, start = [], None
    for code in range(sys.maxunicode + 2):
        word = (code <= sys.maxunicode and not cjk[code]
                and unicodedata.category(chr(code))[0] in "LMN")
        if word and start is None:
            start = code
        elif not word and start is not None:
            ranges.append((start, code - 1))
            start = None
    return re.compile(f"[{_char_class(_CJK)}]|[{_char_class(ranges)}]+")


def tokenize(text, rules: int = 2) -> list[str]:
    """The terms TF-IDF counts: the text without HTML markup, case-folded (NFKC, as the
    text tower's tokeniser), its words (letters, marks and digits of any script; each
    Chinese or Japanese character alone). `rules` 1: the terms of tables built before
    (lower-cased runs of a-z and 0-9), as `model.text.tokenizer_rules` 1."""
    if not isinstance(text, str):
        return []
    if rules == 1:
        return _ASCII_TOKEN.findall(text.lower())
    if "<" in text or "&" in text:
        text = _markup().sub(" ", text)
    if text.isascii():  # the same terms, faster
        return _ASCII_TOKEN.findall(text.lower())
    return _token_pattern().findall(unicodedata.normalize("NFKC", text).casefold())


@functools.lru_cache(maxsize=None)
def _markup() -> re.Pattern:
    from tfrec.towers.tokenizer import MARKUP

    return re.compile(MARKUP)


@dataclasses.dataclass
class LexicalTable:
    """The items' strongest TF-IDF terms.

    Attributes:
      terms: [V, T] int32 term ids (1-based; 0 where an item has fewer terms).
      weights: [V, T] float32 their weights (each row unit-length, or zeros).
      vocabulary: the term strings, id - 1 order.
      idf: [len(vocabulary) + 1] float32 smooth IDF of each term id (0 at 0).
      rules: the `tokenize` rules its terms were read with (a new text's too).
    """

    terms: np.ndarray
    weights: np.ndarray
    vocabulary: list
    idf: np.ndarray
    rules: int = 2

    @property
    def max_terms(self) -> int:
        return int(self.terms.shape[1])

    @classmethod
    def build(cls, texts, max_terms: int, rules: int = 2) -> "LexicalTable":
        """The table of `texts` (one per item index; None or "" for none), IDF as
        scikit-learn's smooth IDF over them, terms read with `tokenize`'s `rules`."""
        if max_terms < 1:
            raise InputError(f"must be at least 1, got {max_terms}", key="ranking.text_terms")
        index: dict[str, int] = {}
        tokens = [[index.setdefault(t, len(index) + 1) for t in tokenize(text, rules)]
                  for text in texts]
        df = np.zeros(len(index) + 1, np.int64)
        for row in tokens:
            for term in set(row):
                df[term] += 1
        idf = (np.log((1 + len(tokens)) / (1 + df)) + 1.0).astype(np.float32)
        idf[0] = 0.0
        vocabulary = [None] * len(index)
        for term, j in index.items():
            vocabulary[j - 1] = term
        table = cls(np.zeros((0, max_terms), np.int32), np.zeros((0, max_terms), np.float32),
                    vocabulary, idf, rules)
        table.terms, table.weights = table._rows_of_ids(tokens)
        return table

    def rows(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """([n, T] term ids, [n, T] weights) of new texts (terms outside the
        vocabulary are left out)."""
        index = {term: j + 1 for j, term in enumerate(self.vocabulary)}
        return self._rows_of_ids([[index[t] for t in tokenize(text, self.rules)
                                   if t in index] for text in texts])

    def _rows_of_ids(self, tokens: list) -> tuple[np.ndarray, np.ndarray]:
        n, width = len(tokens), self.max_terms
        terms = np.zeros((n, width), np.int32)
        weights = np.zeros((n, width), np.float32)
        for row, ids in enumerate(tokens):
            if not ids:
                continue
            unique, counts = np.unique(np.asarray(ids, np.int64), return_counts=True)
            w = counts * self.idf[unique]
            keep = np.argsort(-w, kind="stable")[:width]
            # Normalised over the kept terms: an item's cosine with itself is 1.
            w = w[keep] / max(float(np.linalg.norm(w[keep])), 1e-12)
            terms[row, :len(keep)] = unique[keep]
            weights[row, :len(keep)] = w
        return terms, weights

    def with_rows(self, terms: np.ndarray, weights: np.ndarray) -> "LexicalTable":
        """This table with rows appended (new items)."""
        return dataclasses.replace(self, terms=np.concatenate([self.terms, terms]),
                                   weights=np.concatenate([self.weights, weights]))

    @functools.cached_property
    def matrix(self):
        """The rows as a scipy CSR matrix [V, len(vocabulary) + 1] (column 0 unused)."""
        from scipy import sparse

        rows = np.repeat(np.arange(len(self.terms)), self.terms.shape[1])
        keep = self.terms.ravel() > 0
        return sparse.csr_matrix((self.weights.ravel()[keep], (rows[keep],
                                                               self.terms.ravel()[keep])),
                                 shape=(len(self.terms), len(self.vocabulary) + 1))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """[B, L, N] cosines of items a [B, L] with items b [B, N] (index arrays): one
        sparse product per row (its cost follows the shared terms, not L x N x T²)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        matrix = self.matrix
        out = np.zeros((a.shape[0], a.shape[1], b.shape[1]), np.float32)
        for row in range(a.shape[0]):
            out[row] = (matrix[a[row]] @ matrix[b[row]].T).toarray()
        return out


def tf_similarity(terms: tf.Tensor, weights: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """The TensorFlow twin of `LexicalTable.similarity`: [B, L, N] from the
    [V, T] `terms` and `weights` and the item indices a [B, L], b [B, N]."""
    ta, wa = tf.gather(terms, a), tf.gather(weights, a)
    tb, wb = tf.gather(terms, b), tf.gather(weights, b)
    batch, length, width = tf.shape(a)[0], tf.shape(a)[1], tf.shape(b)[1]
    size = terms.shape[1]  # static: no read of a variable's whole value
    # An item's terms are distinct, so each of b's terms meets at most one of a's: each
    # query item's terms sorted, b's terms found among them by a binary search, [B L, N T]
    # elements (comparing every pair of terms is T times as many: 20 ms for a session of
    # 500 items). A missing term (0) has weight 0 on both sides, so its matches add nothing.
    ta, wa = tf.reshape(ta, [-1, size]), tf.reshape(wa, [-1, size])
    order = tf.argsort(ta, axis=1, stable=True)
    ta, wa = tf.gather(ta, order, batch_dims=1), tf.gather(wa, order, batch_dims=1)
    tb = tf.reshape(tf.broadcast_to(tf.reshape(tb, [batch, 1, -1]),
                                    [batch, length, width * size]), [batch * length, -1])
    at = tf.minimum(tf.searchsorted(ta, tb), size - 1)
    met = tf.where(tf.equal(tf.gather(ta, at, batch_dims=1), tb),
                   tf.gather(wa, at, batch_dims=1), 0.0)
    met = tf.reshape(met, [batch, length, width, size]) * wb[:, None]
    return tf.reduce_sum(met, axis=-1)
