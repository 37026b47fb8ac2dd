"""Fetching a public data set on first use: download, verify, cache.

As dataset loaders do (Keras `get_file`, tensorflow-datasets): when a data
set's file is not in the data folder, tfrec downloads it from its public
source, checks its SHA-256, and writes it into the data folder, where every
later run finds it (no second download). The write is atomic: the download
goes to a hidden temporary file in the same folder, is verified (and, for a
zip, its file extracted and converted), and only then renamed to its name;
on any failure (a checksum mismatch, a connection closed early, a missing
file on the server) the temporary files are removed and nothing is left
half-written.

Settings (environment variables):
  TFREC_DATA_DOWNLOAD=0   never download (a missing file is an error that says
                          where to get it); the default is to download.
  TFREC_DATA_MIRROR=URL   fetch from a mirror instead of the public sources:
                          URL/<data set folder>/<source file name>, e.g.
                          URL/online_retail/online+retail.zip (a file:// URL
                          works too). The checksums are checked all the same.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import logging
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from tfrec.errors import InputError
from tfrec.progress import ProgressLine
from tfrec.utils import new_temporary, remove_stale_temporaries, temporaries

DOWNLOAD_ENV = "TFREC_DATA_DOWNLOAD"
MIRROR_ENV = "TFREC_DATA_MIRROR"
TIMEOUT = 60.0  # seconds without a byte before a download is given up
CHUNK = 1 << 20
PART = ".part"  # the temporaries' names: .<file>.part.<random>-<pid>
STALE_SECONDS = 3600  # a download's temporary unchanged this long is a dead one's


def gunzip_sha256(path: Path) -> str:
    """The SHA-256 of a gzipped file's content (not of its gzip bytes)."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gzip_file(source: Path, target: Path) -> None:
    """Gzips `source` into `target` (no name or time in the header: the same bytes each time)."""
    with open(source, "rb") as src, open(target, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
            shutil.copyfileobj(src, out, CHUNK)


@dataclasses.dataclass(frozen=True)
class Remote:
    """Where one file of a data set comes from and how it is checked.

    Attributes:
      file: the file tfrec reads, in the data set's folder (e.g. "books.csv.gz").
      url: the public source.
      sha256: the SHA-256 of the downloaded file, or None where it was not
        recorded (then `content` must be given).
      member: for a zip download, the file to take out of it (matched by name).
      convert: (source, target) writes the file tfrec reads from the download
        (or its zip member); default: gzip it.
      content: the checksum of the file tfrec reads, as `digest` computes it
        (None: `sha256` alone is checked).
      digest: computes `content` from the written file (default: the SHA-256
        of its uncompressed bytes).
      max_bytes: the most the download, and the file taken out of a zip, may hold: a
        few times the published file's size, so that a file that is not it (a zip
        bomb, a mirror that never stops) is refused before it fills the disk.
    """

    file: str
    url: str
    sha256: str | None
    member: str | None = None
    convert: Callable[[Path, Path], None] | None = None
    content: str | None = None
    digest: Callable[[Path], str] = gunzip_sha256
    max_bytes: int = 1 << 30

    @property
    def source_name(self) -> str:
        """The file name at the source (the last part of its URL, unquoted)."""
        return urllib.parse.unquote(urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1])


class Unreachable(Exception):
    """The source could not be reached (offline, refused, no such host, timed out)."""


def progress_wanted() -> bool:
    """Show the progress lines (stderr) unless the `tfrec` logger is set above INFO (-q)."""
    return logging.getLogger("tfrec").level <= logging.INFO


def downloads_enabled() -> bool:
    """False when TFREC_DATA_DOWNLOAD is 0/false/no/off."""
    return os.environ.get(DOWNLOAD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def source_url(remote: Remote, folder: str) -> str:
    """The URL to fetch: the public source, or the mirror's copy (TFREC_DATA_MIRROR)."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return remote.url
    return f"{mirror.rstrip('/')}/{folder}/{urllib.parse.quote(remote.source_name, safe='+')}"


def fetch(remote: Remote, folder: str, target_dir: Path, progress: bool | None = None,
          source: Path | None = None) -> Path:
    """Downloads `remote` into target_dir (created if need be), verified, atomically.

    Args:
      remote: what to fetch.
      folder: the data set's folder name (for the mirror URL).
      target_dir: the data set's folder in the data folder.
      progress: show what is fetched, from where, into which folder and a
        bytes/total progress line on stderr (None: `progress_wanted()`).
      source: the source file, downloaded by hand: checked and converted the
        same way instead of downloading (it is left in place).

    Returns:
      The path of the file written (target_dir / remote.file).

    Raises:
      Unreachable: the source could not be reached; nothing was written.
      InputError: the server answered with an error, the download was cut
        short, a checksum did not match, or the folder cannot be written;
        nothing was written.
    """
    url = str(source) if source is not None else source_url(remote, folder)
    target = target_dir / remote.file
    progress = progress_wanted() if progress is None else progress
    created = [made for made in (target_dir, *target_dir.parents) if not made.exists()]
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the data folder to download into ({err.strerror})",
                         path=str(target_dir)) from None
    temps: list[Path] = []

    def temp(name: str, mode: int = 0o600) -> Path:
        path = new_temporary(target_dir, f".{name}{PART}.", mode)
        temps.append(path)
        return path

    # What a download killed outright left behind: its process gone, and unchanged for
    # an hour (a shared data folder may hold another machine's download under way, whose
    # process this machine does not know).
    remove_stale_temporaries(target_dir, ".*" + temporaries(f"{PART}."), older_than=STALE_SECONDS)

    try:
        if source is not None:
            download = source
        else:
            download = temp(remote.source_name)
            if progress:
                print(f"{remote.file} is not in the data folder: downloading it into "
                      f"{target_dir}", file=sys.stderr, flush=True)
            _download(url, download, progress, remote.max_bytes)
        if remote.sha256 is not None:
            _check(file_sha256(download), remote.sha256, url, target)
        source = download
        if remote.member is not None:
            source = temp(remote.member)
            _extract(download, remote.member, source, url, target, remote.max_bytes)
        written = temp(remote.file, 0o666)  # the usual permissions (less the umask)
        if progress and remote.convert is not None:
            print(f"converting {remote.member or remote.source_name} to {remote.file}",
                  file=sys.stderr, flush=True)
        try:
            (remote.convert or gzip_file)(source, written)
        except InputError:
            raise
        except Exception as err:  # a download that is not what it should be
            raise InputError(f"cannot read the file downloaded from {url} ({err}); "
                             "nothing was written", path=str(target)) from None
        if remote.content is not None:
            _check(remote.digest(written), remote.content, url, target)
        os.replace(written, target)
        temps.remove(written)
    except BaseException:
        _remove(temps)
        for made in created:  # the folders made for this download, deepest first
            try:
                made.rmdir()
            except OSError:
                break
        raise
    _remove(temps)
    return target


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _check(got: str, expected: str, url: str, target: Path) -> None:
    if got != expected:
        raise InputError(f"checksum mismatch for the file downloaded from {url} (SHA-256 "
                         f"{got}, expected {expected}): not the published file, or a changed "
                         "one; nothing was written", path=str(target))


def _too_large(url: str, what: str, limit: int, final: Path) -> InputError:
    return InputError(f"{what} from {url} holds more than {limit:,} bytes, far more than "
                      "the published file: not that file; nothing was written",
                      path=str(final))


def _download(url: str, path: Path, progress: bool, limit: int = 1 << 62) -> None:
    """Streams `url` into `path`, with a bytes/total progress line; more than `limit`
    bytes is refused (InputError)."""
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "tfrec"})
    except ValueError as err:  # not a URL (a mirror set without its http:// or file://)
        raise InputError(f"cannot download {url!r}: {err}", key=MIRROR_ENV) from None
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except ValueError as err:
        raise InputError(f"cannot download {url!r}: {err}", key=MIRROR_ENV) from None
    except urllib.error.HTTPError as err:
        raise InputError(f"download failed: {url} answered HTTP {err.code} {err.reason}; "
                         "nothing was written", path=str(path.parent)) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(err, urllib.error.URLError) and url.startswith("file:"):
            raise InputError(f"download failed: {url}: {reason}; nothing was written",
                             path=str(path.parent)) from None
        raise Unreachable(f"{url} could not be reached ({reason})") from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        line = (ProgressLine(total or 0, "bytes", stream=sys.stderr)
                if progress else None)
        if line is not None:
            print(f"downloading {url}" + (f" ({total:,} bytes)" if total else ""),
                  file=sys.stderr, flush=True)
        done = 0
        try:
            with open(path, "wb") as out:
                if total is not None and total > limit:
                    raise _too_large(url, "the file downloaded", limit, path.parent)
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    done += len(chunk)
                    if done > limit:
                        raise _too_large(url, "the file downloaded", limit, path.parent)
                    if line is not None:
                        line(done)
        except http.client.IncompleteRead as err:
            done += len(err.partial)
            total = total if total is not None else done + (err.expected or 1)
        except OSError as err:  # a reset connection or a timeout mid-way
            raise InputError(f"download interrupted: {url} ({err}) after {done:,} bytes; "
                             "nothing was written", path=str(path.parent)) from None
        if line is not None:
            line.finish(done)
    if total is not None and done < total:
        raise InputError(f"download interrupted: {url} sent {done:,} of {total:,} bytes "
                         "(the connection closed early); nothing was written",
                         path=str(path.parent))


def _extract(archive: Path, member: str, target: Path, url: str, final: Path,
             limit: int = 1 << 62) -> None:
    """Copies `member` (matched by its name, in any folder of the zip) out of `archive`;
    more than `limit` bytes is refused (InputError)."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            names = [name for name in zipped.namelist()
                     if name.rsplit("/", 1)[-1] == member and not name.startswith("__MACOSX/")]
            if not names:
                raise InputError(f"the zip downloaded from {url} holds no {member!r} (it holds "
                                 f"{', '.join(zipped.namelist()[:5])}); nothing was written",
                                 path=str(final))
            what = f"{member!r} in the zip downloaded"
            if zipped.getinfo(names[0]).file_size > limit:
                raise _too_large(url, what, limit, final)
            with zipped.open(names[0]) as src, open(target, "wb") as out:
                done = 0
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    done += len(chunk)
                    if done > limit:
                        raise _too_large(url, what, limit, final)
                    out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        raise InputError(f"the file downloaded from {url} is not a readable zip ({err}); "
                         "nothing was written", path=str(final)) from None
