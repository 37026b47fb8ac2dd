"""Each worker's share of a batch stream that every worker generates alike.

The pipelines are Python generators behind `tf.data.Dataset.from_generator`,
which tf.data cannot shard by file, and sharding by element would make every
worker convert every batch to tensors. Instead every worker runs the same
seeded generator and keeps its own batches, at the batch level:

- `shard_batches`: worker i of n keeps batches i, i+n, i+2n, ... of every
  complete group of n full batches, so every worker gets exactly
  floor(full batches / n) of them, the same number of steps (synchronous
  training hangs when one worker runs out of data before the others).
- `stack_batches`: concatenates a worker's batches n at a time. Under
  `MultiWorkerMirroredStrategy`, Keras hands the dataset to
  `experimental_distribute_dataset`, which takes each element for a global
  batch and splits it into one piece per replica of the cluster; with
  sharding off, a worker then steps through all n pieces of its element
  itself. An element of n of its own batches is thus split back into those
  batches, one per step: the per-worker batch stays the configured batch
  size and the global batch is n times that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

Batch = dict[str, np.ndarray]


def shard_batches(batches: Iterable[Batch], num_shards: int, index: int,
                  batch_size: int) -> Iterator[Batch]:
    """Worker `index`'s batches of a stream: the index-th of each complete group of n.

    Args:
      batches: dicts of arrays, each [batch, ...]; the same stream on every
        worker.
      num_shards: workers sharing the stream (n).
      index: this worker, 0..n-1.
      batch_size: the full batch size; shorter batches (an epoch's last)
        are dropped when n > 1, so every step of every worker is full.

    Returns:
      An iterator over floor(full batches / n) batches, the same count for
      every index.
    """
    check_shard(num_shards, index)
    if num_shards == 1:
        yield from batches
        return
    position = 0
    held = None
    for batch in batches:
        if len(next(iter(batch.values()))) < batch_size:
            continue
        if position == index:
            held = batch
        position += 1
        if position == num_shards:
            yield held
            position, held = 0, None


def stack_batches(batches: Iterable[Batch], size: int) -> Iterator[Batch]:
    """Concatenates consecutive batches `size` at a time; an incomplete last group is dropped.

    Args:
      batches: dicts of arrays, each [batch, ...].
      size: batches per group.

    Returns:
      An iterator over dicts of arrays [size * batch, ...].
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    group: list[Batch] = []
    for batch in batches:
        if size == 1:
            yield batch
            continue
        group.append(batch)
        if len(group) == size:
            yield {k: np.concatenate([b[k] for b in group]) for k in group[0]}
            group = []


def worker_batches(batches: Iterable[Batch], num_shards: int, index: int,
                   batch_size: int) -> Iterator[Batch]:
    """A worker's dataset elements: its shard of `batches`, stacked n at a time.

    With one shard, `batches` unchanged.
    """
    return stack_batches(shard_batches(batches, num_shards, index, batch_size), num_shards)


def check_shard(num_shards: int, index: int) -> None:
    """Raises ValueError unless 0 <= index < num_shards."""
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"expected 0 <= index < num_shards, got index {index} of {num_shards}")
