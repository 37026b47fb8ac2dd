"""`tfrec export`: a versioned SavedModel with an embedded retrieval index.

Layout (TF Serving's): ``<model_dir>/<version>/`` holds the SavedModel and, in
its extra assets, the warm-up records, the metadata, the catalogue's and the cached
users' embeddings and a TensorBoard projector (every file: `tfrec.exporter.layout`).

A version is written into a hidden temporary folder next to the versions and
renamed into place only when complete, so a server polling `model_dir` never
sees half a model and an interrupted export leaves no version folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import logging
import os
import stat
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrec.config import BatchingParameters
from tfrec.errors import InputError
from tfrec.exporter.catalogue import Catalogue
from tfrec.exporter.layout import INDEX_KIND, ModelFolder, VersionFolder
from tfrec.exporter.module import RecommenderModule, UserCache, catalogue_changes
from tfrec.index.ann import (IndexConfig, build_index_for_recall, recall_at_ks,
                             scann_parameters)
from tfrec.utils import (ensure_folder, open_temporary, remove_stale_temporaries,
                         temporaries, utf8_bytes)

logger = logging.getLogger(__name__)

PROJECTOR_LIMIT = 20_000


@dataclasses.dataclass
class ExportResult:
    path: Path
    version: int
    metadata: dict
    module: RecommenderModule | None = None


def sample_sessions(data, limit: int, seed: int = 0) -> list[list[int]]:
    """Real query sessions: held-out cases if there are any, else training sessions."""
    if len(data.cases):
        queries = [q for q in data.cases.queries if q]
    else:
        queries = [s for s in data.sessions.to_lists() if len(s) > 1]
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(queries))[:limit]
    return [queries[i] for i in pick]


def user_histories(sessions, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, [users, length] left-padded last items of each known user's training sessions)."""
    from tfrec.data.sequences import histories_from_lists

    order = np.lexsort((np.arange(sessions.num_sessions), sessions.start_time, sessions.user))
    lists: dict[int, list] = {}
    bounds = sessions.row_splits
    for s in order:
        lists.setdefault(int(sessions.user[s]), []).extend(
            sessions.items[bounds[s]:bounds[s + 1]].tolist())
    users = np.array(sorted(lists), dtype=np.int64)
    return sessions.user_ids[users], histories_from_lists([lists[u] for u in users], length)


def users_metadata(data) -> dict:
    """When the cached user embeddings were computed, and from which data."""
    import datetime

    times = data.sessions.start_time
    period = ([datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc).isoformat()
               for t in (times.min(), times.max())] if len(times) else [])
    return {"users_computed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "users_data": {"source": data.source, "train_events": int(data.train_events),
                           "sessions": int(data.sessions.num_sessions),
                           "first_session_start": period[0] if period else None,
                           "last_session_start": period[1] if period else None}}


# The signatures a version's warm-up requests call, in order, when the export has them:
# every signature a client may call first is traced and its kernels (the index's searcher,
# the text tokenizer) made before the version serves.
WARMUP_SIGNATURES = ("recommend_for_user", "serving_default", "similar_items", "embed_query",
                     "embed_items", "item_texts")


def _write_warmup(path: Path, model_name: str, sessions: list[list[str]], k: int,
                  user_ids: list[str] = (), signatures=("recommend_for_user",
                                                        "serving_default")) -> int:
    """Writes TF Serving's warm-up requests (`assets.extra/tf_serving_warmup_requests`):
    `serving_default` over the sessions in batches of 8, and one request of each other
    signature of `WARMUP_SIGNATURES` in `signatures`. Returns how many were written (none
    without sessions)."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    def record(signature: str, inputs: dict) -> bytes:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        return prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString()

    def padded(rows):
        width = max(len(r) for r in rows)
        return utf8_bytes(np.array([r + [""] * (width - len(r)) for r in rows], dtype=object))

    sessions = [list(s) for s in sessions if len(s)]
    items = list(dict.fromkeys(i for s in sessions for i in s))[:8]
    requests = []
    for signature in (name for name in WARMUP_SIGNATURES if name in signatures):
        if not sessions:  # no warm-up asked for (warmup_sessions 0)
            break
        if signature == "recommend_for_user" and len(user_ids):
            requests.append(record(signature, {"user_ids": utf8_bytes(list(user_ids)),
                                               "k": np.int32(k)}))
        elif signature == "serving_default":
            requests += [record(signature, {"item_ids": padded(sessions[start:start + 8]),
                                            "k": np.int32(k)})
                         for start in range(0, len(sessions), 8)]
        elif signature == "similar_items":
            requests.append(record(signature, {"item_ids": utf8_bytes(items),
                                               "k": np.int32(k)}))
        elif signature == "embed_query":
            requests.append(record(signature, {"item_ids": padded(sessions[:8])}))
        elif signature == "embed_items":  # known ids, and a new one by its text
            requests.append(record(signature, {
                "item_ids": utf8_bytes(items + [""]),
                "texts": utf8_bytes([""] * len(items) + ["an item known by its text"])}))
        elif signature == "item_texts":
            requests.append(record(signature, {"item_ids": utf8_bytes(items)}))
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            writer.write(request)
    return len(requests)


def _write_projector(folder: Path, embeddings: np.ndarray, ids: np.ndarray, texts: np.ndarray,
                     counts: np.ndarray) -> int:
    """A TensorBoard projector folder for the most frequent items (at most PROJECTOR_LIMIT)."""
    folder.mkdir(parents=True, exist_ok=True)
    n = min(len(ids), PROJECTOR_LIMIT)
    top = np.argsort(-counts, kind="stable")[:n]
    np.savetxt(folder / "vectors.tsv", embeddings[top], delimiter="\t", fmt="%.5f")
    with (folder / "metadata.tsv").open("w", encoding="utf-8") as f:
        f.write("item\ttext\tevents\n")
        for i in top:
            item, text = (" ".join(str(v).replace("\t", " ").splitlines())
                          for v in (ids[i], texts[i]))
            f.write(f"{item}\t{text}\t{int(counts[i])}\n")
    (folder / "projector_config.pbtxt").write_text(
        'embeddings {\n  tensor_name: "items"\n  tensor_path: "vectors.tsv"\n'
        '  metadata_path: "metadata.tsv"\n}\n')
    return n


def prepare_version(model_dir: str | Path, version: int | None) -> tuple[Path, int]:
    """(model_dir, the version to write: `version`, or the next one).

    Raises:
      InputError: a model dir that is a file or not writable, an existing or
        non-positive version.
    """
    model_dir = Path(model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise InputError("model dir is a file, expected a folder", path=str(model_dir))
    ensure_folder(model_dir, "model folder")
    if not os.access(model_dir, os.W_OK):
        raise InputError("model folder is not writable", path=str(model_dir))
    folder = ModelFolder(model_dir)
    folder.clean_stale_temporaries()
    versions = folder.versions()
    if version is None:
        version = folder.next_version()
    elif version in versions:
        raise InputError(f"version {version} exists already; versions are never overwritten "
                         "(leave export.version unset to write the next one)",
                         path=str(model_dir / str(version)), key="export.version")
    elif version < 1:
        raise InputError(f"version must be a positive integer, got {version}",
                         key="export.version")
    return model_dir, version


def check_history_fits(history_length: int, index_config: IndexConfig) -> None:
    """A user's recommendations exclude the history_length items of its cached embedding:
    the index must return enough candidates to drop them (as a session's).

    Raises:
      InputError: max_session_items is under history_length.
    """
    if history_length > index_config.max_session_items:
        raise InputError(
            f"max_session_items ({index_config.max_session_items}) is under the model's "
            f"history_length ({history_length}): a user's recommendations exclude the "
            "history_length items of its cached embedding, and the index must return enough "
            "to drop them", key="index.max_session_items")


_SCANN_SETTINGS = {"num_leaves": "--leaves", "num_leaves_to_search": "--leaves-to-search",
                   "num_reordering_candidates": "--reorder"}


def _warn_of_index_settings_not_taken(index_config: IndexConfig, num_items: int) -> None:
    """Warns of ScaNN settings a brute-force index never reads, and of ScaNN's leaves cut
    down by the catalogue's size (more leaves than items, more searched than there are)."""
    given = {name: getattr(index_config, name) for name in _SCANN_SETTINGS
             if getattr(index_config, name) is not None}
    if index_config.kind != "scann":
        if given:
            logger.warning("%s set but do%s nothing: index.kind is %r (they tune ScaNN)",
                           ", ".join(f"index.{n} ({_SCANN_SETTINGS[n]} {v})"
                                     for n, v in given.items()),
                           "es" if len(given) == 1 else "", index_config.kind)
        return
    used = scann_parameters(num_items, index_config)
    for name, value in given.items():  # a reordering budget over the items is exact search
        if name != "num_reordering_candidates" and used[name] < value:
            logger.warning("index.%s (%s %d) is cut to %d: %s", name, _SCANN_SETTINGS[name],
                           value, used[name],
                           f"the catalogue has {num_items:,} items"
                           if name != "num_leaves_to_search" else
                           f"the index has {used['num_leaves']} leaves")


def build_checked_index(catalogue: Catalogue, index_config: IndexConfig, queries: np.ndarray,
                        k: int):
    """The index over the catalogue, its recall@k against exact search measured on
    `queries` [n, dim] (ScaNN widened up to the floor).

    Returns:
      (index, the config used, recall@k, seconds spent building).

    Raises:
      InputError: ScaNN recall under `index_config.recall_floor`.
    """
    _warn_of_index_settings_not_taken(index_config, len(catalogue.embeddings))
    index, index_config, recall, build_seconds = build_index_for_recall(
        catalogue.embeddings, catalogue.ids, index_config, queries, k, log=logger.info)
    logger.info("index recall@%d against brute force on %d queries: %.4f", k, len(queries),
                recall)
    if index_config.kind == "scann" and recall < index_config.recall_floor:
        params = scann_parameters(len(catalogue.embeddings), index_config)
        if params["num_leaves_to_search"] >= params["num_leaves"]:
            raise InputError(
                f"ScaNN recall@{k} is {recall:.3f} with every leaf searched, under the floor "
                f"{index_config.recall_floor}: its quantised scores cannot order these "
                "embeddings (their scores nearly tie); use exact search (index.kind: "
                "brute_force, tfrec export --index brute_force), reorder more candidates "
                "with index.num_reordering_candidates, or lower index.recall_floor",
                key="index.recall_floor")
        raise InputError(
            f"ScaNN recall@{k} is {recall:.3f}, under the floor {index_config.recall_floor}; "
            "search more leaves with index.num_leaves_to_search, reorder more candidates "
            "with index.num_reordering_candidates, or lower index.recall_floor",
            key="index.recall_floor")
    return index, index_config, recall, build_seconds


def ranking_index_config(index_config: IndexConfig, num_candidates: int) -> IndexConfig:
    """The index settings with the ranking stage on: max_k at most N (k is a top k of the
    N candidates), and ScaNN returning N plus a session's items (its reordering budget
    widened to that when left to its default).

    Raises:
      InputError: an explicit index.num_reordering_candidates under N + max_session_items.
    """
    if index_config.max_k > num_candidates:
        logger.info("max_k %d is over the ranking stage's %d candidates: max_k is %d",
                    index_config.max_k, num_candidates, num_candidates)
        index_config = dataclasses.replace(index_config, max_k=num_candidates)
    if index_config.kind != "scann":
        return index_config
    needed = num_candidates + index_config.max_session_items
    if index_config.num_reordering_candidates is None:
        default = scann_parameters(needed, index_config)["num_reordering_candidates"]
        if default < needed:
            index_config = dataclasses.replace(index_config, num_reordering_candidates=needed)
    elif index_config.num_reordering_candidates < needed:
        raise InputError(
            f"the ranking stage's candidate list (ranking.num_candidates = {num_candidates}) "
            "plus a session's items (index.max_session_items = "
            f"{index_config.max_session_items}) is over the index's reordering budget "
            f"(index.num_reordering_candidates = {index_config.num_reordering_candidates}): "
            f"ScaNN returns at most that many; raise it to {needed} (--reorder), lower "
            "index.max_session_items (--max-session-items), export with the ranking stage "
            "off (--no-ranking-stage) or retrain with a smaller ranking.num_candidates",
            key="index.num_reordering_candidates")
    return index_config


def ranking_scorer(stage, model, item_ids: np.ndarray, catalogue: Catalogue):
    """The run's ranking stage as a `TwoStageScorer` over the version's serving index
    space (the vocabulary, then the catalogue's added items; dropped items never
    candidates)."""
    from tfrec.ranking.serving import TwoStageScorer, serving_tables

    added, dropped = catalogue_changes(item_ids, catalogue)
    dim = stage.tables.item_embeddings.shape[1]
    embeddings = (np.asarray(catalogue.embeddings)[added] if len(added)
                  else np.zeros((0, dim), np.float32))
    tables = serving_tables(stage.tables, model, np.asarray(catalogue.texts)[added],
                            embeddings, dropped)
    return TwoStageScorer(tables, stage.ranker, stage.num_candidates, stage.table_share,
                          stage.columns, new_slots=stage.new_slots,
                          text_slots=stage.text_slots, unavailable=dropped)


def depth_recall(index, catalogue: Catalogue, queries: np.ndarray, stage,
                 enabled: bool) -> dict | None:
    """The index's recall at the depth the ranking stage reads it (N), against exact
    search on `queries`, through the search the signatures make; None without a stage
    on or without queries."""
    if stage is None or not enabled or not len(queries):
        return None
    depth = min(int(stage.num_candidates), len(catalogue))
    recall = recall_at_ks(index, queries, catalogue.embeddings, catalogue.ids, (depth,))[depth]
    logger.info("index recall@%d (the ranking stage's depth) against brute force: %.4f",
                depth, recall)
    return {"k": depth, "recall": float(recall), "queries": int(len(queries))}


def ranking_metadata(stage, enabled: bool, index_recall: dict | None = None,
                     fingerprint: str | None = None) -> dict:
    """The stages' part of the version's metadata (the run's ranking stage, or none;
    `index_recall`: `depth_recall`; `fingerprint`: `stage_fingerprint` of the run's stage,
    which a version built from this one checks)."""
    if stage is None:
        return {"stages": ["two_tower"], "ranking_stage": None}
    from tfrec.ranking.features import FEATURES

    table = stage.tables.table
    return {"stages": ["two_tower", "ranker"] if enabled else ["two_tower"],
            "ranking_stage": {
                "enabled": bool(enabled), "num_candidates": stage.num_candidates,
                **({"fingerprint": fingerprint} if fingerprint else {}),
                "index_recall": index_recall,
                "table_share": stage.table_share, "new_slots": stage.new_slots,
                "text_slots": stage.text_slots,
                "features": [FEATURES[j] for j in stage.columns],
                "columns": list(stage.columns), "ranker": stage.ranker.get_config(),
                "item_item_table": {**table.info, "items": table.num_items,
                                    "entries": table.num_entries}}}


def index_metadata(catalogue: Catalogue, index_config: IndexConfig, recall: float, k: int,
                   queries: int, build_seconds: float) -> dict:
    """The index's part of the version's metadata."""
    return {INDEX_KIND: index_config.kind,
            "index_parameters": (scann_parameters(len(catalogue), index_config)
                                 if index_config.kind == "scann" else {}),
            "max_k": index_config.max_k, "max_session_items": index_config.max_session_items,
            "recall_floor": index_config.recall_floor,
            "exact_new_items": index_config.exact_new_items, "items": len(catalogue),
            f"recall@{k}": round(float(recall), 6), "recall_queries": int(queries),
            "index_build_seconds": round(build_seconds, 3)}


@dataclasses.dataclass
class VersionContents:
    """Everything one version holds besides the model's own files.

    Attributes:
      module: what the SavedModel serves.
      catalogue: its index rows (with their embeddings).
      vocab_ids: the model's item vocabulary (OOV first).
      users: the cached user embeddings.
      warm_sessions: real sessions (item ids) for the warm-up records.
      metadata: the version's metadata; write_version adds the version, file
        counts and the time taken.
      uncached_users: ids of the data's users with no cached embedding (users
        whose every event is held out, or after the split); counted in the
        metadata as `users_not_cached`.
    """

    module: RecommenderModule
    catalogue: Catalogue
    vocab_ids: np.ndarray
    users: UserCache
    warm_sessions: list[list[str]]
    metadata: dict
    uncached_users: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(0, dtype=object))


def write_version(model_dir: Path, version: int, contents: VersionContents,
                  started: float | None = None,
                  serving_config_dir: str | Path | None = None) -> ExportResult:
    """Writes `model_dir/<version>/` whole or not at all: into a temporary folder beside
    the versions, renamed into place when complete.

    Raises:
      InputError: the version appeared meanwhile (another export wrote it).
    """
    started = time.perf_counter() if started is None else started
    module, catalogue, users = contents.module, contents.catalogue, contents.users
    model_name = model_dir.resolve().name
    if serving_config_dir is not None:
        # Before the version exists: a refused serving config then leaves nothing behind
        # (a version written, then exit 2, would be written again by a retry).
        check_serving_config(serving_config_dir, model_name, model_dir)
    k = min(10, module.max_k)
    namespaces = ["TFText"] + (["Scann"] if contents.metadata[INDEX_KIND] == "scann" else [])
    options = tf.saved_model.SaveOptions(namespace_whitelist=namespaces)
    # Call a signature once so the index and towers are traced before saving.
    module.recommend(tf.constant([[str(catalogue.ids[0]), ""]]), tf.constant(1))
    with ModelFolder(model_dir).writing(version) as folder:
        tf.saved_model.save(module, str(folder.path), signatures=module.signatures(),
                            options=options)
        catalogue.write(folder, contents.vocab_ids)
        np.save(folder.users, users.embeddings.astype(np.float32))
        np.save(folder.user_histories, users.histories.astype(np.int32))
        folder.user_ids.write_text("".join(f"{u}\n" for u in users.ids), encoding="utf-8")
        folder.uncached_user_ids.write_text(
            "".join(f"{u}\n" for u in contents.uncached_users), encoding="utf-8")
        projected = _write_projector(folder.projector, catalogue.embeddings, catalogue.ids,
                                     catalogue.texts, catalogue.counts)
        records = _write_warmup(folder.warmup, model_name, contents.warm_sessions, k,
                                [str(u) for u in users.ids[:8]],
                                signatures=set(module.signatures()))
        metadata = {"model": model_name, "version": version, **contents.metadata,
                    "users": int(len(users.ids)),
                    "users_not_cached": int(len(contents.uncached_users)),
                    "added_items": module.num_added,
                    "dropped_items": module.num_dropped, "warmup_records": records,
                    "projector_items": projected, "signatures": sorted(module.signatures())}
        metadata["export_seconds"] = round(time.perf_counter() - started, 1)
        folder.write_metadata(metadata)
    final = model_dir / str(version)
    if serving_config_dir is not None:
        write_serving_config(serving_config_dir, model_name, model_dir)
    logger.info("exported %s in %.1fs", final, time.perf_counter() - started)
    return ExportResult(final, version, metadata, module)


def warn_if_new_items_flood(evaluation: dict | None) -> str | None:
    """A warning (logged, and returned) for an export served by stage 1 alone when the run's
    held-out lists showed stage 1 giving items without behaviour far more top-k slots than
    their share of the targets (a text-only embedding scores high for any query when item
    text says little about behaviour; the ranking stage corrects it, stage 1 alone not)."""
    slots = (evaluation or {}).get("new_item_slots")
    if not slots or slots.get("stage1", 0) <= max(3 * slots.get("targets", 0), 0.2):
        return None
    fix = (f"the ranking stage held them to {slots['both_stages']:.1%}: serve both stages "
           "(without --no-ranking-stage)" if "both_stages" in slots else
           "a ranking stage (ranking.enabled: true) learns how often users choose them")
    message = (f"served by stage 1 alone, items without behaviour will fill many of the "
               f"lists' top slots: they held {slots['stage1']:.1%} of stage 1's held-out "
               f"top-{slots['k']} slots against {slots['targets']:.1%} of the targets (the "
               f"run's eval.json); {fix}")
    logger.warning("%s", message)
    return message


def _leaves_no_new_empty_folder(function):
    """`function(run_dir, model_dir, ...)` that removes `model_dir` again when it made it
    and failed before writing anything into it (a refused export leaves nothing)."""
    @functools.wraps(function)
    def wrapper(run_dir, model_dir, *args, **kwargs):
        made = not Path(model_dir).exists()
        try:
            return function(run_dir, model_dir, *args, **kwargs)
        except BaseException:
            if made and Path(model_dir).is_dir() and not any(Path(model_dir).iterdir()):
                Path(model_dir).rmdir()
            raise
    return wrapper


@_leaves_no_new_empty_folder
def export(run_dir: str | Path, model_dir: str | Path, index_config: IndexConfig = IndexConfig(),
           version: int | None = None, serving_config_dir: str | Path | None = None,
           warmup_sessions: int = 32, recall_queries: int = 1000,
           ranking_stage: bool | None = True) -> ExportResult:
    """Exports the run's model as `model_dir/<version>/`.

    Args:
      run_dir: a run folder (`tfrec.train`'s).
      model_dir: the model folder; the version is written under it.
      index_config: the index's settings (`tfrec.IndexConfig`).
      version: the version number (default: the next one).
      serving_config_dir: a folder whose `models.config` (and `batching.config`) to
        add the model to, as `tfrec export` does with `serving_config/` (default
        None: no serving config is touched).
      warmup_sessions: real sessions recorded as the version's warm-up requests
        (with a request for a few cached users; 0: no warm-up requests).
      recall_queries: queries the index's recall is measured on.
      ranking_stage: serve the run's ranking stage, if it has one, after the
        index (false: the index's top k, as a run without one; None: true).

    Raises:
      InputError: no finished checkpoint, a model dir that is a file, an
        unwritable location, an existing version, recall under the floor, a
        ranking stage's candidate list over the index's reordering budget,
        max_session_items under the model's history_length, a run whose ranking
        stage was never finished or is damaged (unless ranking_stage is False),
        a recall_queries, warmup_sessions or version that is not a whole number
        in range.
      TypeError: index_config not an IndexConfig.
    """
    from tfrec.ranking.two_stage import load_stage, stage_fingerprint

    from tfrec.data.sequences import histories_from_lists
    from tfrec.run import check_run_data, load_run, prepare_training_data

    started = time.perf_counter()
    if not isinstance(index_config, IndexConfig):
        raise TypeError(f"index_config must be a tfrec.IndexConfig (e.g. "
                        f"IndexConfig(kind='brute_force')), got {type(index_config).__name__} "
                        f"{index_config!r:.60}")
    model_dir = Path(model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise InputError("model dir is a file, expected a folder", path=str(model_dir))
    for name, value, least in (("recall_queries", recall_queries, 1),
                               ("warmup_sessions", warmup_sessions, 0),
                               ("version", 1 if version is None else version, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise InputError(f"{name} must be an integer of at least {least}, got {value!r}"
                             + (" (the index's recall is checked on these queries)"
                                if name == "recall_queries" else ""), key=f"export.{name}")
    if serving_config_dir is not None:  # before any work (`write_version` checks it again)
        check_serving_config(serving_config_dir, model_dir.resolve().name, model_dir)
    config, vocab, model, checkpoint = load_run(run_dir)
    model_dir, version = prepare_version(model_dir, version)
    history_length = int(model.query_tower.history_length)
    check_history_fits(history_length, index_config)
    ranking_stage = ranking_stage is not False
    stage = load_stage(run_dir, model, missing_ok=not ranking_stage)
    if stage is not None and ranking_stage:
        index_config = ranking_index_config(index_config, stage.num_candidates)
    if stage is None or not ranking_stage:
        from tfrec.run_folder import RunFolder

        warn_if_new_items_flood(RunFolder(run_dir).read_eval())

    logger.info("embedding %d catalogue items", vocab.size - 1)
    item_vectors = model.item_embeddings()
    catalogue = Catalogue.from_vocabulary(vocab, item_vectors)
    item_ids = vocab.ids.astype(str)

    logger.info("re-reading the training data for real query sessions")
    data = prepare_training_data(config)
    check_run_data(data.vocab, vocab, run_dir, data.rejections)
    sessions = sample_sessions(data, max(recall_queries, warmup_sessions))
    queries = model.query_embeddings(histories_from_lists(sessions[:recall_queries],
                                                          history_length))
    k = min(10, index_config.max_k)
    index, index_config, recall, build_seconds = build_checked_index(
        catalogue, index_config, queries, k)

    logger.info("computing the cached user embeddings")
    user_ids, histories = user_histories(data.sessions, history_length)
    users = UserCache(user_ids, model.query_embeddings(histories), histories)
    ranking = None
    if stage is not None and ranking_stage:
        ranking = ranking_scorer(stage, model, item_ids, catalogue)
    module = RecommenderModule(model, item_ids, index, index_config.max_k, vocab.text,
                               vocab.counts, index_config.max_session_items, users,
                               ranking=ranking, item_vectors=item_vectors,
                               exact_new_items=index_config.exact_new_items)
    uncached = uncached_users(data.events, user_ids)
    if len(uncached):
        logger.warning("%d users of the data have no training event, so no cached embedding "
                       "(their events are all held out): recommend_for_user gives them the "
                       "popular items. Export a final model (tfrec train --final-from) or "
                       "refresh the users (tfrec export --update-users) to serve them",
                       len(uncached))
    not_carried = changes_not_carried(model_dir, version)
    metadata = {
        "run": str(Path(run_dir).resolve()), "checkpoint": str(Path(checkpoint).resolve()),
        **({"changes_not_carried": not_carried} if not_carried else {}),
        **index_metadata(catalogue, index_config, recall, k, len(queries), build_seconds),
        "history_length": history_length, "embedding_dim": int(model.embedding_dim),
        **users_metadata(data), **evaluation_metadata(run_dir, config),
        **ranking_metadata(stage, ranking is not None,
                           depth_recall(index, catalogue, queries, stage, ranking is not None),
                           stage_fingerprint(run_dir) if stage is not None else None),
    }
    warm = [[str(item_ids[i]) for i in s] for s in sessions[:warmup_sessions]]
    return write_version(model_dir, version,
                         VersionContents(module, catalogue, item_ids, users, warm, metadata,
                                         uncached),
                         started, serving_config_dir)


def changes_not_carried(model_dir: Path, version: int) -> dict | None:
    """What the newest version below `version` changed without training (`--add-items`,
    `--drop-items`, `--update-users`) that an export from a run does not carry: the
    new version serves the run's catalogue and cached users. None when it changed
    nothing (or there is no such version); otherwise its number and the changes,
    also logged as a warning."""
    earlier = [v for v in ModelFolder(model_dir).versions() if v < version]
    if not earlier:
        return None
    previous = ModelFolder(model_dir).version(earlier[-1])
    try:
        metadata = previous.read_metadata(missing_ok=True)
    except InputError:
        return None
    changes = {"added_items": int(metadata.get("added_items") or 0),
               "dropped_items": int(metadata.get("dropped_items") or 0),
               "users_refreshed": bool(metadata.get("users_update"))}
    if not any(changes.values()):
        return None
    logger.warning(
        "version %d serves %s that this export from the run does not carry: version %d has "
        "the run's catalogue and cached users (dropped items are served again, added ones "
        "are not). Apply them again to it (tfrec export --model-dir %s --add-items / "
        "--drop-items / --update-users), or serve version %d",
        earlier[-1], changes_text(changes), version, model_dir, earlier[-1])
    return {"version": earlier[-1], **changes}


def changes_text(changes: dict) -> str:
    """'2 added items, 2 dropped items, refreshed users' of `changes_not_carried`'s dict."""
    named = (("added_items", "added items"), ("dropped_items", "dropped items"))
    done = [f"{changes[key]:,} {what}" for key, what in named if changes[key]]
    return ", ".join(done + (["refreshed users"] if changes["users_refreshed"] else []))


def uncached_users(events, cached_ids: np.ndarray) -> np.ndarray:
    """The user ids of `events` (every event read, both sides of the split) that have no
    cached embedding, sorted."""
    if events is None or not len(events):
        return np.zeros(0, dtype=object)
    users = pd.unique(events["user"].to_numpy(dtype=object))
    cached = pd.Index(np.asarray(cached_ids).astype(str))
    return np.sort(np.asarray(users, dtype=object)[
        cached.get_indexer(np.asarray(users).astype(str)) < 0]).astype(object)


def evaluation_metadata(run_dir: str | Path, config) -> dict:
    """What the version's model was evaluated as: a final model's evaluated run
    (`tfrec train --final-from`), or the run itself with its held-out headline."""
    from tfrec.run_folder import RunFolder
    from tfrec.training import evaluation_headline

    folder = RunFolder(run_dir)
    evaluated_as = folder.read_evaluated_as()
    if evaluated_as is not None:
        return {"trained_on": "every event (a final model)", "evaluated_as": evaluated_as}
    return {"trained_on": "the events before the split (the evaluated run)",
            "evaluated_as": {"run": str(folder.path.resolve()),
                             "eval": evaluation_headline(folder.read_eval(),
                                                         config.train.eval_k)}}


def _read_serving_config(path: Path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    if path.exists():
        try:
            text_format.Parse(path.read_text(), config)
        except text_format.ParseError as err:
            raise InputError(f"not a TF Serving model config: {err}", path=str(path)) from None
        except OSError as err:
            raise InputError(f"cannot read the serving config: {err.strerror}",
                             path=str(path)) from None
    return config


@contextlib.contextmanager
def _serving_config_lock(folder: Path):
    """Holds the serving config folder's lock: one read-change-write at a time, across
    processes (two exports of different models into one folder keep both entries). It
    lies beside the config file itself (a linked config: beside its target, so that
    folders linking one file share one lock)."""
    lock = folder / ".models.config.lock"
    try:
        # Read-write where it may (NFS locks only a file open for writing); read-only
        # where the lock file is another user's (a local lock works on that too).
        try:
            handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            handle = os.open(lock, os.O_RDONLY)
    except OSError as err:
        raise InputError(f"cannot lock the serving config: {err.strerror}",
                         path=str(lock)) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:  # a file system without locks (NFS mounted nolock)
            raise InputError(f"cannot lock the serving config: {err.strerror}",
                             path=str(lock)) from None
        yield
    finally:
        os.close(handle)  # (closing releases the lock)


def _same_folder(base_path: str, target: Path) -> bool:
    """Does a config entry's base path name the folder `target` (through links; a
    relative one read from this process's folder, as a server started here reads it)?"""
    try:
        return os.path.samefile(base_path, target)
    except OSError:  # one of them does not exist (yet)
        return Path(base_path).resolve() == target.resolve()


def _check_entry(config, path: Path, model_name: str, target: Path) -> None:
    for entry in config.model_config_list.config:
        if entry.name == model_name and entry.base_path and not _same_folder(entry.base_path,
                                                                             target):
            raise InputError(
                f"it serves a model named {model_name!r} from {entry.base_path}; this export's "
                f"model folder {target} has the same name, and would take its place: export "
                "into that folder, give this one another name, or give another "
                "--serving-config", path=str(path))


def check_serving_config(folder: str | Path, model_name: str, model_dir: str | Path) -> None:
    """Refuses, before a version is written, a serving config the export could not update:
    a folder it cannot write in or lock, a file that is not a model config, or an entry of
    the same name serving another model folder (the export would move it to this one)."""
    folder = ensure_folder(folder, "serving config folder")
    path = folder / "models.config"
    real = path.resolve()  # a linked config is written where it lies
    if not os.access(real.parent, os.W_OK) or (real.exists() and not os.access(real, os.W_OK)):
        raise InputError("cannot write the serving config (permission denied)",
                         path=str(real if real.exists() else real.parent))
    with _serving_config_lock(real.parent):
        _check_entry(_read_serving_config(path), path, model_name, Path(model_dir).resolve())


def write_serving_config(folder: str | Path, model_name: str, model_dir: str | Path) -> Path:
    """Adds or updates the model in `folder/models.config`; writes batching.config if absent.

    The file is replaced whole (written beside it, then renamed, its mode and owner
    kept): a server polling it never reads half of it. Another user's file, whose owner
    this process cannot keep, is written in place instead (as before locking). A linked
    file is written where the link points. An entry of the same name serving
    another folder is refused (`check_serving_config` refuses it before a version is
    written too).
    """
    from google.protobuf import text_format

    folder = ensure_folder(folder, "serving config folder")
    path = folder / "models.config"
    with _serving_config_lock(path.resolve().parent):
        config = _read_serving_config(path)
        target = Path(model_dir).resolve()
        _check_entry(config, path, model_name, target)
        entries = config.model_config_list.config
        entry = next((c for c in entries if c.name == model_name), None)
        if entry is None:
            entry = entries.add()
            entry.name = model_name
            entry.base_path = str(target)
        # (An entry of the model keeps its own base path: it names this folder, maybe
        # through a link an operator switches.)
        entry.model_platform = "tensorflow"
        _replace_file(path.resolve(), text_format.MessageToString(config))
        batching = folder / "batching.config"
        if not batching.exists():
            _replace_file(batching, BatchingParameters().to_text())
    return path


def _replace_file(path: Path, text: str) -> None:
    """Writes `path` whole: a new temporary beside it (`new_temporary`: no link planted
    at its name is followed), synced, renamed over it with the old file's mode and
    owner. Where the owner cannot be kept (another user's file), the file is written in
    place instead, as a shared config must stay writable by its owner."""
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    except OSError as err:
        raise InputError(f"cannot read the serving config: {err.strerror}",
                         path=str(path)) from None
    temporary = None
    try:
        if old is not None and old.st_uid != os.geteuid() and os.geteuid() != 0:
            path.write_text(text)  # another user's file: kept theirs
            return
        remove_stale_temporaries(path.parent, temporaries(f".{path.name}."))
        temporary, handle = open_temporary(path.parent, f".{path.name}.", 0o666)
        with open(handle, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            if old is not None:  # on the open file: never through a link
                os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode))
                if old.st_uid != os.geteuid() or old.st_gid != os.getegid():
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
        os.replace(temporary, path)
    except OSError as err:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise InputError(f"cannot write the serving config: {err.strerror}",
                         path=str(path)) from None


def release_saved_model(model) -> bool:
    """Frees what a loaded version's ScaNN index holds (its searcher: the index's memory
    and a thread), which TensorFlow keeps after the model is dropped; call it when no
    call of the model is left. An export from before `release_index` is released through
    its ScaNN layer's state. Returns whether there was anything to release (a
    brute-force export: no)."""
    release = getattr(model, "release_index", None)
    if release is not None:
        return bool(release())
    index = getattr(model, "index", None)
    state = getattr(index, "_serialized_searcher", None)
    if state is None or not hasattr(state, "recreate_handle"):
        return False
    tf.raw_ops.DestroyResourceOp(resource=state.recreate_handle(), ignore_lookup_error=True)
    return True


def load_saved_model(path: str | Path):
    """Loads an exported version; registers the ScaNN and tensorflow-text ops first."""
    import scann  # noqa: F401  (Scann>... ops)
    import tensorflow_text  # noqa: F401  (CaseFoldUTF8, TFText>... ops)

    path = Path(path)
    if not VersionFolder(path).saved_model.exists():
        versions = ModelFolder(path).versions() if path.is_dir() else []
        hint = (f"; it is a model folder: give a version folder, e.g. {path / str(versions[-1])}"
                if versions else "")
        raise InputError(f"not a SavedModel folder (no {VersionFolder.saved_model.name}){hint}",
                         path=str(path))
    return tf.saved_model.load(str(path))
