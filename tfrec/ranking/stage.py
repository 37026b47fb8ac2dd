"""The ranking stage of a run: fit after the two-tower, saved in the run folder.

`fit_ranking_stage` follows the leakage-free protocol of
`tfrec.ranking.protocol`: the two-tower was trained on the run's training
period less its ranker slice (`stage1_training_data`); the item-item table,
the counts and the features of the ranker's cases come from the same
reduced period, so the ranker learns from sessions stage 1 never saw; then
the table and the counts are refitted on the whole training period for the
held-out cases and the export. The result, a `RankingStage`, holds those
whole-period tables and the fitted ranker, and ranks candidates in numpy
(evaluation) and in the exported graph (`tfrec.exporter`, through
`CandidateFeatures` and `FoldedRanker`, the fitted `CandidateRanker` folded).

In the run folder (`RunFolder.ranking`)::

  ranking/stage.json     settings, feature columns, what the fit measured
  ranking/tables.npz     counts, text and skip-gram vectors, lexical table,
                         the item-item table's CSR arrays
  ranking/ranker.*       the ranker's weights (a TensorFlow checkpoint)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrec.config import RankingConfig, RunConfig
from tfrec.data.pipeline import PairPipeline
from tfrec.data.sequences import NextItemPipeline, histories_from_lists
from tfrec.data.sessions import sessionize
from tfrec.errors import InputError
from tfrec.metrics import score_cases
from tfrec.ranking import features as F
from tfrec.ranking.item_table import ItemItemTable, build_item_table
from tfrec.ranking.lexical import LexicalTable
from tfrec.ranking.protocol import RankerSplit, ranker_cases, ranker_split, split_validation
from tfrec.ranking.ranker import CandidateRanker, fit_ranker, list_ranks, score_lists
from tfrec.run import TrainingData

logger = logging.getLogger(__name__)

FORMAT = 1


NO_RANKER_CASES = ("the ranker's slice of the training period has no session with two "
                   "distinct items: raise ranking.ranker_share or turn the ranking stage "
                   "off (ranking.enabled: false)")


def _sessions(config: RunConfig, events, vocab):
    return sessionize(events, vocab, config.data.sessions, config.data.pairs.event_weights,
                      config.data.pairs.default_event_weight)


def stage1_training_data(config: RunConfig, data: TrainingData,
                         check_cases: bool = True) -> tuple[TrainingData, RankerSplit]:
    """The two-tower's training data when a ranking stage follows: the run's
    training period less its ranker slice, in the run's vocabulary.

    Returns:
      (the training data with stage 1's sessions and pipelines, the split).

    Raises:
      InputError: the ranker slice or stage 1's side would be empty, or (with
        `check_cases`) the slice has no session the ranker can learn from.
    """
    split = ranker_split(data.split.train, config.ranking.ranker_share, data.split.per_user,
                         config.train.eval_seed)
    # Refused before the two-tower trains, not after it.
    if check_cases and not ranker_case_count(config, data, split):
        raise InputError(NO_RANKER_CASES, key="ranking.ranker_share")
    sessions = _sessions(config, split.stage1, data.vocab)
    pairs = PairPipeline(sessions, data.vocab, config.data.pairs)
    next_items = None
    if data.next_items is not None:
        next_items = NextItemPipeline(sessions, data.vocab, config.model.history_length,
                                      config.train.retrieval_batch_size,
                                      config.data.pairs.seed, data.retrieval_context)
    logger.info("ranking stage: the two-tower trains on %d events, the ranker on the %d of "
                "%s", len(split.stage1), len(split.ranker),
                f"{config.ranking.ranker_share:.0%} of the training users" if split.per_user
                else f"the last {config.ranking.ranker_share:.0%} of the training period")
    return dataclasses.replace(data, sessions=sessions, pairs=pairs, next_items=next_items,
                               train_events=int(len(split.stage1))), split


def ranker_case_count(config: RunConfig, data: TrainingData, split: RankerSplit) -> int:
    """The ranker's cases its slice gives, one per session (two distinct items or more)."""
    return len(ranker_cases(split.ranker, data.vocab, config, split.per_user,
                            config.train.eval_seed)[0])


def stage1_slices(config: RunConfig, data: TrainingData) -> tuple | None:
    """What `tfrec.data.report.data_report` counts with a ranking stage: (the two-tower's
    training data, {events, stage1_events, share, by_user} of the ranker's slice); None
    without a ranking stage, a held-out split, or when the slice cannot be made (`tfrec
    train` names why)."""
    if not config.ranking.enabled or (data.split.cut is None and not data.split.per_user):
        return None
    try:
        fit, parts = stage1_training_data(config, data, check_cases=False)
    except InputError:
        return None
    return fit, {"events": int(len(parts.ranker)), "stage1_events": int(len(parts.stage1)),
                 "share": config.ranking.ranker_share, "by_user": bool(data.split.per_user),
                 "sessions": ranker_case_count(config, data, parts)}


def event_counts(events, vocab) -> np.ndarray:
    """[V] events per item index (index 0: ids outside the vocabulary)."""
    counts = np.bincount(vocab.lookup(events["item"].to_numpy(dtype=object)),
                         minlength=vocab.size).astype(np.int64)
    counts[0] = 0
    return counts


def forget_unseen_ids(model, seen: np.ndarray) -> int:
    """Zeroes the id embedding of every item stage 1 did not train on (`seen`
    false): such an item embeds as its text alone, as a new item does,
    instead of by its never-trained random id vector.

    Returns:
      how many rows were zeroed.
    """
    encoder = model.item_encoder
    if not getattr(encoder, "use_ids", False):
        return 0
    table = encoder.id_embedding.embeddings
    rows = np.flatnonzero(~np.asarray(seen[:int(table.shape[0])], bool))
    rows = rows[rows > 0]
    if len(rows):
        values = table.numpy()
        values[rows] = 0.0
        table.assign(values)
    return int(len(rows))


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def item_vectors(model, vocab) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([V, d] text-only embeddings, [V, t] text vectors, [V, s] skip-gram vectors),
    each row unit-length or zero.

    The text vector is the item encoder's text path alone (what a new item
    is embedded by), its behaviour-free part; the skip-gram vector is the
    item's id embedding, the behaviour part of the shared item encoder
    (learned by the run's objectives; zeros for items without one).
    """
    encoder = model.item_encoder
    size = vocab.size
    text_only = np.zeros((size, model.embedding_dim), np.float32)
    text = np.zeros((size, 1), np.float32)
    if getattr(encoder, "use_text", False):
        texts = np.asarray([t if isinstance(t, str) else "" for t in vocab.text], object)
        parts = [encoder.encode_text(tf.constant(texts[i:i + 8192].astype(str))).numpy()
                 for i in range(0, size, 8192)]
        text_only = np.concatenate(parts)
        text_only[0] = 0.0
        text = text_only
        if getattr(encoder, "fusion", None) == "concat" and encoder.use_ids:
            text = text_only[:, encoder.id_dim:]
    i2v = np.zeros((size, 1), np.float32)
    if getattr(encoder, "use_ids", False):
        ids = encoder.id_embedding.embeddings.numpy()
        i2v = np.zeros((size, ids.shape[1]), np.float32)
        i2v[:len(ids)] = ids[:size]
        i2v[0] = 0.0
    return text_only, _normalised(text), _normalised(i2v)


def _inferred_lexical_rules(vocabulary) -> int:
    """The `tokenize` rules of a stage saved before it recorded them: the current ones (2)
    when a term is not ASCII (the first rules kept a-z and 0-9 only), else the first (on
    ASCII texts the two differ only where markup is)."""
    return 2 if any(not str(term).isascii() for term in vocabulary) else 1


@dataclasses.dataclass
class RankingStage:
    """A fitted ranking stage.

    Attributes:
      tables: the whole-period tables in the run's index space (the
        two-tower's item embeddings filled in from the model).
      ranker: the fitted `CandidateRanker`.
      num_candidates: N, each query's candidate list's width.
      table_share: the share of the list the item-item table fills.
      columns: the feature columns the ranker reads (indices into `FEATURES`).
      info: what the fit measured (cases, validation figures, seconds).
      new_slots: how many of the two-tower's items without behaviour move to
        the front of its list before the merge (`F.candidates`).
      text_slots: m, the slots after the N for items without behaviour found
        by their text (`F.text_picks`); a list is N + m wide.
    """

    tables: F.Tables
    ranker: CandidateRanker
    num_candidates: int
    table_share: float
    columns: tuple[int, ...]
    info: dict
    new_slots: int = 0
    text_slots: int = 0

    @property
    def width(self) -> int:
        """A candidate list's width: N, then the text slots."""
        return self.num_candidates + self.text_slots

    def lists(self, query_embeddings: np.ndarray, queries: list):
        """(candidates, mask, features) of each query's candidate list. A query is read
        as the set of its items, as the exported signatures read a session (a repeated
        item counts once; 0, padding, not at all)."""
        queries = [list(dict.fromkeys(int(i) for i in np.asarray(q).ravel() if i > 0))
                   for q in queries]
        cands, mask, tt_place, table_place = F.candidates(
            query_embeddings, self.tables, queries, self.num_candidates, self.table_share,
            new_slots=self.new_slots, text_slots=self.text_slots)
        feats = F.candidate_features(query_embeddings, self.tables, queries, cands, mask,
                                     tt_place, table_place)
        return cands, mask, feats

    def score(self, query_embeddings: np.ndarray, queries: list):
        """(candidates [n, width], mask [n, width], the ranker's scores [n, width])."""
        cands, mask, feats = self.lists(query_embeddings, queries)
        return cands, mask, score_lists(self.ranker, feats, mask, list(self.columns))

    def target_ranks(self, query_embeddings: np.ndarray, queries: list,
                     targets: np.ndarray) -> np.ndarray:
        """Each target's rank after both stages (width + 1 where it is not a candidate)."""
        cands, mask, scores = self.score(query_embeddings, queries)
        return list_ranks(scores, cands, mask, targets, miss_rank=self.width + 1)

    # Saving and loading ----------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Writes the stage to `folder` whole or not at all: into a sibling folder first,
        which then takes its place (an interrupted save leaves the previous stage, never
        a mix of two)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            self._write(partial)
            previous = folder.with_name(f".{folder.name}.previous-{os.getpid()}")
            if folder.exists():
                folder.rename(previous)
            partial.rename(folder)
            shutil.rmtree(previous, ignore_errors=True)
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def _write(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        t = self.tables
        np.savez(folder / "tables.npz", counts=t.counts, text=t.text, i2v=t.i2v,
                 lexical_terms=t.tfidf.terms, lexical_weights=t.tfidf.weights,
                 lexical_idf=t.tfidf.idf,
                 lexical_vocabulary=np.asarray(t.tfidf.vocabulary, dtype=str),
                 lexical_rules=np.int32(t.tfidf.rules),
                 row_splits=t.table.row_splits, indices=t.table.indices,
                 weights=t.table.weights)
        # The weights only (not the optimizer's slots): what scoring needs.
        tf.train.Checkpoint(ranker=tf.train.Checkpoint(
            normalization=self.ranker.normalization,
            scorer=self.ranker.scorer, members=self.ranker.extra_members)).write(
            str(folder / "ranker"))
        (folder / "stage.json").write_text(json.dumps({
            "format": FORMAT, "num_candidates": self.num_candidates,
            "table_share": self.table_share, "new_slots": self.new_slots,
            "text_slots": self.text_slots, "columns": list(self.columns),
            "features": [F.FEATURES[j] for j in self.columns],
            "ranker": self.ranker.get_config(), "table_info": t.table.info,
            "info": self.info}, indent=1, default=str) + "\n")

    @staticmethod
    def saved_in(folder: str | Path) -> bool:
        return (Path(folder) / "stage.json").exists()

    @classmethod
    def load(cls, folder: str | Path, item_embeddings: np.ndarray) -> "RankingStage":
        """The stage saved in `folder`, with the two-tower's item embeddings.

        Raises:
          InputError: the folder holds no ranking stage, one of another format, or
            one whose files are damaged (named, with how to refit it).
        """
        folder = Path(folder)
        meta_file = folder / "stage.json"
        if not meta_file.exists():
            raise InputError("the run has no ranking stage (train with ranking.enabled: true)",
                             path=str(folder))
        with _damaged_stage(folder, meta_file):
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        if meta.get("format") != FORMAT:
            raise InputError(f"ranking stage format {meta.get('format')} is not {FORMAT}: "
                             "retrain the run", path=str(meta_file))
        with _damaged_stage(folder, meta_file):
            settings = (int(meta["num_candidates"]), float(meta["table_share"]),
                        tuple(int(c) for c in meta["columns"]), meta.get("info", {}),
                        int(meta.get("new_slots", 0)), int(meta.get("text_slots", 0)))
            ranker = CandidateRanker.from_config(meta["ranker"])
        with _damaged_stage(folder, folder / "tables.npz"):
            with np.load(folder / "tables.npz") as z:
                arrays = {name: z[name] for name in z.files}
            table = ItemItemTable(arrays["row_splits"], arrays["indices"], arrays["weights"],
                                  info=meta.get("table_info", {}))
            lexical = LexicalTable(arrays["lexical_terms"], arrays["lexical_weights"],
                                   [str(v) for v in arrays["lexical_vocabulary"]],
                                   arrays["lexical_idf"],
                                   int(arrays["lexical_rules"]) if "lexical_rules" in arrays
                                   else _inferred_lexical_rules(arrays["lexical_vocabulary"]))
            tables = F.Tables(np.asarray(item_embeddings, np.float32), table, arrays["counts"],
                              arrays["text"], lexical, arrays["i2v"])
        width = ranker.num_features
        ranker({"features": tf.zeros([1, 1, width]), "candidate_mask": tf.ones([1, 1], tf.bool)})
        with _damaged_stage(folder, folder / "ranker.index"):
            tf.train.Checkpoint(ranker=tf.train.Checkpoint(
                normalization=ranker.normalization, scorer=ranker.scorer,
                members=ranker.extra_members)).read(
                str(folder / "ranker")).assert_consumed()
        # The normalisation's mean and variance are computed from its restored state.
        ranker.normalization.finalize_state()
        return cls(tables, ranker, *settings)


@contextlib.contextmanager
def _damaged_stage(folder: Path, path: Path):
    """Turns an error reading the saved stage's file `path` (missing, cut short, not what
    it should hold) into an `InputError` naming it and how to make the stage anew."""
    try:
        yield
    except InputError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, AssertionError,
            zipfile.BadZipFile, zlib.error, tf.errors.OpError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"the run's ranking stage is damaged ({path.name}: {detail[:300]}): refit it with "
            f"tfrec train --run-dir {folder.parent} --resume, or use stage 1 alone "
            "(tfrec export --no-ranking-stage)", path=str(path)) from e


def _table(config: RunConfig, sessions, size: int, lambdas: tuple | None = None) -> ItemItemTable:
    """The item-item table of `sessions`: λ is ranking.ease_lambda, else chosen from
    `lambdas` (default ranking.ease_lambdas) on a validation slice of `sessions`."""
    rk = config.ranking
    return build_item_table(sessions, size, rk.estimator, rk.table_size, rk.neighbours,
                            rk.ease_lambda, rk.ease_lambdas if lambdas is None else lambdas,
                            k=config.train.eval_k, seed=config.train.eval_seed)


def lambdas_near(table: ItemItemTable, grid: tuple) -> tuple | None:
    """The grid's values next to the λ chosen for `table` (itself and one step each
    way), or None when its λ was not chosen from the grid."""
    tuning = table.info.get("tuning")
    grid = tuple(sorted(grid))
    if tuning is None or tuning["chosen"] not in grid:
        return None
    at = grid.index(tuning["chosen"])
    return grid[max(0, at - 1):at + 2]


@dataclasses.dataclass
class RankerLists:
    """The ranker's training lists (each a ranker case's N + m candidates, m the
    ranking.text_slots).

    Attributes:
      candidates, mask: [n, N + m] item indices (0-padded) and which are listed.
      features: [n, N + m, len(FEATURES)] their features (stage 1's tables).
      labels: [n, N + m] 1 at the case's target (a target shown as new and
        left out of its list has none).
      targets: [n] the cases' targets.
      fit_rows, validation_rows: the cases the ranker fits on and the
        held-out share that measures it (whole sessions on each side).
      info: counts of what was made.
      new_rows: the cases whose target is shown as new (`F.present_as_new`).
      weights: [n] each list's weight in the ranker's loss (with
        `ranking.new_copies`, rows past the cases' are the warm fit cases'
        copies shown as new, and `fit_rows` holds them).
    """

    candidates: np.ndarray
    mask: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    fit_rows: np.ndarray
    validation_rows: np.ndarray
    info: dict
    new_rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    weights: np.ndarray | None = None


def ranker_lists(config: RunConfig, data: TrainingData, stage1: TrainingData,
                 split: RankerSplit, model) -> tuple[RankerLists, F.Tables]:
    """The ranker's training lists and the whole-period tables (see the module's
    docstring).

    Args:
      config: the run config (its `ranking` section).
      data: the run's training data (the whole training period).
      stage1: the two-tower's training data (`stage1_training_data`).
      split: the ranker split.
      model: the two-tower trained on `stage1`.

    Raises:
      InputError: the ranker slice has no usable case.
    """
    rk = config.ranking
    rk.check_k(config.train.eval_k)
    vocab = data.vocab
    size = vocab.size
    item_emb = model.item_embeddings()
    text_only, text, i2v = item_vectors(model, vocab)
    lexical = LexicalTable.build(vocab.text, rk.text_terms, config.model.text.tokenizer_rules)
    logger.info("ranking stage: the item-item table of stage 1's sessions")
    tables_s1 = F.Tables(item_emb, _table(config, stage1.sessions, size),
                         event_counts(split.stage1, vocab), text, lexical, i2v)

    cases, groups = ranker_cases(split.ranker, vocab, config, split.per_user,
                                 config.train.eval_seed, rk.cases_per_session)
    if not len(cases):
        raise InputError(NO_RANKER_CASES, key="ranking.ranker_share")
    history = histories_from_lists(cases.queries, config.model.history_length)
    query_emb = model.query_embeddings(history)
    logger.info("ranking stage: features of %d ranker cases", len(cases))
    cands, mask, tt_place, table_place = F.candidates(query_emb, tables_s1, cases.queries,
                                                      rk.num_candidates, rk.table_share,
                                                      new_slots=rk.new_slots,
                                                      text_slots=rk.text_slots)
    feats = F.candidate_features(query_emb, tables_s1, cases.queries, cands, mask, tt_place,
                                 table_place)
    labels = ((cands == cases.targets[:, None]) & mask).astype(np.float32)
    recall = F.candidate_recall(cands, mask, cases.targets)
    cold = tables_s1.counts[cases.targets] == 0
    fit_rows, val_rows = split_validation(groups, rk.validation_share, config.train.seed)
    # The same share of the validation cases shows its target as new, so that the
    # figures that choose the settings weigh new items as the fit does.
    rng = np.random.default_rng([config.train.seed, 5])
    as_new = []
    for rows in (fit_rows, val_rows):
        warm = rows[~cold[rows]]
        count = min(len(warm), int(round(rk.new_share * len(rows))))
        as_new.append(np.sort(rng.choice(warm, size=count, replace=False)))
    queries, targets = list(cases.queries), cases.targets
    weights = np.ones(len(cases))
    if rk.new_copies:
        # Every warm fit case twice: as itself (weight 1 - new_share) and, in a copy,
        # with its target shown as new (weight new_share).
        warm = fit_rows[~cold[fit_rows]]
        copies = np.arange(len(cases), len(cases) + len(warm))
        cands, mask, feats, labels, query_emb = (
            np.concatenate([a, a[warm]]) for a in (cands, mask, feats, labels, query_emb))
        queries += [queries[i] for i in warm]
        targets = np.concatenate([targets, targets[warm]])
        weights = np.concatenate([weights, np.full(len(warm), rk.new_share)])
        weights[warm] = 1.0 - rk.new_share
        fit_rows = np.concatenate([fit_rows, copies])
        as_new[0] = copies
    F.present_as_new(feats, cands, mask, labels, query_emb, tables_s1, np.concatenate(as_new),
                     text_only, queries, rk.num_candidates)
    # The fit lists (not the validation ones, which score as the test cases do) hold
    # new-looking candidates that are not the answer (`F.show_decoys`).
    decoys = F.show_decoys(feats, cands, mask, labels, query_emb, text_only, fit_rows,
                           rk.new_decoys, rk.num_candidates, seed=config.train.seed)
    lists = RankerLists(cands, mask, feats, labels, targets, fit_rows, val_rows,
                        {"ranker_cases": int(len(cases)), "fit_cases": int(len(fit_rows)),
                         "validation_cases": int(len(val_rows)),
                         "shown_as_new": int(len(as_new[0])),
                         "validation_shown_as_new": int(len(as_new[1])),
                         "new_copies": bool(rk.new_copies),
                         "decoys_shown_as_new": int(decoys),
                         "candidate_recall": recall},
                        np.concatenate(as_new), weights)
    # The whole period's λ is chosen again on its own validation slice, from the grid's
    # values next to stage 1's choice: the grid search is the table's costliest part,
    # and 12% more sessions move the best λ by a step of the grid at most.
    near = lambdas_near(tables_s1.table, rk.ease_lambdas)
    logger.info("ranking stage: the item-item table of the whole training period%s",
                "" if near is None else f" (λ from {', '.join(f'{v:g}' for v in near)})")
    tables = F.Tables(item_emb, _table(config, data.sessions, size, near), vocab.counts.copy(),
                      text, lexical, i2v)
    return lists, tables


def fit_on_lists(config: RunConfig, lists: RankerLists, tables: F.Tables,
                 columns: tuple[int, ...] | None = None) -> RankingStage:
    """Fits a ranker on `lists` (reading the feature `columns`, default all) and
    measures it on their validation rows."""
    rk = config.ranking
    started = time.perf_counter()
    columns = tuple(range(len(F.FEATURES))) if columns is None else tuple(columns)
    rows, val_rows = lists.fit_rows, lists.validation_rows
    logger.info("ranking stage: fitting the ranker (%d lists, %d features, %d epochs)",
                len(rows), len(columns), rk.epochs)
    ranker = fit_ranker(lists.features[rows], lists.mask[rows], lists.labels[rows],
                        rk.hidden_units, rk.epochs, rk.learning_rate, rk.batch_size,
                        config.train.seed, list(columns), members=rk.members,
                        weights=None if lists.weights is None else lists.weights[rows])
    info = dict(lists.info)
    if len(val_rows):
        k = config.train.eval_k
        c, m, t = lists.candidates[val_rows], lists.mask[val_rows], lists.targets[val_rows]
        f = lists.features[val_rows]
        ranks = list_ranks(score_lists(ranker, f, m, list(columns)), c, m, t,
                           miss_rank=c.shape[1] + 1)
        tt = list_ranks(f[..., F.FEATURES.index("tt_score")], c, m, t,
                        miss_rank=c.shape[1] + 1)
        info["validation"] = {"hr_two_stage": float(np.mean(ranks < k)),
                              "hr_candidates_by_two_tower": float(np.mean(tt < k)), "k": k}
        logger.info("ranking stage: validation HR@%d %.4f (the candidates by two-tower score "
                    "%.4f)", k, info["validation"]["hr_two_stage"],
                    info["validation"]["hr_candidates_by_two_tower"])
    info["fit_seconds"] = round(time.perf_counter() - started, 1)
    return RankingStage(tables, ranker, rk.num_candidates, rk.table_share, columns, info,
                        rk.new_slots, rk.text_slots)


def fit_ranking_stage(config: RunConfig, data: TrainingData, stage1: TrainingData,
                      split: RankerSplit, model) -> RankingStage:
    """`ranker_lists`, then `fit_on_lists` with every feature."""
    started = time.perf_counter()
    lists, tables = ranker_lists(config, data, stage1, split, model)
    stage = fit_on_lists(config, lists, tables)
    stage.info["seconds"] = round(time.perf_counter() - started, 1)
    for message in ranker_warnings(stage.info):
        logger.warning("%s", message)
    return stage


# Fewer ranker cases than this and the ranker's fit and validation figures are noise.
MIN_RANKER_CASES = 100


def ranker_warnings(info: dict) -> list[str]:
    """Warnings on a fitted stage's `info`: too few ranker cases, no validation cases,
    or a ranker that orders its validation lists worse than the two-tower's scores do."""
    out = []
    cases = int(info.get("ranker_cases", 0))
    if cases < MIN_RANKER_CASES:
        out.append(f"the ranker learned from {cases} cases (fewer than {MIN_RANKER_CASES}): "
                   "its order is noise; give the ranker slice more sessions "
                   "(ranking.ranker_share, more data) or turn the stage off "
                   "(ranking.enabled: false)")
    validation = info.get("validation")
    if not validation:
        out.append("the ranker has no validation cases: nothing checks it against the "
                   "two-tower (ranking.validation_share)")
    elif validation["hr_two_stage"] < validation["hr_candidates_by_two_tower"]:
        out.append(f"on its validation cases the ranker orders the candidates worse than "
                   f"the two-tower's scores do (HR@{validation['k']} "
                   f"{validation['hr_two_stage']:.4f} against "
                   f"{validation['hr_candidates_by_two_tower']:.4f}): serve stage 1 alone "
                   "(tfrec export --no-ranking-stage) or give the ranker more data")
    return out


def evaluate_stages(stage: RankingStage, model, data: TrainingData, history_length: int,
                    k: int) -> dict:
    """The held-out scores of both stages (and stage 1's alone under "stage1")."""
    from tfrec.metrics import rank_targets

    cases = data.cases
    stage1_ranks, _, query_emb = rank_targets(model, cases.queries, cases.targets,
                                              history_length)
    cands, mask, scores = stage.score(query_emb, cases.queries)
    ranks = list_ranks(scores, cands, mask, cases.targets, miss_rank=stage.width + 1)
    result = score_cases(ranks, cases, k)
    result["stage1"] = score_cases(stage1_ranks, cases, k)
    result["candidate_recall"] = F.candidate_recall(cands, mask, cases.targets)
    result["new_item_slots"] = new_item_slots(stage, model, data, query_emb, cands, mask,
                                              scores, k)
    return result


def new_item_slots(stage: RankingStage, model, data: TrainingData, query_emb: np.ndarray,
                   cands: np.ndarray, mask: np.ndarray, scores: np.ndarray, k: int) -> dict:
    """The share of the held-out cases' top-k slots that go to items without behaviour
    (no training event), after both stages and after stage 1 alone, beside their share
    of the catalogue and of the targets: how much exposure new items get."""
    from tfrec.metrics import top_k_items

    new = np.zeros(data.vocab.size, bool)
    new[1:] = np.asarray(data.vocab.counts[1:]) == 0
    valid = np.ones(data.vocab.size, bool)
    valid[0] = False
    cases = data.cases
    order = np.argsort(-np.where(mask, scores, -np.inf), axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(cands, order, 1)[np.take_along_axis(mask, order, 1)]
    stage1 = top_k_items(query_emb, model.item_embeddings(), cases.queries, valid,
                         min(k, int(valid.sum()) - 1)) if len(cases) else np.zeros((0, 0), int)
    return {"both_stages": float(new[top].mean()) if top.size else 0.0,
            "stage1": float(new[stage1].mean()) if stage1.size else 0.0,
            "catalogue": float(new[valid].mean()), "targets": float(cases.cold.mean())
            if len(cases) else 0.0, "k": k}


def check_settings(settings: RankingConfig, k: int) -> None:
    """Refuses ranking settings that cannot work with `k` before any training."""
    settings.check_k(k)


__all__ = ["RankingStage", "RankerLists", "fit_ranking_stage", "fit_on_lists", "ranker_lists",
           "stage1_training_data", "evaluate_stages", "forget_unseen_ids", "event_counts",
           "ranker_split"]
