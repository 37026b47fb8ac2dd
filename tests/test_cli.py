import json
import os
import subprocess
import sys

import pytest

from tfrec.cli import main

EVENTS = """
    user_id,item_id,timestamp,event
    u1,a,2024-01-01 10:00:00,click
    u1,b,2024-01-01 10:05:00,click
    u1,c,2024-01-01 10:09:00,purchase
    u2,a,2024-01-01 11:00:00,click
    u2,b,2024-01-01 11:20:00,click
"""
ITEMS = """
    item_id,text
    a,red mug
    b,blue mug
    c,green mug
    d,new yellow mug
"""


def run_cli(*args):
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    return subprocess.run([sys.executable, "-m", "tfrec", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_prepare_reports_sessions_pairs_and_cold_items(write, tmp_path, capsys):
    events = write("events.csv", EVENTS)
    items = write("items.csv", ITEMS)
    out = tmp_path / "out"
    code = main(["-q", "prepare", "--events", str(events), "--items", str(items),
                 "--event-col", "event", "--window", "1", "--subsample", "0",
                 "--out", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.split("\nwrote ")[0])
    assert report["events"] == 5 and report["users"] == 2 and report["sessions"] == 2
    assert report["converted_sessions"] == 1
    assert (report["items"], report["warm_items"], report["cold_items"]) == (4, 3, 1)
    # window 1: a-b, b-c both ways (4) + b-a both ways (2); global: a->c, b->c (2).
    assert report["pairs_per_epoch"] == 8 and report["global_context_pairs"] == 2
    assert (out / "vocab.tsv").read_text().splitlines()[-1] == "d\t0\t\tnew yellow mug"
    assert json.loads((out / "report.json").read_text())["pairs_per_epoch"] == 8


def test_prepare_text_report(write, capsys):
    events = write("events.csv", EVENTS)
    assert main(["-q", "prepare", "--events", str(events)]) == 0
    text = capsys.readouterr().out
    assert "pairs per epoch" in text and "sessions" in text and "cold" in text


@pytest.mark.parametrize("content, args, expected", [
    (None, [], "events file not found"),
    ("user_id,item_id\nu,a\n", [], "no column 'timestamp'"),
    ("user_id,item_id,timestamp\n", [], "header but no rows"),
    ("user_id,item_id,timestamp\nu,a,2024-01-01\nu,b,soon\n", ["--strict"],
     "line 3, column 'timestamp': cannot parse 'soon'"),
    ("user_id,item_id,timestamp\nu,a,2024-01-01\n", ["--window", "0"],
     "setting 'window': window must be a positive integer"),
    ("user_id,item_id,timestamp\nu,a,2024-01-01\n", ["--event-weight", "purchase"],
     "--event-weight expects TYPE=NUMBER"),
])
def test_bad_input_exits_2_with_one_message_and_no_traceback(tmp_path, content, args, expected):
    path = tmp_path / "events.csv"
    if content is not None:
        path.write_text(content)
    result = run_cli("prepare", "--events", str(path), *args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("tfrec: error: ")


def test_conflicting_item_text_strict_exits_2(write):
    events = write("events.csv", EVENTS)
    items = write("items.csv", "item_id,text\na,red mug\na,red cup\n")
    result = run_cli("prepare", "--events", str(events), "--items", str(items), "--strict")
    assert result.returncode == 2
    assert "line 3, column 'text': item 'a' has text 'red cup' here but 'red mug' at line 2" in (
        result.stderr)
    assert "Traceback" not in result.stderr


def test_lenient_mode_reports_rejected_rows_and_writes_them(write, tmp_path, capsys):
    events = write("events.csv", EVENTS + "    u3,d,not a time,click\n")
    out = tmp_path / "out"
    assert main(["-q", "prepare", "--events", str(events), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "events: unparseable timestamp" in text and "line 7" in text
    assert "not a time" in (out / "rejected_rows.csv").read_text()


def test_unknown_subcommand_and_help():
    assert run_cli("nonsense").returncode == 2
    result = run_cli("prepare", "--help")
    assert result.returncode == 0 and "--session-gap-minutes" in result.stdout
