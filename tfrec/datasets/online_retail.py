"""The UCI Online Retail layout: one line per invoice line of a UK online shop.

Invoice = session, CustomerID = user, StockCode = item, Description = item
text, Country = market. See `read_online_retail` for the cleaning rules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tfrec.data.events import Rejections, _line_breaks, _read_table, _reject, _text, parse_times
from tfrec.datasets import online_retail_path
from tfrec.errors import InputError

ONLINE_RETAIL_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate",
                         "CustomerID", "Country")
PRODUCT_CODE = r"\d{5}[A-Za-z]{0,2}"


def read_online_retail(path: str | Path | None = None, strict: bool = False
                       ) -> tuple[pd.DataFrame, pd.DataFrame, Rejections]:
    """Reads the UCI Online Retail layout (the default data; None: the data folder's copy).

    Invoice = session, CustomerID = user, StockCode = item, Description = item
    text (its most frequent description), Country = market (the item's most
    frequent country). Every line is a purchase, so there is no event type
    and no converted item. Rules, applied in this order, each counted:
    missing ids (invoice, stock code, customer), cancellations (invoice
    ``C...``), non-positive quantity, missing description, non-product stock
    codes (anything but 5 digits plus up to 2 letters: POST, M, DOT, ...),
    unparseable InvoiceDate. Dropping by rule is the layout's cleaning, not a
    data error, so it happens in strict mode too.

    Returns:
      (events, items, rejections) in the canonical frames of `read_events`
      and `read_items`.
    """
    if path is None:
        path = online_retail_path()
    rejections = Rejections()
    table = _read_table(path, "events", rejections, strict)
    for column in ONLINE_RETAIL_COLUMNS:
        table.require(column, "a file in the UCI Online Retail layout")
    frame = table.frame
    invoice = _text(frame["InvoiceNo"])
    code = _text(frame["StockCode"])
    customer = _text(frame["CustomerID"]).str.replace(r"\.0$", "", regex=True)
    description = _text(frame["Description"])
    quantity = pd.to_numeric(frame["Quantity"], errors="coerce")
    country = _text(frame["Country"])
    time = parse_times(frame["InvoiceDate"])

    keep = np.ones(len(frame), dtype=bool)
    rules = [
        ("online_retail: missing invoice or stock code",
         (invoice.isna() | code.isna()).to_numpy()),
        ("online_retail: cancellation (invoice C...)",
         invoice.str.startswith("C").fillna(False).to_numpy(dtype=bool)),
        ("online_retail: quantity <= 0", ~(quantity > 0).fillna(False).to_numpy(dtype=bool)),
        ("online_retail: missing customer id", customer.isna().to_numpy()),
        ("events: user id with a line break", _line_breaks(customer)),
        ("online_retail: missing description", description.isna().to_numpy()),
        ("online_retail: non-product stock code",
         ~code.str.fullmatch(PRODUCT_CODE).fillna(False).to_numpy(dtype=bool)),
    ]
    for rule, bad in rules:
        bad = bad & keep
        rejections.add(rule, int(bad.sum()), None)
        keep &= ~bad
    _reject(table, (time == np.iinfo(np.int64).min) & keep, "events: unparseable timestamp",
            "InvoiceDate",
            lambda i: f"cannot parse {frame['InvoiceDate'].iloc[i]!r} as a timestamp",
            rejections, strict)
    keep &= time != np.iinfo(np.int64).min
    if not keep.any():
        raise InputError("no usable rows after cleaning", path=str(table.path))
    code_k = code[keep].to_numpy(dtype=object)
    events = pd.DataFrame({
        "user": customer[keep].to_numpy(dtype=object),
        "item": code_k,
        "time": time[keep],
        "event": pd.Series(pd.NA, index=range(int(keep.sum())), dtype="string").to_numpy(
            dtype=object),
        "session": invoice[keep].to_numpy(dtype=object),
        "line": table.lines[keep],
    })
    items = pd.DataFrame({
        "item": pd.unique(code_k),
    })
    items["text"] = _most_frequent(code_k, description[keep].to_numpy(dtype=object))
    items["market"] = _most_frequent(code_k, country[keep].fillna("").to_numpy(dtype=object))
    first_line = pd.Series(table.lines[keep]).groupby(code_k, sort=False).min()
    items["line"] = first_line.reindex(items["item"]).to_numpy()
    return events, items, rejections


def _most_frequent(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each distinct key (in first-appearance order), its most frequent value.

    Ties go to the value seen first.
    """
    frame = pd.DataFrame({"key": keys, "value": values, "pos": np.arange(len(keys))})
    stats = frame.groupby(["key", "value"], sort=False).agg(
        n=("pos", "size"), first=("pos", "min")).reset_index()
    stats = stats.sort_values(["key", "n", "first"], ascending=[True, False, True])
    best = stats.drop_duplicates("key").set_index("key")["value"]
    return best.reindex(pd.unique(keys)).to_numpy(dtype=object)
