"""Downloading a data set on first use, against a loopback HTTP server (never the internet)."""

import datetime
import gzip
import hashlib
import http.server
import logging
import os
import re
import socket
import threading
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from tfrec import datasets
from tfrec.cli import main
from tfrec.datasets import download, sources
from tfrec.datasets.download import Remote
from tfrec.errors import InputError

BODY = b"InvoiceNo,StockCode\n536365,85123A\n536366,71053\n" * 50
SHA = hashlib.sha256(BODY).hexdigest()


class Server:
    """A loopback HTTP server: routes[path] = (status, body, declared length, None for
    the body's own, -1 for none)."""

    def __init__(self):
        self.routes, self.requests = {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server name)
                server.requests.append(self.path)
                status, body, length = server.routes.get(self.path, (404, b"no such file", None))
                self.send_response(status)
                if length != -1:  # -1: no length declared (the body runs to the close)
                    self.send_header("Content-Length",
                                     str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def tfrec_logger_level():
    """The `tfrec` logger at its default level (a command's -q elsewhere sets it), restored."""
    tfrec_logger = logging.getLogger("tfrec")
    level = tfrec_logger.level
    tfrec_logger.setLevel(logging.NOTSET)
    yield tfrec_logger
    tfrec_logger.setLevel(level)


@pytest.fixture
def server():
    running = Server()
    yield running
    running.close()


@pytest.fixture
def online_retail_source(monkeypatch, server, tmp_path):
    """Online Retail served by the loopback server as a mirror; downloads on; data in tmp."""
    monkeypatch.setenv(download.DOWNLOAD_ENV, "1")
    monkeypatch.setenv(download.MIRROR_ENV, server.url + "/mirror")
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setitem(sources.REMOTES, "online_retail/online_retail.csv.gz", Remote(
        file="online_retail.csv.gz", url="https://example.invalid/files/online_retail.csv",
        sha256=SHA))
    return "/mirror/online_retail/online_retail.csv"


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_first_use_downloads_verifies_and_caches_then_no_second_request(
        server, online_retail_source, tmp_path, capfd):
    server.routes[online_retail_source] = (200, BODY, None)
    path = datasets.online_retail_path()
    assert path == tmp_path / "data" / "online_retail" / "online_retail.csv.gz"
    assert gzip.decompress(path.read_bytes()) == BODY
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's 0600
    assert leftovers(tmp_path / "data") == ["online_retail", "online_retail.csv.gz"]
    err = capfd.readouterr().err
    assert f"downloading it into {tmp_path / 'data' / 'online_retail'}" in err
    assert f"{len(BODY):,}/{len(BODY):,} bytes (100%)" in err
    assert datasets.online_retail_path() == path
    assert server.requests == [online_retail_source]  # the cached copy: no second request


@pytest.mark.parametrize("quiet", [False, True])
def test_the_command_line_shows_the_download_unless_quiet(
        server, online_retail_source, tmp_path, capfd, quiet):
    server.routes[online_retail_source] = (200, BODY, None)
    # The served file is no Online Retail table: prepare stops once it is downloaded.
    assert main(["-q"] * quiet + ["prepare", "--data-dir", str(tmp_path / "cli")]) == 2
    err = capfd.readouterr().err
    assert ("downloading it into" in err) is not quiet
    assert (f"{len(BODY):,}/{len(BODY):,} bytes" in err) is not quiet
    assert "tfrec: error: " in err and "no column 'Description'" in err
    assert (tmp_path / "cli" / "online_retail" / "online_retail.csv.gz").is_file()


def test_checksum_mismatch_leaves_nothing(server, online_retail_source, tmp_path):
    server.routes[online_retail_source] = (200, BODY.replace(b"71053", b"71054"), None)
    with pytest.raises(InputError, match="checksum mismatch .*expected " + SHA):
        datasets.online_retail_path()
    assert leftovers(tmp_path / "data") == []


def test_interrupted_download_leaves_nothing(server, online_retail_source, tmp_path):
    server.routes[online_retail_source] = (200, BODY[:100], len(BODY))  # closed early
    with pytest.raises(InputError, match=f"download interrupted: .* 100 of {len(BODY):,} bytes"):
        datasets.online_retail_path()
    assert leftovers(tmp_path / "data") == []


def test_missing_file_on_the_server_leaves_nothing(server, online_retail_source, tmp_path):
    with pytest.raises(InputError, match="HTTP 404"):
        datasets.online_retail_path()
    assert server.requests == [online_retail_source]
    assert leftovers(tmp_path / "data") == []


def test_offline_gives_the_missing_file_message_with_url_and_place(
        online_retail_source, monkeypatch, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(download.MIRROR_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(InputError) as caught:
        datasets.online_retail_path()
    message = caught.value.message
    folder = tmp_path / "data" / "online_retail"
    assert message.startswith(f"{folder}/online_retail.csv.gz: UCI Online Retail data file "
                              "not found")
    for part in ("could not", f"http://127.0.0.1:{port}/online_retail/online_retail.csv",
                 f"put online_retail.csv in {folder}", "archive.ics.uci.edu/dataset/352",
                 "--data-dir", datasets.DATA_ENV):
        assert part in message
    assert leftovers(tmp_path / "data") == []
    # The source file put there by hand is checked and used, with no download.
    folder.mkdir(parents=True)
    (folder / "online_retail.csv").write_bytes(BODY[:-1])
    with pytest.raises(InputError, match="checksum mismatch"):
        datasets.online_retail_path()
    assert leftovers(folder) == ["online_retail.csv"]
    (folder / "online_retail.csv").write_bytes(BODY)
    assert gzip.decompress(datasets.online_retail_path().read_bytes()) == BODY


def test_downloads_off_gives_todays_message(monkeypatch, server, online_retail_source, tmp_path):
    monkeypatch.setenv(download.DOWNLOAD_ENV, "0")
    with pytest.raises(InputError, match="data file not found.*downloads are off") as err:
        datasets.online_retail_path()
    assert server.requests == []
    # It says where the source goes when fetched by hand, under the name tfrec reads.
    remote = sources.REMOTES["online_retail/online_retail.csv.gz"]
    assert remote.source_name in str(err.value)
    assert download.source_url(remote, "online_retail") in str(err.value)
    folder = datasets.data_folder() / "online_retail"
    assert f"put in {folder}, is checked and converted" in str(err.value)
    # ... and so it is, downloads still off.
    folder.mkdir(parents=True, exist_ok=True)
    (folder / remote.source_name).write_bytes(BODY)
    assert gzip.decompress(datasets.online_retail_path().read_bytes()) == BODY
    assert server.requests == []


def test_goodbooks_fetches_each_missing_file_from_a_zip(server, monkeypatch, tmp_path):
    monkeypatch.setenv(download.DOWNLOAD_ENV, "1")
    monkeypatch.setenv(download.MIRROR_ENV, server.url)
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "data"))
    folder = tmp_path / "data" / "goodbooks_10k"
    folder.mkdir(parents=True)
    (folder / "books.csv.gz").write_bytes(gzip.compress(b"book_id\n1\n"))  # already there
    contents = {"ratings": b"book_id,user_id,rating\n1,10,5\n", "to_read": b"user_id,book_id\n"}
    for name, content in contents.items():
        zipped = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(zipped, "w") as archive:
            archive.writestr(f"__MACOSX/._{name}.csv", b"junk")
            archive.writestr(f"{name}.csv", content)
        monkeypatch.setitem(sources.REMOTES, f"goodbooks_10k/{name}.csv.gz", Remote(
            file=f"{name}.csv.gz", url=f"https://example.invalid/{name}.csv.zip", sha256=None,
            member=f"{name}.csv", content=hashlib.sha256(content).hexdigest()))
        server.routes[f"/goodbooks_10k/{name}.csv.zip"] = (200, zipped.read_bytes(), None)
    paths = datasets.goodbooks_paths()
    for name, content in contents.items():
        assert gzip.decompress(paths[name].read_bytes()) == content
    assert sorted(server.requests) == ["/goodbooks_10k/ratings.csv.zip",
                                       "/goodbooks_10k/to_read.csv.zip"]
    assert leftovers(folder) == ["books.csv.gz", "ratings.csv.gz", "to_read.csv.gz"]
    # A file missing beside the others is fetched on its own.
    (folder / "to_read.csv.gz").unlink()
    assert datasets.goodbooks_folder() == folder
    assert server.requests[2:] == ["/goodbooks_10k/to_read.csv.zip"]
    assert datasets.goodbooks_folder(to_read=False) == folder
    assert len(server.requests) == 3


def test_a_zip_without_the_file_or_not_a_zip_leaves_nothing(server, tmp_path):
    remote = Remote(file="x.csv.gz", url=f"{server.url}/x.zip", sha256=None, member="x.csv",
                    content="0" * 64)
    zipped = tmp_path / "other.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("y.csv", b"a\n")
    for body, error in ((zipped.read_bytes(), "holds no 'x.csv'"), (b"not a zip", "not a")):
        server.routes["/x.zip"] = (200, body, None)
        with pytest.raises(InputError, match=error):
            download.fetch(remote, "x", tmp_path / "data" / "x", progress=False)
        assert leftovers(tmp_path / "data") == []


def test_files_far_larger_than_the_published_one_are_refused_before_they_fill_the_disk(
        server, tmp_path, monkeypatch):
    """A zip bomb (a small zip of a huge member) and a download past the limit, declared
    or streamed, stop at `max_bytes` with nothing left; fetch leaves the umask alone."""
    monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("os.umask called"))
    zipped = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.csv", b"0" * 3_000_000)
    assert zipped.stat().st_size < 10_000
    remote = Remote(file="x.csv.gz", url=f"{server.url}/x.zip", sha256=None, member="x.csv",
                    content="0" * 64, max_bytes=1_000_000)
    server.routes["/x.zip"] = (200, zipped.read_bytes(), None)
    with pytest.raises(InputError, match="'x.csv' in the zip downloaded from .* holds more "
                                         "than 1,000,000 bytes"):
        download.fetch(remote, "x", tmp_path / "data" / "x", progress=False)
    assert leftovers(tmp_path / "data") == []
    plain = Remote(file="y.csv.gz", url=f"{server.url}/y.csv", sha256="0" * 64, max_bytes=5_000)
    for declared in (None, -1):  # its length declared, or none (read to the close)
        server.routes["/y.csv"] = (200, b"1" * (5 << 20), declared)
        with pytest.raises(InputError, match="file downloaded from .* holds more than 5,000"):
            download.fetch(plain, "y", tmp_path / "data" / "y", progress=False)
        assert leftovers(tmp_path / "data") == []
    # Under the limit it is fetched and written with the usual mode (the umask applied
    # by the kernel at creation, not read by changing it).
    body = b"id\n" * 100
    fine = Remote(file="z.csv.gz", url=f"{server.url}/z.csv",
                  sha256=hashlib.sha256(body).hexdigest(), max_bytes=5_000)
    server.routes["/z.csv"] = (200, body, None)
    path = download.fetch(fine, "z", tmp_path / "data" / "z", progress=False)
    assert gzip.decompress(path.read_bytes()) == body
    umask = int(re.search(r"Umask:\s*([0-7]+)", Path("/proc/self/status").read_text())[1], 8)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_download_killed_outright_leaves_temporaries_the_next_one_removes(
        server, online_retail_source, tmp_path):
    import time

    folder = tmp_path / "data" / "online_retail"
    folder.mkdir(parents=True)
    dead = folder / ".online_retail.csv.part.0a1b2c3d4e5f-999999999"  # no such process
    dead.write_bytes(b"half a download")
    hour_ago = time.time() - download.STALE_SECONDS - 60
    os.utime(dead, (hour_ago, hour_ago))
    alive = folder / f".online_retail.csv.part.0a1b2c3d4e5f-{os.getpid()}"  # under way here
    alive.write_bytes(b"half")
    # Another machine's download under way (a shared data folder): a process id this
    # machine does not know, but written a moment ago.
    elsewhere = folder / ".online_retail.csv.part.ffffffffffff-999999998"
    elsewhere.write_bytes(b"half")
    server.routes[online_retail_source] = (200, BODY, None)
    datasets.online_retail_path()
    assert leftovers(folder) == sorted([alive.name, elsewhere.name, "online_retail.csv.gz"])


# ------------------------------------------------------------------ UCI's Excel workbook

def _column(index):
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(65 + rest) + name
    return name


def write_xlsx(path, rows):
    """A minimal workbook as Excel writes one: shared strings, numbers, dates as day numbers."""
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    strings, index, xml_rows = [], {}, []
    for r, row in enumerate(rows, 1):
        cells = []
        for c, value in enumerate(row):
            ref = f"{_column(c)}{r}"
            if value is None:
                continue
            if isinstance(value, datetime.datetime):
                value = (value - datetime.datetime(1899, 12, 30)).total_seconds() / 86400
            if isinstance(value, str):
                index.setdefault(value, len(index))
                if index[value] == len(strings):
                    strings.append(value)
                cells.append(f'<c r="{ref}" t="s"><v>{index[value]}</v></c>')
            else:
                cells.append(f'<c r="{ref}"><v>{value!r}</v></c>')
        xml_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
    with zipfile.ZipFile(path, "w") as book:
        book.writestr("xl/worksheets/sheet1.xml", f'<worksheet xmlns="{main}"><sheetData>'
                      f'{"".join(xml_rows)}</sheetData></worksheet>')
        book.writestr("xl/sharedStrings.xml", f'<sst xmlns="{main}">' + "".join(
            f"<si><t>{escape(s)}</t></si>" for s in strings) + "</sst>")


WHEN = datetime.datetime(2010, 12, 1, 8, 26)
SHEET = [list(sources.ONLINE_RETAIL_HEADER),
         [536365, "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6, WHEN, 2.55, 17850,
          "United Kingdom"],
         ["C536379", "D", "Discount", -1, WHEN, 27.5, 14527, "United Kingdom"],
         [536414, 22139, None, 56, WHEN, 0, None, "United Kingdom"],
         [536381, 82567, "AIRLINE LOUNGE,METAL SIGN ", 2, WHEN, 2.1, 15311, "United Kingdom"]]
# The same table as the reference CSV writes it (R's doubles, trimmed text).
CSV = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6.0,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
C536379,D,Discount,-1.0,2010-12-01 08:26:00,27.5,14527.0,United Kingdom
536414,22139,,56.0,2010-12-01 08:26:00,0.0,,United Kingdom
536381,82567,"AIRLINE LOUNGE,METAL SIGN",2.0,2010-12-01 08:26:00,2.1,15311.0,United Kingdom
"""


def test_a_cell_past_excels_last_column_is_refused_not_padded_to(tmp_path):
    """A 1 kB workbook whose cell claims column ZZZZZ would make a row of 12 million cells."""
    write_xlsx(tmp_path / "book.xlsx", [["a", "b"], ["c", "d"]])
    with zipfile.ZipFile(tmp_path / "book.xlsx") as book:
        parts = {name: book.read(name) for name in book.namelist()}
    sheet = "xl/worksheets/sheet1.xml"
    assert b'r="B2"' in parts[sheet]
    parts[sheet] = parts[sheet].replace(b'r="B2"', b'r="ZZZZZ2"')
    with zipfile.ZipFile(tmp_path / "bomb.xlsx", "w") as book:
        for name, data in parts.items():
            book.writestr(name, data)
    with pytest.raises(InputError, match="'ZZZZZ2' lies past Excel's last column"):
        list(sources.xlsx_rows(tmp_path / "bomb.xlsx"))
    assert [len(row) for row in sources.xlsx_rows(tmp_path / "book.xlsx")] == [2, 2]
    assert sources._column("XFD1") == 16383


def test_online_retail_workbook_converts_to_the_csv_and_its_fingerprint(server, tmp_path):
    write_xlsx(tmp_path / "Online Retail.xlsx", SHEET)
    with zipfile.ZipFile(tmp_path / "online+retail.zip", "w") as archive:
        archive.write(tmp_path / "Online Retail.xlsx", "Online Retail.xlsx")
    reference = tmp_path / "reference.csv.gz"
    reference.write_bytes(gzip.compress(CSV.encode()))
    fingerprint = sources.online_retail_fingerprint(reference)
    real = sources.REMOTES["online_retail/online_retail.csv.gz"]
    remote = Remote(file=real.file, url=f"{server.url}/online+retail.zip", sha256=None,
                    member=real.member, convert=real.convert, content=fingerprint,
                    digest=real.digest)
    server.routes["/online+retail.zip"] = (200, (tmp_path / "online+retail.zip").read_bytes(),
                                           None)
    path = download.fetch(remote, "online_retail", tmp_path / "data", progress=False)
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    assert lines[1] == ("536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,"
                        "2.55,17850,United Kingdom")
    assert lines[3] == "536414,22139,,56,2010-12-01 08:26:00,0,,United Kingdom"
    assert len(lines) == 5
    # A changed cell changes the fingerprint: the download is refused, nothing written.
    SHEET_CHANGED = [row[:] for row in SHEET]
    SHEET_CHANGED[2][3] = -2
    write_xlsx(tmp_path / "Online Retail.xlsx", SHEET_CHANGED)
    with zipfile.ZipFile(tmp_path / "online+retail.zip", "w") as archive:
        archive.write(tmp_path / "Online Retail.xlsx", "Online Retail.xlsx")
    server.routes["/online+retail.zip"] = (200, (tmp_path / "online+retail.zip").read_bytes(),
                                           None)
    with pytest.raises(InputError, match="checksum mismatch"):
        download.fetch(remote, "online_retail", tmp_path / "other", progress=False)
    assert leftovers(tmp_path / "other") == []


def test_the_mirror_setting_replaces_the_source(monkeypatch):
    remote = sources.REMOTES["online_retail/online_retail.csv.gz"]
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    assert download.source_url(remote, "online_retail") == remote.url
    monkeypatch.setenv(download.MIRROR_ENV, "file:///srv/data/")
    assert download.source_url(remote, "online_retail") == (
        "file:///srv/data/online_retail/online+retail.zip")


def test_a_mirror_that_is_not_a_url_is_named(online_retail_source, monkeypatch, tmp_path):
    monkeypatch.setenv(download.MIRROR_ENV, "mirror.example.org/data")
    with pytest.raises(InputError, match=f"setting '{download.MIRROR_ENV}': cannot download"):
        datasets.online_retail_path()
    assert leftovers(tmp_path / "data") == []
