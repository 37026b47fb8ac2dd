"""Candidates from both sources and the ranker's features per (query, candidate).

Candidates: the two-tower's top items (exact dot products here; the ScaNN
index when serving) and the item-item table's top items for the query,
merged in proportion (`table_share` of the slots to the table), duplicates
and the query's own items left out, so that every prefix of the merged list
is itself a candidate list of that width. The table never proposes an item
without behaviour, so the first `new_slots` such items of the two-tower's
list move to the front of its list before the merge: a new item then
competes for a slot with the two-tower's best items, not with its 100th.
After the merged N, `text_slots` more: the items without behaviour whose
TF-IDF rows best match the query items' (`text_picks`), none listed already.

Features (`FEATURES`, in groups `FEATURE_GROUPS` for the ablations):

- two_tower: the two-tower score of the candidate, and log(1 + its place
  in the two-tower's list) (the list's width when the table brought it).
- item_item: the table's score (the sum over the query's distinct items
  of their weight on the candidate, 0 where an item's row does not hold
  it), the largest single weight, log(1 + its place in the table's list).
  The table is the sparse `ItemItemTable` (each item's M strongest
  co-items), read the same way by numpy and by `ItemItemScorer`, so
  nothing of size V x V is held.
- behaviour: log(1 + training events) of the candidate and a has-behaviour
  flag (0 for an item without training events).
- text: cosine of the candidate's text-only embedding (the item encoder
  with ids hidden) with the query items' (mean, max).
- tfidf: TF-IDF cosine of the candidate's text with the query items' (mean,
  max): the lexical overlap that makes TF-IDF strong on new items (each
  item's strongest terms, `tfrec.ranking.lexical.LexicalTable`).
- item2vec: cosine of skip-gram item vectors (mean, max).
- query: log(1 + query length).

`candidate_features` computes them in numpy for the study and the ranker's
training; `CandidateFeatures` is the TensorFlow twin that computes the same
values from the exported tensors at serving time (tests check they agree).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfrec.ranking.item_item import multi_hot
from tfrec.ranking.item_scorer import ItemItemScorer
from tfrec.ranking.item_table import ItemItemTable
from tfrec.ranking.lexical import LexicalTable, tf_similarity

FEATURE_GROUPS = {
    "two_tower": ("tt_score", "tt_rank"),
    "item_item": ("ii_score", "ii_max", "ii_rank"),
    "behaviour": ("log_count", "has_behaviour"),
    "text": ("text_mean", "text_max"),
    "tfidf": ("tfidf_mean", "tfidf_max"),
    "item2vec": ("i2v_mean", "i2v_max"),
    "query": ("query_length",),
}
FEATURES = tuple(name for names in FEATURE_GROUPS.values() for name in names)
# Candidate lists in numpy are made in chunks of rows whose dense [rows, V] two-tower
# scores hold at most this many values (64 MB of float32).
CANDIDATE_CHUNK_ELEMENTS = 1 << 24
# The pairwise tables whose mean and max over the query's items are features.
SIMILARITIES = ("text", "tfidf", "i2v")


@dataclasses.dataclass
class Tables:
    """What the features are computed from (one catalogue index space).

    Attributes:
      item_embeddings: [V, d] the two-tower's item embeddings.
      table: the `ItemItemTable` (row i: item i's M strongest co-items and
        their weights; V rows).
      counts: [V] training events per item.
      text: [V, t] L2-normalised text-only item embeddings.
      tfidf: the `LexicalTable` (each item's strongest TF-IDF terms).
      i2v: [V, s] L2-normalised skip-gram item vectors (zeros: none).
      grams: optional precomputed [V, V] similarities by name ("text",
        "tfidf", "i2v"), used by `candidate_features` in place of the
        vectors' products (the same values).
    """

    item_embeddings: np.ndarray
    table: ItemItemTable
    counts: np.ndarray
    text: np.ndarray
    tfidf: LexicalTable
    i2v: np.ndarray
    grams: dict = dataclasses.field(default_factory=dict)


def merge_candidates(two_tower: np.ndarray, table: np.ndarray, query: list, width: int,
                     table_share: float, new: np.ndarray | None = None,
                     new_slots: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One query's candidate list from the two sources' ranked lists.

    Args:
      two_tower: item indices, the two-tower's order (best first).
      table: item indices, the table's order (best first; items it scores 0
        left out by the caller).
      query: the query's own items (never candidates).
      width: N, the list's width.
      table_share: the share of the slots taken from the table's list.
      new: [V] bool, the items without behaviour (with `new_slots`).
      new_slots: the first this many items without behaviour in the
        two-tower's list move to its front before the merge: the table never
        proposes them, and the two-tower's slots go to its best items first.

    Returns:
      (candidates [<= width], their place in the two-tower list, their place
      in the table's list; a place is the list's length where the item is
      not in that list; the two-tower's places are those of its own order).
    """
    ranked = np.asarray(two_tower, np.int64)
    if new_slots > 0 and new is not None:
        first = ranked[np.asarray(new)[ranked]][:new_slots]
        two_tower = np.concatenate([first, ranked[~np.isin(ranked, first)]])
    # The j-th item of a source has the key (j + 1) / share: merging by key
    # takes the sources in proportion, and any prefix keeps the proportion.
    keys, items = [], []
    for source, share in ((table, table_share), (two_tower, 1.0 - table_share)):
        if share > 0:
            keys.append((np.arange(len(source)) + 1.0) / share)
            items.append(np.asarray(source, np.int64))
    keys = np.concatenate(keys) if keys else np.zeros(0)
    items = np.concatenate(items) if items else np.zeros(0, np.int64)
    order = np.argsort(keys, kind="stable")
    merged = items[order]
    _, first = np.unique(merged, return_index=True)
    merged = merged[np.sort(first)]
    merged = merged[~np.isin(merged, np.asarray(query, np.int64)) & (merged > 0)][:width]
    tt_place = _places(merged, ranked)
    table_place = _places(merged, table)
    return merged, tt_place, table_place


def _places(items: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    ranked = np.asarray(ranked, np.int64)
    place = {int(item): p for p, item in enumerate(ranked)}
    return np.asarray([place.get(int(i), len(ranked)) for i in items], np.float32)


def candidates(query_embeddings: np.ndarray, tables: Tables, queries: list, width: int,
               table_share: float, depth: int | None = None, new_slots: int = 0,
               text_slots: int = 0, unavailable=()):
    """Every query's candidate list (see `merge_candidates`), padded to `width`, then
    up to `text_slots` items without behaviour found by their text (`text_picks`).

    Args:
      depth: how far down each source's list is read (default `width`).
      new_slots: how many of the two-tower's items without behaviour (no
        training events in `tables.counts`) move to the front of its list.
      text_slots: m, the slots after the first `width` for the items without
        behaviour whose text best matches the query's.
      unavailable: items never picked by their text (a catalogue's dropped items).

    Returns:
      (candidates [n, width + m] int64 (0 = padding), mask [n, width + m] bool,
      tt_place [n, width + m], table_place [n, width + m]).
    """
    depth = depth or width
    n = len(queries)
    table = tables.table.matrix().astype(np.float64)
    new = np.asarray(tables.counts) == 0
    new[0] = False
    total = width + text_slots
    out = np.zeros((n, total), np.int64)
    mask = np.zeros((n, total), bool)
    tt_place = np.zeros((n, total), np.float32)
    table_place = np.zeros((n, total), np.float32)
    pickable = new.copy()
    pickable[np.asarray(unavailable, np.int64)] = False
    # A chunk's two-tower scores are a dense [rows, V] array: its rows shrink as the
    # catalogue grows (512 up to 32,768 items, 16 at 1M). The table's scores stay sparse.
    step = int(np.clip(CANDIDATE_CHUNK_ELEMENTS // max(len(tables.counts), 1), 1, 512))
    for start in range(0, n, step):
        stop = min(start + step, n)
        tt_scores = query_embeddings[start:stop] @ tables.item_embeddings.T
        tt_scores[:, 0] = -np.inf
        for row, query in enumerate(queries[start:stop]):
            tt_scores[row, np.asarray(query, np.int64)] = -np.inf
        extra = depth + max((len(q) for q in queries[start:stop]), default=0) + 1
        tt_top = _top(tt_scores, extra)
        ii_scores = multi_hot(queries[start:stop], len(tables.counts)) @ table
        ii_lists = [_sparse_top(ii_scores, row, queries[start + row], depth)
                    for row in range(stop - start)]
        for row in range(stop - start):
            i = start + row
            positive = ii_lists[row]
            merged, a, b = merge_candidates(tt_top[row][:depth], positive, queries[i], width,
                                            table_share, new, new_slots)
            out[i, :len(merged)] = merged
            mask[i, :len(merged)] = True
            tt_place[i, :len(merged)] = a
            table_place[i, :len(merged)] = b
        if text_slots:
            picks = text_picks(tables.tfidf, queries[start:stop], pickable, text_slots,
                               out[start:stop, :width], mask[start:stop, :width])
            for row, items in enumerate(picks):
                i, end = start + row, width + len(items)
                out[i, width:end] = items
                mask[i, width:end] = True
                tt_place[i, width:end] = _places(items, tt_top[row][:depth])
                table_place[i, width:end] = len(ii_lists[row])
    return out, mask, tt_place, table_place


def text_scores(lexical: LexicalTable, queries: list, items: np.ndarray) -> np.ndarray:
    """[len(queries), len(items)] each item's TF-IDF cosines with the query's distinct
    items, summed (the lexical rows are unit-length: one sparse product)."""
    matrix = lexical.matrix
    query_rows = multi_hot(queries, matrix.shape[0]) @ matrix
    return np.asarray((query_rows @ matrix[np.asarray(items, np.int64)].T).todense(),
                      np.float32)


def text_picks(lexical: LexicalTable, queries: list, pickable: np.ndarray, count: int,
               listed: np.ndarray, listed_mask: np.ndarray) -> list:
    """Each query's `count` best `pickable` items by `text_scores` (a positive score;
    ties to the lower index), none of the query's items nor of its `listed` ones."""
    items = np.flatnonzero(pickable)
    scores = text_scores(lexical, queries, items)
    picks = []
    for row, query in enumerate(queries):
        taken = np.concatenate([np.asarray(query, np.int64),
                                listed[row][listed_mask[row]].astype(np.int64)])
        score = np.where(np.isin(items, taken), 0.0, scores[row])
        order = np.argsort(-score, kind="stable")[:count]
        picks.append(items[order[score[order] > 0]])
    return picks


def _sparse_top(scores, row: int, query, depth: int) -> np.ndarray:
    """Row `row` of the sparse `scores` (CSR): its `depth` best items of a positive
    float32 score, not index 0 nor the query's items, best first (ties: lower index)."""
    lo, hi = scores.indptr[row], scores.indptr[row + 1]
    items = np.asarray(scores.indices[lo:hi], np.int64)
    values = np.asarray(scores.data[lo:hi], np.float32)
    keep = (values > 0) & (items > 0) & ~np.isin(items, np.asarray(query, np.int64))
    items, values = items[keep], values[keep]
    order = np.lexsort((items, -values))[:depth]
    return items[order]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def candidate_recall(cands: np.ndarray, mask: np.ndarray, targets: np.ndarray) -> float:
    """Share of queries whose target is in their candidate list (HR@N)."""
    return float(((cands == np.asarray(targets)[:, None]) & mask).any(axis=1).mean())


def candidate_features(query_embeddings: np.ndarray, tables: Tables, queries: list,
                       cands: np.ndarray, mask: np.ndarray, tt_place: np.ndarray,
                       table_place: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """[n, N, len(FEATURES)] float32 features (zeros at padding), in numpy."""
    n, width = cands.shape
    out = np.zeros((n, width, len(FEATURES)), np.float32)
    column = {name: j for j, name in enumerate(FEATURES)}
    log_counts = np.log1p(tables.counts.astype(np.float32))
    table = tables.table.matrix().sorted_indices()
    # Batches of queries of similar length: little padding.
    by_length = np.argsort([len(q) for q in queries], kind="stable")
    for start in range(0, n, batch_size):
        rows = by_length[start:start + batch_size]
        c = cands[rows]
        lengths = np.asarray([len(queries[i]) for i in rows])
        padded = np.zeros((len(rows), max(1, lengths.max(initial=0))), np.int64)
        for row, i in enumerate(rows):
            padded[row, :lengths[row]] = queries[i]
        query_mask = padded > 0
        f = np.zeros((len(rows), width, len(FEATURES)), np.float32)
        f[..., column["tt_score"]] = np.matmul(tables.item_embeddings[c],
                                               query_embeddings[rows, :, None])[..., 0]
        f[..., column["tt_rank"]] = np.log1p(tt_place[rows])
        f[..., column["ii_rank"]] = np.log1p(table_place[rows])
        f[..., column["log_count"]] = log_counts[c]
        f[..., column["has_behaviour"]] = tables.counts[c] > 0
        f[..., column["query_length"]] = np.log1p(lengths)[:, None]
        f[..., column["ii_score"]], f[..., column["ii_max"]] = _table_pool(
            table, [queries[i] for i in rows], c)
        for name in SIMILARITIES:
            gram = tables.grams.get(name)
            if gram is not None:
                sim = gram[padded[:, :, None], c[:, None, :]]
            elif name == "tfidf":
                sim = tables.tfidf.similarity(padded, c)
            else:
                sim = _pairwise(getattr(tables, name), padded, c)
            _, f[..., column[f"{name}_mean"]], f[..., column[f"{name}_max"]] = _pool(
                sim, query_mask)
        f[~mask[rows]] = 0.0
        out[rows] = f
    return out


def _pairwise(vectors: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 16) -> np.ndarray:
    """[B, L, N] dot products of the rows a [B, L] with the rows b [B, N] of `vectors`:
    one matrix product per chunk of queries over its distinct items (a stack of
    small products, np.matmul's way, is many times slower)."""
    out = np.empty((a.shape[0], a.shape[1], b.shape[1]), np.float32)
    for start in range(0, a.shape[0], chunk):
        rows_a, rows_b = a[start:start + chunk], b[start:start + chunk]
        unique_a, at_a = np.unique(rows_a, return_inverse=True)
        unique_b, at_b = np.unique(rows_b, return_inverse=True)
        products = vectors[unique_a] @ vectors[unique_b].T
        out[start:start + chunk] = products[at_a.reshape(rows_a.shape)[:, :, None],
                                            at_b.reshape(rows_b.shape)[:, None, :]]
    return out


def _table_pool(table, queries: list, cands: np.ndarray):
    """(sum, max) [B, N] over each query's distinct items i of table[i, c]
    (a scipy CSR matrix; 0 where row i does not hold c)."""
    distinct = [np.unique(np.asarray(q, np.int64)) for q in queries]
    distinct = [q[q > 0] for q in distinct]
    width = max(1, max((len(q) for q in distinct), default=0))
    padded = np.zeros((len(queries), width), np.int64)
    for row, q in enumerate(distinct):
        padded[row, :len(q)] = q
    rows = np.broadcast_to(padded[:, :, None], padded.shape + (cands.shape[1],))
    cols = np.broadcast_to(cands[:, None, :], rows.shape)
    weights = np.asarray(table[rows.ravel(), cols.ravel()], np.float64).reshape(rows.shape)
    total, _, largest = _pool(weights, padded > 0)
    return total.astype(np.float32), largest.astype(np.float32)


def _pool(pairwise: np.ndarray, query_mask: np.ndarray):
    """[B, L, N] -> (sum, mean, max) over each query's items ([B, N] each)."""
    weight = query_mask[:, :, None].astype(np.float32)
    total = (pairwise * weight).sum(axis=1)
    length = weight.sum(axis=1)
    mean = np.divide(total, length, out=np.zeros_like(total), where=length > 0)
    largest = np.where(query_mask[:, :, None], pairwise, -np.inf).max(axis=1)
    largest = np.where(length > 0, largest, 0.0)
    return total, mean, largest


@keras.utils.register_keras_serializable(package="tfrec")
class CandidateFeatures(keras.layers.Layer):
    """The TensorFlow twin of `candidate_features`, from the exported tensors.

    The tables (`Tables`: item embeddings, counts, text, TF-IDF and
    skip-gram vectors) are non-trainable weights, and the item-item table is
    an `ItemItemScorer` holding its CSR arrays (no V x V array): filled by
    `set_tables` and saved with the model (a checkpoint or SavedModel), not
    in the config.

    Args:
      num_items: V, the catalogue size (index 0 is padding / OOV).
      num_entries: the item-item table's number of (item, co-item) entries.
      embedding_dim, text_dim, i2v_dim: the widths of the tables.
      text_terms: T, the terms each item keeps in the lexical table.

    Call (a dict):
      query_items: [B, L] int, the query's items, 0-padded.
      query_embeddings: [B, embedding_dim] the two-tower's query embeddings.
      candidates: [B, N] int, 0-padded.
      candidate_mask: [B, N] bool.
      tt_place, table_place: [B, N] float places in the sources' lists.
      item_item_pooled: optional, `ItemItemScorer.pooled(query_items,
        candidates)` if computed already.

    Returns:
      [B, N, len(FEATURES)] float32.
    """

    def __init__(self, num_items: int, num_entries: int, embedding_dim: int, text_dim: int,
                 i2v_dim: int, text_terms: int, **kwargs):
        super().__init__(**kwargs)
        self.num_items = int(num_items)
        self.num_entries = int(num_entries)
        self.item_item = ItemItemScorer(self.num_items, self.num_entries, name="item_item")
        self.dims = {"item_embeddings": int(embedding_dim), "text": int(text_dim),
                     "i2v": int(i2v_dim), "text_terms": int(text_terms)}
        shapes = {"item_embeddings": (self.num_items, self.dims["item_embeddings"]),
                  "counts": (self.num_items,),
                  "text": (self.num_items, self.dims["text"]),
                  "i2v": (self.num_items, self.dims["i2v"])}
        for name, shape in shapes.items():
            setattr(self, name, self.add_weight(name=name, shape=shape, dtype=tf.float32,
                                                trainable=False, initializer="zeros"))
        terms = (self.num_items, self.dims["text_terms"])
        self.lexical_terms = self.add_weight(name="lexical_terms", shape=terms, dtype=tf.int32,
                                             trainable=False, initializer="zeros")
        self.lexical_weights = self.add_weight(name="lexical_weights", shape=terms,
                                               dtype=tf.float32, trainable=False,
                                               initializer="zeros")
        self.built = True  # every weight is made here (a SavedModel then keeps its config)

    @classmethod
    def from_tables(cls, tables: Tables, **kwargs) -> "CandidateFeatures":
        """A layer holding `tables` (TF-IDF rows made dense)."""
        layer = cls(len(tables.counts), tables.table.num_entries,
                    tables.item_embeddings.shape[1], tables.text.shape[1],
                    tables.i2v.shape[1], tables.tfidf.max_terms, **kwargs)
        layer.set_tables(tables)
        return layer

    def set_tables(self, tables: Tables) -> None:
        """Assigns the tables (shapes as built)."""
        for name in ("item_embeddings", "counts", "text", "i2v"):
            getattr(self, name).assign(np.asarray(getattr(tables, name), np.float32))
        self.lexical_terms.assign(np.asarray(tables.tfidf.terms, np.int32))
        self.lexical_weights.assign(np.asarray(tables.tfidf.weights, np.float32))
        self.item_item.set_table(tables.table)

    def call(self, inputs):
        query_items = tf.cast(inputs["query_items"], tf.int32)
        cands = tf.cast(inputs["candidates"], tf.int32)
        mask = tf.cast(inputs["candidate_mask"], tf.float32)
        query_mask = tf.cast(query_items > 0, tf.float32)  # [B, L]
        length = tf.reduce_sum(query_mask, axis=1)  # [B]
        width = tf.shape(cands)[1]

        def pool(pairwise):
            """[B, L, N] -> (sum, mean, max) over the query's items."""
            total = tf.reduce_sum(pairwise * query_mask[:, :, None], axis=1)
            mean = tf.math.divide_no_nan(total, length[:, None])
            masked = tf.where(query_mask[:, :, None] > 0, pairwise, -np.inf)
            largest = tf.reduce_max(masked, axis=1)
            largest = tf.where(length[:, None] > 0, largest, 0.0)
            return total, mean, largest

        columns = {}
        cand_emb = tf.gather(self.item_embeddings, cands)
        # Products and sums, not einsums: the same values, cheaper at serving sizes.
        columns["tt_score"] = tf.reduce_sum(
            cand_emb * tf.cast(inputs["query_embeddings"], tf.float32)[:, None, :], axis=-1)
        columns["tt_rank"] = tf.math.log1p(tf.cast(inputs["tt_place"], tf.float32))
        columns["ii_rank"] = tf.math.log1p(tf.cast(inputs["table_place"], tf.float32))
        if "item_item_pooled" in inputs:
            columns["ii_score"], columns["ii_max"] = inputs["item_item_pooled"]
        else:
            columns["ii_score"], columns["ii_max"] = self.item_item.pooled(query_items, cands)
        counts = tf.gather(self.counts, cands)
        columns["log_count"] = tf.math.log1p(counts)
        columns["has_behaviour"] = tf.cast(counts > 0, tf.float32)
        columns["query_length"] = tf.repeat(tf.math.log1p(length)[:, None], width, axis=1)
        for name in SIMILARITIES:
            if name == "tfidf":
                sim = tf_similarity(self.lexical_terms, self.lexical_weights, query_items, cands)
            else:
                vectors = getattr(self, name)
                sim = tf.matmul(tf.gather(vectors, query_items), tf.gather(vectors, cands),
                                transpose_b=True)
            _, columns[f"{name}_mean"], columns[f"{name}_max"] = pool(sim)
        features = tf.stack([columns[name] for name in FEATURES], axis=-1)
        return features * mask[:, :, None]

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items,
                "num_entries": self.num_entries,
                "embedding_dim": self.dims["item_embeddings"], "text_dim": self.dims["text"],
                "i2v_dim": self.dims["i2v"], "text_terms": self.dims["text_terms"]}


def present_as_new(features: np.ndarray, cands: np.ndarray, mask: np.ndarray,
                   labels: np.ndarray, query_embeddings: np.ndarray, tables: Tables,
                   rows: np.ndarray, text_embeddings: np.ndarray | None = None,
                   queries: list | None = None, width: int | None = None) -> int:
    """Shows the target of each of `rows` as an item without behaviour (in place).

    Ranker training cases rarely have a new item as their target (it must
    be new in the ranker's own slice), while the test cases have the
    catalogue's cold items. So a share of the training cases presents its
    (warm) target as a new item would be seen: its two-tower score from its
    text-only embedding, no table weight, no counts, no skip-gram vector,
    and its two-tower place among the listed candidates recomputed. A
    target that neither its text-only two-tower score nor its text's match
    with the query's (the lists' text slots, `text_picks`) would have
    brought into the list is taken out of it (the case then has no positive
    and no loss); one kept by its text alone takes the place of the weakest
    text pick and the two-tower place of an item outside its list.

    Args:
      features, cands, mask, labels: the lists (`candidate_features`), changed in place.
      rows: the cases whose target to present as new.
      text_embeddings: [V, d] the items' text-only two-tower embeddings (what
        a new item is embedded by; default `tables.text`, when that is them).
      queries: the cases' queries (needed where the lists have text slots).
      width: N, the merged part of each list; the text slots follow it
        (default: the lists' width, no text slots).

    Returns:
      How many of those targets stayed in their list.
    """
    column = {name: j for j, name in enumerate(FEATURES)}
    width = cands.shape[1] if width is None else int(width)
    slots = cands.shape[1] - width
    text_embeddings = tables.text if text_embeddings is None else text_embeddings
    kept = 0
    for i in rows:
        where = np.flatnonzero(labels[i] > 0)
        if not len(where):
            continue
        j = int(where[0])
        item = cands[i, j]
        f = features[i]
        score = float(text_embeddings[item] @ query_embeddings[i])
        listed = mask[i] & (np.expm1(f[:, column["tt_rank"]]) < width - 0.5)
        listed[j] = False
        by_two_tower = listed.any() and score >= f[listed, column["tt_score"]].min()
        if not by_two_tower:
            picked = np.flatnonzero(mask[i, width:]) + width
            picked = picked[picked != j]
            matched = 0.0
            if slots and queries is not None:
                found = text_scores(tables.tfidf, [queries[i]], np.append(cands[i, picked], item))
                matched = float(found[0, -1])
            if matched <= 0 or (len(picked) >= slots and matched < found[0, :-1].min()):
                labels[i, j] = 0.0
                continue
            if len(picked) >= slots:  # the weakest text pick gives up its slot
                weakest = picked[int(np.argmin(found[0, :-1]))]
                mask[i, weakest], features[i, weakest] = False, 0.0
        kept += 1
        f[j, column["tt_score"]] = score
        f[j, column["tt_rank"]] = (np.log1p((f[listed, column["tt_score"]] > score).sum())
                                   if by_two_tower else np.log1p(width))
        for name in ("ii_score", "ii_max", "log_count", "has_behaviour", "i2v_mean", "i2v_max"):
            f[j, column[name]] = 0.0
        f[j, column["ii_rank"]] = np.log1p(np.expm1(f[mask[i], column["ii_rank"]]).max())
    return kept


def show_decoys(features: np.ndarray, cands: np.ndarray, mask: np.ndarray, labels: np.ndarray,
                query_embeddings: np.ndarray, text_embeddings: np.ndarray, rows: np.ndarray,
                count: int, width: int | None = None, seed: int = 0) -> int:
    """Shows warm non-target candidates as items without behaviour (in place), so that
    each of `rows` holds at least `count` such candidates besides its target.

    At serving, items without behaviour reach a list by their text (a catalogue's
    new and added items) and are seldom the answer; a list of a catalogue whose
    items all have behaviour holds none, and the only new-looking candidate the
    ranker then meets is a target shown as new (`present_as_new`): it would learn
    that an item without behaviour is the answer, and put every added item first.
    The decoys are warm non-targets of the merged part drawn at random (decoys
    picked by a rule, the best matches by text say, differ from the targets in a way
    the ranker learns instead), shown as `present_as_new` shows a target: their
    text-only two-tower score and place among the listed items, no table weight,
    counts or skip-gram similarity.

    Args:
      features, cands, mask, labels: the lists (`candidate_features`), changed in place.
      query_embeddings: [n, d] the lists' query embeddings.
      text_embeddings: [V, d] the items' text-only two-tower embeddings.
      rows: the lists to fill.
      count: the candidates without behaviour (besides the target) each list is to hold.
      width: N, the merged part of each list (default: the lists' width).
      seed: the draws' seed.

    Returns:
      How many candidates were shown as new.
    """
    if count <= 0 or not len(rows):
        return 0
    column = {name: j for j, name in enumerate(FEATURES)}
    width = cands.shape[1] if width is None else int(width)
    rng = np.random.default_rng(seed)
    shown = 0
    for i in rows:
        f = features[i]
        other = mask[i] & (labels[i] <= 0)
        new = other & (f[:, column["has_behaviour"]] <= 0)
        need = count - int(new.sum())
        warm = np.flatnonzero(other[:width] & ~new[:width])
        if need <= 0 or not len(warm):
            continue
        scores = text_embeddings[cands[i, warm]] @ query_embeddings[i]
        # Drawn at random: decoys picked by a rule (the best matches by text, say) differ
        # from targets in ways the ranker learns instead of what a new item is worth.
        order = rng.permutation(len(warm))[:need]
        picked = warm[order]
        listed = mask[i] & (np.expm1(f[:, column["tt_rank"]]) < width - 0.5)
        listed[picked] = False
        before = f[listed, column["tt_score"]]
        last = np.log1p(np.expm1(f[mask[i], column["ii_rank"]]).max())
        for j, score in zip(picked, scores[order]):
            f[j, column["tt_score"]] = score
            f[j, column["tt_rank"]] = np.log1p((before > score).sum())
            for name in ("ii_score", "ii_max", "log_count", "has_behaviour", "i2v_mean",
                         "i2v_max"):
                f[j, column[name]] = 0.0
            f[j, column["ii_rank"]] = last
        shown += len(picked)
    return shown
