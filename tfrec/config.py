"""Configuration dataclasses, one per stage of the pipeline.

All are frozen and hold only primitives, so they serialise to JSON/YAML as
they are and reach Keras layers as ``Layer(**dataclasses.asdict(cfg))``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from tfrec.errors import InputError

DEFAULT_CONVERSION_TYPES = ("purchase", "book", "booking", "apply", "conversion", "order")


@dataclasses.dataclass(frozen=True)
class EventsSchema:
    """Column names of an events table (user, item, time, optional type/session)."""

    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    event_col: str | None = None
    session_col: str | None = None
    # strftime format of the time column; None parses ISO-8601 text, and
    # numeric columns are read as epoch time in `time_unit`.
    time_format: str | None = None
    time_unit: str = "s"


@dataclasses.dataclass(frozen=True)
class ItemsSchema:
    """Column names of an items table (id, text, optional market/category)."""

    item_col: str = "item_id"
    text_col: str = "text"
    market_col: str | None = None


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """How events become sessions.

    Attributes:
      gap_minutes: a gap longer than this between two events of a user starts
        a new session (Airbnb uses 30 minutes). A change of session id, where
        the events carry one, always does.
      max_length: sessions longer than this are cut into consecutive pieces
        of at most this many events (every event is kept).
      dedupe_consecutive: collapse an item repeated back to back into one event.
      conversion_types: event types that convert (the session's converted item
        becomes its global context).
    """

    gap_minutes: float = 30.0
    max_length: int = 50
    dedupe_consecutive: bool = True
    conversion_types: tuple[str, ...] = DEFAULT_CONVERSION_TYPES


@dataclasses.dataclass(frozen=True)
class PairConfig:
    """Skip-gram pair generation with negative sampling.

    Attributes:
      mode: "window" (W items on each side) or "set" (the whole session is
        context, as item2vec does for baskets).
      window: W, used in window mode.
      global_context: pair every item of a converted session with the
        converted item (Airbnb KDD 2018), whatever the window.
      subsample: word2vec frequent-item subsampling threshold t (keep an event
        of an item with corpus frequency f with probability
        (sqrt(f/t) + 1) * t/f); 0 turns it off. Conversions are never dropped.
      num_negatives: negatives per pair drawn from unigram^power.
      market_negatives: extra negatives per pair drawn from the centre item's
        own market/category (same distribution restricted to that market).
      negative_power: exponent of the unigram distribution (0.75 in word2vec).
      event_weights: event type -> weight; a pair weighs the larger of its two
        events' weights. Types not listed weigh `default_event_weight`.
      batch_size: pairs per batch of the tf.data pipeline.
      chunk_events: events per chunk: pairs are generated, shuffled and batched
        one chunk at a time, so memory does not grow with the corpus. Small
        chunks keep the working set in the CPU cache; batches mix pairs of
        one chunk (about chunk_events * 2W pairs), and chunks come in a
        random order each epoch.
      seed: seeds every random choice; the same seed gives the same batches.
    """

    mode: str = "window"
    window: int = 5
    global_context: bool = True
    subsample: float = 1e-3
    num_negatives: int = 5
    market_negatives: int = 0
    negative_power: float = 0.75
    event_weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"click": 1.0, "view": 1.0, "purchase": 3.0, "book": 3.0,
                                 "booking": 3.0, "apply": 3.0, "conversion": 3.0, "order": 3.0})
    default_event_weight: float = 1.0
    batch_size: int = 4096
    chunk_events: int = 65_536
    seed: int = 42

    def __post_init__(self):
        if self.mode not in ("window", "set"):
            raise InputError(f"mode must be 'window' or 'set', got {self.mode!r}", key="mode")
        _positive("window", self.window)
        _positive("batch_size", self.batch_size)
        _positive("chunk_events", self.chunk_events)
        for name in ("num_negatives", "market_negatives"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise InputError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}",
                                 key=name)
        if self.subsample < 0:
            raise InputError(f"subsample must be >= 0, got {self.subsample!r}", key="subsample")
        for key, value in self.event_weights.items():
            if not value >= 0:
                raise InputError(f"event weight of {key!r} must be >= 0, got {value!r}",
                                 key="event_weights")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}", key=name)
