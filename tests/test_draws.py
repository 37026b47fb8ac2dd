"""Training draws keyed on the step (`tfrec.draws`): a resumed run draws as an unstopped one."""

import numpy as np
import pytest
import tensorflow as tf

from tfrec import draws


def drawn(step, seed=5, calls=2):
    @tf.function
    def steps(at):
        with draws.training_step(at):
            return [draws.uniform([4], seed) for _ in range(calls)]

    return [d.numpy() for d in steps(tf.constant(step, tf.int64))]


def test_the_same_step_draws_alike_in_any_trace_and_each_call_site_its_own():
    first, second = drawn(3)
    again = drawn(3)  # another trace, as in a new process
    np.testing.assert_array_equal(first, again[0])
    np.testing.assert_array_equal(second, again[1])
    assert not np.array_equal(first, second)  # two call sites, two draws
    assert not np.array_equal(first, drawn(4)[0])  # the next step draws anew
    assert not np.array_equal(first, drawn(3, seed=6)[0])
    assert ((first >= 0) & (first < 1)).all()


def test_integers_and_the_stateful_op_outside_a_step():
    @tf.function
    def ints(at):
        with draws.training_step(at):
            return draws.uniform([1000], 9, 1, 7, dtype=tf.int32)

    values = ints(tf.constant(1, tf.int64)).numpy()
    assert values.min() >= 1 and values.max() <= 6 and len(set(values)) == 6
    # Outside a training step, or unseeded: TensorFlow's stateful op.
    assert draws.uniform([3], 5).shape == (3,)
    with draws.training_step(tf.constant(0)):
        assert draws.uniform([3], None).shape == (3,)


def test_derived_seeds_of_neighbouring_layers_do_not_meet():
    """The two item encoders of `query_items: separate` are seeded s and s + 1: their
    sub-layers' seeds stay apart."""
    from tfrec.utils import SEED_OFFSETS, derived_seed

    first = {derived_seed(7, offset) for offset in range(SEED_OFFSETS)}
    second = {derived_seed(8, offset) for offset in range(SEED_OFFSETS)}
    assert not first & second and derived_seed(None, 3) is None
    with pytest.raises(ValueError, match="offset"):
        derived_seed(7, SEED_OFFSETS)
