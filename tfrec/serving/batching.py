"""Server-side batching: requests arriving together become one call of the model.

Leader/follower: the first request of a batch waits up to the batch timeout
(or until the batch is full), then runs the merged call and hands each
request its rows. Requests merge only when their non-batch inputs (such as
`k`) are equal; string inputs of different widths are padded with "" (the
"no item" value of tfrec signatures), as TF Serving's
`pad_variable_length_inputs` does.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrec.config import BatchingParameters, from_dict
from tfrec.errors import InputError


_FIELD = re.compile(r"(\w+)\s*(?:\{\s*value\s*:\s*([^}\s]+)\s*\}|:\s*(\S+))")


def read_batching_parameters(path: str | Path) -> BatchingParameters:
    """Parses a TF Serving `batching_parameters_file` (text proto); a parameter it leaves
    out keeps the schema's default (`tfrec.config.BatchingParameters`)."""
    path = Path(path)
    if not path.exists():
        raise InputError("batching parameters file not found", path=str(path))
    known = {f.name for f in dataclasses.fields(BatchingParameters)}
    values = {}
    for field, wrapped, plain in _FIELD.findall(path.read_text()):
        raw = wrapped or plain
        if field not in known:
            if field in ("allowed_batch_sizes", "max_execution_batch_size",
                         "enable_large_batch_splitting"):
                continue  # accepted, not used
            raise InputError(f"unknown batching parameter {field!r}", path=str(path))
        if raw.lower() in ("true", "false"):
            values[field] = raw.lower() == "true"
        else:
            try:
                values[field] = int(raw)
            except ValueError:
                values[field] = raw
    return from_dict(BatchingParameters, values, str(path))


class _Item:
    def __init__(self, tensors: dict):
        self.arrays = {k: v.numpy() for k, v in tensors.items()}
        self.rows = next((a.shape[0] for a in self.arrays.values() if a.ndim), 1)
        self.done = threading.Event()
        self.result = None
        self.error = None


class _Batch:
    def __init__(self, scalars: dict):
        self.items: list[_Item] = []
        self.rows = 0
        self.scalars = scalars
        self.full = threading.Event()
        self.closed = False


class Batcher:
    """Merges concurrent calls of the same signature into one model call."""

    def __init__(self, params: BatchingParameters = BatchingParameters()):
        self.params = params
        self._lock = threading.Lock()
        self._open: dict = {}
        self.calls = 0  # model calls made (for monitoring and tests)
        self.requests = 0

    def call(self, key, function, tensors: dict) -> dict:
        item = _Item(tensors)
        scalars = {k: a.item() for k, a in item.arrays.items() if a.ndim == 0}
        with self._lock:
            self.requests += 1
            batch = self._open.get(key)
            leader = (batch is None or batch.closed or batch.scalars != scalars
                      or batch.rows + item.rows > self.params.max_batch_size)
            if leader:
                batch = _Batch(scalars)
                self._open[key] = batch
            batch.items.append(item)
            batch.rows += item.rows
            if batch.rows >= self.params.max_batch_size:
                batch.full.set()
        if leader:
            batch.full.wait(self.params.batch_timeout_micros / 1e6)
            with self._lock:
                batch.closed = True
                if self._open.get(key) is batch:
                    del self._open[key]
            self._execute(function, batch)
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def _execute(self, function, batch: _Batch) -> None:
        try:
            merged = {}
            for name, first in batch.items[0].arrays.items():
                if first.ndim == 0:
                    merged[name] = tf.constant(first)
                    continue
                parts = [i.arrays[name] for i in batch.items]
                if first.ndim == 2 and first.dtype.kind in "OS":
                    width = max(p.shape[1] for p in parts)
                    parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=b"")
                             if p.shape[1] < width else p for p in parts]
                merged[name] = tf.constant(np.concatenate(parts))
            with self._lock:
                self.calls += 1
            outputs = {k: v.numpy() for k, v in function(**merged).items()}
            start = 0
            for item in batch.items:
                item.result = {k: v[start:start + item.rows] for k, v in outputs.items()}
                start += item.rows
        except Exception as err:  # every request of the batch gets the error
            for item in batch.items:
                item.error = err
        finally:
            for item in batch.items:
                item.done.set()
