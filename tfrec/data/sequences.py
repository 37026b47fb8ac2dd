"""(history, next item) examples for the two-tower retrieval objective."""

from __future__ import annotations

import itertools

import numpy as np

from tfrec.config import (SESSION_CONTEXTS, PairConfig, SessionContext, TrainConfig,
                          choices_text)
from tfrec.data.sessions import Sessions
from tfrec.data.shard import check_shard, worker_batches
from tfrec.data.vocab import ItemVocabulary
from tfrec.errors import InputError


def _session_window(items: np.ndarray, session_of: np.ndarray, positions: np.ndarray,
                    offsets: np.ndarray) -> np.ndarray:
    """[len(positions), len(offsets)] items at position + offset, 0 outside the session."""
    idx = positions[:, None] + offsets[None, :]
    valid = (idx >= 0) & (idx < len(items))
    idx = np.where(valid, idx, 0)
    valid &= session_of[idx] == session_of[positions][:, None]
    return np.where(valid, items[idx], 0).astype(np.int32)


def history_matrix(items: np.ndarray, session_of: np.ndarray, positions: np.ndarray,
                   length: int) -> np.ndarray:
    """[len(positions), length] the `length` events before each position in its session.

    Most recent last, left-padded with 0 where the session has fewer events.
    """
    return _session_window(items, session_of, positions, np.arange(-length, 0))


def context_matrix(items: np.ndarray, session_of: np.ndarray, positions: np.ndarray,
                   length: int) -> np.ndarray:
    """[len(positions), length] the other events of each position's session.

    The `length - length // 2` events before the position then the
    `length // 2` after it (the position itself left out), 0 where the
    session has none: leave-one-out queries for baskets, whose order means
    nothing.
    """
    after = length // 2
    offsets = np.concatenate([np.arange(after - length, 0), np.arange(1, after + 1)])
    return _session_window(items, session_of, positions, offsets)


def histories_from_lists(queries: list, length: int) -> np.ndarray:
    """[n, length] the last `length` items of each list, left-padded with 0."""
    out = np.zeros((len(queries), length), dtype=np.int32)
    for row, query in enumerate(queries):
        tail = list(query)[-length:]
        if tail:
            out[row, length - len(tail):] = tail
    return out


class NextItemPipeline:
    """Batches of {history [B, N], next_item [B], candidate_probability [B]}.

    With `context="previous"` every event after the first of its session is
    an example: the query is the session so far (its last N events), the
    candidate the event's item (next-item prediction). With
    `context="session"` every event of a session of two or more events is an
    example and the query is the rest of the session around it (leave one
    out: what a basket-completion or "more like this visit" query looks like).
    `candidate_probability` is the item's share of all examples, the
    sampling probability the logQ correction of in-batch softmax needs.
    Deterministic for a seed; each pass (Keras epoch) reshuffles.
    """

    def __init__(self, sessions: Sessions, vocab: ItemVocabulary, history_length: int,
                 batch_size: int = TrainConfig.retrieval_batch_size,
                 seed: int = PairConfig.seed,
                 context: SessionContext = "previous"):
        if context not in SESSION_CONTEXTS:
            raise InputError(f"retrieval context must be {choices_text(SESSION_CONTEXTS)}, "
                             f"got {context!r}", key="model.retrieval_context")
        self.items = sessions.items
        self.session_of = sessions.session_ids()
        starts = sessions.row_splits[:-1]
        if context == "previous":
            first = np.zeros(sessions.num_events, dtype=bool)
            first[starts[sessions.lengths > 0]] = True
            self.positions = np.flatnonzero(~first)
            self._query = history_matrix
        else:
            self.positions = np.flatnonzero(np.repeat(sessions.lengths >= 2, sessions.lengths))
            self._query = context_matrix
        if len(self.positions) == 0:
            raise InputError("no session has two events: nothing to train retrieval on "
                             "(a user's events split into sessions at gaps over "
                             "data.sessions.gap_minutes, or by data.events_schema.session_col "
                             "when set: check those, and that each event names its user)",
                             key="data.sessions.gap_minutes")
        counts = np.bincount(self.items[self.positions], minlength=vocab.size)
        self.probability = (counts / counts.sum()).astype(np.float32)
        self.history_length = history_length
        self.batch_size = batch_size
        self.seed = seed
        self._iterations = itertools.count()

    def set_epoch(self, epoch: int) -> None:
        """The next pass over `as_dataset` generates `epoch` (0-based), the passes after
        it the epochs after it: a resumed run gets the batches an uninterrupted run would."""
        self._iterations = itertools.count(epoch)

    @property
    def num_examples(self) -> int:
        return len(self.positions)

    def epoch(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch, 1])
        order = self.positions[rng.permutation(len(self.positions))]
        for start in range(0, len(order), self.batch_size):
            pos = order[start:start + self.batch_size]
            nxt = self.items[pos]
            yield {"history": self._query(self.items, self.session_of, pos,
                                          self.history_length),
                   "next_item": nxt.astype(np.int32),
                   "candidate_probability": self.probability[nxt]}

    def as_dataset(self, repeat: bool = False, prefetch: int = 4, num_shards: int = 1,
                   shard_index: int = 0):
        """A `tf.data.Dataset` of batches; each pass is the next epoch.

        Args:
          repeat: one endless stream of epochs instead of one epoch per pass.
          prefetch: batches prepared ahead.
          num_shards: workers training on the stream together (n); with
            n > 1 each worker keeps its own full batches, n of them
            concatenated per element (see `PairPipeline.as_dataset`).
          shard_index: this worker, 0..n-1.
        """
        import tensorflow as tf

        check_shard(num_shards, shard_index)
        signature = {"history": tf.TensorSpec([None, self.history_length], tf.int32),
                     "next_item": tf.TensorSpec([None], tf.int32),
                     "candidate_probability": tf.TensorSpec([None], tf.float32)}

        def batches():
            while True:
                yield from self.epoch(next(self._iterations))
                if not repeat:
                    return

        def generate():
            yield from worker_batches(batches(), num_shards, shard_index, self.batch_size)

        return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(
            prefetch)
