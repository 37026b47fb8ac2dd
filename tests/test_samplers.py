"""Negative samplers: what each proposes, and the registry of `model.negatives`."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfrec.config import ModelConfig, PairConfig, SessionConfig
from tfrec.data.pipeline import PairPipeline
from tfrec.data.sequences import NextItemPipeline
from tfrec.data.sessions import sessionize
from tfrec.data.synthetic import generate_events, generate_items
from tfrec.data.vocab import build_vocabulary
from tfrec.errors import InputError
from tfrec.models import build_model
from tfrec.tasks import (SAMPLERS, CatalogueSampler, InBatchSampler, MixedSampler,
                         SkipGramTask, UniformSampler, build_sampler)

POSITIVES = tf.constant([3, 1, 3, 7])
PROBABILITY = tf.constant([0.1, 0.4, 0.1, 0.0])


def test_in_batch_proposes_the_batch_with_its_log_probabilities():
    c = InBatchSampler().sample(POSITIVES, 9, PROBABILITY)
    assert c.ids.numpy().tolist() == [3, 1, 3, 7] and c.labels.numpy().tolist() == [0, 1, 2, 3]
    # A probability of 0 is clipped (as TFRS does), not an infinite correction.
    np.testing.assert_allclose(c.log_q.numpy(), np.log([0.1, 0.4, 0.1, 1e-6]), rtol=1e-6)
    assert c.remove_accidental_hits and c.valid is None
    assert InBatchSampler().sample(POSITIVES, 9).log_q is None


def test_catalogue_proposes_every_warm_item_once():
    c = CatalogueSampler().sample(POSITIVES, 9)
    assert c.ids.numpy().tolist() == list(range(1, 10))
    assert c.labels.numpy().tolist() == [2, 0, 2, 6]  # the positive's own column
    assert c.log_q is None and not c.remove_accidental_hits
    # A positive it does not score (0, or an item without an id embedding) is named.
    for positive, message in ((0, "a next_item is 0"),
                              (10, "a next_item is an item without an id embedding")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"CatalogueSampler: {message}"):
            CatalogueSampler().sample(tf.constant([3, positive]), 9)


def test_uniform_draws_warm_items_evenly_and_shows_each_query_its_own_positive_only():
    sampler = UniformSampler(num_sampled=20_000, seed=3)
    c = sampler.sample(POSITIVES, 5)
    ids = c.ids.numpy()
    assert ids[:4].tolist() == [3, 1, 3, 7] and len(ids) == 20_004
    counts = np.bincount(ids[4:], minlength=7)
    assert counts[0] == 0 and counts[6] == 0           # never OOV, never past the warm items
    assert np.all(np.abs(counts[1:6] / 20_000 - 0.2) < 0.02), counts
    valid = c.valid.numpy()
    assert valid.shape == (4, 20_004)
    assert (valid[:, :4] == np.eye(4, dtype=bool)).all() and valid[:, 4:].all()
    assert c.remove_accidental_hits and c.log_q is None


def test_mixed_adds_a_uniform_sample_to_the_batch_each_corrected_by_its_proposal():
    c = MixedSampler(num_sampled=6, seed=1).sample(POSITIVES, 12, PROBABILITY)
    ids = c.ids.numpy()
    assert ids[:4].tolist() == [3, 1, 3, 7] and len(ids) == 10
    assert ((ids[4:] >= 1) & (ids[4:] <= 12)).all()
    expected = np.log(np.concatenate([4 * np.array([0.1, 0.4, 0.1, 1e-6]), [6 / 12] * 6]))
    np.testing.assert_allclose(c.log_q.numpy(), expected, rtol=1e-5)
    assert c.labels.numpy().tolist() == [0, 1, 2, 3] and c.valid is None
    # Without candidate probabilities the batch is taken as uniform over the warm items.
    np.testing.assert_allclose(MixedSampler(6).sample(POSITIVES, 12).log_q.numpy()[:4],
                               np.log(4 / 12), rtol=1e-5)


def test_the_registry_builds_each_setting_value_and_refuses_an_unknown_one():
    assert set(SAMPLERS) == {"in_batch", "catalogue", "sampled", "mixed"}
    built = {name: build_sampler(name, num_sampled=5, seed=1) for name in SAMPLERS}
    assert [type(s) for s in built.values()] == [InBatchSampler, CatalogueSampler,
                                                 UniformSampler, MixedSampler]
    assert built["sampled"].num_sampled == 5 and built["mixed"].seed == 1
    with pytest.raises(InputError) as err:
        build_sampler("hard", num_sampled=5, seed=1)
    assert err.value.key == "model.negatives"
    assert all(repr(name) in err.value.reason for name in SAMPLERS)


def test_hand_built_samplers_and_tasks_refuse_what_cannot_train():
    from tfrec.tasks import RetrievalTask

    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="num_sampled must be a positive integer"):
            MixedSampler(num_sampled=bad)
    with pytest.raises(TypeError, match=r"got the name 'mixed': build it with "
                                        r"tfrec\.tasks\.build_sampler\('mixed'"):
        RetrievalTask("mixed", temperature=0.1, weight=1.0)
    with pytest.raises(TypeError, match=r"got the class InBatchSampler: pass an instance"):
        RetrievalTask(InBatchSampler, temperature=0.1, weight=1.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be above 0 and finite"):
            RetrievalTask(InBatchSampler(), temperature=bad, weight=1.0)
        with pytest.raises(ValueError, match="SkipGramTask: temperature must be above 0"):
            SkipGramTask(temperature=bad, weight=1.0)
    assert RetrievalTask(UniformSampler(3), temperature=0.1, weight=1.0).sampler.num_sampled == 3


@pytest.fixture(scope="module")
def world():
    events = generate_events(3000, 60, num_users=300, num_clusters=4, seed=2)
    items = generate_items(60, num_clusters=4, num_cold=4, seed=2)
    vocab = build_vocabulary(events, items)
    return vocab, sessionize(events, vocab, SessionConfig())


def test_build_model_refuses_an_unknown_sampler_naming_the_setting(world):
    vocab, _ = world
    config = ModelConfig(negatives="hard")  # the settings do not know the samplers
    with pytest.raises(InputError) as err:
        build_model(config, vocab)
    assert err.value.key == "model.negatives" and "'mixed'" in err.value.reason


@pytest.mark.parametrize("negatives", sorted(SAMPLERS))
def test_the_model_trains_with_each_sampler(world, negatives):
    vocab, sessions = world
    model = build_model(ModelConfig(embedding_dim=8, use_text=False, objective="both",
                                    negatives=negatives, num_sampled=16), vocab, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    before = model.item_embeddings()
    pairs = PairPipeline(sessions, vocab, PairConfig(batch_size=128, seed=1), workers=1)
    next_items = NextItemPipeline(sessions, vocab, 10, batch_size=64, seed=1)
    dataset = tf.data.Dataset.zip((pairs.as_dataset(), next_items.as_dataset(repeat=True)))
    dataset = dataset.map(lambda a, b: {**a, **b}).take(8)
    # The same 8 batches throughout (each pass over the pipelines is a new epoch).
    batches = list(dataset.as_numpy_iterator())
    fixed = tf.data.Dataset.from_generator(lambda: iter(batches),
                                           output_signature=dataset.element_spec)
    start = model.evaluate(fixed, verbose=0, return_dict=True)["loss"]
    history = model.fit(fixed, epochs=4, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    end = model.evaluate(fixed, verbose=0, return_dict=True)["loss"]
    assert end < 0.95 * start, (start, end, history["loss"])
    assert np.abs(model.item_embeddings() - before).max() > 1e-2
