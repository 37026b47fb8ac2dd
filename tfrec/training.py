"""`tfrec train`: data -> hybrid model -> Keras fit, with a resumable run folder.

A run folder holds:
  config.json        the resolved run config
  vocab.tsv          item vocabulary (index order, counts from the training slice)
  text_vocab.txt     token vocabulary of the text tower
  checkpoints/       tf.train.CheckpointManager, one checkpoint per finished epoch
  logs/              TensorBoard
  history.jsonl      one line of metrics per finished epoch
  eval.json          held-out hit rate after training

Under `train.strategy: multi_worker` only the chief writes the run folder;
the other workers write their (collective) checkpoint saves to a temporary
folder that they delete, and skip the held-out evaluation.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path


from tfrec import distribute
from tfrec.config import RunConfig, from_dict
from tfrec.errors import InputError
from tfrec.utils import ensure_folder

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped, last good checkpoint kept."""


class WorkerLost(RuntimeError):
    """Multi-worker training stopped: another worker died or became unreachable."""


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
      worker: this process's place in the cluster (one process, the chief,
        unless `train.strategy` is multi_worker).
    """

    run_dir: Path
    model: object
    history: list[dict]
    evaluation: dict | None
    seconds: float
    data: object
    worker: distribute.Worker = dataclasses.field(default_factory=distribute.Worker)


def load_data(config: RunConfig):
    """Reads the events (and items) named by the config; returns (events, items, rejections)."""
    from tfrec.data import events as events_lib

    data = config.data
    events, items, rejections, _ = events_lib.read_tables(
        data.layout, data.events, data.items, data.events_schema, data.items_schema,
        data.strict, data.data_dir, data.goodbooks_to_read)
    return events, items, rejections


@dataclasses.dataclass
class TrainingData:
    """The training slice as model inputs, and the held-out cases."""

    vocab: object
    sessions: object
    pairs: object
    next_items: object
    cases: object
    rejections: object
    train_events: int
    test_events: int
    test_slice: object = None
    split: object = None
    retrieval_context: str = "previous"  # model.retrieval_context, "auto" resolved


def prepare_training_data(config: RunConfig) -> TrainingData:
    """Splits (by time or by user, see `train.split_by`), builds the vocabulary
    from the training slice, makes the pipelines and the held-out cases."""
    from tfrec.data.pipeline import PairPipeline
    from tfrec.data.sequences import NextItemPipeline
    from tfrec.data.sessions import resolve_retrieval_context, sessionize
    from tfrec.data.vocab import build_vocabulary
    from tfrec.data.split import make_cases, split_for_training

    events, items, rejections = load_data(config)
    split = split_for_training(events, items, config.train)
    train_events, test_events = split.train, split.test
    if config.model.use_text and items is None:
        raise InputError("the text tower needs item text: give an items table "
                         "(data.items) or set model.use_text: false", key="data.items")
    vocab = build_vocabulary(train_events, items)
    sessions = sessionize(train_events, vocab, config.data.sessions,
                          config.data.pairs.event_weights, config.data.pairs.default_event_weight)
    pairs = PairPipeline(sessions, vocab, config.data.pairs)
    next_items = None
    context = resolve_retrieval_context(config.model.retrieval_context, sessions)
    if config.model.objective in ("retrieval", "both"):
        if config.model.retrieval_context == "auto":
            logger.info("retrieval context: %s (auto: %d of %d sessions of 2+ events have one "
                        "timestamp)", context, sessions.stats["unordered_sessions"],
                        sessions.stats["multi_event_sessions"])
        next_items = NextItemPipeline(sessions, vocab, config.model.history_length,
                                      config.train.retrieval_batch_size, config.data.pairs.seed,
                                      context)
    cases = make_cases(test_events, vocab, config.train.eval_seed, config.data.sessions,
                       per_user=split.per_user)
    return TrainingData(vocab, sessions, pairs, next_items, cases, rejections,
                        len(train_events), len(test_events), test_events, split, context)


def make_dataset(data: TrainingData, objective: str, steps_per_epoch: int | None = None,
                 num_shards: int = 1, shard_index: int = 0):
    """The tf.data.Dataset Keras fits on, for the chosen objective.

    One pass over it is one epoch (each pass is the pipelines' next epoch).

    Args:
      data: the training pipelines.
      objective: "skipgram", "retrieval" or "both".
      steps_per_epoch: cap on the steps of an epoch (per worker).
      num_shards: workers of a multi-worker cluster (n). Each keeps its own
        batches, n per dataset element, which tf.distribute splits back into
        one batch per step (see `tfrec.data.shard`); a cap is then rounded up
        to a multiple of n.
      shard_index: this worker, 0..n-1.

    Returns:
      The dataset, with tf.data auto-sharding off (the pipelines shard).
    """
    import tensorflow as tf

    shard = {"num_shards": num_shards, "shard_index": shard_index}
    if objective == "skipgram":
        dataset = data.pairs.as_dataset(**shard)
    elif objective == "retrieval":
        dataset = data.next_items.as_dataset(**shard)
    else:
        # One step sees a batch of pairs and a batch of retrieval examples;
        # the pair stream sets the length of an epoch.
        dataset = tf.data.Dataset.zip((data.pairs.as_dataset(**shard),
                                       data.next_items.as_dataset(repeat=True, **shard)))
        dataset = dataset.map(lambda a, b: {**a, **b})
    if steps_per_epoch:
        dataset = dataset.take(math.ceil(steps_per_epoch / num_shards))
    options = tf.data.Options()
    # Generators cannot be sharded by file, and sharding by element would split
    # the stacked batches across workers: the pipelines shard themselves.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def _optimizer(config: RunConfig):
    from tfrec.optimizers import build_optimizer

    return build_optimizer(config.train.optimizer, config.train.learning_rate)


def _callbacks(run_dir: Path, manager, epoch_var, history_path: Path, history: list[dict],
               epochs: int, chief: bool = True):
    """(guard, callbacks): NaN guard, per-epoch checkpoint + history line, progress, TensorBoard.

    Every worker saves (a checkpoint save is a collective operation under a
    multi-worker strategy); only the chief writes history and TensorBoard
    logs. `history` collects this session's lines on every worker; `epochs`
    is the run's total, for the progress display.
    """
    import tf_keras as keras

    class Progress(keras.callbacks.ProgbarLogger):
        """Keras progress that counts the run's epochs (`fit` runs one at a time)."""

        def __init__(self):
            super().__init__(count_mode="steps")

        def set_params(self, params):
            super().set_params({**params, "epochs": epochs})

    class Guard(keras.callbacks.Callback):
        """Stops at the first non-finite loss and remembers where."""

        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.bad_step = None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.bad_step = (self.epoch + 1, batch + 1)
                self.model.stop_training = True

    guard = Guard()

    class Save(keras.callbacks.Callback):
        """A checkpoint and a history line per finished epoch (never after a NaN)."""

        def on_epoch_end(self, epoch, logs=None):
            if guard.bad_step is not None:
                return
            epoch_var.assign(epoch + 1)
            path = manager.save(checkpoint_number=epoch + 1)
            line = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
                    "checkpoint": path, "time": time.time()}
            history.append(line)
            if not chief:
                return
            with history_path.open("a") as f:
                f.write(json.dumps(line) + "\n")
            logger.info("epoch %d saved to %s", epoch + 1, path)

    if not chief:
        return guard, [guard, Save(), Progress()]
    tensorboard = keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"),
                                              update_freq="epoch", profile_batch=0)
    return guard, [guard, Save(), Progress(), tensorboard]


def _write_run_files(run_dir: Path, config: RunConfig, data: TrainingData, model) -> None:
    (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    data.vocab.save(run_dir / "vocab.tsv")
    tokens = getattr(model.candidate_tower, "text_vocabulary", [])
    (run_dir / "text_vocab.txt").write_text("".join(t + "\n" for t in tokens))


def read_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise InputError("not a run folder (no config.json)", path=str(run_dir))
    return from_dict(RunConfig, json.loads(path.read_text()), str(path))


def train(config: RunConfig, run_dir: str | Path, resume: bool = False,
          verbose: int | None = None, epochs: int | None = None,
          strategy: str | None = None, overwrite: bool = False) -> TrainResult:
    """Trains the hybrid model; with `resume`, continues the run in run_dir.

    Under `train.strategy` "mirrored" or "multi_worker" the model and its
    optimizer are built in the strategy's scope and Keras `fit` trains them
    data-parallel. A multi_worker run starts one process per worker, each
    with the same config and run folder and its own TF_CONFIG; it must call
    this before TensorFlow runs any op in the process (the strategy is
    created first thing, and returns once every worker has started). Each
    worker trains on its own batches, `pairs.batch_size` /
    `retrieval_batch_size` of them per step, so the global batch is the
    number of workers times that. Only the chief writes the run folder
    (which the workers resuming a run read, so put it on a shared file
    system).

    Args:
      config: the run config (ignored when resuming: the run's own is used).
      run_dir: the run folder.
      resume: continue from the run's last checkpoint.
      verbose: Keras progress (default: a bar on a terminal, a line per epoch
        otherwise).
      epochs: with `resume`, a new total number of epochs (to train longer).
      strategy: with `resume`, another `train.strategy` to continue under
        (a checkpoint restores under any strategy).
      overwrite: without `resume`, replace an existing run folder (the
        chief's job under multi_worker).

    Returns:
      The run folder, the trained model, the history, the held-out
      evaluation (None on workers other than the chief) and this process's
      place in the cluster.

    Raises:
      InputError: bad data or config, a missing or malformed TF_CONFIG for
        multi_worker, a run folder that exists without `resume` or
        `overwrite` (or that is not a run, with `overwrite`), or `resume`
        without a checkpoint.
      TrainingDiverged: the loss became NaN/inf (the last good checkpoint is
        kept and named in the message).
      WorkerLost: under multi_worker, another worker died or became
        unreachable (the last checkpoint is named in the message).
      RuntimeError: multi_worker asked for after TensorFlow has run an op in
        this process.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    # Everything before the strategy is plain Python, the same on every
    # worker, so a bad setting stops all workers alike before any waits for
    # the others.
    if resume:
        config = read_run_config(run_dir)
        logger.info("resuming with the run's saved config (%s)", run_dir / CONFIG_FILE)
        changes = {}
        if epochs is not None:
            changes["epochs"] = epochs
        if strategy is not None:
            changes["strategy"] = strategy
        if changes:
            config = dataclasses.replace(
                config, train=from_dict(type(config.train),
                                        {**dataclasses.asdict(config.train), **changes},
                                        prefix="train."))
    worker = distribute.cluster_worker(config.train.strategy)
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise InputError("run folder exists and is not empty; pass --resume to continue it, "
                             "--overwrite to replace it, or choose another --run-dir",
                             path=str(run_dir))
        if worker.is_chief:  # the others leave the folder to the chief
            if not (run_dir / CONFIG_FILE).exists():
                raise InputError("refusing to overwrite a folder that is not a tfrec run",
                                 path=str(run_dir))
            shutil.rmtree(run_dir)
    if worker.is_chief:
        ensure_folder(run_dir, "run folder")
        if resume and (epochs is not None or strategy is not None):
            (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    tf_strategy = distribute.create_strategy(config.train.strategy)
    if worker.count > 1:
        logger.info("worker %d of %d (%s %d)%s", worker.index, worker.count, worker.task_type,
                    worker.task_index, ", the chief" if worker.is_chief else "")

    import tensorflow as tf

    from tfrec.evaluate.protocol import evaluate_model
    from tfrec.models import build_model

    logger.info("preparing data")
    data = prepare_training_data(config)
    logger.info("training slice: %d events, %d sessions, %d items (%d warm, %d cold); "
                "%d held-out cases (%d cold targets)", data.train_events,
                data.sessions.num_sessions, data.vocab.size - 1, data.vocab.num_warm,
                data.vocab.num_cold, len(data.cases), int(data.cases.cold.sum()))
    if data.split.per_user or len(data.split.hidden_items):
        logger.info("held out: %d users (%d events), %d items hidden from training",
                    len(data.split.kept_out_users), data.test_events,
                    len(data.split.hidden_items))
    tf.random.set_seed(config.train.seed)
    with tf_strategy.scope():
        model = build_model(config.model, data.vocab, seed=config.train.seed)
        model.compile(optimizer=_optimizer(config))

    epoch_var = tf.Variable(0, dtype=tf.int64, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch_var)
    checkpoint_dir = run_dir / "checkpoints"
    # Every worker saves (a collective operation); the others into a folder
    # of their own that they delete at the end.
    write_dir = checkpoint_dir if worker.is_chief else Path(
        tempfile.mkdtemp(prefix=f"tfrec-worker{worker.index}-checkpoints-"))
    try:
        manager = tf.train.CheckpointManager(checkpoint, str(write_dir), max_to_keep=3)
        history_path = run_dir / "history.jsonl"
        initial_epoch = 0
        if resume:
            latest = tf.train.latest_checkpoint(str(checkpoint_dir))
            if latest is None:
                raise InputError("nothing to resume: the run has no finished epoch yet",
                                 path=str(checkpoint_dir))
            checkpoint.restore(latest).expect_partial()
            initial_epoch = int(epoch_var.numpy())
            logger.info("resumed from %s (epoch %d done)", latest, initial_epoch)
            if worker.is_chief:
                _truncate_history(history_path, initial_epoch)
        elif worker.is_chief:
            _write_run_files(run_dir, config, data, model)

        # The data pipelines continue from the resumed epoch: the same batches
        # as an uninterrupted run.
        data.pairs._iterations = itertools.count(initial_epoch)
        if data.next_items is not None:
            data.next_items._iterations = itertools.count(initial_epoch)
        dataset = make_dataset(data, config.model.objective, config.train.steps_per_epoch,
                               num_shards=worker.count, shard_index=worker.index)
        session_history: list[dict] = []
        guard, callbacks = _callbacks(run_dir, manager, epoch_var, history_path,
                                      session_history, config.train.epochs,
                                      chief=worker.is_chief)
        if verbose is None:
            verbose = 1 if sys.stderr.isatty() else 2
        for epoch in range(initial_epoch, config.train.epochs):
            # One `fit` per epoch: over several epochs Keras holds every epoch
            # of a dataset of unknown length to the first one's step count, but
            # the pipelines' epochs differ in length (subsampling), so a shorter
            # epoch would end training early and a longer one would be cut.
            try:
                model.fit(dataset, epochs=epoch + 1, initial_epoch=epoch, callbacks=callbacks,
                          verbose=verbose)
            except (tf.errors.UnavailableError, tf.errors.AbortedError,
                    tf.errors.DeadlineExceededError) as err:
                if worker.count == 1:
                    raise
                kept = (tf.train.latest_checkpoint(str(checkpoint_dir))
                        or "none (no epoch had finished)")
                lines = [line.strip() for line in (err.message or "").splitlines()
                         if line.strip()]
                # The runtime's own words, e.g. "Collective ops is aborted by: ...".
                reason = next((line for line in lines if "aborted" in line),
                              lines[0] if lines else type(err).__name__)
                raise WorkerLost(
                    f"epoch {epoch + 1} stopped: another worker of the cluster died or became "
                    f"unreachable ({reason}). Last checkpoint: {kept}. Restart every worker "
                    "with --resume.") from None
            if guard.bad_step is not None:
                break
    finally:
        if not worker.is_chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    if guard.bad_step is not None:
        epoch, step = guard.bad_step
        kept = (tf.train.latest_checkpoint(str(checkpoint_dir))
                or "none (no epoch had finished)")
        raise TrainingDiverged(
            f"loss became NaN/inf at epoch {epoch}, step {step}; training stopped. "
            f"Last good checkpoint kept: {kept}. Lower train.learning_rate or check the "
            "event weights.")
    if not worker.is_chief:
        return TrainResult(run_dir, model, session_history, None,
                           time.perf_counter() - started, data, worker)
    history = read_history(run_dir)
    evaluation = None
    if len(data.cases):
        logger.info("evaluating on %d held-out cases", len(data.cases))
        evaluation = evaluate_model(model, data.cases, config.model.history_length,
                                    config.train.eval_k)
        evaluation["train_seconds"] = round(time.perf_counter() - started, 1)
        (run_dir / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    return TrainResult(run_dir, model, history, evaluation, time.perf_counter() - started,
                       data, worker)


def check_run_data(data_vocab, run_vocab, run_dir: str | Path) -> None:
    """Refuses data whose item vocabulary is not the one the run trained on.

    Item indices are positions in the vocabulary: with other data, every
    lookup (queries, cached user embeddings, cases) would name other items.

    Raises:
      InputError: the vocabularies differ.
    """
    if list(data_vocab.ids) != list(run_vocab.ids):
        changed = len(set(map(str, data_vocab.ids)) ^ set(map(str, run_vocab.ids)))
        raise InputError(
            "the run's data has changed since training: its item vocabulary differs from "
            f"vocab.tsv ({data_vocab.size - 1:,} items now, {run_vocab.size - 1:,} trained; "
            f"{changed:,} ids in one but not the other); retrain, or point the config at the "
            "original data", path=str(Path(run_dir) / "vocab.tsv"))


def load_run(run_dir: str | Path):
    """Rebuilds a run's model from its folder and restores its last checkpoint.

    Returns:
      (config, vocab, model, checkpoint_path).

    Raises:
      InputError: not a run folder, or no finished epoch to restore.
    """
    import tensorflow as tf

    from tfrec.data.vocab import ItemVocabulary
    from tfrec.models import build_model

    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise InputError("run path is a file, expected a run folder", path=str(run_dir))
    config = read_run_config(run_dir)
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    if latest is None:
        raise InputError("the run has no finished checkpoint yet (train at least one epoch)",
                         path=str(run_dir / "checkpoints"))
    vocab = ItemVocabulary.load(run_dir / "vocab.tsv")
    tokens_path = run_dir / "text_vocab.txt"
    tokens = tokens_path.read_text().splitlines() if tokens_path.exists() else None
    model = build_model(config.model, vocab, seed=config.train.seed, text_vocabulary=tokens)
    epoch = tf.Variable(0, dtype=tf.int64, name="epoch")
    tf.train.Checkpoint(model=model, epoch=epoch).restore(latest).expect_partial()
    return config, vocab, model, latest


def read_history(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_history(path: Path, epochs: int) -> None:
    """Drops history lines past the restored epoch (an epoch killed after its line)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines()
                 if line.strip() and json.loads(line)["epoch"] <= epochs]
        path.write_text("".join(line + "\n" for line in lines))


def format_evaluation(evaluation: dict, k: int) -> str:
    rows = [f"  {'targets':<8}{'cases':>8}{f'HR@{k}':>9}{f'NDCG@{k}':>10}"]
    for name in ("all", "warm", "cold"):
        e = evaluation[name]
        rows.append(f"  {name:<8}{e['cases']:>8,}{e[f'hr@{k}']:>9.4f}{e[f'ndcg@{k}']:>10.4f}")
    if evaluation.get("unknown_targets"):
        rows.append(f"  ({evaluation['unknown_targets']} cases skipped: target unknown to the "
                    "catalogue)")
    return "\n".join(rows)
