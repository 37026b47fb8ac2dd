"""`tfrec export --update-users EVENTS`: the next version with fresh user embeddings, no training.

Users keep acting after the model is trained. Each user of the events file
gets its cached state recomputed: its latest items (the history_length items
its cached embedding was built from, then the file's events in time order, the
last history_length of them known to the model) and their query embedding
through the trained query tower, the one `embed_query` and training use. The
ranking stage reads the same items (the version's user histories) for its
features and exclusions. Users the version did not know are added; users the
file does not name keep their state. The catalogue, the index settings and the
model stay the previous version's, and the version is written by the same
`write_version` as a full export: whole or not at all, the previous version
untouched.

An event whose item the model does not know (an added item, or one it never
saw) is skipped and counted: it has no trained embedding to feed the query
tower. A back-to-back repeat of an item (in time order) is counted once when
the run's `data.sessions.dedupe_consecutive` is on, as training's sessions do.

`latest_items` is the per-user step: `tfrec.beam.update_users` runs it over
logs that do not fit one machine and hands its output (at most history_length
events a user) to `update_users`, which gives the same result.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tfrec.errors import InputError
from tfrec.exporter.layout import VersionFolder
from tfrec.exporter.module import UserCache
from tfrec.exporter.saved_model import ExportResult
from tfrec.exporter.update import (CatalogueUpdate, load_version_model, previous_version,
                                   read_users, write_updated_version)

logger = logging.getLogger(__name__)

KEY = "export.update_users"


@dataclasses.dataclass
class UsersChange:
    """What an update of the users did.

    Attributes:
      events: events read.
      unknown_item_events: events skipped: their item is unknown to the model.
      unknown_items: distinct item ids among them.
      updated: cached users whose state was recomputed.
      added: users new to the version.
      no_known_item: users of the events none of whose items the model knows (left as
        they were: a cached user keeps its state, a new one is not added).
      users: cached users in the new version.
    """

    events: int = 0
    unknown_item_events: int = 0
    unknown_items: int = 0
    updated: int = 0
    added: int = 0
    no_known_item: int = 0
    users: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_user_events(path: str | Path, schema, layout: str = "events") -> pd.DataFrame:
    """The events file of --update-users, strictly (a bad row is an error naming its line,
    not a row dropped): a file in the UCI Online Retail layout for a run of that layout
    (its cleaning rules applied, as in training), otherwise an events table in the run's
    events layout (`schema`: the columns of data.events_schema).

    Returns:
      events: columns user, item (str), time (int64 epoch seconds), line.

    Raises:
      InputError: a missing file or column, no rows, or a bad row.
    """
    from tfrec.data.events import read_events

    path = Path(path)
    if not path.exists():
        if any(c in str(path) for c in "*?["):
            raise InputError("events file not found: a glob of files is read by the Beam job "
                             "(--runner DirectRunner, or another runner); without --runner one "
                             "file is read", path=str(path), key=KEY)
        raise InputError("events file not found", path=str(path), key=KEY)
    if path.is_dir():
        raise InputError("events path is a folder, expected a CSV or Parquet file",
                         path=str(path), key=KEY)
    if layout == "online_retail":
        form = "the run's layout, UCI Online Retail"
    else:
        # Only users, items and times are read: an event type or session column of the
        # run's layout is not needed here.
        schema = dataclasses.replace(schema, event_col=None, session_col=None)
        when = (f"format {schema.time_format!r}" if schema.time_format else
                f"ISO 8601 or epoch {schema.time_unit}")
        form = (f"the run's events layout: columns {schema.user_col}, {schema.item_col}, "
                f"{schema.time_col} ({when})")
    try:
        if layout == "online_retail":
            from tfrec.datasets.online_retail import read_online_retail

            events, _, _ = read_online_retail(path, strict=True)
        else:
            events, _ = read_events(path, schema, strict=True)
    except InputError as err:
        # The run's settings are not changed by an export: the file must fit them.
        reason = re.sub(r"; set data\.events_schema\.\w+( to the right one|: \w+)?$", "",
                        err.reason)
        raise InputError(f"{reason} (the events of --update-users are read in {form}, the "
                         "run's data.events_schema: write the file so)",
                         path=err.path or str(path), line=getattr(err, "line", None),
                         key=KEY) from None
    return events[["user", "item", "time", "line"]].reset_index(drop=True)


def warn_if_seen_before(latest: pd.DataFrame, metadata: dict, version: str,
                        cached_ids=None) -> str | None:
    """A warning (logged and returned) when events given are not newer than the last event
    the version's users were refreshed with: given again (the same file twice, or logs that
    overlap), they count twice in those users' histories. `cached_ids`: the version's
    users (None: every user given is taken as one); a user it does not hold has no
    history to count an event twice in."""
    last = (metadata.get("users_update") or {}).get("last_event")
    trained = (metadata.get("users_data") or {}).get("last_session_start")
    if cached_ids is not None and len(latest):
        latest = latest[pd.Index(np.asarray(cached_ids, dtype=object)).get_indexer(
            latest["user"].to_numpy(dtype=object)) >= 0]
    if not (last or trained) or not len(latest):
        return None
    times = latest["time"].to_numpy()
    if last:
        seen = int((times <= int(pd.Timestamp(last).timestamp())).sum())
        what = (f"at or before {last}, the last event version {version}'s users were "
                "refreshed with")
    else:  # the export's own users: built from the training sessions
        seen = int((times < int(pd.Timestamp(trained).timestamp())).sum())
        what = (f"before {trained}, when the last training session that version {version}'s "
                "users were built from starts")
    if not seen:
        return None
    message = (f"{seen:,} of the events given are {what}: events the users were built from "
               "count twice in their histories; give only events since then")
    logger.warning("%s", message)
    return message


def latest_items(events: pd.DataFrame, vocab_lookup, length: int,
                 dedupe_consecutive: bool = True) -> tuple[pd.DataFrame, dict]:
    """Each user's latest `length` known items of `events`.

    Args:
      events: columns user, item (ids), time, line (the order within one time).
      vocab_lookup: item ids -> vocabulary indices (0: unknown to the model).
      length: items kept a user (the model's history_length).
      dedupe_consecutive: count an item repeated back to back (in time order) once.

    Returns:
      (frame with columns user, item (the index), time, line: at most `length`
      rows a user, in time order; {"events", "unknown_item_events",
      "unknown_items", "no_known_item"} counts, as `UsersChange`'s).
    """
    index = np.asarray(vocab_lookup(events["item"].to_numpy(dtype=object)), np.int64)
    unknown = index == 0
    codes, users = _user_codes(events["user"].to_numpy(dtype=object))
    stats = {"events": int(len(events)), "unknown_item_events": int(unknown.sum()),
             "unknown_items": int(pd.unique(events["item"].to_numpy(dtype=object)[unknown]).size),
             "no_known_item": int(len(users) - np.unique(codes[~unknown]).size)}
    code, item = codes[~unknown], index[~unknown]
    when = events["time"].to_numpy(np.int64)[~unknown]
    line = events["line"].to_numpy(np.int64)[~unknown]
    order = np.lexsort((line, when, code))
    code, item, when, line = code[order], item[order], when[order], line[order]
    if dedupe_consecutive and len(code):
        keep = np.ones(len(code), bool)
        keep[1:] = (code[1:] != code[:-1]) | (item[1:] != item[:-1])
        code, item, when, line = code[keep], item[keep], when[keep], line[keep]
    keep = _from_end(code, len(users)) < length
    return pd.DataFrame({"user": users[code[keep]], "item": item[keep], "time": when[keep],
                         "line": line[keep]}), stats


def _user_codes(user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes [n] into the sorted distinct ids, the sorted distinct ids (str))."""
    codes, uniques = pd.factorize(np.asarray(user, dtype=object).astype(str))
    uniques = np.asarray(uniques, dtype=object)
    order = np.argsort(uniques, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank[codes], uniques[order]


def _from_end(code: np.ndarray, groups: int) -> np.ndarray:
    """For rows grouped by `code` (sorted), each row's place from its group's end (0: last)."""
    ends = np.cumsum(np.bincount(code, minlength=groups))
    return ends[code] - 1 - np.arange(len(code))


def merge_users(cache: UserCache, latest: pd.DataFrame, length: int,
                chunk: int = 65_536, dedupe_consecutive: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The new histories of the users in `latest` (`latest_items`' frame, in any order):
    each one's cached items, then its latest items, the last `length` of them; with
    `dedupe_consecutive` a latest first item equal to the cached last counts once, as
    `latest_items` counts a repeat within the events.

    Returns:
      (user ids [u], sorted; rows [u] in the cache (-1: a new user); histories
      [u, length] int32, left-padded with 0).
    """
    codes, users = _user_codes(latest["user"].to_numpy(dtype=object))
    order = np.lexsort((latest["line"].to_numpy(np.int64), latest["time"].to_numpy(np.int64),
                        codes))
    code, item = codes[order], latest["item"].to_numpy(np.int64)[order]
    from_end = _from_end(code, len(users))
    keep = from_end < length
    new = np.zeros((len(users), length), np.int32)
    new[code[keep], length - 1 - from_end[keep]] = item[keep]
    rows = pd.Index(np.asarray(cache.ids).astype(str)).get_indexer(users.astype(str))
    histories = np.zeros((len(users), length), np.int32)
    for start in range(0, len(users), chunk):
        part = slice(start, start + chunk)
        combined = np.zeros((len(new[part]), 2 * length), np.int32)
        known = rows[part] >= 0
        combined[known, :length] = cache.histories[rows[part][known]]
        combined[:, length:] = new[part]
        if dedupe_consecutive:
            given = new[part] != 0
            first = np.argmax(given, axis=1)  # the first latest item's column
            rows_ = np.arange(len(first))
            repeat = (given.any(axis=1) & (combined[:, length - 1] != 0)
                      & (new[part][rows_, first] == combined[:, length - 1]))
            combined[rows_[repeat], length + first[repeat]] = 0
        # A stable sort of "is an item" puts the padding first and keeps the items' order:
        # the last `length` columns are the last `length` items.
        place = np.argsort(combined != 0, axis=1, kind="stable")[:, length:]
        histories[part] = np.take_along_axis(combined, place, axis=1)
    return users, rows, histories


def refreshed_cache(cache: UserCache, latest: pd.DataFrame, embed,
                    length: int, dedupe_consecutive: bool = True) -> tuple[UserCache, dict]:
    """The cache with the users of `latest` recomputed (`merge_users`) and their
    embeddings `embed(histories)` (the query tower); new users appended.

    Returns:
      (the new cache, {"updated", "added", "users"}).
    """
    users, rows, histories = merge_users(cache, latest, length,
                                         dedupe_consecutive=dedupe_consecutive)
    embeddings = np.asarray(embed(histories), np.float32) if len(users) else np.zeros(
        (0, cache.embeddings.shape[1]), np.float32)
    known = rows >= 0
    ids = np.asarray(cache.ids, dtype=object).copy()
    vectors = np.array(cache.embeddings, np.float32, copy=True)
    items = np.array(cache.histories, np.int32, copy=True)
    vectors[rows[known]] = embeddings[known]
    items[rows[known]] = histories[known]
    new = ~known
    cache = UserCache(np.concatenate([ids, users[new]]).astype(object),
                      np.concatenate([vectors, embeddings[new]]),
                      np.concatenate([items, histories[new]]))
    return cache, {"updated": int(known.sum()), "added": int(new.sum()),
                   "users": int(len(cache.ids))}


def update_users(model_dir: str | Path, events: str | Path | pd.DataFrame,
                 from_version: int | None = None, run_dir: str | Path | None = None,
                 index_settings: dict | None = None, version: int | None = None,
                 serving_config_dir: str | Path | None = None,
                 ranking_stage: bool | None = None,
                 catalogue: CatalogueUpdate = CatalogueUpdate(),
                 latest: pd.DataFrame | None = None, latest_stats: dict | None = None,
                 source_name: str | None = None) -> ExportResult:
    """Writes the next version of `model_dir` from `from_version` (default the newest)
    with its users refreshed from `events`, without training (see the module's docstring).

    Args:
      model_dir: the model's base path.
      events: the events file (the run's events layout), or the events themselves
        (columns user, item, time, line).
      from_version, run_dir, index_settings, version, serving_config_dir,
        ranking_stage: as `tfrec.exporter.update.update_catalogue`'s.
      catalogue: items to add or drop in the same version.
      latest, latest_stats: `latest_items`' output computed elsewhere (the Beam
        pipeline); `events` is then only named in the metadata.
      source_name: how the metadata names the events (default: `events`).

    Returns:
      The version written; its metadata's `users_update` says what changed
      (`UsersChange`).

    Raises:
      InputError: a missing or malformed events file, one with no item the model
        knows, a missing version or run, and `update_catalogue`'s errors. Nothing
        is written then.
    """
    from tfrec.ranking.two_stage import check_stage_unchanged, load_stage
    from tfrec.exporter.catalogue import read_drop_ids, read_new_items

    started = time.perf_counter()
    model_dir = Path(model_dir)
    source = previous_version(model_dir, from_version)
    metadata = VersionFolder(source).read_metadata()
    config, vocab, model = load_version_model(metadata, source, run_dir)
    run = Path(run_dir or metadata["run"])
    if ranking_stage is None:
        ranking_stage = (metadata.get("ranking_stage") or {}).get("enabled", True)
    if ranking_stage:
        check_stage_unchanged(metadata, run, source)
    metadata = {**metadata, "run": str(run.resolve())}  # --run: the run as it is now
    length = int(model.query_tower.history_length)
    if latest is None:
        frame = (read_user_events(events, config.data.events_schema, config.data.layout)
                 if not isinstance(events, pd.DataFrame) else events)
        latest, latest_stats = latest_items(frame, vocab.lookup, length,
                                            config.data.sessions.dedupe_consecutive)
    if not len(latest) and catalogue.add_items is None and catalogue.drop_items is None:
        stats = latest_stats or {}
        raise InputError(f"no event names an item the model knows ({stats.get('events', 0):,} "
                         f"events, {stats.get('unknown_items', 0):,} distinct item ids, none "
                         "in the run's vocabulary): nothing to update", path=str(
                             source_name or events if not isinstance(events, pd.DataFrame)
                             else "events"), key=KEY)
    new_items = (read_new_items(catalogue.add_items, config.data.items_schema)
                 if catalogue.add_items is not None else None)
    drop_ids = read_drop_ids(catalogue.drop_items) if catalogue.drop_items is not None else []
    cache = read_users(source, int(model.embedding_dim), length)
    warn_if_seen_before(latest, metadata, source.name, cache.ids)
    before = len(cache.ids)
    cache, counts = refreshed_cache(cache, latest, model.query_embeddings, length,
                                    config.data.sessions.dedupe_consecutive)
    change = UsersChange(**(latest_stats or {}), **counts)
    logger.info("users of version %s: %d; %d updated, %d added (%d events, %d skipped: "
                "item unknown to the model): %d users", source.name, before, change.updated,
                change.added, change.events, change.unknown_item_events, len(cache.ids))
    stage = load_stage(run, model, missing_ok=not ranking_stage)
    name = source_name if source_name is not None else (
        "events" if isinstance(events, pd.DataFrame) else str(events))
    users_update = {
        "from_version": int(source.name),
        "updated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "events_file": name, **change.to_dict(), "history_length": length,
        "last_event": (datetime.datetime.fromtimestamp(int(latest["time"].max()),
                                                       datetime.timezone.utc).isoformat()
                       if len(latest) else None)}
    return write_updated_version(model_dir, source, metadata, model, vocab, new_items,
                                 drop_ids, catalogue, index_settings, version,
                                 serving_config_dir, started=started, stage=stage,
                                 ranking_stage=ranking_stage, users=cache,
                                 users_update=users_update)
