"""The settings schema: one frozen dataclass per stage of the pipeline and per command.

Every setting is declared once, with `setting(default, help, ...)`: its
default, its help text, its allowed values (a `Literal` field type, or a
range `check`) and, if it has one, its command-line flag. From that one
declaration come the checks (with the full dotted key in every error, e.g.
``model.text_share``), the YAML/JSON loader (`from_dict`), the command line's
options (`tfrec.cli`) and the settings reference, `tfrec/configs/SETTINGS.md`
(``python -m tfrec.config --reference tfrec/configs/SETTINGS.md``).

The run config (`RunConfig`: sections ``data``, ``model``, ``train``) is
what a run trains with and saves; the command settings (``training``,
``prepare``, ``evaluate``, ``export``, ``index``, ``serve``, ``recommend``)
are what one command is asked to do. All hold only primitives, so they
serialise to JSON/YAML as they are. Layers never see them: a layer takes its
own arguments (primitives, and the sub-layers it composes) and echoes them in
``get_config``; `tfrec.models.builder` turns the config into layers (the one
reader of `ModelConfig`).

How a declaration becomes checks and a loader is `tfrec.schema`; this module
holds the declarations, where each section sits, and the reference. It
imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

from tfrec.errors import InputError
# The run layer and the command line read settings through these.
from tfrec.schema import choices_text, from_dict, section_prefix  # noqa: F401
from tfrec.schema import (INNER_SHARE, POSITIVE, SEED, SHARE, Settings, above, at_least, choices,
                          each, expected_type, integer_at_least, integer_between, is_number,
                          is_optional, literal_values, plain, register_sections, section, setting,
                          strip_optional, type_hints, within)

# The largest k a signature takes (an int32).
INT32_MAX = 2**31 - 1

# The allowed values of every setting that names a choice, each defined once:
# the type of its config field (checked from that type), imported by the
# layers, the pipelines and the command line.
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
TableEstimator = Literal["auto", "ease", "neighbourhood"]
# The units of an epoch-number time column (pandas' `to_datetime` units).
TimeUnit = Literal["s", "ms", "us", "ns"]

# The values the layers and the pipelines check an argument against (the settings are
# checked from their field types).
FUSIONS: tuple[str, ...] = typing.get_args(Fusion)
SESSION_CONTEXTS: tuple[str, ...] = typing.get_args(SessionContext)
POOLINGS: tuple[str, ...] = typing.get_args(Pooling)
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)
TABLE_ESTIMATORS: tuple[str, ...] = typing.get_args(TableEstimator)

DEFAULT_CONVERSION_TYPES = ("purchase", "book", "booking", "apply", "conversion", "order")


# The run config: data, model and training ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EventsSchema(Settings):
    """Column names of an events table (user, item, time, optional type/session)."""

    user_col: str = setting("user_id", "column of the user id")
    item_col: str = setting("item_id", "column of the item id")
    time_col: str = setting("timestamp", "column of the event time")
    event_col: str | None = setting(None, "column of the event type (click, purchase, ...); "
                                          "null: every event is of one type")
    session_col: str | None = setting(None, "column of a session id; a change of it always "
                                            "starts a new session")
    time_format: str | None = setting(
        None, "strftime format of the time column; null parses ISO-8601 text, and numeric "
              "columns are read as epoch time in `time_unit`")
    time_unit: TimeUnit = setting("s", "unit of a numeric time column: seconds, milliseconds, "
                                       "microseconds or nanoseconds since 1970-01-01 UTC")

    def check(self):
        _distinct_columns(self, ("user_col", "item_col", "time_col", "event_col",
                                 "session_col"))


@dataclasses.dataclass(frozen=True)
class ItemsSchema(Settings):
    """Column names of an items table (id, text, optional market/category)."""

    item_col: str = setting("item_id", "column of the item id")
    text_col: str = setting("text", "column of the item text (title, description)")
    market_col: str | None = setting(None, "column of the item's market or category "
                                           "(for `data.pairs.market_negatives`)")

    def check(self):
        _distinct_columns(self, ("item_col", "text_col", "market_col"))


def _distinct_columns(schema: Settings, names: tuple[str, ...]) -> None:
    """Refuses two roles of a table's schema naming one column (a column read as both the
    event type and the time, say, trains on nonsense or fails naming another setting)."""
    seen: dict[str, str] = {}
    for name in names:
        column = getattr(schema, name)
        if column is None:
            continue
        if column in seen:
            raise InputError(f"{schema.key(seen[column])} and {schema.key(name)} both name the "
                             f"column {column!r}: each role needs a column of its own",
                             key=schema.key(name))
        seen[column] = name


@dataclasses.dataclass(frozen=True)
class SessionConfig(Settings):
    """How events become sessions."""

    gap_minutes: float = setting(
        30.0, "a gap longer than this (minutes) between two events of a user starts a new "
              "session, as Airbnb's listing embeddings do; a change of session id, where the "
              "events carry one, always does", check=above(0))
    max_length: int = setting(50, "sessions longer than this are cut into consecutive pieces "
                                  "of at most this many events (every event is kept)",
                              check=integer_at_least(2))
    dedupe_consecutive: bool = setting(True, "collapse an item repeated back to back into one "
                                             "event")
    conversion_types: tuple[str, ...] = setting(
        DEFAULT_CONVERSION_TYPES, "event types that convert (the session's converted item "
                                  "becomes its global context)")


@dataclasses.dataclass(frozen=True)
class PairConfig(Settings):
    """Skip-gram pair generation with negative sampling."""

    mode: PairMode = setting("window", "'window' (`window` items on each side) or 'set' (the "
                                       "whole session is context, as item2vec does for "
                                       "baskets)")
    window: int = setting(5, "items on each side of the centre item, in window mode",
                          check=POSITIVE)
    global_context: bool = setting(True, "pair every item of a converted session with the "
                                         "converted item (Airbnb KDD 2018), whatever the window")
    subsample: float = setting(
        1e-3, "word2vec frequent-item subsampling threshold t (keep an event of an item with "
              "corpus frequency f with probability (sqrt(f/t) + 1) * t/f); 0 turns it off. "
              "Conversions are never dropped", check=at_least(0))
    num_negatives: int = setting(5, "negatives per pair drawn from unigram^negative_power",
                                 check=integer_at_least(0))
    market_negatives: int = setting(
        0, "extra negatives per pair drawn from the centre item's own market/category (the "
           "same distribution restricted to that market)", check=integer_at_least(0))
    negative_power: float = setting(0.75, "exponent of the unigram distribution negatives are "
                                          "drawn from (word2vec's choice)")
    event_weights: Mapping[str, float] = setting(
        {"click": 1.0, "view": 1.0, "purchase": 3.0, "book": 3.0, "booking": 3.0, "apply": 3.0,
         "conversion": 3.0, "order": 3.0},
        "event type -> weight (types are read in lower case, these keys too); a pair weighs "
        "the larger of its two events' weights. A "
        "conversion type (`data.sessions.conversion_types`) not listed weighs "
        "`conversion_weight`; any other type not listed weighs `default_event_weight`. A "
        "mapping given adds to these. Only the skip-gram pairs are weighed: "
        "model.objective 'skipgram' or 'both'; under 'retrieval' (the default) the event "
        "weights do nothing, and prepare and train warn when they are set")
    default_event_weight: float = setting(1.0, "weight of an event type neither "
                                               "`event_weights` nor the conversion types list",
                                          check=at_least(0))
    conversion_weight: float = setting(3.0, "weight of a conversion type `event_weights` does "
                                            "not list (so a custom conversion type weighs as a "
                                            "conversion)", check=at_least(0))
    batch_size: int = setting(4096, "pairs per batch of the tf.data pipeline", check=POSITIVE)
    chunk_events: int = setting(
        65_536, "events per chunk: pairs are generated, shuffled and batched one chunk at a "
                "time, so memory does not grow with the corpus. Small chunks keep the working "
                "set in the CPU cache; batches mix pairs of one chunk (about chunk_events * "
                "2 * window pairs), and chunks come in a random order each epoch",
        check=POSITIVE)
    seed: int = setting(42, "seeds every random choice of the data pipelines: the order and "
                            "make-up of the batches, the skip-gram pairs' and the retrieval "
                            "batches' alike; the same seed gives the same batches",
                        check=SEED)

    def check(self):
        for key, value in self.event_weights.items():
            if not (is_number(value) and value >= 0):
                raise InputError(f"the weight of {key!r} must be >= 0, got {value!r}",
                                 key=self.key(f"event_weights.{key}"))
        # Event types are read in lower case (as conversion_types): so are their weights'
        # keys (a key given in the config comes after the defaults, so `Purchase: 4` wins
        # over the default `purchase`).
        lowered = {}
        for key, value in self.event_weights.items():
            lowered[str(key).lower()] = value
        if lowered != dict(self.event_weights):
            object.__setattr__(self, "event_weights", lowered)


@dataclasses.dataclass(frozen=True)
class TextConfig(Settings):
    """The text tower: tokeniser and Conv1D encoder."""

    sequence_length: int = setting(12, "tokens kept per item text (longer texts are cut)",
                                   check=POSITIVE)
    max_tokens: int = setting(20_000, "size cap of the token vocabulary learned from item "
                                      "texts", check=POSITIVE)
    min_token_count: int = setting(1, "a token must occur in this many item texts to get an id",
                                   check=POSITIVE)
    token_dim: int = setting(64, "token embedding width", check=POSITIVE)
    filters: int = setting(64, "Conv1D filters per width", check=POSITIVE)
    widths: tuple[int, ...] = setting(
        (1, 2, 3), "Conv1D kernel widths (one convolution per width, max-pooled)",
        check=each(POSITIVE, "positive integers", non_empty=True))
    mean_tokens: bool = setting(True, "also feed the mean of the token embeddings (a learned "
                                      "bag of words) to the projection")
    char_ngrams: tuple[int, ...] = setting(
        (), "widths of hashed character n-grams of each word whose mean embedding also joins "
            "the features (subwords: a new item's unseen or misspelt word still shares n-grams "
            "with known ones); empty: none", check=each(POSITIVE, "positive integers"))
    ngram_buckets: int = setting(50_000, "hash buckets of the character n-grams",
                                 check=POSITIVE)
    max_ngrams: int = setting(128, "character n-grams kept per item text", check=POSITIVE)
    tokenizer_rules: int = setting(
        2, "how texts become words (the text tower's tokens and the ranker's TF-IDF terms): "
           "the default, the current rules, strips HTML tags and entities and makes each "
           "Chinese or Japanese character a word; 1, the first rules, does neither (a run saved "
           "before this setting reads as the rules its token vocabulary was learned with, so "
           "that a new item's text is read as that vocabulary was)",
        check=integer_between(1, 2))


@dataclasses.dataclass(frozen=True)
class ModelConfig(Settings):
    """The hybrid model."""

    embedding_dim: int = setting(256, "width of item, query and id embeddings", check=POSITIVE)
    use_ids: bool = setting(True, "learn an id embedding per item seen in training (item2vec)")
    use_text: bool = setting(True, "encode the item text (the cold-start path)")
    fusion: Fusion = setting(
        "concat", "how the id and text embeddings make one item embedding: 'sum' (added in one "
                  "shared space) or 'concat' (each its own part of embedding_dim, so scores "
                  "are a behaviour part plus a text part)")
    text_share: float = setting(0.5, "with fusion 'concat', the share of embedding_dim given "
                                     "to the text part (the id part gets the rest)",
                                check=INNER_SHARE)
    id_dropout: float = setting(
        0.1, "during training, hide an item's id embedding with this probability so that the "
             "text path alone must serve as the item's embedding, as it must for a new item "
             "(only with use_text); bench/RESULTS.md, \"Model choices\", has what it changes",
        check=SHARE)
    normalize: bool = setting(
        True, "L2-normalise item and query embeddings, so scores are cosines / temperature; "
              "false scores raw dot products (an item's length then carries how strongly it "
              "is predicted, as an EASE weight does)")
    text_gate: bool = setting(True, "learn a weight in (0, 1) per warm item on its text part "
                                    "(how much its text counts beside its behaviour)")
    objective: Objective = setting(
        "retrieval", "'skipgram' (binary classification of pairs against sampled negatives: "
                     "item2vec with Airbnb's global context), 'retrieval' (TFRS softmax of "
                     "session -> held-out item) or 'both' (the two losses, each a mean over "
                     "its batch, summed with `retrieval_weight`)")
    temperature: float = setting(0.09, "logits are cosine / temperature", check=above(0))
    retrieval_weight: float = setting(1.0, "weight of the retrieval loss when objective is "
                                           "'both'")
    text_alignment: float = setting(
        0.0, "weight of a loss pulling each warm item's text-only embedding towards its full "
             "(id + text) embedding, held fixed. Off by default: on the bundled data it "
             "lowered the cold-item hit rate (bench/RESULTS.md, \"Model choices\")",
        check=at_least(0))
    retrieval_context: RetrievalContext = setting(
        "auto", "what the query of a retrieval example is: 'previous' (the session's events "
                "before the target: next-item prediction), 'session' (the other events of the "
                "target's session: leave one out, for baskets and visits whose order carries "
                "no meaning) or 'auto' (chosen from the data: 'session' when most sessions of "
                "two or more events have a single timestamp, as baskets and data without time "
                "do, else 'previous'; the data report and the training log say which)")
    history_length: int = setting(50, "items of a session the query tower looks at (the last "
                                      "N)", check=POSITIVE)
    pooling: Pooling = setting("mean", "query tower pooling: 'mean', 'recency' (weights "
                                       "decaying by `recency_decay`) or 'attention'")
    recency_decay: float = setting(0.9, "weight ratio between consecutive history items "
                                        "(pooling 'recency')", check=within(0, 1, "(]"))
    query_items: QueryItems = setting(
        "shared", "'shared' (the query tower pools the candidate tower's item embeddings: one "
                  "Siamese item space, every score symmetric) or 'separate' (the query tower "
                  "has an item encoder of its own, like word2vec's input and output vectors: "
                  "'bought with' need not be symmetric, and substitutes need not look like "
                  "complements)")
    query_layers: tuple[int, ...] = setting(
        (), "widths of a ReLU MLP over the pooled history (residual; empty: the pooled "
            "history is the query)", check=each(POSITIVE, "positive integers"))
    history_dropout: float = setting(0.0, "during training, hide each item of a query's "
                                          "history with this probability (a denoising query)",
                                     check=SHARE)
    negatives: str = setting(
        "in_batch", "the retrieval softmax's negative sampler, a name of the registry "
                    "`tfrec.tasks.samplers.SAMPLERS`: 'in_batch' (the batch's other candidates, "
                    "logQ-corrected), 'catalogue' (every warm item, an exact softmax), 'sampled' "
                    "(`num_sampled` warm items drawn uniformly per batch) or 'mixed' (in-batch "
                    "plus `num_sampled` uniform ones)",
        checked_by="the negative samplers' registry (`tfrec.tasks.samplers`), at the start "
                   "of `tfrec train` and `tfrec prepare`")
    num_sampled: int = setting(8192, "negatives per batch of a sampler that draws them "
                                     "('sampled', 'mixed')", check=POSITIVE)
    text: TextConfig = section(TextConfig)

    def check(self):
        if not (self.use_ids or self.use_text):
            raise InputError("use_ids and use_text cannot both be false",
                             key=self.key("use_text"))
        if self.fusion == "concat" and self.use_ids and self.use_text and not (
                1 <= int(self.embedding_dim * (1.0 - self.text_share)) < self.embedding_dim):
            raise InputError(f"text_share {self.text_share} of embedding_dim "
                             f"{self.embedding_dim} leaves one part no width",
                             key=self.key("text_share"))


@dataclasses.dataclass(frozen=True)
class DataConfig(Settings):
    """Where the data comes from and how it becomes training pairs."""

    layout: Layout = setting(
        "online_retail", "'online_retail' (the UCI Online Retail file), 'goodbooks' "
                         "(goodbooks-10k: books, ratings and to-read shelves; see "
                         "`tfrec.datasets.goodbooks`) or 'events' (an events table, plus an "
                         "items table of their texts: optional only with model.use_text: "
                         "false)")
    events: str | None = setting(
        None, "events file (CSV, CSV.gz or Parquet); with layout 'online_retail' the Online "
              "Retail file, with 'goodbooks' the goodbooks-10k folder; null for those two: the "
              "data folder's copy; relative in a config file: to that file's folder", path=True)
    items: str | None = setting(None, "items file (id, text, optional market); relative in a "
                                      "config file: to that file's folder", path=True)
    data_dir: str | None = setting(
        None, "the data folder holding the public data sets (online_retail/, goodbooks_10k/); "
              "null: $TFREC_DATA, else ../shared/data from the working folder, then from the "
              "repository root (see the README's Data section); relative in a config file: "
              "to that file's folder",
        flag="--data-dir", path=True)
    goodbooks_to_read: bool = setting(True, "with layout 'goodbooks', also read the to-read "
                                            "shelves (as 'to_read' events), not only the "
                                            "ratings")
    strict: bool = setting(False, "fail on the first bad row instead of counting and dropping "
                                  "it")
    events_schema: EventsSchema = section(EventsSchema)
    items_schema: ItemsSchema = section(ItemsSchema)
    sessions: SessionConfig = section(SessionConfig)
    pairs: PairConfig = section(PairConfig)

    def check(self):
        if self.layout == "events" and not self.events:
            raise InputError("layout 'events' needs an events file", key=self.key("events"))
        # A declared conversion type weighs as a conversion unless event_weights says otherwise.
        listed = {str(t).lower() for t in self.pairs.event_weights}
        missing = {t.lower(): self.pairs.conversion_weight for t in self.sessions.conversion_types
                   if t.lower() not in listed}
        if missing:
            weights = {**self.pairs.event_weights, **missing}
            object.__setattr__(self, "pairs",
                               dataclasses.replace(self.pairs, event_weights=weights))


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    """Training and the held-out evaluation."""

    epochs: int = setting(3, "passes over the training data (the objective's batches: "
                             "retrieval sessions, or skip-gram pairs)", check=POSITIVE,
                          flag="--epochs")
    learning_rate: float = setting(0.005, "optimizer step size", check=above(0))
    optimizer: Optimizer = setting(
        "adam", "'adam', 'lazy_adam' (Adam that updates only the embedding rows a step "
                "touches: the step cost stops growing with the catalogue), 'adagrad' or 'sgd'")
    steps_per_epoch: int | None = setting(
        None, "cap on steps per epoch (null: the whole epoch); per worker under multi_worker, "
              "rounded up to a multiple of the number of workers", check=POSITIVE)
    retrieval_batch_size: int = setting(1024, "(history, next item) examples per retrieval "
                                              "batch", check=POSITIVE)
    split_by: SplitBy = setting(
        "time", "how the held-out cases are made: 'time' (train before `split_date`, or "
                "before the time after which the last `split_fraction` of the events lies; "
                "one case per later session) or "
                "'user' (a share `holdout_users` of the users never trains; one case per "
                "kept-out user: one of their items hidden, the rest the query), for data "
                "without meaningful time")
    split_date: str | None = setting(None, "with split_by 'time', train on events before this "
                                           "date (YYYY-MM-DD, or an ISO 8601 date and time, "
                                           "UTC unless it names a zone) and evaluate on the "
                                           "sessions from it on")
    until: str | None = setting(
        None, "with split_by 'time', leave out every session from this date (YYYY-MM-DD) on, "
              "before the split: neither trained on nor held out. To choose settings on a "
              "validation period without ever seeing the held-out one: until the run's split "
              "date, with an earlier split_date (or a split_fraction) of its own")
    split_fraction: float = setting(
        0.1, "without a split date, hold out this share of the events, the latest: the split "
             "is still by time, at the time after which this share of the events lies (whole "
             "sessions stay on the side of their first event, so the held-out share is close "
             "to it, not exact); 0: no held-out evaluation", check=SHARE)
    holdout_users: float = setting(0.1, "with split_by 'user', the share of users kept out of "
                                        "training (chosen with `eval_seed`)", check=INNER_SHARE)
    cold_items: float = setting(
        0.0, "share of the catalogue hidden from training entirely (no event of theirs "
             "trains; they stay in the catalogue with their text), chosen with `eval_seed`: "
             "cold-start targets on purpose. Needs an items table (the hidden items' text)",
        check=SHARE)
    eval_k: int = setting(10, "K of the hit rate (HR@K) and NDCG@K",
                          check=integer_between(1, 50))
    eval_seed: int = setting(42, "seeds which item of each held-out session (or user) is "
                                 "hidden, and which users and items the user split keeps out",
                             check=SEED)
    seed: int = setting(42, "seeds the model's initialisation and the draws of training (id "
                            "and history dropout, sampled negatives; keyed on the training "
                            "step, so a resumed run draws as an unstopped one), the ranking "
                            "stage's fit and the item-item baselines' validation slice; the "
                            "batches' order is data.pairs.seed", check=SEED)
    strategy: Strategy = setting(
        "default", "'default' (no tf.distribute strategy), 'mirrored' (MirroredStrategy over "
                   "the local devices) or 'multi_worker' (MultiWorkerMirroredStrategy, one "
                   "process per worker; the cluster comes from the TF_CONFIG environment "
                   "variable). See `tfrec.distribute`", flag="--strategy")


@dataclasses.dataclass(frozen=True)
class RankingConfig(Settings):
    """The ranking stage (`tfrec.ranking`): the item-item table, the candidate lists and
    the learned ranker. The ranker's defaults were chosen on its validation cases (a share
    of its own sessions, never the held-out cases); bench/RESULTS.md, "Two-stage ranking
    study", has the figures."""

    enabled: bool = setting(
        True, "train a ranking stage after the two-tower and serve both stages: the two-tower "
              "then trains on the training period less its last ranker_share, and the ranker "
              "re-scores each query's candidates from the index and the item-item table "
              "(false: the two-tower alone, on the whole training period)")
    estimator: TableEstimator = setting(
        "auto", "how the item-item table is learned: 'ease' (dense EASE over the items with "
                "training events, each row cut to its table_size strongest co-items), "
                "'neighbourhood' (EASE's regression of each item restricted to its `neighbours` "
                "strongest co-occurring items: scales to millions of items) or 'auto' (dense "
                "EASE where a whole row fits in the table, else the neighbourhood estimator)")
    table_size: int = setting(100, "co-items kept per item in the table (M)", check=POSITIVE)
    neighbours: int = setting(100, "co-occurring items each item is regressed on by the "
                                   "neighbourhood estimator (C)", check=POSITIVE)
    ease_lambda: float | None = setting(
        None, "EASE's ridge λ (null: chosen from ease_lambdas by HR@10 on a validation slice "
              "of each table's sessions, never on the held-out cases; the whole period's table "
              "tries the grid's values next to stage 1's choice)", check=above(0))
    ease_lambdas: tuple[float, ...] = setting(
        (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
        "the λ grid ease_lambda is chosen from", check=each(above(0), "values > 0"))
    ranker_share: float = setting(
        0.12, "share of the run's training period kept out of stage 1 (the two-tower and the "
              "item-item table that make the ranker's features): the last share of the "
              "training events by time for a time split, a share of the training users for a "
              "user split; its sessions are the ranker's training cases", check=within(0, 1, "()"))
    cases_per_session: int = setting(
        4, "up to this many ranker cases per session (user), each hiding another of its items",
        check=POSITIVE)
    new_share: float = setting(
        0.1, "share of the ranker's training cases whose (warm) target is shown as an item "
             "without behaviour: new items are rare among the ranker's targets and common in "
             "a catalogue (the same share of its validation cases, so that the figures that "
             "choose settings weigh new items alike)", check=within(0, 1, "[)"))
    new_copies: bool = setting(
        True, "show every warm training case's target as new in a copy of the case, the copy "
              "weighing new_share in the loss and the case 1 - new_share, instead of showing "
              "new_share of the cases' targets as new: the same balance of warm and new "
              "targets from ten times the new-item examples (on seven fits over four runs, "
              "validation HR@10 +0.003 on average, higher in six; bench/RESULTS.md, \"Every "
              "case also shown as new\"). The validation cases are unchanged")
    new_decoys: int = setting(
        5, "candidates without behaviour (besides its target) each training list of the "
           "ranker holds at least: where fewer are, warm non-targets drawn at random "
           "are shown as new. New items at serving are seldom "
           "the answer; in a catalogue whose items all have behaviour (a final model on "
           "every event) the ranker would otherwise meet new items only as targets shown "
           "as new, and put every item added later first. 0: none",
        check=integer_at_least(0))
    validation_share: float = setting(
        0.2, "share of the ranker's cases held out of its fit to measure it on (validation "
             "HR@K in the run's ranking/stage.json and eval.json, a warning when the ranker "
             "is under the "
             "table alone); choose N and the ranker's settings by it, never by the test "
             "cases", check=within(0, 1, "[)"))
    num_candidates: int = setting(
        200, "N, the width of a query's candidate list: the item-item table's and the "
             "two-tower's top items, deduplicated (at least the k a request asks for)",
        check=POSITIVE)
    table_share: float = setting(
        0.5, "the share of the N candidate slots the item-item table fills first; the "
             "two-tower fills the rest", check=within(0, 1))
    new_item_share: float = setting(
        0.0, "share of the N slots kept for the two-tower's best items without behaviour (the "
             "first round(new_item_share x N) of them in its list move to its front before the "
             "merge; the item-item table never proposes a new item). Off by default: on both "
             "Online Retail runs measured, 0.05 and 0.1 lowered the ranker's validation HR@10 "
             "(bench/RESULTS.md, \"New items in the candidate list\")",
        check=within(0, 1, "[]"))
    text_slots: int = setting(
        0, "slots after the N candidates for the items without behaviour whose text best "
           "matches the query's (the TF-IDF cosines of their strongest terms with the query "
           "items', summed): the item-item table never proposes a new item and the "
           "two-tower few. Off by default: on four Online Retail runs 10 slots raised cold "
           "HR@10 by 0.03-0.07 and lowered warm HR@10 by up to 0.008, and the ranker's "
           "validation lists, which choose the defaults, tie (bench/RESULTS.md, \"New items "
           "by their text\"); a catalogue that adds many items may want 10",
        check=integer_at_least(0))
    text_terms: int = setting(8, "TF-IDF terms kept per item for the lexical feature (its "
                                 "strongest terms)", check=POSITIVE)
    hidden_units: tuple[int, ...] = setting(
        (64, 32), "widths of the ranker's hidden layers",
        check=each(POSITIVE, "positive integers", non_empty=True))
    members: int = setting(
        5, "rankers of the same shape (from different initial weights) whose scores are "
           "averaged: steadier and better than one (each is as costly as one to fit and to "
           "serve)", check=POSITIVE)
    epochs: int = setting(10, "passes of the ranker's fit over its training lists (with "
                              "new_copies, each warm case's two lists)", check=POSITIVE)
    learning_rate: float = setting(0.003, "the ranker's Adam learning rate", check=above(0))
    batch_size: int = setting(64, "queries per ranker step", check=POSITIVE)

    def check(self):
        if self.ease_lambda is None and not self.ease_lambdas:
            raise InputError("the λ grid must hold at least one value",
                             key=self.key("ease_lambdas"))

    @property
    def new_slots(self) -> int:
        """How many of the two-tower's items without behaviour move to its list's front."""
        return int(round(self.new_item_share * self.num_candidates))

    def check_k(self, k: int) -> None:
        """Refuses a candidate list shorter than the K the ranking is scored at."""
        if self.num_candidates < k:
            raise InputError(f"the candidate list ({self.num_candidates}) must hold at least "
                             f"k = {k} items", key=self.key("num_candidates"))


@dataclasses.dataclass(frozen=True)
class RunConfig(Settings):
    """Everything a training run needs: data, model, training and ranking-stage settings."""

    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    train: TrainConfig = section(TrainConfig)
    ranking: RankingConfig = section(RankingConfig)

    def to_dict(self) -> dict:
        return plain(dataclasses.asdict(self))


# The command settings: what one command is asked to do ----------------------------------------

@dataclasses.dataclass(frozen=True)
class PrepareSettings(Settings):
    """`tfrec prepare`: the data report."""

    out: str | None = setting(None, "also write the report as JSON, the item vocabulary (as "
                                    "training writes it) and the rejected rows to this folder",
                              flag="--out")
    json: bool = setting(False, "print the report as JSON", flag="--json")


@dataclasses.dataclass(frozen=True)
class TrainingSettings(Settings):
    """`tfrec train`: where the run goes."""

    run_dir: str = setting("runs/train", "the run folder", flag="--run-dir")
    resume: bool = setting(False, "continue the run in the run folder from its last "
                                  "checkpoint, with its saved settings (--set / --config "
                                  "may change only the epochs, the strategy and ranking.* "
                                  "but enabled and ranker_share; the ranking stage is then "
                                  "refitted)",
                           flag="--resume")
    overwrite: bool = setting(False, "replace an existing run folder", flag="--overwrite")
    final_from: str | None = setting(
        None, "train the final model of this evaluated run folder: its settings (config.json) "
              "on every event, no held-out cases, for the epochs it trained; the new run "
              "records which run it was evaluated as (evaluated_as.json, carried into the "
              "export's metadata); with resume, continue an interrupted final model",
        flag="--final-from")

    def check(self):
        if self.resume and self.overwrite:
            raise InputError("resume continues the run folder and overwrite replaces it: "
                             "give one of them", key=self.key("overwrite"))


@dataclasses.dataclass(frozen=True)
class EvaluateSettings(Settings):
    """`tfrec evaluate`: the model beside the baselines on the run's held-out cases."""

    run_dir: str | None = setting(None, "a tfrec train run folder (with `saved_model`, "
                                        "default: the run it was exported from)", flag="--run")
    saved_model: str | None = setting(
        None, "evaluate this exported version (e.g. saved_models/retail/1) instead of the "
              "run's checkpoint: its embeddings, query signature and index; the run defines "
              "the cases", flag="--saved-model")
    out: str | None = setting(None, "report folder (null: RUN_DIR/evaluation)", flag="--out")
    baselines: str = setting(
        "all", "'all', 'none' or a comma-separated subset of the baselines (the table under "
               "Evaluation in the README: popularity, item2vec_gensim, ...; the tfrec "
               "variants are trained once under RUN_DIR/baselines/ and reused)",
        checked_by="`tfrec.evaluate.runner.parse_baselines`", flag="--baselines")
    k: int | None = setting(None, "K of HR@K and NDCG@K (null: the run's train.eval_k)",
                            check=integer_between(1, 50), flag="-k")
    gensim_epochs: int = setting(10, "passes of the gensim item2vec baseline", check=POSITIVE,
                                 flag="--gensim-epochs")
    gensim_dim: int = setting(64, "vector size of the gensim item2vec baseline (its best on "
                                  "Online Retail)", check=POSITIVE, flag="--gensim-dim")
    max_item_item_catalogue: int = setting(
        20_000, "run EASE, ItemKNN and their TF-IDF hybrid (an N x N matrix each, ~N^3 time) "
                "up to this many catalogue items, skip them above", check=POSITIVE,
        flag="--max-item-item-catalogue")
    data_dir: str | None = setting(
        None, "the data folder (as data.data_dir) to read the run's data set from, used only "
              "when the run's config names no data.data_dir: a run trained with a data folder "
              "keeps its own", flag="--data-dir")
    no_ablations: bool = setting(
        False, "with a run that has a ranking stage, leave out the rows of the ranker "
               "refitted without each feature group (one ranker fit each)",
        flag="--no-ablations")

    def check(self):
        if self.run_dir is None and self.saved_model is None:
            raise InputError("give a run folder with evaluate.run_dir or an exported version "
                             "with evaluate.saved_model", key=self.key("run_dir"))


@dataclasses.dataclass(frozen=True)
class ExportSettings(Settings):
    """`tfrec export`: which run, where to, and catalogue and user changes without
    training."""

    run: str | None = setting(
        None, "a tfrec train run folder (with add_items / drop_items / update_users: default "
              "the run the version was exported from)", flag="--run")
    model_dir: str | None = setting(None, "the model's base path, e.g. saved_models/retail",
                                    required=True, flag="--model-dir")
    add_items: str | None = setting(
        None, "build the next version from the newest (or from_version) without training: "
              "these items (CSV/Parquet in the run's items layout: id, text, optional market) "
              "embedded by the text tower alone and added to the index; an id already there "
              "with the same text is left as it is (a file that changes nothing writes no "
              "version), with another text it is an error",
        flag="--add-items")
    drop_items: str | None = setting(None, "build the next version without these items (a "
                                           "file of item ids, one a line; '# ' starts a "
                                           "comment line): never recommended again",
                                     flag="--drop-items")
    update_users: str | None = setting(
        None, "build the next version from the newest (or from_version) without training: "
              "each user of these events (CSV/Parquet in the run's events layout) gets its "
              "cached embedding recomputed by the trained query tower from its latest "
              "history_length items (its cached items, then these events in time order; the "
              "ranking stage reads the same items); new users are added, ids unknown to the "
              "model skipped and counted", flag="--update-users")
    runner: str | None = setting(
        None, "update_users as an Apache Beam pipeline on this runner (DirectRunner, "
              "FlinkRunner, DataflowRunner, ...), for logs that do not fit one machine: "
              "update_users may then be a glob of files; the command line passes the "
              "arguments it does not know to Beam as pipeline options", flag="--runner")
    from_version: int | None = setting(None, "with add_items / drop_items / update_users: start "
                                             "from this version (null: the newest)",
                                       check=POSITIVE, flag="--from-version")
    version: int | None = setting(None, "version number (null: the next one, above every "
                                        "version written to the folder, deleted ones too; at "
                                        "most 2^63 - 1, TF Serving's version type)",
                                  check=integer_between(1, 2**63 - 1), flag="--version")
    serving_config: str = setting("serving_config", "folder of models.config / "
                                                    "batching.config to update",
                                  flag="--serving-config")
    no_serving_config: bool = setting(False, "do not touch the serving config",
                                      flag="--no-serving-config")
    ranking_stage: bool | None = setting(
        None, "serve the run's ranking stage after the index, both stages in one call "
              "(serving_default, recommend_for_user, similar_items: the index's and the "
              "item-item table's top ranking.num_candidates, re-scored by the ranker; max_k "
              "at most that); false (--no-ranking-stage): the index's top k alone, as a run "
              "without a ranking stage. Null: on for a run, the previous version's choice "
              "for add_items / drop_items", flag="--no-ranking-stage")

    @property
    def updating(self) -> bool:
        """Changing the catalogue of an exported version rather than exporting a run."""
        return (self.add_items is not None or self.drop_items is not None
                or self.update_users is not None)

    def check(self):
        if self.from_version is not None and not self.updating:
            raise InputError("from_version goes with export.add_items, export.drop_items or "
                             "export.update_users", key=self.key("from_version"))
        if self.runner is not None and self.update_users is None:
            raise InputError("runner goes with export.update_users (a Beam pipeline)",
                             key=self.key("runner"))
        if self.run is None and not self.updating:
            raise InputError("give the run folder (or export.add_items / export.drop_items to "
                             "change the catalogue of an exported version, "
                             "export.update_users to refresh its users)", key=self.key("run"))


@dataclasses.dataclass(frozen=True)
class IndexConfig(Settings):
    """`tfrec export`: the retrieval index; the ScaNN settings default (null) to values that
    scale with the catalogue."""

    kind: IndexKind = setting("scann", "'scann' (approximate, needs the ScaNN ops to serve) or "
                                       "'brute_force' (exact, stock TensorFlow ops only: loads "
                                       "in stock TF Serving)", flag="--index")
    max_k: int = setting(100, "the largest k a request may ask for", check=POSITIVE,
                         flag="--max-k")
    num_leaves: int | None = setting(None, "ScaNN partitions (null: about sqrt(items), at most "
                                           "2,000)", check=POSITIVE, flag="--leaves")
    num_leaves_to_search: int | None = setting(
        None, "ScaNN partitions searched per query (null: a tenth (a third under 100 "
              "partitions), widened until recall_floor is met; every one when the catalogue is "
              "within num_reordering_candidates, which makes the search exact)", check=POSITIVE,
        flag="--leaves-to-search")
    num_reordering_candidates: int | None = setting(
        None, "ScaNN candidates re-scored exactly after the quantised search (null: the "
              "largest of 200, 4 * max_k and max_k + max_session_items). ScaNN returns at most "
              "this many, and a request fetches k plus the session's items to drop them, so it "
              "may not be under max_k + max_session_items", check=POSITIVE, flag="--reorder")
    recall_floor: float = setting(
        0.9, "export refuses an index whose recall@10 against brute force, on real queries, "
             "is below this (the search widens to reach it first)", check=within(0, 1),
        flag="--recall-floor")
    max_session_items: int = setting(
        500, "the widest session a request may send (the model reads its last "
             "history_length items and excludes all of them from the results; at least the "
             "model's history_length)", check=POSITIVE, flag="--max-session-items")
    exact_new_items: int = setting(
        5000, "with the ranking stage, the catalogue's items without behaviour are scored "
              "exactly beside the index when there are at most this many (one product with "
              "their embeddings a call), and join its top N: the two-tower's list is their "
              "only source, and an approximate search at depth N misses some (make run's "
              "model: 7 of 320 cold hits). 0: the index alone", check=integer_at_least(0),
        flag="--exact-new-items")

    def check(self):
        needed = self.max_k + self.max_session_items
        if (self.kind == "scann" and self.num_reordering_candidates is not None
                and self.num_reordering_candidates < needed):
            raise InputError(
                f"num_reordering_candidates ({self.num_reordering_candidates}) must be at least "
                f"max_k + max_session_items = {needed}: ScaNN returns at most that many, and a "
                "request fetches k plus its session's items so it can drop them (a run with "
                "a ranking stage needs ranking.num_candidates + max_session_items); raise "
                "index.num_reordering_candidates or lower index.max_k / "
                "index.max_session_items", key=self.key("num_reordering_candidates"))


@dataclasses.dataclass(frozen=True)
class BatchingParameters(Settings):
    """`tfrec serve --enable_batching`: TF Serving's batching parameters, read from the
    batching parameters file.

    This server acts on max_batch_size, batch_timeout_micros and
    pad_variable_length_inputs; num_batch_threads and max_enqueued_batches
    are read and kept for compatibility (each batch runs on the thread of the
    request that opened it, and the gRPC worker pool bounds the queue).
    """

    max_batch_size: int = setting(256, "rows of one merged model call", check=POSITIVE)
    batch_timeout_micros: int = setting(2000, "how long the first request of a batch waits "
                                              "for others (microseconds)",
                                        check=integer_at_least(0))
    num_batch_threads: int = setting(2, "read for compatibility with TF Serving; each batch "
                                        "runs on the thread of its first request",
                                     check=POSITIVE)
    max_enqueued_batches: int = setting(100, "read for compatibility with TF Serving; the gRPC "
                                             "worker pool bounds the queue", check=POSITIVE)
    pad_variable_length_inputs: bool = setting(True, "pad string inputs of different widths "
                                                     "with \"\" so that they merge")

    def to_text(self) -> str:
        """As a TF Serving batching parameters file (text proto), as
        `tfrec.serving.batching.read_batching_parameters` reads it."""
        lines = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            lines.append(f"{field.name}: {str(value).lower()}" if isinstance(value, bool)
                         else f"{field.name} {{ value: {value} }}")
        return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class ServeConfig(Settings):
    """`tfrec serve`: the model server (flags named as TF Serving's)."""

    model_config_file: str | None = setting(
        None, "TF Serving model_config_list text proto, e.g. serving_config/models.config",
        required=True, flag="--model_config_file")
    port: int = setting(8500, "gRPC port (0: any free port)", check=integer_at_least(0),
                        flag="--port")
    host: str = setting("127.0.0.1", "address to bind (the default is loopback only; 0.0.0.0 "
                                     "for all)", flag="--host")
    file_system_poll_wait_seconds: float = setting(
        1.0, "how often base paths are polled for new versions (seconds; 0: once, at start, "
             "as TF Serving: then only a reload looks again)", check=at_least(0),
        flag="--file_system_poll_wait_seconds")
    model_config_file_poll_wait_seconds: float = setting(
        0.0, "re-read the model config this often (seconds; 0: never)", check=at_least(0),
        flag="--model_config_file_poll_wait_seconds")
    max_batch: int = setting(4096, "largest batch one request may carry", check=POSITIVE,
                             flag="--max_batch")
    max_request_elements: int = setting(
        1_000_000, "most values one request may hold, all inputs together, counted from the "
                   "declared shapes before anything is allocated", check=POSITIVE,
        flag="--max_request_elements")
    max_request_bytes: int = setting(
        32 * 2**20, "most bytes one request's values may take once built, all inputs together "
                    "(strings' bytes, numbers' widths; a value TensorFlow repeats to fill a "
                    "declared shape counts for every element it fills), checked before "
                    "anything is built; also the largest REST body (413 over it)",
        check=POSITIVE, flag="--max_request_bytes")
    max_string_bytes: int = setting(65536, "longest string value a request may hold (bytes)",
                                    check=POSITIVE, flag="--max_string_bytes")
    rest_api_port: int | None = setting(None, "also serve TF Serving's REST API on this port",
                                        check=integer_at_least(0), flag="--rest_api_port")
    rest_api_timeout_seconds: float = setting(
        10.0, "seconds a REST client may take to send a request (idle keep-alive connections "
              "close after it)", check=above(0), flag="--rest_api_timeout_seconds")
    rest_api_max_connections: int = setting(256, "open REST connections at once; more are "
                                                 "answered 503", check=POSITIVE,
                                            flag="--rest_api_max_connections")
    rest_api_max_connections_per_address: int = setting(
        64, "open REST connections one client address may hold at once; more are answered "
            "503 (raise it behind a proxy, whose clients share its address)", check=POSITIVE,
        flag="--rest_api_max_connections_per_address")
    rest_api_header_timeout_seconds: float = setting(
        5.0, "seconds a REST request's line and headers may take to arrive once its first "
             "byte has (a client trickling them is cut off)", check=above(0),
        flag="--rest_api_header_timeout_seconds")
    rest_api_min_bytes_per_second: int = setting(
        16384, "slowest a REST body may arrive, on average once the read timeout has passed "
               "(a client trickling it is cut off with 408)", check=POSITIVE,
        flag="--rest_api_min_bytes_per_second")
    max_errors_per_second: float = setting(
        50.0, "error answers one client address gets a second on each API (gRPC errors, REST "
              "4xx/5xx) before further ones are held back to that pace (at most 1 s each; a "
              "burst of as many passes at once; at most 2 gRPC answers held at once): a client "
              "replaying refused requests in a loop then costs little. Good requests are never "
              "held. 0: no pacing (raise it behind a proxy, whose clients share its address)",
        check=at_least(0), flag="--max_errors_per_second")
    grace_period_seconds: float = setting(
        10.0, "on SIGTERM/SIGINT, seconds calls in flight (gRPC and REST) get to finish",
        check=at_least(0), flag="--grace_period_seconds")
    enable_batching: bool = setting(False, "merge concurrent requests into one model call",
                                    flag="--enable_batching")
    batching_parameters_file: str | None = setting(
        None, "TF Serving batching parameters (serve.batching), e.g. "
              "serving_config/batching.config; without it, their defaults",
        flag="--batching_parameters_file")
    tensorflow_intra_op_parallelism: int = setting(
        1, "threads one TensorFlow op may use (0: TensorFlow chooses, one per core); 1 by "
           "default: a request's ops are small, and requests run side by side (lower p50 and "
           "p99 measured, bench/RESULTS.md)", check=integer_at_least(0),
        flag="--tensorflow_intra_op_parallelism")
    tensorflow_inter_op_parallelism: int = setting(
        0, "TensorFlow ops run at once (0: TensorFlow chooses); 1 or 2 lowers latency on a "
           "small host shared with clients", check=integer_at_least(0),
        flag="--tensorflow_inter_op_parallelism")
    allow_reload: bool = setting(
        False, "answer HandleReloadConfigRequest (off: PERMISSION_DENIED); its base paths must "
               "be absolute and under the model roots", flag="--allow_reload")
    model_roots: str | None = setting(
        None, "comma-separated folders the reload RPC's base paths must be under (null: the "
              "folders holding the model config file's base paths at start)",
        flag="--model_roots")
    allow_version_labels_for_unavailable_models: bool = setting(
        False, "let a reload (the RPC, or the config file read again) give a version label to "
               "a version not AVAILABLE (off: the reload RPC is refused FAILED_PRECONDITION "
               "and a re-read config file keeps the labels it had, as TF Serving)",
        flag="--allow_version_labels_for_unavailable_models")
    batching: BatchingParameters = section(BatchingParameters)

    def check(self):
        if self.batching_parameters_file is not None and not self.enable_batching:
            raise InputError("a batching parameters file needs serve.enable_batching",
                             key=self.key("batching_parameters_file"))


@dataclasses.dataclass(frozen=True)
class RecommendSettings(Settings):
    """`tfrec recommend`: ask a running server, or write every known user's list."""

    items: str | None = setting(None, "the session: comma-separated item ids (a server call; "
                                      "quote an id holding a comma: '\"a,b\",c')",
                                group="what", flag="--items")
    user: str | None = setting(
        None, "a user of the export (a server call, signature recommend_for_user): the top k "
              "for the user's cached embedding, the items it was built from excluded; an "
              "unknown user gets the most popular items", group="what", flag="--user")
    all_users: bool = setting(False, "every user of the export's user list: rows user_id, "
                                     "rank, item_id, score, written to `out` (in this process, "
                                     "no server)", group="what", flag="--all-users")
    server: str = setting(f"localhost:{ServeConfig.port}", "host:port of the gRPC server",
                          flag="--server")
    model: str | None = setting(None, "the served model's name (server calls)", flag="--model")
    k: int = setting(10, "how many recommendations (per user; at most the export's max_k)",
                     check=integer_between(1, INT32_MAX), flag="-k")
    timeout: float = setting(10.0, "seconds per server call", check=above(0), flag="--timeout")
    model_dir: str | None = setting(None, "all_users: the model's base path, e.g. "
                                          "saved_models/retail", flag="--model-dir")
    version: int | None = setting(None, "the version to ask the server for, or with all_users "
                                        "the exported version to read (null: the newest; a "
                                        "version the server does not serve is NOT_FOUND)",
                                  check=integer_between(1, 2**63 - 1), flag="--version")
    version_label: str | None = setting(None, "ask the server for the version this label "
                                              "names (the model config's version_labels, e.g. "
                                              "stable); not with version",
                                        flag="--version-label")
    out: str | None = setting(None, "all_users: the Parquet file to write (written to a "
                                    "temporary file beside it and renamed when complete)",
                              flag="--out")
    overwrite: bool = setting(False, "all_users: replace an existing `out` file",
                              flag="--overwrite")
    batch_size: int = setting(1000, "all_users: users per model call and per Parquet row "
                                    "group", check=POSITIVE, flag="--batch-size")
    runner: str | None = setting(
        None, "all_users as an Apache Beam pipeline on this runner (DirectRunner, "
              "DataflowRunner, FlinkRunner, ...; pip install 'tfrec[beam]'): `out` is then the "
              "prefix of Parquet shards, and the arguments tfrec does not know are Beam "
              "pipeline options", flag="--runner")
    users: str | None = setting(None, "all_users: only these users (a file of user ids, one a "
                                      "line; spaces around an id removed, blank lines skipped, "
                                      "each id once; an id the model does not know gets the "
                                      "most popular items)", flag="--users")
    json: bool = setting(False, "print the list as one JSON object (the user or session, "
                                "each item's id, score and text, and whether the popular "
                                "items stood in) instead of a table", flag="--json")

    @property
    def session(self) -> list[str]:
        """The item ids of `items`, read as one CSV row: an id holding a comma is quoted
        ('"a,b",c')."""
        import csv

        text = self.items or ""
        try:
            next(csv.reader([text], skipinitialspace=True, strict=True), [])
        except csv.Error as err:
            # Only a quote that never closes is refused (it would swallow the rest of the
            # list); a space after a closing quote ('"a,b" , c') reads as before.
            if "unexpected end of data" in str(err):
                raise InputError(f"the item ids {text!r} cannot be read as one CSV row: a "
                                 "quote opens and never closes; quote an id holding a comma "
                                 "whole ('\"a,b\",c')", key=self.key("items")) from None
        row = next(csv.reader([text], skipinitialspace=True), [])
        return [i.strip() for i in row if i.strip()]

    def check(self):
        if self.items is not None:
            self.session  # a malformed list is refused here, before anything starts
        if self.all_users:
            missing = [self.key(name) for name in ("model_dir", "out")
                       if getattr(self, name) is None]
            if missing:
                raise InputError(f"all_users needs {' and '.join(missing)}",
                                 key=self.key("all_users"))
            if self.version_label is not None:
                raise InputError("version_label names a version to a server; all_users reads "
                                 "an exported version (recommend.version)",
                                 key=self.key("version_label"))
            if self.runner is not None and self.overwrite:
                raise InputError("a Beam pipeline never replaces output shards: remove them or "
                                 "choose another recommend.out prefix",
                                 key=self.key("overwrite"))
            if self.json:
                raise InputError("json prints one list; all_users writes Parquet",
                                 key=self.key("json"))
            return
        for name, what in (("runner", "all_users (a Beam pipeline)"), ("users", "all_users")):
            if getattr(self, name) is not None:
                raise InputError(f"{name} is for {what}", key=self.key(name))
        if self.version_label is not None and self.version is not None:
            raise InputError("give version or version_label, not both (a request names one)",
                             key=self.key("version_label"))
        if self.model is None:
            raise InputError("asking a server needs the served model's name",
                             key=self.key("model"))
        if self.user is not None and not self.user.strip():
            raise InputError("needs a user id", key=self.key("user"))
        if self.items is not None and not self.session:
            raise InputError("needs at least one item id", key=self.key("items"))


# The schema: where each section sits, and walking it -------------------------------------------

# Every top-level section: its key prefix and its settings class. Nested
# sections (``model.text``, ``data.pairs``, ``serve.batching``) are found
# through `section` fields.
ROOTS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "train": TrainConfig, "ranking": RankingConfig,
    "prepare": PrepareSettings, "training": TrainingSettings, "evaluate": EvaluateSettings,
    "export": ExportSettings, "index": IndexConfig, "serve": ServeConfig,
    "recommend": RecommendSettings,
}
# The sections a run config file holds (the rest are a command's settings).
RUN_SECTIONS = ("data", "model", "train", "ranking")
# How to set a setting that has no flag, by section (the longest matching prefix wins).
HOW_TO_SET = {
    "data": "set it in the run config, or with --set {key}=VALUE",
    "model": "set it in the run config, or with --set {key}=VALUE",
    "train": "set it in the run config, or with --set {key}=VALUE",
    "ranking": "set it in the run config, or with --set {key}=VALUE",
    "serve.batching": "set it in the batching parameters file, serve.batching_parameters_file",
}


def sections() -> dict[str, type]:
    """Every section of the schema, nested ones included: dotted prefix -> class."""
    found: dict[str, type] = {}

    def visit(prefix: str, cls: type) -> None:
        found[prefix] = cls
        for field in dataclasses.fields(cls):
            if field.metadata.get("section"):
                visit(f"{prefix}.{field.name}", type_hints(cls)[field.name])

    for prefix, cls in ROOTS.items():
        visit(prefix, cls)
    return found


register_sections({RunConfig: "", **{cls: f"{prefix}." for prefix, cls in sections().items()}})


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting of the schema, as the command line and the reference read it."""

    key: str
    owner: type
    name: str
    default: Any
    help: str
    flag: str | None
    required: bool
    group: str | None
    allowed: str
    type: type | None  # bool, int, float or str: what a flag's value is read as
    path: bool = False  # a file or folder path (made absolute when a run config is read)

    @property
    def how_to_set(self) -> str | None:
        """How to set it, when it has no flag."""
        if self.flag:
            return None
        for prefix in sorted(HOW_TO_SET, key=len, reverse=True):
            if self.key.startswith(prefix + "."):
                return HOW_TO_SET[prefix].format(key=self.key)
        return None


def settings(prefix: str | None = None) -> list[Setting]:
    """Every setting of the schema (or of the section `prefix` and its subsections), in
    declaration order."""
    found = []
    for section_key, cls in sections().items():
        if prefix is not None and not (section_key == prefix
                                       or section_key.startswith(prefix + ".")):
            continue
        for field in dataclasses.fields(cls):
            if field.metadata.get("section"):
                continue
            meta = field.metadata
            default = (field.default_factory() if field.default is dataclasses.MISSING
                       else field.default)
            found.append(Setting(f"{section_key}.{field.name}", cls, field.name, default,
                                 meta["help"], meta["flag"], meta["required"], meta["group"],
                                 allowed_text(cls, field.name), _value_type(cls, field.name),
                                 meta["path"]))
    return found


def _value_type(cls: type, name: str) -> type | None:
    hint = strip_optional(type_hints(cls)[name])
    if typing.get_origin(hint) is Literal:
        return type(literal_values(hint)[0])
    return hint if hint in (bool, int, float, str) else None


def setting_of(key: str) -> Setting | None:
    """The setting of a full dotted key (None: not a setting of the schema)."""
    prefix = key.rpartition(".")[0]
    return next((s for s in settings(prefix) if s.key == key), None) if prefix else None


def allowed_text(cls: type, name: str) -> str:
    """The allowed values of a setting, in words."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    hint = type_hints(cls)[name]
    if field.metadata["checked_by"]:
        text = f"checked by {field.metadata['checked_by']}"
    elif choices(cls, name):
        text = choices_text(choices(cls, name))
    elif field.metadata["check"] is not None:
        text = field.metadata["check"].text
    else:
        text = expected_type(strip_optional(hint), object()) or ""
    optional = is_optional(hint) and not field.metadata["required"]
    return f"{text} or null" if optional and text else text


# The settings reference ------------------------------------------------------------------

# The page the reference is written to, inside the package (shipped with it) and linked from
# the README.
REFERENCE_PAGE = Path(__file__).resolve().parent / "configs" / "SETTINGS.md"
REFERENCE_COMMAND = "python -m tfrec.config --reference tfrec/configs/SETTINGS.md"


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list, dict)):
        return json.dumps(plain(value))
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _anchor(prefix: str) -> str:
    """The anchor GitHub gives the heading `` `prefix` `` (dots dropped)."""
    return prefix.replace(".", "")


def settings_reference() -> str:
    """The settings reference page: every setting with its default, allowed values, flag and
    help, as Markdown tables (one per section), generated from the schema."""
    tables = [(prefix, cls, [s for s in settings(prefix) if s.owner is cls])
              for prefix, cls in sections().items()]
    tables = [(prefix, cls, rows) for prefix, cls, rows in tables if rows]
    run = " and ".join([", ".join(f"`{name}`" for name in RUN_SECTIONS[:-1]),
                        f"`{RUN_SECTIONS[-1]}`"])
    lines = [
        "# Every setting",
        "",
        f"Generated from `tfrec/config.py` by `{REFERENCE_COMMAND}`; do not edit by hand "
        "(a test fails when this page is not what the schema generates).",
        "",
        f"The sections {run} are the **run config**: a YAML or JSON file given with "
        "`--config FILE` (its relative paths are read against the file's folder), "
        "and `--set KEY=VALUE` for one setting (the value is read as YAML, e.g. "
        "`--set model.query_layers=[256]`), given after the file and winning over it; "
        "every key is optional "
        "and keeps the default below. The other sections are the settings of one command, "
        "given as its flags (`tfrec COMMAND --help` lists them). An error names the "
        "setting's key, and the flag or way to set it.",
        "",
        "Sections: " + ", ".join(f"[`{prefix}`](#{_anchor(prefix)})"
                                 for prefix, _, _ in tables) + "."]
    for prefix, cls, rows in tables:
        title = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        lines += ["", f"## `{prefix}`", "", title, "",
                  "| key | default | allowed | flag | what it does |", "|---|---|---|---|---|"]
        for s in rows:
            default = "required" if s.required else f"`{_cell(_shown(s.default))}`"
            flag = f"`{s.flag}`" if s.flag else ""
            lines.append(f"| `{s.key}` | {default} | {_cell(s.allowed)} | {flag} | "
                         f"{_cell(s.help)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m tfrec.config``: print the reference page; ``--reference [FILE]`` writes it
    (by default to `tfrec/configs/SETTINGS.md`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tfrec.config",
                                     description=settings_reference.__doc__)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--reference", metavar="FILE", nargs="?", const=str(REFERENCE_PAGE),
                        help="write the reference page to FILE (default: "
                             "tfrec/configs/SETTINGS.md) instead of printing it")
    target.add_argument("--readme", metavar="README",
                        help="the older spelling: write the reference page of the repository "
                             "whose README this is (its tfrec/configs/SETTINGS.md)")
    args = parser.parse_args(argv)
    page = (Path(args.reference) if args.reference
            else Path(args.readme).parent / "tfrec" / "configs" / "SETTINGS.md"
            if args.readme else None)
    if page is None:
        print(settings_reference(), end="")
    else:
        page.write_text(settings_reference())
        print(f"wrote {page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
