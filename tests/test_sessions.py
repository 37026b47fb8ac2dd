import numpy as np
import pandas as pd
import pytest

from tfrec.config import SessionConfig
from tfrec.data.sessions import sessionize
from tfrec.data.vocab import build_vocabulary
from tfrec.errors import InputError

T0 = 1_700_000_000


def frame(rows):
    """rows: (user, item, seconds after T0[, event[, session]])."""
    rows = [tuple(r) + (None,) * (5 - len(r)) for r in rows]
    return pd.DataFrame({
        "user": [r[0] for r in rows], "item": [r[1] for r in rows],
        "time": np.array([T0 + r[2] for r in rows], dtype=np.int64),
        "event": [r[3] for r in rows], "session": [r[4] for r in rows],
        "line": np.arange(2, len(rows) + 2)})


def session_items(events, **config):
    vocab = build_vocabulary(events)
    sessions = sessionize(events, vocab, SessionConfig(**config))
    return sessions.to_lists(vocab), sessions


def test_split_exactly_at_gap_boundary():
    gap = 30 * 60
    events = frame([("u", "a", 0), ("u", "b", gap), ("u", "c", 2 * gap + 1),
                    ("u", "d", 2 * gap + 1 + gap - 1)])
    lists, _ = session_items(events)
    # a gap of exactly 30 minutes stays in the session; one second more splits.
    assert lists == [["a", "b"], ["c", "d"]]


def test_gap_is_configurable():
    events = frame([("u", "a", 0), ("u", "b", 301), ("u", "c", 400)])
    lists, _ = session_items(events, gap_minutes=5)
    assert lists == [["a"], ["b", "c"]]


def test_users_and_time_order():
    # File order is scrambled; sessions follow each user's time order.
    events = frame([("u2", "x", 50), ("u1", "b", 20), ("u1", "a", 10), ("u2", "y", 60)])
    lists, sessions = session_items(events)
    assert sorted(lists) == [["a", "b"], ["x", "y"]]
    assert sessions.stats["users"] == 2


def test_session_id_change_splits_even_without_gap():
    events = frame([("u", "a", 0, None, "s1"), ("u", "b", 0, None, "s1"),
                    ("u", "c", 0, None, "s2"), ("u", "d", 60, None, "s2")])
    lists, _ = session_items(events)
    assert lists == [["a", "b"], ["c", "d"]]


def test_same_timestamp_keeps_file_order():
    events = frame([("u", "c", 0), ("u", "a", 0), ("u", "b", 0)])
    lists, _ = session_items(events)
    assert lists == [["c", "a", "b"]]


def test_cap_cuts_long_sessions_into_pieces_and_keeps_every_event():
    events = frame([("u", f"i{k}", k) for k in range(7)])
    lists, sessions = session_items(events, max_length=3)
    assert lists == [["i0", "i1", "i2"], ["i3", "i4", "i5"], ["i6"]]
    assert sessions.stats["sessions"] == 1
    assert sessions.stats["capped_sessions"] == 1
    assert sessions.stats["pieces"] == 3


def test_consecutive_repeats_merge_and_keep_conversion():
    events = frame([("u", "a", 0, "click"), ("u", "a", 5, "purchase"), ("u", "b", 9, "click"),
                    ("u", "a", 12, "click")])
    lists, sessions = session_items(events)
    assert lists == [["a", "b", "a"]]
    assert sessions.stats["merged_repeats"] == 1
    assert sessions.is_conversion.tolist() == [True, False, False]


def test_converted_item_is_last_conversion_and_shared_by_pieces():
    events = frame([("u", "a", 0, "click"), ("u", "b", 1, "purchase"), ("u", "c", 2, "click"),
                    ("u", "d", 3, "book"), ("u", "e", 4, "click"), ("v", "x", 0, "click")])
    vocab = build_vocabulary(events)
    sessions = sessionize(events, vocab, SessionConfig(max_length=2),
                          event_weights={"purchase": 3.0, "book": 4.0})
    lists = sessions.to_lists(vocab)
    assert lists == [["a", "b"], ["c", "d"], ["e"], ["x"]]
    converted = [vocab.ids[c] if c >= 0 else None for c in sessions.converted]
    assert converted == ["d", "d", "d", None]
    assert sessions.converted_weight.tolist() == [4.0, 4.0, 4.0, 0.0]
    assert sessions.weights.tolist() == [1.0, 3.0, 1.0, 4.0, 1.0, 1.0]


@pytest.mark.parametrize("config, key", [({"gap_minutes": 0}, "gap_minutes"),
                                         ({"max_length": 1}, "max_length")])
def test_bad_settings_name_the_key(config, key):
    events = frame([("u", "a", 0)])
    with pytest.raises(InputError, match=key):
        session_items(events, **config)


def test_session_order_decides_the_auto_retrieval_context():
    from tfrec.data.sessions import resolve_retrieval_context, session_order

    # Baskets: every line of an invoice shares one timestamp.
    baskets = frame([("u", "a", 0, None, "i1"), ("u", "b", 0, None, "i1"),
                     ("u", "c", 0, None, "i1"), ("v", "a", 60, None, "i2"),
                     ("v", "c", 60, None, "i2"), ("w", "b", 90, None, "i3")])
    _, sessions = session_items(baskets)
    assert sessions.stats["multi_event_sessions"] == 2
    assert sessions.stats["unordered_sessions"] == 2
    assert session_order(sessions) == "unordered"
    assert resolve_retrieval_context("auto", sessions) == "session"
    # Clicks: events a minute apart within a visit; one basket-like visit of three.
    clicks = frame([("u", "a", 0), ("u", "b", 60), ("u", "c", 120), ("v", "a", 0),
                    ("v", "b", 30), ("w", "a", 5), ("w", "b", 5), ("w", "c", 5)])
    _, sessions = session_items(clicks)
    assert (sessions.stats["multi_event_sessions"], sessions.stats["unordered_sessions"]) == (3, 1)
    assert session_order(sessions) == "ordered"
    assert resolve_retrieval_context("auto", sessions) == "previous"
    # A setting the user made is kept as it is.
    assert resolve_retrieval_context("session", sessions) == "session"


def test_a_declared_conversion_type_weighs_as_a_conversion():
    from tfrec.run import load_run_config

    config = load_run_config(None, ["data.sessions.conversion_types=[like, Apply]",
                                    "data.pairs.event_weights.apply=2"])
    weights = config.data.pairs.event_weights
    assert weights["like"] == config.data.pairs.conversion_weight == 3.0  # not listed
    assert weights["apply"] == 2.0  # listed: the user's weight stands
    assert weights["click"] == 1.0
    config = load_run_config(None, ["data.sessions.conversion_types=[like]",
                                    "data.pairs.conversion_weight=5"])
    assert config.data.pairs.event_weights["like"] == 5.0
