"""The goodbooks-10k layout: books, ratings and to-read shelves, no timestamps.

A folder holds `books.csv.gz` (book_id, title, authors, language_code, ...),
`ratings.csv.gz` (book_id, user_id, rating 1-5) and `to_read.csv.gz`
(user_id, book_id). The reader turns them into tfrec's canonical frames:

- items: book_id; text = title + " " + authors; market = language_code
  (as written: eng, en-US, spa, ...; missing for about a tenth of the books).
- events: a rating of 4-5 is a "rated_high" event, 3 a "rated" one, a book
  on the to-read shelf a "to_read" one. Ratings of 1-2 are a negative
  signal, not an interest: dropped, and counted as a rule. A (reader, book)
  pair rated twice (a known flaw of the first published ratings file) keeps
  its first rating; a to-read entry for a book the reader also rated is
  dropped (the rating says more). Every drop is counted.
- No timestamps: every event's time is 0 and its session is the reader, so
  a reader's whole shelf is one session (a set). Its order carries no
  meaning, so each reader's events are put in a seeded random order: window
  pairs and the pieces of a long shelf (`data.sessions.max_length`) are
  then random subsets of the shelf, not bands of book ids (ratings.csv is
  sorted by book_id, and book_id follows popularity).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from tfrec.data.events import Rejections, _read_table, _reject, _Table, _text
from tfrec.datasets import goodbooks_paths
from tfrec.errors import InputError

logger = logging.getLogger(__name__)

BOOK_COLUMNS = ("book_id", "title", "authors", "language_code")
RATING_COLUMNS = ("user_id", "book_id", "rating")
TO_READ_COLUMNS = ("user_id", "book_id")
RATED_HIGH, RATED, TO_READ = "rated_high", "rated", "to_read"
EVENT_TYPES = (RATED_HIGH, RATED, TO_READ)


def read_goodbooks(folder: str | Path, to_read: bool = True, strict: bool = False,
                   seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, Rejections]:
    """Reads a goodbooks-10k folder into the canonical events and items frames.

    Args:
      folder: the folder holding books.csv.gz, ratings.csv.gz, to_read.csv.gz.
      to_read: also read the to-read shelves (as "to_read" events).
      strict: raise on the first bad row (missing id, rating not 1-5, a book
        not in books.csv) instead of counting and dropping it. The layout's
        rules (low ratings, repeated pairs) drop rows in strict mode too.
      seed: seeds the order of each reader's events (see the module doc).

    Returns:
      (events, items, rejections) as `tfrec.datasets.online_retail.read_online_retail`
      returns them: events has user, item, time (0), event, session (the
      user) and line (the line in ratings.csv or to_read.csv, as `event`
      tells); items has item, text, market and line.

    Raises:
      InputError: a missing file or column, or (strict) a bad row.
    """
    paths = goodbooks_paths(folder=folder, to_read=to_read)
    rejections = Rejections()
    items = _books(_read_table(paths["books"], "items", rejections, strict), rejections, strict)
    known = pd.Index(items["item"])
    ratings = _pairs(_read_table(paths["ratings"], "events", rejections, strict),
                     RATING_COLUMNS, known, rejections, strict)
    shelves = (_pairs(_read_table(paths["to_read"], "events", rejections, strict),
                      TO_READ_COLUMNS, known, rejections, strict) if to_read
               else ratings.iloc[:0].drop(columns="rating"))
    # One int64 key per (reader, book) pair over both files.
    users, _ = pd.factorize(pd.concat([ratings["user"], shelves["user"]], ignore_index=True))
    books = known.get_indexer(pd.concat([ratings["item"], shelves["item"]], ignore_index=True))
    key = pd.Series(users.astype(np.int64) * len(known) + books)
    rating_key = key.iloc[:len(ratings)].reset_index(drop=True)
    shelf_key = key.iloc[len(ratings):].reset_index(drop=True)

    repeated = rating_key.duplicated().to_numpy()
    rejections.add("goodbooks: book rated twice by a reader (first rating kept)",
                   int(repeated.sum()))
    ratings, rating_key = ratings[~repeated], rating_key[~repeated]
    rating = ratings["rating"].to_numpy()
    low = rating <= 2
    rejections.add("goodbooks: rating 1-2 (a negative signal, not an interest)", int(low.sum()))
    ratings = ratings[~low].drop(columns="rating").assign(
        event=np.where(rating[~low] >= 4, RATED_HIGH, RATED))
    if to_read:
        repeated = shelf_key.duplicated().to_numpy()
        rejections.add("goodbooks: book on a to-read shelf twice (merged)", int(repeated.sum()))
        # A reader's rating (a low one too) says more than the shelf.
        rated = shelf_key.isin(rating_key).to_numpy() & ~repeated
        rejections.add("goodbooks: to-read book the reader rated (the rating kept)",
                       int(rated.sum()))
        shelves = shelves[~(repeated | rated)].assign(event=TO_READ)
    events = pd.concat([ratings, shelves], ignore_index=True)
    if len(events) == 0:
        raise InputError("no usable events: every rating and to-read row was dropped",
                         path=str(paths["ratings"]))
    # A shelf has no order: a seeded random order within each reader.
    order = np.lexsort((np.random.default_rng(seed).permutation(len(events)),
                        pd.factorize(events["user"])[0]))
    events = events.iloc[order].reset_index(drop=True)
    events = pd.DataFrame({"user": events["user"], "item": events["item"],
                           "time": np.zeros(len(events), dtype=np.int64),
                           "event": events["event"], "session": events["user"],
                           "line": events["line"].to_numpy(dtype=np.int64)})
    logger.info("goodbooks: %d events (%s), %d readers, %d books", len(events),
                ", ".join(f"{n} {t}" for t, n in events["event"].value_counts().items()),
                events["user"].nunique(), len(items))
    return events, items, rejections


def _require(table: _Table, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in table.frame.columns]
    if missing:
        raise InputError(f"no column '{missing[0]}' (columns are: "
                         f"{', '.join(map(str, table.frame.columns))}): not a goodbooks-10k "
                         f"{table.path.name}", path=str(table.path), column=missing[0])


def _books(table: _Table, rejections: Rejections, strict: bool) -> pd.DataFrame:
    """books.csv -> the items frame (item, text, market, line), one row per book_id."""
    _require(table, BOOK_COLUMNS)
    frame = table.frame
    book = _text(frame["book_id"])
    text = (_text(frame["title"]).fillna("") + " " + _text(frame["authors"]).fillna(""))
    market = _text(frame["language_code"])
    missing = book.isna().to_numpy()
    _reject(table, missing, "goodbooks: book without a book_id", "book_id",
            lambda i: "missing book_id", rejections, strict)
    repeated = book.duplicated().to_numpy() & ~missing
    _reject(table, repeated, "goodbooks: repeated book_id (first kept)", "book_id",
            lambda i: f"book_id {book.iloc[i]!r} repeated", rejections, strict)
    keep = ~(missing | repeated)
    return pd.DataFrame({
        "item": book[keep].to_numpy(dtype=object),
        "text": text[keep].str.strip().to_numpy(dtype=object),
        "market": market[keep].astype(object).where(market[keep].notna(), None).to_numpy(),
        "line": table.lines[keep],
    })


def _pairs(table: _Table, columns: tuple[str, ...], known: pd.Index, rejections: Rejections,
           strict: bool) -> pd.DataFrame:
    """ratings.csv or to_read.csv -> user, item (and rating), line; bad rows counted."""
    _require(table, columns)
    frame = table.frame
    name = table.path.name.split(".")[0]
    user = _text(frame["user_id"])
    item = _text(frame["book_id"])
    keep = np.ones(len(frame), dtype=bool)
    checks = [
        (f"goodbooks: {name}: missing user_id or book_id", "user_id",
         (user.isna() | item.isna()).to_numpy(), lambda i: "missing user_id or book_id"),
        (f"goodbooks: {name}: book not in books.csv", "book_id",
         known.get_indexer(item.fillna("").to_numpy(dtype=object)) < 0,
         lambda i: f"book_id {item.iloc[i]!r} is not in books.csv"),
    ]
    rating = None
    if "rating" in columns:
        rating = pd.to_numeric(frame["rating"], errors="coerce")
        checks.append((f"goodbooks: {name}: rating not 1-5", "rating",
                       ~rating.isin([1, 2, 3, 4, 5]).to_numpy(),
                       lambda i: f"rating {frame['rating'].iloc[i]!r} is not 1-5"))
    for rule, column, bad, describe in checks:
        bad = bad & keep
        _reject(table, bad, rule, column, describe, rejections, strict)
        keep &= ~bad
    out = pd.DataFrame({"user": user[keep], "item": item[keep]})
    if rating is not None:
        out["rating"] = rating[keep].to_numpy(dtype=np.int64)
    out["line"] = table.lines[keep]
    return out.reset_index(drop=True)
