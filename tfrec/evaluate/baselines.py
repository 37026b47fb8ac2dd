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
- `ease`: EASE (Steck 2019), the closed-form item-item model on the
  training baskets x items binary matrix; λ chosen on a validation slice of
  the training sessions (never on the test cases). See `item_item`.
- `itemknn`: cosine similarity between the item columns of the same
  matrix, each item's top-N neighbours kept (N chosen the same way).
- `ease_tfidf`: the simple hybrid of the two: EASE's scores for items with
  training events, a weight times `tfidf_text`'s cosine for the items
  without (which EASE scores 0). λ is chosen as for `ease`, then the weight
  on the same validation slice (`tune_new_item_weight`).

EASE and ItemKNN need dense n x n matrices (float64 while fitting): up to
`MAX_ITEM_ITEM_CATALOGUE` items. Items without training events score 0.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from tfrec.config import EvaluateSettings, RankingConfig, TrainConfig
from tfrec.errors import InputError
from tfrec.ranking import item_item
from tfrec.ranking.lexical import tokenize
from tfrec.metrics import hit_rate, ndcg, target_ranks

logger = logging.getLogger(__name__)


# A fit holds a few n x n float64 arrays and costs ~n^3 flops: measured on 2
# cores, 0.5 s at 3,500 items, 10 s at 10,000 (so ~80 s at 20,000, and the
# grid below is 13 fits).
MAX_ITEM_ITEM_CATALOGUE = EvaluateSettings.max_item_item_catalogue
# EASE's λ: a 1-2-5 log grid.
EASE_LAMBDAS = RankingConfig.ease_lambdas
# The hybrid's weight of the TF-IDF cosine of items without training events: a 1-2-5 grid.
NEW_ITEM_WEIGHTS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# ItemKNN's neighbours per item; 0 keeps every one.
KNN_NEIGHBOURS = (3, 5, 10, 20, 50, 100, 200, 0)
VALIDATION_SHARE, VALIDATION_MAX_CASES = item_item.VALIDATION_SHARE, item_item.VALIDATION_MAX_CASES


@dataclasses.dataclass
class Embeddings:
    """A method's item vectors [num_items, d] and case query vectors [n, d].

    `tuning`: how a method's setting was chosen (see `tune`), if it has one.
    """

    items: np.ndarray
    queries: np.ndarray
    seconds: float = 0.0
    tuning: dict | None = None


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
    query_matrix = _mean_rows(matrix, queries)
    return Embeddings(matrix.astype(np.float32), query_matrix.astype(np.float32),
                      time.perf_counter() - started)


def gensim_available() -> bool:
    try:
        import gensim  # noqa: F401
    except ImportError:
        return False
    return True


def item2vec_gensim(sessions, vocab, queries: list, dim: int = EvaluateSettings.gensim_dim,
                    window: int | None = None, negatives: int = 5,
                    epochs: int = EvaluateSettings.gensim_epochs, sample: float = 1e-3,
                    workers: int = 1, seed: int = TrainConfig.seed) -> Embeddings:
    """gensim Word2Vec skip-gram over the training sessions (a basket is a sentence).

    Args:
      window: context window; None uses the longest session, so every pair
        of items of a basket is a (target, context) pair (item2vec's set
        context).
      sample: gensim's down-sampling of frequent items (its default).
      workers: gensim's training threads; one (the default) makes the vectors
        the same on every run, more trains faster but differently each time.
    """
    if not gensim_available():
        raise InputError("the item2vec_gensim baseline needs gensim: "
                         "pip install 'tfrec[baselines]' (or leave it out of evaluate.baselines)")
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


def item_item_skip_reason(num_items: int, limit: int = MAX_ITEM_ITEM_CATALOGUE) -> str | None:
    """Why EASE / ItemKNN do not run on a catalogue of `num_items` (None: they do)."""
    if num_items <= limit:
        return None
    return (f"skipped: catalogue of {num_items:,} items is above the {limit:,}-item limit of "
            "the item-item baselines")


def tune(fit, grid: tuple, baskets, k: int = TrainConfig.eval_k, seed: int = TrainConfig.seed,
         name: str = "setting") -> dict:
    """Chooses a setting of an item-item method by HR@k on a validation slice.

    The slice is held out of the training baskets (see
    `item_item.validation_slice`); the test cases are never seen. Ties in
    HR@k go to the better NDCG@k, then to the first value of the grid.

    Args:
      fit: (gram, value) -> weights [a, a], e.g. `item_item.ease_weights`.
      grid: the values to try.
      baskets: [num_sessions, num_items] binary training matrix.

    Returns:
      {"parameter", "chosen", "validation_cases", "fit_sessions",
      "hr@k": {value: HR}, "ndcg@k": {value: NDCG}, "seconds"}; a value 0
      of `neighbours` is shown as "all".
    """
    started = time.perf_counter()
    num_items = baskets.shape[1]
    held = item_item.validation_slice(baskets, VALIDATION_SHARE, VALIDATION_MAX_CASES, seed)
    if not len(held):
        raise InputError(f"no training session has two distinct items: no validation cases "
                         f"to choose the {name} on")
    valid = np.ones(num_items, dtype=bool)
    valid[0] = False
    active, gram = item_item.active_gram(held.fit)
    hr, nd = {}, {}
    for value in grid:
        t0 = time.perf_counter()
        items, queries = item_item.item_item_scorer(active, fit(gram, value), held.queries,
                                                    num_items)
        ranks = target_ranks(queries, items, held.targets, held.queries, valid)
        hr[value], nd[value] = hit_rate(ranks, k), ndcg(ranks, k)
        logger.info("  %s %s: validation HR@%d %.4f, NDCG@%d %.4f (%.1f s)", name,
                    _label(value), k, hr[value], k, nd[value], time.perf_counter() - t0)
    chosen = max(grid, key=lambda v: (hr[v], nd[v], -grid.index(v)))
    return {"parameter": name, "chosen": _label(chosen), "validation_cases": len(held),
            "fit_sessions": int(held.fit.shape[0]),
            f"hr@{k}": {str(_label(v)): hr[v] for v in grid},
            f"ndcg@{k}": {str(_label(v)): nd[v] for v in grid},
            "seconds": round(time.perf_counter() - started, 1)}


def _label(value):
    return "all" if value == 0 else value


def _item_item(fit, setting, grid, name: str, sessions, vocab, queries: list, k: int,
               seed: int, max_items: int) -> Embeddings:
    reason = item_item_skip_reason(vocab.size - 1, max_items)
    if reason:
        raise InputError(reason.replace("skipped: ", f"{name}: ", 1))
    started = time.perf_counter()
    baskets = item_item.basket_matrix(sessions, vocab.size)
    tuning = None
    if setting is None:
        tuning = tune(fit, tuple(grid), baskets, k, seed, name)
        setting = 0 if tuning["chosen"] == "all" else tuning["chosen"]
    active, gram = item_item.active_gram(baskets)
    items, query_matrix = item_item.item_item_scorer(active, fit(gram, setting), queries,
                                                     vocab.size)
    return Embeddings(items, query_matrix, time.perf_counter() - started, tuning)


def ease(sessions, vocab, queries: list, lam: float | None = None,
         k: int = TrainConfig.eval_k, seed: int = TrainConfig.seed, lambdas: tuple = EASE_LAMBDAS,
         max_items: int = MAX_ITEM_ITEM_CATALOGUE) -> Embeddings:
    """EASE on the training baskets; a query's scores are x_query @ B.

    Args:
      sessions: the training `Sessions` (a row per session; its distinct items).
      vocab: the `ItemVocabulary` (the catalogue: cold items score 0).
      queries: item index lists, one per case.
      lam: the L2 weight λ; None chooses it from `lambdas` by HR@k on a
        validation slice of the training sessions (`tune`), then refits on
        every training session with it.
      seed: the validation slice's draw.
      max_items: refuse (InputError) above this many catalogue items.

    Returns:
      Embeddings: items [num_items, a] (row j: column j of B over the a items
      with training events), queries [len(queries), a] sparse multi-hot;
      `tuning` holds the validation figures (None when `lam` is given).
    """
    return _item_item(item_item.ease_weights, lam, lambdas, "lambda", sessions, vocab,
                      queries, k, seed, max_items)


def itemknn(sessions, vocab, queries: list, neighbours: int | None = None,
            k: int = TrainConfig.eval_k, seed: int = TrainConfig.seed, grid: tuple = KNN_NEIGHBOURS,
            max_items: int = MAX_ITEM_ITEM_CATALOGUE) -> Embeddings:
    """Cosine ItemKNN on the training baskets; a query's scores are x_query @ S.

    Args:
      neighbours: how many neighbours each item keeps (0: all); None
        chooses it from `grid` on the validation slice, as `ease` does λ.

    Returns:
      Embeddings as `ease`'s, S in place of B.
    """
    return _item_item(item_item.cosine_weights, neighbours, grid, "neighbours", sessions,
                      vocab, queries, k, seed, max_items)


@dataclasses.dataclass
class Hybrid:
    """`ease_tfidf`'s scorer: EASE's `items` / `queries` (as `ease`'s `Embeddings`) and the
    TF-IDF part, `text_items` [num_items, terms] (the weighted rows of the items without
    training events, zeros elsewhere) and `text_queries` [n, terms]; a case's scores are
    the sum of both products."""

    items: np.ndarray
    queries: object
    text_items: object
    text_queries: object
    weight: float
    seconds: float = 0.0
    tuning: dict | None = None

    def extra_scores(self, start: int, stop: int) -> np.ndarray:
        """The TF-IDF part of cases start..stop - 1 (`metrics.target_ranks`' extra_scores)."""
        return (self.text_queries[start:stop] @ self.text_items.T).toarray()


def _inactive(active: np.ndarray, num_items: int) -> np.ndarray:
    new = np.ones(num_items, bool)
    new[active] = False
    new[0] = False
    return new


def tune_new_item_weight(baskets, lam: float, text_rows, new_share: float,
                         k: int = TrainConfig.eval_k, seed: int = TrainConfig.seed,
                         grid: tuple = NEW_ITEM_WEIGHTS) -> dict:
    """Chooses `ease_tfidf`'s weight on the validation slice `tune` holds out.

    EASE (λ `lam`) is fitted on the slice's other sessions; items without events
    there are scored by the weighted TF-IDF cosine. Each validation case is
    ranked as it is and again with its target shown as new (EASE's score of it
    replaced by its weighted cosine): the weight's figure is HR@k over both,
    the as-new copies weighing `new_share` (the catalogue's share of items
    without training events: how often a target is new). A tie counts
    against the target. The test cases are never seen.

    Args:
      text_rows: [num_items, terms] sparse L2-normalised TF-IDF rows.

    Returns:
      {"parameter", "chosen", "validation_cases", "fit_sessions", "lambda", "new_share",
      "hr@k": {weight: the figure}, "hr@k as is" and "hr@k as new": {weight: HR},
      "seconds"}.
    """
    from scipy import sparse

    started = time.perf_counter()
    num_items = baskets.shape[1]
    held = item_item.validation_slice(baskets, VALIDATION_SHARE, VALIDATION_MAX_CASES, seed)
    if not len(held):
        raise InputError("no training session has two distinct items: no validation cases "
                         "to choose the new-item weight on")
    active, gram = item_item.active_gram(held.fit)
    items, queries = item_item.item_item_scorer(active, item_item.ease_weights(gram, lam),
                                                held.queries, num_items)
    new = _inactive(active, num_items)
    text_items = (sparse.diags(new.astype(np.float64)) @ text_rows).tocsr()
    text_queries = _mean_rows(text_rows, held.queries)
    targets = np.asarray(held.targets, np.int64)
    hits = {w: np.zeros(len(targets), bool) for w in grid}
    hits_new = {w: np.zeros(len(targets), bool) for w in grid}
    chunk = max(1, (1 << 22) // max(num_items, 1))
    for start in range(0, len(targets), chunk):
        stop = min(start + chunk, len(targets))
        rows = np.arange(stop - start)
        behaviour = np.asarray(queries[start:stop] @ items.T, np.float64)
        text = np.asarray((text_queries[start:stop] @ text_items.T).toarray(), np.float64)
        # The target's own cosine, as if it were new.
        own_text = np.asarray(text_queries[start:stop].multiply(
            text_rows[targets[start:stop]]).sum(axis=1)).ravel()
        excluded = np.zeros((stop - start, num_items), bool)
        excluded[:, 0] = True
        for row, query in enumerate(held.queries[start:stop]):
            excluded[row, query] = True
        for w in grid:
            scores = np.where(excluded, -np.inf, behaviour + w * text)
            target = targets[start:stop]
            own = scores[rows, target]
            before = (scores >= own[:, None]).sum(axis=1) - 1
            hits[w][start:stop] = before < k
            # As new: its behaviour score gone; the others as they are.
            as_new = scores.copy()
            as_new[rows, target] = -np.inf
            before = (as_new >= (w * own_text)[:, None]).sum(axis=1)
            hits_new[w][start:stop] = before < k
    warm = ~new[targets]  # a target without events in the fit is new in both rankings
    figure = {w: (1 - new_share) * hits[w].mean() + new_share * hits_new[w][warm].mean()
              if warm.any() else hits[w].mean() for w in grid}
    chosen = max(grid, key=lambda w: (figure[w], -grid.index(w)))
    return {"parameter": "new_item_weight", "chosen": chosen, "validation_cases": len(held),
            "fit_sessions": int(held.fit.shape[0]), "lambda": lam,
            "new_share": round(float(new_share), 4),
            # The figure the weight is chosen by, then its two parts.
            f"hr@{k}": {str(w): float(figure[w]) for w in grid},
            f"hr@{k} as is": {str(w): float(hits[w].mean()) for w in grid},
            f"hr@{k} as new": {str(w): float(hits_new[w][warm].mean()) if warm.any() else None
                               for w in grid},
            "seconds": round(time.perf_counter() - started, 1)}


def _mean_rows(rows, queries: list):
    """[n, terms] sparse: the mean of each query's rows of `rows`."""
    from scipy import sparse

    q_rows = np.repeat(np.arange(len(queries)), [len(q) for q in queries])
    q_cols = np.concatenate([np.asarray(q, np.int64) for q in queries] + [np.zeros(0, np.int64)])
    weights = np.concatenate([np.full(len(q), 1.0 / len(q)) for q in queries if len(q)]
                             + [np.zeros(0)])
    selector = sparse.csr_matrix((weights, (q_rows, q_cols)), shape=(len(queries), rows.shape[0]))
    return (selector @ rows).tocsr()


def ease_tfidf(sessions, vocab, queries: list, lam: float | None = None,
               weight: float | None = None, k: int = TrainConfig.eval_k,
               seed: int = TrainConfig.seed, lambdas: tuple = EASE_LAMBDAS,
               weights: tuple = NEW_ITEM_WEIGHTS,
               max_items: int = MAX_ITEM_ITEM_CATALOGUE) -> Hybrid:
    """EASE for the items with training events, `weight` x the TF-IDF cosine of the query's
    mean TF-IDF row with the item's for the items without (EASE scores them 0).

    Args:
      lam: EASE's λ; None chooses it as `ease` does (`tune`).
      weight: the TF-IDF part's weight; None chooses it from `weights` on the same
        validation slice (`tune_new_item_weight`).
      Otherwise as `ease`.

    Returns:
      The `Hybrid` scorer; its `tuning` lists the choices it made (λ's when
      `lam` is None, the weight's when `weight` is: as `tune` and
      `tune_new_item_weight` give them; None when both are given).
    """
    from scipy import sparse

    reason = item_item_skip_reason(vocab.size - 1, max_items)
    if reason:
        raise InputError(reason.replace("skipped: ", "ease_tfidf: ", 1))
    started = time.perf_counter()
    baskets = item_item.basket_matrix(sessions, vocab.size)
    text = tfidf(vocab, queries)
    tuning = []
    if lam is None:
        tuning.append(tune(item_item.ease_weights, tuple(lambdas), baskets, k, seed, "lambda"))
        lam = tuning[-1]["chosen"]
    active, gram = item_item.active_gram(baskets)
    new = _inactive(active, vocab.size)
    if weight is None:
        tuning.append(tune_new_item_weight(
            baskets, lam, text.items.astype(np.float64), new.sum() / max(vocab.size - 1, 1),
            k, seed, tuple(weights)))
        weight = tuning[-1]["chosen"]
    items, query_matrix = item_item.item_item_scorer(active, item_item.ease_weights(gram, lam),
                                                     queries, vocab.size)
    text_items = (sparse.diags(np.where(new, float(weight), 0.0)) @ text.items).tocsr()
    return Hybrid(items, query_matrix, text_items.astype(np.float32), text.queries,
                  float(weight), time.perf_counter() - started, tuning or None)
