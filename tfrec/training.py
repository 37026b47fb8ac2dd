"""`tfrec train`: data -> hybrid model -> Keras fit, with a resumable run folder.

`train` resolves the config, prepares the run folder, builds the model and
fits it one epoch at a time, a checkpoint and a history line per finished
epoch (the run folder's layout: `tfrec.run`).

Under `train.strategy: multi_worker` only the chief writes the run folder;
the other workers write their (collective) checkpoint saves to a temporary
folder that they delete, and skip the held-out evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import tensorflow as tf
import tf_keras as keras

import tfrec.distribute as distribute
from tfrec.config import PairConfig, RunConfig, from_dict
from tfrec.data.report import data_setting_warnings, event_type_counts, text_warnings
from tfrec.errors import InputError
from tfrec.metrics import evaluate_model
from tfrec.models import build_model, required_streams
from tfrec.optimizers import build_optimizer
from tfrec.run import TrainingData, prepare_training_data
from tfrec.run_folder import RunFolder
from tfrec.tasks.samplers import check_sampler_name
from tfrec.utils import ensure_folder

logger = logging.getLogger(__name__)

NOT_FINISHED = "none (no epoch had finished)"


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
    epochs_now: int | None = None  # the epochs this call trained (a resume: the rest)


def make_dataset(data: TrainingData, streams: Sequence[str], steps_per_epoch: int | None = None,
                 num_shards: int = 1, shard_index: int = 0):
    """The tf.data.Dataset Keras fits on: the model's training streams, zipped.

    One pass over it is one epoch (each pass is the pipelines' next epoch).

    Args:
      data: the training pipelines.
      streams: the streams the model's tasks read (`HybridModel.streams`,
        `tfrec.models.required_streams`): "pairs" and/or "next_items".
        One step sees a batch of each; the first sets the length of an
        epoch, the others repeat.
      steps_per_epoch: cap on the steps of an epoch (per worker).
      num_shards: workers of a multi-worker cluster (n). Each keeps its own
        batches, n per dataset element, which tf.distribute splits back into
        one batch per step (see `tfrec.data.shard`); a cap is then rounded up
        to a multiple of n.
      shard_index: this worker, 0..n-1.

    Returns:
      The dataset, with tf.data auto-sharding off (the pipelines shard).
    """
    shard = {"num_shards": num_shards, "shard_index": shard_index}
    for stream in streams:
        if stream not in ("pairs", "next_items"):
            raise ValueError(f"unknown training stream {stream!r}: 'pairs' or 'next_items'")
        if getattr(data, stream) is None:
            held = [name for name in ("pairs", "next_items") if getattr(data, name) is not None]
            raise ValueError(f"the training data has no {stream!r} stream (it has "
                             f"{', '.join(held)}): prepare it with a config whose "
                             "model.objective trains on it ('retrieval' or 'both' for "
                             "'next_items')")
    datasets = [getattr(data, stream).as_dataset(**shard, **({"repeat": True} if i else {}))
                for i, stream in enumerate(streams)]
    dataset = datasets[0]
    if len(datasets) > 1:
        dataset = tf.data.Dataset.zip(tuple(datasets)).map(
            lambda *parts: {k: v for part in parts for k, v in part.items()})
    if steps_per_epoch:
        dataset = dataset.take(math.ceil(steps_per_epoch / num_shards))
    options = tf.data.Options()
    # Generators cannot be sharded by file, and sharding by element would split
    # the stacked batches across workers: the pipelines shard themselves.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def _optimizer(config: RunConfig):
    return build_optimizer(config.train.optimizer, config.train.learning_rate)


# Callbacks ---------------------------------------------------------------------------------

def known_steps_per_epoch(data: TrainingData, streams: Sequence[str],
                          steps_per_epoch: int | None = None, num_shards: int = 1) -> int | None:
    """The steps of one epoch of `make_dataset`, where they are known before it runs.

    An epoch's length is set by the first stream: the retrieval stream's is
    fixed (its examples in batches); the pair stream's changes from epoch to
    epoch (subsampling draws again), so it is unknown (None).
    """
    if not streams or streams[0] != "next_items" or data.next_items is None:
        return None
    examples, batch = data.next_items.num_examples, data.next_items.batch_size
    if num_shards == 1:  # every batch, the last one short
        steps = -(-examples // batch)
        return min(steps, steps_per_epoch) if steps_per_epoch else steps
    # n workers: full batches only, each worker keeping every n-th, n of them per dataset
    # element, and stepping through the n of each element itself (`tfrec.data.shard`).
    elements = examples // batch // num_shards ** 2
    if steps_per_epoch:
        elements = min(elements, math.ceil(steps_per_epoch / num_shards))
    return elements * num_shards


class RunProgress(keras.callbacks.ProgbarLogger):
    """Keras progress that counts the run's epochs (`fit` runs one at a time) and, where
    they are known (`known_steps_per_epoch`), the steps of an epoch: a bar with an ETA
    from the first epoch on, not "N/Unknown"."""

    def __init__(self, epochs: int, steps_per_epoch: int | None = None):
        super().__init__(count_mode="steps")
        self.run_epochs = epochs
        self.run_steps = steps_per_epoch

    def set_params(self, params):
        params = {**params, "epochs": self.run_epochs}
        if params.get("steps") is None and self.run_steps:
            params["steps"] = self.run_steps
        super().set_params(params)


class EpochMeanLoss(keras.callbacks.Callback):
    """An epoch's loss is the mean of its steps' losses, the figure the progress bar shows.

    A TFRS model's `fit` logs each step's own loss, and at an epoch's end the
    last step's; the bar averages the steps. This puts the epoch's mean in
    the epoch's logs (so the history, TensorBoard, the bar's last line and
    the "final loss" printed are one quantity); it must come before the
    callbacks that read them.
    """

    KEYS = ("loss", "regularization_loss", "total_loss")

    def __init__(self):
        super().__init__()
        self.sums: dict[str, float] = {}
        self.steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.sums, self.steps = {}, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        for key in self.KEYS:
            if key in (logs or {}):
                self.sums[key] = self.sums.get(key, 0.0) + float(logs[key])

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.steps:
            for key, total in self.sums.items():
                logs[key] = total / self.steps


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops at the first non-finite loss and remembers where (`bad_step`: epoch, step)."""

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


class EpochCheckpoint(keras.callbacks.Callback):
    """A checkpoint and a history line per finished epoch (never after a non-finite loss).

    Every worker saves (a checkpoint save is a collective operation under a
    multi-worker strategy); only the chief appends the line to the run's history.
    `history` collects this session's lines on every worker.
    """

    def __init__(self, manager, epoch_var, guard: NonFiniteLossGuard, history: list[dict],
                 history_path: Path, chief: bool = True):
        super().__init__()
        self.manager = manager
        self.epoch_var = epoch_var
        self.guard = guard
        self.history = history
        self.history_path = history_path
        self.chief = chief

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.bad_step is not None:
            return
        self.epoch_var.assign(epoch + 1)
        path = self.manager.save(checkpoint_number=epoch + 1)
        line = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
                "checkpoint": str(Path(path).resolve()), "time": time.time()}
        self.history.append(line)
        if not self.chief:
            return
        with self.history_path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        logger.info("epoch %d saved to %s", epoch + 1, path)


def build_callbacks(run_dir: Path, manager, epoch_var, history: list[dict], epochs: int,
                    chief: bool = True, steps_per_epoch: int | None = None
                    ) -> tuple[NonFiniteLossGuard, list]:
    """(guard, callbacks): NaN guard, the epoch's mean loss, progress, per-epoch
    checkpoint + history line, and (on the chief) TensorBoard. `epochs` is the run's
    total and `steps_per_epoch` an epoch's steps (None: unknown), for the progress.

    The progress comes before the checkpoint, so the bar's line is finished
    before the "epoch saved" line is logged.
    """
    guard = NonFiniteLossGuard()
    callbacks = [guard, EpochMeanLoss(), RunProgress(epochs, steps_per_epoch),
                 EpochCheckpoint(manager, epoch_var, guard, history,
                                 RunFolder(run_dir).history_file, chief)]
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(RunFolder(run_dir).logs),
                                                     update_freq="epoch", profile_batch=0))
    return guard, callbacks


# The steps of `train` ----------------------------------------------------------------------

def check_run_config(config: RunConfig) -> RunConfig:
    """`config`, once the settings whose allowed values are registered above the schema
    (`model.negatives`: the negative samplers' registry) are checked: before any data is
    read, so a bad name fails at once rather than after the data is prepared.

    Raises:
      InputError: naming the setting (e.g. `model.negatives`).
    """
    check_sampler_name(config.model.negatives)
    pairs = config.data.pairs
    if "pairs" in required_streams(config.model) and \
            pairs.num_negatives + pairs.market_negatives < 1:
        raise InputError("skip-gram pairs need at least one negative each: set "
                         "data.pairs.num_negatives (or data.pairs.market_negatives) to 1 or "
                         f"more, or a model.objective without pairs (it is "
                         f"{config.model.objective!r})", key="data.pairs.num_negatives")
    for message in ignored_settings(config) if not _HELD else ():
        if message not in _WARNED:
            _WARNED.add(message)
            logger.warning("%s", message)
    return config


_WARNED: set[str] = set()  # each warning of `check_run_config` once per process
_HELD: list[bool] = []  # inside `settings_warnings_held`


@contextlib.contextmanager
def settings_warnings_held():
    """No warning of unread settings inside: for a config tfrec derives from a run's (the
    evaluation's text-off variant reads no text setting by design; the run's own config
    was checked, and warned of, when it trained)."""
    _HELD.append(True)
    try:
        yield
    finally:
        _HELD.pop()


def ignored_settings(config: RunConfig) -> list[str]:
    """Warnings for settings set away from their defaults where the rest of the config
    does not read them: the event weights under an objective without skip-gram pairs,
    and the settings of a mode not chosen (`unread_settings`)."""
    return _ignored_event_weights(config) + unread_settings(config)


def unread_settings(config: RunConfig) -> list[str]:
    """Settings changed from their defaults that the chosen modes never read."""
    model, train, ranking = config.model, config.train, config.ranking
    defaults = {"model": type(model)(), "train": type(train)(), "ranking": type(ranking)()}
    out = []

    def changed(section, name):
        return getattr(config_of[section], name) != getattr(defaults[section], name)

    config_of = {"model": model, "train": train, "ranking": ranking}
    if model.pooling != "recency" and changed("model", "recency_decay"):
        out.append(f"model.recency_decay ({model.recency_decay:g}) is set but does nothing: "
                   f"model.pooling is {model.pooling!r} (it weighs the 'recency' pooling)")
    if train.split_by != "user" and changed("train", "holdout_users"):
        out.append(f"train.holdout_users ({train.holdout_users:g}) is set but does nothing: "
                   f"train.split_by is {train.split_by!r} (it is the 'user' split's share)")
    if train.split_by == "time" and train.split_date and changed("train", "split_fraction"):
        out.append(f"train.split_fraction ({train.split_fraction:g}) is set but does nothing: "
                   f"train.split_date ({train.split_date}) places the time split")
    if train.split_by == "user" and changed("train", "split_date"):
        out.append(f"train.split_date ({train.split_date}) is set but does nothing: "
                   "train.split_by is 'user' (it places the 'time' split)")

    def unread_group(section, names, reason):
        given = [name for name in names if changed(section, name)]
        if given:
            listed = ", ".join(f"{section}.{name} ({_shown(getattr(config_of[section], name))})"
                               for name in given)
            out.append(f"{listed} {'is' if len(given) == 1 else 'are'} set but "
                       f"do{'es' if len(given) == 1 else ''} nothing: {reason}")

    if not model.use_text and train.cold_items > 0:
        out.append(f"train.cold_items ({train.cold_items:g}) holds items out of training as "
                   "new ones, but model.use_text is false: an item without behaviour is known "
                   "by its text alone, so no held-out case of them can be hit (their hit rate "
                   "is 0 by construction)")
    if not model.use_text:
        unread_group("model", ("text_share", "id_dropout", "text_gate", "text_alignment"),
                     "model.use_text is false (no text path)")
        text, text_defaults = model.text, type(model.text)()
        given = [f.name for f in dataclasses.fields(text)
                 if getattr(text, f.name) != getattr(text_defaults, f.name)]
        if given:
            out.append(f"model.text.{', model.text.'.join(given)} "
                       f"{'is' if len(given) == 1 else 'are'} set but "
                       f"do{'es' if len(given) == 1 else ''} nothing: model.use_text is false")
    elif model.fusion != "concat" or not model.use_ids:
        unread_group("model", ("text_share",),
                     f"model.fusion is {model.fusion!r} (it splits the width under 'concat')"
                     if model.fusion != "concat" else "model.use_ids is false (the text part "
                                                      "is the whole width)")
    if model.negatives in ("in_batch", "catalogue"):
        unread_group("model", ("num_sampled",), f"model.negatives is {model.negatives!r} "
                                                "(it sizes the 'sampled' and 'mixed' samplers)")
    if model.objective != "both":
        unread_group("model", ("retrieval_weight",),
                     f"model.objective is {model.objective!r} (it weighs the retrieval loss "
                     "beside the skip-gram one under 'both')")
    if ranking.enabled:
        if ranking.estimator == "ease":
            unread_group("ranking", ("neighbours",), "ranking.estimator is 'ease' (it sizes the "
                                                     "'neighbourhood' estimator)")
        if ranking.ease_lambda is not None:
            unread_group("ranking", ("ease_lambdas",), f"ranking.ease_lambda "
                                                       f"({ranking.ease_lambda:g}) is set (the "
                                                       "grid is searched without it)")
    if not ranking.enabled:
        unread = [f.name for f in dataclasses.fields(ranking)
                  if f.name != "enabled" and changed("ranking", f.name)]
        if unread:
            out.append(f"ranking.{', ranking.'.join(unread)} {'is' if len(unread) == 1 else 'are'}"
                       " set but do" + ("es" if len(unread) == 1 else "") + " nothing: "
                       "ranking.enabled is false (the two-tower alone is trained)")
    return out


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _ignored_event_weights(config: RunConfig) -> list[str]:
    """The event-weight settings set away from their defaults under an objective that
    does not read them: they weigh the skip-gram pairs, which only the 'skipgram' and
    'both' objectives train on."""
    if "pairs" in required_streams(config.model):
        return []
    pairs, defaults = config.data.pairs, PairConfig()
    conversions = {t.lower() for t in config.data.sessions.conversion_types}
    changed = {
        key: value for key, value in pairs.event_weights.items()
        if value != defaults.event_weights.get(key, defaults.default_event_weight)
        # A conversion type not listed was given conversion_weight (`DataConfig.check`).
        and not (key not in defaults.event_weights and key in conversions
                 and value == pairs.conversion_weight)}
    given = []
    if changed:
        given.append("data.pairs.event_weights ("
                     + ", ".join(f"{key}: {value:g}" for key, value in changed.items()) + ")")
    for name in ("default_event_weight", "conversion_weight"):
        if getattr(pairs, name) != getattr(defaults, name):
            given.append(f"data.pairs.{name} ({getattr(pairs, name):g})")
    if not given:
        return []
    return [f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but do"
            f"{'es' if len(given) == 1 else ''} nothing under model.objective "
            f"'{config.model.objective}': event weights weigh the skip-gram pairs, which "
            f"only the 'skipgram' and 'both' objectives train on (set model.objective: both "
            f"for them to count)"]


def resolve_config(config: RunConfig, run_dir: Path, resume: bool, epochs: int | None,
                   strategy: str | None) -> RunConfig:
    """The config to train with (checked by `check_run_config`): `config`, or when
    resuming the run's own, with `epochs` / `strategy` applied where given."""
    if resume:
        config = RunFolder(run_dir).read_config()
        logger.info("resuming with the run's saved config (%s)", RunFolder(run_dir).config_file)
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
    return check_run_config(config)


# What a resumed run may change: the epochs and the strategy (`resolve_config`), and the
# ranking stage's settings, which it refits; not whether there is a ranking stage or the
# slice it learns from, which shape the two-tower's training data.
RESUME_CHANGES = ("train.epochs", "train.strategy")
RESUME_FIXED_RANKING = ("ranking.enabled", "ranking.ranker_share")


def _flat(settings: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_changes(saved: RunConfig, given: RunConfig) -> dict:
    """The settings a resume command changes on the run's saved config, checked.

    A resume continues the run with its saved settings; a command may change
    `RESUME_CHANGES` and the ranking stage's settings (`ranking.*` but
    `RESUME_FIXED_RANKING`; the stage is then refitted with them). Where the data
    folder is (`data.data_dir`) is not compared.

    Returns:
      {key: (saved value, given value)} of the settings that differ.

    Raises:
      InputError: a change a resume cannot make, naming the setting and both values.
    """
    old, new = _flat(saved.to_dict()), _flat(given.to_dict())
    changed = {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
               if old.get(key) != new.get(key) and key != "data.data_dir"}
    refused = [key for key in changed if key not in RESUME_CHANGES and (
        not key.startswith("ranking.") or key in RESUME_FIXED_RANKING)]
    if not refused and not saved.ranking.enabled:
        refused = [key for key in changed if key.startswith("ranking.")]
    if refused:
        shown = "; ".join(f"{key}: {json.dumps(changed[key][0])} -> "
                          f"{json.dumps(changed[key][1])}" for key in refused[:4])
        more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
        raise InputError(
            f"a resumed run keeps its saved settings, and --config / --set change {shown}"
            f"{more}: train a new run for that (another run folder). A resume may change "
            "train.epochs, train.strategy and, in a run with a ranking stage, the stage's "
            "settings (ranking.*, but enabled and ranker_share): the stage is then refitted",
            key=refused[0])
    return changed


# The split settings a final model trains without: every event trains, none is held out.
FINAL_SPLIT = {"split_by": "time", "split_date": None, "split_fraction": 0.0, "cold_items": 0.0,
               "until": None}


def evaluation_headline(evaluation: dict | None, k: int) -> dict | None:
    """The held-out scores in brief: all cases' HR@k and NDCG@k (and stage 1's alone)."""
    if not evaluation or "all" not in evaluation:
        return None
    keys = ("cases", f"hr@{k}", f"ndcg@{k}")
    headline = {key: evaluation["all"][key] for key in keys if key in evaluation["all"]}
    stage1 = (evaluation.get("stage1") or {}).get("all")
    if stage1:
        headline["stage1"] = {key: stage1[key] for key in keys[1:] if key in stage1}
    if evaluation.get("unfinished"):
        headline["unfinished"] = evaluation["unfinished"]
    return {"k": k, **headline}


def final_run_config(evaluated_run: str | Path) -> tuple[RunConfig, dict]:
    """The config of an evaluated run's final model, and the record of what it was
    evaluated as.

    The final model is the evaluated run's settings (its config.json) on every
    event: no time or user split, no items hidden, so no held-out case; and
    the epochs the run trained (its last finished epoch: fewer than its
    train.epochs when it stopped early).

    Returns:
      (the config, {"run": the evaluated run's path, "epochs", "eval": its held-out
      headline (`evaluation_headline`, None if it had no held-out cases)}).

    Raises:
      InputError: not a run folder, a run with no finished epoch, or a final model.
    """
    folder = RunFolder(evaluated_run)
    if not folder.path.is_dir():
        raise InputError("no such run folder", path=str(folder.path),
                         key="training.final_from")
    config = folder.read_config()
    if folder.read_evaluated_as() is not None:
        raise InputError("this run is a final model already (it has "
                         f"{RunFolder.evaluated_as_file.name}); give the run it was evaluated "
                         "as", path=str(folder.path), key="training.final_from")
    history = folder.read_history()
    if not history:
        raise InputError("the run has no finished epoch: train and evaluate it first",
                         path=str(folder.history_file), key="training.final_from")
    epochs = int(history[-1]["epoch"])
    if epochs != config.train.epochs:
        logger.info("the evaluated run trained %d of its %d epochs: the final model trains %d",
                    epochs, config.train.epochs, epochs)
    train_config = from_dict(type(config.train), {**dataclasses.asdict(config.train),
                                                  **FINAL_SPLIT, "epochs": epochs},
                             prefix="train.")
    evaluation = folder.read_eval()
    evaluated_as = {"run": str(folder.path.resolve()), "epochs": epochs,
                    "split": {key: getattr(config.train, key) for key in
                              ("split_by", "split_date", "split_fraction", "holdout_users",
                               "cold_items", "until")},
                    "eval": evaluation_headline(evaluation, config.train.eval_k)}
    return dataclasses.replace(config, train=train_config), evaluated_as


def prepare_run_folder(run_dir: Path, config: RunConfig, worker: distribute.Worker,
                       resume: bool, overwrite: bool, config_changed: bool) -> None:
    """Checks, clears (`overwrite`) and creates the run folder; the chief's job only
    (the others leave the folder to it). A resumed run with changed settings gets its
    saved config rewritten."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError("run path is a file, expected a run folder", path=str(run_dir),
                         key="training.run_dir")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            folder = RunFolder(run_dir)
            if (folder.is_run() and not any(folder.checkpoints.glob("ckpt-*.index"))
                    and not folder.history_file.exists() and not folder.eval_file.exists()):
                # A run stopped before its first epoch: nothing trained to resume.
                raise InputError("run folder exists, with no finished epoch (a run stopped "
                                 "before its first, or one still in it): unless it is "
                                 "training now, start it again with training.overwrite "
                                 "(nothing trained is lost), or choose another "
                                 "training.run_dir", path=str(run_dir),
                                 key="training.run_dir")
            raise InputError("run folder exists and is not empty; resume it with training.resume, "
                             "replace it with training.overwrite, or choose another "
                             "training.run_dir", path=str(run_dir), key="training.run_dir")
        if worker.is_chief:
            if not RunFolder(run_dir).is_run():
                raise InputError("refusing to overwrite a folder that is not a tfrec run",
                                 path=str(run_dir))
            shutil.rmtree(run_dir)
    if worker.is_chief:
        ensure_folder(run_dir, "run folder")
        if resume and config_changed:
            RunFolder(run_dir).write_config(config)


def no_cases_warning(split, cases, split_date: str | None = None) -> str | None:
    """The warning for a split that was asked for and holds out no case (None otherwise:
    a final model holds out nothing by design); `split_date`: the config's, which places a
    time split (train.split_fraction then does nothing)."""
    if (split.cut is None and not split.per_user) or len(cases):
        return None
    return ("the split holds out no case (no later session, or held-out user, with two "
            "distinct items): the run trains but has nothing to evaluate on; "
            + ("raise train.holdout_users" if split.per_user else
               "move train.split_date earlier" if split_date else
               "raise train.split_fraction"))


def log_data(data: TrainingData) -> None:
    logger.info("training slice: %d events, %d sessions, %d items (%d warm, %d cold); "
                "%d held-out cases (%d cold targets)", data.train_events,
                data.sessions.num_sessions, data.vocab.size - 1, data.vocab.num_warm,
                data.vocab.num_cold, len(data.cases), int(data.cases.cold.sum()))
    if data.split.per_user or len(data.split.hidden_items):
        logger.info("held out: %d users (%d events), %d items hidden from training",
                    len(data.split.kept_out_users), data.test_events,
                    len(data.split.hidden_items))


def build_compiled_model(config: RunConfig, data: TrainingData, tf_strategy):
    """The run's model, built and compiled in the strategy's scope."""
    tf.random.set_seed(config.train.seed)
    with tf_strategy.scope():
        model = build_model(config.model, data.vocab, seed=config.train.seed)
        model.compile(optimizer=_optimizer(config))
    return model


def _worker_lost(err: tf.errors.OpError, epoch: int, checkpoint_dir: Path) -> WorkerLost:
    kept = tf.train.latest_checkpoint(str(checkpoint_dir)) or NOT_FINISHED
    lines = [line.strip() for line in (err.message or "").splitlines() if line.strip()]
    # The runtime's own words, e.g. "Collective ops is aborted by: ...".
    reason = next((line for line in lines if "aborted" in line),
                  lines[0] if lines else type(err).__name__)
    return WorkerLost(
        f"epoch {epoch + 1} stopped: another worker of the cluster died or became "
        f"unreachable ({reason}). Last checkpoint: {kept}. Restart every worker "
        "with --resume.")


def fit(model, data: TrainingData, config: RunConfig, run_dir: Path,
        worker: distribute.Worker, resume: bool, verbose: int | None) -> list[dict]:
    """Restores the last checkpoint (`resume`) or writes the run files, then fits the
    remaining epochs, one `fit` each; returns this session's history lines.

    Raises:
      InputError: `resume` without a finished epoch.
      TrainingDiverged: the loss became non-finite.
      WorkerLost: under multi_worker, another worker was lost.
    """
    epoch_var = tf.Variable(0, dtype=tf.int64, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch_var)
    checkpoint_dir = RunFolder(run_dir).checkpoints
    # Every worker saves (a collective operation); the others into a folder
    # of their own that they delete at the end.
    write_dir = checkpoint_dir if worker.is_chief else Path(
        tempfile.mkdtemp(prefix=f"tfrec-worker{worker.index}-checkpoints-"))
    try:
        manager = tf.train.CheckpointManager(checkpoint, str(write_dir), max_to_keep=3)
        initial_epoch = 0
        if resume:
            latest = tf.train.latest_checkpoint(str(checkpoint_dir))
            if latest is None:
                raise InputError("nothing to resume: the run has no finished epoch yet "
                                 "(start it again with --overwrite: nothing trained is lost)",
                                 path=str(checkpoint_dir))
            checkpoint.restore(latest).expect_partial()
            initial_epoch = int(epoch_var.numpy())
            logger.info("resumed from %s (epoch %d done)", latest, initial_epoch)
            if worker.is_chief:
                RunFolder(run_dir).truncate_history(initial_epoch)
        elif worker.is_chief:
            RunFolder(run_dir).write_files(config, data.vocab,
                                           getattr(model.item_encoder, "text_vocabulary", []))

        # The pipelines continue from the resumed epoch: the same batches as an
        # uninterrupted run.
        data.pairs.set_epoch(initial_epoch)
        if data.next_items is not None:
            data.next_items.set_epoch(initial_epoch)
        dataset = make_dataset(data, model.streams, config.train.steps_per_epoch,
                               num_shards=worker.count, shard_index=worker.index)
        history: list[dict] = []
        steps = known_steps_per_epoch(data, model.streams, config.train.steps_per_epoch,
                                      worker.count)
        guard, callbacks = build_callbacks(run_dir, manager, epoch_var, history,
                                           config.train.epochs, chief=worker.is_chief,
                                           steps_per_epoch=steps)
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
                raise _worker_lost(err, epoch, checkpoint_dir) from None
            if guard.bad_step is not None:
                break
    finally:
        if not worker.is_chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    if guard.bad_step is not None:
        epoch, step = guard.bad_step
        kept = tf.train.latest_checkpoint(str(checkpoint_dir)) or NOT_FINISHED
        raise TrainingDiverged(
            f"loss became NaN/inf at epoch {epoch}, step {step}; training stopped. "
            f"Last good checkpoint kept: {kept}. Lower train.learning_rate or check the "
            "event weights.")
    return history


def train(config: RunConfig, run_dir: str | Path, resume: bool = False,
          verbose: int | None = None, epochs: int | None = None,
          strategy: str | None = None, overwrite: bool = False,
          stage1: Callable[[RunConfig, TrainingData], TrainingData] | None = None
          ) -> TrainResult:
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
      epochs: the number of epochs in place of the config's (with `resume`, a
        new total, to train longer).
      strategy: the `train.strategy` in place of the config's (with `resume`,
        another to continue under: a checkpoint restores under any strategy).
      overwrite: without `resume`, replace an existing run folder (the
        chief's job under multi_worker).
      stage1: makes the model's training data from the run's (the whole
        training period): `tfrec.ranking.two_stage` hands the two-tower the
        period less the ranking stage's slice. The vocabulary and the
        held-out cases stay the run's.

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
    config = resolve_config(config, run_dir, resume, epochs, strategy)
    if stage1 is None and config.ranking.enabled and not resume:
        # The two-tower alone, on the whole training period: the run has no ranking stage
        # (`tfrec.train` trains both), and its saved config says so.
        config = dataclasses.replace(config, ranking=dataclasses.replace(config.ranking,
                                                                         enabled=False))
    worker = distribute.cluster_worker(config.train.strategy)
    # A new run's folder that this call makes is removed again if the run fails before it
    # trains (bad data, say): the same command can then be run again as it was.
    existed = run_dir.is_dir()
    new_folder = (worker.is_chief and not resume
                  and (not run_dir.exists() or existed and not any(run_dir.iterdir())))
    prepare_run_folder(run_dir, config, worker, resume, overwrite,
                       config_changed=epochs is not None or strategy is not None)
    try:
        tf_strategy = distribute.create_strategy(config.train.strategy)
        if worker.count > 1:
            logger.info("worker %d of %d (%s %d)%s", worker.index, worker.count,
                        worker.task_type, worker.task_index,
                        ", the chief" if worker.is_chief else "")
        logger.info("preparing data")
        data = prepare_training_data(config)
        for message in (data_setting_warnings(event_type_counts(data.events),
                                              len(data.vocab.market_names), config)
                        + text_warnings(data.vocab, data.items, config)):
            logger.warning("%s", message)
        fit_data = data if stage1 is None else stage1(config, data)
        log_data(fit_data)
        warning = no_cases_warning(data.split, data.cases, config.train.split_date)
        if warning:
            logger.warning("%s", warning)
        model = build_compiled_model(config, fit_data, tf_strategy)
    except BaseException:
        if new_folder:
            shutil.rmtree(run_dir, ignore_errors=True)
            if existed:  # it was there, empty: leave it so
                run_dir.mkdir(parents=True, exist_ok=True)
        raise
    if worker.is_chief:
        RunFolder(run_dir).add_provenance(provenance(data, resume))
    session_history = fit(model, fit_data, config, run_dir, worker, resume, verbose)
    if not worker.is_chief:
        return TrainResult(run_dir, model, session_history, None,
                           time.perf_counter() - started, data, worker)
    evaluation = None
    if len(data.cases):
        logger.info("evaluating on %d held-out cases", len(data.cases))
        evaluation = evaluate_model(model, data.cases, config.model.history_length,
                                    config.train.eval_k)
        evaluation["train_seconds"] = round(time.perf_counter() - started, 1)
        # With a ranking stage to come, the file says it holds stage 1 alone until the
        # stage's own evaluation replaces it (an interrupted stage leaves it so).
        RunFolder(run_dir).write_eval(evaluation if stage1 is None else {
            "unfinished": "stage 1 alone: the ranking stage has not finished (tfrec train "
                          "--resume fits it)", **evaluation})
    return TrainResult(run_dir, model, RunFolder(run_dir).read_history(), evaluation,
                       time.perf_counter() - started, data, worker, len(session_history))


PROVENANCE_PACKAGES = ("tensorflow", "tf-keras", "tensorflow-recommenders", "tensorflow-text",
                       "scann", "numpy", "pandas", "scipy")


def source_revision() -> dict | None:
    """The git commit of tfrec's source and whether it has uncommitted changes, when the
    package runs from a git checkout (an editable install); None otherwise."""
    import subprocess

    folder = Path(__file__).resolve().parent
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                                  text=True, timeout=5, check=True).stdout.strip()

        # The package's own files tracked there (not a venv inside another project's
        # checkout, which would name that project's commit).
        git("ls-files", "--error-unmatch", "training.py")
        commit = git("rev-parse", "HEAD")
        changed = bool(git("status", "--porcelain", "--untracked-files=no", "--", "."))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "uncommitted_changes": changed}


def provenance(data, resume: bool) -> dict:
    """What a training runs with: when, the package versions, the data read (its source,
    sizes and the held-out cases' fingerprint, which `tfrec evaluate` compares)."""
    import datetime
    import importlib.metadata
    import platform

    from tfrec.data.split import cases_fingerprint

    packages = {}
    for name in ("tfrec",) + PROVENANCE_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "resumed": bool(resume), "tfrec": packages.pop("tfrec"),
            "tfrec_source": source_revision(),
            "python": platform.python_version(), "platform": platform.platform(),
            "packages": packages,
            "data": {"source": data.source, "events": len(data.events),
                     "train_events": data.train_events, "test_events": data.test_events,
                     "cases": len(data.cases), "cases_sha256": cases_fingerprint(data.cases)}}


def format_evaluation(evaluation: dict, k: int) -> str:
    """The held-out table; with a ranking stage, both stages' and stage 1's side by side."""
    stage1 = evaluation.get("stage1")
    head = f"  {'targets':<8}{'cases':>8}{f'HR@{k}':>9}{f'NDCG@{k}':>10}"
    if stage1:
        head += f"{'stage 1 HR':>12}{'NDCG':>8}"
    rows = [head]

    def figure(value, width: int) -> str:  # no cases (a catalogue without cold items): "-"
        return f"{'-':>{width}}" if value is None or value != value else f"{value:>{width}.4f}"

    for name in ("all", "warm", "cold"):
        e = evaluation[name]
        row = f"  {name:<8}{e['cases']:>8,}{figure(e[f'hr@{k}'], 9)}{figure(e[f'ndcg@{k}'], 10)}"
        if stage1:
            row += (f"{figure(stage1[name][f'hr@{k}'], 12)}"
                    f"{figure(stage1[name][f'ndcg@{k}'], 8)}")
        rows.append(row)
    if "candidate_recall" in evaluation:
        rows.append(f"  (the target is among the ranking stage's candidates in "
                    f"{evaluation['candidate_recall']:.1%} of cases)")
    slots = evaluation.get("new_item_slots")
    if slots and slots["catalogue"] > 0:
        rows.append(f"  (items without behaviour, {slots['catalogue']:.1%} of the catalogue and "
                    f"{slots['targets']:.1%} of the targets, hold {slots['both_stages']:.1%} "
                    f"of both stages' top-{k} slots and {slots['stage1']:.1%} of stage 1's)")
    if evaluation.get("unknown_targets"):
        rows.append(f"  ({evaluation['unknown_targets']} cases skipped: target unknown to the "
                    "catalogue)")
    return "\n".join(rows)
