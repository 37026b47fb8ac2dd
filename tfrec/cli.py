"""The `tfrec` command line: argparse subcommands, each calling one library function.

The flags are generated from the settings schema (`tfrec.config`): each
setting with a flag is one option, with its help text and default from
there; `COMMAND_SETTINGS` says which command takes which. A library error
names the setting's key; `error_message` adds the flag that sets it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import sys
from typing import Callable

from tfrec.config import (RUN_SECTIONS, EvaluateSettings, ExportSettings, IndexConfig,
                          PrepareSettings, RecommendSettings, ServeConfig, Setting,
                          TrainingSettings, section_prefix, setting_of, settings)
from tfrec.errors import InputError
from tfrec.run_folder import ReportFolder, RunFolder
from tfrec.utils import VERBOSE_ENV, swapped_signal_handlers

logger = logging.getLogger("tfrec")

# Which settings each command takes as flags: a section (each of its settings that has a
# flag) or one key. The run settings (data.*, model.*, train.*) are otherwise set in the
# run config or with --set KEY=VALUE.
COMMAND_SETTINGS = {
    "prepare": ("data.data_dir", "prepare"),
    "train": ("data.data_dir", "train.epochs", "train.strategy", "training"),
    "evaluate": ("evaluate",),
    "export": ("export", "index"),
    "serve": ("serve",),
    "recommend": ("recommend",),
}


def command_settings(command: str) -> list[Setting]:
    """The settings `command` takes as flags, in the order of `COMMAND_SETTINGS`."""
    found = []
    for entry in COMMAND_SETTINGS[command]:
        found += [s for s in settings() if s.flag and (s.key == entry
                                                       or s.key.startswith(entry + "."))]
    return found


def _flag_help(setting: Setting) -> str:
    text = setting.help
    if setting.type is bool and setting.flag.startswith("--no-") and setting.default is not False:
        # The flag turns off a setting whose help says what it does when on.
        text = f"sets {setting.key} to false (the setting: {text})"
    if setting.key.startswith(tuple(f"{s}." for s in RUN_SECTIONS)):
        # the default is the run config's (the file's, else the schema's)
        text += f" (sets {setting.key} of the run config)"
    elif not setting.required and not (setting.default is None or setting.default is False
                                       or setting.default == ()):
        shown = json.dumps(setting.default) if isinstance(setting.default, bool) else (
            setting.default)
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def add_setting_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """One option per setting of `command`, from the schema. Every option defaults to None
    (not given): the setting then keeps its default, in the schema or in the run config."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for setting in command_settings(command):
        target = parser
        if setting.group:
            target = groups.get(setting.group) or groups.setdefault(
                setting.group, parser.add_mutually_exclusive_group(required=True))
        options = {"dest": setting.key, "default": None, "help": _flag_help(setting)}
        if setting.type is bool:
            # A --no-... flag turns off a setting that is on (or unset, null) by default.
            options["action"] = ("store_false" if setting.flag.startswith("--no-")
                                 and setting.default is not False else "store_true")
        else:
            options["type"] = setting.type
            options["metavar"] = {int: "N", float: "X"}.get(setting.type, setting.name.upper())
        if setting.required:
            options["required"] = True
        target.add_argument(*flag_spellings(setting.flag), **options)


def flag_spellings(flag: str) -> list[str]:
    """A flag and its dashed spelling: `serve` names its flags as TF Serving does
    (--model_config_file), and takes the dashed spelling of the other commands too
    (--model-config-file)."""
    dashed = "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag
    return [flag] if dashed == flag else [flag, dashed]


def given(args: argparse.Namespace, cls: type) -> dict:
    """The settings of section `cls` given as flags: name -> value."""
    prefix = section_prefix(cls)
    return {key[len(prefix):]: value for key, value in vars(args).items()
            if key.startswith(prefix) and "." not in key[len(prefix):] and value is not None}


def command_config_of(args: argparse.Namespace, cls: type):
    """The settings of section `cls`: the flags given, the schema's defaults for the rest."""
    return cls(**given(args, cls))


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The run settings given as flags (but data.data_dir), as --set overrides."""
    return [f"{key}={json.dumps(value)}" for key, value in vars(args).items()
            if key.startswith(tuple(f"{s}." for s in RUN_SECTIONS)) and value is not None
            and key != "data.data_dir"]


def _add_run_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --set: the run config, as `tfrec.run.command_config` reads it."""
    parser.add_argument("--config", metavar="FILE",
                        help="run config, YAML or JSON (sections data, model, train, "
                             "ranking; default: tfrec/configs/online_retail.yaml, less its "
                             "split date when "
                             "--set names other data)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set model.embedding_dim=32 "
                             "(repeatable)")


def cmd_prepare(args: argparse.Namespace) -> int:
    from tfrec.data.report import data_report, format_report, write_outputs
    from tfrec.ranking.stage import stage1_slices
    from tfrec.run import command_config, prepare_training_data
    from tfrec.training import check_run_config

    settings_ = command_config_of(args, PrepareSettings)
    config = check_run_config(command_config(args.config, args.set,
                                             getattr(args, "data.data_dir")))
    data = prepare_training_data(config)
    report = data_report(data, config, stage1=stage1_slices(config, data))
    if settings_.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    if settings_.out:
        for what, path in write_outputs(data, report, settings_.out).items():
            # With --json, stdout holds the JSON alone (for a pipe to a parser).
            print(f"wrote {what}: {path}", file=sys.stderr if settings_.json else sys.stdout)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tfrec.ranking.two_stage import train
    from tfrec.run import command_config
    from tfrec.training import format_evaluation

    run = command_config_of(args, TrainingSettings)
    if run.final_from is not None:
        return cmd_train_final(args, run)
    config = command_config(args.config, args.set, getattr(args, "data.data_dir"),
                            run_overrides(args))
    epochs, strategy = getattr(args, "train.epochs"), getattr(args, "train.strategy")
    ranking = None
    if run.resume and (args.config or args.set):
        config, changes = _resume_changes(args, Path(run.run_dir), config)
        epochs = changes.get("train.epochs", (None, epochs))[1]
        strategy = changes.get("train.strategy", (None, strategy))[1]
        if any(key.startswith("ranking.") for key in changes):
            ranking = config.ranking
    # A resume without --config / --set continues with the run's saved config.
    given = None if run.resume and not (args.config or args.set) else config
    with _progress_off_stdout(args):
        result = train(given, Path(run.run_dir), resume=run.resume,
                       epochs=epochs if run.resume else None,
                       strategy=strategy if run.resume else None, overwrite=run.overwrite,
                       ranking=ranking)
    worker = result.worker
    if not worker.is_chief:
        print(f"worker {worker.index} of {worker.count} ({worker.task_type} "
              f"{worker.task_index}): {_epochs(len(result.history))} trained here in "
              f"{result.seconds:.0f}s; the chief writes the run folder {result.run_dir}")
        return 0
    print(f"run folder: {result.run_dir}")
    last = result.history[-1] if result.history else {}
    ranking = (result.evaluation or {}).get("ranking")
    total, now = len(result.history), result.epochs_now
    trained = (f"trained {_epochs(total)}" if now is None or now == total else
               f"the run had trained its {_epochs(total)}: none to train" if now == 0 else
               f"trained {_epochs(total)} ({now} now)")
    print(f"{trained} in {result.seconds:.0f}s"
          + (f", final loss {last['loss']:.4f} (mean over the last epoch's steps)"
             if "loss" in last else "")
          + (f"; the ranking stage in {ranking['seconds']:.0f}s" if ranking else ""))
    if result.evaluation:
        k = config.train.eval_k
        cases, items = len(result.data.cases), result.data.vocab.size - 1
        print(f"held-out hit rate ({cases:,} case{'' if cases == 1 else 's'}, all "
              f"{items:,} catalogue item{'' if items == 1 else 's'} ranked):")
        print(format_evaluation(result.evaluation, k))
        if items <= k:
            print(f"  (the catalogue has {items:,} items, no more than k = {k}: every "
                  f"target is in the top {k}, so HR@{k} says nothing; see NDCG@{k})")
    return 0


@contextlib.contextmanager
def _progress_off_stdout(args: argparse.Namespace):
    """Keras prints training progress on stdout: moved to stderr, so that stdout holds the
    command's results alone (`tfrec train > out`), and dropped under -q."""
    with open(os.devnull, "w") if args.quiet else contextlib.nullcontext(sys.stderr) as sink:
        with contextlib.redirect_stdout(sink):
            yield


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def _resume_changes(args: argparse.Namespace, run_dir, config) -> tuple:
    """(the config, {key: (saved, new)}) of a resume with --config / --set: the command's
    config (`config`, read from --config FILE; without one the run's saved config with
    the --set overrides), checked against the saved config by
    `tfrec.training.resume_changes`, which refuses all but the epochs, the strategy and
    the ranking stage's settings."""
    from tfrec.run import load_run_config
    from tfrec.run_folder import RunFolder
    from tfrec.training import resume_changes

    saved = RunFolder(run_dir).read_config()
    if not args.config:
        config = load_run_config(None, args.set, run_overrides(args), base=saved)
    changes = resume_changes(saved, config)
    ranking = {key: new for key, (_, new) in changes.items() if key.startswith("ranking.")}
    if ranking:
        logger.info("resuming with the ranking stage's settings changed (%s): the stage is "
                    "refitted", ", ".join(f"{key}={json.dumps(value)}"
                                          for key, value in ranking.items()))
    return config, changes


def cmd_train_final(args: argparse.Namespace, run: TrainingSettings) -> int:
    from pathlib import Path

    from tfrec.ranking.two_stage import train_final

    given_settings = [flag for flag, value in (
        ("--config", args.config), ("--set", args.set), ("--data-dir",
                                                         getattr(args, "data.data_dir")),
        *((f"--{key.split('.')[-1]}", value) for key, value in vars(args).items()
          if key in ("train.epochs", "train.strategy"))) if value]
    if given_settings:
        raise InputError(f"the final model takes the evaluated run's settings: "
                         f"{', '.join(given_settings)} cannot change them (train and "
                         "evaluate a run with the new settings first)",
                         key=TrainingSettings.key("final_from"))
    with _progress_off_stdout(args):
        result = train_final(run.final_from, Path(run.run_dir), overwrite=run.overwrite,
                             resume=run.resume)
    if not result.worker.is_chief:
        return 0
    evaluated_as = RunFolder(result.run_dir).read_evaluated_as()
    print(f"run folder: {result.run_dir} (the final model of {evaluated_as['run']})")
    last = result.history[-1] if result.history else {}
    ranking = RunFolder(result.run_dir).read_config().ranking
    split = (f"; the two-tower on all but the last {ranking.ranker_share:.0%}, the ranking "
             "stage's slice" if ranking.enabled else "")
    print(f"trained {_epochs(len(result.history))} on every event ({result.data.train_events:,} "
          f"events, {len(result.data.sessions.user_ids):,} users{split}) in "
          f"{result.seconds:.0f}s" + (f", final loss {last['loss']:.4f}" if "loss" in last else ""))
    headline = evaluated_as.get("eval")
    if headline:
        k = headline["k"]
        print(f"evaluated as {evaluated_as['run']}: HR@{k} {headline[f'hr@{k}']:.4f}, "
              f"NDCG@{k} {headline[f'ndcg@{k}']:.4f} on {headline['cases']:,} held-out cases "
              "(no held-out case here: every event trains)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tfrec.exporter import CatalogueUpdate, export, update_catalogue

    # Index settings left out: the schema's defaults, or the previous version's for an update.
    index = given(args, IndexConfig)
    ex = command_config_of(args, ExportSettings)
    serving = None if ex.no_serving_config else ex.serving_config
    if ex.runner is not None:
        try:
            from tfrec.beam.update_users import run
        except ImportError as err:
            raise InputError(str(err), key=ExportSettings.key("runner")) from None
        summary = run(ex.model_dir, ex.update_users, from_version=ex.from_version,
                      run_dir=ex.run, index_settings=index, version=ex.version,
                      serving_config_dir=serving, ranking_stage=ex.ranking_stage,
                      catalogue=CatalogueUpdate(ex.add_items, ex.drop_items),
                      pipeline_args=[f"--runner={ex.runner}", *args.pipeline_args])
        result = summary.result
        print(f"pipeline {summary.state} in {summary.pipeline_seconds:.1f}s over "
              f"{len(summary.files):,} events files")
    elif ex.update_users is not None:
        from tfrec.exporter.users import update_users

        result = update_users(ex.model_dir, ex.update_users, from_version=ex.from_version,
                              run_dir=ex.run, index_settings=index, version=ex.version,
                              serving_config_dir=serving, ranking_stage=ex.ranking_stage,
                              catalogue=CatalogueUpdate(ex.add_items, ex.drop_items))
    elif ex.updating:
        result = update_catalogue(ex.model_dir, CatalogueUpdate(ex.add_items, ex.drop_items),
                                  from_version=ex.from_version, run_dir=ex.run,
                                  index_settings=index, version=ex.version,
                                  serving_config_dir=serving, ranking_stage=ex.ranking_stage)
    else:
        result = export(ex.run, ex.model_dir, IndexConfig(**index), version=ex.version,
                        serving_config_dir=serving, ranking_stage=ex.ranking_stage)
    meta = result.metadata
    recall_key = next(k for k in meta if k.startswith("recall@"))
    print(f"exported version {result.version}: {result.path}")
    users_change = meta.get("users_update") if ex.update_users is not None else None
    if users_change:
        print(f"  from version {users_change['from_version']} without training: "
              f"{users_change['updated']:,} users updated, {users_change['added']:,} added "
              f"from {users_change['events']:,} events; {meta['users']:,} users cached")
        skipped = [f"{users_change['unknown_item_events']:,} events skipped (item unknown to "
                   f"the model: {users_change['unknown_items']:,} ids)"
                   if users_change["unknown_item_events"] else "",
                   f"{users_change['no_known_item']:,} users with no item the model knows "
                   "left as they were" if users_change["no_known_item"] else ""]
        if any(skipped):
            print(f"  {'; '.join(s for s in skipped if s)}")
    if "catalogue_update" in meta and ex.updating:
        change = meta["catalogue_update"]
        print(f"  from version {change['from_version']} without training: "
              f"{change['added']:,} items added, {change['dropped']:,} dropped"
              + (f", {change['restored']:,} restored" if change["restored"] else "")
              + (f", {change['already_there']:,} already there" if change["already_there"]
                 else "")
              + f"; {meta['added_items']:,} items the model never saw are served")
    print(f"  index {meta['index_kind']} over {meta['items']:,} items "
          f"{meta['index_parameters'] or ''}".rstrip())
    print(f"  {recall_key} against brute force: {meta[recall_key]:.4f} "
          f"({meta['recall_queries']:,} {'cached users' if ex.updating else 'real queries'}); "
          "index built in "
          f"{meta['index_build_seconds']:.2f}s; export took {meta['export_seconds']:.1f}s")
    ranking = meta.get("ranking_stage")
    if ranking:
        depth = ranking.get("index_recall")
        if not ranking["enabled"]:
            print(f"  ranking stage off: the index's top k, as stage 1 alone (the run's "
                  f"stage, {ranking['num_candidates']} candidates, is not served); "
                  f"max_k {meta['max_k']}")
        else:
            print(f"  ranking stage on: {ranking['num_candidates']} candidates "
                  f"({ranking['table_share']:g} from the item-item table), "
                  f"{len(ranking['features'])} features; max_k {meta['max_k']}"
                  + (f"; the index's recall@{depth['k']} (the stage's depth) "
                     f"{depth['recall']:.4f}" if depth else ""))
    if meta.get("trained_on"):
        print(f"  model trained on {meta['trained_on']}; evaluated as "
              f"{(meta.get('evaluated_as') or {}).get('run')}")
    not_carried = meta.get("changes_not_carried")
    if not_carried:
        from tfrec.exporter.saved_model import changes_text

        print(f"  warning: version {not_carried['version']} serves "
              f"{changes_text(not_carried)}, not carried here: this version has the run's "
              "catalogue and users (dropped items are served again); apply them again with "
              f"--add-items / --drop-items / --update-users, or serve version "
              f"{not_carried['version']}")
    skipped = meta.get("versions_not_carried")
    if skipped:
        print(f"  warning: built on version {skipped['from_version']}, not on the newest: what "
              f"version{'s' if len(skipped['versions']) > 1 else ''} "
              f"{', '.join(map(str, skipped['versions']))} changed without training (items "
              "added or dropped, users refreshed) is not in this version; drop --from-version "
              "to build on the newest")
    if meta.get("users_not_cached"):
        print(f"  {meta['users_not_cached']:,} users of the data have no cached embedding (no "
              "training event: recommend_for_user gives them the popular items); export a "
              "final model (tfrec train --final-from) or refresh them (--update-users)")
    print(f"  signatures: {', '.join(meta['signatures'])}")
    if serving is not None:
        print(f"  serving config: {serving}/models.config")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tfrec.evaluate.runner import evaluate_run, parse_baselines
    from tfrec.evaluate.table import format_report

    ev = command_config_of(args, EvaluateSettings)
    with _progress_off_stdout(args):  # a variant trained for a row prints Keras progress
        report = evaluate_run(ev.run_dir, ev.out, parse_baselines(ev.baselines), k=ev.k,
                              gensim_epochs=ev.gensim_epochs, gensim_dim=ev.gensim_dim,
                              saved_model=ev.saved_model,
                              max_item_item_catalogue=ev.max_item_item_catalogue,
                              data_dir=ev.data_dir, ablations=not ev.no_ablations)
    print(format_report(report))
    out = ReportFolder(ev.out) if ev.out else RunFolder(report["run"]).evaluation
    print(f"report: {out.html_file}, {out.json_file}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from tfrec.config import BatchingParameters
    from tfrec.serving.batching import Batcher, read_batching_parameters
    from tfrec.serving.server import ModelServer

    import tensorflow as tf

    flags = given(args, ServeConfig)
    batching_file = flags.get("batching_parameters_file")
    batching = (read_batching_parameters(batching_file) if batching_file and
                flags.get("enable_batching") else BatchingParameters())
    config = ServeConfig(**flags, batching=batching)
    # TF Serving's flags of the same names; set before the first model loads.
    tf.config.threading.set_intra_op_parallelism_threads(config.tensorflow_intra_op_parallelism)
    tf.config.threading.set_inter_op_parallelism_threads(config.tensorflow_inter_op_parallelism)
    batcher = Batcher(config.batching) if config.enable_batching else None
    server = ModelServer(config, batcher=batcher)
    server.serve_forever(announce=lambda text: print(f"tfrec serve: {text}", flush=True))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    rc = command_config_of(args, RecommendSettings)
    if rc.all_users:
        return cmd_recommend_all_users(rc, args)
    import grpc

    from tfrec.serving.client import RecommenderClient

    user, items = (rc.user.strip(), []) if rc.user is not None else (None, rc.session)
    client = RecommenderClient(rc.server, rc.model, timeout=rc.timeout, version=rc.version,
                               version_label=rc.version_label)
    try:
        if user is not None:
            [(results, known)] = client.recommend_for_user([user], k=rc.k)
            fallback = not known
        else:
            results, fallback = client.recommend_with_fallback([items], k=rc.k)
            results, fallback = results[0], fallback[0]
            unknown = [] if fallback else [
                i for i, known in zip(items, client.known_items(items)) if not known]
        shown = items + [item for item, _ in results]
        texts = dict(zip(shown, client.item_texts(shown)))
    except grpc.RpcError as err:
        print(f"tfrec: error: {rc.server}: {err.code().name}: {err.details()}",
              file=sys.stderr)
        return 2 if err.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                   grpc.StatusCode.NOT_FOUND) else 1
    finally:
        client.close()
    if rc.json:
        from tfrec.utils import json_ready

        listed = [{"rank": rank, "item_id": item, "score": float(score),
                   "text": texts.get(item, "")} for rank, (item, score) in enumerate(results, 1)]
        about = {"user": user} if user is not None else {
            "session": items,
            # The session's ids the model could not read: every one under the fallback,
            # those in the served catalogue (added after training) named apart.
            "unknown": list(items) if fallback else unknown,
            "added_after_training": [i for i in items if texts.get(i)] if fallback else []}
        print(json.dumps(json_ready({**about, "fallback": bool(fallback), "items": listed}),
                         ensure_ascii=False, allow_nan=False))
        return 0
    if user is not None:
        print(f"user: {user}")
        if fallback:
            print("  (unknown user: the export has no cached embedding for it; the most "
                  "popular items, scored by their share of the training events)")
    else:
        print("session: "
              f"{', '.join(f'{i} ({texts[i]})' if texts.get(i) else i for i in items)}")
        added = [i for i in items if texts.get(i)] if fallback else []
        if added:
            # In the catalogue (it has a text) but not readable as a session: an item added
            # after training (--add-items) is recommended, not yet read from a session.
            print(f"  (the session's items {', '.join(added)} are in the served catalogue "
                  "but not in the model's vocabulary: items added after training are "
                  "recommended, not read as a session until the model is retrained; the "
                  "most popular items, scored by their share of the training events)")
        elif fallback:
            print("  (no item of the session is known to the model: the most popular items, "
                  "scored by their share of the training events)")
        elif unknown:
            print(f"  (not known to the model, left out of the session: {', '.join(unknown)})")
    for rank, (item, score) in enumerate(results, 1):
        print(f"{rank:>3}. {item:<12} {score:8.4f}  {texts.get(item, '')}")
    return 0


def cmd_recommend_all_users(rc: RecommendSettings, args: argparse.Namespace) -> int:
    from tfrec.all_users import recommend_all_users

    if rc.runner is not None:
        return cmd_recommend_all_users_on_beam(rc, args.pipeline_args)
    summary = recommend_all_users(
        rc.model_dir, rc.out, k=rc.k, version=rc.version, progress=not args.quiet,
        overwrite=rc.overwrite, batch_size=rc.batch_size, users=rc.users)
    size = summary.path.stat().st_size / 2**20
    print(f"wrote {summary.path}: {summary.users:,} users x top {summary.k} from "
          f"{summary.version_dir}, {summary.rows:,} rows in {summary.row_groups:,} row groups "
          f"({size:.1f} MB)")
    print(f"  {summary.users_per_second:,.0f} users/s ({summary.recommend_seconds:.1f}s "
          f"recommending, {summary.seconds:.1f}s in all)"
          + (f"; {summary.fallback_users:,} users unknown to the model (popular items)"
             if summary.fallback_users else ""))
    _note_uncached(summary.uncached_users)
    return 0


def cmd_recommend_all_users_on_beam(rc: RecommendSettings, pipeline_args: list[str]) -> int:
    from tfrec.all_users import uncached_users

    try:
        from tfrec.beam.all_users import run
    except ImportError as err:
        raise InputError(str(err), key=RecommendSettings.key("runner")) from None
    summary = run(rc.model_dir, rc.out, k=rc.k, version=rc.version, users=rc.users,
                  pipeline_args=[f"--runner={rc.runner}", *pipeline_args],
                  batch_size=rc.batch_size)
    counts = ("" if summary.users is None else
              f": {summary.users:,} users x top {summary.k}, {summary.rows:,} rows")
    print(f"pipeline {summary.state} in {summary.seconds:.1f}s{counts} from "
          f"{summary.version_dir}"
          + (f"; {summary.fallback_users:,} users unknown to the model (popular items)"
             if summary.fallback_users else ""))
    for shard in summary.shards:
        print(f"  {shard}")
    _note_uncached(uncached_users(summary.version_dir) if rc.users is None else 0)
    return 0


def _note_uncached(count: int) -> None:
    """The users of the run's data an all-users output leaves out, on stderr."""
    if count:
        print(f"tfrec: note: {count:,} users of the run's data are not in the output: the "
              "export has no cached embedding for them (no training event); export a final "
              "model (tfrec train --final-from) or refresh the users (tfrec export "
              "--update-users)", file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """One subcommand: its name (its settings are `COMMAND_SETTINGS[name]`), the function
    it runs, its help, and whether it reads a run config (--config, --set)."""

    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str
    run_config: bool = False


SUBCOMMANDS = (
    Subcommand(
        "prepare", cmd_prepare,
        "read and validate a run's data, report sessions, items, pairs and batches",
        "Read and validate the data a run config names (the same config as `tfrec train`, "
        "default: UCI Online Retail from the data folder), split it as training will, "
        "sessionise it, build the training pipelines and print a report of the data and of "
        "one epoch of training.", run_config=True),
    Subcommand(
        "train", cmd_train,
        "train the hybrid model (behaviour + text) and evaluate it on held-out sessions",
        "Train the hybrid model from a YAML/JSON run config (default: "
        "tfrec/configs/online_retail.yaml) with Keras fit; write a run folder with the config, "
        "vocabularies, per-epoch checkpoints, TensorBoard logs and history; report the "
        "held-out hit rate.", run_config=True),
    Subcommand(
        "evaluate", cmd_evaluate,
        "rank held-out cases with the model and the baselines; write a report",
        "Evaluate a trained run on its held-out cases (the run's data, split and seed) beside "
        "the baselines (popularity, gensim item2vec, TF-IDF text, EASE, cosine ItemKNN, tfrec "
        "with the text tower off, with the id tower off); print the table and write "
        f"{ReportFolder.json_file.name} and a self-contained {ReportFolder.html_file.name} with "
        "plots."),
    Subcommand(
        "export", cmd_export,
        "export a trained run as a versioned SavedModel with a ScaNN index",
        "Write the run's model as the next version under --model-dir (TF Serving layout), "
        "with text preprocessing, towers, a retrieval index over every catalogue item, "
        "warm-up records, cached embeddings and a projector folder; update "
        "serving_config/models.config. With --add-items / --drop-items / --update-users, "
        "the next version starts from the newest complete one (or --from-version), and the "
        "index settings not given are its."),
    Subcommand(
        "serve", cmd_serve,
        "serve exported models over TF Serving's gRPC and REST APIs",
        "A model server for tfrec SavedModels (ScaNN and tensorflow-text ops included) that "
        "TF Serving gRPC clients can call: Predict, GetModelMetadata, GetModelStatus, "
        "HandleReloadConfigRequest (with --allow_reload); with --rest_api_port, TF Serving's "
        "REST API too."),
    Subcommand(
        "recommend", cmd_recommend,
        "ask a running server for recommendations, or write every known user's to Parquet",
        "--items (a session) or --user (a user's cached embedding) asks a running server "
        "(--server, --model; --version for another than the newest); --all-users loads an "
        "export in this process and writes every known user's top k, their own items "
        "excluded, to a Parquet file (--model-dir, --out)."),
)


class _ParseError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser, self.message = parser, message


class _Parser(argparse.ArgumentParser):
    """While `raising` (as `main` parses), raises its errors for `main` to report: a flag
    the command does not know is then named before a required one it lacks (argparse
    checks what is required first). Otherwise argparse's own."""

    raising = False

    def error(self, message):
        if _Parser.raising:
            raise _ParseError(self, message)
        super().error(message)


def _unknown_flags(parser: argparse.ArgumentParser, argv) -> list[str]:
    """The flags in `argv` no parser knows, read with nothing required."""
    actions = [action for command in _subparsers(parser).choices.values()
               for action in command._actions]
    required = [action for action in actions if action.required]
    groups = [group for command in _subparsers(parser).choices.values()
              for group in command._mutually_exclusive_groups if group.required]
    for item in required + groups:
        item.required = False
    try:
        _, extras = parser.parse_known_args(argv)
    except _ParseError:
        return []
    finally:
        for item in required + groups:
            item.required = True
    return [arg for arg in extras if arg.startswith("-")]


def _subparsers(parser: argparse.ArgumentParser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def build_parser() -> argparse.ArgumentParser:
    from tfrec import __version__

    parser = _Parser(
        prog="tfrec", description="Item embeddings from behaviour and text, served with ANN.")
    parser.add_argument("--version", action="version", version=f"tfrec {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print results")
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's and ScaNN's own log lines (hidden by "
                             "default: device probing, index-building chatter)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        command_parser = sub.add_parser(command.name, help=command.help,
                                        description=command.description)
        if command.run_config:
            _add_run_config_arguments(command_parser)
        # Also after the command (`tfrec train -q`); given only where given, so that
        # `tfrec -q train` still holds.
        command_parser.add_argument("-q", "--quiet", action="store_true",
                                    default=argparse.SUPPRESS, help="only print results")
        command_parser.add_argument("--verbose", action="store_true",
                                    default=argparse.SUPPRESS,
                                    help="also show TensorFlow's and ScaNN's own log lines")
        command_parser.set_defaults(func=command.run)
    for command, command_parser in sub.choices.items():
        add_setting_flags(command_parser, command)
    return parser


def error_message(err: InputError) -> str:
    """The error as the command line reads it: each setting named with its flag, or how
    to set it."""
    message = err.message
    setting = setting_of(err.key) if err.key else None
    run_prefixes = tuple(f"{s}." for s in RUN_SECTIONS)
    # An error about a value a config file gives names that file: where to set it is said.
    in_config_file = (err.path is not None and err.key is not None
                      and err.key.startswith(run_prefixes)
                      and str(err.path).endswith((".yaml", ".yml", ".json")))
    if (setting is not None and setting.how_to_set and "--set" not in message
            and not in_config_file):
        message += f" ({setting.how_to_set})"
    for setting in settings():
        if not setting.flag:
            continue
        flagged = rf"(?! \({re.escape(setting.flag)}\))"  # not where the text names it
        message = re.sub(rf"'{re.escape(setting.key)}'{flagged}",
                         f"'{setting.key}' ({setting.flag})", message)
        if not setting.key.startswith(run_prefixes):  # a command's setting, anywhere
            message = re.sub(rf"(?<![\w.']){re.escape(setting.key)}(?![\w.']){flagged}",
                             f"{setting.key} ({setting.flag})", message)
    return message


def set_native_logging(verbose: bool) -> None:
    """Quiet (the default): TensorFlow's C++ log and Python warnings, and ScaNN's index
    building log, are hidden; verbose: all of them are shown."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        os.environ[VERBOSE_ENV] = "1"
    elif os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") == "2":  # errors only: the cuInit line too
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    level = logging.INFO if verbose else logging.ERROR
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    given_argv = sys.argv[1:] if argv is None else list(argv)
    _Parser.raising = True
    try:
        args, pipeline_args = parser.parse_known_args(given_argv)
    except _ParseError as err:
        unknown = _unknown_flags(parser, given_argv) if "required" in err.message else []
        runner = any(a == "--runner" or a.startswith("--runner=") for a in given_argv)
        message = (f"unrecognized arguments: {' '.join(unknown)}"
                   if unknown and not runner else err.message)
        _Parser.raising = False
        err.parser.error(message)
    finally:
        _Parser.raising = False
    if pipeline_args and getattr(args, "recommend.runner", None) is None and getattr(
            args, "export.runner", None) is None:  # only Beam takes more
        parser.error(f"unrecognized arguments: {' '.join(pipeline_args)}")
    args.pipeline_args = pipeline_args
    # tfrec's own progress at INFO; other libraries (absl, TensorFlow) only errors, unless
    # --verbose. The native logs (TensorFlow's C++ and ScaNN's) follow the environment,
    # read when TensorFlow is first imported: the commands import it after this point.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    set_native_logging(args.verbose)
    interrupted = []  # set by Ctrl-C (SIGINT) while the command runs
    try:
        with _noting_interrupts(interrupted):
            return args.func(args)
    except InputError as err:
        print(f"tfrec: error: {error_message(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of the output went away (`tfrec prepare | head`): stop quietly, as a
        # command killed by SIGPIPE would, with nothing more written to the closed pipe.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 128 + 13
    except Exception as err:  # a diverged run or a lost worker is reported, not a crash
        from tfrec.exporter.layout import write_failure

        reason = write_failure(err)
        if reason is not None:  # a full disk where no writer named its folder
            where = getattr(err, "filename", None)
            where = os.path.dirname(where) if where else _output_folder(args)
            print(f"tfrec: error: {f'{where}: ' if where else ''}cannot write: {reason}",
                  file=sys.stderr)
            return 2
        from tfrec.training import TrainingDiverged, WorkerLost

        if isinstance(err, (TrainingDiverged, WorkerLost)):
            print(f"tfrec: error: {err}", file=sys.stderr)
            return 1
        if not interrupted:
            raise
        # Ctrl-C inside a library's C code can surface as another error (a SystemError
        # from a list operation the interrupt cut short): it was the interrupt.
        logger.debug("interrupted, surfacing as %r", err)
        return _interrupted(args, interrupted)
    except KeyboardInterrupt as err:
        if err.args == (f"signal {int(signal.SIGTERM)}",):  # a job's own SIGTERM handler
            interrupted.append(signal.SIGTERM)
        return _interrupted(args, interrupted)


def _output_folder(args: argparse.Namespace) -> str | None:
    """The folder the command writes in (its --out, else its run or model folder), to name
    where a write failed when the error itself does not (TensorFlow's writers)."""
    given = vars(args)
    for suffix in (".out", ".run_dir", ".model_dir"):
        for key, value in given.items():
            if key.endswith(suffix) and value:
                return str(value)
    return None


def _interrupted(args: argparse.Namespace, interrupted: list) -> int:
    """Exit status 128 + the signal: 130 for Ctrl-C (SIGINT), 143 for SIGTERM (what a
    scheduler or `kill` sends), each cleaned up the same way."""
    hint = (" (tfrec train --resume continues the run from its last checkpoint)"
            if args.command == "train" else "")
    terminated = bool(interrupted) and interrupted[-1] == signal.SIGTERM
    print(f"tfrec: {'terminated (SIGTERM)' if terminated else 'interrupted'}{hint}",
          file=sys.stderr)
    return 128 + int(signal.SIGTERM if terminated else signal.SIGINT)


@contextlib.contextmanager
def _noting_interrupts(interrupted: list):
    """SIGINT raises KeyboardInterrupt as by default, and so does SIGTERM (by default it
    would end the process on the spot, leaving what it was writing); each is noted in
    `interrupted`. A command that handles a signal itself (`tfrec serve`) sets its own
    handler meanwhile."""
    def handler(signum, frame):
        interrupted.append(signum)
        # A SIGTERM now (a process group's, a supervisor's repeat) would cut the clean-up
        # short: the command is stopping already (SIGKILL still ends it).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if signum == signal.SIGINT:
            signal.default_int_handler(signum, frame)
        raise KeyboardInterrupt(f"signal {int(signum)}")

    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    # Where the default is only: a handler set elsewhere (or a background job's ignored
    # SIGINT) stays.
    with swapped_signal_handlers(
            lambda signum, current: handler if current is defaults[signum] else None):
        yield


if __name__ == "__main__":
    sys.exit(main())
