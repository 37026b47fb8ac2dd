"""The data report's warnings (`tfrec prepare`)."""

import json

import numpy as np
import pandas as pd

from tfrec.cli import main


def write_run(tmp_path, events, items=None, **train):
    """A run config over the events frame (and items frame), retrieval off the text."""
    events.to_csv(tmp_path / "events.csv", index=False)
    config = {"data": {"layout": "events", "events": str(tmp_path / "events.csv"),
                       "pairs": {"window": 1, "subsample": 0.0}},
              "model": {"use_text": items is not None}, "train": train}
    if items is not None:
        items.to_csv(tmp_path / "items.csv", index=False)
        config["data"]["items"] = str(tmp_path / "items.csv")
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    return ["--config", str(path)]


def baskets(num_users, start="2024-01-01", hours=1):
    """Each user one two-item visit, the visits `hours` apart."""
    rows = []
    for u in range(num_users):
        time = pd.Timestamp(start) + pd.Timedelta(hours=hours * u)
        rows += [(f"u{u}", f"i{u % 7}", time), (f"u{u}", f"i{(u + 1) % 7}", time)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def report_of(capsys, args, json_out=True):
    assert main(["-q", "prepare", *args, *(["--json"] if json_out else [])]) == 0
    out = capsys.readouterr().out
    return json.loads(out) if json_out else out


def test_a_tiny_held_out_side_is_warned_about(tmp_path, capsys):
    # 300 visits, the last 3 after the split date: 1% of the events, 3 cases.
    events = baskets(300)
    cut = pd.Timestamp("2024-01-01") + pd.Timedelta(hours=297)
    args = write_run(tmp_path, events, split_date=str(cut))
    report = report_of(capsys, args)
    assert report["held_out"]["events"] == 6 and report["held_out"]["cases"] == 3
    assert any("held-out side is tiny" in w and "train.split_date" in w
               for w in report["warnings"])
    text = report_of(capsys, args, json_out=False)
    assert "warning: the held-out side is tiny" in text and "held-out cases" in text
    # No case at all is said so, not called noise.
    from tfrec.config import RunConfig
    from tfrec.data.report import held_out_warnings

    [warning] = held_out_warnings({"events": 4, "share": 0.01, "cases": 0}, RunConfig())
    assert warning.startswith("the held-out side has no case (4 events") and "noise" not in warning


def test_a_held_out_tenth_of_the_events_passes_without_a_warning(tmp_path, capsys):
    # Visits crowd into the first days: a tenth of the time range would hold
    # out under 1% of the events; a tenth of the events is 120 visits.
    events = baskets(1200)
    events["timestamp"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(
        np.repeat(np.arange(1200) ** 3 / 1200 ** 2, 2), unit="h")
    report = report_of(capsys, write_run(tmp_path, events, split_fraction=0.1))
    assert report["held_out"]["cases"] == 120 and report["held_out"]["share"] == 0.1
    assert not [w for w in report["warnings"] if "held-out" in w]


def test_items_with_events_but_no_text_are_counted_and_warned_about(tmp_path, capsys):
    events = baskets(20)
    items = pd.DataFrame({"item_id": ["i0", "i1", "i2", "i3", "i4", "new"],
                          "text": ["red mug", "blue mug", "", "green cup", "tea pot",
                                   "new yellow mug"]})
    report = report_of(capsys, write_run(tmp_path, events, items, split_fraction=0.0))
    # i2 (empty text), i5 and i6 (not in the items table) have events, no text.
    assert report["warm_items_without_text"] == 3
    [warning] = [w for w in report["warnings"] if "no text" in w]
    assert warning.startswith("3 of 7 items with events") and "cold-start" in warning
    assert "held_out" not in report  # no split, no held-out side to warn about
    text = report_of(capsys, write_run(tmp_path, events, items, split_fraction=0.0), False)
    assert "items with events, no text" in text and "warning: 3 of 7 items" in text
    # Ids written otherwise in the items table: none of the events' items matches.
    padded = items.assign(item_id=[f"00{i}" for i in range(6)])
    report = report_of(capsys, write_run(tmp_path, events, padded, split_fraction=0.0))
    assert report["warm_items_without_text"] == 7
    [mismatch] = [w for w in report["warnings"] if "no item id of the events" in w]
    assert mismatch.startswith("no item id of the events is in the items table (6 rows; "
                               "events: 'i")
    assert "items table: '000', '001', ...): ids are matched as exact text ('00012' is not " \
        "'12')" in mismatch
    # Every id in the table, with empty texts: the texts are named, not the ids.
    listed = pd.DataFrame({"item_id": [f"i{i}" for i in range(7)], "text": [""] * 7})
    report = report_of(capsys, write_run(tmp_path, events, listed, split_fraction=0.0))
    assert report["warm_items_without_text"] == 7
    assert not [w for w in report["warnings"] if "no item id of the events" in w]


def test_each_dropped_rule_shows_its_first_row_under_it(tmp_path, capsys):
    events = baskets(20).astype(str)
    events.loc[3, "user_id"] = ""
    events.loc[5, "timestamp"] = "yesterday"
    text = report_of(capsys, write_run(tmp_path, events), False).splitlines()
    at = {rule: next(i for i, line in enumerate(text) if rule in line)
          for rule in ("events: missing user id", "events: unparseable timestamp")}
    for rule, i in at.items():
        assert text[i + 1].strip().startswith("first:"), text[i: i + 2]
    assert "missing user id" in text[at["events: missing user id"] + 1]
    assert "'yesterday'" in text[at["events: unparseable timestamp"] + 1]


def test_events_dated_1970_beside_real_ones_are_warned_and_the_range_shown(tmp_path, capsys):
    # An ETL job writing 0 for a missing time: such rows parse, and trained silently.
    events = baskets(100)
    events["timestamp"] = (events["timestamp"] - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
    events.loc[[10, 11, 40], "timestamp"] = 0
    args = write_run(tmp_path, events, split_fraction=0.2)
    report = report_of(capsys, args)
    assert report["time_range"]["first"] == "1970-01-01 00:00"
    assert report["time_range"]["last"] == "2024-01-05 03:00"
    assert report["time_range"]["outside_1980_2099"] == 3
    [warning] = [w for w in report["warnings"] if "before 1980" in w]
    assert warning.startswith("3 of 200 events (1.5%) are dated before 1980 or after 2099 "
                              "(the first: line 12, 1970-01-01 00:00 UTC)")
    text = report_of(capsys, args, json_out=False)
    assert "1970-01-01 00:00 to 2024-01-05 03:00 UTC" in text
    # Relative times (every event before 1980) are a log of its own: no warning.
    events["timestamp"] = np.arange(len(events)) * 60
    args = write_run(tmp_path, events, split_fraction=0.2)
    report = report_of(capsys, args)
    assert report["time_range"]["outside_1980_2099"] == 200
    assert not [w for w in report["warnings"] if "before 1980" in w]


def test_a_split_that_leaves_no_two_event_session_is_named_not_the_sessions(tmp_path, capsys):
    # The README's two-line example: one visit of two events, a tenth held out.
    events = pd.DataFrame({"user_id": ["u1", "u1"], "item_id": ["a", "b"],
                           "timestamp": ["2024-05-01T10:02:11", "2024-05-01T10:03:40"]})
    args = write_run(tmp_path, events, split_fraction=0.1)
    assert main(["-q", "prepare", *args]) == 2
    err = capsys.readouterr().err
    assert "setting 'train.split_fraction'" in err
    assert "the split keeps 1 of the 2 events (1 session) for training" in err
