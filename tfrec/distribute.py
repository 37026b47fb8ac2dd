"""Training under a `tf.distribute` strategy: the cluster, the strategy, the chief.

`train.strategy` picks one of:
  default       no strategy: one process, TensorFlow's default placement.
  mirrored      `tf.distribute.MirroredStrategy`: one process, the batch split
                across the local devices (GPUs, else the CPU).
  multi_worker  `tf.distribute.MultiWorkerMirroredStrategy`: one process per
                worker, synchronous data-parallel training; the cluster and
                this process's task come from the `TF_CONFIG` environment
                variable.

Every worker holds a full copy of the model; gradients are summed across
workers after every step, so all copies stay equal. Each worker trains on its
own share of the batches (see `tfrec.data.shard`); the chief alone writes the
run folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any

from tfrec.config import STRATEGIES, choices_text
from tfrec.errors import InputError
from tfrec.utils import swapped_signal_handlers

logger = logging.getLogger(__name__)

_TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}\'')


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process's place among the training processes.

    Attributes:
      index: its share of the data, 0..count-1: the chief is 0, then the
        workers in TF_CONFIG order (TensorFlow's own `id_in_cluster`).
      count: training processes in the cluster.
      task_type: "chief" or "worker" under multi_worker, else None.
      task_index: the task's index in its TF_CONFIG job, else None.
    """

    index: int = 0
    count: int = 1
    task_type: str | None = None
    task_index: int | None = None

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run folder (task 'chief', or worker 0 without one)."""
        return self.index == 0


def cluster_worker(strategy: str, environ: Mapping[str, str] | None = None) -> Worker:
    """This process's `Worker` under a strategy, reading TF_CONFIG for multi_worker.

    Pure Python (no TensorFlow op), so a bad cluster is reported before
    anything starts.

    Args:
      strategy: a `train.strategy` value.
      environ: the environment (default `os.environ`).

    Returns:
      The worker; one process (index 0 of 1) unless `strategy` is multi_worker.

    Raises:
      InputError: TF_CONFIG is missing or malformed for multi_worker.
    """
    if strategy not in STRATEGIES:
        raise InputError(f"strategy must be {choices_text(STRATEGIES)}, got {strategy!r}",
                         key="train.strategy")
    if strategy != "multi_worker":
        return Worker()
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw.strip():
        raise InputError("multi_worker needs the TF_CONFIG environment variable (the cluster "
                         "and this process's task), e.g. " + _TF_CONFIG_EXAMPLE,
                         key="train.strategy")
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        raise _bad_tf_config(f"not valid JSON: {err.msg} (character {err.pos})") from None
    return parse_tf_config(spec)


def parse_tf_config(spec: Any) -> Worker:
    """The `Worker` described by a decoded TF_CONFIG.

    Args:
      spec: {"cluster": {"chief": ["host:port"], "worker": ["host:port", ...]},
        "task": {"type": "chief" | "worker", "index": int}}; "chief" is
        optional (without it, worker 0 is the chief).

    Raises:
      InputError: naming what is wrong with TF_CONFIG.
    """
    if not isinstance(spec, dict):
        raise _bad_tf_config(f"expected a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - {"cluster", "task", "environment", "rpc_layer"})
    if unknown:
        raise _bad_tf_config(f"unknown key {unknown[0]!r} (expected cluster and task)")
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise _bad_tf_config('needs "cluster": {"worker": ["host:port", ...]}')
    if not isinstance(task, dict):
        raise _bad_tf_config('needs "task": {"type": "worker", "index": N}')
    for job, addresses in cluster.items():
        if job in ("ps", "evaluator"):
            raise _bad_tf_config(
                f"cluster has a {job!r} job: multi_worker trains with 'chief' and 'worker' "
                "tasks only (tfrec has no parameter-server or evaluator mode)")
        if job not in ("chief", "worker"):
            raise _bad_tf_config(f"unknown job {job!r} in cluster (expected chief, worker)")
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and _is_address(a) for a in addresses)):
            raise _bad_tf_config(f"cluster job {job!r} must be a list of \"host:port\" "
                                 f"addresses, got {addresses!r}")
    chiefs, workers = cluster.get("chief", []), cluster.get("worker", [])
    every = chiefs + workers
    twice = sorted({a for a in every if every.count(a) > 1})
    if twice:
        raise _bad_tf_config(f"address {twice[0]} is given to two tasks (each task listens "
                             "on its own address)")
    if len(chiefs) > 1:
        raise _bad_tf_config(f"a cluster has at most one chief, got {len(chiefs)}")
    task_type, task_index = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise _bad_tf_config(f"task type {task_type!r} is not a job of the cluster "
                             f"({', '.join(cluster)})")
    if isinstance(task_index, bool) or not isinstance(task_index, int) or not (
            0 <= task_index < len(cluster[task_type])):
        raise _bad_tf_config(f"task index {task_index!r} is out of range for job "
                             f"{task_type!r} ({len(cluster[task_type])} tasks)")
    index = task_index + len(chiefs) if task_type == "worker" else 0
    return Worker(index=index, count=len(chiefs) + len(workers), task_type=task_type,
                  task_index=task_index)


def create_strategy(strategy: str):
    """The `tf.distribute.Strategy` named by `train.strategy`.

    multi_worker must be created before TensorFlow runs any op in the process
    (it configures the runtime's collective ops): `tfrec.training.train` creates
    it first thing; a program of your own must do the same. It returns once
    every worker of the cluster has started.

    Args:
      strategy: "default", "mirrored" or "multi_worker".

    Returns:
      The strategy (the default strategy for "default", whose scope changes
      nothing).

    Raises:
      RuntimeError: multi_worker asked for after TensorFlow has started.
    """
    import tensorflow as tf

    if strategy == "default":
        return tf.distribute.get_strategy()
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    # Ring all-reduce works on CPUs and GPUs alike (NCCL needs GPUs).
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    logger.info("multi_worker: waiting for every task of the cluster to start (TF_CONFIG)%s",
                "" if ignored else "; Ctrl-C stops this one meanwhile")
    try:
        # TensorFlow waits for the cluster in C++, where Python's signal handlers never
        # run: meanwhile Ctrl-C ends the process (nothing is written yet). SIGTERM is
        # TensorFlow's meanwhile (its coordination service's preemption notice); the
        # handlers put back afterwards take it back (a SIGTERM then stops training).
        with _signals_end_the_process():
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as err:
        if "startup" not in str(err) and "initialized" not in str(err):
            raise
        raise RuntimeError(
            "train.strategy 'multi_worker' must be set up before TensorFlow runs any op in "
            "this process: run `tfrec train` (or call tfrec.training.train) in a fresh process"
        ) from err


def _signals_end_the_process():
    """SIGINT and SIGTERM at the operating system's default (end the process) unless
    ignored; afterwards a Python handler (tfrec's commands') is put back, taking SIGTERM
    back from TensorFlow; otherwise TensorFlow's, installed meanwhile, stays."""
    return swapped_signal_handlers(
        lambda signum, current: None if current is signal.SIG_IGN else signal.SIG_DFL,
        give_back=callable)


def _is_address(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _bad_tf_config(reason: str) -> InputError:
    return InputError(f"environment variable TF_CONFIG (for train.strategy 'multi_worker'): "
                      f"{reason}; e.g. {_TF_CONFIG_EXAMPLE}")
