"""What every task (a loss layer of the hybrid model) declares and returns."""

from __future__ import annotations

import math
from typing import ClassVar

import tensorflow as tf
import tf_keras as keras

# The training streams a task can consume (`tfrec.run.TrainingData` attributes):
# skip-gram pairs with their negatives, and (history, next item) examples.
PAIRS = "pairs"
NEXT_ITEMS = "next_items"
STREAMS = (PAIRS, NEXT_ITEMS)


def checked_temperature(task: str, temperature) -> float:
    """`temperature` as a float, refused unless finite and above 0 (logits are scores
    divided by it: 0 gives NaN losses that spoil every shared tower)."""
    value = float(temperature)
    if not 0 < value < float("inf"):
        raise ValueError(f"{task}: temperature must be above 0 and finite (scores are "
                         f"divided by it), got {temperature!r}")
    return value


class Task(keras.layers.Layer):
    """A loss over one training stream, computed with the model's towers.

    Subclasses set `stream` (which stream of `STREAMS` feeds them),
    `feature_names` (the features of a batch they read) and `index_features`
    (those of them that are item indices), and implement
    `call(features, item_encoder, query_tower, training)` returning
    `(loss, alignment)`: the loss of this replica's batch, scaled so that the
    replicas' sum is the global batch's mean, and the item encoder's
    text-alignment loss of the items the task encoded.

    Args:
      weight: the task's weight in the model's loss.
    """

    stream: ClassVar[str] = ""
    feature_names: ClassVar[tuple[str, ...]] = ()
    # Those of `feature_names` that hold item indices (integers).
    index_features: ClassVar[tuple[str, ...]] = ()
    # Those of `feature_names` a batch may leave out.
    optional_features: ClassVar[tuple[str, ...]] = ()
    # Each feature's shape, as its documentation names it ("[B]", "[B, N]"): its rank.
    feature_shapes: ClassVar[dict[str, str]] = {}

    def __init__(self, weight: float, **kwargs):
        super().__init__(**kwargs)
        if not math.isfinite(float(weight)) or float(weight) < 0:
            raise ValueError(f"a task's weight must be a finite number >= 0, got {weight}")
        self.weight = float(weight)

    def checkpoint_aliases(self) -> dict[str, tf.Variable]:
        """Variables that checkpoints written before tasks existed name at the model's level."""
        return {}

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


def replicas() -> int:
    """Replicas whose gradients are summed (1 without a tf.distribute strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync
