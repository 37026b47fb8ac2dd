"""The item-item table: each item's strongest co-items and their EASE weights.

Row i of the table holds the (at most `table_size`) items c with the largest
weights B[i, c] of an item-item model fitted on the training baskets, so a
query's score for c is the sum over the query's distinct items i of
B[i, c]. It is held as CSR arrays (`row_splits` [n + 1] int64, `indices`
int32, `weights` float32), the layout `ItemItemScorer` carries in a
SavedModel.

Two estimators of B:

- `ease`: dense EASE (Steck 2019, `tfrec.ranking.item_item.ease_weights`)
  over the active items, each row then cut to its top `table_size`. It
  holds a few a x a float64 matrices and costs ~a³ flops (a: items with
  training events): refused above `EASE_MAX_ITEMS` (the EASE baseline's
  limit).
- `neighbourhood`: EASE restricted to each item's co-occurrence
  neighbourhood. EASE's column j is the ridge regression of item j's
  basket column on every other item's,
  B[:, j] = argmin_b ||X_j - X_{-j} b||² + λ||b||² = (G_{-j,-j} + λI)⁻¹ G_{-j,j},
  with G = XᵀX. Here the regressors are only the `neighbours` items that
  co-occur most often with j (G's largest off-diagonal entries in row j),
  so each column is a small `neighbours` x `neighbours` solve from the
  sparse Gram matrix, and entries outside the neighbourhoods are zero. It
  equals dense EASE when every item's neighbourhood holds every item of
  its connected co-occurrence component (EASE's coefficients outside it
  are zero since G is block-diagonal over the components); items two hops
  apart get a zero weight here and a (usually small) non-zero one in EASE.

`estimator="auto"` is dense EASE where the table holds it whole (M at least
the active items - 1) up to `DENSE_MAX_ITEMS` active items, the neighbourhood
estimator otherwise: cut to M co-items per row, dense EASE ranked below the
neighbourhood table on both real catalogues (bench/RESULTS.md, "The
item-item table"). λ is chosen on a validation slice of
the training baskets (`tfrec.ranking.item_item.validation_slice`, as the
EASE baseline does), never on the test cases.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.linalg import lapack

from tfrec.config import TABLE_ESTIMATORS, RankingConfig, TrainConfig
from tfrec.errors import InputError
from tfrec.ranking import item_item
from tfrec.metrics import hit_rate, ndcg, target_ranks

logger = logging.getLogger(__name__)

ESTIMATORS = TABLE_ESTIMATORS
# "auto" uses dense EASE up to this many active items (when M holds whole rows): a
# fit is ~10 s at 10,000 items on 2 idle cores and ~80 s at 20,000.
DENSE_MAX_ITEMS = 10_000
# "ease" is refused above this many active items (8 GB of float64 matrices at 20,000).
EASE_MAX_ITEMS = 20_000
# The settings' defaults (`ranking.*`), and the validation slice's size (the EASE baseline's).
LAMBDAS = RankingConfig.ease_lambdas
VALIDATION_SHARE, VALIDATION_MAX_CASES = item_item.VALIDATION_SHARE, item_item.VALIDATION_MAX_CASES
TABLE_SIZE = RankingConfig.table_size
NEIGHBOURS = RankingConfig.neighbours
# The neighbourhood estimator's working set: the dense Gram block of one
# group of items (their neighbourhoods' union) holds at most this many
# entries, and a group's stacked systems at most SOLVE_BUDGET.
GRAM_BLOCK_BUDGET = 1 << 20
SOLVE_BUDGET = 1 << 22
# Up to this many Gram entries ((a + 1)²: 16,383 active items, 1 GB float32) the
# Gram matrix is made dense once: dense co-occurrence (long sessions) makes the
# neighbourhoods' unions large and the blocks costly.
DENSE_GRAM_BUDGET = 1 << 28
# Each item's neighbourhood is found in dense row blocks of at most this many
# entries when the Gram matrix is at least DENSE_ROWS_DENSITY full (one
# partition per row instead of sorting every entry).
DENSE_ROWS_BUDGET = 1 << 23
DENSE_ROWS_DENSITY = 0.05


def check_settings(estimator: str = "auto", table_size: int = TABLE_SIZE,
                   neighbours: int = NEIGHBOURS, lam: float | None = None,
                   lambdas: tuple = LAMBDAS) -> None:
    """Raises InputError naming the `ranking.*` key of a setting tfrec cannot use."""
    if estimator not in ESTIMATORS:
        raise InputError(f"unknown item-item estimator {estimator!r}; one of "
                         f"{', '.join(ESTIMATORS)}", key="ranking.estimator")
    if int(table_size) != table_size or table_size < 1:
        raise InputError(f"each item keeps at least 1 co-item, got {table_size}",
                         key="ranking.table_size")
    if int(neighbours) != neighbours or neighbours < 1:
        raise InputError(f"each item's neighbourhood needs at least 1 item, got {neighbours}",
                         key="ranking.neighbours")
    if lam is not None and not lam > 0:
        raise InputError(f"EASE's λ must be > 0, got {lam}", key="ranking.ease_lambda")
    if lam is None and (not len(lambdas) or not all(v > 0 for v in lambdas)):
        raise InputError(f"the λ grid must be values > 0, got {list(lambdas)}",
                         key="ranking.ease_lambdas")


@dataclasses.dataclass
class ItemItemTable:
    """Each item's co-items and weights, as CSR arrays over the catalogue.

    Attributes:
      row_splits: [num_items + 1] int64; item i's co-items are
        indices[row_splits[i]:row_splits[i + 1]], strongest first.
      indices: [num_entries] int32 co-item indices.
      weights: [num_entries] float32 weights B[i, c].
      info: how the table was built (estimator, λ, sizes, the λ choice).
    """

    row_splits: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.row_splits = np.asarray(self.row_splits, np.int64)
        self.indices = np.asarray(self.indices, np.int32)
        self.weights = np.asarray(self.weights, np.float32)
        if (self.row_splits[0] != 0 or self.row_splits[-1] != len(self.indices)
                or len(self.indices) != len(self.weights) or np.any(np.diff(self.row_splits) < 0)):
            raise ValueError("inconsistent CSR arrays: row_splits must start at 0, not "
                             "decrease and end at len(indices) == len(weights)")

    @property
    def num_items(self) -> int:
        """Rows of the table: the catalogue size, OOV index 0 included."""
        return self.row_splits.size - 1

    @property
    def num_entries(self) -> int:
        """(item, co-item) weights held."""
        return self.indices.size

    @classmethod
    def from_dense(cls, weights: np.ndarray, table_size: int | None = None,
                   info: dict | None = None) -> "ItemItemTable":
        """The table of a dense [n, n] weight matrix: each row's non-zero entries (its
        `table_size` largest when given), strongest first, ties to the lower index."""
        weights = np.asarray(weights, np.float32)
        splits, cols, vals = [0], [], []
        for row in weights:
            nonzero = np.flatnonzero(row)
            order = nonzero[np.lexsort((nonzero, -row[nonzero]))][:table_size]
            cols.append(order.astype(np.int32))
            vals.append(row[order])
            splits.append(splits[-1] + len(order))
        return cls(np.asarray(splits, np.int64), np.concatenate(cols + [np.zeros(0, np.int32)]),
                   np.concatenate(vals + [np.zeros(0, np.float32)]), dict(info or {}))

    def row(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """(co-items, weights) of one item, strongest first."""
        lo, hi = self.row_splits[item], self.row_splits[item + 1]
        return self.indices[lo:hi], self.weights[lo:hi]

    def matrix(self) -> sparse.csr_matrix:
        """The table as a [num_items, num_items] float32 CSR matrix W (W[i, c] = B[i, c])."""
        return sparse.csr_matrix((self.weights, self.indices, self.row_splits),
                                 shape=(self.num_items, self.num_items))

    def scores(self, queries: list, candidates: np.ndarray | None = None) -> np.ndarray:
        """Each query's summed weights: [q, num_items], or [q, N] for `candidates` [q, N].

        A query is a list of item indices; its distinct items count once
        each (as `multi_hot`). Sums are float64, returned as float32.
        Candidates < 0 score 0.
        """
        x = item_item.multi_hot(queries, self.num_items)
        if candidates is None:
            return np.asarray((x @ self.matrix().astype(np.float64)).toarray(), np.float32)
        candidates = np.asarray(candidates, np.int64)
        if candidates.shape[0] != len(queries):
            raise ValueError(f"{candidates.shape[0]} candidate rows for {len(queries)} queries")
        out = np.zeros(candidates.shape, np.float32)
        matrix = self.matrix().astype(np.float64)
        for row, query in enumerate(queries):
            dense = np.asarray((x[row] @ matrix).toarray()).ravel()
            ok = candidates[row] >= 0
            out[row, ok] = dense[candidates[row, ok]]
        return out

    def top_items(self, query: list, n: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """(items [<= n], scores) with the largest summed weights for one query.

        Only items some query item reaches (a table entry) are listed; the
        query's own items, `exclude` and index 0 are left out. Ties go to
        the lower index.
        """
        reached = {}
        for item in set(int(i) for i in query):
            cols, vals = self.row(item)
            for c, v in zip(cols.tolist(), vals.astype(np.float64).tolist()):
                reached[c] = reached.get(c, 0.0) + v
        drop = set(int(i) for i in query) | {0} | set(
            int(i) for i in (() if exclude is None else np.ravel(list(exclude))))
        items = np.array(sorted(c for c in reached if c not in drop), np.int64)
        if not len(items):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        totals = np.array([reached[c] for c in items], np.float32)
        order = np.lexsort((items, -totals))[:n]
        return items[order], totals[order]

    def save(self, path: str | Path) -> None:
        """Writes the arrays and `info` to one .npz file at `path` exactly (numpy would add
        .npz to a path without it; `load` reads the same path back)."""
        with open(path, "wb") as f:
            np.savez(f, row_splits=self.row_splits, indices=self.indices,
                     weights=self.weights, info=np.array(json.dumps(self.info)))

    @classmethod
    def load(cls, path: str | Path) -> "ItemItemTable":
        """The table `save` wrote at `path` (a path numpy gave .npz is found too)."""
        path = Path(path)
        if not path.exists() and path.with_name(path.name + ".npz").exists():
            path = path.with_name(path.name + ".npz")
        with np.load(path, allow_pickle=False) as data:
            return cls(data["row_splits"], data["indices"], data["weights"],
                       json.loads(str(data["info"])))


# -- estimators: item-item weights as (rows, cols, values) over the active items -----------

def sparse_gram(baskets: sparse.csr_matrix) -> sparse.csr_matrix:
    """XᵀX [a, a] float32 CSR (sorted indices) over the baskets' columns; exact counts
    up to 2^24 sessions per pair."""
    x = baskets.astype(np.float32)
    gram = (x.T.tocsr() @ x).tocsr()
    gram.sort_indices()
    return gram


def neighbourhoods(gram: sparse.csr_matrix, neighbours: int,
                   block_rows: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Each item's `neighbours` strongest co-items: CSR (splits [a + 1], items int32).

    The co-items of j are the k != j with G[j, k] > 0, strongest first
    (ties: the lower index first). Rows are sorted `block_rows` at a time;
    a Gram matrix at least `DENSE_ROWS_DENSITY` full is read in dense row
    blocks instead (`_dense_neighbourhoods`, the same result).
    """
    a = gram.shape[0]
    if a and gram.nnz >= DENSE_ROWS_DENSITY * a * a and a <= DENSE_ROWS_BUDGET:
        return _dense_neighbourhoods(gram, neighbours, max(1, DENSE_ROWS_BUDGET // a))
    sizes, parts = np.zeros(a, np.int64), []
    for lo in range(0, a, block_rows):
        block = gram[lo:lo + block_rows]
        rows = np.repeat(np.arange(block.shape[0], dtype=np.int64), np.diff(block.indptr))
        cols = block.indices
        off = (rows + lo != cols) & (block.data > 0)
        rows, cols, vals = rows[off], cols[off], block.data[off]
        order = np.lexsort((cols, -vals, rows))
        rows, cols = rows[order], cols[order]
        starts = np.searchsorted(rows, np.arange(block.shape[0] + 1))
        keep = np.arange(len(rows)) - starts[rows] < neighbours
        sizes[lo:lo + block.shape[0]] = np.bincount(rows[keep], minlength=block.shape[0])
        parts.append(cols[keep].astype(np.int32))
    splits = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return splits, np.concatenate(parts + [np.zeros(0, np.int32)])


def _dense_neighbourhoods(gram: sparse.csr_matrix, neighbours: int,
                          block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """`neighbourhoods` of a dense-ish Gram matrix, `block_rows` dense rows at a time.

    Each row's `neighbours`-th largest value is found by a partition; the
    co-items above it are kept, and of those equal to it the lowest indices
    fill the rest: the same sets (and, sorted, the same order) as sorting
    every entry, at a fraction of the cost when rows hold thousands of entries.
    """
    a = gram.shape[0]
    sizes, parts = np.zeros(a, np.int64), []
    for lo in range(0, a, block_rows):
        dense = gram[lo:lo + block_rows].toarray()
        r = dense.shape[0]
        dense[np.arange(r), lo + np.arange(r)] = 0.0  # an item is not its own co-item
        valid = dense > 0
        if neighbours < a:
            ranked = np.where(valid, dense, -1.0)
            kth = -np.partition(-ranked, neighbours - 1, axis=1)[:, neighbours - 1]
            above = valid & (dense > kth[:, None])
            tied = valid & (dense == kth[:, None])
            room = neighbours - above.sum(axis=1)
            keep = above | tied
            # Rows with more ties than room keep their lowest-index ones.
            cut = np.flatnonzero(tied.sum(axis=1) > room)
            if len(cut):
                ties = tied[cut]
                keep[cut] = above[cut] | (ties & (np.cumsum(ties, axis=1, dtype=np.int32)
                                                  <= room[cut, None]))
        else:
            keep = valid
        rows, cols = np.nonzero(keep)
        order = np.lexsort((cols, -dense[rows, cols], rows))
        sizes[lo:lo + r] = np.bincount(rows, minlength=r)
        parts.append(cols[order].astype(np.int32))
    splits = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return splits, np.concatenate(parts + [np.zeros(0, np.int32)])


class NeighbourhoodPlan:
    """What the neighbourhood estimator computes before λ enters: each item's
    neighbourhood, the order its systems are solved in, and (a small catalogue)
    the dense Gram matrix. A λ grid builds it once (`table_from_baskets`'s
    `cache`) and solves it at each λ (`neighbourhood_weights`).

    Args:
      gram: XᵀX [a, a] CSR over the active items (`sparse_gram`).
      neighbours: regressors per item.
      dense_budget: up to this many entries, the Gram matrix is made dense
        once (float32; counts are exact) instead of a block per group.
    """

    def __init__(self, gram: sparse.csr_matrix, neighbours: int,
                 dense_budget: int = DENSE_GRAM_BUDGET):
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        a = gram.shape[0]
        self.gram = gram
        self.neighbours = int(neighbours)
        self.splits, self.members = neighbourhoods(gram, neighbours)
        sizes = np.diff(self.splits)
        order_position = np.empty(a, np.int64)
        order_position[reverse_cuthill_mckee(gram, symmetric_mode=True)] = np.arange(a)
        # padded sizes: steps of a quarter of the size's power of 2 (at least 8), so at
        # most ~25% padding per side (a system costs ~size³)
        step = np.maximum(8, 2 ** np.maximum(np.floor(np.log2(np.maximum(sizes, 1))) - 2, 0))
        padded = np.minimum((np.ceil(sizes / step) * step).astype(np.int64), neighbours)
        todo = np.flatnonzero(sizes > 0)
        self.todo = todo[np.lexsort((order_position[todo], padded[todo]))]
        self.widths = padded[self.todo]
        self.whole = None
        if (a + 1) ** 2 <= dense_budget:
            # a small catalogue: one dense Gram matrix (float32, a zero last row and
            # column for the padding) instead of a block per group
            self.whole = np.zeros((a + 1, a + 1), np.float32)
            self.whole[np.repeat(np.arange(a), np.diff(gram.indptr)), gram.indices] = gram.data


def neighbourhood_weights(gram: sparse.csr_matrix | None, lam: float, neighbours: int,
                          gram_budget: int = GRAM_BLOCK_BUDGET,
                          solve_budget: int = SOLVE_BUDGET,
                          dense_budget: int = DENSE_GRAM_BUDGET,
                          plan: NeighbourhoodPlan | None = None) -> tuple:
    """EASE restricted to each item's co-occurrence neighbourhood (see the module doc).

    Items are solved in groups of equal padded neighbourhood size (rounded
    up by at most ~25%, capped at `neighbours`), each group in a reverse Cuthill-McKee
    order of the co-occurrence graph, so consecutive items share most of
    their neighbourhoods: a group's Gram block (the dense G over the union
    of its neighbourhoods) stays small, its systems are gathered from it in
    one stacked (padded) array, and each is solved at its own size by a
    float64 Cholesky solve. Up to `dense_budget` entries the Gram matrix is
    made dense once instead (float32; counts are exact).

    Args:
      gram: XᵀX [a, a] CSR over the active items; may be None with `plan`.
      plan: the `NeighbourhoodPlan` of `gram` and `neighbours`, if made already
        (then `gram` and `dense_budget` are read from it).

    Returns:
      (rows, cols, values): B[rows, cols] = values (active-item positions;
      rows are the regressors i, cols the item j whose column it is).
    """
    if plan is None:
        plan = NeighbourhoodPlan(gram, neighbours, dense_budget)
    elif plan.neighbours != int(neighbours):
        raise ValueError(f"a plan of {plan.neighbours} neighbours asked for {neighbours}")
    gram, splits, members = plan.gram, plan.splits, plan.members
    todo, widths, whole = plan.todo, plan.widths, plan.whole
    a = gram.shape[0]
    position = np.full(a + 1, -1, np.int64)  # item -> its slot in the current Gram block
    out_rows, out_cols, out_vals = [], [], []
    start, last = 0, len(todo)
    while start < len(todo):
        width = int(widths[start])
        same = int(np.searchsorted(widths, width, side="right"))
        batch = max(1, solve_budget // (width * width))
        # start from twice the last group's size (neighbouring groups are alike)
        stop = min(same, start + (batch if whole is not None else min(batch, 2 * last)))
        while whole is None:  # shrink the group until its Gram block fits the budget
            group = todo[start:stop]
            union = np.unique(np.concatenate([group, _gather_rows(splits, members, group)]))
            if len(union) ** 2 <= gram_budget or stop - start == 1:
                break
            stop = start + max(1, (stop - start) // 2)
        group = todo[start:stop]
        last = stop - start
        out = _solve_group(gram, group, None if whole is not None else union, splits, members,
                           width, lam, position, whole)
        out_rows.append(out[0])
        out_cols.append(out[1])
        out_vals.append(out[2])
        start = stop
    if not out_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(out_rows), np.concatenate(out_cols), np.concatenate(out_vals)


def _gather_rows(splits: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The CSR rows `rows` of (splits, values), concatenated."""
    lengths = splits[rows + 1] - splits[rows]
    total = int(lengths.sum())
    offsets = np.repeat(splits[rows] - (np.cumsum(lengths) - lengths), lengths)
    return values[offsets + np.arange(total)]


def _solve_group(gram, group, union, splits, members, width, lam, position, whole=None):
    sizes = splits[group + 1] - splits[group]
    real = np.arange(width)[None, :] < sizes[:, None]
    flat = _gather_rows(splits, members, group)
    if whole is not None:  # the whole Gram matrix, padding slot a
        dense, target_slots = whole, group
        idx = np.full((len(group), width), len(whole) - 1, np.int64)
        idx[real] = flat
    else:
        u = len(union)
        position[union] = np.arange(u)
        block_rows = gram[union]
        slots = position[block_rows.indices]
        row_of = np.repeat(np.arange(u), np.diff(block_rows.indptr))
        inside = slots >= 0
        dense = np.zeros((u + 1, u + 1), np.float32)  # slot u: the padding's zero row/column
        dense[row_of[inside], slots[inside]] = block_rows.data[inside]
        idx = np.full((len(group), width), u, np.int64)
        idx[real] = position[flat]
        position[union] = -1
        target_slots = np.searchsorted(union, group)
    systems = dense[idx[:, :, None], idx[:, None, :]].astype(np.float64)
    diag = np.arange(width)
    systems[:, diag, diag] += np.where(real, lam, 1.0)
    rhs = dense[idx, target_slots[:, None]].astype(np.float64)
    # One LAPACK Cholesky solve (dposv) per item at its own size: a batched
    # np.linalg.solve pads every system and, under a multithreaded BLAS,
    # spends more time synchronising threads than solving such small systems.
    coefficients = np.zeros((len(group), width))
    for row, size in enumerate(sizes.tolist()):
        _, solution, info = lapack.dposv(systems[row, :size, :size], rhs[row, :size],
                                         overwrite_a=1, overwrite_b=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"neighbourhood EASE: Cholesky solve failed (info {info})")
        coefficients[row, :size] = solution
    cols = np.repeat(group, sizes)
    return flat, cols, coefficients[real].astype(np.float32)


def dense_weights(gram: np.ndarray, lam: float, keep: int | None = None,
                  block_rows: int = 1024) -> tuple:
    """Dense EASE over the active items as (rows, cols, values) of its non-zero entries;
    with `keep`, only (at least) each row's `keep` largest (a row block at a time, so
    the entries never hold all a² weights)."""
    weights = item_item.ease_weights(gram, lam)
    rows, cols, values = [], [], []
    for lo in range(0, len(weights), block_rows):
        block = weights[lo:lo + block_rows]
        if keep is not None and keep < block.shape[1]:
            # the keep + 1 largest, so that a tie at the cut is still settled by index
            # in `table_from_entries` when it is between two of them
            top = np.argpartition(-block, keep, axis=1)[:, :keep + 1]
            local = np.repeat(np.arange(len(block)), top.shape[1])
            col = top.ravel()
        else:
            local, col = np.nonzero(block)
        val = block[local, col]
        nonzero = val != 0
        rows.append(local[nonzero] + lo)
        cols.append(col[nonzero])
        values.append(val[nonzero])
    del weights
    empty = [np.zeros(0, np.int64)]
    return (np.concatenate(rows + empty), np.concatenate(cols + empty),
            np.concatenate(values + [np.zeros(0, np.float32)]))


# -- the table ------------------------------------------------------------------------------

def table_from_entries(rows, cols, values, active: np.ndarray, num_items: int,
                       table_size: int, info: dict | None = None,
                       block_rows: int = 65_536) -> ItemItemTable:
    """The table of entries B[rows, cols] = values (active-item positions), each row
    cut to its `table_size` largest weights (ties: the lower item index), `block_rows`
    rows at a time."""
    keep = values != 0
    active = np.asarray(active, np.int64)
    matrix = sparse.csr_matrix((np.asarray(values, np.float32)[keep],
                                (np.asarray(rows)[keep], np.asarray(cols)[keep])),
                               shape=(len(active), len(active)))
    del keep
    matrix.sum_duplicates()
    sizes = np.zeros(num_items, np.int64)
    col_parts, value_parts = [], []
    for lo in range(0, len(active), block_rows):
        block = matrix[lo:lo + block_rows]
        local = np.repeat(np.arange(block.shape[0], dtype=np.int64), np.diff(block.indptr))
        item_cols = active[block.indices]
        order = np.lexsort((item_cols, -block.data, local))
        local, item_cols, vals = local[order], item_cols[order], block.data[order]
        starts = np.searchsorted(local, np.arange(block.shape[0] + 1))
        keep = np.arange(len(local)) - starts[local] < table_size
        sizes[active[lo:lo + block.shape[0]]] = np.bincount(local[keep],
                                                            minlength=block.shape[0])
        col_parts.append(item_cols[keep].astype(np.int32))
        value_parts.append(vals[keep].astype(np.float32))
    splits = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    # blocks run over active items in increasing order, so the rows come out in order
    return ItemItemTable(splits, np.concatenate(col_parts + [np.zeros(0, np.int32)]),
                         np.concatenate(value_parts + [np.zeros(0, np.float32)]),
                         dict(info or {}))


def resolve_estimator(estimator: str, active_items: int, table_size: int = TABLE_SIZE,
                      dense_max_items: int = DENSE_MAX_ITEMS) -> str:
    """"auto": dense EASE where the table holds it whole (every row's co-items:
    table_size >= active_items - 1) and it is cheap (<= dense_max_items active items);
    else the neighbourhood estimator. Dense EASE cut to M co-items per row ranked below
    the neighbourhood table on both real catalogues (bench/RESULTS.md)."""
    if estimator != "auto":
        return estimator
    whole = table_size >= active_items - 1
    return "ease" if whole and active_items <= dense_max_items else "neighbourhood"


def table_from_baskets(baskets: sparse.csr_matrix, lam: float, estimator: str = "auto",
                       table_size: int = TABLE_SIZE, neighbours: int = NEIGHBOURS,
                       dense_max_items: int = DENSE_MAX_ITEMS,
                       cache: dict | None = None) -> ItemItemTable:
    """The table of a baskets x items binary matrix with a given λ (no choice).

    Args:
      cache: a dict shared by calls over the same `baskets` and settings at
        several λ (a grid search): what does not depend on λ (the active
        items, the Gram matrix, the neighbourhoods and their solve order) is
        computed by the first call and read back by the others. Other
        baskets or settings empty it first.
    """
    check_settings(estimator, table_size, neighbours, lam)
    started = time.perf_counter()
    num_items = baskets.shape[1]
    cache = {} if cache is None else cache
    key = (id(baskets), baskets.shape, baskets.nnz, estimator, table_size, neighbours,
           dense_max_items)
    if cache.get("key") != key:
        cache.clear()
        active = np.flatnonzero(np.bincount(baskets.indices, minlength=num_items) > 0)
        active = active[active > 0]
        chosen = resolve_estimator(estimator, len(active), table_size, dense_max_items)
        if chosen == "ease" and len(active) > EASE_MAX_ITEMS:
            raise InputError(f"dense EASE over {len(active):,} items with training events is "
                             f"above its {EASE_MAX_ITEMS:,}-item limit: use the neighbourhood "
                             "estimator", key="ranking.estimator")
        x = baskets[:, active]
        if chosen == "ease":
            prepared = np.asarray((x.T @ x).toarray(), np.float64)
        else:
            prepared = NeighbourhoodPlan(sparse_gram(x), neighbours)
        cache.update(key=key, active=active, estimator=chosen, prepared=prepared)
    active, chosen, prepared = cache["active"], cache["estimator"], cache["prepared"]
    if chosen == "ease":
        entries = dense_weights(prepared, lam, table_size)
    else:
        entries = neighbourhood_weights(None, lam, neighbours, plan=prepared)
    info = {"estimator": chosen, "lambda": lam, "table_size": int(table_size),
            "active_items": int(len(active))}
    if chosen == "neighbourhood":
        info["neighbours"] = int(neighbours)
    table = table_from_entries(*entries, active, num_items, table_size, info)
    table.info["seconds"] = round(time.perf_counter() - started, 2)
    return table


def choose_lambda(baskets: sparse.csr_matrix, estimator: str = "auto",
                  table_size: int = TABLE_SIZE, neighbours: int = NEIGHBOURS,
                  lambdas: tuple = LAMBDAS, k: int = TrainConfig.eval_k,
                  seed: int = TrainConfig.seed,
                  dense_max_items: int = DENSE_MAX_ITEMS) -> dict:
    """Chooses λ by the table's HR@k on a validation slice of the training baskets.

    The slice is `item_item.validation_slice` (the EASE baseline's): a
    seeded share of the baskets with >= 2 items, one item of each hidden,
    the rest the query, those baskets left out of the fit. Ties in HR@k go
    to the better NDCG@k, then to the first value of the grid.

    Returns:
      {"parameter", "chosen", "validation_cases", "fit_sessions",
      "hr@k": {λ: HR}, "ndcg@k": {λ: NDCG}, "seconds"}.
    """
    check_settings(estimator, table_size, neighbours, None, lambdas)
    started = time.perf_counter()
    num_items = baskets.shape[1]
    held = item_item.validation_slice(baskets, VALIDATION_SHARE, VALIDATION_MAX_CASES, seed)
    if not len(held):
        raise InputError("no training session has two distinct items: no validation cases "
                         "to choose the item-item table's λ on", key="ranking.ease_lambdas")
    valid = np.ones(num_items, dtype=bool)
    valid[0] = False
    queries = item_item.multi_hot(held.queries, num_items)
    hr, nd = {}, {}
    prepared = {}  # what does not depend on λ, made by the first fit
    for lam in lambdas:
        t0 = time.perf_counter()
        table = table_from_baskets(held.fit, lam, estimator, table_size, neighbours,
                                   dense_max_items, cache=prepared)
        ranks = target_ranks(queries, table.matrix().T.tocsr(), held.targets, held.queries,
                             valid)
        hr[lam], nd[lam] = hit_rate(ranks, k), ndcg(ranks, k)
        logger.info("  item-item table λ %s: validation HR@%d %.4f, NDCG@%d %.4f (%.1f s)",
                    lam, k, hr[lam], k, nd[lam], time.perf_counter() - t0)
    chosen = max(lambdas, key=lambda v: (hr[v], nd[v], -lambdas.index(v)))
    return {"parameter": "lambda", "chosen": chosen, "validation_cases": len(held),
            "fit_sessions": int(held.fit.shape[0]),
            f"hr@{k}": {str(v): hr[v] for v in lambdas},
            f"ndcg@{k}": {str(v): nd[v] for v in lambdas},
            "seconds": round(time.perf_counter() - started, 1)}


def build_item_table(sessions, num_items: int, estimator: str = RankingConfig.estimator,
                     table_size: int = TABLE_SIZE, neighbours: int = NEIGHBOURS,
                     lam: float | None = None, lambdas: tuple = LAMBDAS,
                     k: int = TrainConfig.eval_k, seed: int = TrainConfig.seed,
                     dense_max_items: int = DENSE_MAX_ITEMS) -> ItemItemTable:
    """The item-item table of the training sessions.

    Args:
      sessions: the training `tfrec.data.sessions.Sessions` (a basket per
        session: its distinct items).
      num_items: the catalogue size (the vocabulary's, OOV index 0 included;
        index 0 and items without events get empty rows).
      estimator: "ease" (dense), "neighbourhood" or "auto" (`resolve_estimator`).
      table_size: co-items kept per item (`ranking.table_size`).
      neighbours: regressors per item of the neighbourhood estimator
        (`ranking.neighbours`).
      lam: EASE's λ (`ranking.ease_lambda`); None chooses it from `lambdas`
        (`ranking.ease_lambdas`) by HR@k on a validation slice of the sessions
        (`choose_lambda`), then refits on every session.
      seed: the validation slice's draw.

    Returns:
      the table; `info["tuning"]` holds the λ choice when it was made here.
    """
    check_settings(estimator, table_size, neighbours, lam, lambdas)
    baskets = item_item.basket_matrix(sessions, num_items)
    tuning = None
    if lam is None:
        tuning = choose_lambda(baskets, estimator, table_size, neighbours, tuple(lambdas), k,
                               seed, dense_max_items)
        lam = tuning["chosen"]
    table = table_from_baskets(baskets, lam, estimator, table_size, neighbours, dense_max_items)
    if tuning is not None:
        table.info["tuning"] = tuning
    return table
