"""Reading the tables of a run's data in its layout: a generic events table (plus an
optional items table), UCI Online Retail or goodbooks-10k."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from tfrec.config import EventsSchema, ItemsSchema
from tfrec.data.events import Rejections, read_events, read_items
from tfrec.datasets import goodbooks_folder, online_retail_path
from tfrec.datasets.goodbooks import read_goodbooks
from tfrec.datasets.online_retail import read_online_retail
from tfrec.errors import InputError

logger = logging.getLogger(__name__)


def read_tables(layout: str = "events", events_path: str | Path | None = None,
                items_path: str | Path | None = None,
                events_schema: EventsSchema = EventsSchema(),
                items_schema: ItemsSchema = ItemsSchema(), strict: bool = False,
                data_dir: str | Path | None = None, goodbooks_to_read: bool = True
                ) -> tuple[pd.DataFrame, pd.DataFrame | None, Rejections, str]:
    """Reads a log in any layout.

    Args:
      layout: "events" (an events table, columns from `events_schema`, plus
        an optional items table), "online_retail" (the UCI Online Retail
        layout, items derived from it) or "goodbooks" (a goodbooks-10k
        folder: books, ratings, to-read shelves).
      events_path: the events file; for "online_retail" the Online Retail
        file and for "goodbooks" the goodbooks-10k folder, None: the data
        folder's copy (see `tfrec.datasets`).
      data_dir: the data folder (default: $TFREC_DATA, then ../shared/data).
      goodbooks_to_read: with "goodbooks", read the to-read shelves too.

    Returns:
      (events, items or None, rejections, a description of the source).
    """
    if layout in ("online_retail", "goodbooks"):
        if items_path is not None:
            raise InputError(f"an items table cannot be combined with the {layout} layout, "
                             "which carries its own item text", key="data.items")
    if layout == "online_retail":
        if events_path is None:
            events_path = online_retail_path(data_dir)
        logger.info("reading %s (UCI Online Retail layout)", events_path)
        events, items, rejections = read_online_retail(events_path, strict=strict)
        return events, items, rejections, f"{events_path} (UCI Online Retail layout)"
    if layout == "goodbooks":
        folder = events_path or goodbooks_folder(data_dir, to_read=goodbooks_to_read)
        logger.info("reading %s (goodbooks-10k layout)", folder)
        events, items, rejections = read_goodbooks(folder, to_read=goodbooks_to_read,
                                                   strict=strict)
        shelves = "ratings + to-read shelves" if goodbooks_to_read else "ratings only"
        return events, items, rejections, f"{folder} (goodbooks-10k layout, {shelves})"
    if layout != "events":
        raise InputError(f"unknown layout {layout!r} (use 'events', 'online_retail' or "
                         "'goodbooks')", key="data.layout")
    if events_path is None:
        raise InputError("no events file given", key="data.events")
    logger.info("reading %s", events_path)
    events, rejections = read_events(events_path, events_schema, strict=strict)
    items = None
    if items_path is not None:
        logger.info("reading %s", items_path)
        items, _ = read_items(items_path, items_schema, strict=strict, rejections=rejections)
    return events, items, rejections, str(events_path) + (f" + {items_path}" if items_path
                                                          else "")
