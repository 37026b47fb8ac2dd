"""Random draws of training that a resumed run repeats.

TensorFlow's stateful random ops (`tf.random.uniform(seed=...)`) start their
stream again in a new process: a run resumed from its checkpoint after epoch
e would draw epoch e + 1's id-dropout, history-dropout and sampled negatives
as the first epoch did, and end with another model than the run that was
never stopped. Inside `training_step(step)` (the model's `train_step` enters
it with its optimizer's step counter, which every checkpoint holds), `uniform`
draws statelessly from (seed, step, call site): the same draws for the same
step whatever the process. Outside it (a layer called by hand with
`training=True`) it is the stateful op, as before.

A call site is the order of the draws in the traced step (the first draw of
the step's graph, the second, ...): the same for every trace of one model.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

# (step tensor, draws so far) of each `training_step` being traced, innermost last.
_STEPS: list[list] = []
# Call sites per step: a seed's key is seed * SITES + site.
SITES = 1 << 16


@contextlib.contextmanager
def training_step(step):
    """Draws of `uniform` inside are keyed on `step` (an integer tensor or variable)."""
    _STEPS.append([step, 0])
    try:
        yield
    finally:
        _STEPS.pop()


def uniform(shape, seed: int | None, minval=0, maxval=None, dtype=tf.float32):
    """`tf.random.uniform(shape, minval, maxval, dtype, seed=seed)`; stateless inside a
    `training_step` when `seed` is given."""
    if seed is None or not _STEPS:
        return tf.random.uniform(shape, minval, maxval, dtype=dtype, seed=seed)
    frame = _STEPS[-1]
    site = frame[1] % SITES
    frame[1] += 1
    key = tf.stack([tf.constant(int(seed) * SITES + site, tf.int64),
                    tf.cast(tf.convert_to_tensor(frame[0]), tf.int64)])
    return tf.random.stateless_uniform(shape, key, minval, maxval, dtype=dtype)
