"""Runs: the run config file, loading a run, and the data a run trains on.

Training, evaluation, export and the data report all read runs through
this module, so none of them needs the training loop to do it. The run
folder's files are `tfrec.run_folder.RunFolder`'s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import typing
from pathlib import Path

import pandas as pd
import tensorflow as tf
import yaml

from tfrec.config import RunConfig, from_dict, setting_of
from tfrec.data.events import Rejections
from tfrec.data.pipeline import PairPipeline
from tfrec.data.sequences import NextItemPipeline
from tfrec.data.sessions import Sessions, resolve_retrieval_context, sessionize
from tfrec.data.split import Cases, Split, make_cases, split_for_training
from tfrec.data.vocab import ItemVocabulary, build_vocabulary
from tfrec.datasets.layouts import read_tables
from tfrec.errors import InputError
from tfrec.models import build_model, required_streams
from tfrec.run_folder import RunFolder

logger = logging.getLogger(__name__)

# The config `tfrec train` and `tfrec prepare` use when given none.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "online_retail.yaml"


# The run config file -----------------------------------------------------------------------

class DuplicateKey(ValueError):
    """A mapping of a config file gives one key twice (`line`: 1-based, or None)."""

    def __init__(self, key, line: int | None = None):
        super().__init__(key)
        self.key, self.line = key, line


class _TextDates(yaml.SafeLoader):
    """YAML's safe loader with dates left as text (the settings take dates as text, and
    an impossible one, 2024-02-30, is then the setting's error, not a parser crash),
    numbers read as YAML 1.2 reads them (`1e-3` is a number, as in JSON, and `016` is
    16, not YAML 1.1's octal 14), and a key given twice in one mapping refused (YAML
    would keep the last silently: a second `model:` section dropped the first)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep)


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_TextDates.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers
            if tag not in ("tag:yaml.org,2002:timestamp", _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
# YAML 1.2's core schema (digits may be grouped with underscores, as YAML 1.1 allowed).
_TextDates.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"))
_TextDates.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))


def _yaml_int(loader, node):
    text = loader.construct_scalar(node).replace("_", "")
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text)


def _yaml_float(loader, node):
    text = loader.construct_scalar(node).replace("_", "").lower()
    if text.endswith("inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    return float("nan") if text == ".nan" else float(text)


_TextDates.add_constructor(_INT, _yaml_int)
_TextDates.add_constructor(_FLOAT, _yaml_float)


def _unique_pairs(pairs):
    """json.loads' object hook refusing a key given twice."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise DuplicateKey(next(k for i, k in enumerate(keys) if k in keys[:i]))
    return dict(pairs)


def load_run_config(path: str | Path | None = None, overrides: list[str] = (),
                    flags: list[str] = (), base: RunConfig | None = None) -> RunConfig:
    """Reads a YAML or JSON run config and applies `section.key=value` overrides.

    Override values are parsed as YAML (``3``, ``0.1``, ``true``, ``[1, 2]``,
    ``null``, or text). A relative path setting (``data.events``, ``data.items``,
    ``data.data_dir``) is read relative to the config file's folder when the
    file gives it, and to the working directory when an override does; either
    way the config holds it as an absolute path, so a run's saved config finds
    its data from any folder.

    Args:
      path: the config file (None: the schema's defaults).
      overrides: ``--set KEY=VALUE`` overrides, applied in order after the file.
      flags: overrides made from a command's flags, applied last (an error about
        one names no file: the command line names its flag).
      base: without `path`, the settings the overrides apply to (default: the
        schema's defaults), e.g. a run's saved config.

    Raises:
      InputError: an unreadable file, or a bad setting, naming the file, or the
        ``--set`` override, it came from.
    """
    if isinstance(overrides, str) or isinstance(flags, str):
        raise TypeError("overrides (and flags) are a list of 'section.key=value' strings, "
                        f"got the string {overrides if isinstance(overrides, str) else flags!r}")
    data: dict = {} if base is None else base.to_dict()
    source = None
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise InputError("config file not found", path=source) from None
        except IsADirectoryError:
            raise InputError("config path is a folder, expected a YAML or JSON file",
                             path=source) from None
        try:
            data = (json.loads(text, object_pairs_hook=_unique_pairs)
                    if source.endswith(".json") else yaml.load(text, Loader=_TextDates))
            data = {} if data is None else data  # an empty file: the defaults
        except DuplicateKey as err:
            raise InputError(f"the key {err.key!r} is given twice in one mapping (the second "
                             "would replace the first, a section all of it): give it once",
                             path=source, line=err.line) from None
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            line = getattr(err, "lineno", None) or getattr(
                getattr(err, "problem_mark", None), "line", -1) + 1 or None
            raise InputError(f"not valid {'JSON' if source.endswith('.json') else 'YAML'}: "
                             f"{getattr(err, 'msg', None) or getattr(err, 'problem', err)}",
                             path=source, line=line) from None
        _absolute_paths(data, Path(path).resolve().parent)
    if not isinstance(data, dict):
        from_dict(RunConfig, data, source)  # names what the file holds instead of settings
    given = {}  # override key -> how it was given (None: a flag)
    for item, how in [*((o, f"--set {o}") for o in overrides), *((f, None) for f in flags)]:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects section.key=value, got {item!r}")
        try:
            value = yaml.load(raw, Loader=_TextDates)
        except (yaml.YAMLError, DuplicateKey):
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # absent, or a section left empty (`model:`)
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise InputError(f"cannot set {key!r}: {part!r} is not a section", key=key)
        node[parts[-1]] = _absolute_path(key.strip(), value, Path.cwd())
        given[key.strip()] = how
    try:
        return from_dict(RunConfig, data, source)
    except InputError as err:
        how = _given_by(err.key, given)
        if how is False:
            raise
        raise InputError(err.reason if how is None else f"{err.reason}; given with {how}",
                         key=err.key) from None


def _absolute_path(key: str, value, folder: Path):
    """`value` made absolute against `folder` if `key` is a path setting and it is relative."""
    setting = setting_of(key)
    if setting is None or not setting.path or not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (folder / path).resolve())


def _absolute_paths(data, folder: Path) -> None:
    """Makes the relative path settings of a config file's `data` absolute against `folder`."""
    def visit(node, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        for name, value in node.items():
            key = f"{prefix}{name}"
            if isinstance(value, dict):
                visit(value, key + ".")
            else:
                node[name] = _absolute_path(key, value, folder)

    visit(data, "")


def _given_by(key: str | None, given: dict):
    """How the setting `key` an error names was given: "--set KEY=VALUE", None (a flag),
    or False (not by an override: the config file)."""
    if key is None:
        return False
    for override, how in reversed(list(given.items())):
        if override == key or override.startswith(key + ".") or key.startswith(override + "."):
            return how
    return False


def command_config(path: str | Path | None = None, overrides: list[str] = (),
                   data_dir: str | Path | None = None, flags: list[str] = ()) -> RunConfig:
    """The run config a command is given: `path` (default `DEFAULT_CONFIG`), then
    `overrides` (``--set``), then `flags` (the run settings given as a command's flags)
    and `data_dir` as `data.data_dir` (made absolute, so that a run's saved config finds
    the data from any folder).

    Without `path`, overrides that name other data than Online Retail (`data.layout`)
    do not inherit the default config's split date, which is Online Retail's, unless
    they set `train.split_date` themselves."""
    flags = list(flags)
    if data_dir is not None:
        flags.append(f"data.data_dir={json.dumps(str(Path(data_dir).resolve()))}")
    config = load_run_config(DEFAULT_CONFIG if path is None else path, overrides, flags)
    given = {item.split("=", 1)[0].strip() for item in [*overrides, *flags]}
    if (path is None and config.data.layout != "online_retail"
            and "train.split_date" not in given and config.train.split_date is not None):
        # The default config's split date is Online Retail's: other data named by --set
        # alone is split by the schema's rule (the latest train.split_fraction held out).
        logger.info("no --config: the default config's split date (%s, Online Retail's) "
                    "is not applied to %s data; holding out the latest %g of the events "
                    "(train.split_fraction)", config.train.split_date, config.data.layout,
                    config.train.split_fraction)
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, split_date=None))
    return config


def with_data_dir(config: RunConfig, data_dir: str | Path | None) -> RunConfig:
    """`config` reading its data set from `data_dir` (made absolute) when it names no
    `data.data_dir` of its own: a saved run's config finds the data where it is now."""
    if data_dir is None or config.data.data_dir is not None:
        return config
    data = dataclasses.replace(config.data, data_dir=str(Path(data_dir).resolve()))
    return dataclasses.replace(config, data=data)


# Loading a run -----------------------------------------------------------------------------

def latest_checkpoint(run_dir: str | Path) -> str | None:
    return tf.train.latest_checkpoint(str(RunFolder(run_dir).checkpoints))


def load_run(run_dir: str | Path):
    """Rebuilds a run's model from its folder and restores its last checkpoint.

    Returns:
      (config, vocab, model, checkpoint_path).

    Raises:
      InputError: not a run folder, or no finished epoch to restore.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise InputError("run path is a file, expected a run folder", path=str(run_dir))
    folder = RunFolder(run_dir)
    config = folder.read_config()
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise InputError("the run has no finished checkpoint yet (train at least one epoch)",
                         path=str(folder.checkpoints))
    vocab = ItemVocabulary.load(folder.vocab_file)
    tokens = folder.read_text_vocabulary()
    model = build_model(config.model, vocab, seed=config.train.seed, text_vocabulary=tokens)
    epoch = tf.Variable(0, dtype=tf.int64, name="epoch")
    tf.train.Checkpoint(model=model, epoch=epoch).restore(latest).expect_partial()
    return config, vocab, model, latest


def check_run_data(data_vocab: ItemVocabulary, run_vocab: ItemVocabulary,
                   run_dir: str | Path, rejections=None) -> None:
    """Refuses data whose item vocabulary is not the one the run trained on.

    Item indices are positions in the vocabulary: with other data, every
    lookup (queries, cached user embeddings, cases) would name other items.
    `rejections`: the data's read (its rows left out), to say when rows an
    earlier release kept are refused now (ids holding a line separator, the
    reserved item id).

    Raises:
      InputError: the vocabularies differ.
    """
    if list(data_vocab.ids) != list(run_vocab.ids):
        path = RunFolder(run_dir).vocab_file
        changed = len(set(map(str, data_vocab.ids)) ^ set(map(str, run_vocab.ids)))
        refused = {rule: count for rule, count in
                   (rejections.counts.items() if rejections is not None else ())
                   if count and ("id with a line break" in rule or "reserved item id" in rule)}
        why = ("retrain, or point the config at the original data" if not refused else
               "this release leaves out rows whose ids hold a line separator or are the "
               "reserved item id, which earlier releases kept ("
               + "; ".join(f"{rule}: {count:,}, e.g. {rejections.examples.get(rule, '')}"
                           for rule, count in refused.items())
               + "): rename those ids in the data and retrain")
        raise InputError(
            "the run's data has changed since training: its item vocabulary differs from "
            f"{path.name} ({data_vocab.size - 1:,} items now, {run_vocab.size - 1:,} trained; "
            f"{changed:,} ids in one but not the other); {why}", path=str(path))


# The data a run trains on ------------------------------------------------------------------

def read_data(config: RunConfig):
    """(events, items or None, rejections, a description of the source) of the config."""
    data = config.data
    return read_tables(data.layout, data.events, data.items, data.events_schema,
                       data.items_schema, data.strict, data.data_dir, data.goodbooks_to_read)


@dataclasses.dataclass
class TrainingData:
    """The training slice as model inputs, and the held-out cases.

    Attributes:
      vocab: the item vocabulary (warm items: those with training events).
      sessions: the training slice, sessionised.
      pairs: the skip-gram pair pipeline over the training slice.
      next_items: the retrieval pipeline (None unless a task of the model reads it).
      cases: the held-out cases.
      rejections: rows left out while reading.
      train_events, test_events: events on each side of the split.
      test_slice: the held-out events.
      split: the split itself.
      retrieval_context: `model.retrieval_context`, "auto" resolved.
      events: every event read (both sides of the split).
      items: the items table, if any.
      source: where the data came from, in words.
      streams: the training streams the model's tasks read, in order
        (`tfrec.models.required_streams`: "pairs" and/or "next_items").
    """

    vocab: ItemVocabulary
    sessions: Sessions
    pairs: PairPipeline
    next_items: NextItemPipeline | None
    cases: Cases
    rejections: Rejections
    train_events: int
    test_events: int
    test_slice: pd.DataFrame | None = None
    split: Split | None = None
    retrieval_context: str = "previous"
    events: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    source: str = ""
    streams: tuple[str, ...] = ()


def prepare_training_data(config: RunConfig) -> TrainingData:
    """Splits (by time or by user, see `train.split_by`), builds the vocabulary
    from the training slice, makes the pipelines and the held-out cases."""
    events, items, rejections, source = read_data(config)
    split = split_for_training(events, items, config.train)
    train_events, test_events = split.train, split.test
    if config.model.use_text and items is None:
        raise InputError("the text tower needs item text: give an items table "
                         "(data.items) or set model.use_text: false", key="data.items")
    vocab = build_vocabulary(train_events, items)
    sessions = sessionize(train_events, vocab, config.data.sessions,
                          config.data.pairs.event_weights, config.data.pairs.default_event_weight)
    pairs = PairPipeline(sessions, vocab, config.data.pairs)
    next_items = None
    context = resolve_retrieval_context(config.model.retrieval_context, sessions)
    streams = tuple(required_streams(config.model))
    if "next_items" in streams:
        if config.model.retrieval_context == "auto":
            logger.info("retrieval context: %s (auto: %d of %d sessions of 2+ events have one "
                        "timestamp)", context, sessions.stats["unordered_sessions"],
                        sessions.stats["multi_event_sessions"])
        try:
            next_items = NextItemPipeline(sessions, vocab, config.model.history_length,
                                          config.train.retrieval_batch_size,
                                          config.data.pairs.seed, context)
        except InputError as err:
            if len(train_events) < len(events):
                # The split, not the sessions, may be what left nothing to train on.
                kept = sessions.num_sessions
                raise InputError(
                    f"no session of the training slice has two events: the split keeps "
                    f"{len(train_events):,} of the {len(events):,} events "
                    f"({kept:,} session{'' if kept == 1 else 's'}) for training; hold out "
                    "less (train.split_fraction, train.split_date, train.holdout_users) or "
                    "give more events; " + err.reason,
                    key="train.split_fraction") from None
            raise
    cases = make_cases(test_events, vocab, config.train.eval_seed, config.data.sessions,
                       per_user=split.per_user)
    return TrainingData(vocab, sessions, pairs, next_items, cases, rejections,
                        len(train_events), len(test_events), test_events, split, context,
                        events, items, source, streams)
