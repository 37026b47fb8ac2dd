"""Public data sets: the data folder, the goodbooks-10k reader, the user and cold-item splits."""

import gzip
import json
import textwrap

import numpy as np
import pandas as pd
import pytest

from tfrec import datasets
from tfrec.cli import main
from tfrec.config import SessionConfig, TrainConfig
from tfrec.data.sessions import sessionize
from tfrec.data.split import make_cases, split_for_training
from tfrec.data.vocab import build_vocabulary
from tfrec.datasets.goodbooks import read_goodbooks
from tfrec.errors import InputError
from tfrec.run import load_run_config

# The real column names (books.csv has more columns; the reader needs these).
BOOKS = """
    book_id,goodreads_book_id,authors,original_title,title,language_code
    1,2767052,Suzanne Collins,The Hunger Games,"The Hunger Games (The Hunger Games, #1)",eng
    2,3,"J.K. Rowling, Mary GrandPré",,"Harry Potter and the Stone (Harry Potter, #1)",eng
    3,41865,Stephenie Meyer,Twilight,"Twilight (Twilight, #1)",en-US
    4,2657,Harper Lee,To Kill a Mockingbird,To Kill a Mockingbird,
    5,4671,F. Scott Fitzgerald,The Great Gatsby,The Great Gatsby,eng
    6,11870085,John Green,The Fault in Our Stars,The Fault in Our Stars,eng
"""
RATINGS = """
    book_id,user_id,rating
    1,10,5
    1,11,3
    1,12,1
    2,10,4
    2,10,2
    2,11,5
    3,10,3
    3,12,2
    4,11,4
    4,13,5
    5,13,3
    6,13,4
"""
TO_READ = """
    user_id,book_id
    10,5
    10,6
    11,3
    11,1
    12,4
    12,5
    12,1
    13,1
"""


def write_gz(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(textwrap.dedent(text).lstrip("\n").encode()))
    return path


@pytest.fixture
def goodbooks(tmp_path):
    """A tiny data folder in the real layout: goodbooks_10k/{books,ratings,to_read}.csv.gz."""
    folder = tmp_path / "data" / "goodbooks_10k"
    write_gz(folder / "books.csv.gz", BOOKS)
    write_gz(folder / "ratings.csv.gz", RATINGS)
    write_gz(folder / "to_read.csv.gz", TO_READ)
    return folder


# ------------------------------------------------------------------------------ data folder

def test_data_folder_order_explicit_then_env_then_shared_data(tmp_path, monkeypatch):
    for name in ("explicit", "env", "shared/data"):
        write_gz(tmp_path / name / "online_retail" / "online_retail.csv.gz", "x\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # ../shared/data is tmp_path/shared/data
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "env"))
    assert datasets.online_retail_path(tmp_path / "explicit").parent.parent == (
        tmp_path / "explicit")
    assert datasets.online_retail_path().parent.parent == tmp_path / "env"
    monkeypatch.delenv(datasets.DATA_ENV)
    assert datasets.online_retail_path().resolve().parent.parent == tmp_path / "shared" / "data"
    assert datasets.data_folder().resolve() == tmp_path / "shared" / "data"


def test_an_explicit_or_env_folder_is_not_second_guessed(tmp_path, monkeypatch):
    write_gz(tmp_path / "shared" / "data" / "online_retail" / "online_retail.csv.gz", "x\n")
    (tmp_path / "work").mkdir()
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "empty"))
    with pytest.raises(InputError, match="empty/online_retail/online_retail.csv.gz"):
        datasets.online_retail_path()
    with pytest.raises(InputError, match="empty/online_retail/online_retail.csv.gz"):
        datasets.online_retail_path(tmp_path / "empty")


@pytest.mark.parametrize("find, file, source", [
    (datasets.online_retail_path, "online_retail/online_retail.csv.gz",
     "archive.ics.uci.edu/dataset/352"),
    (datasets.goodbooks_folder, "goodbooks_10k/ratings.csv.gz",
     "github.com/zygmuntz/goodbooks-10k"),
])
def test_missing_file_message_says_what_where_from_and_how_to_point(
        tmp_path, monkeypatch, find, file, source):
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path))
    with pytest.raises(InputError) as caught:
        find()
    message = caught.value.message
    assert message.startswith(f"{tmp_path}/{file}: ")
    for part in (source, "--data-dir", datasets.DATA_ENV, "data.data_dir", "data.events"):
        assert part in message


def test_a_missing_goodbooks_file_is_named(goodbooks):
    (goodbooks / "to_read.csv.gz").unlink()
    with pytest.raises(InputError, match=r"to_read\.csv\.gz: goodbooks-10k data file not found"):
        read_goodbooks(goodbooks)
    events, _, _ = read_goodbooks(goodbooks, to_read=False)  # not needed without shelves
    assert "to_read" not in set(events["event"])


def test_cli_without_data_exits_2_with_the_message(tmp_path, capsys):
    assert main(["-q", "prepare", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tfrec: error: {tmp_path}/online_retail/online_retail.csv.gz: ")
    assert "archive.ics.uci.edu/dataset/352" in err and "Traceback" not in err
    assert main(["-q", "train", "--data-dir", str(tmp_path), "--config",
                 "tfrec/configs/goodbooks.yaml", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tfrec: error: {tmp_path}/goodbooks_10k/ratings.csv.gz: ")


def test_prepare_reads_a_goodbooks_folder(goodbooks, capsys):
    config = ["--config", "tfrec/configs/goodbooks.yaml"]
    assert main(["-q", "prepare", *config, "--set", f"data.events={goodbooks}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["events"], report["users"], report["sessions"], report["items"]) == (
        15, 4, 4, 6)
    assert report["rows_dropped"]["goodbooks: rating 1-2 (a negative signal, not an interest)"] == 2
    assert report["held_out_users"] == 1  # the bundled config's user split
    assert main(["-q", "prepare", *config, "--data-dir", str(goodbooks.parent),
                 "--set", "data.goodbooks_to_read=false", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 9


# ------------------------------------------------------------------------------ goodbooks

def test_goodbooks_reader_events_items_and_rules(goodbooks):
    events, items, rejections = read_goodbooks(goodbooks)
    assert list(events.columns) == ["user", "item", "time", "event", "session", "line"]
    assert list(items.columns) == ["item", "text", "market", "line"]
    text = dict(zip(items["item"], items["text"]))
    assert text["1"] == "The Hunger Games (The Hunger Games, #1) Suzanne Collins"
    assert text["2"].endswith("#1) J.K. Rowling, Mary GrandPré")
    market = dict(zip(items["item"], items["market"]))
    assert market["3"] == "en-US" and pd.isna(market["4"])
    got = {(u, i): e for u, i, e in zip(events["user"], events["item"], events["event"])}
    assert got == {
        ("10", "1"): "rated_high", ("10", "2"): "rated_high", ("10", "3"): "rated",
        ("11", "1"): "rated", ("11", "2"): "rated_high", ("11", "4"): "rated_high",
        ("13", "4"): "rated_high", ("13", "5"): "rated", ("13", "6"): "rated_high",
        ("10", "5"): "to_read", ("10", "6"): "to_read", ("11", "3"): "to_read",
        ("12", "4"): "to_read", ("12", "5"): "to_read", ("13", "1"): "to_read",
    }
    assert (events["time"] == 0).all() and (events["session"] == events["user"]).all()
    c = rejections.counts
    assert c["goodbooks: book rated twice by a reader (first rating kept)"] == 1  # (10, 2): 4
    assert c["goodbooks: rating 1-2 (a negative signal, not an interest)"] == 2
    # (11, 1) rated 3 and (12, 1) rated 1: the rating decides, a low one too.
    assert c["goodbooks: to-read book the reader rated (the rating kept)"] == 2
    assert len(events) + rejections.total == 12 + 8 + 0  # no row dropped uncounted
    assert rejections.rows_read[str(goodbooks / "ratings.csv.gz")] == 12


def test_goodbooks_ratings_only_and_strict_bad_rows(goodbooks):
    events, _, _ = read_goodbooks(goodbooks, to_read=False)
    assert set(events["event"]) == {"rated_high", "rated"}
    write_gz(goodbooks / "ratings.csv.gz", "book_id,user_id,rating\n1,10,5\n9,10,4\n2,10,7\n")
    events, _, rejections = read_goodbooks(goodbooks, to_read=False)
    assert len(events) == 1
    assert rejections.counts["goodbooks: ratings: book not in books.csv"] == 1
    assert rejections.counts["goodbooks: ratings: rating not 1-5"] == 1
    with pytest.raises(InputError, match=r"line 3, column 'book_id': book_id '9' is not in"):
        read_goodbooks(goodbooks, to_read=False, strict=True)
    write_gz(goodbooks / "ratings.csv.gz", "book,user_id,rating\n1,10,5\n")
    with pytest.raises(InputError, match="no column 'book_id'.*not a goodbooks-10k"):
        read_goodbooks(goodbooks)


def test_a_shelf_is_one_session_cut_by_max_length(goodbooks):
    events, items, _ = read_goodbooks(goodbooks)
    vocab = build_vocabulary(events, items)
    sessions = sessionize(events, vocab, SessionConfig(gap_minutes=1.0))
    shelf = events.groupby("user").size()
    assert sessions.num_sessions == len(shelf)  # equal times: no gap splits a shelf
    assert sorted(sessions.lengths.tolist()) == sorted(shelf.tolist())
    cut = sessionize(events, vocab, SessionConfig(max_length=2))
    assert cut.stats["sessions"] == len(shelf)
    assert cut.lengths.max() == 2 and cut.num_events == len(events)
    # The order within a shelf is seeded: the same for a seed, not the file's.
    again, _, _ = read_goodbooks(goodbooks)
    assert again["item"].tolist() == events["item"].tolist()


# ----------------------------------------------------------------------------- user split

def goodbooks_config(folder, **train):
    return load_run_config(None, [
        "data.layout=goodbooks", f"data.events={folder}", "train.split_by=user",
        *(f"train.{key}={value}" for key, value in train.items())])


def shelves(num_users=60, num_items=40, seed=0):
    rng = np.random.RandomState(seed)
    rows = [(f"u{u}", f"i{i}") for u in range(num_users)
            for i in rng.choice(num_items, rng.randint(1, 8), replace=False)]
    events = pd.DataFrame(rows, columns=["user", "item"])
    events["time"], events["event"], events["line"] = 0, None, np.arange(len(events)) + 2
    events["session"] = events["user"]
    items = pd.DataFrame({"item": [f"i{i}" for i in range(num_items)],
                          "text": [f"book {i}" for i in range(num_items)], "market": None})
    return events, items


def test_user_split_never_trains_on_a_kept_out_user():
    events, items = shelves()
    split = split_for_training(events, items, TrainConfig(split_by="user", holdout_users=0.2))
    kept_out = set(split.kept_out_users)
    assert len(kept_out) == 12
    assert not kept_out & set(split.train["user"])
    assert set(split.test["user"]) == kept_out and len(split.test) + len(split.train) == len(
        events)
    vocab = build_vocabulary(split.train, items)
    cases = make_cases(split.test, vocab, seed=3, per_user=True)
    by_user = split.test.groupby("user")["item"].apply(set)
    assert len(cases) == int((by_user.map(len) >= 2).sum())  # one case per user
    shelves_of = [set(vocab.lookup(list(s))) for s in by_user[by_user.map(len) >= 2]]
    for query, target in zip(cases.queries, cases.targets):
        assert target not in query
        assert set(query) | {target} in shelves_of  # the rest of that user's items
    # Seeded: the same users and cases again.
    again = split_for_training(events.sample(frac=1, random_state=1), items,
                               TrainConfig(split_by="user", holdout_users=0.2))
    assert set(again.kept_out_users) == kept_out


def test_cold_items_never_train_and_stay_in_the_catalogue():
    events, items = shelves()
    for split_by in ("user", "time"):
        split = split_for_training(events.assign(time=np.arange(len(events))), items,
                                   TrainConfig(split_by=split_by, cold_items=0.25))
        hidden = set(split.hidden_items)
        assert len(hidden) == 10
        assert not hidden & set(split.train["item"])
    with pytest.raises(InputError, match="setting 'train.cold_items'.*items table"):
        split_for_training(events, None, TrainConfig(split_by="user", cold_items=0.1))


def test_prepare_training_data_on_goodbooks_keeps_users_and_items_out(goodbooks):
    from tfrec.run import prepare_training_data

    config = goodbooks_config(goodbooks, holdout_users=0.25, cold_items=0.34,
                              eval_seed=5)
    data = prepare_training_data(config)
    split = data.split
    assert len(split.kept_out_users) == 1 and len(split.hidden_items) == 2
    trained_users = set(data.sessions.user_ids[data.sessions.user])
    assert not trained_users & set(split.kept_out_users)
    hidden = set(data.vocab.lookup(split.hidden_items).tolist())
    assert 0 not in hidden and (data.vocab.counts[list(hidden)] == 0).all()
    assert not hidden & set(data.sessions.items.tolist())
    assert data.vocab.size - 1 == 6  # hidden books stay in the catalogue
    assert len(data.cases) == 1 and data.cases.queries[0]
    assert data.cases.cold[0] == (data.vocab.counts[data.cases.targets[0]] == 0)


def test_split_settings_are_checked():
    with pytest.raises(InputError,
                       match="setting 'train.split_by': split_by must be 'time' or 'user'"):
        TrainConfig(split_by="users")
    with pytest.raises(InputError, match="holdout_users must be in"):
        TrainConfig(holdout_users=1.0)
    config = load_run_config("tfrec/configs/goodbooks.yaml")
    assert (config.data.layout, config.train.split_by, config.train.holdout_users,
            config.train.cold_items, config.train.eval_seed) == (
                "goodbooks", "user", 0.1, 0.05, 42)


# ------------------------------------------------------------------------------ real files

def test_goodbooks_real_files(goodbooks_dir):
    events, items, rejections = read_goodbooks(goodbooks_dir)
    c = rejections.counts
    # SOURCE.md: 981,756 ratings (1-2 stars: 19,575 + 63,231) with 2,278 repeated pairs,
    # 912,705 to-read rows; 10,000 books.
    assert rejections.rows_read[str(goodbooks_dir / "ratings.csv.gz")] == 981_756
    assert c["goodbooks: book rated twice by a reader (first rating kept)"] == 2_278
    assert 82_000 < c["goodbooks: rating 1-2 (a negative signal, not an interest)"] <= 82_806
    assert len(events) + rejections.total == 981_756 + 912_705
    assert len(items) == 10_000 and events["item"].nunique() == 10_000
    assert events["user"].nunique() == 53_387
    assert (items.set_index("item").loc["1", "text"]
            == "The Hunger Games (The Hunger Games, #1) Suzanne Collins")
