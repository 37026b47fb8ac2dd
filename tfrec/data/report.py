"""The data report: what the pipeline made of an events log, in numbers."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tfrec.config import EventsSchema, ItemsSchema, PairConfig, SessionConfig
from tfrec.data.events import Rejections
from tfrec.data.pipeline import EpochStats, PairPipeline
from tfrec.data.sessions import Sessions, resolve_retrieval_context, session_order, sessionize
from tfrec.data.split import parse_split_date
from tfrec.data.vocab import ItemVocabulary, build_vocabulary
from tfrec.datasets.layouts import read_tables
from tfrec.utils import ensure_folder

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedData:
    """Everything the data layer builds from the raw tables."""

    events: pd.DataFrame
    items: pd.DataFrame | None
    rejections: Rejections
    vocab: ItemVocabulary
    sessions: Sessions
    pipeline: PairPipeline
    source: str


def prepare(events_path: str | Path | None = None, items_path: str | Path | None = None,
            layout: str = "events", events_schema: EventsSchema = EventsSchema(),
            items_schema: ItemsSchema = ItemsSchema(),
            session_config: SessionConfig = SessionConfig(),
            pair_config: PairConfig = PairConfig(), strict: bool = False,
            workers: int | None = None, data_dir: str | Path | None = None,
            goodbooks_to_read: bool = True) -> PreparedData:
    """Reads, validates and sessionises a log and builds its pair pipeline.

    Args:
      events_path: events file (the goodbooks-10k folder with layout
        "goodbooks"); None with layout "online_retail" or "goodbooks" reads
        the data folder's copy (see `tfrec.datasets`).
      items_path: optional items table (id, text, market).
      layout: "events" (generic table, columns from `events_schema`),
        "online_retail" (UCI Online Retail layout, items derived from it) or
        "goodbooks" (goodbooks-10k: books, ratings, to-read shelves).
      strict: fail on the first bad row instead of counting and dropping it.
      data_dir: the data folder (default: $TFREC_DATA, then ../shared/data).
      goodbooks_to_read: with layout "goodbooks", read the to-read shelves too.
    """
    started = time.perf_counter()
    events, items, rejections, source = read_tables(
        layout, events_path, items_path, events_schema, items_schema, strict, data_dir,
        goodbooks_to_read)
    logger.info("read %d events in %.1fs; building vocabulary and sessions", len(events),
                time.perf_counter() - started)
    vocab = build_vocabulary(events, items)
    sessions = sessionize(events, vocab, session_config, pair_config.event_weights,
                          pair_config.default_event_weight)
    pipeline = PairPipeline(sessions, vocab, pair_config, workers=workers)
    logger.info("%d sessions, %d items ready in %.1fs", sessions.num_sessions, vocab.size - 1,
                time.perf_counter() - started)
    return PreparedData(events, items, rejections, vocab, sessions, pipeline, source)


def split_counts(data: PreparedData, split_date: str) -> dict:
    """Events, sessions and items on each side of a time split.

    Items first seen on or after the split date are the ones a model trained
    on the earlier events has never seen: cold-start items at that split.
    """
    cut = parse_split_date(split_date, "split-date")
    time = data.events["time"].to_numpy()
    first_seen = data.events.groupby("item", sort=False)["time"].min()
    starts = data.sessions.start_time
    return {
        "split_date": str(pd.Timestamp(split_date).date()),
        "events_before": int((time < cut).sum()),
        "events_after": int((time >= cut).sum()),
        "sessions_before": int((starts < cut).sum()),
        "sessions_after": int((starts >= cut).sum()),
        "items_before": int((first_seen < cut).sum()),
        "items_new_after": int((first_seen >= cut).sum()),
    }


def data_report(data: PreparedData, epoch: int = 0, split_date: str | None = None) -> dict:
    """Counts for the report; runs one epoch of the pair pipeline to count pairs.

    Args:
      data: the prepared data.
      epoch: which epoch of the pipeline to count.
      split_date: optional YYYY-MM-DD; adds counts on each side of it, with
        the items first seen after it (cold-start items at that split).
    """
    rej = data.rejections
    stats = dict(data.sessions.stats)
    epoch_stats = EpochStats()
    started = time.perf_counter()
    logger.info("counting the pairs of one epoch")
    for _ in data.pipeline.epoch(epoch, epoch_stats):
        pass
    seconds = time.perf_counter() - started
    cfg = data.pipeline.config
    vocab = data.vocab
    events_with_text = int((vocab.text[1:] != "").sum())
    report = {
        "source": data.source,
        "rows_read": int(sum(rej.rows_read.values())),
        "rows_dropped": {rule: int(n) for rule, n in rej.counts.items()},
        "rows_dropped_total": int(rej.total),
        "drop_examples": dict(rej.examples),
        "events": int(len(data.events)),
        "users": stats["users"],
        "sessions": stats["sessions"],
        "session_pieces": stats["pieces"],
        "capped_sessions": stats["capped_sessions"],
        "session_length": {"median": stats["length_median"], "mean": round(stats["length_mean"], 2),
                           "max": stats["length_max"]},
        "single_event_sessions": stats["single_event_sessions"],
        # What `model.retrieval_context: auto` (the default) derives from the data.
        "session_order": {"multi_event_sessions": stats["multi_event_sessions"],
                          "one_timestamp": stats["unordered_sessions"],
                          "order": session_order(data.sessions),
                          "retrieval_context": resolve_retrieval_context("auto",
                                                                         data.sessions)},
        "merged_repeats": stats["merged_repeats"],
        "conversions": stats["conversions"],
        "converted_sessions": stats["converted_sessions"],
        "items": vocab.size - 1,
        "warm_items": vocab.num_warm,
        "cold_items": vocab.num_cold,
        "items_with_text": events_with_text,
        "markets": len(vocab.market_names),
        "pairs_per_epoch": epoch_stats.pairs,
        "global_context_pairs": epoch_stats.global_pairs,
        "events_kept_by_subsampling": epoch_stats.kept_events,
        "batches_per_epoch": epoch_stats.batches,
        "pairs_per_second": round(epoch_stats.pairs / max(seconds, 1e-9)),
        "pair_config": {"mode": cfg.mode, "window": cfg.window, "subsample": cfg.subsample,
                        "num_negatives": cfg.num_negatives,
                        "market_negatives": cfg.market_negatives,
                        "negative_power": cfg.negative_power, "batch_size": cfg.batch_size,
                        "global_context": cfg.global_context, "seed": cfg.seed},
    }
    if split_date is not None:
        report["split"] = split_counts(data, split_date)
    return report


def format_report(report: dict) -> str:
    """The report as aligned text for a terminal."""
    n = "{:,}".format
    cfg = report["pair_config"]
    lines = [f"tfrec data report: {report['source']}", ""]

    def row(label, value, note=""):
        lines.append(f"  {label:<28}{value:>12}" + (f"   {note}" if note else ""))

    row("rows read", n(report["rows_read"]))
    row("rows dropped", n(report["rows_dropped_total"]))
    for rule, count in report["rows_dropped"].items():
        if count:
            lines.append(f"    {rule:<46}{n(count):>10}")
    for rule, example in report["drop_examples"].items():
        lines.append(f"      first: {example}")
    row("events", n(report["events"]))
    row("users", n(report["users"]))
    sl = report["session_length"]
    row("sessions", n(report["sessions"]),
        f"length median {sl['median']:g}, mean {sl['mean']:g}, max {n(sl['max'])}")
    if report["capped_sessions"]:
        row("  cut into pieces", n(report["capped_sessions"]),
            f"-> {n(report['session_pieces'])} pieces in all")
    row("  single-event sessions", n(report["single_event_sessions"]))
    row("  repeats merged", n(report["merged_repeats"]), "same item back to back")
    order = report.get("session_order")
    if order:
        row("  one timestamp", n(order["one_timestamp"]),
            f"of {n(order['multi_event_sessions'])} sessions of 2+ events: {order['order']}, "
            f"so retrieval_context auto -> {order['retrieval_context']}")
    row("converted sessions", n(report["converted_sessions"]),
        f"{n(report['conversions'])} conversion events" if report["conversions"]
        else "no conversion events: no global context")
    row("items", n(report["items"]),
        f"warm {n(report['warm_items'])}, cold {n(report['cold_items'])} (text, no events); "
        f"{n(report['items_with_text'])} with text, {n(report['markets'])} markets")
    shape = (f"window {cfg['window']} each side" if cfg["mode"] == "window"
             else "set mode (whole session)")
    row("pairs per epoch", n(report["pairs_per_epoch"]),
        f"{shape}; {n(report['global_context_pairs'])} global-context")
    if cfg["subsample"]:
        share = report["events_kept_by_subsampling"] / max(report["events"], 1)
        row("  subsampling", f"{share:.1%}", f"of events kept (t = {cfg['subsample']:g})")
    row("negatives per pair", n(cfg["num_negatives"] + cfg["market_negatives"]),
        f"{cfg['num_negatives']} unigram^{cfg['negative_power']:g}, "
        f"{cfg['market_negatives']} from the centre's market")
    row("batches per epoch", n(report["batches_per_epoch"]), f"batch size {n(cfg['batch_size'])}")
    row("pipeline speed", n(report["pairs_per_second"]), "pairs/s with negatives")
    if "split" in report:
        sp = report["split"]
        lines.append(f"  time split at {sp['split_date']}:")
        row("  events before / after", f"{n(sp['events_before'])} / {n(sp['events_after'])}")
        row("  sessions before / after",
            f"{n(sp['sessions_before'])} / {n(sp['sessions_after'])}", "session pieces, by start")
        row("  items seen before", n(sp["items_before"]))
        row("  items new after", n(sp["items_new_after"]),
            "cold-start items for a model trained before the split")
    return "\n".join(lines)


def write_outputs(data: PreparedData, report: dict, out_dir: str | Path) -> dict[str, str]:
    """Writes vocab.tsv, report.json and (if any) rejected_rows.csv into out_dir."""
    import json

    out = ensure_folder(out_dir)
    written = {"vocabulary": str(out / "vocab.tsv"), "report": str(out / "report.json")}
    data.vocab.save(out / "vocab.tsv")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    if data.rejections.rows:
        data.rejections.write(out / "rejected_rows.csv")
        written["rejected rows"] = str(out / "rejected_rows.csv")
    return written


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")
