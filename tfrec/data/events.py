"""Reading and validating events and items tables.

Inputs are CSV, gzipped CSV or Parquet. Every check is vectorised over the
table. Problems with a whole file (missing file or column, no rows) always
raise `InputError`. Problems with single rows (missing id, unparseable
timestamp, a duplicate item with conflicting text, a malformed CSV line) are
counted in a `Rejections` record and the rows kept aside (lenient mode, the
default), or raise `InputError` at the first such row (``strict=True``). No
row disappears without being counted.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import logging
import lzma
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from tfrec.config import EventsSchema, ItemsSchema
from tfrec.data.vocab import OOV_TOKEN
from tfrec.errors import InputError

logger = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")

# Canonical column names of the tables the rest of tfrec works on.
EVENT_COLUMNS = ("user", "item", "time", "event", "session", "line")
ITEM_COLUMNS = ("item", "text", "market", "line")


@dataclasses.dataclass
class Rejections:
    """Rows left out of a table, counted by rule, with the rows themselves.

    Attributes:
      counts: rule -> number of rows it dropped, in the order rules ran.
      rows_read: file -> data rows read from it (malformed lines included).
      examples: rule -> message describing the first dropped row.
      rows: the dropped rows (original columns plus `_file`, `_line`,
        `_reason`), so they can be written out and nothing is lost.
    """

    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    rows_read: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)
    rows: list[pd.DataFrame] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, rule: str, count: int, example: str | None = None,
            rows: pd.DataFrame | None = None) -> None:
        self.counts[rule] = self.counts.get(rule, 0) + int(count)
        if count and example and rule not in self.examples:
            self.examples[rule] = example
        if rows is not None and len(rows):
            self.rows.append(rows)

    def merge(self, other: "Rejections") -> None:
        for rule, count in other.counts.items():
            self.add(rule, count, other.examples.get(rule))
        self.rows_read.update(other.rows_read)
        self.rows.extend(other.rows)

    def write(self, path: str | Path) -> int:
        """Writes every rejected row to a CSV file; returns how many."""
        frame = (pd.concat(self.rows, ignore_index=True) if self.rows
                 else pd.DataFrame(columns=["_file", "_line", "_reason"]))
        if len(frame):  # in file order, whatever rule dropped them
            frame = frame.sort_values(["_file", "_line"], kind="stable")
        frame.to_csv(path, index=False)
        return len(frame)


class _Table:
    """A raw table as read from disk, with the source line of every row."""

    def __init__(self, path: Path, frame: pd.DataFrame, lines: np.ndarray, is_csv: bool,
                 repeated: tuple[str, ...] = ()):
        self.path = path
        self.frame = frame
        self.lines = lines
        self.is_csv = is_csv
        self.repeated = repeated  # names the header holds more than once

    def where(self, position: int) -> dict:
        """InputError location kwargs for the row at `position`."""
        if self.is_csv:
            return {"path": str(self.path), "line": int(self.lines[position])}
        return {"path": f"{self.path} (row {int(self.lines[position])})"}

    def require(self, column: str | None, setting: str) -> None:
        """Fails unless the table has `column`; `setting` is the config key naming the
        column (the error names it), or words saying what the table should be."""
        if column is not None and column in self.repeated:
            raise InputError(f"the header names column '{column}' more than once: which one "
                             "is meant is unclear; rename the others", path=str(self.path),
                             column=column)
        if column is not None and column not in self.frame.columns:
            key = setting if "." in setting and " " not in setting else None
            fix = f"set {setting} to the right one" if key else f"expected {setting}"
            columns = [str(c) for c in self.frame.columns]
            if self.is_csv and len(columns) == 1:
                # One column whose name holds another separator: not a comma-separated file.
                found = [sep for sep in (";", "\t", "|") if sep in columns[0]]
                if found:
                    fix = (f"the header has one column holding {found[0]!r}: CSV files are "
                           "read comma-separated; write the file with commas")
            raise InputError(
                f"no column '{column}' (columns are: {', '.join(map(str, self.frame.columns))}); "
                f"{fix}", path=str(self.path), column=column, key=key)


_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?")
_BAD_LINE = re.compile(r"Skipping line (\d+): (.*)")


def _read_table(path: str | Path, what: str, rejections: Rejections, strict: bool) -> _Table:
    """Reads a CSV / CSV.gz / Parquet file with every column as text (ids stay exact)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found", path=str(path))
    if path.is_dir():
        raise InputError(f"{what} path is a folder, expected a CSV or Parquet file",
                         path=str(path))
    name = path.name.lower()
    bad: list[tuple[int, str]] = []
    try:
        if name.endswith(PARQUET_SUFFIXES):
            frame = pd.read_parquet(path)
            lines = np.arange(1, len(frame) + 1)
            is_csv = False
        else:
            sep = "\t" if re.search(r"\.tsv(\.gz)?$", name) else ","
            unterminated: list[tuple[int, str]] = []
            try:
                frame, caught = _read_csv(path, sep, strict)
            except pd.errors.ParserError as err:
                if "EOF inside string" not in str(err):
                    raise
                frame, caught, unterminated = _read_csv_without_unterminated_quotes(
                    path, sep, strict)
            for warning in caught:
                for match in _BAD_LINE.finditer(str(warning.message)):
                    bad.append((int(match.group(1)), match.group(2)))
            dropped = sorted(bad + unterminated)
            if dropped:
                numbers = [b[0] for b in dropped]
                rejections.add(f"{what}: malformed line", len(dropped),
                               f"{path}, line {dropped[0][0]}: {dropped[0][1]}",
                               pd.DataFrame({"_file": str(path), "_line": numbers,
                                             "_reason": [b[1] for b in dropped],
                                             "_raw": _raw_lines(path, numbers)}))
            # Data rows sit on lines 2.. (line 1 is the header), minus skipped ones.
            skipped = np.array(sorted(b[0] for b in bad), dtype=np.int64)
            lines = np.arange(2, len(frame) + 2 + len(skipped))
            if len(skipped):
                lines = np.setdiff1d(lines, skipped)
            blank = frame.isna().all(axis=1).to_numpy()
            if blank.any():
                frame, lines = frame[~blank].reset_index(drop=True), lines[~blank]
            is_csv = True
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} file is empty (no header, no rows)", path=str(path)) from None
    except pd.errors.ParserError as err:
        detail = str(err).strip().splitlines()[-1]
        match = re.search(r"line (\d+)", detail)
        fields = re.search(r"Expected (\d+) fields in line \d+, saw (\d+)", detail)
        if fields:  # pandas' words for a row with more fields than the header
            detail = f"{fields.group(2)} fields where the header has {fields.group(1)}"
        raise InputError(f"malformed CSV: {detail}", path=str(path),
                         line=int(match.group(1)) if match else None) from None
    except UnicodeDecodeError as err:
        line, column = _first_bad_utf8(path)
        where = f"byte {column} of the line" if line else f"{err.reason} at byte {err.start}"
        raise InputError(f"not UTF-8 text ({where}): save the file as UTF-8", path=str(path),
                         line=line) from None
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(f"cannot read {what} file: {err}", path=str(path)) from None
    except Exception as err:  # pyarrow raises its own types for a broken Parquet file
        if type(err).__module__.startswith("pyarrow"):
            raise InputError(f"cannot read Parquet file: {err}", path=str(path)) from None
        raise
    if len(frame) == 0:
        raise InputError(f"{what} table has a header but no rows", path=str(path))
    rejections.rows_read[str(path)] = len(frame) + len(bad) + (
        len(unterminated) if is_csv else 0)
    frame.columns = [str(c) for c in frame.columns]
    header = _header(path, sep) if is_csv else list(frame.columns)
    repeated = tuple(sorted({c for c in header if header.count(c) > 1}))
    return _Table(path, frame, np.asarray(lines, dtype=np.int64), is_csv, repeated)


def _header(path: Path, sep: str) -> list[str]:
    """The CSV's header names as written (pandas renames a repeated one 'x.1')."""
    return [str(c) for c in pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str,
                                        keep_default_na=False).iloc[0].tolist()]


def _read_csv(source, sep: str, strict: bool) -> tuple[pd.DataFrame, list]:
    """pandas' read of a CSV (every column as text) and the warnings it gave. Only an
    empty field is missing: 'NA', 'null', 'None', 'NaN' and pandas' other missing-value
    words are ids like any other text."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = pd.read_csv(source, dtype=str, sep=sep, skip_blank_lines=False,
                            keep_default_na=False, na_values=[""],
                            on_bad_lines="error" if strict else "warn")
    return frame, list(caught)


_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _first_bad_utf8(path: Path, chunk_size: int = 1 << 20) -> tuple[int | None, int | None]:
    """(line, byte within it, both 1-based) of the file's first byte that is not UTF-8,
    read in chunks ((None, None) if none is found or the file cannot be read): pandas
    names a byte of its own buffer, not of the file."""
    line, line_start, offset, pending = 1, 0, 0, b""
    try:
        with _OPENERS.get(path.suffix.lower(), open)(path, "rb") as file:
            while True:
                chunk = file.read(chunk_size)
                data, at = pending + chunk, offset - len(pending)  # `data` starts at byte `at`
                try:
                    data.decode("utf-8")
                    good, pending = len(data), b""
                except UnicodeDecodeError as err:
                    if chunk and err.end == len(data) and len(data) - err.start < 4:
                        good, pending = err.start, data[err.start:]  # a character cut in two
                    else:
                        good, pending = err.start, None
                newlines = data.count(b"\n", 0, good)
                if newlines:
                    line += newlines
                    line_start = at + data.rfind(b"\n", 0, good) + 1
                if pending is None:
                    return line, at + good - line_start + 1
                if not chunk:
                    return None, None
                offset += len(chunk)
    except (OSError, EOFError, zlib.error):
        return None, None


def _raw_lines(path: Path, numbers: list[int]) -> list[str]:
    """The text of the file's lines `numbers` (1-based), for the rejected rows of lines
    that did not parse as rows: nothing of them is lost ("" where unreadable)."""
    wanted, found = set(numbers), {}
    try:
        with _OPENERS.get(path.suffix, open)(path, "rt", encoding="utf-8",
                                             errors="replace", newline="") as file:
            for number, line in enumerate(file, start=1):
                if number in wanted:
                    found[number] = line.rstrip("\r\n")
                    if len(found) == len(wanted):
                        break
    except OSError:
        pass
    return [found.get(n, "") for n in numbers]


UNTERMINATED_QUOTE = ('unterminated quote: the \" that opens a field on this line never '
                      'closes, so the rest of the file would be read as one value')


def unterminated_quote_lines(lines: list[str], sep: str = ",") -> list[int]:
    """1-based numbers of the lines (of a CSV's lines, header first) on which a quoted
    field opens and never closes.

    Quoting as CSV reads it: a '"' opens a quoted field only at the start of
    a field, '""' inside one is a literal quote. Once a line's quote is found
    never to close, that line is set aside and the reading goes on from the
    next line, so every such line is found.
    """
    found: list[int] = []
    begin = 0
    while begin < len(lines):
        in_quote, start = False, None
        for number in range(begin, len(lines)):
            line = lines[number]
            if not in_quote and '"' not in line:
                continue
            at_field_start, i = not in_quote, 0
            while i < len(line):
                if in_quote:
                    j = line.find('"', i)
                    if j < 0:
                        break
                    if line.startswith('""', j):
                        i = j + 2
                        continue
                    in_quote, at_field_start, i = False, False, j + 1
                elif at_field_start and line[i] == '"':
                    in_quote, start, i = True, number, i + 1
                else:
                    j = line.find(sep, i)
                    if j < 0:
                        break
                    at_field_start, i = True, j + 1
        if not in_quote:
            break
        found.append(start + 1)
        begin = start + 1
    return found


def _read_csv_without_unterminated_quotes(path: Path, sep: str, strict: bool
                                          ) -> tuple[pd.DataFrame, list, list]:
    """Reads a CSV in which a quote never closes: (frame, warnings, [(line, reason)]).

    Each line where a quoted field opens and never closes is read as a blank
    line (so every other line keeps its number) and reported as dropped.

    Raises:
      InputError: strict, or the quote is in the header; it names the line.
    """
    opener = _OPENERS.get(path.suffix.lower(), open)
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    bad = unterminated_quote_lines(lines, sep)
    if not bad:  # pandas saw a quote this reading does not: say what pandas said
        raise pd.errors.ParserError("malformed CSV: a quoted field never closes")
    fix = ('close the quote, or write a literal quote inside a value as "" within a '
           'quoted field')
    if bad[0] == 1:
        raise InputError(f"{UNTERMINATED_QUOTE}; the header cannot be dropped: {fix}",
                         path=str(path), line=1)
    if strict:
        raise InputError(f"{UNTERMINATED_QUOTE}; {fix} (or leave data.strict false to drop "
                         f"the line and count it)", path=str(path), line=bad[0])
    for number in bad:
        lines[number - 1] = ""
    frame, caught = _read_csv(io.StringIO("\n".join(lines)), sep, strict)
    return frame, caught, [(number, UNTERMINATED_QUOTE) for number in bad]


def _text(series: pd.Series) -> pd.Series:
    """Column as stripped strings, empty and missing values as <NA>."""
    if not (pd.api.types.is_string_dtype(series) or series.dtype == object):
        if pd.api.types.is_float_dtype(series):
            # Parquet ids stored as floats (e.g. 17850.0) read back as "17850", value by
            # value: a whole float of any size as its integer, any other as its float text.
            values = series.to_numpy(dtype="float64", na_value=np.nan)
            whole = np.isfinite(values) & (np.floor(values) == values)
            text = series.astype("string")
            if whole.any():
                text = text.copy()
                text[whole] = [str(int(v)) for v in values[whole]]
            series = text
        series = series.astype("string")
    series = series.astype("string").str.strip()
    return series.mask(series == "")


# Exports list ids one per line (item_ids.txt, user_ids.txt), as TF Serving's assets do:
# an id holds none of the characters that end a line for Python's `str.splitlines`.
LINE_ENDS = "[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]"
LINE_BREAK_WHY = ("an export lists ids one per line; \\n, \\r, \\v, \\f, U+001C-U+001E, "
                  "U+0085, U+2028 and U+2029 all end a line")
RESERVED_WHY = "the item vocabulary's slot for unknown items: rename the item"


def _line_breaks(ids: pd.Series) -> np.ndarray:
    """[n] bool: which ids hold a line break (missing ids do not)."""
    return ids.str.contains(LINE_ENDS, regex=True).fillna(False).to_numpy(dtype=bool)


def _reserved(ids: pd.Series) -> np.ndarray:
    """[n] bool: which item ids are the vocabulary's reserved unknown-item id."""
    return (ids == OOV_TOKEN).fillna(False).to_numpy(dtype=bool)


def _raise_first(table: _Table, checks) -> None:
    """Strict reading: raises `InputError` at the first row, in file order, that any of
    `checks` ((column, bad [n] bool, describe) each) flags; a row two rules flag is
    named by the first of them."""
    first = None
    for column, bad, describe in checks:
        rows = np.flatnonzero(bad)
        if len(rows) and (first is None or rows[0] < first[0]):
            first = (int(rows[0]), column, describe)
    if first is not None:
        row, column, describe = first
        raise InputError(describe(row), column=column, **table.where(row))


def _reject(table: _Table, bad: np.ndarray, rule: str, column: str, describe,
            rejections: Rejections, strict: bool) -> None:
    """Counts (or, when strict, raises on) the rows flagged in `bad`."""
    if not bad.any():
        rejections.add(rule, 0)
        return
    first = int(np.flatnonzero(bad)[0])
    if strict:
        raise InputError(describe(first), column=column, **table.where(first))
    loc = table.where(first)
    example = InputError(describe(first), column=column, **loc).message
    rows = table.frame[bad].copy()
    rows.insert(0, "_reason", rule)
    rows.insert(0, "_line", table.lines[bad])
    rows.insert(0, "_file", str(table.path))
    rejections.add(rule, int(bad.sum()), example, rows)


def parse_times(values: pd.Series, time_format: str | None = None,
                time_unit: str = "s") -> np.ndarray:
    """Parses a time column to int64 epoch seconds; unparseable values give INT64_MIN.

    Accepts datetime columns, numbers (epoch time in `time_unit`) and text
    (ISO 8601, or `time_format` when given: any other text is unparseable, never
    read in a guessed day or month order). Time-zone aware values are converted to
    UTC.
    """
    nat = np.iinfo(np.int64).min
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        text = values.astype("string").str.strip()
        present = text.dropna()
        # Epoch numbers or date text: the first value decides, so date text is
        # not run through a full numeric parse first.
        if (time_format is None and len(present)
                and _NUMBER.fullmatch(str(present.iloc[0])) is not None):
            parsed = pd.to_datetime(pd.to_numeric(text, errors="coerce"), unit=time_unit,
                                    errors="coerce")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # Without a format, ISO 8601 only (any of its forms, row by row): a format
                # pandas would infer from the first value reads 03/01/2024 as March the
                # first where the file meant January the third, with no sign of it.
                parsed = pd.to_datetime(text, format=time_format or "ISO8601",
                                        errors="coerce", utc=True)
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    out = parsed.astype("datetime64[s]").to_numpy().astype(np.int64)
    out[parsed.isna().to_numpy()] = nat
    return out


# Seconds per unit of an epoch time column (`data.events_schema.time_unit`).
_UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_YEAR_SECONDS = 365.2425 * 86400


def check_time_unit(raw: pd.Series, seconds: np.ndarray, schema: EventsSchema, path) -> None:
    """Refuses epoch numbers read in a unit that puts the events' median time before 1980
    or after 2200 when another unit puts it between 1990 and 2100 (milliseconds read as
    seconds, say): sessions would be cut or merged at random, with no other sign."""
    if schema.time_format is not None or pd.api.types.is_datetime64_any_dtype(raw):
        return
    present = raw.dropna()
    if not len(present) or _NUMBER.fullmatch(str(present.iloc[0]).strip()) is None:
        return
    parsed = seconds[seconds != np.iinfo(np.int64).min]
    if not len(parsed):
        return
    year = 1970 + float(np.median(parsed)) / _YEAR_SECONDS
    if 1980 <= year <= 2200:
        return
    value = float(np.median(pd.to_numeric(present, errors="coerce").dropna()))
    scale = _UNIT_SECONDS[schema.time_unit]
    for unit, unit_seconds in _UNIT_SECONDS.items():
        guess = 1970 + value * unit_seconds / _YEAR_SECONDS
        if unit != schema.time_unit and 1990 <= guess <= 2100:
            raise InputError(
                f"column {schema.time_col!r} holds epoch numbers (median {value:.6g}): read in "
                f"{schema.time_unit} (data.events_schema.time_unit) they put the events around "
                f"the year {int(1970 + value * scale / _YEAR_SECONDS):,}, in {unit} around "
                f"{int(guess)}; set data.events_schema.time_unit: {unit}",
                path=str(path), key="data.events_schema.time_unit")


def read_events(path: str | Path, schema: EventsSchema = EventsSchema(), strict: bool = False,
                rejections: Rejections | None = None) -> tuple[pd.DataFrame, Rejections]:
    """Reads an events table into tfrec's canonical events frame.

    Args:
      path: CSV, CSV.gz or Parquet file.
      schema: which columns hold the user, item, time, event type, session id.
      strict: raise on the first bad row instead of counting and dropping it.
      rejections: record to add to (a new one by default).

    Returns:
      (events, rejections): events has columns user, item (str), time (int64
      epoch seconds), event, session (str or <NA>) and line (source line).

    Raises:
      InputError: missing file or column, no rows, or (strict) a bad row.
    """
    rejections = Rejections() if rejections is None else rejections
    table = _read_table(path, "events", rejections, strict)
    table.require(schema.user_col, "data.events_schema.user_col")
    table.require(schema.item_col, "data.events_schema.item_col")
    table.require(schema.time_col, "data.events_schema.time_col")
    table.require(schema.event_col, "data.events_schema.event_col")
    table.require(schema.session_col, "data.events_schema.session_col")
    frame = table.frame
    user = _text(frame[schema.user_col])
    item = _text(frame[schema.item_col])
    raw_time = frame[schema.time_col]
    time = parse_times(raw_time, schema.time_format, schema.time_unit)
    check_time_unit(raw_time, time, schema, table.path)
    n = len(frame)
    event = (_text(frame[schema.event_col]).str.lower() if schema.event_col
             else pd.Series(pd.NA, index=frame.index, dtype="string"))
    session = (_text(frame[schema.session_col]) if schema.session_col
               else pd.Series(pd.NA, index=frame.index, dtype="string"))

    keep = np.ones(n, dtype=bool)
    checks = [
        ("events: missing user id", schema.user_col, user.isna().to_numpy(),
         lambda i: "missing user id"),
        ("events: missing item id", schema.item_col, item.isna().to_numpy(),
         lambda i: "missing item id"),
        # (Named in the report only when a row has one: they are rare.)
        *[(f"events: {name} id with a line break", column, breaks,
           lambda i, ids=ids, name=name: f"{name} id {ids.iloc[i]!r} holds a line break "
                                         f"({LINE_BREAK_WHY})")
          for name, column, ids in (("user", schema.user_col, user),
                                    ("item", schema.item_col, item))
          for breaks in [_line_breaks(ids)] if breaks.any()],
        *[("events: reserved item id", schema.item_col, reserved,
           lambda i: f"item id {OOV_TOKEN!r} is reserved ({RESERVED_WHY})")
          for reserved in [_reserved(item)] if reserved.any()],
        ("events: unparseable timestamp", schema.time_col,
         time == np.iinfo(np.int64).min,
         lambda i: (f"cannot parse {raw_time.iloc[i]!r} as a timestamp"
                    + (f" with format {schema.time_format!r}" if schema.time_format else "")
                    + "; set data.events_schema.time_format" if pd.notna(raw_time.iloc[i])
                    else "missing timestamp")),
    ]
    if strict:
        _raise_first(table, [(column, bad, describe) for _, column, bad, describe in checks])
    for rule, column, bad, describe in checks:
        bad = bad & keep
        _reject(table, bad, rule, column, describe, rejections, strict)
        keep &= ~bad
    events = pd.DataFrame({
        "user": user[keep].to_numpy(dtype=object),
        "item": item[keep].to_numpy(dtype=object),
        "time": time[keep],
        "event": event[keep].to_numpy(dtype=object),
        "session": session[keep].to_numpy(dtype=object),
        "line": table.lines[keep],
    })
    if len(events) == 0:
        hint = ""
        if rejections.counts.get("events: unparseable timestamp", 0) * 2 > n:
            hint = ("; most timestamps did not parse: set data.events_schema.time_format "
                    f"(first: {rejections.examples['events: unparseable timestamp']})")
        raise InputError("no usable events: every row was rejected "
                         f"({_summary(rejections)}){hint}", path=str(table.path))
    logger.info("read %d events from %s (%d rows rejected)", len(events), table.path,
                int((~keep).sum()))
    return events, rejections


def read_items(path: str | Path, schema: ItemsSchema = ItemsSchema(), strict: bool = False,
               rejections: Rejections | None = None) -> tuple[pd.DataFrame, Rejections]:
    """Reads an items table (id, text, optional market) into the canonical items frame.

    A repeated item id with the same text (and market) is merged; with a
    different text it is a conflict: rejected (the first row wins) or, when
    strict, an error naming both lines.

    Returns:
      (items, rejections): items has columns item, text, market (str / <NA>)
      and line, one row per item id, in file order.
    """
    rejections = Rejections() if rejections is None else rejections
    table = _read_table(path, "items", rejections, strict)
    table.require(schema.item_col, "data.items_schema.item_col")
    table.require(schema.text_col, "data.items_schema.text_col")
    table.require(schema.market_col, "data.items_schema.market_col")
    frame = table.frame
    item = _text(frame[schema.item_col])
    text = _text(frame[schema.text_col]).fillna("")
    market = (_text(frame[schema.market_col]) if schema.market_col
              else pd.Series(pd.NA, index=frame.index, dtype="string"))
    missing = item.isna().to_numpy()
    broken = _line_breaks(item)
    reserved = _reserved(item)
    keep = ~missing & ~broken & ~reserved
    # Rows without an id group together (never compared: `keep` leaves them out).
    first_pos = pd.Series(np.arange(len(frame))).groupby(item.to_numpy(), dropna=False
                                                         ).transform("min")
    first_pos = first_pos.to_numpy(dtype=np.int64)
    repeated = keep & (first_pos != np.arange(len(frame)))
    same = ((text.to_numpy() == text.to_numpy()[first_pos])
            & (market.fillna("").to_numpy() == market.fillna("").to_numpy()[first_pos]))
    duplicate, conflict = repeated & same, repeated & ~same

    def describe(i: int) -> str:
        j = int(first_pos[i])
        return (f"item {item.iloc[i]!r} has text {text.iloc[i]!r} here but "
                f"{text.iloc[j]!r} at line {int(table.lines[j])}"
                if text.iloc[i] != text.iloc[j] else
                f"item {item.iloc[i]!r} has market {market.iloc[i]!r} here but "
                f"{market.iloc[j]!r} at line {int(table.lines[j])}")

    def describe_break(i: int) -> str:
        return f"item id {item.iloc[i]!r} holds a line break ({LINE_BREAK_WHY})"

    def describe_reserved(i: int) -> str:
        return f"item id {OOV_TOKEN!r} is reserved ({RESERVED_WHY})"

    if strict:
        _raise_first(table, [(schema.item_col, missing, lambda i: "missing item id"),
                             (schema.item_col, broken, describe_break),
                             (schema.item_col, reserved, describe_reserved),
                             (schema.text_col, conflict, describe)])
    _reject(table, missing, "items: missing item id", schema.item_col,
            lambda i: "missing item id", rejections, strict)
    if broken.any():
        _reject(table, broken, "items: item id with a line break", schema.item_col,
                describe_break, rejections, strict)
    if reserved.any():
        _reject(table, reserved, "items: reserved item id", schema.item_col,
                describe_reserved, rejections, strict)
    if repeated.any():
        rejections.add("items: repeated item id, same text (merged)", int(duplicate.sum()))
        keep &= ~duplicate
        _reject(table, conflict, "items: conflicting duplicate item id", schema.text_col,
                describe, rejections, strict)
        keep &= ~conflict
    items = pd.DataFrame({
        "item": item[keep].to_numpy(dtype=object),
        "text": text[keep].to_numpy(dtype=object),
        "market": market[keep].to_numpy(dtype=object),
        "line": table.lines[keep],
    })
    if len(items) == 0:
        raise InputError("no usable items: every row was rejected", path=str(table.path))
    return items, rejections


def _summary(rejections: Rejections) -> str:
    return "; ".join(f"{rule}: {count}" for rule, count in rejections.counts.items() if count)
