"""`tfrec export --update-users` as an Apache Beam pipeline, for logs that do not fit one
machine.

    tfrec export --model-dir saved_models/retail --update-users 'logs/2026-12-*.csv' \\
        --runner DirectRunner [Beam pipeline options]

The per-user reduction runs on Beam; what it leaves (at most history_length
events a user) is merged into the version's cached users in this process, by
the same code as the local job (`tfrec.exporter.users`), so both give the same
version:

    event files (the pattern's matches, any file system Beam reads)
      -> ParDo(ReadEventFiles): one file at a time in the run's events layout
              (strict: a bad row fails the job, naming its file and line), each
              item looked up in the run's vocabulary -> (user, (time, order, item))
      -> GroupByKey (user)
      -> ParDo(LatestItems): the user's latest history_length known items
              (`tfrec.exporter.users.latest_items`: time order, back-to-back
              repeats counted once as the run's sessions do)
      -> WriteToParquet: shards in a hidden temporary folder of the model folder
    then, here: the shards -> the cached users recomputed by the query tower ->
    the next version, written whole or not at all (`update_users`).

One file must fit a worker; the log as a whole need not fit anywhere. The
workers need tfrec installed, and the run's vocabulary and the model folder
at the same path (a shared file system), as `tfrec.beam.all_users`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

# First: the missing-extra error.
from tfrec.beam._imports import (  # noqa: I100
    beam, beam_errors_raised_not_logged, counter, make_pipeline)
import numpy as np
import pandas as pd
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet
from apache_beam.metrics import Metrics


from tfrec.errors import InputError
from tfrec.exporter.layout import TMP_PREFIX, VersionFolder
from tfrec.exporter.saved_model import ExportResult
from tfrec.exporter.update import CatalogueUpdate, previous_version
from tfrec.exporter.users import KEY, latest_items, update_users

logger = logging.getLogger(__name__)

SCHEMA = pa.schema([("user", pa.string()), ("item", pa.int64()), ("time", pa.int64()),
                    ("line", pa.int64())])
COUNTERS = ("events", "unknown_item_events", "no_known_item")
# A row's order within one timestamp: its file's place in the match, then its line.
FILE_STRIDE = 10**12


class ReadEventFiles(beam.DoFn):
    """(file index, path) -> (user, (time, order, item id)) for each of its events."""

    def __init__(self, schema, vocab_path: str, layout: str = "events"):
        self.schema, self.vocab_path, self.layout = schema, str(vocab_path), layout
        self._events = Metrics.counter(__name__, "events")
        self._unknown = Metrics.counter(__name__, "unknown_item_events")

    def setup(self):
        from tfrec.data.vocab import ItemVocabulary

        self._vocab = ItemVocabulary.load(self.vocab_path)

    def process(self, element):
        from tfrec.exporter.users import read_user_events

        number, path = element
        events = read_user_events(_local_copy(path), self.schema, self.layout)
        index = self._vocab.lookup(events["item"].to_numpy(dtype=object))
        self._events.inc(len(events))
        self._unknown.inc(int((index == 0).sum()))
        order = events["line"].to_numpy(np.int64) + number * FILE_STRIDE
        for user, t, o, item, i in zip(events["user"].to_numpy(dtype=object),
                                       events["time"].to_numpy(np.int64), order,
                                       events["item"].to_numpy(dtype=object), index):
            yield str(user), (int(t), int(o), str(item) if i == 0 else int(i))


def _local_copy(path: str) -> str:
    """`path` readable by pandas: itself on the local file system; on another (gs://,
    s3://) a copy in a temporary file (the reader needs a seekable local file)."""
    if "://" not in path:
        return path
    import tempfile

    suffix = "".join(Path(path).suffixes)
    handle, local = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(handle, "wb") as out, FileSystems.open(path) as source:
        shutil.copyfileobj(source, out)
    return local


class LatestItems(beam.DoFn):
    """(user, its events) -> its latest `length` known items, as `SCHEMA` rows."""

    def __init__(self, length: int, dedupe_consecutive: bool):
        self.length, self.dedupe = int(length), bool(dedupe_consecutive)
        self._none = Metrics.counter(__name__, "no_known_item")

    def process(self, element):
        user, events = element
        events = list(events)
        frame = pd.DataFrame({"user": user, "item": [e[2] for e in events],
                              "time": [e[0] for e in events], "line": [e[1] for e in events]})
        # Unknown ids arrive as their text, known ones as their index.
        lookup = np.vectorize(lambda v: v if isinstance(v, (int, np.integer)) else 0,
                              otypes=[np.int64])
        latest, stats = latest_items(frame, lookup, self.length, self.dedupe)
        self._none.inc(stats["no_known_item"])
        for row in latest.itertuples(index=False):
            yield {"user": row.user, "item": int(row.item), "time": int(row.time),
                   "line": int(row.line)}


def unknown_items(events):
    """The unknown item ids' count, as the local job counts them (distinct ids)."""
    return (events
            | "UnknownIds" >> beam.FlatMap(lambda kv: [kv[1][2]] if isinstance(kv[1][2], str)
                                           else [])
            | "Distinct" >> beam.Distinct()
            | "Count" >> beam.combiners.Count.Globally())


@dataclasses.dataclass
class UsersPipelineSummary:
    """What `run` did: the version written, and the pipeline's state and time."""

    result: ExportResult
    files: list[str]
    state: str
    pipeline_seconds: float
    seconds: float


def match_files(pattern: str) -> list[str]:
    """The files `pattern` names (a path or a glob, on any file system Beam reads), sorted.

    Raises:
      InputError: no file matches.
    """
    try:
        found = sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
    except Exception:  # noqa: BLE001  (Beam raises a BeamIOError when nothing matches)
        found = []
    if not found:
        raise InputError("no events file matches", path=pattern, key=KEY)
    return found


def run(model_dir: str | Path, events: str, from_version: int | None = None,
        run_dir: str | Path | None = None, index_settings: dict | None = None,
        version: int | None = None, serving_config_dir: str | Path | None = None,
        ranking_stage: bool | None = None, catalogue: CatalogueUpdate = CatalogueUpdate(),
        pipeline_args: Sequence[str] = ()) -> UsersPipelineSummary:
    """Runs the pipeline, then writes the next version (see the module's docstring).

    Args:
      model_dir: the model's base path.
      events: a file or a glob of files in the run's events layout (the UCI layout
        for an Online Retail run).
      pipeline_args: Beam pipeline options (--runner, --direct_num_workers, ...).
      the others: as `tfrec.exporter.users.update_users`'s.

    Raises:
      InputError: no matching file, a bad row (the job fails, nothing is written),
        and `update_users`' errors.
    """
    from tfrec.exporter.update import load_version_model
    from tfrec.run_folder import RunFolder

    started = time.perf_counter()
    model_dir = Path(model_dir)
    files = match_files(events)
    source = previous_version(model_dir, from_version)
    metadata = VersionFolder(source).read_metadata()
    run_path = Path(run_dir or metadata.get("run", ""))
    config, vocab, model = load_version_model(metadata, source, run_dir)
    length = int(model.query_tower.history_length)
    del model
    scratch = model_dir / f"{TMP_PREFIX}users-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        pipeline, options = make_pipeline(pipeline_args, "export.runner")
        read = (pipeline
                | "Files" >> beam.Create(list(enumerate(files)))
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(ReadEventFiles(config.data.events_schema,
                                                      RunFolder(run_path).vocab_file,
                                                      config.data.layout)))
        (read
         | "ByUser" >> beam.GroupByKey()
         | "Latest" >> beam.ParDo(LatestItems(length,
                                              config.data.sessions.dedupe_consecutive))
         | "Write" >> WriteToParquet(str(scratch / "latest"), SCHEMA,
                                     file_name_suffix=".parquet"))
        (unknown_items(read)
         | "WriteUnknown" >> beam.io.WriteToText(str(scratch / "unknown_items"),
                                                 shard_name_template=""))
        t = time.perf_counter()
        try:
            with beam_errors_raised_not_logged():
                result = pipeline.run()
                state = result.wait_until_finish()
        except Exception as err:  # a worker's InputError comes back wrapped by the runner
            message = str(err)
            if "InputError" in message or "tfrec.errors" in message:
                reason = message.strip().splitlines()[-1]
                raise InputError(f"the pipeline failed on a bad events file: {reason}",
                                 path=events, key=KEY) from None
            raise
        pipeline_seconds = time.perf_counter() - t
        shards = sorted(scratch.glob("latest*.parquet"))
        latest = (pd.concat([pd.read_parquet(p) for p in shards], ignore_index=True)
                  if shards else pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                                               (("user", object), ("item", np.int64),
                                                ("time", np.int64), ("line", np.int64))}))
        unknown_file = scratch / "unknown_items"
        stats = {name: int(counter(result, __name__, name) or 0) for name in COUNTERS}
        stats["unknown_items"] = (int(unknown_file.read_text().strip() or 0)
                                  if unknown_file.exists() else 0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    written = update_users(model_dir, events, from_version=from_version, run_dir=run_dir,
                           index_settings=index_settings, version=version,
                           serving_config_dir=serving_config_dir, ranking_stage=ranking_stage,
                           catalogue=catalogue, latest=latest, latest_stats=stats,
                           source_name=events)
    return UsersPipelineSummary(written, files, str(state), pipeline_seconds,
                                time.perf_counter() - started)
