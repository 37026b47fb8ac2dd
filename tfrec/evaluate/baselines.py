"""Reference methods ranked on the same cases as the model.

Every method reduces to dot products: it gives a vector per catalogue item
and a vector per case query, and a case's target is ranked by
`metrics.target_ranks` exactly as the model's is (the query's own items
excluded, ties broken at random with a fixed seed, so a method that scores
many items equally gets no credit for the tie).

- `popularity`: training-slice event counts, the same list for every query.
- `item2vec_gensim`: gensim `Word2Vec` (skip-gram, negative sampling) over
  the training sessions, a basket as a sentence; the query is the mean of
  its items' vectors. Items without training events get no vector (score 0).
  Needs the optional `gensim` package (`pip install tfrec[baselines]`).
- `tfidf_text`: TF-IDF over the item texts, cosine between the mean of the
  query items' vectors and each item's.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time

import numpy as np

from tfrec.errors import InputError

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"[0-9a-z]+")


@dataclasses.dataclass
class Embeddings:
    """A method's item vectors [num_items, d] and case query vectors [n, d]."""

    items: np.ndarray
    queries: np.ndarray
    seconds: float = 0.0


def mean_of_rows(vectors: np.ndarray, queries: list) -> np.ndarray:
    """[n, d] mean of each query's item rows (zeros for an empty query)."""
    out = np.zeros((len(queries), vectors.shape[1]), dtype=np.float32)
    for row, items in enumerate(queries):
        if len(items):
            out[row] = vectors[np.asarray(items, dtype=np.int64)].mean(axis=0)
    return out


def popularity(vocab, queries: list) -> Embeddings:
    """Scores every item by its training event count, whatever the query."""
    started = time.perf_counter()
    items = vocab.counts.astype(np.float32)[:, None]
    return Embeddings(items, np.ones((len(queries), 1), np.float32),
                      time.perf_counter() - started)


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric runs (what TF-IDF counts)."""
    return _TOKEN.findall(str(text).lower())


def tfidf(vocab, queries: list) -> Embeddings:
    """L2-normalised TF-IDF rows of the item texts (smooth idf, as scikit-learn's)."""
    from scipy import sparse

    started = time.perf_counter()
    token_index: dict[str, int] = {}
    rows, cols = [], []
    for row, text in enumerate(vocab.text):
        for token in tokenize(text):
            rows.append(row)
            cols.append(token_index.setdefault(token, len(token_index)))
    if not token_index:
        raise InputError("the TF-IDF baseline needs item text: no item has any")
    counts = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                               shape=(vocab.size, len(token_index)))
    counts.sum_duplicates()
    df = np.bincount(counts.indices, minlength=len(token_index))
    idf = np.log((1 + vocab.size) / (1 + df)) + 1.0
    matrix = counts.multiply(idf[None, :]).tocsr()
    norms = np.sqrt(matrix.multiply(matrix).sum(axis=1)).A.ravel()
    matrix = sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ matrix
    # Queries: the mean of their items' rows, as a sparse matrix product.
    q_rows = np.repeat(np.arange(len(queries)), [len(q) for q in queries])
    q_cols = np.concatenate([np.asarray(q, np.int64) for q in queries] + [np.zeros(0, np.int64)])
    weights = np.concatenate([np.full(len(q), 1.0 / len(q), np.float32) for q in queries if q]
                             + [np.zeros(0, np.float32)])
    selector = sparse.csr_matrix((weights, (q_rows, q_cols)), shape=(len(queries), vocab.size))
    query_matrix = (selector @ matrix).tocsr()
    return Embeddings(matrix.astype(np.float32), query_matrix.astype(np.float32),
                      time.perf_counter() - started)


def gensim_available() -> bool:
    try:
        import gensim  # noqa: F401
    except ImportError:
        return False
    return True


def item2vec_gensim(sessions, vocab, queries: list, dim: int = 64, window: int | None = None,
                    negatives: int = 5, epochs: int = 10, sample: float = 1e-3,
                    workers: int = 2, seed: int = 42) -> Embeddings:
    """gensim Word2Vec skip-gram over the training sessions (a basket is a sentence).

    Args:
      window: context window; None uses the longest session, so every pair
        of items of a basket is a (target, context) pair (item2vec's set
        context).
      sample: gensim's down-sampling of frequent items (its default).
    """
    if not gensim_available():
        raise InputError("the item2vec_gensim baseline needs gensim: "
                         "pip install 'tfrec[baselines]' (or leave it out with --baselines)")
    from gensim.models import Word2Vec

    started = time.perf_counter()
    sentences = [s for s in sessions.to_lists() if len(s) >= 2]
    sentences = [[str(i) for i in s] for s in sentences]
    if not sentences:
        raise InputError("no training session has two items: nothing for item2vec")
    window = window or max(len(s) for s in sentences)
    model = Word2Vec(sentences, vector_size=dim, window=window, sg=1, negative=negatives,
                     min_count=1, sample=sample, epochs=epochs, workers=workers, seed=seed)
    items = np.zeros((vocab.size, dim), np.float32)
    for key, row in model.wv.key_to_index.items():
        items[int(key)] = model.wv.vectors[row]
    items /= np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
    return Embeddings(items, mean_of_rows(items, queries), time.perf_counter() - started)
