import collections

import numpy as np
import pandas as pd
import pytest

from tfrec.config import PairConfig, SessionConfig
from tfrec.data.pipeline import PairPipeline
from tfrec.data.sessions import sessionize
from tfrec.data.skipgram import skipgram_pairs
from tfrec.data.synthetic import generate_events
from tfrec.data.vocab import build_vocabulary
from tfrec.errors import InputError


@pytest.fixture(scope="module")
def corpus():
    events = generate_events(20_000, 300, seed=42)
    vocab = build_vocabulary(events)
    return sessionize(events, vocab, SessionConfig()), vocab


def pipeline(corpus, **overrides):
    sessions, vocab = corpus
    config = dict(batch_size=256, chunk_events=3000, seed=42)
    config.update(overrides)
    return PairPipeline(sessions, vocab, PairConfig(**config), workers=1)


def test_batches_have_the_documented_shapes(corpus):
    p = pipeline(corpus, num_negatives=4, market_negatives=0)
    batches = list(p.epoch(0))
    assert all(len(b["target"]) == 256 for b in batches[:-1])
    assert 0 < len(batches[-1]["target"]) <= 256
    b = batches[0]
    assert b["target"].dtype == np.int32 and b["context"].dtype == np.int32
    assert b["negatives"].shape == (256, 4) and b["negatives"].dtype == np.int32
    assert b["weight"].dtype == np.float32


def test_an_epoch_holds_every_pair_exactly_once(corpus):
    sessions, vocab = corpus
    p = pipeline(corpus, subsample=0.0)
    got = p.all_pairs(0)
    expected = skipgram_pairs(sessions, window=5, global_context=True)

    def as_counter(d):
        return collections.Counter(zip(d["target"].tolist(), d["context"].tolist()))

    assert as_counter(got) == as_counter(expected)
    # ... but shuffled, not in generation order.
    assert not np.array_equal(got["target"], expected["target"])


def test_same_seed_same_batches_other_seed_other_batches(corpus):
    a = pipeline(corpus).all_pairs(0)
    b = pipeline(corpus).all_pairs(0)
    c = pipeline(corpus, seed=7).all_pairs(0)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["negatives"], c["negatives"])


def test_epochs_differ_and_thread_count_does_not_matter(corpus):
    sessions, vocab = corpus
    config = PairConfig(batch_size=256, chunk_events=3000)
    one = PairPipeline(sessions, vocab, config, workers=1)
    two = PairPipeline(sessions, vocab, config, workers=2)
    e0, e0_two, e1 = one.all_pairs(0), two.all_pairs(0), one.all_pairs(1)
    for key in e0:
        np.testing.assert_array_equal(e0[key], e0_two[key])
    assert not np.array_equal(e0["target"][:1000], e1["target"][:1000])


def test_negatives_avoid_the_positive_context(corpus):
    pairs = pipeline(corpus, num_negatives=5).all_pairs(0)
    clash = (pairs["negatives"] == pairs["context"][:, None]).mean()
    assert clash < 1e-3


def test_market_negatives_come_last_and_from_centre_market():
    events = generate_events(5000, 100, seed=3)
    rng = np.random.RandomState(42)
    items = pd.DataFrame({"item": [f"i{k}" for k in range(100)],
                          "text": [f"item {k}" for k in range(100)],
                          "market": [f"m{k}" for k in rng.randint(0, 4, 100)]})
    vocab = build_vocabulary(events, items)
    sessions = sessionize(events, vocab)
    p = PairPipeline(sessions, vocab, PairConfig(num_negatives=2, market_negatives=3,
                                                 batch_size=128), workers=1)
    pairs = p.all_pairs(0)
    assert pairs["negatives"].shape[1] == 5
    market_part = pairs["negatives"][:, 2:]
    assert np.all(vocab.market[market_part] == vocab.market[pairs["target"]][:, None])


def test_subsampling_drops_frequent_items_more(corpus):
    sessions, vocab = corpus
    full = pipeline(corpus, subsample=0.0).all_pairs(0)
    sub = pipeline(corpus, subsample=1e-3).all_pairs(0)
    top = 1  # the most frequent item has index 1

    def share(d):
        return (d["target"] == top).mean()

    assert len(sub["target"]) < len(full["target"])
    assert share(sub) < share(full)


def test_empty_training_set_is_a_clear_error(corpus):
    sessions, vocab = corpus
    with pytest.raises(InputError, match="training set is empty"):
        PairPipeline(sessions.slice(0, 0), vocab, PairConfig())


@pytest.mark.parametrize("key, value", [("window", 0), ("mode", "skip"), ("num_negatives", -1),
                                        ("batch_size", 0), ("subsample", -1.0)])
def test_bad_pair_settings_name_the_key(key, value):
    with pytest.raises(InputError, match=key):
        PairConfig(**{key: value})


def test_dataset_feeds_keras_fit(corpus):
    import tensorflow as tf
    import tf_keras as keras

    p = pipeline(corpus, num_negatives=3)
    ds = p.as_dataset()
    spec = ds.element_spec
    assert spec["negatives"].shape.as_list() == [None, 3]
    first = next(iter(ds))
    np.testing.assert_array_equal(first["target"].numpy(), next(p.epoch(0))["target"])

    size = corpus[1].size

    class SkipGram(keras.Model):
        def __init__(self):
            super().__init__()
            self.target_emb = keras.layers.Embedding(size, 8)
            self.context_emb = keras.layers.Embedding(size, 8)

        def train_step(self, batch):
            with tf.GradientTape() as tape:
                t = self.target_emb(batch["target"])
                pos = tf.reduce_sum(t * self.context_emb(batch["context"]), -1)
                neg = tf.einsum("bd,bkd->bk", t, self.context_emb(batch["negatives"]))
                loss = tf.reduce_mean(batch["weight"] * (
                    tf.nn.softplus(-pos) + tf.reduce_sum(tf.nn.softplus(neg), -1)))
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            return {"loss": loss}

    model = SkipGram()
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    history = model.fit(ds.take(40), epochs=2, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and losses[1] < losses[0]


def test_retrieval_queries_previous_and_whole_session():
    from tfrec.data.sequences import NextItemPipeline, context_matrix, history_matrix

    items = np.array([1, 2, 3, 4, 5])
    session_of = np.array([0, 0, 0, 1, 1])
    positions = np.array([1, 3])
    # The 4 events before each position, most recent last.
    assert history_matrix(items, session_of, positions, 4).tolist() == [
        [0, 0, 0, 1], [0, 0, 0, 0]]
    # Two before and two after, the position itself left out, within the session only.
    assert context_matrix(items, session_of, positions, 4).tolist() == [
        [0, 1, 3, 0], [0, 0, 5, 0]]
    events = pd.DataFrame({"user": ["a"] * 3 + ["b"] * 2 + ["c"],
                           "item": ["x", "y", "z", "x", "y", "z"],
                           "time": [0, 60, 120, 0, 60, 0], "session": None, "event": None,
                           "line": range(6)})
    vocab = build_vocabulary(events)
    sessions = sessionize(events, vocab, SessionConfig())
    nxt = NextItemPipeline(sessions, vocab, 4, context="previous")
    whole = NextItemPipeline(sessions, vocab, 4, context="session")
    # previous: every event but the first of its session; session: every event of a
    # session of two or more (the lone event of user c is in neither).
    assert (nxt.num_examples, whole.num_examples) == (3, 5)
    batch = next(whole.epoch(0))
    for history, target in zip(batch["history"], batch["next_item"]):
        assert target not in history and (history > 0).sum() >= 1
    with pytest.raises(InputError, match="retrieval context"):
        NextItemPipeline(sessions, vocab, 4, context="future")


def test_set_epoch_starts_the_dataset_at_that_epoch(corpus):
    """A resumed run continues the pipelines where an uninterrupted run would be."""
    from tfrec.data.sequences import NextItemPipeline

    sessions, vocab = corpus
    pairs = pipeline(corpus)
    nxt = NextItemPipeline(sessions, vocab, 4, batch_size=512, seed=42)
    for p in (pairs, nxt):
        p.set_epoch(2)
        dataset = p.as_dataset()
        for epoch in (2, 3):  # each pass the next epoch, counted from the one set
            first = next(iter(dataset.take(1)))
            expected = next(p.epoch(epoch))
            key = "target" if p is pairs else "next_item"
            np.testing.assert_array_equal(first[key].numpy(), expected[key])
        assert not np.array_equal(next(p.epoch(0))[key], expected[key])


def test_no_session_of_two_events_names_the_sessions_settings():
    from tfrec.data.sequences import NextItemPipeline
    from tfrec.errors import InputError

    events = pd.DataFrame({"user": ["u1", "u2", "u3"], "item": ["a", "b", "a"],
                           "time": [0, 10, 20], "event": [pd.NA] * 3, "session": [pd.NA] * 3})
    vocab = build_vocabulary(events)
    sessions = sessionize(events, vocab, SessionConfig())
    with pytest.raises(InputError, match="no session has two events") as err:
        NextItemPipeline(sessions, vocab, 5, batch_size=4)
    assert err.value.key == "data.sessions.gap_minutes"
    assert "data.events_schema.session_col" in str(err.value)
