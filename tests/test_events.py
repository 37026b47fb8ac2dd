import gzip

import numpy as np
import pandas as pd
import pytest

from tfrec.config import EventsSchema, ItemsSchema
from tfrec.data.events import read_events, read_items
from tfrec.datasets.online_retail import read_online_retail
from tfrec.data.vocab import OOV_INDEX, ItemVocabulary, build_vocabulary
from tfrec.errors import InputError

EVENTS = """
    uid,sku,ts,kind
    u1,a,2024-01-01 10:00:00,click
    u1,b,2024-01-01 10:05:00,purchase
    u2,a,2024-01-01 11:00:00,click
"""


def test_column_mapping_and_types(write):
    path = write("events.csv", EVENTS)
    schema = EventsSchema(user_col="uid", item_col="sku", time_col="ts", event_col="kind")
    events, rejections = read_events(path, schema)
    assert events["user"].tolist() == ["u1", "u1", "u2"]
    assert events["item"].tolist() == ["a", "b", "a"]
    assert events["event"].tolist() == ["click", "purchase", "click"]
    assert events["time"].tolist() == [1704103200, 1704103500, 1704106800]
    assert events["line"].tolist() == [2, 3, 4]
    assert rejections.total == 0


def test_gzip_and_parquet_read_the_same(write, tmp_path):
    csv = write("events.csv", EVENTS)
    schema = EventsSchema(user_col="uid", item_col="sku", time_col="ts", event_col="kind")
    gz = tmp_path / "events.csv.gz"
    gz.write_bytes(gzip.compress(csv.read_bytes()))
    pq = tmp_path / "events.parquet"
    frame = pd.read_csv(csv)
    frame["ts"] = pd.to_datetime(frame["ts"])
    frame.to_parquet(pq)
    a, _ = read_events(csv, schema)
    b, _ = read_events(gz, schema)
    c, _ = read_events(pq, schema)
    cols = ["user", "item", "time", "event"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    pd.testing.assert_frame_equal(a[cols], c[cols])


def test_epoch_seconds_and_ids_that_look_like_numbers(write):
    path = write("e.csv", """
        user_id,item_id,timestamp
        17850.0,00123,1700000000
        17850.0,123,1700000060
    """)
    events, _ = read_events(path)
    assert events["item"].tolist() == ["00123", "123"]  # ids stay exact text
    assert events["time"].tolist() == [1700000000, 1700000060]


def test_epoch_numbers_in_another_unit_are_refused_naming_the_right_one(write):
    path = write("e.csv", """
        user_id,item_id,timestamp
        u,a,1700000000000
        u,b,1700000060000
    """)
    with pytest.raises(InputError) as err:
        read_events(path)  # milliseconds read as seconds: the year 55,840
    assert err.value.key == "data.events_schema.time_unit"
    assert "around the year 55,840, in ms around 2023; set data.events_schema.time_unit: ms" in (
        str(err.value))
    events, _ = read_events(path, EventsSchema(time_unit="ms"))
    assert events["time"].tolist() == [1700000000, 1700000060]
    with pytest.raises(InputError, match="time_unit: s$"):
        read_events(write("s.csv", "user_id,item_id,timestamp\nu,a,1700000000\n"),
                    EventsSchema(time_unit="ms"))  # seconds read as milliseconds: 1970


def test_a_time_format_that_parses_nothing_is_named(write):
    path = write("e.csv", "user_id,item_id,timestamp\nu,a,01/02/2024 10.00\nu,b,01/02/2024 10.05\n")
    with pytest.raises(InputError, match=r"every row was rejected .*most timestamps did not "
                                         r"parse: set data\.events_schema\.time_format"):
        read_events(path, EventsSchema(time_format="%Y-%m-%d"))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.csv: events file not found"):
        read_events(tmp_path / "nope.csv")


def test_missing_column_names_file_column_and_option(write):
    path = write("e.csv", "user,item,timestamp\nu,a,2024-01-01\n")
    with pytest.raises(InputError) as err:
        read_events(path)
    message = str(err.value)
    assert "e.csv" in message and "'user_id'" in message
    assert "set data.events_schema.user_col to the right one" in message
    assert "user, item, timestamp" in message


def test_empty_table_and_empty_file(write):
    with pytest.raises(InputError, match="header but no rows"):
        read_events(write("h.csv", "user_id,item_id,timestamp\n"))
    with pytest.raises(InputError, match="file is empty"):
        read_events(write("z.csv", ""))


BAD_TIME = """
    user_id,item_id,timestamp
    u1,a,2024-01-01 10:00:00
    u1,b,2024-13-45 99:00:00
    u2,c,2024-01-01 11:00:00
"""


def test_unparseable_timestamp_strict_names_file_line_column(write):
    path = write("t.csv", BAD_TIME)
    with pytest.raises(InputError) as err:
        read_events(path, strict=True)
    assert str(err.value).startswith(f"{path}, line 3, column 'timestamp': cannot parse "
                                     "'2024-13-45 99:00:00'")


def test_strict_names_the_first_bad_row_in_file_order_whatever_its_rule(write):
    # Line 3's timestamp comes before line 4's missing id, though ids are checked first.
    path = write("t.csv", BAD_TIME.replace("u2,c,", "u2,,"))
    with pytest.raises(InputError) as err:
        read_events(path, strict=True)
    assert "line 3, column 'timestamp'" in str(err.value)
    path = write("items.csv", "item_id,text\na,red mug\na,red cup\n,blue\n")
    with pytest.raises(InputError) as err:
        read_items(path, strict=True)
    assert "line 3, column 'text': item 'a' has text 'red cup'" in str(err.value)


def test_items_without_an_id_beside_a_repeated_id_are_counted(write):
    # A row without an id and an id given twice in one file (this raised IndexError).
    items, rejections = read_items(write("items.csv", "item_id,text\na,cup\n,blue\nb,x\n"
                                         "a,cup\nb,y\n"))
    assert items["item"].tolist() == ["a", "b"] and items["text"].tolist() == ["cup", "x"]
    assert rejections.counts["items: missing item id"] == 1
    assert rejections.counts["items: repeated item id, same text (merged)"] == 1
    assert rejections.counts["items: conflicting duplicate item id"] == 1
    with pytest.raises(InputError, match="line 3, column 'item_id': missing item id"):
        read_items(write("items.csv", "item_id,text\na,cup\n,blue\nb,x\nb,y\n"),
                   strict=True)


def test_ids_with_a_line_break_are_rejected_as_bad_rows(write):
    # An export lists ids one per line: such an id would come back as two.
    path = write("t.csv", 'user_id,item_id,timestamp\nu1,a,2024-01-01T10:00:00\n'
                          '"new\nline",b,2024-01-01T10:01:00\nu1,"x\ry",2024-01-01T10:02:00\n')
    events, rejections = read_events(path)
    assert events["user"].tolist() == ["u1"]
    assert rejections.counts["events: user id with a line break"] == 1
    assert rejections.counts["events: item id with a line break"] == 1
    assert "user id 'new\\nline' holds a line break" in \
        rejections.examples["events: user id with a line break"]
    with pytest.raises(InputError, match="holds a line break"):
        read_events(path, strict=True)
    items, rejections = read_items(write("items.csv", 'item_id,text\na,cup\n"x\ny",thing\n'))
    assert items["item"].tolist() == ["a"]
    assert rejections.counts["items: item id with a line break"] == 1


def test_ids_with_any_line_separator_or_the_reserved_id_are_rejected(write):
    # str.splitlines also ends a line at U+2028, U+0085, \f, \v, ...: such an id was kept,
    # and a later version's user list split it in two (every later user shifted).
    events, rejections = read_events(write("t.csv", (
        "user_id,item_id,timestamp\nu1,a,2024-01-01T10:00:00\n"
        "u\u2028x,b,2024-01-01T10:01:00\nu1,c\x85d,2024-01-01T10:02:00\n"
        "u1,e\x0cf,2024-01-01T10:03:00\nu1,[OOV],2024-01-01T10:04:00\n")))
    assert events["item"].tolist() == ["a"]
    assert rejections.counts["events: user id with a line break"] == 1
    assert rejections.counts["events: item id with a line break"] == 2
    assert rejections.counts["events: reserved item id"] == 1
    assert "'[OOV]' is reserved" in rejections.examples["events: reserved item id"]
    items, rejections = read_items(write("items.csv", "item_id,text\na,cup\nb\u2029c,x\n"
                                                      "[OOV],thing\n"))
    assert items["item"].tolist() == ["a"]
    assert rejections.counts["items: item id with a line break"] == 1
    with pytest.raises(InputError, match=r"line 3, column 'item_id': item id '\[OOV\]' is "
                                         r"reserved"):
        read_items(write("items.csv", "item_id,text\na,cup\n[OOV],thing\n"), strict=True)


def test_a_run_whose_ids_are_refused_now_is_told_why(tmp_path):
    # A run of an earlier release trained on an id holding U+0085; re-read, that row is
    # left out and the vocabulary differs: the message says it is the reader, not the data.
    import pandas as pd

    from tfrec.data.events import Rejections
    from tfrec.data.vocab import build_vocabulary
    from tfrec.run import check_run_data

    def vocab(items):
        return build_vocabulary(pd.DataFrame({"user": ["u"] * len(items), "item": items,
                                              "time": range(len(items))}), None)

    trained, now = vocab(["a", "b\x85c"]), vocab(["a"])
    with pytest.raises(InputError, match="retrain, or point the config at the original data"):
        check_run_data(now, trained, tmp_path)
    rejections = Rejections()
    rejections.add("events: item id with a line break", 1, "line 3: item id 'b\\x85c' ...")
    with pytest.raises(InputError, match=r"this release leaves out rows whose ids hold a line "
                                         r"separator .*item id with a line break: 1, e.g. line "
                                         r"3: item id 'b\\x85c'.*rename those ids"):
        check_run_data(now, trained, tmp_path, rejections)


def test_float_ids_past_int64_are_read_as_their_text(tmp_path):
    import pandas as pd

    path = tmp_path / "events.parquet"
    pd.DataFrame({"user_id": [1.7e19, float("nan"), 12.0], "item_id": ["a", "b", "c"],
                  "timestamp": ["2024-01-01T10:00:00"] * 3}).to_parquet(path)
    events, rejections = read_events(path)
    assert events["user"].tolist() == ["17000000000000000000", "12"]
    assert rejections.counts["events: missing user id"] == 1


def test_unparseable_timestamp_lenient_is_counted_and_kept_aside(write, tmp_path):
    path = write("t.csv", BAD_TIME)
    events, rejections = read_events(path)
    assert events["item"].tolist() == ["a", "c"]
    assert rejections.counts["events: unparseable timestamp"] == 1
    assert "line 3" in rejections.examples["events: unparseable timestamp"]
    assert rejections.rows_read[str(path)] == 3
    out = tmp_path / "rejected.csv"
    assert rejections.write(out) == 1
    rejected = pd.read_csv(out)
    assert rejected["_line"].tolist() == [3] and rejected["item_id"].tolist() == ["b"]


def test_missing_ids_are_rejected_per_rule(write):
    path = write("m.csv", """
        user_id,item_id,timestamp
        ,a,2024-01-01
        u1,,2024-01-01
        u1,b,
        u1,c,2024-01-02
    """)
    events, rejections = read_events(path)
    assert events["item"].tolist() == ["c"]
    assert rejections.counts == {"events: missing user id": 1, "events: missing item id": 1,
                                 "events: unparseable timestamp": 1}
    assert rejections.total + len(events) == 4


def test_malformed_line_lenient_counts_strict_fails(write, tmp_path):
    path = write("bad.csv", """
        user_id,item_id,timestamp
        ,a,2024-01-01
        u1,b,2024-01-02,extra,fields
        u1,c,2024-01-03
    """)
    events, rejections = read_events(path)
    assert events["item"].tolist() == ["c"]
    assert events["line"].tolist() == [4]
    assert rejections.counts["events: malformed line"] == 1
    assert "line 3" in rejections.examples["events: malformed line"]
    # The rejected rows keep a malformed line's text, and come in file order (the
    # malformed line is set aside first, the missing user id's row after).
    out = tmp_path / "rejected.csv"
    assert rejections.write(out) == 2
    rejected = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert rejected["_line"].tolist() == ["2", "3"]
    assert rejected["_raw"].tolist() == ["", "u1,b,2024-01-02,extra,fields"]
    assert rejected["item_id"].tolist() == ["a", ""]
    with pytest.raises(InputError, match=r"bad\.csv, line 3: malformed CSV: 5 fields where "
                                         r"the header has 3$"):
        read_events(path, strict=True)


def test_every_row_rejected_is_an_error(write):
    path = write("all.csv", "user_id,item_id,timestamp\nu1,a,never\n")
    with pytest.raises(InputError, match="no usable events"):
        read_events(path)


ITEMS = """
    item_id,text,market
    a,red mug,uk
    b,blue mug,fr
    a,red mug,uk
    c,green mug,uk
"""


def test_items_duplicate_with_same_text_merges(write):
    items, rejections = read_items(write("items.csv", ITEMS), ItemsSchema(market_col="market"))
    assert items["item"].tolist() == ["a", "b", "c"]
    assert rejections.counts["items: repeated item id, same text (merged)"] == 1


CONFLICT = """
    item_id,text
    a,red mug
    b,blue mug
    a,red cup
"""


def test_items_conflicting_text_strict_names_both_lines(write):
    path = write("items.csv", CONFLICT)
    with pytest.raises(InputError) as err:
        read_items(path, strict=True)
    assert str(err.value) == (f"{path}, line 4, column 'text': item 'a' has text 'red cup' "
                              "here but 'red mug' at line 2")


def test_items_conflicting_text_lenient_keeps_first_and_counts(write):
    items, rejections = read_items(write("items.csv", CONFLICT))
    assert dict(zip(items["item"], items["text"])) == {"a": "red mug", "b": "blue mug"}
    assert rejections.counts["items: conflicting duplicate item id"] == 1


def test_vocabulary_keeps_cold_items_aligned_with_text(write, tmp_path):
    events, _ = read_events(write("e.csv", """
        user_id,item_id,timestamp
        u1,b,2024-01-01
        u1,a,2024-01-02
        u2,b,2024-01-03
        u2,z,2024-01-04
    """))
    items, _ = read_items(write("items.csv", ITEMS), ItemsSchema(market_col="market"))
    vocab = build_vocabulary(events, items)
    assert vocab.ids.tolist() == ["[OOV]", "b", "a", "z", "c"]
    assert vocab.counts.tolist() == [0, 2, 1, 1, 0]
    assert vocab.text.tolist() == ["", "blue mug", "red mug", "", "green mug"]
    assert [vocab.market_names[m] if m >= 0 else None for m in vocab.market] == [
        None, "fr", "uk", None, "uk"]
    assert (vocab.num_warm, vocab.num_cold) == (3, 1)
    assert vocab.lookup(["a", "c", "unknown"]).tolist() == [2, 4, OOV_INDEX]
    with pytest.raises(InputError, match="unknown item id 'nope'"):
        vocab.index_of("nope")
    vocab.save(tmp_path / "vocab.tsv")
    loaded = ItemVocabulary.load(tmp_path / "vocab.tsv")
    assert loaded.ids.tolist() == vocab.ids.tolist()
    assert loaded.text.tolist() == vocab.text.tolist()
    np.testing.assert_array_equal(loaded.counts, vocab.counts)


def test_online_retail_reader_counts_on_the_real_file(online_retail_file):
    events, items, rejections = read_online_retail(online_retail_file)
    c = rejections.counts
    assert rejections.rows_read and sum(rejections.rows_read.values()) == 541_909
    assert c["online_retail: cancellation (invoice C...)"] == 9_288  # SOURCE.md: 9,288 C rows
    # SOURCE.md: after cancellations, quantity <= 0 and missing customer, 397,924 lines remain.
    after_three = 541_909 - (c["online_retail: missing invoice or stock code"]
                             + c["online_retail: cancellation (invoice C...)"]
                             + c["online_retail: quantity <= 0"]
                             + c["online_retail: missing customer id"])
    assert after_three == 397_924
    assert len(events) == after_three - c["online_retail: missing description"] - c[
        "online_retail: non-product stock code"]
    assert len(events) + rejections.total == 541_909
    # The cleaned catalogue: 3,659 product codes (5 digits + up to 2 letters).
    assert len(items) == 3_659 == events["item"].nunique()
    assert items["item"].str.fullmatch(r"\d{5}[A-Za-z]{0,2}").all()
    assert events["session"].str.startswith("C").sum() == 0
    assert events["user"].str.fullmatch(r"\d+").all()  # "17850.0" read as "17850"
    heart = items.set_index("item").loc["85123A"]
    assert heart["text"] == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert heart["market"] == "United Kingdom"


def test_online_retail_layout_missing_column(write):
    path = write("retail.csv", "InvoiceNo,StockCode\n1,2\n")
    with pytest.raises(InputError, match="no column 'Description'"):
        read_online_retail(path)


def test_ids_that_pandas_would_read_as_missing_are_ids(write):
    # Only an empty field is missing: 'NA', 'null', 'None' and 'NaN' are ids as written.
    path = write("na.csv", """
        user_id,item_id,timestamp
        NA,NA,2024-01-01
        u1,null,2024-01-01
        u1,None,2024-01-01
        NaN,n/a,2024-01-01
        u2,,2024-01-01
    """)
    events, rejections = read_events(path)
    assert events["item"].tolist() == ["NA", "null", "None", "n/a"]
    assert events["user"].tolist() == ["NA", "u1", "u1", "NaN"]
    assert {k: v for k, v in rejections.counts.items() if v} == {"events: missing item id": 1}
    items = write("items.csv", """
        item_id,text
        NA,a lamp
        null,a chair
    """)
    table, _ = read_items(items)
    assert table["item"].tolist() == ["NA", "null"]


def test_iso_times_written_in_several_ways_are_all_read(write):
    # pandas infers one format from the first value; every ISO-8601 form is read.
    path = write("iso.csv", """
        user_id,item_id,timestamp
        u1,a,2024-05-05T00:44:32.120739
        u1,b,2024-05-15T20:42:47
        u1,c,2024-05-15 20:42:47+02:00
        u1,d,2024-05-16
        u1,e,yesterday
    """)
    events, rejections = read_events(path)
    assert events["item"].tolist() == ["a", "b", "c", "d"]
    assert events["time"].tolist() == [1714869872, 1715805767, 1715798567, 1715817600]
    assert {k: v for k, v in rejections.counts.items() if v} == {
        "events: unparseable timestamp": 1}


def test_update_users_events_are_read_in_the_runs_layout(write):
    """--update-users reads a UCI Online Retail file for a run of that layout (its
    cleaning rules applied); other runs read their events layout, named when it
    does not fit."""
    from tfrec.config import EventsSchema
    from tfrec.exporter.users import read_user_events

    path = write("since.csv", """
        InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
        581001,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2011-12-01 08:26:00,2.55,17850,UK
        C581002,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-1,2011-12-01 08:30:00,2.55,17850,UK
        581003,71053,WHITE METAL LANTERN,2,2011-12-02 09:00:00,3.39,13047,UK
        """)
    events = read_user_events(path, EventsSchema(), "online_retail")
    assert events["user"].tolist() == ["17850", "13047"]
    assert events["item"].tolist() == ["85123A", "71053"] and events["line"].tolist() == [2, 4]
    with pytest.raises(InputError) as err:
        read_user_events(path, EventsSchema(), "events")
    assert "no column 'user_id'" in err.value.message
    assert "columns user_id, item_id, timestamp (ISO 8601 or epoch s)" in err.value.message
    assert "set data.events_schema" not in err.value.message  # export takes no --set
    # Only users, items and times are read: the run's event type column is not needed.
    plain = write("plain.csv", """
        user_id,item_id,timestamp
        u1,a,2024-05-01T10:00:00
        """)
    typed = EventsSchema(event_col="action", session_col="visit")
    assert read_user_events(plain, typed, "events")["item"].tolist() == ["a"]
    # A glob is the Beam job's (the local one reads one file): said so.
    with pytest.raises(InputError, match="a glob of files is read by the Beam job"):
        read_user_events(str(plain.parent / "logs-*.csv"), typed, "events")


def test_text_times_without_a_format_are_iso_8601_never_a_guessed_day_order(write):
    # 3 and 4 January, day first: pandas would infer month first from "03/01/2024" and
    # read them as 1 March and 1 April without a sign.
    path = write("e.csv", """
        user_id,item_id,timestamp
        u,a,03/01/2024 18:00
        u,b,04/01/2024 18:05
    """)
    with pytest.raises(InputError, match=r"most timestamps did not parse: set "
                                         r"data\.events_schema\.time_format"):
        read_events(path)
    events, _ = read_events(path, EventsSchema(time_format="%d/%m/%Y %H:%M"))
    assert pd.to_datetime(events["time"], unit="s").dt.strftime("%d %b").tolist() == [
        "03 Jan", "04 Jan"]
    # ISO 8601 in its several forms, one file.
    events, _ = read_events(write("iso.csv", """
        user_id,item_id,timestamp
        u,a,2024-01-03 18:00
        u,b,2024-01-03T18:00:30Z
        u,c,2024-01-03T20:00:00.5+02:00
        u,d,2024-01-04
    """))
    assert events["time"].diff().tolist()[1:] == [30, -30, 21600]


def test_a_column_named_twice_in_the_header_is_refused_when_read(write):
    path = write("t.csv", "user_id,item_id,timestamp,item_id\nu1,a,2024-01-01,z\n")
    with pytest.raises(InputError, match="column 'item_id': the header names column 'item_id' "
                                         "more than once"):
        read_events(path)
    # A repeated column that no setting reads is left alone.
    events, _ = read_events(write("t.csv", "user_id,item_id,timestamp,note,note\n"
                                           "u1,a,2024-01-01,x,y\n"))
    assert events["item"].tolist() == ["a"]


def test_text_that_is_not_utf8_is_named_by_its_line_and_byte(write, tmp_path):
    from tfrec.data.events import _first_bad_utf8

    path = tmp_path / "latin.csv"
    rows = ["user_id,item_id,timestamp"] + [f"u{i},é{i},2024-01-01" for i in range(3000)]
    rows[2500] = "u2499,caf\xe9,2024-01-01"
    body = "\n".join(rows)
    path.write_bytes(body[:body.index("caf\xe9")].encode() + body[body.index("caf\xe9"):].encode(
        "latin-1"))
    with pytest.raises(InputError, match=r"latin.csv, line 2501: not UTF-8 text \(byte 10 of "
                                         r"the line\)"):
        read_events(path)
    # Chunks that cut a two-byte character in two are not taken for bad text.
    for size in (7, 64, 1 << 20):
        assert _first_bad_utf8(path, size) == (2501, 10)
    path.write_text("\n".join(rows[:2500]), encoding="utf-8")
    assert _first_bad_utf8(path, 7) == (None, None)


def test_a_semicolon_separated_file_is_named_as_such(write):
    path = write("e.csv", """
        user_id;item_id;timestamp
        u1;a;2024-05-01T10:00:00
        """)
    with pytest.raises(InputError) as err:
        read_events(path)
    assert "the header has one column holding ';': CSV files are read comma-separated" in str(
        err.value.message)


def test_a_refresh_whose_first_item_repeats_the_cached_last_counts_it_once():
    # Training merges an item repeated back to back; a refresh did not across its seam.
    import pandas as pd

    from tfrec.exporter.module import UserCache
    from tfrec.exporter.users import merge_users

    cache = UserCache(ids=np.array(["u1", "u2"], dtype=object),
                      embeddings=np.zeros((2, 2), np.float32),
                      histories=np.array([[0, 3, 5], [0, 0, 4]], np.int32))
    latest = pd.DataFrame({"user": ["u1", "u1", "u2"], "item": [5, 7, 9],
                           "time": [10, 11, 10], "line": [2, 3, 4]})
    users, rows, histories = merge_users(cache, latest, 3)
    assert users.tolist() == ["u1", "u2"] and rows.tolist() == [0, 1]
    assert histories.tolist() == [[3, 5, 7], [0, 4, 9]]
    _, _, kept = merge_users(cache, latest, 3, dedupe_consecutive=False)
    assert kept.tolist() == [[5, 5, 7], [0, 4, 9]]
