"""Sessionisation: a user's events, ordered by time, split at gaps.

Sessions are held as flat arrays with row splits (like `tf.RaggedTensor`),
so every step is vectorised over all events at once.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import pandas as pd

from tfrec.config import RetrievalContext, SessionConfig, SessionContext
from tfrec.data.vocab import ItemVocabulary
from tfrec.errors import InputError


@dataclasses.dataclass
class Sessions:
    """Sessions as flat per-event arrays plus per-session arrays.

    Attributes:
      items: [num_events] int32 vocabulary index of each event's item.
      weights: [num_events] float32 event-type weight of each event.
      is_conversion: [num_events] bool, the event is a conversion.
      row_splits: [num_sessions + 1] int64; session s is events
        row_splits[s]:row_splits[s+1].
      converted: [num_sessions] int32 vocabulary index of the session's
        converted item (its last conversion), -1 where it has none.
      converted_weight: [num_sessions] float32 weight of that conversion event
        (0 where there is none).
      user: [num_sessions] int32 index into `user_ids`.
      start_time: [num_sessions] int64 epoch seconds of the first event.
      user_ids: user index -> user id.
      stats: counts gathered while sessionising, for the data report.
    """

    items: np.ndarray
    weights: np.ndarray
    is_conversion: np.ndarray
    row_splits: np.ndarray
    converted: np.ndarray
    converted_weight: np.ndarray
    user: np.ndarray
    start_time: np.ndarray
    user_ids: np.ndarray
    stats: dict = dataclasses.field(default_factory=dict)

    @property
    def num_sessions(self) -> int:
        return len(self.row_splits) - 1

    @property
    def num_events(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.row_splits)

    def session_ids(self) -> np.ndarray:
        """[num_events] int64 session index of every event."""
        return np.repeat(np.arange(self.num_sessions, dtype=np.int64), self.lengths)

    def slice(self, start: int, stop: int) -> "Sessions":
        """Sessions start:stop as a new Sessions (views where possible)."""
        lo, hi = self.row_splits[start], self.row_splits[stop]
        return Sessions(
            items=self.items[lo:hi], weights=self.weights[lo:hi],
            is_conversion=self.is_conversion[lo:hi],
            row_splits=self.row_splits[start:stop + 1] - lo,
            converted=self.converted[start:stop],
            converted_weight=self.converted_weight[start:stop], user=self.user[start:stop],
            start_time=self.start_time[start:stop], user_ids=self.user_ids)

    def to_lists(self, vocab: ItemVocabulary | None = None) -> list[list]:
        """Sessions as Python lists of item indices (or ids, given a vocabulary)."""
        values = self.items if vocab is None else vocab.ids[self.items]
        return [list(values[a:b]) for a, b in zip(self.row_splits[:-1], self.row_splits[1:])]


def sessionize(events: pd.DataFrame, vocab: ItemVocabulary,
               config: SessionConfig = SessionConfig(),
               event_weights: Mapping[str, float] | None = None,
               default_event_weight: float = 1.0) -> Sessions:
    """Splits events into sessions.

    Per user, events are ordered by time (ties keep file order, and events of
    one session id stay together). A new session starts where the user or the
    session id changes, or where the gap to the previous event is longer than
    `config.gap_minutes` (a gap of exactly gap_minutes does not split).
    Sessions longer than `config.max_length` are cut into consecutive pieces;
    each piece keeps the whole session's converted item as global context.

    Args:
      events: canonical events frame (see `events.read_events`).
      vocab: item vocabulary; every event's item must be in it.
      config: gap, length cap, de-duplication and conversion types.
      event_weights: event type -> weight (default: every event weighs
        `default_event_weight`).
      default_event_weight: weight of event types not in `event_weights`.

    Returns:
      Sessions with stats: events, users, sessions (before the cap), pieces
      (after it), capped sessions, converted sessions, merged repeats.
    """
    if len(events) == 0:
        raise InputError("no events to sessionise")
    user_codes, user_ids = pd.factorize(events["user"], sort=False)
    session_codes, _ = pd.factorize(events["session"], sort=False)  # NA -> -1
    time = events["time"].to_numpy(dtype=np.int64)
    order = np.lexsort((np.arange(len(events)), session_codes, time, user_codes))

    user_s = user_codes[order]
    time_s = time[order]
    sess_s = session_codes[order]
    items = vocab.lookup(events["item"].to_numpy(dtype=object)[order])
    if (items == 0).any():
        missing = events["item"].to_numpy(dtype=object)[order][items == 0][0]
        raise InputError(f"event item {missing!r} is not in the vocabulary")
    type_codes, type_names = pd.factorize(events["event"].to_numpy(dtype=object)[order])
    conversion_types = {t.lower() for t in config.conversion_types}
    # Per distinct type, then gathered: no Python work per event. Code -1 (no type)
    # reads the appended last entry.
    type_is_conv = np.array([str(t) in conversion_types for t in type_names] + [False])
    type_weight = np.array([(event_weights or {}).get(str(t), default_event_weight)
                            for t in type_names] + [default_event_weight], dtype=np.float32)
    is_conv = type_is_conv[type_codes]
    weights = type_weight[type_codes]

    new = np.ones(len(order), dtype=bool)
    new[1:] = ((user_s[1:] != user_s[:-1]) | (sess_s[1:] != sess_s[:-1])
               | (time_s[1:] - time_s[:-1] > config.gap_minutes * 60.0))
    stats = {"events": int(len(order)), "users": int(len(user_ids)),
             "sessions": int(new.sum())}

    merged = 0
    if config.dedupe_consecutive:
        repeat = ~new
        repeat[1:] &= items[1:] == items[:-1]
        repeat[0] = False
        merged = int(repeat.sum())
        if merged:
            starts = np.flatnonzero(~repeat)
            is_conv = np.logical_or.reduceat(is_conv, starts)
            weights = np.maximum.reduceat(weights, starts)
            items, user_s, time_s, new = items[starts], user_s[starts], time_s[starts], new[starts]
    stats["merged_repeats"] = merged

    session_of = np.cumsum(new) - 1
    num_sessions = int(session_of[-1]) + 1
    converted = np.full(num_sessions, -1, dtype=np.int32)
    conv_pos = np.flatnonzero(is_conv)
    # The last conversion of a session wins: later writes overwrite earlier ones.
    converted[session_of[conv_pos]] = items[conv_pos]
    converted_weight = np.zeros(num_sessions, dtype=np.float32)
    converted_weight[session_of[conv_pos]] = weights[conv_pos]
    stats["converted_sessions"] = int((converted >= 0).sum())
    stats["conversions"] = int(is_conv.sum())

    starts = np.flatnonzero(new)
    lengths = np.diff(np.append(starts, len(items)))
    position = np.arange(len(items)) - np.repeat(starts, lengths)
    piece_start = new | (position % config.max_length == 0)
    # Sessions of 2+ events whose events all share one timestamp (a basket,
    # or data without time): their order carries no meaning.
    multi = lengths >= 2
    same_time = np.logical_and.reduceat(
        np.append(time_s[1:] == time_s[:-1], True) | np.isin(
            np.arange(len(items)), starts + lengths - 1), starts)
    stats["multi_event_sessions"] = int(multi.sum())
    stats["unordered_sessions"] = int((same_time & multi).sum())
    stats["capped_sessions"] = int((lengths > config.max_length).sum())
    stats["length_median"] = float(np.median(lengths))
    stats["length_mean"] = float(lengths.mean())
    stats["length_max"] = int(lengths.max())
    stats["single_event_sessions"] = int((lengths == 1).sum())
    piece_starts = np.flatnonzero(piece_start)
    stats["pieces"] = int(len(piece_starts))
    return Sessions(
        items=items.astype(np.int32),
        weights=weights.astype(np.float32),
        is_conversion=is_conv,
        row_splits=np.append(piece_starts, len(items)).astype(np.int64),
        converted=converted[session_of[piece_starts]],
        converted_weight=converted_weight[session_of[piece_starts]],
        user=user_s[piece_starts].astype(np.int32),
        start_time=time_s[piece_starts],
        user_ids=np.asarray(user_ids, dtype=object),
        stats=stats,
    )


def session_order(sessions: Sessions) -> str:
    """"unordered" if most sessions of 2+ events have one timestamp, else "ordered".

    Baskets (an invoice's lines) and data without time (a reader's shelf)
    have no order within a session: a query there is the rest of the session
    (leave one out). Click streams have one: the query is what came before.
    """
    multi = sessions.stats.get("multi_event_sessions", 0)
    unordered = sessions.stats.get("unordered_sessions", 0)
    return "unordered" if multi and unordered * 2 >= multi else "ordered"


def resolve_retrieval_context(context: RetrievalContext, sessions: Sessions) -> SessionContext:
    """`model.retrieval_context` with "auto" resolved from the data (see `session_order`)."""
    if context != "auto":
        return context
    return "session" if session_order(sessions) == "unordered" else "previous"
