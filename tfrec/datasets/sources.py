"""The public sources of the data sets: URLs, checksums and the conversion to tfrec's files.

Each file tfrec reads (see `tfrec.datasets`) has a `Remote`: its public
source and a checksum, checked after download (see `tfrec.datasets.download`).

- goodbooks-10k `books.csv`: from the dataset's home, at a fixed commit (its
  history holds other versions of the file); its SHA-256 is the one of the
  reference copy the README's figures come from.
- goodbooks-10k `ratings.csv`, `to_read.csv`: the first published version (the
  dataset's home now holds a later, larger version), as zips from the copy
  that carries it; the SHA-256 checked is the one of the CSV inside the zip.
- UCI Online Retail: UCI's zip holds an Excel workbook (`Online Retail.xlsx`);
  tfrec converts its sheet to the gzipped CSV it reads (with the standard
  library: no Excel reader needed) and checks a fingerprint of the table
  (`online_retail_fingerprint`: every row, with numbers, ids and dates
  written one way), which does not depend on how the CSV is formatted.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import hashlib
import io
import re
import zipfile
from pathlib import Path
from typing import Iterator
from xml.etree import ElementTree

from tfrec.datasets.download import Remote
from tfrec.errors import InputError

ONLINE_RETAIL_HEADER = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate",
                        "UnitPrice", "CustomerID", "Country")
_NUMBER = re.compile(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?")
_SHEET = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_EXCEL_EPOCH = datetime.datetime(1899, 12, 30)


def _id(value: str) -> str:
    """An id or count written one way: 17850, 17850.0 and 1.785E4 are all "17850"."""
    value = value.strip()
    if _NUMBER.fullmatch(value):
        number = float(value)
        if number.is_integer():
            return str(int(number))
        return repr(number)
    return value


def online_retail_fingerprint(path: str | Path) -> str:
    """The SHA-256 of the Online Retail table in one canonical text form.

    Every row in file order; ids and quantities as integers where they are
    whole numbers, prices as Python floats, InvoiceDate to the minute, text
    stripped. Two files holding the same table (the CSV converted from UCI's
    Excel workbook, or from the R package `onlineretail`) give the same value.

    Raises:
      InputError: the file is not a CSV with the Online Retail header.
    """
    digest = hashlib.sha256()
    with gzip.open(path, "rt", encoding="utf-8", newline="") as stream:
        rows = csv.reader(stream)
        header = tuple(next(rows, ()))
        if header != ONLINE_RETAIL_HEADER:
            raise InputError(f"not the Online Retail table (header {header})", path=str(path))
        for row in rows:
            invoice, code, text, quantity, date, price, customer, country = row
            canonical = (_id(invoice), _id(code), text.strip(), _id(quantity), date.strip()[:16],
                         _id(price), _id(customer), country.strip())
            digest.update(("\x1f".join(canonical) + "\n").encode())
    return digest.hexdigest()


def _shared_strings(book: zipfile.ZipFile) -> list[str]:
    if "xl/sharedStrings.xml" not in book.namelist():
        return []
    strings = []
    with book.open("xl/sharedStrings.xml") as stream:
        for _, element in ElementTree.iterparse(stream):
            if element.tag == f"{_SHEET}si":
                # The text runs (<t>, <r><t>), not the phonetic hints (<rPh><t>).
                hints = {id(t) for hint in element.iter(f"{_SHEET}rPh")
                         for t in hint.iter(f"{_SHEET}t")}
                strings.append("".join(t.text or "" for t in element.iter(f"{_SHEET}t")
                                       if id(t) not in hints))
                element.clear()
    return strings


MAX_COLUMNS = 16384  # Excel's last column, XFD


def _column(reference: str, path: str | Path | None = None) -> int:
    """'A7' -> 0, 'AB3' -> 27.

    Raises:
      InputError: a column past Excel's last (XFD), which no workbook holds: the row
        would be padded to it.
    """
    index = 0
    for char in reference:
        if not char.isalpha():
            break
        index = index * 26 + ord(char.upper()) - 64
        if index > MAX_COLUMNS:
            raise InputError(f"cell {reference[:12]!r} lies past Excel's last column (XFD): "
                             "not a workbook Excel writes",
                             path=None if path is None else str(path))
    return index - 1


def xlsx_rows(path: str | Path) -> Iterator[list[tuple[str, str]]]:
    """The rows of an .xlsx workbook's first sheet: a list of (type, text) per cell.

    type is "n" (a number, as written in the file), "s" (text) or "" (an
    empty cell). A minimal reader (the standard library's zip and XML):
    enough for a plain table of numbers and text.
    """
    with zipfile.ZipFile(path) as book:
        strings = _shared_strings(book)
        sheets = sorted((name for name in book.namelist()
                         if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", name)),
                        key=lambda name: int(re.search(r"\d+", name.rsplit("/", 1)[1])[0]))
        if not sheets:
            raise InputError("an Excel workbook without a sheet", path=str(path))
        with book.open(sheets[0]) as stream:
            for _, element in ElementTree.iterparse(stream):
                if element.tag != f"{_SHEET}row":
                    continue
                row: list[tuple[str, str]] = []
                for cell in element.iter(f"{_SHEET}c"):
                    at = _column(cell.get("r", ""), path) if cell.get("r") else len(row)
                    row.extend([("", "")] * (at - len(row)))
                    kind = cell.get("t", "n")
                    value = cell.find(f"{_SHEET}v")
                    text = value.text if value is not None and value.text is not None else None
                    if kind == "s" and text is not None:
                        row.append(("s", strings[int(text)]))
                    elif kind == "inlineStr":
                        row.append(("s", "".join(t.text or "" for t in cell.iter(f"{_SHEET}t"))))
                    elif text is None:
                        row.append(("", ""))
                    elif kind in ("n", "d"):
                        row.append(("n", text))
                    else:  # str (a formula's text), b (boolean), e (error)
                        row.append(("s", text))
                element.clear()
                yield row


def online_retail_from_xlsx(source: Path, target: Path) -> None:
    """UCI's `Online Retail.xlsx` -> the gzipped CSV tfrec reads (the same 8 columns).

    InvoiceDate (an Excel date number) is written as YYYY-MM-DD HH:MM:SS;
    whole numbers without a decimal point.

    Raises:
      InputError: the sheet's header is not the Online Retail one.
    """
    rows = xlsx_rows(source)
    header = tuple(text for _, text in next(rows, []))
    if header[:len(ONLINE_RETAIL_HEADER)] != ONLINE_RETAIL_HEADER:
        raise InputError(f"not the Online Retail sheet (header {header})", path=str(source))
    date_at = ONLINE_RETAIL_HEADER.index("InvoiceDate")
    width = len(ONLINE_RETAIL_HEADER)
    with open(target, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed, \
            io.TextIOWrapper(packed, encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(ONLINE_RETAIL_HEADER)
        for row in rows:
            if not any(text for _, text in row):
                continue
            row = (row + [("", "")] * width)[:width]
            cells = []
            for at, (kind, text) in enumerate(row):
                if kind == "n" and at == date_at:
                    moment = _EXCEL_EPOCH + datetime.timedelta(days=float(text))
                    text = (moment + datetime.timedelta(microseconds=500_000)).replace(
                        microsecond=0).isoformat(sep=" ")
                elif kind == "n":
                    text = _id(text)
                cells.append(text)
            writer.writerow(cells)


# The fingerprint of the reference copy (541,909 rows, see ATTRIBUTION.md).
ONLINE_RETAIL_FINGERPRINT = "06e0d38321ac2cd34371ec0e0cbd6fff1d3da2dc07803c84614c88c1fa2cc7fc"

REMOTES: dict[str, Remote] = {
    "online_retail/online_retail.csv.gz": Remote(
        file="online_retail.csv.gz",
        url="https://archive.ics.uci.edu/static/public/352/online+retail.zip",
        sha256=None, member="Online Retail.xlsx", convert=online_retail_from_xlsx,
        content=ONLINE_RETAIL_FINGERPRINT, digest=online_retail_fingerprint,
        max_bytes=128 << 20),  # the zip and its workbook: 23 MB each
    "goodbooks_10k/books.csv.gz": Remote(
        file="books.csv.gz",
        url="https://raw.githubusercontent.com/zygmuntz/goodbooks-10k/"
            "fdb21c94e9e6e3340966a231c5bda91466e61ed6/books.csv",
        sha256="4d21d0e0433128657c752e3a3d0405ac0ec11675d6c70c64cb0abf4ab1acb76a",
        max_bytes=32 << 20),  # 3.3 MB
    "goodbooks_10k/ratings.csv.gz": Remote(
        file="ratings.csv.gz",
        url="https://github.com/divu0804/Ecomm-project/raw/HEAD/Data/ratings.csv.zip",
        sha256=None, member="ratings.csv",
        content="c5d10afdaef938a5b9a7feb200dd5027d410a7d9ff1bf518340233b7f0f8455e",
        max_bytes=128 << 20),  # 12 MB
    "goodbooks_10k/to_read.csv.gz": Remote(
        file="to_read.csv.gz",
        url="https://github.com/divu0804/Ecomm-project/raw/HEAD/Data/to_read.csv.zip",
        sha256=None, member="to_read.csv",
        content="84928f89c9c25760e87ffc4b74ef99a07172d5c8450794cdac72c7bad04155cf",
        max_bytes=128 << 20),  # 9.4 MB
}
