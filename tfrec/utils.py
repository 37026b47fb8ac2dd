"""Small helpers shared by the commands."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
import shutil
import time
import signal
import sys
from pathlib import Path

import numpy as np

from tfrec.errors import InputError


def ensure_folder(path: str | Path, what: str = "output folder") -> Path:
    """Creates a folder (and parents); a user-caused failure becomes an InputError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{what} path exists and is not a folder", path=str(path)) from None
    except PermissionError:
        raise InputError(f"cannot create the {what} (permission denied)",
                         path=str(path)) from None
    except OSError as err:
        raise InputError(f"cannot create the {what}: {err.strerror}", path=str(path)) from None
    return path


def json_ready(value):
    """`value` with every NaN or infinite float made None (JSON's null): Python's json
    would write them as the bare words NaN and Infinity, which no JSON reader takes."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def utf8_bytes(values) -> np.ndarray:
    """Ids or texts (str or bytes, any shape) as UTF-8 bytes, an object array of that
    shape: what TensorFlow's string tensors hold. (numpy's `astype(bytes)` encodes
    ASCII only: an id such as 'é-01' would fail.)"""
    values = np.asarray(values, dtype=object)
    flat = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values.ravel()]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(values.shape)


INT32_MAX = 2**31 - 1


def id_list(name: str, values, allow_empty: bool = False, strip: bool = True) -> list:
    """`values` as a list of ids (each a str or bytes, as written in the data), spaces
    around each removed as the data's ids are read (`strip`: False for other strings).

    Refused, naming `name`: a lone string (its characters would each be taken
    as an id), a value that is not a list of ids, an id that is not a string
    (a nested list, None, a number: an id is looked up as written, so 7 and
    "007" differ), and an empty list unless `allow_empty`.
    """
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a list of ids, got the string {values!r:.80} "
                         f"(one id is [{values!r:.40}])")
    try:
        values = list(values)
    except TypeError:
        raise ValueError(f"{name} must be a list of ids, got {type(values).__name__} "
                         f"{values!r:.80}") from None
    for j, value in enumerate(values):
        if not isinstance(value, (str, bytes)):  # numpy's str_ and bytes_ are both
            hint = (f" (if {value!r} is the id as written, pass {str(value)!r})"
                    if isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                    else "")
            raise ValueError(f"{name}[{j}] must be an id string, got {type(value).__name__} "
                             f"{value!r:.80}{hint}")
    if not values and not allow_empty:
        raise ValueError(f"{name} is empty: give at least one id")
    return [value.strip() for value in values] if strip else values


def read_id_lines(path: str | Path) -> list[str]:
    """The ids an export listed one per line in `path` (item_ids.txt, user_ids.txt): the
    text split at each "\\n" alone, as it was written. (`str.splitlines` also splits at
    U+2028, U+0085 and other separators, which an id from an earlier release may hold:
    the list would then be longer than its embeddings, every later id shifted.)"""
    # Bytes decoded, not read_text: its universal newlines would also split at a lone "\r".
    lines = Path(path).read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def top_k_count(k, name: str = "k") -> int:
    """`k` (how many results) as an int: an integer of at least 1 that fits in int32 (the
    signatures' dtype); a float, a bool or anything else is refused naming `name`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(k).__name__} {k!r:.40}")
    if not 1 <= int(k) <= INT32_MAX:
        raise ValueError(f"{name} must be from 1 to {INT32_MAX:,} (the model's max_k "
                         f"bounds it further), got {int(k):,}")
    return int(k)


def utf8_text(values) -> np.ndarray:
    """TensorFlow string values (bytes, any shape) as text, a str array of that shape
    (numpy's `astype(str)` of bytes decodes ASCII only)."""
    values = np.asarray(values, dtype=object)
    flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.ravel()]
    return np.asarray(flat, dtype=str).reshape(values.shape) if flat else \
        np.zeros(values.shape, dtype=str)


VERBOSE_ENV = "TFREC_VERBOSE"  # "1": native libraries may log to stderr (tfrec --verbose)


@contextlib.contextmanager
def quiet_native_stderr():
    """Hides what native code (ScaNN's index building) writes to stderr, unless
    TFREC_VERBOSE=1. Python's own stderr is flushed first and restored after."""
    if os.environ.get(VERBOSE_ENV) == "1":
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Folder:
    """A folder whose files one class names: each an `Entry` of the class.

    The owners of the run, report, version and model folders derive from it,
    so that one place spells each folder's file names.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class Entry:
    """A file or subfolder of a `Folder` at `name`, a path relative to the folder:
    on a folder it is that path (`folder.path / name`); on the class, itself (its
    `name` is then the file name, for messages and help texts)."""

    def __init__(self, name: str, doc: str | None = None):
        self.name = name
        self.__doc__ = doc

    def __get__(self, folder: Folder | None, owner: type | None = None):
        return self if folder is None else folder.path / self.name


@contextlib.contextmanager
def swapped_signal_handlers(replace, give_back=lambda old: True):
    """Meanwhile SIGINT and SIGTERM get the handlers `replace(signum, current)` returns
    (None: left as it is); on exit each replaced one whose old handler `give_back(old)`
    accepts is put back. Outside the main thread (no handlers there) nothing changes."""
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            handler = replace(signum, signal.getsignal(signum))
            if handler is not None:
                previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread
            continue
    try:
        yield
    finally:
        for signum, old in previous.items():
            if give_back(old):
                signal.signal(signum, old)


# Offsets `derived_seed` takes: below this, so that layers whose own seeds differ by one
# (the two item encoders of `query_items: separate`) derive disjoint seeds.
SEED_OFFSETS = 1 << 12


def derived_seed(seed: int | None, offset: int) -> int | None:
    """A sub-layer's own seed from its layer's (`seed * SEED_OFFSETS + offset`; None stays
    None): sub-layers seeded alike with initialisers of one kind would start equal, and a
    seeded initialiser draws the same leading values for any shape."""
    if seed is None:
        return None
    if not 0 <= offset < SEED_OFFSETS:
        raise ValueError(f"a seed offset from 0 to {SEED_OFFSETS - 1}, got {offset}")
    return int(seed) * SEED_OFFSETS + int(offset)


def open_temporary(folder: str | Path, prefix: str, mode: int = 0o600) -> tuple[Path, int]:
    """Creates and opens (for writing) an empty file `{prefix}<random>-<pid>` in `folder`,
    to fill and then rename over its final name: (its path, its file descriptor).

    The name cannot be guessed and the file is made new (`O_EXCL`; a link planted at the
    name is refused, never followed), so nobody else can have made it or point it
    elsewhere; `mode` less the process's umask is its mode. `remove_stale_temporaries(
    folder, temporaries(prefix))` removes it once this process is gone.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}-{os.getpid()}"
        try:
            return path, os.open(path, flags, mode)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def temporaries(prefix: str) -> str:
    """The glob pattern of `open_temporary(folder, prefix)`'s names (the prefix taken
    as it is, the random part and the process id as they are made), for
    `remove_stale_temporaries`."""
    return glob.escape(prefix) + "[0-9a-f]" * 12 + "-[0-9]*"


def new_temporary(folder: str | Path, prefix: str, mode: int = 0o600) -> Path:
    """`open_temporary`'s file, closed: its path."""
    path, handle = open_temporary(folder, prefix, mode)
    os.close(handle)
    return path


def remove_stale_temporaries(folder: Path, pattern: str,
                             older_than: float | None = None) -> list[Path]:
    """Removes the files or folders in `folder` matching `pattern` whose name ends in
    the id of a process that is gone (a writer killed outright), and, with `older_than`,
    that have not changed for that many seconds. Returns them."""
    removed = []
    for path in Path(folder).glob(pattern):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if older_than is not None:
            try:
                if time.time() - path.stat().st_mtime < older_than:
                    continue
            except OSError:
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
