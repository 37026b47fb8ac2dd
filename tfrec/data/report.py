"""The data report: what the pipeline makes of a run's data, in numbers.

`tfrec prepare` reads the same run config as `tfrec train` and reports on
the data that training will read, split and batch (`data_report`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tfrec.config import DEFAULT_CONVERSION_TYPES, PairConfig, RunConfig
from tfrec.data.pipeline import EpochStats
from tfrec.data.sessions import Sessions, resolve_retrieval_context, session_order, sessionize
from tfrec.data.vocab import build_vocabulary
from tfrec.run_folder import ReportFolder
from tfrec.utils import ensure_folder

if TYPE_CHECKING:  # the run layer sits on the data layer; only its type is named here
    from tfrec.run import TrainingData

logger = logging.getLogger(__name__)


def _moment(seconds: int) -> str:
    """A split's time as the report shows it: the date, and the time (UTC) unless midnight."""
    stamp = pd.Timestamp(int(seconds), unit="s")
    return (str(stamp.date()) if stamp == stamp.normalize()
            else stamp.strftime("%Y-%m-%d %H:%M:%S UTC"))


# Events dated outside these (1980-01-01, 2100-01-01 UTC) are most likely not real times: a
# missing time written as 0 (1970), or a few rows in another unit (the year 5138).
PLAUSIBLE_TIMES = (315_532_800, 4_102_444_800)


def _stamp(seconds: int) -> str:
    """An event's time to the minute (UTC); any year numpy can hold, unlike pandas."""
    return str(np.datetime64(int(seconds), "s").astype("datetime64[m]")).replace("T", " ")


def time_range(events: pd.DataFrame) -> dict:
    """The events' first and last time, and those dated outside `PLAUSIBLE_TIMES`."""
    time = events["time"].to_numpy()
    if not len(time):
        return {}
    low, high = PLAUSIBLE_TIMES
    outside = (time < low) | (time >= high)
    found = {"first": _stamp(time.min()), "last": _stamp(time.max()),
             "outside_1980_2099": int(outside.sum())}
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        found["outside_example"] = {"line": int(events["line"].iloc[i]),
                                    "time": _stamp(time[i])}
    return found


def time_range_warning(found: dict, events: int) -> str | None:
    """Events dated outside 1980-2099 beside others inside it: most likely not real times.
    (Every event outside it is a log of relative times, which trains as any other.)"""
    count = found.get("outside_1980_2099", 0)
    if not count or count == events:
        return None
    example = found["outside_example"]
    return (f"{count:,} of {events:,} events ({count / events:.1%}) are dated before 1980 or "
            f"after 2099 (the first: line {example['line']}, {example['time']} UTC): a "
            "missing time written as 0, or some rows in another unit "
            "(data.events_schema.time_unit)? They are trained on as dated, each in a "
            "session of its own time; fix or drop those rows")


def split_counts(events: pd.DataFrame, sessions: Sessions, cut: int, split_date: str) -> dict:
    """Events, sessions and items on each side of a time split at `cut` (epoch seconds).

    Items first seen on or after the split date are the ones a model trained
    on the earlier events has never seen: cold-start items at that split.
    """
    time = events["time"].to_numpy()
    first_seen = events.groupby("item", sort=False)["time"].min()
    starts = sessions.start_time
    return {
        "split_date": _moment(cut),
        "events_before": int((time < cut).sum()),
        "events_after": int((time >= cut).sum()),
        "sessions_before": int((starts < cut).sum()),
        "sessions_after": int((starts >= cut).sum()),
        "items_before": int((first_seen < cut).sum()),
        "items_new_after": int((first_seen >= cut).sum()),
    }


def data_report(data: TrainingData, config: RunConfig, epoch: int = 0,
                stage1: tuple | None = None) -> dict:
    """Counts for the report of a run's data (`tfrec.run.prepare_training_data`).

    The data as read (events, users, sessions, items) is counted over every
    event; what an epoch trains on (pairs, batches, retrieval examples) over
    the training slice of the run's split, by running one epoch of the pair
    pipeline.

    Args:
      data: the run's training data.
      config: the run config it was prepared from.
      epoch: which epoch of the pipeline to count.
      stage1: with a ranking stage, (the two-tower's training data, the ranker's slice
        as a dict of `events`, `stage1_events`, `share`, `by_user`): the training
        slice's counts are then the two-tower's (`tfrec.ranking.stage.stage1_slices`).
    """
    rej = data.rejections
    fit, ranker_slice = (data, None) if stage1 is None else stage1
    vocab = build_vocabulary(data.events, data.items)
    sessions = sessionize(data.events, vocab, config.data.sessions,
                          config.data.pairs.event_weights,
                          config.data.pairs.default_event_weight)
    stats = dict(sessions.stats)
    epoch_stats = EpochStats()
    started = time.perf_counter()
    logger.info("counting the pairs of one epoch of the training slice")
    for _ in fit.pairs.epoch(epoch, epoch_stats):
        pass
    seconds = time.perf_counter() - started
    cfg = fit.pairs.config
    streams = list(data.streams)
    retrieval_examples = fit.next_items.num_examples if fit.next_items is not None else 0
    retrieval_batches = -(-retrieval_examples // config.train.retrieval_batch_size)
    # What one epoch of `fit` runs: the tasks' first stream sets its length
    # (`tfrec.training.make_dataset`).
    steps = retrieval_batches if streams[0] == "next_items" else epoch_stats.batches
    if config.train.steps_per_epoch:
        steps = min(steps, config.train.steps_per_epoch)
    report = {
        "source": data.source,
        "rows_read": {path: int(n) for path, n in rej.rows_read.items()},
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
                          "order": session_order(sessions),
                          "retrieval_context": resolve_retrieval_context("auto", sessions)},
        "merged_repeats": stats["merged_repeats"],
        "conversions": stats["conversions"],
        "converted_sessions": stats["converted_sessions"],
        "items": vocab.size - 1,
        "warm_items": vocab.num_warm,
        "cold_items": vocab.num_cold,
        "items_with_text": int((vocab.text[1:] != "").sum()),
        "markets": len(vocab.market_names),
        # The training slice, as one epoch of training sees it.
        "objective": config.model.objective,
        "streams": streams,
        "training_events": (data.train_events if ranker_slice is None
                            else ranker_slice["stage1_events"]),
        "training_sessions": fit.sessions.num_sessions,
        "ranker_slice": ranker_slice,
        "pairs_per_epoch": epoch_stats.pairs,
        "global_context_pairs": epoch_stats.global_pairs,
        "events_kept_by_subsampling": epoch_stats.kept_events,
        "batches_per_epoch": epoch_stats.batches,
        "retrieval_examples_per_epoch": retrieval_examples,
        "retrieval_batches_per_epoch": retrieval_batches,
        "retrieval_batch_size": config.train.retrieval_batch_size,
        "retrieval_context": data.retrieval_context,
        "steps_per_epoch": steps,
        "pairs_per_second": round(epoch_stats.pairs / max(seconds, 1e-9)),
        "pair_config": {"mode": cfg.mode, "window": cfg.window, "subsample": cfg.subsample,
                        "num_negatives": cfg.num_negatives,
                        "market_negatives": cfg.market_negatives,
                        "negative_power": cfg.negative_power, "batch_size": cfg.batch_size,
                        "global_context": cfg.global_context, "seed": cfg.seed},
    }
    split = data.split
    if split.cut is not None:
        report["split"] = split_counts(data.events, sessions, split.cut,
                                       config.train.split_date)
    if split.per_user:
        report["held_out_users"] = len(split.kept_out_users)
    if len(split.hidden_items):
        report["hidden_items"] = len(split.hidden_items)
    warm_no_text = (vocab.counts[1:] > 0) & (vocab.text[1:] == "")
    report["warm_items_without_text"] = int(warm_no_text.sum())
    warnings = []
    if ranker_slice is not None and not ranker_slice.get("sessions", 1):
        count = ranker_slice["events"]
        warnings.append(f"the ranker's slice ({count:,} event{'' if count == 1 else 's'}) has "
                        "no session with two distinct items: tfrec train will refuse it; "
                        "raise ranking.ranker_share or turn the ranking stage off "
                        "(ranking.enabled: false)")
    if split.cut is not None or split.per_user:
        report["held_out"] = {"events": int(data.test_events),
                              "share": round(data.test_events / max(len(data.events), 1), 4),
                              "cases": len(data.cases),
                              "cold_cases": int(np.sum(data.cases.cold))}
        warnings += held_out_warnings(report["held_out"], config)
    warnings += text_warnings(vocab, data.items, config)
    report["event_types"] = event_type_counts(data.events)
    report["time_range"] = time_range(data.events)
    outside = time_range_warning(report["time_range"], len(data.events))
    if outside:
        warnings.append(outside)
    warnings += data_setting_warnings(report["event_types"], report["markets"], config)
    report["warnings"] = warnings
    return report


# The held-out side is "tiny" below either bound: too few events to stand for
# the data's later period, or too few cases for a stable hit rate (with fewer
# than 100 cases one case moves HR@K by more than a point).
MIN_HELD_OUT_SHARE = 0.01
MIN_HELD_OUT_CASES = 100


def held_out_warnings(held_out: dict, config: RunConfig) -> list[str]:
    """A warning when the held-out side is tiny: fewer than `MIN_HELD_OUT_SHARE` of the
    events, or fewer than `MIN_HELD_OUT_CASES` cases; it names the setting to change."""
    share, cases = held_out["share"], held_out["cases"]
    if share >= MIN_HELD_OUT_SHARE and cases >= MIN_HELD_OUT_CASES:
        return []
    t = config.train
    key = ("train.holdout_users" if t.split_by == "user"
           else "train.split_date" if t.split_date else "train.split_fraction")
    if not cases:
        return [f"the held-out side has no case ({held_out['events']:,} events, "
                f"{share:.2%} of the events, but no session or user with two distinct items "
                f"among them): nothing will be evaluated; hold out more with {key}"]
    return [f"the held-out side is tiny: {held_out['events']:,} events ({share:.2%} of the "
            f"events), {cases:,} case{'' if cases == 1 else 's'} (fewer than "
            f"{MIN_HELD_OUT_SHARE:.0%} of the events or {MIN_HELD_OUT_CASES} cases): HR@K and "
            f"NDCG@K on it are noise; hold out more with {key}"]


def event_type_counts(events) -> dict:
    """{event type: events} of the events read, most frequent first (none: no type);
    events without a type beside typed ones are counted under "(no type)" (they weigh
    `data.pairs.default_event_weight`)."""
    counts = {str(k): int(v) for k, v in events["event"].dropna().value_counts().items()}
    untyped = int(events["event"].isna().sum())
    if counts and untyped:
        counts["(no type)"] = untyped
    return counts


def data_setting_warnings(types: dict, markets: int, config: RunConfig) -> list[str]:
    """Settings the data cannot honour, each named: event weights or conversion types given
    for event types the events do not hold, market negatives without markets."""
    pairs, defaults = config.data.pairs, PairConfig()
    warnings = []
    types = {key: count for key, count in types.items() if key != "(no type)"}
    given = [key for key, value in pairs.event_weights.items()
             if value != defaults.event_weights.get(key, None)
             and key not in {t.lower() for t in config.data.sessions.conversion_types}]
    absent = [key for key in given if key not in types]
    if absent:
        found = (f"the types found: {', '.join(types)}" if types else
                 "the events have no event type: data.events_schema.event_col")
        warnings.append(f"data.pairs.event_weights names event types the events do not hold: "
                        f"{', '.join(absent)} ({found}); their weights apply to nothing")
    conversions = [t.lower() for t in config.data.sessions.conversion_types]
    if types and set(conversions) != {t.lower() for t in DEFAULT_CONVERSION_TYPES}:
        absent = [key for key in conversions if key not in types]
        if absent:
            warnings.append(f"data.sessions.conversion_types names event types the events do "
                            f"not hold: {', '.join(absent)} (the types found: "
                            f"{', '.join(types)}); no session converts by them")
    if pairs.market_negatives and not markets:
        warnings.append(f"data.pairs.market_negatives is {pairs.market_negatives} but the items "
                        f"have no market (data.items_schema.market_col): those negatives are "
                        f"drawn from the whole catalogue, as the others")
    return warnings


def text_warnings(vocab, items, config: RunConfig) -> list[str]:
    """With the text tower on: items with events but no text (`warm_without_text_warning`),
    and no event's item id in the items table at all (ids written differently in the two
    files: the events' items then have no text and the table's no events); `vocab`'s
    counts say which items have events, `items` is the items table (None: none). `tfrec
    prepare` reports them over every event, `tfrec train` logs them over its training
    slice."""
    count = int(((vocab.counts[1:] > 0) & (vocab.text[1:] == "")).sum())
    if not (count and config.model.use_text):
        return []
    warm = vocab.num_warm
    warnings = [warm_without_text_warning(count, warm)]
    listed = 0 if items is None else len(items)
    if listed and count == warm and not np.isin(
            vocab.ids[1:warm + 1], items["item"].to_numpy(dtype=object)).any():
        examples = ", ".join(repr(str(i)) for i in vocab.ids[1:3])
        listed_examples = ", ".join(repr(str(i)) for i in items["item"].iloc[:2])
        warnings.append(f"no item id of the events is in the items table ({listed:,} rows; "
                        f"events: {examples}, ...; items table: {listed_examples}, ...): ids "
                        "are matched as exact text ('00012' is not '12'); write them alike "
                        "in both files")
    return warnings


def warm_without_text_warning(count: int, warm: int) -> str:
    """What items with events but no text mean for the text tower and cold start."""
    return (f"{count:,} of {warm:,} items with events ({count / max(warm, 1):.1%}) have no "
            f"text (not in the items table, or an empty text): their text part is zeros, so "
            f"they are ranked by their id alone, teach the text tower nothing, and a cold-start "
            f"(text only) model cannot rank them; give them text in data.items")


def format_report(report: dict) -> str:
    """The report as aligned text for a terminal."""
    n = "{:,}".format
    cfg = report["pair_config"]
    lines = [f"tfrec data report: {report['source']}", ""]

    def row(label, value, note=""):
        lines.append(f"  {label:<28}{value:>12}" + (f"   {note}" if note else ""))

    for path, count in report["rows_read"].items():
        row("rows read", n(count), path)
    row("rows dropped", n(report["rows_dropped_total"]))
    for rule, count in report["rows_dropped"].items():
        if count:
            lines.append(f"    {rule:<46}{n(count):>10}")
            if report["drop_examples"].get(rule):  # under its own rule
                lines.append(f"      first: {report['drop_examples'][rule]}")
    span = report.get("time_range") or {}
    row("events", n(report["events"]),
        f"{span['first']} to {span['last']} UTC" if span else "")
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
    types = report.get("event_types") or {}
    shown = ", ".join(f"{name} {n(count)}" for name, count in list(types.items())[:6])
    row("event types", n(len(types)), (shown + (", ..." if len(types) > 6 else ""))
        if types else "none (no event type column): every event weighs alike")
    row("items", n(report["items"]),
        f"warm {n(report['warm_items'])}, cold {n(report['cold_items'])} (text, no events); "
        f"{n(report['items_with_text'])} with text, {n(report['markets'])} markets")
    objective = report["objective"]
    lines.append(f"  training slice ({objective} objective):")
    ranker = report.get("ranker_slice")
    if report["training_events"] == report["events"]:
        note = "every event"
    else:
        note = ("before the split" if "split" in report else "the training users'")
        if report.get("hidden_items"):
            note += ", less the hidden items'"
        if ranker:
            note += ", less the ranker's slice"
    row("  events", n(report["training_events"]), note)
    if ranker:
        row("  ranker's slice", n(ranker["events"]),
            f"events of {ranker['share']:.0%} of the training "
            f"{'users' if ranker['by_user'] else 'period (its end)'}: the ranking stage's "
            "cases, not in the two-tower's epochs")
    row("  sessions", n(report["training_sessions"]), "session pieces")
    pairs_note = "" if "pairs" in report["streams"] else " (not trained on)"
    shape = (f"window {cfg['window']} each side" if cfg["mode"] == "window"
             else "set mode (whole session)")
    row("  pairs per epoch", n(report["pairs_per_epoch"]),
        f"{shape}; {n(report['global_context_pairs'])} global-context{pairs_note}")
    if cfg["subsample"]:
        share = report["events_kept_by_subsampling"] / max(report["training_events"], 1)
        row("    subsampling", f"{share:.1%}", f"of events kept (t = {cfg['subsample']:g})")
    row("  negatives per pair", n(cfg["num_negatives"] + cfg["market_negatives"]),
        f"{cfg['num_negatives']} unigram^{cfg['negative_power']:g}, "
        f"{cfg['market_negatives']} from the centre's market")
    row("  batches per epoch", n(report["batches_per_epoch"]),
        f"of pairs, batch size {n(cfg['batch_size'])}{pairs_note}")
    if "next_items" in report["streams"]:
        row("  retrieval examples", n(report["retrieval_examples_per_epoch"]),
            f"per epoch, context {report['retrieval_context']}")
        row("  retrieval batches", n(report["retrieval_batches_per_epoch"]),
            f"per epoch, batch size {n(report['retrieval_batch_size'])}")
    row("  steps per epoch", n(report["steps_per_epoch"]), "what one epoch of training runs")
    row("pipeline speed", n(report["pairs_per_second"]), "pairs/s with negatives")
    if "held_out_users" in report:
        row("users held out", n(report["held_out_users"]), "the user split's cases")
    if "hidden_items" in report:
        row("items hidden", n(report["hidden_items"]), "from training (train.cold_items)")
    if "split" in report:
        sp = report["split"]
        lines.append(f"  time split at {sp['split_date']}:")
        row("  events before / after", f"{n(sp['events_before'])} / {n(sp['events_after'])}")
        row("  sessions before / after",
            f"{n(sp['sessions_before'])} / {n(sp['sessions_after'])}", "session pieces, by start")
        row("  items seen before", n(sp["items_before"]))
        row("  items new after", n(sp["items_new_after"]),
            "cold-start items for a model trained before the split")
    if "held_out" in report:
        ho = report["held_out"]
        row("held-out events", n(ho["events"]), f"{ho['share']:.1%} of the events")
        row("held-out cases", n(ho["cases"]), f"{n(ho['cold_cases'])} with a cold target")
    if report.get("warm_items_without_text"):
        row("items with events, no text", n(report["warm_items_without_text"]))
    for warning in report.get("warnings", []):
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def write_outputs(data: TrainingData, report: dict, out_dir: str | Path) -> dict[str, str]:
    """Writes the vocabulary (the run's, as `tfrec train` writes it), the report and (if
    any) the rejected rows into out_dir (a `ReportFolder`)."""
    out = ReportFolder(ensure_folder(out_dir))
    written = {"vocabulary": str(out.vocab_file), "report": str(out.json_file)}
    data.vocab.save(out.vocab_file)
    out.json_file.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    if data.rejections.rows:
        data.rejections.write(out.rejected_rows_file)
        written["rejected rows"] = str(out.rejected_rows_file)
    else:  # an earlier run's rejected rows are not this data's
        out.rejected_rows_file.unlink(missing_ok=True)
    return written


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")
