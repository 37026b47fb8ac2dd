"""Item-item weight matrices from a baskets x items binary matrix.

The closed forms behind the `ease` and `itemknn` baselines, and the
validation slice their setting is chosen on. Everything here works on the
*active* items, the columns with at least one training event: an item
without events has an all-zero column, so its weights are zero (EASE's
Gram matrix is block-diagonal with λ on an inactive item's diagonal), and
leaving it out of the n x n algebra gives the same result for less time
and memory.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import sparse
from scipy.linalg import lapack


def basket_matrix(sessions, num_items: int) -> sparse.csr_matrix:
    """[num_sessions, num_items] float64 binary: the distinct items of each session.

    Args:
      sessions: a `tfrec.data.sessions.Sessions` (its items and row_splits).
      num_items: the catalogue size (the vocabulary's, OOV index 0 included);
        index 0 is dropped.
    """
    rows = sessions.session_ids()
    cols = np.asarray(sessions.items, dtype=np.int64)
    keep = cols > 0
    return binary_rows(rows[keep], cols[keep], sessions.num_sessions, num_items)


def multi_hot(queries: list, num_items: int) -> sparse.csr_matrix:
    """[len(queries), num_items] float64 binary: each query's distinct items."""
    rows = np.repeat(np.arange(len(queries), dtype=np.int64), [len(q) for q in queries])
    cols = np.concatenate([np.asarray(q, np.int64) for q in queries] + [np.zeros(0, np.int64)])
    return binary_rows(rows, cols, len(queries), num_items)


def binary_rows(rows: np.ndarray, cols: np.ndarray, num_rows: int,
                num_cols: int) -> sparse.csr_matrix:
    matrix = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(num_rows, num_cols))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def active_gram(baskets: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(active item indices [a], dense float64 XᵀX [a, a] over those items)."""
    active = np.flatnonzero(np.asarray(baskets.sum(axis=0)).ravel() > 0)
    x = baskets[:, active]
    return active, np.asarray((x.T @ x).toarray(), dtype=np.float64)


def ease_weights(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE (Steck 2019): B = I - P diag(1/diag P), P = (G + λI)⁻¹, G = XᵀX.

    That is B_ij = -P_ij / P_jj off the diagonal, and diag(B) = 0. The
    inverse goes through a Cholesky factor (LAPACK potrf + potri, float64):
    G is symmetric positive definite for λ > 0, and this is 3x faster than
    a general inverse.

    Args:
      gram: [a, a] float64 XᵀX over the active items (`active_gram`); not
        modified.

    Returns:
      B [a, a] float32; a query's scores over the active items are x_query @ B.
    """
    if lam <= 0:
        raise ValueError(f"EASE needs λ > 0, got {lam}")
    if not len(gram):
        return np.zeros((0, 0), np.float32)
    # One copy in Fortran order, which LAPACK then works on in place (G, its
    # factor U and P share it).
    regularised = np.array(gram, dtype=np.float64, order="F")
    regularised[np.diag_indices_from(regularised)] += lam
    factor, info = lapack.dpotrf(regularised, lower=0, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: Cholesky factorisation failed (info {info})")
    precision, info = lapack.dpotri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: inverse from the Cholesky factor failed (info {info})")
    for row in range(1, len(precision)):  # potri fills the upper triangle only
        precision[row, :row] = precision[:row, row]
    precision /= -np.diag(precision).copy()[None, :]
    np.fill_diagonal(precision, 0.0)
    return precision.astype(np.float32)


def cosine_weights(gram: np.ndarray, neighbours: int = 0) -> np.ndarray:
    """Cosine ItemKNN: S_ij = C_ij / sqrt(C_ii C_jj), C = XᵀX.

    The diagonal is zero. With `neighbours` > 0 each row i keeps only its
    `neighbours` largest entries (item i's nearest neighbours: the items a
    query holding i can vote for); 0 keeps every one.

    Args:
      gram: [a, a] float64 XᵀX over the active items (`active_gram`); not
        modified.

    Returns:
      S [a, a] float32; a query's scores over the active items are x_query @ S.
    """
    norms = np.sqrt(np.diag(gram))
    similarity = gram / norms[:, None]
    similarity /= norms[None, :]
    np.fill_diagonal(similarity, 0.0)
    if 0 < neighbours < len(similarity):
        for start in range(0, len(similarity), 1024):  # row blocks bound argpartition's memory
            block = similarity[start:start + 1024]
            drop = np.argpartition(-block, neighbours, axis=1)[:, neighbours:]
            np.put_along_axis(block, drop, 0.0, axis=1)
    return similarity.astype(np.float32)


def item_item_scorer(active: np.ndarray, weights: np.ndarray, queries: list,
                     num_items: int) -> tuple[np.ndarray, sparse.csr_matrix]:
    """(items [num_items, a], queries [len(queries), a]) whose dot products are x_query @ W.

    Item j's row is column j of W (zeros for an inactive item: it scores 0);
    a query is its multi-hot over the active items.
    """
    items = np.zeros((num_items, len(active)), np.float32)
    items[active] = weights.T
    return items, multi_hot(queries, num_items)[:, active].astype(np.float32)


@dataclasses.dataclass
class ValidationSlice:
    """Training sessions held out to choose a setting: fit on `fit`, rank `targets`."""

    fit: sparse.csr_matrix
    queries: list
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


# The validation slice item-item settings (λ, neighbours) are chosen on: this share of the
# training sessions with >= 2 items, at most this many.
VALIDATION_SHARE = 0.1
VALIDATION_MAX_CASES = 5_000


def validation_slice(baskets: sparse.csr_matrix, share: float, max_cases: int,
                     seed: int) -> ValidationSlice:
    """Holds out a seeded `share` (at most `max_cases`) of the baskets with >= 2 items.

    Each held-out basket hides one of its items (seeded): the target; the
    rest is the query, as in the test cases. The held-out baskets are left
    out of `fit` entirely.
    """
    lengths = np.diff(baskets.indptr)
    eligible = np.flatnonzero(lengths >= 2)
    rng = np.random.default_rng(seed)
    count = min(max_cases, max(1, int(round(share * len(eligible))))) if len(eligible) else 0
    held = np.sort(rng.choice(eligible, size=count, replace=False)) if count else eligible[:0]
    return hold_out(baskets, held, rng)


def hold_out(baskets: sparse.csr_matrix, held: np.ndarray,
             rng: np.random.Generator) -> ValidationSlice:
    """The baskets of rows `held` as cases (one item of each hidden, drawn with `rng`: the
    target; the rest: the query), the other rows to fit on."""
    queries, targets = [], []
    for row in held:
        items = baskets.indices[baskets.indptr[row]:baskets.indptr[row + 1]].tolist()
        hidden = int(rng.integers(len(items)))
        targets.append(items[hidden])
        queries.append(items[:hidden] + items[hidden + 1:])
    keep = np.ones(baskets.shape[0], dtype=bool)
    keep[held] = False
    return ValidationSlice(baskets[keep], queries, np.asarray(targets, dtype=np.int64))
