"""The learned ranker: an MLP scoring each candidate of a fixed-width list.

Inputs are fixed-width candidate lists, so the model runs as is in a
SavedModel signature: `features` [B, N, F] and `candidate_mask` [B, N]
(False at padding). The features are standardised by a `Normalization`
layer adapted on the ranker's training features (padding left out), scored
by a small MLP shared across candidates, and padding gets a score of
`PADDING_SCORE`. Training is a listwise softmax over each query's list
(`tfrec.tasks.ListwiseSoftmaxTask`), the held-out item the positive.

With `members` > 1 the ranker is an ensemble: that many MLPs of the same
shape, initialised from different seeds, each trained on its own loss over
the same batches, their scores averaged. Rankers fit on a few thousand
lists vary from one initialisation to the next by more than most feature
choices move them; the average is steadier and, measured on both bundled
catalogues, better (bench/RESULTS.md, "Ranker ensembles").
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfrec.config import RankingConfig, TrainConfig
from tfrec.tasks.listwise import PADDING_SCORE, ListwiseSoftmaxTask

ADAPT_BATCH = 65536  # rows per step of the normalisation's adapt


@keras.utils.register_keras_serializable(package="tfrec")
class CandidateRanker(tfrs.models.Model):
    """Scores each candidate of a list from its feature vector.

    Args:
      num_features: F, the width of a candidate's feature vector.
      hidden_units: widths of the hidden layers (ReLU).
      seed: seeds the weights' initialisation.
      members: how many MLPs are averaged (each trained on its own loss).

    Call (a dict):
      features: [B, N, F] float.
      candidate_mask: [B, N] bool (optional, default all True).

    Returns:
      [B, N] scores (PADDING_SCORE at padding).

    `compute_loss` reads `labels` [B, N] (1 at the held-out item) besides.
    Call `adapt(features, mask)` before `fit`: it fits the normalisation on
    the unpadded training features.
    """

    def __init__(self, num_features: int, hidden_units, seed: int | None = None,
                 members: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.num_features = int(num_features)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        if self.hidden_units and min(self.hidden_units) < 1:
            raise ValueError(f"hidden_units must each be at least 1 wide, got "
                             f"{list(hidden_units)}")
        self.seed = seed
        self.members = int(members)
        if self.members < 1:
            raise ValueError(f"members must be at least 1, got {members}")
        self.normalization = keras.layers.Normalization(axis=-1, name="normalization")
        # The first member keeps the single ranker's name and seeds (its checkpoints
        # read as before); member m's seeds are offset by m * 1000.
        self.scorer = self._mlp(seed, "scorer")
        self.extra_members = [
            self._mlp(None if seed is None else seed + 1000 * m, f"scorer_{m}")
            for m in range(1, self.members)]
        self.task = ListwiseSoftmaxTask(name="listwise_softmax")
        self.normalization.build((None, self.num_features))
        for scorer in self.scorers():
            scorer.build((None, self.num_features))

    def _mlp(self, seed: int | None, name: str) -> keras.Sequential:
        layers = []
        for j, units in enumerate(self.hidden_units):
            layers.append(keras.layers.Dense(
                units, activation="relu", name=f"hidden_{j}",
                kernel_initializer=keras.initializers.GlorotUniform(
                    seed=None if seed is None else seed + j)))
        layers.append(keras.layers.Dense(
            1, name="score", kernel_initializer=keras.initializers.GlorotUniform(
                seed=None if seed is None else seed + len(self.hidden_units))))
        return keras.Sequential(layers, name=name)

    def scorers(self) -> list:
        """The members' MLPs, the first one `scorer`."""
        return [self.scorer, *self.extra_members]

    def adapt(self, features: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Fits the normalisation on the training features (padding left out)."""
        features = np.asarray(features, np.float32).reshape(-1, self.num_features)
        if mask is not None:
            features = features[np.asarray(mask, bool).reshape(-1)]
        # Keras adapts in batches of 32 rows unless told otherwise: over a million
        # candidates that is tens of thousands of steps (10-40 s); the statistics
        # are the same in batches of any size.
        self.normalization.adapt(features, batch_size=ADAPT_BATCH)

    def member_scores(self, inputs, training=False):
        """[members, B, N] each member's scores (PADDING_SCORE at padding).

        Each member runs as two-dimensional products over the [B x N, F]
        candidates, the members' ops independent of each other in the graph:
        the same values as calling each `Sequential`. (Stacked into one
        batched product per layer they cost more at serving time: oneDNN's
        batched product of a few small matrices, bench/RESULTS.md, "The
        ranker's products".)
        """
        features = tf.cast(inputs["features"], tf.float32)
        shape = tf.shape(features)
        x = tf.reshape(self.normalization(features), [-1, self.num_features])
        depth = len(self.hidden_units) + 1
        scores = []
        for scorer in self.scorers():
            h = x
            for j in range(depth):
                layer = scorer.layers[j]
                h = tf.matmul(h, layer.kernel) + layer.bias
                if j < depth - 1:
                    h = tf.nn.relu(h)
            scores.append(tf.reshape(h, [shape[0], shape[1]]))
        scores = tf.stack(scores)
        mask = inputs.get("candidate_mask")
        if mask is not None:
            scores = tf.where(tf.cast(mask, tf.bool)[None], scores, PADDING_SCORE)
        return scores

    def call(self, inputs, training=False):
        return tf.reduce_mean(self.member_scores(inputs, training=training), axis=0)

    def compute_loss(self, inputs, training=False):
        # Each member learns from its own loss: an ensemble of independent rankers,
        # not one wider model fit on the averaged score.
        scores = self.member_scores(inputs, training=training)
        losses = [self.task(inputs["labels"], scores[m], inputs.get("candidate_mask"))
                  for m in range(self.members)]
        return tf.add_n(losses) / float(len(losses))

    def get_config(self):
        return {"num_features": self.num_features, "hidden_units": list(self.hidden_units),
                "seed": self.seed, "members": self.members}


class FoldedRanker(tf.Module):
    """A fitted `CandidateRanker`'s averaged score in fewer ops: the serving graph's ranker.

    The same function as the ranker's `call`, its weights rearranged once:
    the normalisation is folded into the first layer's kernel and bias; the
    members' first layers are one product (their kernels side by side); their
    middle layers run member by member on their slices; and the members' last
    layers and the average are one product (the last kernels stacked, divided
    by the number of members). So five members cost 2 + 5 x (depth - 2)
    products instead of 5 x depth, plus no stack or mean. Only the feature
    columns the ranker reads get non-zero rows, so the features need no
    gather. Scores equal the ranker's up to float rounding (tested).

    Args:
      ranker: the fitted (and built) ranker.
      columns: the feature columns it reads, of `width` in all (default: all
        `ranker.num_features`).

    Call: features [B, N, width] float32 -> [B, N] scores (padding not masked).
    """

    def __init__(self, ranker: CandidateRanker, columns=None, width: int | None = None,
                 name: str = "folded_ranker"):
        super().__init__(name=name)
        columns = list(range(ranker.num_features)) if columns is None else list(columns)
        if len(columns) != ranker.num_features:
            raise ValueError(f"{len(columns)} columns for a ranker of {ranker.num_features} "
                             "features")
        self.width = int(ranker.num_features if width is None else width)
        norm = ranker.normalization
        mean = np.asarray(norm.mean, np.float64).reshape(-1)
        scale = 1.0 / np.maximum(np.sqrt(np.asarray(norm.variance, np.float64).reshape(-1)),
                                 keras.backend.epsilon())
        members = [[(np.asarray(layer.kernel, np.float64), np.asarray(layer.bias, np.float64))
                    for layer in scorer.layers] for scorer in ranker.scorers()]
        self.members = len(members)
        self.linear = len(members[0]) == 1  # no hidden layer: the mean of linear scores
        if self.linear:
            members = [[(np.mean([m[0][0] for m in members], axis=0),
                         np.mean([m[0][1] for m in members], axis=0))]]
        first = np.concatenate([m[0][0] for m in members], axis=1)
        kernel = np.zeros((self.width, first.shape[1]))
        kernel[columns] = scale[:, None] * first
        bias = np.concatenate([m[0][1] for m in members]) - (mean * scale) @ first

        def variable(value, name):
            return tf.Variable(np.asarray(value, np.float32), trainable=False, name=name)

        self.first = (variable(kernel, "first_kernel"), variable(bias, "first_bias"))
        self.middle = [[(variable(k, f"member_{m}_kernel_{j}"), variable(b, f"member_{m}_bias_{j}"))
                        for j, (k, b) in enumerate(member[1:-1], start=1)]
                       for m, member in enumerate(members)]
        last = np.concatenate([m[-1][0] for m in members], axis=0) / self.members
        self.last = (variable(last, "last_kernel"),
                     variable(np.mean([m[-1][1] for m in members], axis=0), "last_bias"))

    def __call__(self, features):
        shape = tf.shape(features)
        x = tf.reshape(tf.cast(features, tf.float32), [-1, self.width])
        if self.linear:
            return tf.reshape(tf.matmul(x, self.first[0]) + self.first[1], shape[:2])
        h = tf.nn.relu(tf.matmul(x, self.first[0]) + self.first[1])
        if self.middle[0]:
            parts = tf.split(h, self.members, axis=1)
            for m, layers in enumerate(self.middle):
                for kernel, bias in layers:
                    parts[m] = tf.nn.relu(tf.matmul(parts[m], kernel) + bias)
            h = tf.concat(parts, axis=1)
        scores = tf.matmul(h, self.last[0]) + self.last[1]
        return tf.reshape(scores, shape[:2])


def fit_ranker(features: np.ndarray, mask: np.ndarray, labels: np.ndarray,
               hidden_units=RankingConfig.hidden_units, epochs: int = RankingConfig.epochs,
               learning_rate: float = RankingConfig.learning_rate,
               batch_size: int = RankingConfig.batch_size, seed: int = TrainConfig.seed,
               columns: list | None = None,
               verbose: int = 0, members: int = RankingConfig.members,
               weights: np.ndarray | None = None) -> CandidateRanker:
    """Adapts and fits a `CandidateRanker` on lists that hold their positive.

    Args:
      features: [n, N, F]; mask: [n, N] bool; labels: [n, N] (1 at the target).
      columns: the feature columns to use (default all).
      members: the rankers averaged (`ranking.members`).
      weights: [n] each list's weight in the loss (default 1 each); scaled to
        a mean of 1 over the lists that hold their positive.
    """
    keep = (labels * mask).sum(axis=1) > 0
    if columns is not None:
        features = features[:, :, columns]
    features, mask, labels = features[keep], mask[keep], labels[keep]
    if weights is not None:
        weights = np.asarray(weights, np.float64)[keep]
        if len(weights) and not (np.all(weights >= 0) and weights.sum() > 0):
            raise ValueError("list weights must be >= 0 and not all 0")
        if len(weights):
            # The task reads a positive's label as its list's weight.
            labels = labels * (weights / weights.mean())[:, None]
    tf.random.set_seed(seed)
    model = CandidateRanker(features.shape[-1], hidden_units, seed=seed, members=members)
    model.adapt(features, mask)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    data = tf.data.Dataset.from_tensor_slices(
        {"features": features.astype(np.float32), "candidate_mask": mask,
         "labels": labels.astype(np.float32)})
    data = data.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
    model.fit(data.batch(batch_size), epochs=epochs, verbose=verbose)
    return model


def score_lists(model: CandidateRanker, features: np.ndarray, mask: np.ndarray,
                columns: list | None = None, batch_size: int = 1024) -> np.ndarray:
    """[n, N] the ranker's scores of every list (PADDING_SCORE at padding)."""
    if columns is not None:
        features = features[:, :, columns]
    parts = [model({"features": tf.constant(features[i:i + batch_size], tf.float32),
                    "candidate_mask": tf.constant(mask[i:i + batch_size])}).numpy()
             for i in range(0, len(features), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(mask.shape, np.float32)


def list_ranks(scores: np.ndarray, cands: np.ndarray, mask: np.ndarray,
               targets: np.ndarray, miss_rank: int) -> np.ndarray:
    """The target's rank in each scored list; `miss_rank` where it is not in the list.

    Ties count against the target (a list that scores everything equally
    gets no credit).
    """
    targets = np.asarray(targets)
    hit = (cands == targets[:, None]) & mask
    found = hit.any(axis=1)
    own = np.where(found, np.where(hit, scores, -np.inf).max(axis=1), np.inf)
    before = ((scores >= own[:, None]) & mask & ~hit).sum(axis=1)
    return np.where(found, before, miss_rank).astype(np.int64)
