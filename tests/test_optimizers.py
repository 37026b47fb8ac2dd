"""LazyAdam: Adam on the rows a sparse gradient touches, nothing else."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfrec.errors import InputError
from tfrec.optimizers import LazyAdam, build_optimizer


def reference_lazy_adam(table, steps, lr, beta_1=0.9, beta_2=0.999, eps=1e-7):
    """numpy: per step, a {row: gradient} dict; rows not named keep value and moments."""
    table = table.copy()
    m, v = np.zeros_like(table), np.zeros_like(table)
    for t, grads in enumerate(steps, start=1):
        alpha = lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        for row, g in grads.items():
            m[row] = beta_1 * m[row] + (1 - beta_1) * g
            v[row] = beta_2 * v[row] + (1 - beta_2) * g * g
            table[row] -= alpha * m[row] / (np.sqrt(v[row]) + eps)
    return table


def test_lazy_adam_updates_only_the_looked_up_rows_as_adam_would():
    rng = np.random.default_rng(0)
    start = rng.normal(size=(6, 3)).astype(np.float32)
    table = tf.Variable(start)
    optimizer = LazyAdam(0.1)
    lookups = [[0, 2, 2], [2, 4], [0, 5, 5, 5]]
    weights = [rng.normal(size=(len(rows), 3)).astype(np.float32) for rows in lookups]
    expected_steps = []
    for rows, w in zip(lookups, weights):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, rows) * w)
        grad = tape.gradient(loss, table)
        assert isinstance(grad, tf.IndexedSlices)
        optimizer.apply_gradients([(grad, table)])
        summed = {}
        for row, g in zip(rows, w):  # a repeated row gets the sum of its gradients
            summed[row] = summed.get(row, 0) + g
        expected_steps.append(summed)
    np.testing.assert_allclose(table.numpy(), reference_lazy_adam(start, expected_steps, 0.1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(table.numpy()[[1, 3]], start[[1, 3]])  # never looked up
    # Keras Adam moves row 4 again in step 3 (its decayed momentum); LazyAdam does not.
    dense_adam = tf.Variable(start)
    adam = keras.optimizers.Adam(0.1)
    for rows, w in zip(lookups, weights):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(dense_adam, rows) * w)
        adam.apply_gradients([(tape.gradient(loss, dense_adam), dense_adam)])
    assert np.abs(dense_adam.numpy()[4] - table.numpy()[4]).max() > 1e-3


def test_lazy_adam_is_adam_on_dense_gradients_and_round_trips_its_config():
    start = np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2)
    lazy, plain = tf.Variable(start), tf.Variable(start)
    lazy_opt, plain_opt = LazyAdam(0.05), keras.optimizers.Adam(0.05)
    for _ in range(3):
        for var, opt in ((lazy, lazy_opt), (plain, plain_opt)):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(var - 0.3))
            opt.apply_gradients([(tape.gradient(loss, var), var)])
    np.testing.assert_allclose(lazy.numpy(), plain.numpy(), rtol=1e-6)
    config = keras.optimizers.serialize(lazy_opt)
    again = keras.optimizers.deserialize(config)
    assert isinstance(again, LazyAdam) and again.get_config() == lazy_opt.get_config()
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(0.1, amsgrad=True)


def test_train_config_builds_lazy_adam():
    from tfrec.config import RunConfig, TrainConfig
    from tfrec.training import _optimizer

    optimizer = _optimizer(RunConfig(train=TrainConfig(optimizer="lazy_adam", learning_rate=0.02)))
    assert isinstance(optimizer, LazyAdam)
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.02)
    with pytest.raises(InputError, match="unknown optimizer 'nadam'"):
        build_optimizer("nadam", 0.1)
    for rate in (-1.0, 0, float("nan"), "0.1", True):
        with pytest.raises(InputError, match="learning rate must be a number above 0"):
            build_optimizer("adam", rate)
    assert build_optimizer("sgd", np.float32(0.1)) is not None
    decay = keras.optimizers.schedules.ExponentialDecay(0.1, 100, 0.9)
    assert build_optimizer("adam", decay) is not None
