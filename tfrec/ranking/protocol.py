"""The ranker's leakage-free protocol: stage 1 never sees the ranker's cases.

The run's training period is split again. Its last slice (the last
`ranker_share` of the training events by time for a time split; a seeded
share of the training users for the user split) gives the ranker's training
cases, one hidden item per session (per user), the rest the query, as the
test cases are made (`tfrec.data.split.make_cases`). Stage 1, the two-tower
and the item-item table whose scores are the ranker's features, is fit on
the rest only, so the ranker learns from features of sessions stage 1 has
not seen, as at serving time. A further `validation_share` of the ranker's
cases chooses its settings; the test cases are never used for that.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrec.config import RunConfig, TrainConfig
from tfrec.data.pipeline import PairPipeline
from tfrec.data.sequences import NextItemPipeline
from tfrec.data.sessions import resolve_retrieval_context, sessionize
from tfrec.data.split import Cases, make_cases
from tfrec.data.vocab import ItemVocabulary, build_vocabulary
from tfrec.errors import InputError
from tfrec.models import required_streams
from tfrec.run import TrainingData, latest_checkpoint, load_run
from tfrec.run_folder import RunFolder

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RankerSplit:
    """The run's training events split for the ranker.

    Attributes:
      stage1: events stage 1 (two-tower, item-item table) is fit on.
      ranker: events whose sessions (users) become the ranker's cases.
      per_user: cases are per user (the run's user split).
    """

    stage1: pd.DataFrame
    ranker: pd.DataFrame
    per_user: bool


def ranker_split(train_events: pd.DataFrame, share: float, per_user: bool,
                 seed: int = TrainConfig.seed) -> RankerSplit:
    """Splits a run's training events into stage 1's and the ranker's.

    Time split (`per_user` false): a session belongs wholly to the side of
    its first event; sessions starting at or after the time that leaves the
    last `share` of the events after it go to the ranker. User split: a
    seeded `share` of the users (drawn from the sorted ids) go to the ranker.

    Raises:
      InputError: either side is left empty.
    """
    if not 0.0 < share < 1.0:
        raise InputError(f"must be between 0 and 1 (exclusive), got {share}",
                         key="ranking.ranker_share")
    if per_user:
        users = np.sort(pd.unique(train_events["user"].to_numpy(dtype=object)))
        count = int(round(len(users) * share))
        rng = np.random.default_rng([seed, 3])
        chosen = users[np.sort(rng.choice(len(users), size=min(count, len(users)),
                                          replace=False))]
        to_ranker = train_events["user"].isin(chosen).to_numpy()
    else:
        time = train_events["time"].to_numpy()
        cut = np.quantile(time, 1.0 - share, method="higher")
        start = time
        if "session" in train_events and train_events["session"].notna().any():
            start = train_events.groupby("session", sort=False)["time"].transform("min")
            start = np.where(train_events["session"].isna().to_numpy(), time, start.to_numpy())
        to_ranker = start >= cut
    split = RankerSplit(train_events[~to_ranker], train_events[to_ranker], per_user)
    if len(split.stage1) == 0 or len(split.ranker) == 0:
        raise InputError(f"ranker_share {share} leaves one side of the training period empty",
                         key="ranking.ranker_share")
    return split


def stage1_data(config: RunConfig, events: pd.DataFrame,
                items: pd.DataFrame | None) -> TrainingData:
    """The training pipelines of stage 1 on `events` (as `tfrec.run.prepare_training_data`
    makes them for a run, without held-out cases)."""
    vocab = build_vocabulary(events, items)
    sessions = sessionize(events, vocab, config.data.sessions,
                          config.data.pairs.event_weights, config.data.pairs.default_event_weight)
    pairs = PairPipeline(sessions, vocab, config.data.pairs)
    context = resolve_retrieval_context(config.model.retrieval_context, sessions)
    next_items = None
    streams = tuple(required_streams(config.model))
    if "next_items" in streams:
        next_items = NextItemPipeline(sessions, vocab, config.model.history_length,
                                      config.train.retrieval_batch_size, config.data.pairs.seed,
                                      context)
    empty = Cases([], np.zeros(0, np.int32), np.zeros(0, bool))
    return TrainingData(vocab, sessions, pairs, next_items, empty, None, len(events), 0,
                        retrieval_context=context, items=items, streams=streams)


def train_stage1(config: RunConfig, data: TrainingData, run_dir: str | Path,
                 verbose: int = 2):
    """Trains (or reuses, when its last epoch is there) the two-tower on stage 1's data.

    Returns:
      (model, vocab) restored from the run folder's last checkpoint.
    """
    import tfrec.distribute as distribute
    import tfrec.training as training

    run_dir = Path(run_dir)
    done = RunFolder(run_dir).read_history()
    if not (latest_checkpoint(run_dir) and done and done[-1]["epoch"] >= config.train.epochs):
        training.prepare_run_folder(run_dir, config, distribute.Worker(), resume=False,
                                    overwrite=True, config_changed=False)
        model = training.build_compiled_model(config, data, tf.distribute.get_strategy())
        training.fit(model, data, config, run_dir, distribute.Worker(), resume=False,
                     verbose=verbose)
    _, vocab, model, _ = load_run(run_dir)
    return model, vocab


def ranker_cases(events: pd.DataFrame, vocab: ItemVocabulary, config: RunConfig,
                 per_user: bool, seed: int, per_session: int = 1) -> tuple[Cases, np.ndarray]:
    """The ranker's cases from its events, in `vocab`'s index space.

    Each session (user) with two or more distinct items gives up to
    `per_session` cases, each hiding another of its items (the draws of
    `make_cases` with seeds seed, seed + 1, ...; a repeated draw is dropped).

    Returns:
      (cases, group [len(cases)]: the session each case comes from).
    """
    queries, targets, groups = [], [], []
    seen = set()
    for draw in range(per_session):
        cases = make_cases(events, vocab, seed + draw, config.data.sessions,
                           per_user=per_user)
        for group, (query, target) in enumerate(zip(cases.queries, cases.targets)):
            if (group, int(target)) in seen:
                continue
            seen.add((group, int(target)))
            queries.append(query)
            targets.append(int(target))
            groups.append(group)
    targets = np.asarray(targets, np.int32)
    return (Cases(queries, targets, vocab.counts[targets] == 0),
            np.asarray(groups, np.int64))


def index_map(source: ItemVocabulary, target: ItemVocabulary) -> np.ndarray:
    """[source.size] int64: each source index's index in `target` (0 where it has none)."""
    position = pd.Series(np.arange(target.size), index=pd.Index(target.ids.astype(str)))
    mapped = np.array(position.reindex(source.ids.astype(str)).fillna(0), dtype=np.int64)
    mapped[0] = 0
    return mapped


def split_validation(groups: np.ndarray, share: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows) of the ranker's cases: a seeded `share` of the
    sessions (`groups`, as `ranker_cases` gives), all of a session's cases on one side."""
    groups = np.asarray(groups)
    unique = np.unique(groups)
    rng = np.random.default_rng([seed, 4])
    held = rng.choice(unique, size=int(round(share * len(unique))), replace=False)
    is_val = np.isin(groups, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
