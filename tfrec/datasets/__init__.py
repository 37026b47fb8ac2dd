"""Public data sets: where tfrec finds them (none is shipped; see ATTRIBUTION.md).

A *data folder* holds one sub-folder per data set:

  online_retail/online_retail.csv.gz            UCI Online Retail
  goodbooks_10k/{books,ratings,to_read}.csv.gz  goodbooks-10k

It is found in this order: an explicit folder (the `data.data_dir` config
key or a `--data-dir` flag), the `TFREC_DATA` environment variable, then
`../shared/data` relative to the working directory and, failing that,
relative to the repository root (a clean clone with `../shared` beside it).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

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


def _locate(dataset: DataSet, name: str, explicit: str | Path | None) -> Path:
    """`name` of `dataset` in the data folder; the defaults are tried in turn."""
    if explicit or os.environ.get(DATA_ENV, "").strip():
        candidates = [data_folder(explicit)]
    else:
        candidates = default_folders()
    for folder in candidates:
        path = folder / dataset.folder / name
        if path.is_file():
            return path
    raise missing_data_error(dataset, candidates[0] / dataset.folder / name,
                             [folder / dataset.folder for folder in candidates])


def missing_data_error(dataset: DataSet, path: Path, looked: list[Path] = ()) -> InputError:
    """The error for a data set file that is not there: what, where from, how to point at it."""
    where = f" (looked in {', '.join(map(str, looked))})" if len(looked) > 1 else ""
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
      InputError: the file is missing (the message says where to get it).
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
      InputError: a needed file is missing (the message names it).
    """
    names = [name for name in GOODBOOKS.files if to_read or not name.startswith("to_read")]
    if folder is None:
        # Located in the data folder by its ratings file; the rest sit beside it.
        folder = _locate(GOODBOOKS, "ratings.csv.gz", data_dir).parent
    folder = Path(folder)
    if folder.is_file():
        raise InputError("expected the goodbooks-10k folder (books.csv.gz, ratings.csv.gz, "
                         "to_read.csv.gz), got a file", path=str(folder))
    paths = {name.split(".")[0]: folder / name for name in GOODBOOKS.files}
    for name in names:
        if not paths[name.split(".")[0]].is_file():
            raise missing_data_error(GOODBOOKS, paths[name.split(".")[0]])
    return paths
