"""A CSV line whose quote never closes (the rest of the file would be one value)."""

import gzip

import pytest

from tfrec.data.events import read_events, read_items, unterminated_quote_lines
from tfrec.errors import InputError

# Line 5 of the file (the header is line 1) opens a quote that never closes.
EVENTS = """
    user_id,item_id,timestamp
    u1,a,2024-01-01
    u1,"b ""big"" mug",2024-01-01
    u2,c,2024-01-02
    u2,"d,2024-01-02
    u3,e,2024-01-03
    u3,f,2024-01-03
"""


def test_the_line_is_dropped_counted_and_named_by_its_line_in_the_file(write):
    events, rejections = read_events(write("events.csv", EVENTS))
    assert events["item"].tolist() == ["a", 'b "big" mug', "c", "e", "f"]
    assert events["line"].tolist() == [2, 3, 4, 6, 7]
    assert rejections.counts["events: malformed line"] == 1
    example = rejections.examples["events: malformed line"]
    assert "events.csv, line 5: unterminated quote" in example and "C error" not in example
    assert rejections.rows_read[str(write("events.csv", EVENTS))] == 6
    assert rejections.rows[0]["_line"].tolist() == [5]


def test_strict_names_the_file_the_line_and_the_fix(write, tmp_path):
    path = tmp_path / "events.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(write("plain.csv", EVENTS).read_text())
    with pytest.raises(InputError) as err:
        read_events(path, strict=True)
    assert (err.value.path, err.value.line) == (str(path), 5)
    assert "unterminated quote" in err.value.message and 'as ""' in err.value.message
    assert "C error" not in err.value.message
    events, _ = read_events(path)  # lenient reads the compressed file the same way
    assert events["line"].tolist() == [2, 3, 4, 6, 7]


def test_a_quote_in_the_header_is_an_error_even_when_lenient(write):
    path = write("items.csv", 'item_id,"text\na,red mug\n')
    with pytest.raises(InputError, match=r"items\.csv, line 1: unterminated quote"):
        read_items(path)


def test_unterminated_quotes_are_found_as_csv_reads_quotes():
    # A quote inside an unquoted value is a literal; "" inside a quoted value too.
    assert unterminated_quote_lines(
        ['id,text', 'a,2"in', 'b,"ok ""x""",y', 'c,"bad', 'd,e']) == [4]
    # A quoted value may run over two lines (2-3); line 4's quote never closes.
    assert unterminated_quote_lines(['id,text', 'a,"one', 'two",x', 'c,"bad']) == [4]
    assert unterminated_quote_lines(['id,text', 'a,"one', 'two",x']) == []
    # The separator decides where a value starts.
    assert unterminated_quote_lines(['id\ttext', 'a\t"x'], sep="\t") == [2]
    assert unterminated_quote_lines(['id\ttext', 'a\t"x'], sep=",") == []
