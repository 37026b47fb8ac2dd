"""Configuration dataclasses, one per stage of the pipeline.

All are frozen and hold only primitives, so they serialise to JSON/YAML as
they are. Layers take their config object itself (``ItemEncoder(num_items,
num_id_items, model_config)``) and echo it in ``get_config`` as a plain dict,
so a setting and its default are defined once, here.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import typing
from typing import Any, Literal, Mapping

from tfrec.errors import InputError

# The allowed values of every setting that names a choice, each defined once:
# the type of its config field, checked in the config's __post_init__, and
# imported by the layers, the pipelines and the command line.
PairMode = Literal["window", "set"]
Fusion = Literal["sum", "concat"]
Objective = Literal["skipgram", "retrieval", "both"]
# What a retrieval query is made of; "auto" is resolved from the data to one
# of the session contexts before training.
SessionContext = Literal["previous", "session"]
RetrievalContext = Literal["auto", SessionContext]
Pooling = Literal["mean", "recency", "attention"]
QueryItems = Literal["shared", "separate"]
Layout = Literal["online_retail", "goodbooks", "events"]
Optimizer = Literal["adam", "lazy_adam", "adagrad", "sgd"]
SplitBy = Literal["time", "user"]
Strategy = Literal["default", "mirrored", "multi_worker"]
IndexKind = Literal["scann", "brute_force"]

PAIR_MODES: tuple[str, ...] = typing.get_args(PairMode)
FUSIONS: tuple[str, ...] = typing.get_args(Fusion)
OBJECTIVES: tuple[str, ...] = typing.get_args(Objective)
SESSION_CONTEXTS: tuple[str, ...] = typing.get_args(SessionContext)
RETRIEVAL_CONTEXTS: tuple[str, ...] = typing.get_args(RetrievalContext)
POOLINGS: tuple[str, ...] = typing.get_args(Pooling)
QUERY_ITEMS: tuple[str, ...] = typing.get_args(QueryItems)
LAYOUTS: tuple[str, ...] = typing.get_args(Layout)
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
SPLITS: tuple[str, ...] = typing.get_args(SplitBy)
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)
INDEX_KINDS: tuple[str, ...] = typing.get_args(IndexKind)

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
        events' weights. A conversion type (`data.sessions.conversion_types`)
        not listed weighs `conversion_weight`; any other type not listed
        weighs `default_event_weight`.
      conversion_weight: weight of a conversion type `event_weights` does not
        list (so a custom conversion type weighs as a conversion).
      batch_size: pairs per batch of the tf.data pipeline.
      chunk_events: events per chunk: pairs are generated, shuffled and batched
        one chunk at a time, so memory does not grow with the corpus. Small
        chunks keep the working set in the CPU cache; batches mix pairs of
        one chunk (about chunk_events * 2W pairs), and chunks come in a
        random order each epoch.
      seed: seeds every random choice; the same seed gives the same batches.
    """

    mode: PairMode = "window"
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
    conversion_weight: float = 3.0
    batch_size: int = 4096
    chunk_events: int = 65_536
    seed: int = 42

    def __post_init__(self):
        _either("mode", self.mode, PAIR_MODES)
        _positive("window", self.window)
        _positive("batch_size", self.batch_size)
        _positive("chunk_events", self.chunk_events)
        for name in ("num_negatives", "market_negatives"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise InputError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}",
                                 key=name)
        if self.subsample < 0:
            raise InputError(f"subsample must be >= 0, got {self.subsample!r}", key="subsample")
        if not self.conversion_weight >= 0:
            raise InputError(f"conversion_weight must be >= 0, got {self.conversion_weight!r}",
                             key="data.pairs.conversion_weight")
        for key, value in self.event_weights.items():
            if not value >= 0:
                raise InputError(f"event weight of {key!r} must be >= 0, got {value!r}",
                                 key="event_weights")


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(map(repr, allowed))}, got "
                         f"{value!r}", key=name)


def _either(name: str, value: Any, allowed: tuple) -> None:
    """Like `_one_of`, worded "'a', 'b' or 'c'"."""
    if value not in allowed:
        raise InputError(f"{name} must be {choices_text(allowed)}, got {value!r}", key=name)


def choices_text(allowed: tuple) -> str:
    """The allowed values in words: "'a', 'b' or 'c'"."""
    quoted = [f"'{a}'" for a in allowed]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}", key=name)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The text tower: tokeniser and Conv1D encoder.

    Attributes:
      sequence_length: tokens kept per item text (longer texts are cut).
      max_tokens: size cap of the token vocabulary learned from item texts.
      min_token_count: a token must occur in this many item texts to get an id.
      token_dim: token embedding width.
      filters: Conv1D filters per width.
      widths: Conv1D kernel widths (one convolution per width, max-pooled).
      mean_tokens: also feed the mean of the token embeddings (a learned bag
        of words) to the projection.
      char_ngrams: widths of hashed character n-grams of each word whose
        mean embedding also joins the features (subwords: a new item's
        unseen or misspelt word still shares n-grams with known ones); empty:
        none.
      ngram_buckets: hash buckets of the character n-grams.
      max_ngrams: character n-grams kept per item text.
    """

    sequence_length: int = 12
    max_tokens: int = 20_000
    min_token_count: int = 1
    token_dim: int = 64
    filters: int = 64
    widths: tuple[int, ...] = (1, 2, 3)
    mean_tokens: bool = True
    char_ngrams: tuple[int, ...] = ()
    ngram_buckets: int = 50_000
    max_ngrams: int = 128

    def __post_init__(self):
        if any(not isinstance(w, int) or w <= 0 for w in self.char_ngrams):
            raise InputError(f"char_ngrams must be positive integers, got {self.char_ngrams!r}",
                             key="char_ngrams")
        for name in ("sequence_length", "max_tokens", "min_token_count", "token_dim", "filters",
                     "ngram_buckets", "max_ngrams"):
            _positive(name, getattr(self, name))
        if not self.widths or any(not isinstance(w, int) or w <= 0 for w in self.widths):
            raise InputError(f"widths must be positive integers, got {self.widths!r}",
                             key="widths")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The hybrid model.

    Attributes:
      embedding_dim: width of item, query and id embeddings.
      use_ids: learn an id embedding per item seen in training (item2vec).
      use_text: encode the item text (the cold-start path).
      fusion: how the id and text embeddings make one item embedding: "sum"
        (added in one shared space) or "concat" (each its own part of
        embedding_dim, so scores are a behaviour part plus a text part).
      text_share: with "concat", the share of embedding_dim given to the
        text part (the id part gets the rest).
      id_dropout: during training, hide an item's id embedding with this
        probability so that the text path alone must serve as the item's
        embedding, as it must for a new item (only with use_text); see the
        README for what it changes.
      text_gate: learn a weight in (0, 1) per warm item on its text part
        (how much its text counts beside its behaviour).
      normalize: L2-normalise item and query embeddings, so scores are
        cosines / temperature; false scores raw dot products (an item's length
        then carries how strongly it is predicted, as an EASE weight does).
      objective: "skipgram" (binary classification of pairs against sampled
        negatives: item2vec with Airbnb's global context), "retrieval" (TFRS
        softmax of session -> held-out item) or "both" (the two losses, each a
        mean over its batch, summed with `retrieval_weight`).
      temperature: logits are cosine / temperature.
      retrieval_weight: weight of the retrieval loss when objective is "both".
      text_alignment: weight of a loss pulling each warm item's text-only
        embedding towards its full (id + text) embedding, held fixed. Off by
        default: on the bundled data it lowered the cold-item hit rate (see
        the README).
      retrieval_context: what the query of a retrieval example is: "previous"
        (the session's events before the target: next-item prediction),
        "session" (the other events of the target's session: leave one out,
        for baskets and visits whose order carries no meaning) or "auto"
        (chosen from the data: "session" when most sessions of two or more
        events have a single timestamp, as baskets and data without time
        do, else "previous"; the data report and the training log say which).
      history_length: items of a session the query tower looks at (the last N).
      pooling: query tower pooling: "mean", "recency" or "attention".
      recency_decay: weight ratio between consecutive history items (recency).
      query_items: "shared" (the query tower pools the candidate tower's item
        embeddings: one Siamese item space, every score symmetric) or
        "separate" (the query tower has an item encoder of its own, like
        word2vec's input and output vectors: "bought with" need not be
        symmetric, and substitutes need not look like complements).
      history_dropout: during training, hide each item of a query's history
        with this probability (a denoising query).
      query_layers: widths of a ReLU MLP over the pooled history (residual;
        empty: the pooled history is the query).
      negatives: the retrieval softmax's negative sampler, a name of the
        registry `tfrec.tasks.samplers.SAMPLERS` (checked when the model is built).
      num_sampled: negatives per batch of a sampler that draws them.
    """

    embedding_dim: int = 256
    use_ids: bool = True
    use_text: bool = True
    fusion: Fusion = "concat"
    text_share: float = 0.5
    id_dropout: float = 0.1
    normalize: bool = True
    text_gate: bool = True
    objective: Objective = "retrieval"
    temperature: float = 0.09
    retrieval_weight: float = 1.0
    text_alignment: float = 0.0
    retrieval_context: RetrievalContext = "auto"
    history_length: int = 50
    pooling: Pooling = "mean"
    recency_decay: float = 0.9
    query_items: QueryItems = "shared"
    query_layers: tuple[int, ...] = ()
    history_dropout: float = 0.0
    negatives: str = "in_batch"
    num_sampled: int = 8192
    text: TextConfig = dataclasses.field(default_factory=TextConfig)

    def __post_init__(self):
        _positive("embedding_dim", self.embedding_dim)
        _positive("history_length", self.history_length)
        if not (self.use_ids or self.use_text):
            raise InputError("use_ids and use_text cannot both be false", key="use_text")
        if not 0.0 <= self.id_dropout < 1.0:
            raise InputError(f"id_dropout must be in [0, 1), got {self.id_dropout!r}",
                             key="id_dropout")
        _either("objective", self.objective, OBJECTIVES)
        _either("fusion", self.fusion, FUSIONS)
        if not 0.0 < self.text_share < 1.0:
            raise InputError(f"text_share must be in (0, 1), got {self.text_share!r}",
                             key="text_share")
        if self.fusion == "concat" and self.use_ids and self.use_text and not (
                1 <= int(self.embedding_dim * (1.0 - self.text_share)) < self.embedding_dim):
            raise InputError(f"text_share {self.text_share} of embedding_dim "
                             f"{self.embedding_dim} leaves one part no width", key="text_share")
        _either("retrieval_context", self.retrieval_context, RETRIEVAL_CONTEXTS)
        _either("pooling", self.pooling, POOLINGS)
        if self.text_alignment < 0:
            raise InputError(f"text_alignment must be >= 0, got {self.text_alignment!r}",
                             key="text_alignment")
        if not self.temperature > 0:
            raise InputError(f"temperature must be > 0, got {self.temperature!r}",
                             key="temperature")
        _one_of("query_items", self.query_items, QUERY_ITEMS)
        if not 0.0 <= self.history_dropout < 1.0:
            raise InputError(f"history_dropout must be in [0, 1), got {self.history_dropout!r}",
                             key="history_dropout")
        _positive("num_sampled", self.num_sampled)
        if any(not isinstance(w, int) or w <= 0 for w in self.query_layers):
            raise InputError(f"query_layers must be positive integers, got "
                             f"{self.query_layers!r}", key="query_layers")
        if not 0.0 < self.recency_decay <= 1.0:
            raise InputError(f"recency_decay must be in (0, 1], got {self.recency_decay!r}",
                             key="recency_decay")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it becomes training pairs.

    Attributes:
      layout: "online_retail" (UCI Online Retail file), "goodbooks"
        (goodbooks-10k: books, ratings and to-read shelves; see
        `tfrec.datasets.goodbooks`) or "events" (an events table, plus
        optional items table).
      events: events file (CSV, CSV.gz or Parquet); with layout
        "online_retail" the Online Retail file, with "goodbooks" the
        goodbooks-10k folder; null for those two: the data folder's copy.
      items: items file (id, text, optional market).
      data_dir: the data folder holding the public data sets
        (online_retail/, goodbooks_10k/); null: $TFREC_DATA, else
        ../shared/data (see `tfrec.datasets`).
      goodbooks_to_read: with layout "goodbooks", also read the to-read
        shelves (as "to_read" events), not only the ratings.
      strict: fail on the first bad row instead of counting and dropping it.
    """

    layout: Layout = "online_retail"
    events: str | None = None
    items: str | None = None
    data_dir: str | None = None
    goodbooks_to_read: bool = True
    strict: bool = False
    events_schema: EventsSchema = dataclasses.field(default_factory=EventsSchema)
    items_schema: ItemsSchema = dataclasses.field(default_factory=ItemsSchema)
    sessions: SessionConfig = dataclasses.field(default_factory=SessionConfig)
    pairs: PairConfig = dataclasses.field(default_factory=PairConfig)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise InputError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got "
                             f"{self.layout!r}", key="data.layout")
        if self.layout == "events" and not self.events:
            raise InputError("layout 'events' needs an events file", key="data.events")
        # A declared conversion type weighs as a conversion unless event_weights says otherwise.
        listed = {str(t).lower() for t in self.pairs.event_weights}
        missing = {t.lower(): self.pairs.conversion_weight for t in self.sessions.conversion_types
                   if t.lower() not in listed}
        if missing:
            weights = {**self.pairs.event_weights, **missing}
            object.__setattr__(self, "pairs",
                               dataclasses.replace(self.pairs, event_weights=weights))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training and the held-out evaluation.

    Attributes:
      epochs: passes over the training pairs.
      learning_rate: optimizer step size.
      optimizer: "adam", "lazy_adam" (Adam that updates only the embedding
        rows a step touches: the step cost stops growing with the catalogue),
        "adagrad" or "sgd".
      steps_per_epoch: cap on steps per epoch (null: the whole epoch); per
        worker under multi_worker, rounded up to a multiple of the number of
        workers.
      retrieval_batch_size: (history, next item) examples per retrieval batch.
      split_by: how the held-out cases are made: "time" (train before
        `split_date` or the last `split_fraction` of the time range, one case
        per later session) or "user" (a share `holdout_users` of the users
        never trains; one case per kept-out user: one of their items hidden,
        the rest the query), for data without meaningful time.
      split_date: with split_by "time", train on events before this date
        (YYYY-MM-DD) and evaluate on the sessions from it on.
      split_fraction: without a split date, hold out this last share of the
        time range (0: no held-out evaluation).
      holdout_users: with split_by "user", the share of users kept out of
        training (chosen with `eval_seed`).
      cold_items: share of the catalogue hidden from training entirely (no
        event of theirs trains; they stay in the catalogue with their text),
        chosen with `eval_seed`: cold-start targets on purpose. Needs an
        items table (the hidden items' text).
      eval_k: K of the hit rate (HR@K) and NDCG@K.
      eval_seed: seeds which item of each held-out session (or user) is
        hidden, and which users and items the user split keeps out.
      seed: seeds model initialisation.
      strategy: "default" (no tf.distribute strategy), "mirrored"
        (MirroredStrategy over the local devices) or "multi_worker"
        (MultiWorkerMirroredStrategy; the cluster comes from the TF_CONFIG
        environment variable). See `tfrec.distribute`.
    """

    epochs: int = 3
    learning_rate: float = 0.005
    optimizer: Optimizer = "adam"
    steps_per_epoch: int | None = None
    retrieval_batch_size: int = 1024
    split_by: SplitBy = "time"
    split_date: str | None = None
    split_fraction: float = 0.1
    holdout_users: float = 0.1
    cold_items: float = 0.0
    eval_k: int = 10
    eval_seed: int = 42
    seed: int = 42
    strategy: Strategy = "default"

    def __post_init__(self):
        _positive("epochs", self.epochs)
        _positive("retrieval_batch_size", self.retrieval_batch_size)
        _positive("eval_k", self.eval_k)
        if self.steps_per_epoch is not None:
            _positive("steps_per_epoch", self.steps_per_epoch)
        if not self.learning_rate > 0:
            raise InputError(f"learning_rate must be > 0, got {self.learning_rate!r}",
                             key="learning_rate")
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        if not 0.0 <= self.split_fraction < 1.0:
            raise InputError(f"split_fraction must be in [0, 1), got {self.split_fraction!r}",
                             key="split_fraction")
        _one_of("split_by", self.split_by, SPLITS)
        if not 0.0 < self.holdout_users < 1.0:
            raise InputError(f"holdout_users must be in (0, 1), got {self.holdout_users!r}",
                             key="holdout_users")
        if not 0.0 <= self.cold_items < 1.0:
            raise InputError(f"cold_items must be in [0, 1), got {self.cold_items!r}",
                             key="cold_items")
        _either("strategy", self.strategy, STRATEGIES)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs: data, model and training settings."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


ConfigT = typing.TypeVar("ConfigT")


def as_config(cls: type[ConfigT], value: ConfigT | Mapping | None) -> ConfigT:
    """`value` as a `cls` config: itself, the defaults (None), or built from a mapping.

    Layers take their config this way, so `from_config` can hand them the
    plain dict their `get_config` wrote (see `config_dict`).

    Raises:
      InputError: a mapping with an unknown key or a bad value.
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    return from_dict(cls, value)


def config_dict(config: Any) -> dict:
    """A config dataclass as plain JSON data (tuples as lists), for a layer's `get_config`."""
    return _plain(dataclasses.asdict(config))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(cls, data: Any, source: str | None = None, prefix: str = ""):
    """Builds a config dataclass from plain data, checking every key and type.

    Raises:
      InputError: naming the file and the dotted key that is unknown, of the
        wrong type or out of range.
    """
    if not isinstance(data, Mapping):
        raise InputError(f"expected a mapping of settings, got {type(data).__name__}",
                         path=source, key=prefix.rstrip(".") or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = [f for f in fields if f.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else (
                f" (known: {', '.join(fields)})")
            raise InputError(f"unknown setting{hint}", path=source, key=dotted)
        kwargs[key] = _coerce(hints[key], value, source, dotted)
        default = fields[key].default_factory
        if isinstance(kwargs[key], dict) and default is not dataclasses.MISSING:
            # A mapping setting (e.g. event_weights) adds to its defaults.
            kwargs[key] = {**default(), **kwargs[key]}
    try:
        return cls(**kwargs)
    except InputError as err:
        key = err.key if err.key and "." in err.key else f"{prefix}{err.key or ''}".rstrip(".")
        raise InputError(err.reason, path=source, key=key or None) from None


def _coerce(hint, value, source, key):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, key + ".")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, source, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(key, "a list", value, source)
        return tuple(_coerce(args[0], v, source, key) for v in value)
    if origin in (collections.abc.Mapping, dict):
        if not isinstance(value, Mapping):
            raise _wrong_type(key, "a mapping", value, source)
        return {str(k): _coerce(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise _wrong_type(key, "true or false", value, source)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(key, "an integer", value, source)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(key, "a number", value, source)
        return float(value)
    if hint is str:
        if isinstance(value, (datetime.date, datetime.datetime)):
            return value.isoformat()  # YAML reads 2011-10-01 as a date
        if not isinstance(value, str):
            raise _wrong_type(key, "text", value, source)
        return value
    return value


def _wrong_type(key, expected, value, source):
    return InputError(f"expected {expected}, got {value!r} ({type(value).__name__})",
                      path=source, key=key)
