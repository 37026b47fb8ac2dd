"""Every script in examples/ runs (small sizes) and prints what it promises, and the README's
getting-started config runs."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Arguments that keep each script small enough for the suite.
SMALL = {"keras_fit.py": ["--sessions", "1000", "--epochs", "3"]}


def run(script: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), *SMALL[script]],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_example_has_its_small_arguments():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(SMALL)


@pytest.mark.parametrize("script", sorted(SMALL))
def test_example_runs(script):
    out = run(script)
    if script == "keras_fit.py":
        lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        assert lines["streams"] == "pairs, next_items"
        first, last = (float(x) for x in lines["loss"].split(" -> "))
        assert last < first
        recommended = lines["recommended"].split()
        assert len(recommended) == 5 and not set(recommended) & set(lines["session"].split())
        # The session is two red kitchen items: most of the top 5 share the theme
        # (chance: a quarter of the catalogue).
        assert sum(item.startswith("red-") for item in recommended) >= 3, out


# The README's "Getting started on your own data": its config, on a small generated catalogue
# in the layout its CSV examples show, runs through the command line; its commands parse.
GETTING_STARTED = "## Getting started on your own data\n"


def getting_started_blocks() -> dict[str, list[str]]:
    readme = (ROOT / "README.md").read_text()
    assert GETTING_STARTED in readme, "README has no 'Getting started on your own data'"
    section = readme.split(GETTING_STARTED, 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S):
        blocks.setdefault(lang, []).append(body)
    return blocks


def write_catalogue(folder: Path, events_header: str, items_header: str) -> None:
    """Generated shoppers over themed items, in the README's layout: ISO 8601 times, views
    and a purchase per visit."""
    rng = np.random.default_rng(0)
    themes = ["red kitchen mug", "blue linen towel", "green garden pot", "white candle"]
    items = [(f"sku-{t}{j:02d}", f"{text} {j}") for t, text in enumerate(themes)
             for j in range(15)]
    start = np.datetime64("2024-05-01T08:00:00")
    rows = []
    for user in range(240):
        theme = rng.integers(len(themes))
        for visit in range(2):
            when = start + np.timedelta64(int(rng.integers(0, 60 * 24 * 60)), "m")
            picks = rng.choice(15, size=int(rng.integers(3, 7)), replace=False)
            for n, j in enumerate(picks):
                kind = "purchase" if n == len(picks) - 1 else "view"
                rows.append((f"u{user}", items[theme * 15 + j][0],
                             str(when + np.timedelta64(n, "m")), kind))
    events_cols, items_cols = events_header.split(","), items_header.split(",")
    assert len(events_cols) == 4 and len(items_cols) == 2
    with open(folder / "events.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(events_cols)
        out.writerows(rows)
    with open(folder / "items.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(items_cols)
        out.writerows(items)


def test_the_getting_started_config_prepares_and_trains(tmp_path, capsys):
    from tfrec import cli

    blocks = getting_started_blocks()
    (events_example, items_example), (run_config,), (commands,) = (
        blocks["csv"], blocks["yaml"], blocks["sh"])
    config = yaml.safe_load(run_config)
    assert config["data"]["events"] == "events.csv" and config["data"]["items"] == "items.csv"
    write_catalogue(tmp_path, events_example.splitlines()[0], items_example.splitlines()[0])
    (tmp_path / "shop.yaml").write_text(run_config)
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()

    # every documented command is one the command line takes (server calls are not made)
    lines = [line.split("#")[0].split() for line in commands.splitlines() if line.strip()]
    assert [line[1] for line in lines] == ["prepare", "train", "evaluate", "train", "export",
                                           "serve", "recommend", "export"]
    parser = cli.build_parser()
    for line in lines:
        assert line[0] == "tfrec"
        parser.parse_args(line[1:])
    assert "--final-from" in lines[3] and "--update-users" in lines[7]

    # prepare and a 1-epoch train through the command line's main, from another folder: the
    # config's relative paths are its own folder's
    cfg = str(tmp_path / "shop.yaml")
    assert cli.main(["-q", "prepare", "--config", cfg, "--out", str(elsewhere / "data")]) == 0
    report = capsys.readouterr().out
    # every row read as the README's layout: no row dropped, the purchases are conversions
    assert re.search(r"rows dropped +0\n", report), report
    converted = re.search(r"converted sessions +([\d,]+)", report)
    assert converted and int(converted.group(1).replace(",", "")) > 0, report
    run_dir = elsewhere / "run"
    assert cli.main(["-q", "train", "--config", cfg, "--run-dir", str(run_dir),
                     "--epochs", "1"]) == 0
    saved = json.loads((run_dir / "config.json").read_text())["data"]
    assert saved["events_schema"]["event_col"] == "event_type"
    assert saved["items_schema"]["text_col"] == "title"
    held_out = json.loads((run_dir / "eval.json").read_text())
    assert held_out["all"]["cases"] > 0, "the documented split left no held-out cases"
