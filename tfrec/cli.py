"""The `tfrec` command line: argparse subcommands, each calling one library function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys

from tfrec.errors import InputError
from tfrec.utils import VERBOSE_ENV

logger = logging.getLogger("tfrec")


def _add_run_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --set and --data-dir: the run config, as `tfrec.run.command_config` reads it."""
    parser.add_argument("--config", metavar="FILE",
                        help="run config, YAML or JSON (sections data, model, train; default: "
                             "tfrec/configs/online_retail.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set model.embedding_dim=32 "
                             "(repeatable)")
    _add_data_dir_argument(parser)


def _add_data_dir_argument(parser) -> None:
    from tfrec.datasets import DATA_ENV

    parser.add_argument("--data-dir", metavar="DIR",
                        help="the data folder holding online_retail/ and goodbooks_10k/ "
                             f"(default: ${DATA_ENV}, else ../shared/data)")


def cmd_prepare(args: argparse.Namespace) -> int:
    from tfrec.data.report import data_report, format_report, write_outputs
    from tfrec.run import command_config, prepare_training_data

    config = command_config(args.config, args.set, args.data_dir)
    data = prepare_training_data(config)
    report = data_report(data, config)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    if args.out:
        for what, path in write_outputs(data, report, args.out).items():
            print(f"wrote {what}: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tfrec.run import command_config
    from tfrec.training import format_evaluation, train

    overrides = list(args.set)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.strategy is not None:
        overrides.append(f"train.strategy={args.strategy}")
    config = command_config(args.config, overrides, args.data_dir)
    result = train(config, Path(args.run_dir), resume=args.resume,
                   epochs=args.epochs if args.resume else None,
                   strategy=args.strategy if args.resume else None, overwrite=args.overwrite)
    worker = result.worker
    if not worker.is_chief:
        print(f"worker {worker.index} of {worker.count} ({worker.task_type} "
              f"{worker.task_index}): {len(result.history)} epochs trained here in "
              f"{result.seconds:.0f}s; the chief writes the run folder {result.run_dir}")
        return 0
    print(f"run folder: {result.run_dir}")
    last = result.history[-1] if result.history else {}
    print(f"trained {len(result.history)} epochs in {result.seconds:.0f}s"
          + (f", final loss {last['loss']:.4f}" if "loss" in last else ""))
    if result.evaluation:
        k = config.train.eval_k
        print(f"held-out hit rate ({len(result.data.cases):,} cases, all "
              f"{result.data.vocab.size - 1:,} catalogue items ranked):")
        print(format_evaluation(result.evaluation, k))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tfrec.exporter import CatalogueUpdate, export, update_catalogue
    from tfrec.index import IndexConfig

    # Index flags left out: IndexConfig's defaults, or the previous version's for an update.
    given = {name: value for name, value in (
        ("kind", args.index), ("max_k", args.max_k), ("num_leaves", args.leaves),
        ("num_leaves_to_search", args.leaves_to_search),
        ("num_reordering_candidates", args.reorder), ("recall_floor", args.recall_floor),
        ("max_session_items", args.max_session_items)) if value is not None}
    serving = None if args.no_serving_config else args.serving_config
    updating = args.add_items is not None or args.drop_items is not None
    if updating:
        result = update_catalogue(args.model_dir, CatalogueUpdate(args.add_items, args.drop_items),
                                  from_version=args.from_version, run_dir=args.run,
                                  index_settings=given, version=args.version,
                                  serving_config_dir=serving)
    else:
        if args.from_version is not None:
            raise InputError("--from-version goes with --add-items or --drop-items",
                             key="export.from_version")
        if args.run is None:
            raise InputError("give --run RUN_DIR (or --add-items / --drop-items to change the "
                             "catalogue of an exported version)", key="export.run")
        result = export(args.run, args.model_dir, IndexConfig(**given), version=args.version,
                        serving_config_dir=serving)
    meta = result.metadata
    recall_key = next(k for k in meta if k.startswith("recall@"))
    print(f"exported version {result.version}: {result.path}")
    if updating:
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
          f"({meta['recall_queries']:,} {'cached users' if updating else 'real queries'}); "
          "index built in "
          f"{meta['index_build_seconds']:.2f}s; export took {meta['export_seconds']:.1f}s")
    print(f"  signatures: {', '.join(meta['signatures'])}")
    if not args.no_serving_config:
        print(f"  serving config: {args.serving_config}/models.config")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tfrec.evaluate.runner import evaluate_run, parse_baselines
    from tfrec.evaluate.table import format_report

    if args.run is None and args.saved_model is None:
        raise InputError("give --run RUN_DIR or --saved-model VERSION_DIR")
    if args.data_dir is not None:
        import os

        from tfrec.datasets import DATA_ENV

        # The run's config defines the data; the folder is where to find it.
        os.environ[DATA_ENV] = str(args.data_dir)
    report = evaluate_run(args.run, args.out, parse_baselines(args.baselines), k=args.k,
                          gensim_epochs=args.gensim_epochs, gensim_dim=args.gensim_dim,
                          saved_model=args.saved_model,
                          **({} if args.max_item_item_catalogue is None else
                             {"max_item_item_catalogue": args.max_item_item_catalogue}))
    print(format_report(report))
    out = args.out or f"{report['run']}/evaluation"
    print(f"report: {out}/report.html, {out}/report.json")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from tfrec.serving.batching import BatchingParameters, Batcher, read_batching_parameters
    from tfrec.serving.predict import RequestLimits
    from tfrec.serving.server import ModelServer

    import tensorflow as tf

    # TF Serving's flags of the same names; set before the first model loads.
    if args.tensorflow_intra_op_parallelism < 0 or args.tensorflow_inter_op_parallelism < 0:
        raise InputError("thread counts must be >= 0 (0: TensorFlow chooses)",
                         key="tensorflow_intra_op_parallelism")
    tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    batcher = None
    if args.enable_batching:
        params = (read_batching_parameters(args.batching_parameters_file)
                  if args.batching_parameters_file else BatchingParameters())
        batcher = Batcher(params)
    elif args.batching_parameters_file:
        raise InputError("--batching_parameters_file needs --enable_batching",
                         key="batching_parameters_file")
    for flag in ("max_batch", "max_request_elements", "rest_api_max_connections"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be at least 1, got {getattr(args, flag)}", key=flag)
    if args.rest_api_timeout_seconds <= 0:
        raise InputError("--rest_api_timeout_seconds must be > 0", key="rest_api_timeout_seconds")
    server = ModelServer(args.model_config_file, port=args.port, host=args.host,
                         poll_seconds=args.file_system_poll_wait_seconds,
                         config_poll_seconds=args.model_config_file_poll_wait_seconds,
                         limits=RequestLimits(args.max_batch, args.max_request_elements),
                         rest_port=args.rest_api_port,
                         rest_timeout=args.rest_api_timeout_seconds,
                         rest_max_connections=args.rest_api_max_connections,
                         grace=args.grace_period_seconds, batcher=batcher)
    rest = f", REST on port {server.rest.port}" if server.rest else ""
    print(f"tfrec serve: gRPC on {server.address}{rest} (TF Serving API)"
          f"{', batching on' if batcher else ''}; Ctrl-C or SIGTERM stops", flush=True)
    server.serve_forever()
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    if args.all_users:
        return cmd_recommend_all_users(args)
    if args.runner is not None:
        raise InputError("--runner is for --all-users (a Beam pipeline)", key="recommend.runner")
    import grpc

    from tfrec.serving.client import RecommenderClient

    if args.model is None:
        raise InputError("asking a server needs --model (the served model's name)",
                         key="model")
    if args.user is not None:
        user, items = args.user.strip(), []
        if not user:
            raise InputError("--user needs a user id", key="user")
    else:
        items = [i.strip() for i in args.items.split(",") if i.strip()]
        if not items:
            raise InputError("--items needs at least one item id", key="items")
    client = RecommenderClient(args.server, args.model, timeout=args.timeout)
    try:
        if args.user is not None:
            [(results, known)] = client.recommend_for_user([user], k=args.k)
            fallback = not known
        else:
            results, fallback = client.recommend_with_fallback([items], k=args.k)
            results, fallback = results[0], fallback[0]
        shown = items + [item for item, _ in results]
        texts = dict(zip(shown, client.item_texts(shown)))
    except grpc.RpcError as err:
        print(f"tfrec: error: {args.server}: {err.code().name}: {err.details()}",
              file=sys.stderr)
        return 2 if err.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                   grpc.StatusCode.NOT_FOUND) else 1
    finally:
        client.close()
    if args.user is not None:
        print(f"user: {user}")
        if fallback:
            print("  (unknown user: the export has no cached embedding for it; the most "
                  "popular items, scored by their share of the training events)")
    else:
        print("session: "
              f"{', '.join(f'{i} ({texts[i]})' if texts.get(i) else i for i in items)}")
        if fallback:
            print("  (no item of the session is known to the model: the most popular items, "
                  "scored by their share of the training events)")
    for rank, (item, score) in enumerate(results, 1):
        print(f"{rank:>3}. {item:<12} {score:8.4f}  {texts.get(item, '')}")
    return 0


def cmd_recommend_all_users(args: argparse.Namespace) -> int:
    from tfrec.all_users import recommend_all_users

    missing = [flag for flag, value in (("--model-dir", args.model_dir), ("--out", args.out))
               if value is None]
    if missing:
        raise InputError(f"--all-users needs {' and '.join(missing)}", key="all_users")
    if args.runner is not None:
        return cmd_recommend_all_users_on_beam(args)
    summary = recommend_all_users(
        args.model_dir, args.out, k=args.k, version=args.version, progress=not args.quiet,
        overwrite=args.overwrite,
        **({} if args.batch_size is None else {"batch_size": args.batch_size}))
    size = summary.path.stat().st_size / 2**20
    print(f"wrote {summary.path}: {summary.users:,} users x top {summary.k} from "
          f"{summary.version_dir}, {summary.rows:,} rows in {summary.row_groups:,} row groups "
          f"({size:.1f} MB)")
    print(f"  {summary.users_per_second:,.0f} users/s ({summary.recommend_seconds:.1f}s "
          f"recommending, {summary.seconds:.1f}s in all)"
          + (f"; {summary.fallback_users:,} users unknown to the model (popular items)"
             if summary.fallback_users else ""))
    return 0


def cmd_recommend_all_users_on_beam(args: argparse.Namespace) -> int:
    if args.overwrite:
        raise InputError("a Beam pipeline never replaces output shards: remove them or "
                         "choose another --out prefix", key="recommend.overwrite")
    try:
        from tfrec.beam.all_users import run
    except ImportError as err:
        raise InputError(str(err), key="recommend.runner") from None
    summary = run(args.model_dir, args.out, k=args.k, version=args.version,
                  pipeline_args=[f"--runner={args.runner}", *args.pipeline_args],
                  **({} if args.batch_size is None else {"batch_size": args.batch_size}))
    counts = ("" if summary.users is None else
              f": {summary.users:,} users x top {summary.k}, {summary.rows:,} rows")
    print(f"pipeline {summary.state} in {summary.seconds:.1f}s{counts} from "
          f"{summary.version_dir}"
          + (f"; {summary.fallback_users:,} users unknown to the model (popular items)"
             if summary.fallback_users else ""))
    for shard in summary.shards:
        print(f"  {shard}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tfrec import __version__
    from tfrec.config import INDEX_KINDS

    parser = argparse.ArgumentParser(
        prog="tfrec", description="Item embeddings from behaviour and text, served with ANN.")
    parser.add_argument("--version", action="version", version=f"tfrec {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print results")
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's and ScaNN's own log lines (hidden by "
                             "default: device probing, index-building chatter)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    prep = sub.add_parser(
        "prepare", help="read and validate a run's data, report sessions, items, pairs and "
                        "batches",
        description="Read and validate the data a run config names (the same config as "
                    "`tfrec train`, default: UCI Online Retail from the data folder), split "
                    "it as training will, sessionise it, build the training pipelines and "
                    "print a report of the data and of one epoch of training.")
    _add_run_config_arguments(prep)
    prep.add_argument("--out", metavar="DIR",
                      help="also write vocab.tsv, report.json and rejected_rows.csv here")
    prep.add_argument("--json", action="store_true", help="print the report as JSON")
    prep.set_defaults(func=cmd_prepare)

    tr = sub.add_parser(
        "train", help="train the hybrid model (behaviour + text) and evaluate it on held-out "
                      "sessions",
        description="Train the hybrid model from a YAML/JSON run config (default: "
                    "tfrec/configs/online_retail.yaml) with Keras fit; write a run folder with "
                    "the config, vocabularies, per-epoch checkpoints, TensorBoard logs and "
                    "history; report the held-out hit rate.")
    _add_run_config_arguments(tr)
    tr.add_argument("--epochs", type=int, help="shorthand for --set train.epochs=N")
    tr.add_argument("--strategy", metavar="NAME",
                    help="shorthand for --set train.strategy=NAME: default (no tf.distribute "
                         "strategy), mirrored (the local devices) or multi_worker (one process "
                         "per worker, the cluster from the TF_CONFIG environment variable)")
    tr.add_argument("--run-dir", default="runs/train", metavar="DIR",
                    help="run folder (default: runs/train)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run in --run-dir from its last checkpoint")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace an existing run folder")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "evaluate", help="rank held-out cases with the model and the baselines; write a report",
        description="Evaluate a trained run on its held-out cases (the run's data, split and "
                    "seed) beside the baselines (popularity, gensim item2vec, TF-IDF text, "
                    "EASE, cosine ItemKNN, tfrec with the text tower off, with the id tower "
                    "off); print the table "
                    "and write report.json and a self-contained report.html with plots.")
    ev.add_argument("--run", metavar="RUN_DIR", help="a tfrec train run folder")
    ev.add_argument("--saved-model", metavar="VERSION_DIR",
                    help="evaluate this exported version (e.g. saved_models/retail/1) instead "
                         "of the run's checkpoint: its embeddings, query signature and index; "
                         "the run (default: the one it was exported from) defines the cases")
    ev.add_argument("--out", metavar="DIR", help="report folder (default RUN_DIR/evaluation)")
    ev.add_argument("--data-dir", metavar="DIR",
                    help="the data folder to read the run's data set from, when the run's "
                         "config names no data.data_dir (default: $TFREC_DATA, else "
                         "../shared/data)")
    ev.add_argument("--baselines", default="all", metavar="LIST",
                    help="'all' (default), 'none' or a comma-separated subset of popularity, "
                         "item2vec_gensim, tfidf_text, ease, itemknn, tfrec_text_off, "
                         "tfrec_id_off (the "
                         "tfrec variants are trained once under RUN_DIR/baselines/ and reused)")
    ev.add_argument("-k", type=int, help="K of HR@K and NDCG@K (default: the run's eval_k)")
    ev.add_argument("--gensim-epochs", type=int, default=10,
                    help="passes of the gensim item2vec baseline (default 10)")
    ev.add_argument("--gensim-dim", type=int, default=64,
                    help="vector size of the gensim item2vec baseline (default 64, its best "
                         "on Online Retail)")
    ev.add_argument("--max-item-item-catalogue", type=int, metavar="N",
                    help="run EASE and ItemKNN (an N x N matrix each, ~N^3 time) up to N "
                         "catalogue items, skip them above (default 20,000)")
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser(
        "export", help="export a trained run as a versioned SavedModel with a ScaNN index",
        description="Write the run's model as the next version under --model-dir (TF Serving "
                    "layout), with text preprocessing, towers, a retrieval index over every "
                    "catalogue item, warm-up records, cached embeddings and a projector "
                    "folder; update serving_config/models.config.")
    ex.add_argument("--run", metavar="RUN_DIR",
                    help="a tfrec train run folder (with --add-items/--drop-items: default "
                         "the run the version was exported from)")
    ex.add_argument("--model-dir", required=True, metavar="DIR",
                    help="the model's base path, e.g. saved_models/retail")
    ex.add_argument("--add-items", metavar="ITEMS",
                    help="build the next version from the newest (or --from-version) without "
                         "training: these items (CSV/Parquet in the run's items layout: id, "
                         "text, optional market) embedded by the text tower alone and added "
                         "to the index; an id already there with the same text is left as it "
                         "is, with another text it is an error")
    ex.add_argument("--drop-items", metavar="IDS",
                    help="build the next version without these items (a file of item ids, "
                         "one a line): never recommended again")
    ex.add_argument("--from-version", type=int, metavar="N",
                    help="with --add-items/--drop-items: start from version N (default: the "
                         "newest)")
    ex.add_argument("--index", choices=INDEX_KINDS,
                    help="scann (default; approximate, needs ScaNN ops to serve) or "
                         "brute_force (exact, loads in stock TF Serving); --add-items / "
                         "--drop-items keep the previous version's --index, --max-k, "
                         "--max-session-items and --recall-floor unless given")
    ex.add_argument("--version", type=int, help="version number (default: the next one)")
    ex.add_argument("--max-k", type=int,
                    help="the largest k a request may ask (default 100)")
    ex.add_argument("--leaves", type=int, help="ScaNN partitions (default ~sqrt(items))")
    ex.add_argument("--leaves-to-search", type=int,
                    help="ScaNN partitions searched (default: a tenth, widened automatically "
                         "until --recall-floor is met)")
    ex.add_argument("--reorder", type=int,
                    help="ScaNN candidates re-scored exactly (default max(200, 4 x max-k, "
                         "max-k + max-session-items); at least max-k + max-session-items)")
    ex.add_argument("--max-session-items", type=int,
                    help="the widest session a request may send (its items are all excluded "
                         "from the results; default 500, at least the model's "
                         "history_length)")
    ex.add_argument("--recall-floor", type=float,
                    help="least ScaNN recall@10 against brute force (default 0.9): the "
                         "search widens to reach it, or the export is refused")
    ex.add_argument("--serving-config", default="serving_config", metavar="DIR",
                    help="folder of models.config / batching.config to update")
    ex.add_argument("--no-serving-config", action="store_true",
                    help="do not touch the serving config")
    ex.set_defaults(func=cmd_export)

    sv = sub.add_parser(
        "serve", help="serve exported models over TF Serving's gRPC API",
        description="A model server for tfrec SavedModels (ScaNN and tensorflow-text ops "
                    "included) that TF Serving gRPC clients can call: Predict, "
                    "GetModelMetadata, GetModelStatus, HandleReloadConfigRequest.")
    sv.add_argument("--model_config_file", required=True,
                    help="TF Serving model_config_list text proto, e.g. "
                         "serving_config/models.config")
    sv.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default loopback only; 0.0.0.0 for all)")
    sv.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                    help="how often base paths are polled for new versions")
    sv.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0,
                    help="re-read the model config this often (0: never)")
    sv.add_argument("--max_batch", type=int, default=4096,
                    help="largest batch one request may carry")
    sv.add_argument("--max_request_elements", type=int, default=1_000_000,
                    help="most values one request may hold, all inputs together, counted "
                         "from the declared shapes before anything is allocated")
    sv.add_argument("--rest_api_port", type=int,
                    help="also serve TF Serving's REST API on this port")
    sv.add_argument("--rest_api_timeout_seconds", type=float, default=10.0,
                    help="seconds a REST client may take to send a request (idle "
                         "keep-alive connections close after it)")
    sv.add_argument("--rest_api_max_connections", type=int, default=256,
                    help="open REST connections at once; more are answered 503")
    sv.add_argument("--grace_period_seconds", type=float, default=10.0,
                    help="on SIGTERM/SIGINT, seconds calls in flight (gRPC and REST) get to "
                         "finish")
    sv.add_argument("--enable_batching", action="store_true",
                    help="merge concurrent requests into one model call")
    sv.add_argument("--batching_parameters_file",
                    help="TF Serving batching parameters, e.g. serving_config/batching.config")
    sv.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                    help="threads one TensorFlow op may use (0: TensorFlow chooses, one per "
                         "core)")
    sv.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                    help="TensorFlow ops run at once (0: TensorFlow chooses); 1 or 2 lowers "
                         "latency on a small host shared with clients")
    sv.set_defaults(func=cmd_serve)

    rc = sub.add_parser(
        "recommend", help="ask a running server for recommendations, or write every known "
                          "user's to Parquet",
        description="--items (a session) asks a running server (--server, --model); "
                    "--all-users loads an export in this process and writes every known "
                    "user's top k, their own items excluded, to a Parquet file (--model-dir, "
                    "--out).")
    mode = rc.add_mutually_exclusive_group(required=True)
    mode.add_argument("--items", help="the session: comma-separated item ids (server call)")
    mode.add_argument("--user", metavar="USER_ID",
                      help="a user of the export (server call, signature recommend_for_user): "
                           "the top k for the user's cached embedding, the items it was built "
                           "from excluded; an unknown user gets the most popular items")
    mode.add_argument("--all-users", action="store_true",
                      help="every user of the export's user list: rows user_id, rank, "
                           "item_id, score, written to --out (in-process, no server)")
    rc.add_argument("--server", default="localhost:8500", help="host:port of the gRPC server")
    rc.add_argument("--model", help="model name (server calls)")
    rc.add_argument("-k", type=int, default=10, help="how many recommendations (per user)")
    rc.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    rc.add_argument("--model-dir", metavar="DIR",
                    help="--all-users: the model's base path, e.g. saved_models/retail")
    rc.add_argument("--version", type=int,
                    help="--all-users: the exported version (default: the newest)")
    rc.add_argument("--out", metavar="FILE",
                    help="--all-users: the Parquet file to write (written to a temporary "
                         "file beside it and renamed when complete)")
    rc.add_argument("--overwrite", action="store_true",
                    help="--all-users: replace an existing --out file")
    rc.add_argument("--batch-size", type=int, metavar="N",
                    help="--all-users: users per model call and per Parquet row group "
                         "(default 1000)")
    rc.add_argument("--runner", metavar="RUNNER",
                    help="--all-users as an Apache Beam pipeline on this runner "
                         "(DirectRunner, DataflowRunner, FlinkRunner, ...; pip install "
                         "'tfrec[beam]'): --out is then the prefix of Parquet shards, and the "
                         "arguments tfrec does not know are Beam pipeline options")
    rc.set_defaults(func=cmd_recommend)
    return parser


# Library settings (the `key` of an InputError) that a command takes as a flag. The
# run settings (data.*, model.*, train.*) are set in the run config or with --set KEY=VALUE.
FLAGS = {
    "train.epochs": "--epochs",
    "train.strategy": "--strategy",
    "data.data_dir": "--data-dir",
    "index.kind": "--index",
    "index.max_k": "--max-k",
    "index.num_leaves": "--leaves",
    "index.num_leaves_to_search": "--leaves-to-search",
    "index.num_reordering_candidates": "--reorder",
    "index.recall_floor": "--recall-floor",
    "index.max_session_items": "--max-session-items",
    "export.version": "--version",
    "export.run": "--run",
    "export.add_items": "--add-items",
    "export.drop_items": "--drop-items",
    "export.from_version": "--from-version",
    "evaluate.k": "-k",
    "evaluate.run_dir": "--run",
    "evaluate.saved_model": "--saved-model",
    "training.run_dir": "--run-dir",
    "training.resume": "--resume",
    "training.overwrite": "--overwrite",
    "evaluate.baselines": "--baselines",
    "recommend.model_dir": "--model-dir",
    "recommend.version": "--version",
    "recommend.k": "-k",
    "recommend.out": "--out",
    "recommend.overwrite": "--overwrite",
    "recommend.batch_size": "--batch-size",
    "recommend.runner": "--runner",
    "port": "--port",
    "rest_port": "--rest_api_port",
    "grace": "--grace_period_seconds",
}
_RUN_SECTIONS = ("data.", "model.", "train.")


def error_message(err: InputError) -> str:
    """The error as the command line reads it: each setting named with its flag, or how
    to set it."""
    message = err.message
    for key, flag in FLAGS.items():
        quoted = f"'{key}'"
        message = message.replace(quoted, f"{quoted} ({flag})")
        if "." in key and not key.startswith(_RUN_SECTIONS):  # a library setting, anywhere
            message = re.sub(rf"(?<![\w.']){re.escape(key)}(?![\w.'])", f"{key} ({flag})",
                             message)
    if (err.key and err.key.startswith(_RUN_SECTIONS) and err.key not in FLAGS
            and "--set" not in message):
        message += f" (set it in the run config, or with --set {err.key}=VALUE)"
    return message


def set_native_logging(verbose: bool) -> None:
    """Quiet (the default): TensorFlow's C++ log and Python warnings, and ScaNN's index
    building log, are hidden; verbose: all of them are shown."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        os.environ[VERBOSE_ENV] = "1"
    elif os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") == "2":  # tfrec's default, not the user's
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    level = logging.INFO if verbose else logging.ERROR
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, pipeline_args = parser.parse_known_args(argv)
    if pipeline_args and getattr(args, "runner", None) is None:  # only Beam takes more
        parser.error(f"unrecognized arguments: {' '.join(pipeline_args)}")
    args.pipeline_args = pipeline_args
    # tfrec's own progress at INFO; other libraries (absl, TensorFlow) only errors, unless
    # --verbose. The native logs (TensorFlow's C++ and ScaNN's) follow the environment,
    # read when TensorFlow is first imported: the commands import it after this point.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    set_native_logging(args.verbose)
    try:
        return args.func(args)
    except InputError as err:
        print(f"tfrec: error: {error_message(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # a diverged run or a lost worker is reported, not a crash
        from tfrec.training import TrainingDiverged, WorkerLost

        if isinstance(err, (TrainingDiverged, WorkerLost)):
            print(f"tfrec: error: {err}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print("tfrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
