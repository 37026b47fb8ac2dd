"""The hybrid model: one item encoder, one query tower, and weighted tasks.

One ItemEncoder (id embedding + text) encodes both sides of every
(target, context) pair and every retrieval candidate; the query tower pools
the same item embeddings over a session. The losses are task layers
(`tfrec.tasks`). The model is a `tfrs.Model`: it only implements
`compute_loss`, and Keras `fit` / `evaluate` do the rest.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfrec import draws
from tfrec.tasks.base import Task, replicas
from tfrec.tasks.retrieval import RetrievalTask
from tfrec.towers.item_encoder import ItemEncoder
from tfrec.towers.query_tower import QueryTower


def _unquoted(message: str) -> str:
    """A message for an assertion in the graph, which escapes quotes when it fails."""
    return message.replace("'", "")


@keras.utils.register_keras_serializable(package="tfrec")
class HybridModel(tfrs.Model):
    """Item2vec + text, trained by the sum of its tasks' weighted losses.

    Args:
      item_encoder: the candidate tower, shared by both sides of a pair.
      query_tower: the session tower (built on the same item encoder, or on
        one of its own).
      tasks: the losses (`tfrec.tasks.Task` layers, e.g. `SkipGramTask`,
        `RetrievalTask`), each with its `weight`; each reads the features of
        its training stream (`task.stream`, `task.feature_names`), so a batch
        holds the features of every task's stream.
      text_alignment: weight of the loss pulling each warm item's text-only
        embedding towards its full embedding (the cold-start path), taken
        from the items the first task encodes.
    """

    def __init__(self, item_encoder: ItemEncoder, query_tower: QueryTower,
                 tasks: Sequence[Task], text_alignment: float, **kwargs):
        super().__init__(**kwargs)
        if not tasks:
            raise ValueError("a model needs at least one task")
        if not math.isfinite(float(text_alignment)) or float(text_alignment) < 0:
            raise ValueError(f"text_alignment must be a finite number >= 0, got "
                             f"{text_alignment}")
        for part in (item_encoder, query_tower, *tasks):
            if part.compute_dtype != "float32":
                raise ValueError(
                    f"the {type(part).__name__} computes in {part.compute_dtype} (the dtype "
                    f"policy {part.dtype_policy.name!r}): tfrec's towers and tasks compute in "
                    "float32; build them under tf_keras.mixed_precision.set_global_policy("
                    "'float32')")
        self.item_encoder = item_encoder
        # Checkpoints written before the rename name it "candidate_tower": keep
        # that path too, so earlier runs still restore.
        self._track_trackable(item_encoder, name="candidate_tower")
        self.query_tower = query_tower
        self.tasks = list(tasks)
        self.text_alignment = float(text_alignment)
        # Checkpoints written before tasks were layers hold their variables at
        # the model's level (e.g. "logit_bias"): keep those paths too.
        for task in self.tasks:
            for name, variable in task.checkpoint_aliases().items():
                self._track_trackable(variable, name=name)

    @property
    def streams(self) -> tuple[str, ...]:
        """The training streams the tasks read, in task order (the first sets an epoch)."""
        return tuple(dict.fromkeys(task.stream for task in self.tasks))

    def train_step(self, inputs):
        # The step's random draws keyed on the optimizer's step counter: a resumed run
        # draws as the run that was never stopped (`tfrec.draws`).
        with draws.training_step(self.optimizer.iterations):
            return super().train_step(inputs)

    def compute_loss(self, features, training=False):
        """The loss of one replica's batch: the tasks' weighted losses (each a
        batch mean divided by the replicas, so that the replicas' summed
        gradients are the global batch's mean), plus the text alignment."""
        features = self._checked_features(features)
        loss = tf.constant(0.0)
        alignment = None
        for task in self.tasks:
            task_loss, task_alignment = task(features, item_encoder=self.item_encoder,
                                             query_tower=self.query_tower, training=training)
            loss += task.weight * task_loss
            alignment = task_alignment if alignment is None else alignment
        if self.text_alignment > 0:
            loss += self.text_alignment * alignment / replicas()
        return loss

    def _checked_features(self, features) -> dict:
        """The batch as the tasks read it: item indices as int32, numbers as float32.

        Refuses a batch that lacks a task's features, or holds one of another rank,
        ragged, or of the wrong kind, naming it and the model's streams (checked as
        `fit` traces a step); item indices outside the catalogue stop the step with
        an error naming the feature (checked per batch, in the graph).
        """
        if not isinstance(features, dict):
            raise ValueError(f"a training batch must be a dict of features (the model reads "
                             f"the streams {', '.join(self.streams)}), got "
                             f"{type(features).__name__}")
        checked = dict(features)
        num_items = self.item_encoder.num_items
        for task in self.tasks:
            reader = f"the {type(task).__name__} from the {task.stream!r} stream"
            missing = [name for name in task.feature_names
                       if name not in features and name not in task.optional_features]
            if missing:
                raise ValueError(
                    f"the batch lacks {', '.join(map(repr, missing))}, read by {reader} (it "
                    f"has {', '.join(map(repr, sorted(features))) or 'no features'}); the "
                    f"model reads the streams {', '.join(self.streams)}: fit on "
                    "`tfrec.training.make_dataset(data, model.streams)`")
            for name in task.feature_names:
                if name not in features:
                    continue
                shape = task.feature_shapes.get(name, "")
                value = features[name]
                if isinstance(value, (tf.RaggedTensor, tf.SparseTensor)):
                    raise ValueError(f"feature {name!r}, read by {reader}, is a "
                                     f"{type(value).__name__}: it must be a dense {shape} "
                                     "tensor (pad histories on the left with 0)")
                value = tf.convert_to_tensor(value)
                rank = shape.count(",") + 1 if shape else None
                # Checks made per batch (in the graph); what reads the feature waits for them.
                checks = []
                if rank is not None:
                    wrong = (f"feature {name!r}, read by {reader}, must be {shape} (rank "
                             f"{rank})")
                    if value.shape.rank is None:  # a step traced for any shape
                        checks.append(tf.debugging.assert_rank(value, rank,
                                                               message=_unquoted(wrong)))
                    elif value.shape.rank != rank:
                        raise ValueError(f"{wrong}, got shape {value.shape.as_list()}")
                if name in task.index_features:
                    if not value.dtype.is_integer:
                        raise ValueError(f"feature {name!r} holds item indices (integers), got "
                                         f"{value.dtype.name}")
                    wide = tf.cast(value, tf.int64)  # (num_items wraps in int8 or uint8)
                    checks.append(tf.debugging.assert_non_negative(
                        wide, message=_unquoted(f"feature {name!r}, read by {reader}, holds "
                                                "a negative item index")))
                    checks.append(tf.debugging.assert_less(
                        wide, tf.constant(num_items, tf.int64),
                        message=_unquoted(f"feature {name!r}, read by {reader}, holds an item "
                                          f"index outside the catalogue (0 to "
                                          f"{num_items - 1})")))
                    kind = tf.int32
                else:
                    if not (value.dtype.is_floating or value.dtype.is_integer):
                        raise ValueError(f"feature {name!r}, read by {reader}, holds numbers, "
                                         f"got {value.dtype.name}")
                    kind = tf.float32
                with tf.control_dependencies([c for c in checks if c is not None]):
                    checked[name] = tf.identity(tf.cast(value, kind))
        return checked

    def enable_topk_metrics(self, ks: tuple[int, ...] = (1, 10, 50)) -> None:
        """Adds TFRS `FactorizedTopK` metrics to the retrieval task for `evaluate`.

        The metric ranks every catalogue item (exact search over the current
        item embeddings), so call it after training, and again after further
        training. Training steps never compute it (too slow per step).
        """
        candidates = tf.constant(self.item_embeddings()[1:])
        ids = tf.range(1, self.item_encoder.num_items, dtype=tf.int32)
        index = tfrs.layers.factorized_top_k.BruteForce(k=max(ks)).index(candidates, ids)
        for task in self.tasks:
            if isinstance(task, RetrievalTask):
                task.factorized_metrics = [tfrs.metrics.FactorizedTopK(candidates=index, ks=ks)]
        # `evaluate` traces its step again, now with the metric; `compile`'s other
        # settings (run_eagerly, steps_per_execution, ...) stay as they were.
        self.test_function = None
        self.reset_metrics()

    def item_embeddings(self, item_index=None, batch_size: int = 65_536) -> np.ndarray:
        """[n, dim] embeddings of the given item indices (default: the whole catalogue)."""
        if item_index is None:
            item_index = np.arange(self.item_encoder.num_items, dtype=np.int32)
        item_index = np.asarray(item_index)
        if item_index.size and not np.issubdtype(item_index.dtype, np.integer):
            raise ValueError(f"item indices must be integers, got {item_index.dtype}")
        outside = (item_index < 0) | (item_index >= self.item_encoder.num_items)
        if outside.any():
            raise ValueError(f"item index {int(item_index[outside][0])} is outside the "
                             f"catalogue's 0..{self.item_encoder.num_items - 1} "
                             f"({int(outside.sum())} of {item_index.size} outside)")
        item_index = item_index.astype(np.int32)
        parts = [self.item_encoder(tf.constant(item_index[i:i + batch_size])).numpy()
                 for i in range(0, len(item_index), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.embedding_dim), np.float32)

    def query_embeddings(self, history: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """[n, dim] query embeddings of [n, N] histories (0-padded on the left)."""
        history = np.asarray(history)
        if len(history) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        if not np.issubdtype(history.dtype, np.integer):
            raise ValueError(f"histories hold item indices (integers), got {history.dtype}")
        if history.ndim != 2:
            raise ValueError(f"histories must be [n, N] (0-padded on the left), got shape "
                             f"{list(history.shape)}")
        num_items = self.item_encoder.num_items
        outside = (history < 0) | (history >= num_items)
        if outside.any():
            raise ValueError(f"item index {int(history[outside][0])} is outside the "
                             f"catalogue's 0..{num_items - 1} ({int(outside.sum())} of "
                             f"{history.size} history slots outside)")
        history = history.astype(np.int32)
        query = self.query_tower
        if getattr(query.item_encoder, "use_text", False) and \
                history.size > query.item_encoder.num_items:
            # More history slots than items: each item's encoding once, then gathered.
            vectors = tf.constant(query.item_vectors())
            parts = [query.from_item_vectors(tf.constant(history[i:i + batch_size]),
                                             vectors).numpy()
                     for i in range(0, len(history), batch_size)]
        else:
            parts = [query(tf.constant(history[i:i + batch_size])).numpy()
                     for i in range(0, len(history), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.embedding_dim), np.float32)

    @property
    def embedding_dim(self) -> int:
        return self.item_encoder.embedding_dim

    def build_variables(self) -> None:
        """Creates every variable the towers make on their first call (their
        sub-layers build lazily), so that saved weights have somewhere to go."""
        self.item_encoder(tf.zeros([1], tf.int32))
        self.query_tower(tf.zeros([1, self.query_tower.history_length], tf.int32))
        self.built = True

    def save(self, filepath, *args, **kwargs):
        """Keras' `save` to a `.keras` file (`tf_keras.models.load_model` reloads it,
        not a separately installed Keras 3's), the towers built first.

        Raises:
          ValueError: any other format: the model has no forward pass for Keras'
            SavedModel or HDF5 saving (`save_weights` writes its weights; a
            SavedModel to serve is made by `tfrec.export`).
        """
        if not str(filepath).endswith(".keras") or kwargs.get("save_format") not in (
                None, "keras"):
            raise ValueError(
                f"{filepath}: a HybridModel saves to a .keras file (tf_keras.models.load_model "
                "reloads it, not Keras 3's keras.models.load_model) or its weights with "
                "save_weights; a SavedModel to serve is made by tfrec.export (tfrec export)")
        self.build_variables()
        return super().save(filepath, *args, **kwargs)

    def load_weights(self, filepath, *args, **kwargs):
        """Keras' `load_weights`, the towers built first: an HDF5 file's weights need
        their variables to exist (a TensorFlow checkpoint's wait for them anyway)."""
        if not self.built:
            self.build_variables()
        return super().load_weights(filepath, *args, **kwargs)

    def get_build_config(self):
        # The towers build on their first call, never through `build(input_shape)`: a
        # `.keras` file must still record that the loaded model is to be built.
        return {"variables": True}

    def build_from_config(self, config):
        self.build_variables()

    def get_config(self):
        """The towers and tasks; a query tower sharing the item encoder does not
        repeat it (`from_config` hands it the model's)."""
        query_tower = keras.layers.serialize(self.query_tower)
        shared = self.query_tower.item_encoder is self.item_encoder
        if shared:
            query_tower = {**query_tower, "config": {**query_tower["config"],
                                                     "item_encoder": None}}
        return {"name": self.name,
                "item_encoder": keras.layers.serialize(self.item_encoder),
                "query_tower": query_tower,
                "tasks": [keras.layers.serialize(task) for task in self.tasks],
                "text_alignment": self.text_alignment}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.layers.deserialize(config.pop("item_encoder"))
        query_tower = config.pop("query_tower")
        tower_config = dict(query_tower["config"])
        if tower_config["item_encoder"] is None:
            tower_config["item_encoder"] = encoder
        tower_class = keras.utils.get_registered_object(
            query_tower.get("registered_name") or query_tower["class_name"])
        tower = tower_class.from_config(tower_config)
        tasks = [keras.layers.deserialize(task) for task in config.pop("tasks")]
        model = cls(encoder, tower, tasks, **config)
        model.build_variables()  # as `build_model`'s: every variable made
        return model
