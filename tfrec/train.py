"""`tfrec train`: data -> hybrid model -> Keras fit, with a resumable run folder.

A run folder holds:
  config.json        the resolved run config
  vocab.tsv          item vocabulary (index order, counts from the training slice)
  text_vocab.txt     token vocabulary of the text tower
  checkpoints/       tf.train.CheckpointManager, one checkpoint per finished epoch
  logs/              TensorBoard
  history.jsonl      one line of metrics per finished epoch
  eval.json          held-out hit rate after training
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import sys
import time
from pathlib import Path


from tfrec.config import RunConfig, from_dict
from tfrec.errors import InputError
from tfrec.utils import ensure_folder

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped, last good checkpoint kept."""


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    model: object
    history: list[dict]
    evaluation: dict | None
    seconds: float
    data: object


def load_data(config: RunConfig):
    """Reads the events (and items) named by the config; returns (events, items, rejections)."""
    from tfrec.data import events as events_lib

    data = config.data
    events, items, rejections, _ = events_lib.read_tables(
        data.layout, data.events, data.items, data.events_schema, data.items_schema,
        data.strict)
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


def prepare_training_data(config: RunConfig) -> TrainingData:
    """Splits by time, builds the vocabulary from the training slice, makes the pipelines."""
    from tfrec.data.pipeline import PairPipeline
    from tfrec.data.sequences import NextItemPipeline
    from tfrec.data.sessions import sessionize
    from tfrec.data.vocab import build_vocabulary
    from tfrec.evaluate.protocol import make_cases, split_events

    events, items, rejections = load_data(config)
    train_events, test_events, _ = split_events(events, config.train.split_date,
                                                config.train.split_fraction)
    if config.model.use_text and items is None:
        raise InputError("the text tower needs item text: give an items table "
                         "(data.items) or set model.use_text: false", key="data.items")
    vocab = build_vocabulary(train_events, items)
    sessions = sessionize(train_events, vocab, config.data.sessions,
                          config.data.pairs.event_weights, config.data.pairs.default_event_weight)
    pairs = PairPipeline(sessions, vocab, config.data.pairs)
    next_items = None
    if config.model.objective in ("retrieval", "both"):
        next_items = NextItemPipeline(sessions, vocab, config.model.history_length,
                                      config.train.retrieval_batch_size, config.data.pairs.seed,
                                      config.model.retrieval_context)
    cases = make_cases(test_events, vocab, config.train.eval_seed, config.data.sessions)
    return TrainingData(vocab, sessions, pairs, next_items, cases, rejections,
                        len(train_events), len(test_events), test_events)


def make_dataset(data: TrainingData, objective: str, steps_per_epoch: int | None = None):
    """The tf.data.Dataset Keras fits on, for the chosen objective."""
    import tensorflow as tf

    if objective == "skipgram":
        dataset = data.pairs.as_dataset()
    elif objective == "retrieval":
        dataset = data.next_items.as_dataset()
    else:
        # One step sees a batch of pairs and a batch of retrieval examples;
        # the pair stream sets the length of an epoch.
        dataset = tf.data.Dataset.zip((data.pairs.as_dataset(),
                                       data.next_items.as_dataset(repeat=True)))
        dataset = dataset.map(lambda a, b: {**a, **b})
    if steps_per_epoch:
        dataset = dataset.take(steps_per_epoch)
    return dataset


def _optimizer(config: RunConfig):
    import tf_keras as keras

    lr = config.train.learning_rate
    return {"adam": lambda: keras.optimizers.Adam(lr),
            "adagrad": lambda: keras.optimizers.Adagrad(lr),
            "sgd": lambda: keras.optimizers.SGD(lr)}[config.train.optimizer]()


def _callbacks(run_dir: Path, manager, epoch_var, history_path: Path):
    import tf_keras as keras

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
            with history_path.open("a") as f:
                f.write(json.dumps(line) + "\n")
            logger.info("epoch %d saved to %s", epoch + 1, path)

    tensorboard = keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"),
                                              update_freq="epoch", profile_batch=0)
    return guard, [guard, Save(), tensorboard]


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
          verbose: int | None = None, epochs: int | None = None) -> TrainResult:
    """Trains the hybrid model; with `resume`, continues the run in run_dir.

    Args:
      config: the run config (ignored when resuming: the run's own is used).
      run_dir: the run folder.
      resume: continue from the run's last checkpoint.
      verbose: Keras progress (default: a bar on a terminal, a line per epoch
        otherwise).
      epochs: with `resume`, a new total number of epochs (to train longer).

    Raises:
      InputError: bad data or config, a run folder that exists without
        `resume`, or `resume` without a checkpoint.
      TrainingDiverged: the loss became NaN/inf (the last good checkpoint is
        kept and named in the message).
    """
    import tensorflow as tf

    from tfrec.evaluate.protocol import evaluate_model
    from tfrec.models import build_model

    started = time.perf_counter()
    run_dir = Path(run_dir)
    if resume:
        config = read_run_config(run_dir)
        logger.info("resuming with the run's saved config (%s)", run_dir / CONFIG_FILE)
        if epochs is not None:
            config = dataclasses.replace(
                config, train=dataclasses.replace(config.train, epochs=epochs))
            (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise InputError("run folder exists and is not empty; pass --resume to continue it "
                         "or choose another --run-dir", path=str(run_dir))
    ensure_folder(run_dir, "run folder")

    logger.info("preparing data")
    data = prepare_training_data(config)
    logger.info("training slice: %d events, %d sessions, %d items (%d warm, %d cold); "
                "%d held-out cases", data.train_events, data.sessions.num_sessions,
                data.vocab.size - 1, data.vocab.num_warm, data.vocab.num_cold, len(data.cases))
    tf.random.set_seed(config.train.seed)
    model = build_model(config.model, data.vocab, seed=config.train.seed)
    model.compile(optimizer=_optimizer(config))

    epoch_var = tf.Variable(0, dtype=tf.int64, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch_var)
    manager = tf.train.CheckpointManager(checkpoint, str(run_dir / "checkpoints"),
                                         max_to_keep=3)
    history_path = run_dir / "history.jsonl"
    initial_epoch = 0
    if resume:
        if manager.latest_checkpoint is None:
            raise InputError("nothing to resume: the run has no finished epoch yet",
                             path=str(run_dir / "checkpoints"))
        checkpoint.restore(manager.latest_checkpoint).expect_partial()
        initial_epoch = int(epoch_var.numpy())
        logger.info("resumed from %s (epoch %d done)", manager.latest_checkpoint, initial_epoch)
        _truncate_history(history_path, initial_epoch)
    else:
        _write_run_files(run_dir, config, data, model)

    # The data pipelines continue from the resumed epoch: the same batches as
    # an uninterrupted run.
    data.pairs._iterations = itertools.count(initial_epoch)
    if data.next_items is not None:
        data.next_items._iterations = itertools.count(initial_epoch)
    dataset = make_dataset(data, config.model.objective, config.train.steps_per_epoch)
    guard, callbacks = _callbacks(run_dir, manager, epoch_var, history_path)
    if verbose is None:
        verbose = 1 if sys.stderr.isatty() else 2
    if initial_epoch < config.train.epochs:
        model.fit(dataset, epochs=config.train.epochs, initial_epoch=initial_epoch,
                  callbacks=callbacks, verbose=verbose)
    if guard.bad_step is not None:
        epoch, step = guard.bad_step
        kept = manager.latest_checkpoint or "none (no epoch had finished)"
        raise TrainingDiverged(
            f"loss became NaN/inf at epoch {epoch}, step {step}; training stopped. "
            f"Last good checkpoint kept: {kept}. Lower train.learning_rate or check the "
            "event weights.")
    history = read_history(run_dir)
    evaluation = None
    if len(data.cases):
        logger.info("evaluating on %d held-out cases", len(data.cases))
        evaluation = evaluate_model(model, data.cases, config.model.history_length,
                                    config.train.eval_k)
        evaluation["train_seconds"] = round(time.perf_counter() - started, 1)
        (run_dir / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    return TrainResult(run_dir, model, history, evaluation, time.perf_counter() - started, data)


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

