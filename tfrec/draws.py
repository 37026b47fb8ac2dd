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
Under a distribution strategy each replica (across workers too) draws its
own: the key holds its place in the sync group.
"""

from __future__ import annotations

import contextlib
import threading

import tensorflow as tf

# Call sites per step: a seed's first key is seed * SITES + site.
SITES = 1 << 16
# Replicas per step: its second key is step * REPLICAS + replica.
REPLICAS = 1 << 12


class _Frames(threading.local):
    """The (step, draws so far) frames of the `training_step`s being traced in this thread
    (a MirroredStrategy traces each replica's step in a thread of its own)."""

    def __init__(self):
        self.stack: list[list] = []


_FRAMES = _Frames()


@contextlib.contextmanager
def training_step(step):
    """Draws of `uniform` inside are keyed on `step` (an integer tensor or variable)."""
    _FRAMES.stack.append([step, 0])
    try:
        yield
    finally:
        _FRAMES.stack.pop()


def _replica():
    """This replica's place in its sync group (0 outside a strategy)."""
    context = tf.distribute.get_replica_context()
    replica = 0 if context is None else context.replica_id_in_sync_group
    return tf.cast(replica, tf.int64)


def uniform(shape, seed: int | None, minval=0, maxval=None, dtype=tf.float32):
    """`tf.random.uniform(shape, minval, maxval, dtype, seed=seed)`; stateless inside a
    `training_step` when `seed` is given."""
    if seed is None or not _FRAMES.stack:
        return tf.random.uniform(shape, minval, maxval, dtype=dtype, seed=seed)
    frame = _FRAMES.stack[-1]
    site = frame[1] % SITES
    frame[1] += 1
    step = tf.cast(tf.convert_to_tensor(frame[0]), tf.int64)
    key = tf.stack([tf.constant(int(seed) * SITES + site, tf.int64),
                    step * REPLICAS + _replica() % REPLICAS])
    return tf.random.stateless_uniform(shape, key, minval, maxval, dtype=dtype)
