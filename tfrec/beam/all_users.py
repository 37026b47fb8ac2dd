"""Every known user's recommendations as an Apache Beam pipeline.

    tfrec recommend --all-users --model-dir saved_models/retail -k 100 --out recs/part \\
        --runner DirectRunner [--version N] [Beam pipeline options]

The same job as `tfrec recommend --all-users` (`tfrec.all_users`), on Beam:

    user ids (ReadFromText: the version's user ids file (its known users),
              or another file of ids, one a line: `run(users=...)`)
      -> BatchElements (batch_size users per model call)
      -> ParDo(RecommendForUsers): the SavedModel's recommend_for_user signature,
              loaded once per worker process (`setup`, shared by its threads),
              one call per batch -> a pyarrow table of rows (`tfrec.all_users.SCHEMA`)
      -> WriteToParquetBatched: Parquet shards PREFIX-SSSSS-of-NNNNN.parquet

Rows and their order within a user are the local job's (user_id, rank,
item_id, score; empty slots left out), so the shards hold the same rows as its
file. The runner is the DirectRunner unless the pipeline options name another
(``--runner FlinkRunner --flink_master ...``, ``--runner DataflowRunner
--project ... --region ... --temp_location gs://...``); the pipeline itself is
the same on every runner, and the command line passes every argument it does
not know to Beam as a pipeline option. Workers need tfrec installed
(``--extra_package`` a wheel of it, or a container image) and the model folder
at the same path (a shared file system); the user list and the output may be on
any file system Beam reads (gs://, s3://, hdfs://).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

# First: the missing-extra error.
from tfrec.beam._imports import (  # noqa: I100
    beam, beam_errors_raised_not_logged, counter, make_pipeline)
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquetBatched
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared

from tfrec.all_users import (DEFAULT_BATCH_SIZE, SCHEMA, check_k, clean_user_id,
                             load_user_recommender, recommend_batch, version_folder)
from tfrec.config import RecommendSettings
from tfrec.errors import InputError
from tfrec.exporter.layout import VersionFolder

logger = logging.getLogger(__name__)

SUFFIX = ".parquet"
COUNTERS = ("users", "rows", "fallback_users")


class _Loaded:
    """The loaded signature, in a weakly referenceable holder (`Shared` needs one)."""

    def __init__(self, signature):
        self.signature = signature


class RecommendForUsers(beam.DoFn):
    """A batch of user ids -> their rows (`tfrec.all_users.SCHEMA`), one pyarrow table.

    The version is loaded in `setup`, once per worker process: the threads of a
    process share it (`apache_beam.utils.shared.Shared`).
    """

    def __init__(self, version_dir: str, k: int):
        self.version_dir = str(version_dir)
        self.k = int(k)
        self._shared = Shared()
        self._counters = {name: Metrics.counter(__name__, name) for name in COUNTERS}

    def setup(self):
        self._loaded = self._shared.acquire(
            lambda: _Loaded(load_user_recommender(self.version_dir)), tag=self.version_dir)

    def process(self, user_ids: list[str]):
        table = recommend_batch(self._loaded.signature, user_ids, self.k)
        self._counters["users"].inc(len(user_ids))
        self._counters["rows"].inc(len(table))
        self._counters["fallback_users"].inc(int(table.schema.metadata[b"fallback_users"]))
        if len(table):
            yield table.replace_schema_metadata(None)


class RecommendAllUsers(beam.PTransform):
    """PCollection of user ids (str) -> PCollection of row tables (`tfrec.all_users.SCHEMA`)."""

    def __init__(self, version_dir: str | Path, k: int, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        self.version_dir, self.k, self.batch_size = str(version_dir), int(k), int(batch_size)

    def expand(self, user_ids):
        size = self.batch_size
        return (user_ids
                | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
                | "Recommend" >> beam.ParDo(RecommendForUsers(self.version_dir, self.k)))


@dataclasses.dataclass
class BeamSummary:
    """What `run` wrote.

    Attributes:
      shards: the Parquet files written (PREFIX-SSSSS-of-NNNNN.parquet), sorted.
      version_dir: the exported version that answered.
      k: recommendations asked per user.
      users, rows, fallback_users: the pipeline's counters (None on a runner
        that reports no metrics).
      state: the runner's final pipeline state (DONE).
      seconds: wall time, pipeline construction included.
    """

    shards: list[str]
    version_dir: Path
    k: int
    users: int | None
    rows: int | None
    fallback_users: int | None
    state: str
    seconds: float


def _existing_shards(out: str) -> list[str]:
    pattern = f"{out}-*-of-*{SUFFIX}"
    try:
        return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
    except Exception:  # noqa: BLE001  (Beam raises a BeamIOError when nothing matches)
        return []


def build(pipeline: beam.Pipeline, version_dir: str | Path, out: str, k: int,
          users: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE):
    """Adds the job to `pipeline`: read the user ids, recommend, write the shards.

    Args:
      pipeline: the Beam pipeline.
      version_dir: the exported version (checked by the caller: `run`).
      out: the shards' prefix (PREFIX-SSSSS-of-NNNNN.parquet).
      k: recommendations per user (checked by the caller).
      users: a file of user ids, one a line, each taken once, blank lines skipped
        (default: the version's user list).
      batch_size: users per model call.

    Returns:
      The write's result (a PCollection of the written file names).
    """
    source = users if users is not None else str(VersionFolder(version_dir).user_ids)
    ids = pipeline | "ReadUsers" >> beam.io.ReadFromText(source)
    if users is not None:
        # A file of the caller's: each id once (a repeated id would give repeated rows),
        # spaces around an id removed and blank lines skipped, as the data's ids are read.
        ids = (ids
               | "StripIds" >> beam.Map(clean_user_id)
               | "SkipBlankLines" >> beam.Filter(bool)
               | "EachIdOnce" >> beam.Distinct())
    return (ids
            | "RecommendAllUsers" >> RecommendAllUsers(version_dir, k, batch_size)
            | "WriteParquet" >> WriteToParquetBatched(out, SCHEMA, codec="snappy",
                                                      file_name_suffix=SUFFIX))


def run(model_dir: str | Path, out: str, k: int = RecommendSettings.k, version: int | None = None,
        users: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
        pipeline_args: Sequence[str] = ()) -> BeamSummary:
    """Runs the pipeline to completion: every user's top k to Parquet shards.

    Args:
      model_dir: the model's base path (numbered versions below it).
      out: the shards' prefix, e.g. recs/part -> recs/part-00000-of-00002.parquet.
      k: recommendations per user, 1 to the export's max_k.
      version: the version to use (default: the newest).
      users: a file of user ids, one a line (default: the version's user list;
        an id the export does not know gets the most popular items; each id
        once, blank lines skipped).
      batch_size: users per model call.
      pipeline_args: Beam pipeline options (--runner, --direct_num_workers, ...).

    Returns:
      A `BeamSummary`.

    Raises:
      InputError: a missing model folder or version, k out of range, a batch
        size under 1, a missing users file, or shards under `out` already.
    """
    started = time.perf_counter()
    version_dir = version_folder(model_dir, version)
    k = check_k(version_dir, k)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}",
                         key="recommend.batch_size")
    if users is not None and not FileSystems.exists(users):
        raise InputError("no such users file", path=users, key="recommend.users")
    existing = _existing_shards(out)
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise InputError(f"output shards exist already ({existing[0]}{more}); choose another "
                         "prefix or remove them", path=out, key="recommend.out")
    pipeline, options = make_pipeline(pipeline_args, "recommend.runner")
    build(pipeline, version_dir, out, k, users, batch_size)
    logger.info("running the pipeline on %s", options.get_all_options()["runner"]
                or "the DirectRunner")
    with beam_errors_raised_not_logged():
        result = pipeline.run()
        state = result.wait_until_finish()
    return BeamSummary(_existing_shards(out), version_dir, k,
                       *(counter(result, __name__, name) for name in COUNTERS), str(state),
                       time.perf_counter() - started)
