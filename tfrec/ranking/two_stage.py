"""Training a run with both stages: the two-tower, then the ranking stage.

`train` is what `tfrec train` runs. With `ranking.enabled` (the default) the
two-tower trains on the run's training period less its ranker slice
(`tfrec.ranking.stage.stage1_training_data`); the id embeddings of items
only the ranker slice has are then cleared (such items embed by their
text, as new items do); the ranking stage is fit on the ranker slice and
saved in the run folder (`ranking/`); the held-out evaluation
(`eval.json`) is both stages', with stage 1's alone under "stage1".
Without it, this is `tfrec.training.train`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import tensorflow as tf

from tfrec.config import RankingConfig, RunConfig
from tfrec.errors import InputError
from tfrec.ranking.stage import (RankingStage, evaluate_stages, event_counts, fit_ranking_stage,
                                 forget_unseen_ids, stage1_training_data)
from tfrec.run import TrainingData
from tfrec.run_folder import RunFolder
from tfrec import training

logger = logging.getLogger(__name__)


def train(config: RunConfig | None, run_dir: str | Path, resume: bool = False,
          verbose: int | None = None, epochs: int | None = None,
          strategy: str | None = None, overwrite: bool = False,
          ranking: RankingConfig | None = None) -> training.TrainResult:
    """Trains a run: the two-tower, then (with `ranking.enabled`) the ranking stage.

    Arguments and errors are `tfrec.training.train`'s, and `ranking`: the ranking
    stage's settings in place of the config's; but with `resume` a given `config` is
    not ignored: `config` (None: the run's saved one) and `ranking` may change only
    what a resume can
    (`tfrec.training.resume_changes`: the epochs, the strategy, the ranking stage's
    settings, which refit the stage and which the run's saved config then takes);
    any other difference from the saved config is refused, naming it. The result's
    `evaluation` is both stages' held-out scores (stage 1's under "stage1").
    """
    run_dir = Path(run_dir)
    if resume:
        saved = RunFolder(run_dir).read_config()
        given = saved if config is None else config
        if ranking is not None:
            given = dataclasses.replace(given, ranking=ranking)
        changes = training.resume_changes(saved, given)
        if epochs is None and "train.epochs" in changes:
            epochs = given.train.epochs
        if strategy is None and "train.strategy" in changes:
            strategy = given.train.strategy
        config = dataclasses.replace(saved, ranking=given.ranking)
    elif config is None:
        raise ValueError("a new run needs a config (None is for a resume: the run's own)")
    elif ranking is not None:
        config = dataclasses.replace(config, ranking=ranking)
    if not config.ranking.enabled:
        return training.train(config, run_dir, resume, verbose, epochs, strategy, overwrite)
    config.ranking.check_k(config.train.eval_k)
    made = {}

    def stage1(run_config: RunConfig, data: TrainingData) -> TrainingData:
        made["stage1"], made["split"] = stage1_training_data(run_config, data)
        return made["stage1"]

    result = training.train(config, run_dir, resume, verbose, epochs, strategy, overwrite,
                            stage1=stage1)
    if not result.worker.is_chief:
        return result
    config = dataclasses.replace(RunFolder(run_dir).read_config(), ranking=config.ranking)
    data, model = result.data, result.model
    seen = event_counts(made["split"].stage1, data.vocab) > 0
    cleared = forget_unseen_ids(model, seen)
    if cleared:
        logger.info("%d items have events only in the ranker's slice: their id embeddings are "
                    "cleared (%s)", cleared,
                    "they embed by their text" if config.model.use_text else
                    "no text tower: the two-tower scores them 0; the whole period's item-item "
                    "table lists them")
        _save_checkpoint(model, run_dir, result.history[-1]["epoch"] if result.history
                         else config.train.epochs)
    stage = fit_ranking_stage(config, data, made["stage1"], made["split"], model)
    stage.save(RunFolder(run_dir).ranking)
    if resume and config != RunFolder(run_dir).read_config():
        logger.info("the run's config now holds the ranking stage's new settings")
        RunFolder(run_dir).write_config(config)
    evaluation = result.evaluation
    if len(data.cases):
        logger.info("evaluating both stages on %d held-out cases", len(data.cases))
        evaluation = evaluate_stages(stage, model, data, config.model.history_length,
                                     config.train.eval_k)
        evaluation["train_seconds"] = round(result.seconds + stage.info["seconds"], 1)
        warn_if_new_items_hidden(evaluation["new_item_slots"], config.ranking.new_share)
        evaluation["ranking"] = stage.info
        RunFolder(run_dir).write_eval(evaluation)
    return dataclasses.replace(result, evaluation=evaluation)


def warn_if_new_items_hidden(slots: dict, new_share: float) -> bool:
    """Logs a warning when both stages give items without behaviour under a tenth of
    both their catalogue share and stage 1's share of the held-out top-k slots (True
    then): the ranker learned from its slice that new items are rarely chosen, and new
    items would then hardly ever be shown."""
    if not (slots["catalogue"] > 0 and slots["stage1"] > 0
            and slots["both_stages"] < 0.1 * min(slots["catalogue"], slots["stage1"])):
        return False
    logger.warning(
        "items without behaviour (%.1f%% of the catalogue) hold %.1f%% of both stages' held-out "
        "top-%d slots, against %.1f%% of stage 1's: in the ranker's slice new items were "
        "rarely what users chose, so it ranks them low, and they will hardly ever be shown. "
        "To give them exposure, raise ranking.new_share (now %g: the weight of the ranker's "
        "cases that show their target as new), which trades warm hits for new items' "
        "(tfrec/ranking/README.md), or serve stage 1 alone (tfrec export --no-ranking-stage)",
        100 * slots["catalogue"], 100 * slots["both_stages"], slots["k"],
        100 * slots["stage1"], new_share)
    return True


def train_final(evaluated_run: str | Path, run_dir: str | Path, overwrite: bool = False,
                verbose: int | None = None, resume: bool = False) -> training.TrainResult:
    """Trains the final model of an evaluated run in `run_dir`: its settings on every event
    (`tfrec.training.final_run_config`), both stages as it had them (the ranker's slice
    then the last ranking.ranker_share of all the events, the item-item table refitted on
    all of them), no evaluation. The run folder records what it was evaluated as
    (`RunFolder.evaluated_as_file`), which the export carries into its metadata.
    With `resume`, an interrupted final model continues from its last checkpoint.

    Raises:
      InputError: `training.final_from` not an evaluated run with a finished epoch, the
        same folder as `run_dir`, and `train`'s errors.
    """
    run_dir = Path(run_dir)
    if run_dir.resolve() == Path(evaluated_run).resolve():
        raise InputError("the final model needs a run folder of its own (training.run_dir), "
                         "not the evaluated run's", path=str(run_dir), key="training.run_dir")
    config, evaluated_as = training.final_run_config(evaluated_run)
    logger.info("final model of %s: its settings on every event, %d epochs",
                evaluated_as["run"], evaluated_as["epochs"])
    result = train(config, run_dir, resume=resume, verbose=verbose, overwrite=overwrite)
    if result.worker.is_chief:
        RunFolder(run_dir).write_evaluated_as(
            {**evaluated_as, "events": int(result.data.train_events)})
    return result


def _save_checkpoint(model, run_dir: Path, epoch: int) -> None:
    """A checkpoint of the model as it is now, the run's latest (for `load_run`), with the
    optimizer's state (a resumed run trains on from its moments)."""
    optimizer = model.optimizer
    if optimizer is not None and not getattr(optimizer, "_built", False):
        # A run resumed to refit its stage trained no step in this process: the optimizer
        # has made none of its slots yet. Made now, they take the values the checkpoint
        # restored into them (restore on creation); else they would be left out.
        optimizer.build(model.trainable_variables)
    epoch_var = tf.Variable(epoch, dtype=tf.int64, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch_var)
    # Saved under the epoch's own number: it replaces that epoch's checkpoint.
    tf.train.CheckpointManager(checkpoint, str(RunFolder(run_dir).checkpoints),
                               max_to_keep=3).save(checkpoint_number=epoch)


def stage_fingerprint(run_dir: str | Path) -> str | None:
    """A digest of the run's ranking stage as saved (its description and the ranker's
    weights; None: no stage): an export records it, so that a version built later from
    that export can tell a stage refitted since (`tfrec train --resume`)."""
    folder = RunFolder(run_dir).ranking
    if not RankingStage.saved_in(folder):
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir()
                       if p.name == "stage.json" or p.name.startswith("ranker.")):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def check_stage_unchanged(metadata: dict, run_dir: str | Path, version_dir: Path) -> None:
    """Refuses to build a version from `version_dir` (its `metadata`) with the run's
    ranking stage when that stage is not the one the version serves: refitted since
    (`tfrec train --resume` with new ranking settings), it would change every list the
    version gives without a word. A version whose export recorded no digest (an earlier
    release) is warned about instead.

    Raises:
      InputError: the stage's digest differs from the version's.
    """
    recorded = (metadata.get("ranking_stage") or {})
    if not recorded.get("enabled"):
        return
    now = stage_fingerprint(run_dir)
    if "fingerprint" not in recorded:
        logger.warning("version %s records no digest of its ranking stage (an earlier "
                       "release exported it): the run's ranking stage is taken as it is now; "
                       "if it was refitted since (tfrec train --resume), export the run anew "
                       "(tfrec export --run %s)", version_dir.name, run_dir)
        return
    if now != recorded["fingerprint"]:
        raise InputError(
            f"the run's ranking stage is not the one version {version_dir.name} serves (it "
            "was refitted since that export, e.g. by tfrec train --resume): a version built "
            "from it would re-rank every list without a word; export the run anew (tfrec "
            f"export --run {run_dir}), or build on stage 1 alone (--no-ranking-stage)",
            path=str(RunFolder(run_dir).ranking), key="export.run")


def load_stage(run_dir: str | Path, model, missing_ok: bool = False) -> RankingStage | None:
    """The run's ranking stage (None when it has none).

    With `missing_ok` (stage 1 alone wanted; the stage would be read for the
    version's metadata only) a stage that cannot be read is warned about and
    None returned, so that stage 1 can still be exported.

    Raises:
      InputError: the run was to have one (`ranking.enabled`) and its training
        stopped before it was saved, or its files are damaged (not with
        `missing_ok`).
    """
    run = RunFolder(run_dir)
    folder = run.ranking
    if not RankingStage.saved_in(folder):
        if not missing_ok and run.is_run() and run.read_config().ranking.enabled:
            raise InputError(
                "the run's ranking stage was never finished (its config has "
                "ranking.enabled: true and the run holds no ranking stage: its training "
                f"stopped before it); finish it with tfrec train --run-dir {run_dir} "
                "--resume, or use stage 1 alone (tfrec export --no-ranking-stage)",
                path=str(folder))
        return None
    try:
        return RankingStage.load(folder, model.item_embeddings())
    except InputError as e:
        if not missing_ok:
            raise
        logger.warning("%s; stage 1 is served alone, and the version's metadata records no "
                       "ranking stage", e)
        return None
