"""Negative samplers of the retrieval softmax, and the registry of `model.negatives`.

A sampler decides which candidates each query's positive competes with: it
returns the candidate ids to encode (shared by the batch), the column of each
query's positive among them, which columns each query may see, and the logQ
correction of each column (the log of how often the sampler proposes that
candidate, up to a constant shared by all columns, which cancels in the
softmax). `tfrec.tasks.RetrievalTask` turns them into one loss, whatever the
sampler (Merlin `blocks/sampling/in_batch.py`: samplers are objects passed to
the task).

The registry maps each value of the `model.negatives` setting to a builder
taking `num_sampled` and `seed`; `build_sampler` refuses an unknown name. A
new sampler is a class here and one `register_sampler` line.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

from tfrec import draws
from tfrec.errors import InputError


@dataclasses.dataclass
class SampledCandidates:
    """The candidates of one batch of queries.

    Attributes:
      ids: [C] int32 item indices to encode (the positives may be among them).
      labels: [B] int32 column of each query's positive in `ids`.
      log_q: [C] float32 logQ correction of each column, or None (none needed).
      valid: [B, C] bool columns each query may score, or None (all).
      remove_accidental_hits: hide, for each query, every column other than
        its label that holds its positive item (a negative that is the positive).
    """

    ids: tf.Tensor
    labels: tf.Tensor
    log_q: tf.Tensor | None = None
    valid: tf.Tensor | None = None
    remove_accidental_hits: bool = False


class NegativeSampler:
    """Base class: `sample(positive_ids, num_warm, candidate_probability)`.

    Args of `sample`:
      positive_ids: [B] int32 each query's positive item.
      num_warm: warm items (indices 1..num_warm: the items with an id
        embedding, the only ones training has as positives).
      candidate_probability: [B] float32 probability of each positive being
        a batch's candidate (for the logQ correction), or None.
    """

    name: str = ""

    def sample(self, positive_ids, num_warm, candidate_probability=None) -> SampledCandidates:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> "NegativeSampler":
        return cls(**config)


class InBatchSampler(NegativeSampler):
    """The batch's other positives are each query's negatives (TFRS `Retrieval`).

    Popular items are over-represented among in-batch negatives, so each
    column is corrected by the log of its candidate probability (logQ,
    Yi et al. RecSys 2019), and a column holding the query's own item is
    hidden (an accidental hit).
    """

    name = "in_batch"

    def sample(self, positive_ids, num_warm, candidate_probability=None) -> SampledCandidates:
        positive_ids = tf.cast(positive_ids, tf.int32)
        log_q = None
        if candidate_probability is not None:
            log_q = tf.math.log(_clip(candidate_probability))
        return SampledCandidates(ids=positive_ids,
                                 labels=tf.range(tf.shape(positive_ids)[0], dtype=tf.int32),
                                 log_q=log_q, remove_accidental_hits=True)


class CatalogueSampler(NegativeSampler):
    """Every warm item is a candidate: the exact softmax over items 1..num_warm.

    Cold items are never positives in training, so they are left out rather
    than pushed away from every query.
    """

    name = "catalogue"

    def sample(self, positive_ids, num_warm, candidate_probability=None) -> SampledCandidates:
        positive_ids = tf.cast(positive_ids, tf.int32)
        tf.debugging.assert_greater(
            positive_ids, 0, message="CatalogueSampler: a next_item is 0 (no item), not "
                                     "among the warm items it scores")
        tf.debugging.assert_less_equal(
            positive_ids, tf.cast(num_warm, tf.int32),
            message="CatalogueSampler: a next_item is an item without an id embedding (past "
                    "num_id_items - 1), not among the warm items it scores")
        return SampledCandidates(ids=tf.range(1, num_warm + 1, dtype=tf.int32),
                                 labels=positive_ids - 1)


def _clip(probability):
    # As TFRS clips it: a probability of 0 (an item unseen when it was counted)
    # would make an infinite correction.
    return tf.clip_by_value(tf.cast(probability, tf.float32), 1e-6, 1.0)


class DrawingSampler(NegativeSampler):
    """Base class of the samplers that draw `num_sampled` warm items uniformly per batch,
    shared by its queries (beside the batch's positives).

    Args:
      num_sampled: negatives drawn per batch.
      seed: seeds the draws.
    """

    def __init__(self, num_sampled: int, seed: int | None = None):
        if isinstance(num_sampled, bool) or int(num_sampled) != num_sampled or num_sampled < 1:
            raise ValueError(f"{type(self).__name__}: num_sampled must be a positive integer "
                             f"(the items drawn per batch), got {num_sampled!r}")
        self.num_sampled = int(num_sampled)
        self.seed = seed

    def draw(self, positive_ids, num_warm):
        """(positive_ids as int32, the batch size, [num_sampled] items drawn uniformly
        from 1..num_warm)."""
        positive_ids = tf.cast(positive_ids, tf.int32)
        sampled = draws.uniform([self.num_sampled], self.seed, 1, num_warm + 1, dtype=tf.int32)
        return positive_ids, tf.shape(positive_ids)[0], sampled

    def get_config(self) -> dict:
        return {"num_sampled": self.num_sampled, "seed": self.seed}


class UniformSampler(DrawingSampler):
    """`num_sampled` warm items drawn uniformly per batch, shared by its queries.

    Each query scores its own positive and the sample, not the other
    queries' positives. The proposal is uniform, so the logQ correction is a
    constant and cancels; a sampled item equal to the positive is hidden.
    """

    name = "sampled"

    def sample(self, positive_ids, num_warm, candidate_probability=None) -> SampledCandidates:
        positive_ids, batch, sampled = self.draw(positive_ids, num_warm)
        valid = tf.concat([tf.eye(batch, dtype=tf.bool),
                           tf.ones([batch, self.num_sampled], tf.bool)], 1)
        return SampledCandidates(ids=tf.concat([positive_ids, sampled], 0),
                                 labels=tf.range(batch, dtype=tf.int32), valid=valid,
                                 remove_accidental_hits=True)


class MixedSampler(DrawingSampler):
    """In-batch negatives plus a uniform sample of the catalogue (mixed negative
    sampling, Yang et al. WWW 2020).

    In-batch negatives are drawn by popularity, so items never or seldom in a
    batch are never pushed away from a query; the uniform part covers them.
    Each column is corrected by the log of its expected count under its own
    proposal: log(B * q) for the batch's candidates (q their candidate
    probability; 1 / num_warm when none is given) and log(num_sampled /
    num_warm) for the uniform ones. Accidental hits are hidden in both parts.
    """

    name = "mixed"

    def sample(self, positive_ids, num_warm, candidate_probability=None) -> SampledCandidates:
        positive_ids, batch, sampled = self.draw(positive_ids, num_warm)
        warm = tf.cast(num_warm, tf.float32)
        if candidate_probability is None:
            candidate_probability = tf.fill([batch], 1.0 / warm)
        in_batch = tf.math.log(tf.cast(batch, tf.float32) * _clip(candidate_probability))
        uniform = tf.fill([self.num_sampled], tf.math.log(self.num_sampled / warm))
        return SampledCandidates(
            ids=tf.concat([positive_ids, sampled], 0),
            labels=tf.range(batch, dtype=tf.int32), log_q=tf.concat([in_batch, uniform], 0),
            remove_accidental_hits=True)


SamplerBuilder = Callable[..., NegativeSampler]
# The values of `model.negatives`: name -> builder(num_sampled=..., seed=...).
SAMPLERS: dict[str, SamplerBuilder] = {}
# Sampler class of each name, to rebuild a saved task's sampler.
SAMPLER_CLASSES: dict[str, type[NegativeSampler]] = {}


def register_sampler(cls: type[NegativeSampler], builder: SamplerBuilder) -> None:
    """Makes `cls` the sampler of `model.negatives: <cls.name>`, built by `builder`."""
    SAMPLERS[cls.name] = builder
    SAMPLER_CLASSES[cls.name] = cls


register_sampler(InBatchSampler, lambda num_sampled, seed: InBatchSampler())
register_sampler(CatalogueSampler, lambda num_sampled, seed: CatalogueSampler())
register_sampler(UniformSampler, UniformSampler)
register_sampler(MixedSampler, MixedSampler)


def check_sampler_name(name: str) -> None:
    """Refuses a `model.negatives` value that names no registered sampler.

    Raises:
      InputError: `name` is not registered (the message lists the names).
    """
    if name not in SAMPLERS:
        names = ", ".join(repr(n) for n in SAMPLERS)
        raise InputError(f"negatives must be one of {names}, got {name!r}",
                         key="model.negatives")


def build_sampler(name: str, num_sampled: int, seed: int | None) -> NegativeSampler:
    """The sampler registered as `name` (the value of `model.negatives`).

    Raises:
      InputError: `name` is not registered (see `check_sampler_name`).
    """
    check_sampler_name(name)
    return SAMPLERS[name](num_sampled=num_sampled, seed=seed)


def serialize_sampler(sampler: NegativeSampler) -> dict:
    return {"name": sampler.name, "config": sampler.get_config()}


def deserialize_sampler(config: dict | NegativeSampler) -> NegativeSampler:
    if isinstance(config, NegativeSampler):
        return config
    if not isinstance(config, dict) or set(config) != {"name", "config"}:
        if isinstance(config, str):
            hint = (f"the name {config!r}: build it with tfrec.tasks.build_sampler("
                    f"{config!r}, num_sampled, seed)")
        elif isinstance(config, type):
            hint = f"the class {config.__name__}: pass an instance, {config.__name__}(...)"
        else:
            hint = repr(config)
        raise TypeError("a negative sampler must be a NegativeSampler instance (e.g. "
                        f"InBatchSampler()) or its serialised form; got {hint}")
    if config["name"] not in SAMPLER_CLASSES:
        raise ValueError(f"unknown negative sampler {config['name']!r}")
    return SAMPLER_CLASSES[config["name"]].from_config(config["config"])
