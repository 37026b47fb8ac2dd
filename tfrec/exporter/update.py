"""`tfrec export --add-items / --drop-items`: the next version from an earlier one, no training.

The model, its vocabulary and the cached users stay as they were; the
catalogue changes (see `catalogue.py` for the rules), the index is rebuilt
over it and checked against exact search, and the version is written by the
same `write_version` as a full export.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrec.errors import InputError
from tfrec.exporter.catalogue import Catalogue, next_catalogue, read_drop_ids, read_new_items
from tfrec.exporter.layout import INDEX_KIND, ModelFolder, VersionFolder
from tfrec.exporter.module import RecommenderModule, UserCache
from tfrec.exporter.saved_model import (ExportResult, VersionContents, build_checked_index,
                                        check_history_fits, depth_recall, index_metadata,
                                        prepare_version, ranking_index_config,
                                        ranking_metadata, ranking_scorer, write_version)
from tfrec.index.ann import IndexConfig
from tfrec.ranking.two_stage import check_stage_unchanged, load_stage, stage_fingerprint
from tfrec.utils import read_id_lines

logger = logging.getLogger(__name__)

# Index settings a version records and the next one inherits unless told otherwise.
INHERITED = ("kind", "max_k", "max_session_items", "recall_floor", "exact_new_items")


def previous_version(model_dir: Path, from_version: int | None) -> Path:
    """The version folder to start from: `from_version`, or the newest complete one.

    Raises:
      InputError: no version, not that one, or it is incomplete.
    """
    return ModelFolder(model_dir).source_version(from_version, "export.from_version").path


def skipped_versions(model_dir: Path, source: Path, version: int) -> dict | None:
    """The versions between `source` and the new `version` that this update does not build
    on (`--from-version` older than the newest): what they changed without training (items
    added or dropped, users refreshed) is not in the new version. None when there are
    none; otherwise {"from_version", "versions", "newest"} (the newest's changes), also
    logged as a warning."""
    newer = [v for v in ModelFolder(model_dir).versions() if int(source.name) < v < version]
    if not newer:
        return None
    try:
        metadata = ModelFolder(model_dir).version(newer[-1]).read_metadata(missing_ok=True)
    except InputError:
        metadata = {}
    newest = {"version": newer[-1],
              "added_items": int(metadata.get("added_items") or 0),
              "dropped_items": int(metadata.get("dropped_items") or 0),
              "users_refreshed": bool(metadata.get("users_update"))}
    logger.warning("version %d starts from version %s, not from the newest (%d): what versions "
                   "%s changed without training is not in it (version %d serves %d added and "
                   "%d dropped items%s); start from the newest (no --from-version) to keep it",
                   version, source.name, newer[-1], ", ".join(map(str, newer)), newer[-1],
                   newest["added_items"], newest["dropped_items"],
                   ", refreshed users" if newest["users_refreshed"] else "")
    return {"from_version": int(source.name), "versions": newer, "newest": newest}


def load_version_model(metadata: dict, version_dir: Path, run_dir: str | Path | None = None):
    """(config, vocab, model) of the run a version was exported from, at the checkpoint
    it was exported from (a run trained on since is not the model of the version).

    Raises:
      InputError: the run or its checkpoint is gone.
    """
    from tfrec.run import load_run

    run_dir = Path(run_dir or metadata.get("run", ""))
    if not str(run_dir) or not run_dir.is_dir():
        raise InputError(f"the run the version was exported from ({run_dir}) is not there; "
                         "give export.run", path=str(version_dir), key="export.run")
    config, vocab, model, latest = load_run(run_dir)
    recorded = metadata.get("checkpoint")
    if recorded and Path(recorded).name != Path(latest).name:
        path = run_dir / Path(latest).parent.name / Path(recorded).name
        if not Path(f"{path}.index").exists():
            raise InputError(f"the version was exported from checkpoint {recorded}, which "
                             "the run no longer has", path=str(run_dir), key="export.run")
        epoch = tf.Variable(0, dtype=tf.int64, name="epoch")
        tf.train.Checkpoint(model=model, epoch=epoch).restore(str(path)).expect_partial()
    check_same_model(version_dir, vocab, model, run_dir)
    return config, vocab, model


# Trained items compared with the version's rows to tell that a run is the version's own.
SAME_MODEL_ITEMS = 64


def check_same_model(version_dir: Path, vocab, model, run_dir: Path) -> None:
    """Refuses a run whose model is not the one the version was exported from: its
    embeddings of up to `SAME_MODEL_ITEMS` trained items of the version's catalogue
    differ from the version's rows (another run of the same data, say: its users' and
    items' embeddings would not share a space with the version's)."""
    folder = VersionFolder(version_dir)
    if not (folder.items.exists() and folder.item_ids.exists()):
        return
    ids = np.array(read_id_lines(folder.item_ids), dtype=object)
    index = vocab.lookup(ids)
    rows = np.flatnonzero((index > 0) & (index <= vocab.num_warm))[:SAME_MODEL_ITEMS]
    if not len(rows):
        return
    stored = np.load(folder.items, mmap_mode="r")
    if len(stored) != len(ids):
        return  # named by the catalogue's own read
    now = model.item_embeddings(index[rows])
    if not np.allclose(now, np.asarray(stored[rows]), atol=1e-4):
        raise InputError(f"the run {run_dir} is not the model version {folder.path.name} was "
                         f"exported from (its embeddings of the version's trained items "
                         f"differ): give the version's own run (export.run), moved or not",
                         path=str(run_dir), key="export.run")


def read_users(version_dir: Path, dim: int, history_length: int) -> UserCache:
    """The version's cached users (none if it has no user histories: an export older than
    recommend_for_user)."""
    folder = VersionFolder(version_dir)
    if not folder.user_histories.exists():
        logger.warning("%s has no %s (an older export): the next version serves no user; "
                       "export the run again to cache them", version_dir,
                       folder.user_histories.name)
        return UserCache.empty(history_length, dim)
    ids = read_id_lines(folder.user_ids)
    embeddings, histories = np.load(folder.users), np.load(folder.user_histories)
    if not len(ids) == len(embeddings) == len(histories):
        raise InputError(f"{folder.user_ids.name} lists {len(ids):,} users but "
                         f"{folder.users.name} has {len(embeddings):,} rows and "
                         f"{folder.user_histories.name} {len(histories):,}: the version's "
                         "user cache is damaged; export the run again (tfrec export --run)",
                         path=str(folder.user_ids))
    return UserCache(np.array(ids, dtype=object), embeddings, histories)


def item_embedder(model, vocab):
    """(ids [n], texts [n]) -> [n, dim]: a vocabulary id's trained embedding, any other
    id's text alone through the text tower (what `embed_items` serves for it)."""

    def embed(ids, texts):
        index = vocab.lookup(ids)
        out = np.zeros((len(ids), model.embedding_dim), np.float32)
        known = index > 0
        if known.any():
            out[known] = model.item_embeddings(index[known])
        if (~known).any():
            if not model.item_encoder.use_text:
                raise InputError("the model has no text tower (model.use_text is false): "
                                 "new items cannot be embedded without retraining",
                                 key="export.add_items")
            new = np.flatnonzero(~known)
            for start in range(0, len(new), 8192):
                rows = new[start:start + 8192]
                out[rows] = model.item_encoder.encode_text(
                    tf.constant(np.asarray(texts)[rows].astype(str))).numpy()
        return out

    return embed


@dataclasses.dataclass(frozen=True)
class CatalogueUpdate:
    """What to change: files of items to add (id, text[, market], the run's items layout)
    and of ids to drop (one a line)."""

    add_items: str | Path | None = None
    drop_items: str | Path | None = None


def update_catalogue(model_dir: str | Path, update: CatalogueUpdate,
                     from_version: int | None = None, run_dir: str | Path | None = None,
                     index_settings: dict | None = None, version: int | None = None,
                     serving_config_dir: str | Path | None = None,
                     recall_queries: int = 1000,
                     ranking_stage: bool | None = None) -> ExportResult:
    """Writes the next version of `model_dir` from `from_version` (default the newest)
    with items added and/or dropped, without retraining.

    Args:
      model_dir: the model's base path.
      update: the items to add and to drop.
      from_version: the version to start from.
      run_dir: the run it was exported from (default: the one its metadata names).
      index_settings: IndexConfig fields to change (default: the previous
        version's kind, max_k, max_session_items, recall floor and
        exact_new_items; the ScaNN tree sized for the new catalogue).
      version: the version to write (default: the next one).
      serving_config_dir: update models.config there.
      recall_queries: cached user embeddings the recall is measured on.
      ranking_stage: serve the run's ranking stage (if it has one) over the
        new catalogue (default: as the previous version did; on when it does
        not say).

    Raises:
      InputError: nothing to do, a bad items or ids file (see
        `catalogue.next_catalogue`), a missing version or run, recall under
        the floor. Nothing is written then.
    """
    started = time.perf_counter()
    if update.add_items is None and update.drop_items is None:
        raise InputError("give items to add or ids to drop", key="export.add_items")
    model_dir = Path(model_dir)
    source = previous_version(model_dir, from_version)
    metadata = VersionFolder(source).read_metadata()
    config, vocab, model = load_version_model(metadata, source, run_dir)
    new_items = (read_new_items(update.add_items, config.data.items_schema)
                 if update.add_items is not None else None)
    drop_ids = read_drop_ids(update.drop_items) if update.drop_items is not None else []
    if ranking_stage is None:
        ranking_stage = (metadata.get("ranking_stage") or {}).get("enabled", True)
    run = Path(run_dir or metadata["run"])
    if ranking_stage:
        check_stage_unchanged(metadata, run, source)
    stage = load_stage(run, model, missing_ok=not ranking_stage)
    metadata = {**metadata, "run": str(run.resolve())}  # --run: the run as it is now
    return write_updated_version(model_dir, source, metadata, model, vocab, new_items,
                                 drop_ids, update, index_settings, version, serving_config_dir,
                                 recall_queries, started, stage=stage,
                                 ranking_stage=ranking_stage)


def write_updated_version(model_dir: Path, source: Path, metadata: dict, model, vocab,
                          new_items, drop_ids: list[str], update: CatalogueUpdate,
                          index_settings: dict | None = None, version: int | None = None,
                          serving_config_dir: str | Path | None = None,
                          recall_queries: int = 1000,
                          started: float | None = None, stage=None,
                          ranking_stage: bool = False, users: UserCache | None = None,
                          users_update: dict | None = None) -> ExportResult:
    """`update_catalogue` once the inputs are read: the version `source` (its `metadata`)
    of the model (`model`, its `vocab`) with `new_items` (item, text) added and `drop_ids`
    dropped, written as `version` (default: the next one) of `model_dir`; with
    `ranking_stage`, the run's ranking stage `stage` (if not None) serves after the
    index. `users` (default: the source's) are the cached users it serves, and
    `users_update` what changed them (`tfrec.exporter.users`), for the metadata."""
    started = time.perf_counter() if started is None else started
    settings = {name: metadata[key] for name, key in zip(INHERITED, (INDEX_KIND, *INHERITED[1:]))
                if key in metadata}
    index_config = IndexConfig(**{**settings, **(index_settings or {})})
    history_length = int(model.query_tower.history_length)
    check_history_fits(history_length, index_config)
    ranking_stage = bool(ranking_stage) and stage is not None
    if ranking_stage:
        index_config = ranking_index_config(index_config, stage.num_candidates)
        given = index_settings or {}
        if "exact_new_items" not in metadata and "exact_new_items" not in given:
            logger.info("version %s predates index.exact_new_items: this one scores up to %d "
                        "items without behaviour exactly beside the index (--exact-new-items "
                        "0: the index alone, as before)", source.name,
                        index_config.exact_new_items)
    model_dir, version = prepare_version(model_dir, version)
    skipped = skipped_versions(model_dir, source, version)

    previous = Catalogue.read(source, vocab)
    catalogue, change = next_catalogue(
        previous, vocab, new_items, drop_ids, item_embedder(model, vocab),
        items_path=None if update.add_items is None else str(update.add_items),
        drop_path=None if update.drop_items is None else str(update.drop_items))
    if (not change.added and not change.restored and not change.dropped
            and users_update is None and not index_settings):
        # The next version would be this one again, under a new number.
        given = " and ".join(str(p) for p in (update.add_items, update.drop_items)
                             if p is not None)
        raise InputError(f"nothing changes: every item given is in version {source.name} "
                         f"with the same text ({len(change.unchanged):,} already there) and "
                         "no item is dropped; no version written", path=given or None,
                         key="export.add_items")
    logger.info("catalogue of version %s: %d items; %d added, %d restored, %d already there, "
                "%d dropped: %d items", source.name, len(previous), len(change.added),
                len(change.restored), len(change.unchanged), len(change.dropped),
                len(catalogue))
    del previous
    if users is None:
        users = read_users(source, int(model.embedding_dim), history_length)
    queries = _recall_queries(users, catalogue, recall_queries)
    k = min(10, index_config.max_k)
    index, index_config, recall, build_seconds = build_checked_index(
        catalogue, index_config, queries, k)
    ranking = ranking_scorer(stage, model, vocab.ids, catalogue) if ranking_stage else None
    module = RecommenderModule(model, vocab.ids, index, index_config.max_k,
                               max_session_items=index_config.max_session_items, users=users,
                               catalogue=catalogue, ranking=ranking,
                               exact_new_items=index_config.exact_new_items)
    kept = {key: value for key, value in metadata.items()
            if key.startswith("users") or key in ("run", "checkpoint", "history_length",
                                                  "embedding_dim", "trained_on",
                                                  "evaluated_as")}
    kept["recall_queries_from"] = "cached user embeddings" if len(users.ids) else "items"
    new_metadata = {
        **kept, **index_metadata(catalogue, index_config, recall, k, len(queries),
                                 build_seconds),
        **ranking_metadata(stage, ranking_stage,
                           depth_recall(index, catalogue, queries, stage, ranking_stage),
                           stage_fingerprint(metadata["run"]) if stage is not None else None),
    }
    if update.add_items is not None or update.drop_items is not None:
        new_metadata["catalogue_update"] = {
            "from_version": int(source.name),
            "updated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "add_items": None if update.add_items is None else str(update.add_items),
            "drop_items": None if update.drop_items is None else str(update.drop_items),
            "added": len(change.added), "restored": len(change.restored),
            "already_there": len(change.unchanged), "dropped": len(change.dropped)}
    if users_update is not None:
        new_metadata["users_update"] = users_update
    if skipped:
        new_metadata["versions_not_carried"] = skipped
    item_ids = np.asarray(vocab.ids).astype(str)
    warm = [[str(item_ids[i]) for i in h[h > 0]] for h in users.histories[:32]]
    return write_version(model_dir, version,
                         VersionContents(module, catalogue, item_ids, users,
                                         [w for w in warm if w], new_metadata,
                                         read_uncached_users(source, users.ids)),
                         started, serving_config_dir)


def read_uncached_users(version_dir: Path, cached_ids: np.ndarray) -> np.ndarray:
    """The version's users with no cached embedding, less those `cached_ids` now holds."""
    path = VersionFolder(version_dir).uncached_user_ids
    if not path.exists():
        return np.zeros(0, dtype=object)
    ids = np.array(read_id_lines(path), dtype=object)
    if not len(ids):
        return ids
    cached = pd.Index(np.asarray(cached_ids).astype(str))
    return ids[cached.get_indexer(ids.astype(str)) < 0]


def _recall_queries(users: UserCache, catalogue: Catalogue, limit: int,
                    seed: int = 0) -> np.ndarray:
    """Real queries for the recall check: cached user embeddings (items' own embeddings
    when the version has no users)."""
    pool = users.embeddings if len(users.ids) else catalogue.embeddings
    pick = np.random.default_rng(seed).permutation(len(pool))[:limit]
    return np.asarray(pool[np.sort(pick)], np.float32)
