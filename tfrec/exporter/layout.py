"""The export layout: the files of an exported version and the model folder's versions.

The one place that spells them. A model folder (TF Serving's `base_path`)
holds numbered version folders and, while one is being written, a hidden
temporary folder beside them::

  <model_dir>/
    <version>/                                  one exported version
      saved_model.pb, variables/, assets/       the SavedModel
      assets.extra/tf_serving_warmup_requests   PredictionLog records (real sessions)
      assets.extra/tfrec_metadata.json          index kind, parameters, recall@k, build time
      assets.extra/embeddings/items.npy         [items, dim] float32 embeddings of the index
                                                rows, and item_ids.txt their ids (same order)
      assets.extra/embeddings/added_items.csv   item_id, text of rows the model never saw
      assets.extra/embeddings/users.npy         [users, dim] query embeddings of known users,
                                                user_ids.txt their ids, user_histories.npy
                                                their last history_length training items;
                                                uncached_user_ids.txt the users of the data
                                                with no cached embedding (no training event)
      assets.extra/projector/                   TensorBoard projector
    .tmp-export-<version>-<pid>/                a version being written

A version is complete (`VersionFolder.missing` is empty) when the files a
server needs are there: saved_model.pb, variables/variables.index and every
variables.data shard it is split into, and, for a tfrec export (one with the
`EXPORT_SIGNATURE` signature, brute-force and ScaNN alike), the metadata and
the warm-up records it counts. `tfrec serve` loads a version once it is complete
and its files have stopped changing; an export renames the whole folder into
place, a version copied by hand is waited for.

This module imports no TensorFlow: the server, the all-users job and the
tools that only list versions or read metadata stay cheap to import.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from tfrec.errors import InputError
from tfrec.utils import (Entry, Folder, json_ready, open_temporary, remove_stale_temporaries,
                         temporaries)

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-export-"
# The highest version number ever written to a model folder: a deleted newest version's
# number is not given to the next export (a server or a client that saw version N must
# never meet a different model under the same number).
LAST_VERSION = ".tfrec_last_version"
# The metadata key of the index kind; exports before it was named wrote "index".
INDEX_KIND = "index_kind"
_OLD_INDEX_KIND = "index"


# The version's extra assets, and the catalogue's and the cached users' files among them.
EXTRA = "assets.extra"
EMBEDDINGS = f"{EXTRA}/embeddings"
# A SavedModel with this signature is a tfrec export: it is complete only with its metadata.
EXPORT_SIGNATURE = "similar_items"
VARIABLES_INDEX = "variables/variables.index"
_SHARD = re.compile(r"variables\.data-(\d+)-of-(\d+)")

# Write errors reported as one line naming the folder (a full disk, a quota, a read-only
# file system, a file over the file system's size limit), by errno or by the text of
# errors that carry none (TensorFlow's and Arrow's).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_WRITE_ERROR_TEXTS = tuple(os.strerror(code) for code in sorted(WRITE_ERRNOS))


class VersionFolder(Folder):
    """One exported version, `<model_dir>/<version>/`: where each of its files lives."""

    saved_model = Entry("saved_model.pb")
    extra = Entry(EXTRA)
    metadata = Entry(f"{EXTRA}/tfrec_metadata.json")
    warmup = Entry(f"{EXTRA}/tf_serving_warmup_requests")
    projector = Entry(f"{EXTRA}/projector")
    embeddings = Entry(EMBEDDINGS, "The folder of the catalogue's and the cached users' files.")
    items = Entry(f"{EMBEDDINGS}/items.npy")
    item_ids = Entry(f"{EMBEDDINGS}/item_ids.txt")
    added_items = Entry(f"{EMBEDDINGS}/added_items.csv")
    users = Entry(f"{EMBEDDINGS}/users.npy")
    user_ids = Entry(f"{EMBEDDINGS}/user_ids.txt")
    user_histories = Entry(f"{EMBEDDINGS}/user_histories.npy")
    uncached_user_ids = Entry(f"{EMBEDDINGS}/uncached_user_ids.txt",
                              "Users of the run's data with no cached embedding.")

    @property
    def number(self) -> int:
        return int(self.path.name)

    def read_metadata(self, missing_ok: bool = False) -> dict:
        """The version's tfrec_metadata.json (an older export's "index" key read as
        "index_kind").

        Args:
          missing_ok: return {} when the file is absent (a SavedModel that is not a
            tfrec export) instead of raising.

        Raises:
          InputError: the file is absent (unless missing_ok) or not JSON.
        """
        try:
            metadata = json.loads(self.metadata.read_text())
        except FileNotFoundError:
            if missing_ok:
                return {}
            raise InputError("no tfrec metadata: not a tfrec export",
                             path=str(self.metadata)) from None
        except (ValueError, OSError) as err:
            raise InputError(f"cannot read the export's metadata: {err}",
                             path=str(self.metadata)) from None
        if INDEX_KIND not in metadata and _OLD_INDEX_KIND in metadata:
            metadata[INDEX_KIND] = metadata.pop(_OLD_INDEX_KIND)
        return metadata

    def write_metadata(self, metadata: dict) -> None:
        self.metadata.parent.mkdir(parents=True, exist_ok=True)
        self.metadata.write_text(json.dumps(json_ready(metadata), indent=2) + "\n")

    def missing(self, signatures: Iterable[str] | None = None) -> list[str]:
        """The files an export writes that this folder lacks (relative paths): [] once
        the version is complete.

        The SavedModel's files always: saved_model.pb, variables/variables.index and
        every variables.data-NNNNN-of-MMMMM shard. For a tfrec export (`signatures`,
        the SavedModel's signature names, include `EXPORT_SIGNATURE`) also its
        metadata, and its warm-up records when the metadata counts some.

        Args:
          signatures: the SavedModel's signature names, or None if saved_model.pb
            could not be read (then only the SavedModel's files are asked for).
        """
        missing = [name for name in ("saved_model.pb", VARIABLES_INDEX)
                   if not (self.path / name).is_file()]
        variables = self.path / "variables"
        shards = [m for m in map(_SHARD.fullmatch, _names(variables)) if m]
        count = max((int(m[2]) for m in shards), default=1)
        have = {int(m[1]) for m in shards if int(m[2]) == count}
        missing += [f"variables/variables.data-{i:05d}-of-{count:05d}" for i in range(count)
                    if i not in have]
        if signatures is None or EXPORT_SIGNATURE not in set(signatures):
            return missing
        if not self.metadata.is_file():
            return missing + [str(self.metadata.relative_to(self.path))]
        try:
            records = int(json.loads(self.metadata.read_text()).get("warmup_records") or 0)
        except (ValueError, TypeError, AttributeError, OSError):
            return missing + [f"{self.metadata.relative_to(self.path)} (not readable JSON yet)"]
        if records > 0 and not self.warmup.is_file():
            missing.append(str(self.warmup.relative_to(self.path)))
        return missing


def _names(folder: Path) -> list[str]:
    try:
        return [p.name for p in folder.iterdir()]
    except OSError:
        return []


def write_failure(err: BaseException) -> str | None:
    """Why a write failed, if it failed for lack of room or a read-only disk (see
    `WRITE_ERRNOS`); None for any other error."""
    if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
        return err.strerror or os.strerror(err.errno)
    text = str(err)
    return next((reason for reason in _WRITE_ERROR_TEXTS if reason in text), None)


@contextlib.contextmanager
def reporting_write_failures(folder: Path, what: str) -> Iterator[None]:
    """Turns a write failure (`write_failure`) in the block into an InputError naming
    `folder`: one line on the command line, not a traceback. The caller removes what
    it had half-written before the error leaves the block.

    Raises:
      InputError: "cannot write <what>: No space left on device (nothing was left
        half-written)", for the folder.
    """
    try:
        yield
    except Exception as err:
        reason = write_failure(err)
        if reason is None:
            raise
        raise InputError(f"cannot write {what}: {reason} (nothing was left half-written)",
                         path=str(folder)) from None


# What a job that starts from a version reads of it, besides the SavedModel: an update
# (`tfrec export --add-items / --drop-items / --update-users`) its metadata, catalogue and
# cached users (an export older than cached users has none of their three files: all or
# none), every user's list (`tfrec recommend --all-users`) its metadata (its user list
# is checked by the job, which names an export without one).
UPDATE_READS = (("metadata", "items", "item_ids"), ("users", "user_ids", "user_histories"))
ALL_USERS_READS = (("metadata",), ())


def source_missing(folder: "VersionFolder", reads=UPDATE_READS) -> list[str]:
    """The files a job starting from `folder` needs that it lacks (relative paths; []
    once it has them): the SavedModel's files and `reads` (the entries it needs, and
    those it needs all or none of: one or two of them is a version half copied)."""
    needed, together = reads
    paths = [getattr(folder, name) for name in needed]
    group = [getattr(folder, name) for name in together]
    if any(path.exists() for path in group):
        paths += group
    return folder.missing(None) + [str(path.relative_to(folder.path)) for path in paths
                                   if not path.is_file()]


class ModelFolder(Folder):
    """A model's folder of numbered versions (TF Serving's `base_path`)."""

    def source_version(self, number: int | None, key: str,
                       reads=UPDATE_READS) -> "VersionFolder":
        """The version a job starts from: `number`, or the newest complete one (a
        version being copied in, or half copied, is passed over, as `tfrec serve` passes
        it over).

        Args:
          number: the version asked for (None: the newest complete one).
          key: the setting that names the version (in errors).
          reads: what the job reads of the version (`source_missing`).

        Raises:
          InputError: no version, no such version, none complete, or `number`
            incomplete.
        """
        versions = self.versions()
        if not versions:
            raise InputError("no exported version here (export the run first)",
                             path=str(self.path), key=key)
        if number is not None:
            if number not in versions:
                raise InputError(f"no version {number} (versions: "
                                 f"{', '.join(map(str, versions))})", path=str(self.path),
                                 key=key)
            missing = source_missing(self.version(number), reads)
            if missing:
                raise InputError(f"version {number} is not complete: it lacks "
                                 f"{', '.join(missing[:4])}"
                                 + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""),
                                 path=str(self.path / str(number)), key=key)
            return self.version(number)
        skipped = []
        for candidate in reversed(versions):
            missing = source_missing(self.version(candidate), reads)
            if not missing:
                if skipped:
                    logger.warning("version%s %s of %s %s not complete (%s lacks %s): starting "
                                   "from version %d", "s" if len(skipped) > 1 else "",
                                   ", ".join(str(v) for v, _ in skipped), self.path,
                                   "are" if len(skipped) > 1 else "is", skipped[0][0],
                                   ", ".join(skipped[0][1][:3]), candidate)
                return self.version(candidate)
            skipped.append((candidate, missing))
        raise InputError(f"no complete version (version {skipped[0][0]} lacks "
                         f"{', '.join(skipped[0][1][:4])})", path=str(self.path), key=key)

    def versions(self) -> list[int]:
        """The version numbers on disk, oldest first (temporaries are not versions)."""
        if not self.path.is_dir():
            return []
        return sorted(int(p.name) for p in self.path.iterdir()
                      if p.is_dir() and p.name.isdigit())

    def version(self, number: int) -> VersionFolder:
        return VersionFolder(self.path / str(number))

    def last_written(self) -> int:
        """The highest version number ever written here (0: none recorded), from the
        folder's record, so that a deleted newest version's number is not reused."""
        try:
            return int((self.path / LAST_VERSION).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def next_version(self) -> int:
        """The number of the next version: one above every version on disk and every
        version ever written here."""
        versions = self.versions()
        return max(versions[-1] if versions else 0, self.last_written()) + 1

    def _record_written(self, number: int) -> None:
        if number <= self.last_written():
            return
        record = self.path / LAST_VERSION
        tmp = None
        try:
            remove_stale_temporaries(self.path, temporaries(f"{LAST_VERSION}."))
            tmp, handle = open_temporary(self.path, f"{LAST_VERSION}.", 0o666)
            with open(handle, "w") as f:
                f.write(f"{number}\n")
            os.replace(tmp, record)
        except OSError as err:  # the version is written: a lost record costs only this
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            logger.warning("could not record version %d as written in %s (%s): a version "
                           "number deleted later may be given again", number, record, err)

    def clean_stale_temporaries(self) -> list[Path]:
        """Removes the temporary folders of writes whose process is gone."""
        return remove_stale_temporaries(self.path, TMP_PREFIX + "*")

    @contextlib.contextmanager
    def writing(self, number: int) -> Iterator[VersionFolder]:
        """Writes version `number` whole or not at all.

        Yields a temporary `VersionFolder` beside the versions to fill; on a clean
        exit it is renamed to `<number>/` (atomic on one file system: a server
        polling the folder never sees half a version), on an error it is removed.

        Raises:
          InputError: the version appeared meanwhile (another writer wrote it), or the
            disk is full (or read-only, or over quota): the temporary is removed.
        """
        tmp = self.path / f"{TMP_PREFIX}{number}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        final = self.path / str(number)
        with reporting_write_failures(self.path, f"version {number}"):
            try:
                yield VersionFolder(tmp)
                try:
                    os.rename(tmp, final)
                except OSError:
                    if final.exists():
                        raise InputError(f"version {number} was written by another export "
                                         "meanwhile; run again", path=str(final)) from None
                    raise
                # The highest on disk too: a version copied in by hand, or written by an
                # earlier release (which kept no record), is not numbered again once deleted.
                self._record_written(max([number, *self.versions()]))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise


def temporary_path(final: Path, mark: str) -> tuple[Path, int]:
    """A hidden temporary file beside `final`, made new and opened for writing
    (`open_temporary`): (its path, its file descriptor).
    `remove_stale_temporaries(final.parent, f".{final.name}{mark}*")` removes it once
    this process is gone."""
    return open_temporary(final.parent, f".{final.name}{mark}", 0o666)
