"""The split of a run's events into a training slice and held-out cases.

Time split: train on events before the split (a date, or the time after
which the last `split_fraction` of the events lies), test on sessions from
the split on. Each test session with at least two distinct items is a case: one
of its items, chosen with a fixed seed, is held out; the query is the rest.

User split (data without meaningful time): a seeded share of the users is
kept out of training; each kept-out user with at least two distinct items
is one case, made the same way from all of that user's items.

Either split may also hide a seeded share of the catalogue from training
entirely (`cold_items`): those items keep their text and stay candidates.
A time split may first leave out every session from a date on (`until`):
a validation run then never sees the held-out period of the run it tunes.

A target is *warm* if it has events in the training slice, *cold* otherwise.
Training, evaluation and the data report all split through this module, so
they agree on what is trained on and what is held out.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from tfrec.config import SessionConfig, TrainConfig
from tfrec.data.sessions import sessionize
from tfrec.data.vocab import ItemVocabulary
from tfrec.errors import InputError

logger = logging.getLogger(__name__)


def parse_split_date(value: str, key: str = "train.split_date") -> int:
    """YYYY-MM-DD, or another ISO 8601 date and time (a zone is converted to UTC, as the
    events' times are) -> epoch seconds. Nothing else is guessed: 10/05/2024 would be
    May or October by which number is over 12."""
    try:
        stamp = pd.to_datetime(str(value), format="ISO8601", utc=True)
    except (ValueError, TypeError):
        raise InputError(f"cannot parse split date {value!r} (use YYYY-MM-DD, or an ISO 8601 "
                         "date and time such as 2024-05-20T12:00)", key=key) from None
    return int(stamp.tz_convert("UTC").tz_localize(None).value // 10**9)


def fraction_cut(time: np.ndarray, fraction: float) -> int:
    """The time split's cut that leaves about `fraction` of the events on or after it.

    The cut is an event time: of the two event times around the exact share
    (events sharing a timestamp stay on one side), the one whose held-out
    count is nearer `fraction` of the events; at least one event is held out.
    """
    ordered = np.sort(np.asarray(time, dtype=np.int64))
    want = max(1, int(round(len(ordered) * fraction)))
    at = ordered[len(ordered) - want]  # on or after it: `want` events or more (ties)
    after_at = len(ordered) - int(np.searchsorted(ordered, at, side="left"))
    later = int(np.searchsorted(ordered, at, side="right"))
    if later < len(ordered):
        after_later = len(ordered) - later  # fewer than `want`
        if want - after_later < after_at - want:
            return int(ordered[later])
    return int(at)


def session_start(events: pd.DataFrame) -> np.ndarray:
    """Each event's session's first time (its own time where the events carry no session)."""
    time = events["time"].to_numpy()
    if not events["session"].notna().any():
        return time
    start = events.groupby("session", sort=False)["time"].transform("min").to_numpy()
    return np.where(events["session"].isna().to_numpy(), time, start)


def leave_out_from(events: pd.DataFrame, until: str) -> pd.DataFrame:
    """The events of the sessions that start before `until` (`train.until`).

    Raises:
      InputError: an unreadable date, or no event before it.
    """
    cut = parse_split_date(until, key="train.until")
    kept = events[session_start(events) < cut]
    if len(kept) == 0:
        raise InputError(f"no events before {until}: nothing left to train or hold out",
                         key="train.until")
    return kept


def split_events(events: pd.DataFrame, split_date: str | None = None,
                 split_fraction: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame, int | None]:
    """(train, test, cut) by date, or with the last `split_fraction` of the events held out.

    With `split_fraction` the split is still by time: the cut is the event
    time after which about that share of the events lies (`fraction_cut`).
    A session (session id, where the events have one) belongs wholly to the
    side of its first event, so no test session leaks into training; the
    held-out share of the events can therefore differ a little from
    `split_fraction`.
    """
    time = events["time"].to_numpy()
    if split_date is not None:
        cut = parse_split_date(split_date)
    elif split_fraction > 0:
        cut = fraction_cut(time, split_fraction)
    else:
        return events, events.iloc[:0], None
    start = session_start(events)
    train, test = events[start < cut], events[start >= cut]
    if len(train) == 0:
        if len(time) and time.min() == time.max():
            raise InputError(
                f"every event has the same time ({pd.Timestamp(int(time[0]), unit='s')}: "
                "data without timestamps, as goodbooks-10k's), so a split by time cannot "
                "hold any out: split by user (train.split_by=user, as "
                "tfrec/configs/goodbooks.yaml does)", key="train.split_by")
        if split_date is not None:
            raise InputError(f"no training events before the split ({split_date})",
                             key="train.split_date")
        raise InputError(f"no training events before the split at "
                         f"{pd.Timestamp(cut, unit='s')} (every event shares the time of the "
                         f"last {split_fraction:g} of the events)", key="train.split_fraction")
    return train, test, cut


def split_by_user(events: pd.DataFrame, holdout_users: float,
                  seed: int = TrainConfig.eval_seed
                  ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(train, test, kept-out user ids): every event of a kept-out user is in test.

    `holdout_users` of the users (at least one, never all) are drawn with
    `seed` from the sorted user ids, so the choice does not depend on row
    order.
    """
    users = np.sort(pd.unique(events["user"].to_numpy(dtype=object)))
    if len(users) < 2:
        raise InputError("the user split needs at least two users", key="train.split_by")
    count = min(len(users) - 1, max(1, int(round(len(users) * holdout_users))))
    rng = np.random.default_rng([seed, 1])
    kept_out = users[np.sort(rng.choice(len(users), size=count, replace=False))]
    out = events["user"].isin(kept_out).to_numpy()
    return events[~out], events[out], kept_out


def hide_items(catalogue: np.ndarray, share: float,
               seed: int = TrainConfig.eval_seed) -> np.ndarray:
    """A seeded `share` of the catalogue's item ids (sorted first: row order does not matter)."""
    ids = np.sort(pd.unique(np.asarray(catalogue, dtype=object)))
    count = int(round(len(ids) * share))
    if count == 0:
        return ids[:0]
    rng = np.random.default_rng([seed, 2])
    return ids[np.sort(rng.choice(len(ids), size=count, replace=False))]


@dataclasses.dataclass
class Split:
    """The training slice and the held-out events of a run's protocol.

    Attributes:
      train: events that train the model.
      test: events the cases come from (session by session for the time
        split, user by user for the user split).
      per_user: cases are made per user (the user split), not per session.
      cut: the time split's cut (epoch seconds), None otherwise.
      kept_out_users: the user split's kept-out user ids.
      hidden_items: item ids hidden from training (`cold_items`).
    """

    train: pd.DataFrame
    test: pd.DataFrame
    per_user: bool = False
    cut: int | None = None
    kept_out_users: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, object))
    hidden_items: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, object))


def split_for_training(events: pd.DataFrame, items: pd.DataFrame | None,
                       train_config: TrainConfig) -> Split:
    """The split a `TrainConfig` asks for (split_by, dates or users, cold_items).

    Raises:
      InputError: no training events left, or cold_items without item text.
    """
    c = train_config
    if c.until is not None:
        if c.split_by != "time":
            raise InputError("train.until leaves out a period by time: it needs split_by: time",
                             key="train.until")
        if c.split_date is not None and (parse_split_date(c.split_date)
                                         >= parse_split_date(c.until, key="train.until")):
            raise InputError(f"the split date ({c.split_date}) must come before "
                             f"train.until ({c.until})", key="train.split_date")
        before = len(events)
        events = leave_out_from(events, c.until)
        logger.info("train.until %s: %d of %d events left out (their sessions start on or "
                    "after it)", c.until, before - len(events), before)
    if c.split_by == "user":
        if c.split_date is not None:
            logger.info("train.split_date (%s) is not used under train.split_by: user (the "
                        "held-out side is a share of the users, train.holdout_users = %s)",
                        c.split_date, c.holdout_users)
        train, test, kept_out = split_by_user(events, c.holdout_users, c.eval_seed)
        split = Split(train, test, per_user=True, kept_out_users=kept_out)
    else:
        train, test, cut = split_events(events, c.split_date, c.split_fraction)
        split = Split(train, test, cut=cut)
    if c.cold_items > 0:
        if items is None:
            raise InputError("hiding items from training needs their text: give an items "
                             "table (data.items) or set train.cold_items: 0",
                             key="train.cold_items")
        split.hidden_items = hide_items(items["item"].to_numpy(dtype=object), c.cold_items,
                                        c.eval_seed)
        split.train = split.train[~split.train["item"].isin(split.hidden_items).to_numpy()]
    if len(split.train) == 0:
        raise InputError("no training events left after the split", key="train.split_by")
    return split


@dataclasses.dataclass
class Cases:
    """Evaluation cases: queries (item index lists), held-out targets, cold flags.

    `users` (optional): [n] int the user each case comes from (cases of one user
    are not independent: `tfrec.evaluate.noise` resamples users, not cases).
    """

    queries: list
    targets: np.ndarray
    cold: np.ndarray
    unknown_targets: int = 0
    users: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)


def make_cases(test_events: pd.DataFrame, vocab: ItemVocabulary,
               seed: int = TrainConfig.eval_seed,
               session_config: SessionConfig = SessionConfig(), per_user: bool = False
               ) -> Cases:
    """One case per test session (per user, with `per_user`) with >= 2 distinct items.

    See the module doc. Targets unknown to the catalogue (no text, no
    training events) cannot be ranked by any model; they are counted in
    `unknown_targets`, not dropped silently.
    """
    if len(test_events) == 0:
        return Cases([], np.zeros(0, np.int32), np.zeros(0, bool))
    if per_user:
        # All of a user's events are one session: one session id, one time.
        test_events = test_events.assign(session=test_events["user"], time=0)
    # Whole sessions (no length cap): a case is the whole basket or visit.
    config = dataclasses.replace(session_config, max_length=1 << 30, dedupe_consecutive=False)
    ids = np.concatenate([vocab.ids, pd.unique(test_events["item"].to_numpy(dtype=object))])
    # Sessionise over a vocabulary that knows every test item; unknown ones
    # get indices past the catalogue.
    extended = ItemVocabulary(ids=pd.unique(ids), text=np.zeros(0), market=np.zeros(0),
                              market_names=[], counts=np.zeros(0))
    sessions = sessionize(test_events, extended, config)
    rng = np.random.default_rng(seed)
    queries, targets, users = [], [], []
    for s, (a, b) in enumerate(zip(sessions.row_splits[:-1], sessions.row_splits[1:])):
        distinct = list(dict.fromkeys(sessions.items[a:b].tolist()))
        if len(distinct) < 2:
            continue
        held = int(rng.integers(len(distinct)))
        targets.append(distinct[held])
        users.append(int(sessions.user[s]))
        queries.append([i for i in distinct[:held] + distinct[held + 1:] if i < vocab.size])
    targets = np.asarray(targets, dtype=np.int64)
    unknown = targets >= vocab.size
    keep = ~unknown
    cases_targets = targets[keep].astype(np.int32)
    return Cases(queries=[q for q, k in zip(queries, keep) if k], targets=cases_targets,
                 cold=vocab.counts[cases_targets] == 0, unknown_targets=int(unknown.sum()),
                 users=np.asarray(users, np.int64)[keep])


def cases_fingerprint(cases: Cases) -> str:
    """A SHA-256 of the cases (each query's items and its target, in order): equal for the
    same data, split and seed; another when the data read changed."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(np.asarray(cases.targets, np.int64).tobytes())
    digest.update(np.asarray([len(q) for q in cases.queries], np.int64).tobytes())
    for query in cases.queries:
        digest.update(np.asarray(query, np.int64).tobytes())
    return digest.hexdigest()
