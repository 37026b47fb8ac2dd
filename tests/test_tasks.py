"""Each task's loss against the value worked out by hand in numpy (TFRS `retrieval_test.py`)."""

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec.tasks import (PAIRS, CatalogueSampler, InBatchSampler, MixedSampler,
                         RetrievalTask, SkipGramTask, UniformSampler)
from tfrec.tasks.samplers import SampledCandidates

RNG = np.random.RandomState(42)
# Item embeddings of a catalogue of 6 (0 is the OOV bucket); warm items 1..4.
TABLE = RNG.normal(size=(6, 3)).astype(np.float32)
NUM_ID_ITEMS = 5


class FakeEncoder:
    """An item encoder whose embeddings are TABLE rows, with a fixed alignment loss."""

    num_id_items = NUM_ID_ITEMS

    def __init__(self):
        self.calls = []

    def encode(self, ids, training=False):
        self.calls.append(ids.numpy())
        return tf.gather(tf.constant(TABLE), ids), tf.constant(0.25)


class FakeQueryTower:
    """The query of each history is the given row of QUERIES."""

    def __init__(self, queries):
        self.queries = tf.constant(queries, tf.float32)

    def __call__(self, history, training=False):
        return self.queries


def log_softmax_loss(logits, label):
    """-log softmax(logits)[label] over the finite logits of one row."""
    logits = np.asarray(logits, np.float64)
    finite = logits[np.isfinite(logits)]
    top = finite.max()
    return -(logits[label] - top - np.log(np.exp(finite - top).sum()))


def test_skipgram_loss_with_weights_and_bias():
    target, context = np.array([1, 2]), np.array([3, 4])
    negatives = np.array([[5, 1], [2, 3]])
    weight = np.array([1.0, 0.5], np.float32)
    task = SkipGramTask(temperature=0.5, weight=1.0)
    task.logit_bias.assign(0.3)
    encoder = FakeEncoder()
    loss, alignment = task({"target": tf.constant(target), "context": tf.constant(context),
                            "negatives": tf.constant(negatives), "weight": tf.constant(weight)},
                           item_encoder=encoder)
    expected = 0.0
    for b in range(2):
        t = TABLE[target[b]]
        logits = np.array([t @ TABLE[context[b]]] + [t @ TABLE[n] for n in negatives[b]])
        logits = logits / 0.5 + 0.3
        labels = np.array([1.0, 0.0, 0.0])
        bce = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
        expected += weight[b] * bce.mean() / 2  # batch mean of the weighted pair losses
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    assert float(alignment) == 0.25
    # One encoder call for targets, contexts and negatives.
    assert len(encoder.calls) == 1 and encoder.calls[0].tolist() == [1, 2, 3, 4, 5, 1, 2, 3]
    # Without weights every pair counts 1: the plain batch mean.
    unweighted, _ = task({"target": tf.constant(target), "context": tf.constant(context),
                          "negatives": tf.constant(negatives)}, item_encoder=encoder)
    assert abs(float(unweighted) - float(loss)) > 1e-4
    assert task.stream == PAIRS and "negatives" in task.feature_names


QUERIES = RNG.normal(size=(3, 3)).astype(np.float32)
FEATURES = {"history": tf.zeros([3, 2], tf.int32), "next_item": tf.constant([1, 2, 1]),
            "candidate_probability": tf.constant([0.5, 0.25, 0.5])}


def retrieval_loss(sampler, features=FEATURES, temperature=0.2):
    task = RetrievalTask(sampler, temperature=temperature, weight=1.0)
    encoder = FakeEncoder()
    loss, alignment = task(features, item_encoder=encoder, query_tower=FakeQueryTower(QUERIES))
    assert float(alignment) == 0.25 and len(encoder.calls) == 1
    return float(loss), encoder.calls[0]


def test_in_batch_softmax_with_logq_and_accidental_hits():
    loss, encoded = retrieval_loss(InBatchSampler())
    positive = np.array([1, 2, 1])
    log_q = np.log([0.5, 0.25, 0.5])
    expected = []
    for b in range(3):
        logits = QUERIES[b] @ TABLE[positive].T / 0.2 - log_q
        # Row 0's and row 2's positive is item 1: the other's column is the same item.
        logits[(positive == positive[b]) & (np.arange(3) != b)] = -np.inf
        expected.append(log_softmax_loss(logits, b))
    np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)
    assert encoded.tolist() == [1, 2, 1]
    # TFRS' own Retrieval task (a sum over the batch) agrees.
    reference = tfrs.tasks.Retrieval(temperature=0.2, remove_accidental_hits=True)(
        tf.constant(QUERIES), tf.constant(TABLE[positive]),
        candidate_sampling_probability=FEATURES["candidate_probability"],
        candidate_ids=tf.constant(positive), compute_metrics=False)
    np.testing.assert_allclose(loss, float(reference) / 3, rtol=1e-5)


def test_catalogue_softmax_over_the_warm_items():
    loss, encoded = retrieval_loss(CatalogueSampler())
    assert encoded.tolist() == [1, 2, 3, 4]  # items 1..num_warm, cold item 5 left out
    expected = [log_softmax_loss(QUERIES[b] @ TABLE[1:5].T / 0.2, p - 1)
                for b, p in enumerate([1, 2, 1])]
    np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)


def sampled_and_expected(sampler, in_batch):
    """The task's loss on the sampler's own draw, and the loss worked out by hand."""
    positive = np.array([1, 2, 1])
    candidates = sampler.sample(tf.constant(positive), 4,
                                FEATURES["candidate_probability"])
    ids = candidates.ids.numpy()
    sampled = ids[3:]
    task = RetrievalTask(sampler, temperature=0.2, weight=1.0)
    loss = float(task.loss_of(tf.constant(QUERIES), tf.constant(TABLE[ids]), candidates,
                              tf.constant(positive)))
    m = len(sampled)
    expected = []
    for b in range(3):
        q = QUERIES[b]
        if in_batch:
            columns = list(positive) + list(sampled)
            logits = np.array([q @ TABLE[c] for c in columns]) / 0.2
            logits[:3] -= np.log(3 * np.array([0.5, 0.25, 0.5]))   # log(B q)
            logits[3:] -= np.log(m / 4)                             # log(M / num_warm)
            hit = (np.array(columns) == positive[b]) & (np.arange(len(columns)) != b)
            logits[hit] = -np.inf
            expected.append(log_softmax_loss(logits, b))
        else:
            # Its own positive and the sample; the other rows' positives are not in it.
            logits = np.array([q @ TABLE[positive[b]]]
                              + [-np.inf if s == positive[b] else q @ TABLE[s] for s in sampled])
            expected.append(log_softmax_loss(logits / 0.2, 0))
    return loss, float(np.mean(expected)), sampled


def test_uniform_sampled_softmax_masks_accidental_hits():
    # 12 draws from 4 warm items: the positives are drawn too (accidental hits).
    loss, expected, sampled = sampled_and_expected(UniformSampler(num_sampled=12, seed=1),
                                                   in_batch=False)
    assert {1, 2} <= set(sampled.tolist())
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # And through the task's call: the positives and the sample in one encoder call.
    _, encoded = retrieval_loss(UniformSampler(num_sampled=12, seed=1))
    assert encoded[:3].tolist() == [1, 2, 1] and len(encoded) == 15


def test_mixed_sampling_corrects_each_part_by_its_own_proposal():
    loss, expected, sampled = sampled_and_expected(MixedSampler(num_sampled=6, seed=2),
                                                   in_batch=True)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    _, encoded = retrieval_loss(MixedSampler(num_sampled=6, seed=2))
    assert encoded[:3].tolist() == [1, 2, 1] and len(encoded) == 9


def test_a_hidden_column_leaves_the_softmax():
    # valid=False hides a column exactly as an accidental hit does.
    candidates = SampledCandidates(ids=tf.constant([1, 2, 3]), labels=tf.constant([0]),
                                   valid=tf.constant([[True, False, True]]))
    task = RetrievalTask(InBatchSampler(), temperature=1.0, weight=1.0)
    query = tf.constant(QUERIES[:1])
    loss = float(task.loss_of(query, tf.constant(TABLE[[1, 2, 3]]), candidates,
                              tf.constant([1])))
    logits = QUERIES[0] @ TABLE[[1, 3]].T
    np.testing.assert_allclose(loss, log_softmax_loss(logits, 0), rtol=1e-5)


def test_losses_are_divided_by_the_replicas(monkeypatch):
    # Under a tf.distribute strategy the replicas' gradients are summed: each
    # replica's batch mean is divided by their number, so the sum is the mean.
    from tfrec.tasks import retrieval, skipgram

    alone, _ = retrieval_loss(CatalogueSampler())
    pairs = {"target": tf.constant([1, 2]), "context": tf.constant([3, 4]),
             "negatives": tf.constant([[5], [1]])}
    skip_alone = float(SkipGramTask(temperature=0.5, weight=1.0)(
        pairs, item_encoder=FakeEncoder())[0])
    monkeypatch.setattr(retrieval, "replicas", lambda: 4)
    monkeypatch.setattr(skipgram, "replicas", lambda: 4)
    np.testing.assert_allclose(retrieval_loss(CatalogueSampler())[0], alone / 4, rtol=1e-6)
    np.testing.assert_allclose(float(SkipGramTask(temperature=0.5, weight=1.0)(
        pairs, item_encoder=FakeEncoder())[0]), skip_alone / 4, rtol=1e-6)


def test_tasks_round_trip_through_get_config():
    for task in (SkipGramTask(temperature=0.3, weight=0.5, name="skipgram_task"),
                 RetrievalTask(MixedSampler(num_sampled=9, seed=4), temperature=0.1,
                               weight=2.0, name="retrieval_task")):
        config = task.get_config()
        clone = type(task).from_config(config)
        assert clone.get_config() == config
    assert (clone.sampler.num_sampled, clone.sampler.seed, clone.weight) == (9, 4, 2.0)
