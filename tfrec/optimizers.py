"""Optimizers for large embedding tables.

Keras' Adam applies a sparse gradient (an embedding lookup's `tf.IndexedSlices`)
by decaying both moment tables and moving every row of the variable, touched
or not: each step costs three passes over the whole table, so the step time
grows with the catalogue. `LazyAdam` updates only the rows a step touches, as
TF Addons' `LazyAdam` does: its cost depends on the batch, not the catalogue.
"""

from __future__ import annotations

import numbers

import tensorflow as tf
import tf_keras as keras

from tfrec.config import OPTIMIZERS, Optimizer
from tfrec.errors import InputError


@keras.utils.register_keras_serializable(package="tfrec")
class LazyAdam(keras.optimizers.Adam):
    """Adam whose sparse updates touch only the rows in the gradient.

    Dense gradients get plain Adam. For a sparse gradient the moments of the
    rows it names are updated as Adam would update them, and only those rows
    of the variable move; the other rows keep their moments (they are not
    decayed), which is the usual choice for embedding tables: a row's moments
    then describe the steps that actually used it. Bias correction uses the
    global step, as in TF Addons' LazyAdam.

    Keras sums duplicated rows of a sparse gradient before `update_step`, so
    each row is updated once per step. Slot variables are Adam's, so a
    checkpoint moves between the two optimizers.
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("LazyAdam does not support amsgrad")
        super().__init__(*args, **kwargs)

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        beta_1_power, beta_2_power = tf.pow(beta_1, step), tf.pow(beta_2, step)
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        epsilon = self.epsilon
        if getattr(self, "adaptive_epsilon", False):
            epsilon = self.epsilon * tf.sqrt(1 - beta_2_power)

        key = self._var_key(variable)
        m = self._momentums[self._index_dict[key]]
        v = self._velocities[self._index_dict[key]]
        rows, values = gradient.indices, tf.cast(gradient.values, dtype)
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon),
                                              rows))


def build_optimizer(name: Optimizer, learning_rate: float) -> keras.optimizers.Optimizer:
    """The optimizer `train.optimizer` names (one of `config.OPTIMIZERS`)."""
    if name not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}",
                         key="train.optimizer")
    schedule = isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
    if not schedule and (isinstance(learning_rate, bool)
                         or not isinstance(learning_rate, numbers.Real)
                         or not 0 < float(learning_rate) < float("inf")):
        raise InputError(f"learning rate must be a number above 0 (or a Keras learning-rate "
                         f"schedule), got {learning_rate!r}", key="train.learning_rate")
    builders = {"adam": keras.optimizers.Adam, "lazy_adam": LazyAdam,
                "adagrad": keras.optimizers.Adagrad, "sgd": keras.optimizers.SGD}
    return builders[name](learning_rate)
