import numpy as np
import pandas as pd
import pytest

from tfrec.config import SessionConfig
from tfrec.data.sessions import sessionize
from tfrec.data.skipgram import KIND_GLOBAL, keep_probabilities, skipgram_pairs
from tfrec.data.vocab import build_vocabulary

T0 = 1_700_000_000


def sessions_of(lists, events=None, weights=None):
    """Sessions from lists of item ids (one user each, one minute apart)."""
    rows = []
    for s, items in enumerate(lists):
        for k, item in enumerate(items):
            rows.append((f"u{s}", item, T0 + 60 * k, (events or {}).get((s, k), "click")))
    frame = pd.DataFrame(rows, columns=["user", "item", "time", "event"])
    frame["session"] = None
    frame["line"] = np.arange(len(frame))
    vocab = build_vocabulary(frame)
    return sessionize(frame, vocab, SessionConfig(), event_weights=weights), vocab


def as_id_pairs(pairs, vocab, kind=None):
    mask = np.ones(len(pairs["target"]), bool) if kind is None else pairs["kind"] == kind
    return sorted(zip(vocab.ids[pairs["target"][mask]], vocab.ids[pairs["context"][mask]]))


def test_window_one_by_hand():
    sessions, vocab = sessions_of([["a", "b", "c"], ["d", "e"]])
    pairs = skipgram_pairs(sessions, window=1)
    assert as_id_pairs(pairs, vocab) == sorted([
        ("a", "b"), ("b", "a"), ("b", "c"), ("c", "b"), ("d", "e"), ("e", "d")])


def test_window_two_by_hand():
    sessions, vocab = sessions_of([["a", "b", "c", "d"]])
    pairs = skipgram_pairs(sessions, window=2)
    expected = [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("b", "d"),
                ("c", "a"), ("c", "b"), ("c", "d"), ("d", "b"), ("d", "c")]
    assert as_id_pairs(pairs, vocab) == sorted(expected)


def test_window_never_crosses_sessions():
    sessions, vocab = sessions_of([["a"], ["b", "c"], ["d"]])
    pairs = skipgram_pairs(sessions, window=5)
    assert as_id_pairs(pairs, vocab) == [("b", "c"), ("c", "b")]


def test_set_mode_pairs_every_item_with_every_other():
    sessions, vocab = sessions_of([["a", "b", "c", "d", "e"], ["x", "y"]])
    pairs = skipgram_pairs(sessions, window=None)
    basket = "abcde"
    expected = [(p, q) for p in basket for q in basket if p != q] + [("x", "y"), ("y", "x")]
    assert as_id_pairs(pairs, vocab) == sorted(expected)


def test_self_pairs_are_dropped():
    sessions, vocab = sessions_of([["a", "b", "a"]])
    pairs = skipgram_pairs(sessions, window=2)
    assert ("a", "a") not in as_id_pairs(pairs, vocab)
    assert as_id_pairs(pairs, vocab) == [("a", "b"), ("a", "b"), ("b", "a"), ("b", "a")]


def test_global_context_pairs_every_item_with_converted_item():
    # Session 0 converts on "d" (last event); window 1 cannot reach "a" -> "d".
    sessions, vocab = sessions_of([["a", "b", "c", "d"], ["x", "y"]],
                                  events={(0, 3): "purchase"}, weights={"purchase": 3.0})
    pairs = skipgram_pairs(sessions, window=1, global_context=True)
    assert as_id_pairs(pairs, vocab, KIND_GLOBAL) == [("a", "d"), ("b", "d"), ("c", "d")]
    # Window pairs are unchanged by global context.
    without = skipgram_pairs(sessions, window=1, global_context=False)
    assert as_id_pairs(pairs, vocab, 0) == as_id_pairs(without, vocab)
    glob = pairs["kind"] == KIND_GLOBAL
    assert np.all(pairs["weight"][glob] == 3.0)


def test_pair_weight_is_larger_event_weight():
    sessions, vocab = sessions_of([["a", "b", "c"]], events={(0, 2): "purchase"},
                                  weights={"purchase": 5.0})
    pairs = skipgram_pairs(sessions, window=1, global_context=False)
    got = {(vocab.ids[t], vocab.ids[c]): w
           for t, c, w in zip(pairs["target"], pairs["context"], pairs["weight"])}
    assert got == {("a", "b"): 1.0, ("b", "a"): 1.0, ("b", "c"): 5.0, ("c", "b"): 5.0}


def test_window_runs_over_subsampled_events():
    sessions, vocab = sessions_of([["a", "b", "c"]])
    keep = np.array([True, False, True])
    pairs = skipgram_pairs(sessions, window=1, keep=keep)
    assert as_id_pairs(pairs, vocab) == [("a", "c"), ("c", "a")]


def test_keep_probability_is_word2vec_formula():
    counts = np.array([0, 1000, 10, 1], dtype=np.int64)
    t = 1e-2
    keep = keep_probabilities(counts, t)
    f = counts / counts.sum()
    expected = np.minimum((np.sqrt(f[1:] / t) + 1) * t / f[1:], 1.0)
    np.testing.assert_allclose(keep[1:], expected, rtol=1e-6)
    assert keep[1] < 0.2 and keep[3] == 1.0
    assert np.all(keep_probabilities(counts, 0) == 1.0)


@pytest.mark.parametrize("window", [1, 3, None])
def test_vectorised_pairs_match_a_plain_loop(window):
    rng = np.random.RandomState(42)
    lists = [[f"i{k}" for k in rng.randint(0, 30, rng.randint(1, 9))] for _ in range(40)]
    sessions, vocab = sessions_of(lists)
    got = as_id_pairs(skipgram_pairs(sessions, window=window), vocab)
    expected = []
    for items in sessions.to_lists(vocab):
        w = len(items) if window is None else window
        for i, centre in enumerate(items):
            for j in range(max(0, i - w), min(len(items), i + w + 1)):
                if j != i and items[j] != centre:
                    expected.append((centre, items[j]))
    assert got == sorted(expected)
