"""Public data sets: where tfrec finds them (none is shipped; see ATTRIBUTION.md).

A *data folder* holds one sub-folder per data set:

  online_retail/online_retail.csv.gz            UCI Online Retail
  goodbooks_10k/{books,ratings,to_read}.csv.gz  goodbooks-10k

It is found in this order: an explicit folder (the `data.data_dir` config
key or a `--data-dir` flag), the `TFREC_DATA` environment variable, then
`../shared/data` relative to the working directory and, failing that,
relative to the repository root (a clean clone with `../shared` beside it).

A file missing from the data folder is downloaded from its public source on
first use (or taken from the source file put there by hand, e.g.
online_retail/online+retail.zip), checked against its SHA-256 and cached there (see
`tfrec.datasets.download`; TFREC_DATA_DOWNLOAD=0 turns this off,
TFREC_DATA_MIRROR=URL fetches from a mirror). It goes into the explicit
folder or $TFREC_DATA when one is given, else into the first default folder
that exists or, when none does, the first one that can be created.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from tfrec.datasets import download
from tfrec.errors import InputError

DATA_ENV = "TFREC_DATA"
_DEFAULT = Path("..") / "shared" / "data"
# tfrec/datasets/__init__.py -> the repository root is parents[2].
_REPO_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclasses.dataclass(frozen=True)
class DataSet:
    """A public data set: its files inside the data folder and where it comes from."""

    name: str
    folder: str
    files: tuple[str, ...]
    source: str
    how: str


ONLINE_RETAIL = DataSet(
    name="UCI Online Retail", folder="online_retail", files=("online_retail.csv.gz",),
    source="archive.ics.uci.edu/dataset/352",
    how="save its sheet as a gzipped CSV with the columns InvoiceNo, StockCode, Description, "
        "Quantity, InvoiceDate, UnitPrice, CustomerID, Country")
GOODBOOKS = DataSet(
    name="goodbooks-10k", folder="goodbooks_10k",
    files=("books.csv.gz", "ratings.csv.gz", "to_read.csv.gz"),
    source="github.com/zygmuntz/goodbooks-10k",
    how="gzip its books.csv, ratings.csv and to_read.csv")


def default_folders() -> list[Path]:
    """The data folders tried when neither a folder nor TFREC_DATA is given."""
    folders = [_DEFAULT]
    if _REPO_DEFAULT.resolve() != _DEFAULT.resolve():
        folders.append(_REPO_DEFAULT)
    return folders


def data_folder(explicit: str | Path | None = None) -> Path:
    """The data folder: `explicit`, else $TFREC_DATA, else the first default that exists.

    When no default exists, returns the first one (reading from it then
    fails with a message that says how to point tfrec at the data).
    """
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    defaults = default_folders()
    return next((folder for folder in defaults if folder.is_dir()), defaults[0])


def _locate(dataset: DataSet, name: str, explicit: str | Path | None,
            needed: tuple[str, ...] | None = None) -> Path:
    """`name` of `dataset` in the data folder; the defaults are tried in turn.

    The `needed` files of the data set (default: all) missing beside it, or
    all of them when it is in none of the folders, are downloaded (see the
    module doc).
    """
    if explicit or os.environ.get(DATA_ENV, "").strip():
        candidates = [data_folder(explicit)]
    else:
        candidates = default_folders()
    needed = needed or dataset.files
    found = next((folder / dataset.folder for folder in candidates
                  if (folder / dataset.folder / name).is_file()), None)
    if found is not None and (all((found / file).is_file() for file in needed)
                              or not download.downloads_enabled()):
        return found / name  # (a missing file beside it is reported by the caller)
    looked = [folder / dataset.folder for folder in candidates]
    from tfrec.datasets.sources import REMOTES

    if found is None and not download.downloads_enabled():
        # Downloads off: a source downloaded by hand is still checked and converted.
        remotes = [REMOTES[f"{dataset.folder}/{file}"] for file in needed]
        found = next((folder for folder in looked
                      if all((folder / r.source_name).is_file() for r in remotes)), None)
        if found is None:
            by_hand = ", ".join(f"{download.source_url(r, dataset.folder)} as {r.source_name}"
                                for r in remotes)
            raise missing_data_error(
                dataset, looked[0] / name, looked,
                f" (downloads are off: {download.DOWNLOAD_ENV}=0; the source, downloaded "
                f"elsewhere and put in {looked[0]}, is checked and converted: {by_hand})")
    target = found or _download_folder(candidates) / dataset.folder
    for file in needed:
        if not (target / file).is_file():
            remote = REMOTES[f"{dataset.folder}/{file}"]
            by_hand = target / remote.source_name
            try:
                download.fetch(remote, dataset.folder, target,
                               source=by_hand if by_hand.is_file() else None)
            except download.Unreachable as err:
                url = download.source_url(remote, dataset.folder)
                raise missing_data_error(
                    dataset, target / file, looked,
                    f". tfrec tried to download it and could not: {err}. Without a "
                    f"connection, download {url} elsewhere and put {remote.source_name} in "
                    f"{target} (tfrec checks it and makes {remote.file} from it), or set "
                    f"{download.MIRROR_ENV} to a mirror") from None
    return target / name


def _download_folder(candidates: list[Path]) -> Path:
    """The data folder a download goes to: the first that exists, else the first creatable."""
    for folder in candidates:
        if folder.is_dir():
            return folder
    for folder in candidates:
        existing = next(parent for parent in folder.absolute().parents if parent.exists())
        if os.access(existing, os.W_OK | os.X_OK):
            return folder
    return candidates[0]  # fetch() reports why it cannot be created


def missing_data_error(dataset: DataSet, path: Path, looked: list[Path] = (),
                       why: str = "") -> InputError:
    """The error for a data set file that is not there: what, where from, how to point at it.

    Args:
      why: appended to "data file not found" (e.g. why it was not downloaded).
    """
    where = f" (looked in {', '.join(map(str, looked))})" if len(looked) > 1 else ""
    where += why
    files = ", ".join(f"{dataset.folder}/{f}" for f in dataset.files)
    named = "the file itself" if len(dataset.files) == 1 else f"its {dataset.folder} folder"
    return InputError(
        f"{dataset.name} data file not found{where}. tfrec ships no data sets: get "
        f"{dataset.name} from {dataset.source} ({dataset.how}) and put it in a data folder "
        f"as {files}; then point tfrec at the folder with --data-dir DIR, the {DATA_ENV} "
        f"environment variable or the data.data_dir config key, or name {named} with "
        "data.events", path=str(path))


def online_retail_path(data_dir: str | Path | None = None) -> Path:
    """The UCI Online Retail CSV in the data folder (CC BY 4.0, see ATTRIBUTION.md).

    Raises:
      InputError: the file is missing and could not be downloaded (the message
        says why, and where to get it).
    """
    return _locate(ONLINE_RETAIL, ONLINE_RETAIL.files[0], data_dir)


def goodbooks_folder(data_dir: str | Path | None = None, to_read: bool = True) -> Path:
    """The goodbooks-10k folder in the data folder (CC BY-SA 4.0, see ATTRIBUTION.md).

    Raises:
      InputError: one of its files is missing (the message names it).
    """
    return goodbooks_paths(data_dir, to_read=to_read)["ratings"].parent


def goodbooks_paths(data_dir: str | Path | None = None, folder: str | Path | None = None,
                    to_read: bool = True) -> dict[str, Path]:
    """{"books", "ratings", "to_read"} -> path, from the data folder or a given folder.

    Args:
      data_dir: the data folder (default: see `data_folder`).
      folder: the goodbooks-10k folder itself, instead of the data folder's.
      to_read: to_read.csv.gz is needed (without it, it may be missing).

    Raises:
      InputError: a needed file is missing (the message names it); in the data
        folder, when it could not be downloaded (the message says why).
    """
    names = [name for name in GOODBOOKS.files if to_read or not name.startswith("to_read")]
    if folder is None:
        # Located in the data folder by its ratings file; the rest sit beside it.
        folder = _locate(GOODBOOKS, "ratings.csv.gz", data_dir, tuple(names)).parent
    folder = Path(folder)
    if folder.is_file():
        raise InputError("expected the goodbooks-10k folder (books.csv.gz, ratings.csv.gz, "
                         "to_read.csv.gz), got a file", path=str(folder))
    paths = {name.split(".")[0]: folder / name for name in GOODBOOKS.files}
    for name in names:
        if not paths[name.split(".")[0]].is_file():
            raise missing_data_error(GOODBOOKS, paths[name.split(".")[0]])
    return paths
