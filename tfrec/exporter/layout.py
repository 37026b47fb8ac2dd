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

This module imports no TensorFlow: the server, the all-users job and the
tools that only list versions or read metadata stay cheap to import.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from tfrec.errors import InputError
from tfrec.utils import Entry, Folder

TMP_PREFIX = ".tmp-export-"
# The metadata key of the index kind; exports before it was named wrote "index".
INDEX_KIND = "index_kind"
_OLD_INDEX_KIND = "index"


# The version's extra assets, and the catalogue's and the cached users' files among them.
EXTRA = "assets.extra"
EMBEDDINGS = f"{EXTRA}/embeddings"


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
        self.metadata.write_text(json.dumps(metadata, indent=2) + "\n")


class ModelFolder(Folder):
    """A model's folder of numbered versions (TF Serving's `base_path`)."""

    def versions(self) -> list[int]:
        """The version numbers on disk, oldest first (temporaries are not versions)."""
        if not self.path.is_dir():
            return []
        return sorted(int(p.name) for p in self.path.iterdir()
                      if p.is_dir() and p.name.isdigit())

    def version(self, number: int) -> VersionFolder:
        return VersionFolder(self.path / str(number))

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
          InputError: the version appeared meanwhile (another writer wrote it).
        """
        tmp = self.path / f"{TMP_PREFIX}{number}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        final = self.path / str(number)
        try:
            yield VersionFolder(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if final.exists():
                    raise InputError(f"version {number} was written by another export "
                                     "meanwhile; run again", path=str(final)) from None
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def temporary_path(final: Path, mark: str) -> Path:
    """A hidden temporary beside `final` that `remove_stale_temporaries(final.parent,
    f".{final.name}{mark}*")` removes once this process is gone."""
    return final.parent / f".{final.name}{mark}{os.getpid()}"


def remove_stale_temporaries(folder: Path, pattern: str) -> list[Path]:
    """Removes the files or folders in `folder` matching `pattern` whose name ends in
    the id of a process that is gone (a writer killed outright). Returns them."""
    removed = []
    for path in Path(folder).glob(pattern):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True
