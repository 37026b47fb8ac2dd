"""Streaming training batches: sessions -> shuffled pairs + negatives -> tf.data.

Sessions are cut into chunks of about `chunk_events` events. Each epoch
visits the chunks in a seeded random order; for each chunk it subsamples,
builds the pairs, shuffles them and draws their negatives, then hands out
full batches. Memory is the sessions (linear in events) plus one chunk of
pairs, whatever the size of the corpus. A chunk's randomness comes only from
(seed, epoch, chunk), so a run is reproducible.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import os
from typing import Iterator

import numpy as np

from tfrec.config import PairConfig
from tfrec.data.negatives import MarketSampler, UnigramSampler
from tfrec.data.sessions import Sessions
from tfrec.data.shard import check_shard, worker_batches
from tfrec.data.skipgram import KIND_GLOBAL, keep_probabilities, skipgram_pairs
from tfrec.data.vocab import ItemVocabulary
from tfrec.errors import InputError

logger = logging.getLogger(__name__)

# Negatives that collide with the positive context are redrawn up to this many times.
_REDRAW_ROUNDS = 3


@dataclasses.dataclass
class EpochStats:
    pairs: int = 0
    global_pairs: int = 0
    batches: int = 0
    kept_events: int = 0
    events: int = 0


class PairPipeline:
    """Training batches of (target, context, negatives, weight) for one corpus.

    Args:
      sessions: sessionised events.
      vocab: the item vocabulary (its counts drive subsampling and negatives,
        its markets drive market-aware negatives).
      config: pair generation and sampling settings.
      workers: threads building chunks ahead of the consumer (default: the
        number of CPU cores, at most 4). Results do not depend on it.

    Each batch is a dict of numpy arrays:
      target: [B] int32, context: [B] int32,
      negatives: [B, num_negatives + market_negatives] int32 (unigram ones
        first, then market ones), weight: [B] float32.
    """

    def __init__(self, sessions: Sessions, vocab: ItemVocabulary, config: PairConfig = PairConfig(),
                 workers: int | None = None):
        if sessions.num_events == 0:
            raise InputError("the training set is empty: no events after cleaning")
        if config.num_negatives + config.market_negatives > 0 and not (vocab.counts > 0).any():
            raise InputError("no item has events, so there is nothing to draw negatives from")
        self.sessions = sessions
        self.vocab = vocab
        self.config = config
        self.keep_prob = keep_probabilities(vocab.counts, config.subsample)
        self.unigram = UnigramSampler(vocab.counts, config.negative_power)
        self.market = (MarketSampler(vocab.counts, vocab.market, config.negative_power,
                                     fallback=self.unigram)
                       if config.market_negatives else None)
        bounds = np.searchsorted(sessions.row_splits,
                                 np.arange(0, sessions.num_events, config.chunk_events),
                                 side="left")
        self.chunk_bounds = np.unique(np.append(bounds, sessions.num_sessions))
        self._iterations = itertools.count()
        self.workers = workers if workers is not None else min(os.cpu_count() or 1, 4)

    def set_epoch(self, epoch: int) -> None:
        """The next pass over `as_dataset` generates `epoch` (0-based), the passes after
        it the epochs after it: a resumed run gets the batches an uninterrupted run would."""
        self._iterations = itertools.count(epoch)

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_bounds) - 1

    @property
    def num_negatives_total(self) -> int:
        return self.config.num_negatives + self.config.market_negatives

    def chunk_pairs(self, epoch: int, chunk: int) -> dict[str, np.ndarray]:
        """The shuffled pairs of one chunk in one epoch, with their negatives."""
        rng = np.random.default_rng([self.config.seed, epoch, chunk])
        part = self.sessions.slice(int(self.chunk_bounds[chunk]), int(self.chunk_bounds[chunk + 1]))
        keep = None
        if self.config.subsample > 0:
            keep = (rng.random(part.num_events, dtype=np.float32) < self.keep_prob[part.items])
            keep |= part.is_conversion
        window = self.config.window if self.config.mode == "window" else None
        pairs = skipgram_pairs(part, window, self.config.global_context, keep)
        # Only counted, so counted before the shuffle rather than shuffled along.
        global_pairs = int((pairs.pop("kind") == KIND_GLOBAL).sum())
        order = _shuffle_order(rng, len(pairs["target"]))
        pairs = {k: v[order] for k, v in pairs.items()}
        pairs["negatives"] = self._negatives(rng, pairs["target"], pairs["context"])
        pairs["kept_events"] = np.int64(part.num_events if keep is None else keep.sum())
        pairs["global_pairs"] = np.int64(global_pairs)
        return pairs

    def _negatives(self, rng: np.random.Generator, target: np.ndarray,
                   context: np.ndarray) -> np.ndarray:
        n, cfg = len(target), self.config
        parts = []
        if cfg.num_negatives:
            parts.append(_redraw(self.unigram.sample(rng, (n, cfg.num_negatives)), context,
                                 lambda rows: self.unigram.sample(rng, (len(rows),))))
        if cfg.market_negatives:
            parts.append(_redraw(self.market.sample(rng, target, cfg.market_negatives), context,
                                 lambda rows: self.market.sample(rng, target[rows], 1)[:, 0]))
        if not parts:
            return np.zeros((n, 0), dtype=np.int32)
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def epoch(self, epoch: int, stats: EpochStats | None = None
              ) -> Iterator[dict[str, np.ndarray]]:
        """Yields the batches of one epoch (the last one may be short)."""
        for block in self.epoch_blocks(epoch, stats):
            for i in range(len(block["target"])):
                yield {k: v[i] for k, v in block.items()}

    def epoch_blocks(self, epoch: int, stats: EpochStats | None = None
                     ) -> Iterator[dict[str, np.ndarray]]:
        """Yields the batches of one epoch stacked in blocks, one block per chunk.

        Each block holds arrays of shape [num_batches, batch_size, ...]
        (views, no copy); the epoch's last, short batch comes alone as
        [1, rest, ...]. Handing tf.data one block per chunk instead of one
        batch at a time halves the per-batch overhead of `from_generator`.
        """
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, epoch])
        pending: dict[str, np.ndarray] | None = None
        chunks = [int(c) for c in rng.permutation(self.num_chunks)]
        for chunk, pairs in zip(chunks, self._generate(epoch, chunks)):
            kept = int(pairs.pop("kept_events"))
            global_pairs = int(pairs.pop("global_pairs"))
            if stats is not None:
                stats.pairs += len(pairs["target"])
                stats.global_pairs += global_pairs
                stats.kept_events += kept
                stats.events += int(self.sessions.row_splits[self.chunk_bounds[chunk + 1]]
                                    - self.sessions.row_splits[self.chunk_bounds[chunk]])
            if pending is not None:
                pairs = {k: np.concatenate([pending[k], v]) for k, v in pairs.items()}
            n = len(pairs["target"])
            num_batches = n // cfg.batch_size
            full = num_batches * cfg.batch_size
            if num_batches:
                if stats is not None:
                    stats.batches += num_batches
                yield {k: v[:full].reshape((num_batches, cfg.batch_size) + v.shape[1:])
                       for k, v in pairs.items()}
            pending = {k: v[full:] for k, v in pairs.items()}
        if pending is not None and len(pending["target"]):
            if stats is not None:
                stats.batches += 1
            yield {k: v[None] for k, v in pending.items()}

    def _generate(self, epoch: int, chunks: list[int]) -> Iterator[dict[str, np.ndarray]]:
        """Chunk pairs in `chunks` order, built `workers` at a time in threads.

        numpy releases the GIL in the heavy loops, so threads use the cores; the
        results do not depend on the number of workers.
        """
        workers = self.workers
        if workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                yield self.chunk_pairs(epoch, chunk)
            return
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            pending = collections.deque()
            for chunk in chunks:
                pending.append(pool.submit(self.chunk_pairs, epoch, chunk))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def all_pairs(self, epoch: int = 0) -> dict[str, np.ndarray]:
        """Every pair of an epoch in batch order, concatenated (for inspection and tests)."""
        batches = list(self.epoch(epoch))
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]} if batches else {}

    def as_dataset(self, prefetch: int = 4, num_shards: int = 1, shard_index: int = 0,
                   repeat: bool = False):
        """A `tf.data.Dataset` of batches for Keras `fit`.

        Each pass over the dataset (each Keras epoch) is the next epoch of
        the pipeline: fresh subsampling, shuffle and negatives, all
        determined by the seed and the number of passes so far (counted
        from `set_epoch`, 0 by default).

        Args:
          prefetch: batches prepared ahead.
          num_shards: workers training on the stream together (n). With
            n > 1 every worker generates the whole epoch and keeps its own
            full batches (`tfrec.data.shard.shard_batches`), n of them
            concatenated per element ([n * batch_size]), which
            `tf.distribute` splits back into one batch per step.
          shard_index: this worker, 0..n-1.
          repeat: one endless stream of epochs instead of one epoch per pass
          (a stream zipped after another, which sets the epoch's length).
        """
        import tensorflow as tf

        check_shard(num_shards, shard_index)

        k = self.num_negatives_total
        signature = {
            "target": tf.TensorSpec([None, None], tf.int32),
            "context": tf.TensorSpec([None, None], tf.int32),
            "negatives": tf.TensorSpec([None, None, k], tf.int32),
            "weight": tf.TensorSpec([None, None], tf.float32),
        }

        def generate():
            epoch = next(self._iterations)
            if num_shards == 1:
                yield from self.epoch_blocks(epoch)
                return
            for element in worker_batches(self.epoch(epoch), num_shards, shard_index,
                                          self.config.batch_size):
                yield {k: v[None] for k, v in element.items()}

        blocks = tf.data.Dataset.from_generator(generate, output_signature=signature)
        if repeat:
            blocks = blocks.repeat()  # each pass of the generator is the next epoch
        return blocks.unbatch().prefetch(prefetch)


def _redraw(negatives: np.ndarray, context: np.ndarray, resample) -> np.ndarray:
    """Redraws negatives equal to their pair's context (word2vec skips those).

    `resample(rows)` draws one fresh negative for each pair index in rows.
    A clash that survives every round (an item that nearly owns the
    distribution) is left in place.
    """
    width = negatives.shape[1]
    flat = negatives.reshape(-1)
    for _ in range(_REDRAW_ROUNDS):
        clash = np.flatnonzero(negatives == context[:, None])
        if not len(clash):
            break
        flat[clash] = resample(clash // width)
    return negatives


def _shuffle_order(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random order of n pairs, good for batching.

    A stable radix argsort of random 16-bit keys is twice as fast as a full
    permutation. Pairs sharing a key keep their generation order, but every
    batch is still a uniformly random subset of the chunk, which is what SGD
    needs; the order inside a batch does not matter.
    """
    if n <= 1 << 16:
        return rng.permutation(n)
    return np.argsort(rng.integers(0, 1 << 16, size=n, dtype=np.uint16), kind="stable")
