"""Every known user's recommendations in one job, streamed to Parquet.

    tfrec recommend --all-users --model-dir saved_models/retail -k 100 --out recs.parquet

The job loads one exported version in-process and calls its
``recommend_for_user`` signature (user ids [batch] string, k [] int32 ->
item_ids [batch, k] string, scores [batch, k] float32, known [batch] bool) on
the users listed in the version's user ids file (its known users), one
chunk of users at a time. The user embeddings live inside the SavedModel and
the signature excludes each user's own items, so this module only feeds ids
and writes rows.

Output rows, one per (user, recommended item): ``user_id`` string, ``rank``
int32 (1 = best), ``item_id`` string, ``score`` float32 (`SCHEMA`). Each chunk
of users is one Parquet row group; memory holds one chunk's results at a time.
Slots the signature leaves empty (``""``, score -inf: a catalogue with fewer
than k items left after the exclusions) are not written, so such a user has
fewer than k rows.

The output is written to a hidden temporary file next to it and renamed into
place when complete: an interrupted or failed job leaves no output and removes
its temporary (one killed outright leaves it, and the next job in that folder
removes it, as an export removes an unfinished version's: `tfrec.exporter.layout`).

Pieces for other runners of the same job (a Beam ``DoFn``, say):
`version_folder` (which version), `check_k` (k against the export's max_k),
`count_users` and `user_id_batches` (the known users, streamed),
`load_user_recommender` (the signature, loaded once) and `recommend_batch`
(a chunk of user ids -> a ``pyarrow.Table`` of rows, `SCHEMA`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tfrec.config import RecommendSettings
from tfrec.errors import InputError
from tfrec.exporter.layout import (ALL_USERS_READS, ModelFolder, VersionFolder,
                                   remove_stale_temporaries, reporting_write_failures,
                                   temporary_path)
from tfrec.progress import ProgressLine
from tfrec.utils import ensure_folder, id_list, top_k_count

logger = logging.getLogger(__name__)

SIGNATURE = "recommend_for_user"
TMP_MARK = ".tmp-recs-"
# A temporary of another output name, its process gone here, unchanged this long: stale.
STALE_SECONDS = 24 * 3600
SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()),
                    ("item_id", pa.string()), ("score", pa.float32())])
DEFAULT_BATCH_SIZE = RecommendSettings.batch_size


@dataclasses.dataclass
class AllUsersSummary:
    """What `recommend_all_users` wrote.

    Attributes:
      path: the Parquet file.
      version_dir: the exported version that answered.
      k: recommendations asked per user.
      users: users written (every known user of the export).
      rows: rows written (users x k, less empty slots).
      row_groups: Parquet row groups (one per chunk of users).
      fallback_users: users the signature did not know (answered with the most
        popular items); 0 for an export's own user list.
      seconds: wall time of the whole job, loading included.
      recommend_seconds: time spent computing and writing rows.
      uncached_users: users of the run's data the export has no cached embedding
        for (no training event: all their events held out or after the split), so
        not in the output; listed in the version's uncached user ids file.
    """

    path: Path
    version_dir: Path
    k: int
    users: int
    rows: int
    row_groups: int
    fallback_users: int
    seconds: float
    recommend_seconds: float
    uncached_users: int = 0

    @property
    def users_per_second(self) -> float:
        return self.users / self.recommend_seconds if self.recommend_seconds > 0 else 0.0


def version_folder(model_dir: str | Path, version: int | None = None) -> Path:
    """The exported version `model_dir/<version>/`; the newest complete one by default.

    Raises:
      InputError: no such folder, no versions in it, no such version, or it is
        incomplete.
    """
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise InputError("no such model folder", path=str(model_dir), key="recommend.model_dir")
    if not model_dir.is_dir():
        raise InputError("model folder is a file, expected a folder of versions",
                         path=str(model_dir), key="recommend.model_dir")
    versions = ModelFolder(model_dir).versions()
    if not versions:
        raise InputError("no exported versions in this model folder (numbered subfolders, as "
                         "tfrec export writes them)", path=str(model_dir),
                         key="recommend.model_dir")
    if version is not None and version not in versions:
        raise InputError(f"version {version} does not exist; versions here: "
                         f"{', '.join(map(str, versions))}", path=str(model_dir),
                         key="recommend.version")
    # The newest complete version by default (one being copied in is passed over, as the
    # server passes it over); a version asked for must be complete.
    return ModelFolder(model_dir).source_version(version, "recommend.version",
                                                 ALL_USERS_READS).path


def check_k(version_dir: str | Path, k: int) -> int:
    """k, checked against 1 and the export's max_k (the most its index returns).

    Raises:
      InputError: k under 1 or above max_k.
    """
    folder = VersionFolder(version_dir)
    max_k = int(folder.read_metadata()["max_k"])
    if not 1 <= k <= max_k:
        raise InputError(f"k must be between 1 and {max_k} (the index's max_k in "
                         f"{folder.metadata}), got {k}", key="recommend.k")
    return int(k)


def _user_ids_path(version_dir: str | Path) -> Path:
    path = VersionFolder(version_dir).user_ids
    if not path.is_file():
        raise InputError("no user list in this export (tfrec export writes one per version)",
                         path=str(path))
    return path


def count_users(version_dir: str | Path) -> int:
    """How many users `user_id_batches` yields: the lines of the user ids file."""
    count, last = 0, b"\n"
    with _user_ids_path(version_dir).open("rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def users_file(path: str | Path) -> Path:
    """A file of user ids to recommend for (`recommend.users`), checked to be there.

    Raises:
      InputError: no such file, or a folder.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such users file" if not path.exists() else
                         "the users file is a folder, expected a file of user ids, one a line",
                         path=str(path), key="recommend.users")
    return path


def count_listed_users(path: str | Path) -> int:
    """How many distinct ids a users file lists (spaces around an id removed, blank lines
    skipped), as the job takes them."""
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        return len({clean_user_id(line) for line in f} - {""})


def clean_user_id(line: str) -> str:
    """A users file's line as the id it names: a byte-order mark (a file saved by
    Windows tools starts with one) and spaces around the id removed."""
    return line.lstrip("\ufeff").strip()


def user_id_batches(version_dir: str | Path, batch_size: int = DEFAULT_BATCH_SIZE,
                    users: str | Path | None = None) -> Iterator[list[str]]:
    """User ids in file order, `batch_size` at a time (the file is streamed, never read
    whole): the export's known users, or those of a `users` file (one id a line, spaces
    around an id and a byte-order mark removed, blank lines skipped, each id taken once,
    as the Beam job takes them).

    Raises:
      InputError: a batch size under 1; a users file that is missing or not UTF-8
        (naming its line).
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}",
                         key="recommend.batch_size")
    path = _user_ids_path(version_dir) if users is None else users_file(users)
    seen: set[str] | None = None if users is None else set()
    batch: list[str] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if seen is None:
                batch.append(raw.rstrip(b"\n").decode("utf-8"))
            else:
                try:
                    user = clean_user_id(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise InputError(f"line {number} is not UTF-8 text (a users file is "
                                     "user ids, one a line)", path=str(path),
                                     key="recommend.users") from None
                if not user or user in seen:
                    continue
                seen.add(user)
                batch.append(user)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def load_user_recommender(version_dir: str | Path) -> Callable:
    """The version's `recommend_for_user` signature, loaded in this process (ScaNN and
    tensorflow-text ops registered first). Load once, call per batch.

    Raises:
      InputError: not a SavedModel, or one exported without the signature.
    """
    from tfrec.exporter.saved_model import load_saved_model

    model = load_saved_model(version_dir)
    if SIGNATURE not in model.signatures:
        raise InputError(f"this export has no {SIGNATURE} signature (it has "
                         f"{', '.join(sorted(model.signatures))}): export the run again with "
                         "this tfrec", path=str(version_dir))
    signature = model.signatures[SIGNATURE]
    signature._tfrec_model = model  # the signature's variables live as long as the model
    return signature


def recommend_batch(signature: Callable, user_ids: Sequence[str], k: int) -> pa.Table:
    """One chunk of users -> their rows (`SCHEMA`), ranked 1..k per user in input order.

    Args:
      signature: `load_user_recommender`'s result.
      user_ids: [batch] user ids (strings; a lone string or a number is refused).
      k: recommendations per user (an integer; the signature checks it against max_k).

    Returns:
      A table of user_id, rank, item_id, score; empty slots ("" / -inf) left out.
      Its `fallback_users` metadata entry counts the users answered as unknown.
    """
    import tensorflow as tf

    user_ids = id_list("user_ids", user_ids, allow_empty=True)
    k = top_k_count(k)
    if not user_ids:
        return SCHEMA.empty_table().replace_schema_metadata({"fallback_users": "0"})
    out = signature(user_ids=tf.constant(user_ids, tf.string),
                    k=tf.constant(k, tf.int32))
    items = out["item_ids"].numpy()
    scores = out["scores"].numpy().astype(np.float32, copy=False)
    batch, width = items.shape
    keep = (items != b"").ravel()
    users = np.repeat(np.arange(batch), width)[keep]
    table = pa.table({
        "user_id": pa.array(list(user_ids), pa.string()).take(pa.array(users)),
        "rank": pa.array(np.tile(np.arange(1, width + 1, dtype=np.int32), batch)[keep]),
        "item_id": pa.array(items.ravel()[keep], pa.binary()).cast(pa.string()),
        "score": pa.array(scores.ravel()[keep]),
    }, schema=SCHEMA)
    fallback = int(batch - np.count_nonzero(out["known"].numpy()))
    return table.replace_schema_metadata({"fallback_users": str(fallback)})


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise InputError("the output is a folder, expected a file path", path=str(out),
                         key="recommend.out")
    if out.exists() and not overwrite:
        raise InputError("the output exists; choose another path, or replace it with "
                         "recommend.overwrite", path=str(out), key="recommend.out")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt meanwhile, so a terminated job cleans up as an
    interrupted one does (main thread only: signal handlers live there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def recommend_all_users(model_dir: str | Path, out: str | Path,
                        k: int = RecommendSettings.k,
                        version: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                        progress: bool | Callable[[int, int], None] = True,
                        overwrite: bool = False,
                        users: str | Path | None = None) -> AllUsersSummary:
    """Writes every known user's top-k (the export's user list), or the top-k of the
    users a file lists, to a Parquet file.

    Args:
      model_dir: the model's base path (numbered versions below it).
      out: the Parquet file to write (`SCHEMA`, one row group per chunk of users).
      k: recommendations per user, 1 to the export's max_k.
      version: the version to use (default: the newest).
      batch_size: users per signature call and per row group.
      progress: True: a progress line on stderr; a callable: called with (users
        done, users in all) after each chunk; False: nothing.
      overwrite: replace an existing output (it stays as it was until the new
        one is complete).
      users: a file of user ids, one a line, instead of the export's user list (spaces
        around an id removed, blank lines skipped, each id once; an id the model does
        not know gets the most popular items, counted in `fallback_users`).

    Returns:
      A `AllUsersSummary`.

    Raises:
      InputError: a missing model folder or version, k out of range, an
        existing output (without `overwrite`), an export without the signature, a
        missing users file.
    """
    started = time.perf_counter()
    out = Path(out)
    _check_out(out, overwrite)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}",
                         key="recommend.batch_size")
    version_dir = version_folder(model_dir, version)
    k = check_k(version_dir, k)
    listed = users  # `users` counts the users done below
    total = count_users(version_dir) if listed is None else count_listed_users(
        users_file(listed))
    if listed is not None and total == 0:
        logger.warning("the users file %s lists no user id (every line is blank): the "
                       "output has no rows", listed)
    ensure_folder(out.parent if str(out.parent) else Path("."), "output folder")
    # A job's whose process is gone: of this --out at once; of another --out (a dated
    # name) once it has not changed for a day, since a job on another machine sharing the
    # folder has a process id this machine does not know.
    remove_stale_temporaries(out.parent, f".{out.name}{TMP_MARK}*")
    remove_stale_temporaries(out.parent, f".*{TMP_MARK}*", older_than=STALE_SECONDS)
    logger.info("loading %s", version_dir)
    signature = load_user_recommender(version_dir)
    line = ProgressLine(total, "users") if progress is True else None
    report = line or progress or None
    users = rows = groups = fallback = 0
    t = time.perf_counter()
    folder = out.parent if str(out.parent) else Path(".")
    with reporting_write_failures(folder, f"the recommendations {out.name}"):
        tmp, handle = temporary_path(out, TMP_MARK)
        try:
            with (_sigterm_as_interrupt(), open(handle, "wb") as sink,
                  pq.ParquetWriter(sink, SCHEMA) as writer):
                for batch in user_id_batches(version_dir, batch_size, listed):
                    table = recommend_batch(signature, batch, k)
                    fallback += int(table.schema.metadata[b"fallback_users"])
                    if len(table):
                        writer.write_table(table.replace_schema_metadata(None),
                                           row_group_size=len(table))
                        groups += 1
                    users += len(batch)
                    rows += len(table)
                    if report:
                        report(users, total)
            seconds = time.perf_counter() - t
            if out.exists() and not overwrite:  # appeared while the job ran
                _check_out(out, overwrite)
            os.replace(tmp, out)  # atomic on one file system: the whole file or none
        except BaseException:
            tmp.unlink(missing_ok=True)
            if line and line.tty:  # end the half-drawn line before the error is printed
                line.stream.write("\n")
            raise
    if line:
        line.finish(users)
    if fallback:
        logger.warning("%d of %d users were unknown to the model (answered with the most "
                       "popular items)", fallback, users)
    # The users of the run's data left out (no cached embedding): in the summary, which
    # the command line notes once (a warning here said it a second time).
    uncached = uncached_users(version_dir) if listed is None else 0
    return AllUsersSummary(out, version_dir, k, users, rows, groups, fallback,
                           time.perf_counter() - started, seconds, uncached)


def uncached_users(version_dir: str | Path) -> int:
    """How many users of the run's data the version cannot serve from a cached embedding
    (its metadata's `users_not_cached`; 0 for an export that does not say)."""
    return int(VersionFolder(version_dir).read_metadata(missing_ok=True)
               .get("users_not_cached") or 0)
