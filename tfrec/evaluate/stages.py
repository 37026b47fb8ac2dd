"""The ranking stage in `tfrec evaluate`: both stages' ranks, the ranker without each
feature group (the ablations) and the candidate lists' recall.

A run trained with a ranking stage (`tfrec.ranking.two_stage`) is scored as
it serves: stage 1 (the two-tower) and the item-item table make each case's
list of N candidates (`RankingStage.lists`), the ranker orders it. A target
outside the list is a miss at every K (`MISSED`), so the two-stage rows'
HR@K is exact for K <= N and, for K > N, is their HR@N (they show N items);
their HR@K curves stop at K = N.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tfrec.ranking import features as F
from tfrec.ranking.ranker import list_ranks, score_lists
from tfrec.ranking.stage import RankingStage, fit_on_lists, ranker_lists, stage1_training_data

# The rank of a target outside its candidate list: beyond any K.
MISSED = 1 << 30


@dataclasses.dataclass
class StageLists:
    """The held-out cases' candidate lists, made once and scored by every ranker.

    Attributes:
      candidates, mask, features: `RankingStage.lists` of the cases.
      targets: [n] the cases' targets.
      width: a list's width (N, then the text slots).
    """

    candidates: np.ndarray
    mask: np.ndarray
    features: np.ndarray
    targets: np.ndarray
    width: int

    @classmethod
    def of(cls, stage: RankingStage, query_embeddings: np.ndarray, cases) -> "StageLists":
        cands, mask, feats = stage.lists(query_embeddings, cases.queries)
        return cls(cands, mask, feats, np.asarray(cases.targets), stage.width)

    def scores(self, ranker, columns) -> np.ndarray:
        """[n, width] `ranker`'s scores of every list (reading feature `columns`)."""
        return score_lists(ranker, self.features, self.mask, list(columns))

    def ranks(self, ranker, columns, scores: np.ndarray | None = None) -> np.ndarray:
        """[n] each target's rank after `ranker` (reading feature `columns`; or by the
        lists' `scores` already made); `MISSED` where it is not a candidate."""
        scores = self.scores(ranker, columns) if scores is None else scores
        ranks = list_ranks(scores, self.candidates, self.mask, self.targets,
                           miss_rank=self.width + 1)
        return np.where(ranks > self.width, MISSED, ranks)

    def top_items(self, scores: np.ndarray, k: int) -> np.ndarray:
        """[n, k] each list's k best candidates by `scores`, best first (0 past the end
        of a list shorter than k)."""
        order = np.argsort(-np.where(self.mask, scores, -np.inf), axis=1, kind="stable")[:, :k]
        items = np.take_along_axis(self.candidates, order, axis=1)
        return np.where(np.take_along_axis(self.mask, order, axis=1), items, 0)


def ablation_columns(stage: RankingStage) -> dict[str, tuple[int, ...]]:
    """Feature group -> the stage's columns without that group's, for every group the
    stage reads (and whose removal leaves a column)."""
    out = {}
    for group, names in F.FEATURE_GROUPS.items():
        left_out = {F.FEATURES.index(name) for name in names}
        columns = tuple(j for j in stage.columns if j not in left_out)
        if len(columns) < len(stage.columns) and columns:
            out[group] = columns
    return out


@dataclasses.dataclass
class Ablation:
    """The ranker refitted without one feature group, and its ranks of the cases."""

    group: str
    columns: tuple[int, ...]
    ranks: np.ndarray
    seconds: float
    info: dict


def ablations(config, data, model, stage: RankingStage, lists: StageLists,
              progress: Callable[[str], Any] = lambda text: None) -> list[Ablation]:
    """One ranker per feature group, fit as the run's was but without that group's
    columns, each scoring the cases' lists.

    The ranker's training lists are made once (`ranker_lists`: the run's
    training period less its ranker slice, with `model`, the run's
    two-tower) and every ranker is fit on them (`fit_on_lists`).

    Args:
      config: the run's config (its `ranking` section: the ranker's settings).
      data: the run's training data (the whole training period).
      model: the run's two-tower (its checkpoint).
      stage: the run's ranking stage.
      lists: the held-out cases' lists (`StageLists.of`).
      progress: reports a step of work in words.
    """
    groups = ablation_columns(stage)
    if not groups:
        return []
    progress("ablations: the ranker's training lists (the training period less its ranker "
             f"slice), then {len(groups)} rankers, each without one feature group")
    # The lists as the run's stage made them (a run trained before text slots has none).
    config = dataclasses.replace(config, ranking=dataclasses.replace(
        config.ranking, text_slots=stage.text_slots))
    stage1, split = stage1_training_data(config, data)
    train_lists, tables = ranker_lists(config, data, stage1, split, model)
    out = []
    for group, columns in groups.items():
        progress(f"ablation: the ranker without {group} ({', '.join(F.FEATURE_GROUPS[group])})")
        started = time.perf_counter()
        fitted = fit_on_lists(config, train_lists, tables, columns)
        ranks = lists.ranks(fitted.ranker, columns)
        out.append(Ablation(group, columns, ranks, time.perf_counter() - started,
                            {k: v for k, v in fitted.info.items() if k == "validation"}))
    return out


def candidate_recall(stage: RankingStage, query_embeddings: np.ndarray, cases,
                     lists: StageLists) -> dict:
    """HR@N of each case's candidate list, and of each source's own top N, per group
    ("all", "warm", "cold"; null for a group without cases).

    Returns:
      {"merged" / "two_tower" / "table": {group: share of targets in the list}}.
    """
    found = {"merged": _found(lists.candidates, lists.mask, lists.targets)}
    for source, share in (("two_tower", 0.0), ("table", 1.0)):
        cands, mask, _, _ = F.candidates(query_embeddings, stage.tables, cases.queries,
                                         stage.num_candidates, share)
        found[source] = _found(cands, mask, lists.targets)
    groups = {"all": np.ones(len(lists.targets), bool), "warm": ~cases.cold,
              "cold": np.asarray(cases.cold)}
    return {source: {group: float(hit[mask].mean()) if mask.any() else None
                     for group, mask in groups.items()}
            for source, hit in found.items()}


def _found(cands: np.ndarray, mask: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return ((cands == targets[:, None]) & mask).any(axis=1)
