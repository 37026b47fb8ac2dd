"""`tfrec export`: a versioned SavedModel with an embedded retrieval index.

Layout (TF Serving's): ``<model_dir>/<version>/`` holds ``saved_model.pb``,
``variables/``, ``assets/`` and ``assets.extra/``:

  assets.extra/tf_serving_warmup_requests   PredictionLog records (real sessions)
  assets.extra/tfrec_metadata.json          index kind, parameters, recall@k, build time
  assets.extra/embeddings/items.npy         [items, dim] float32 item embeddings, and
  assets.extra/embeddings/item_ids.txt      their ids, one per line, same order
  assets.extra/embeddings/users.npy         [users, dim] query embeddings of known users
  assets.extra/embeddings/user_ids.txt      (their last history_length training items),
  assets.extra/embeddings/user_histories.npy  and those items: [users, history_length] int32
                                            vocabulary indices, 0-padded on the left
  assets.extra/projector/                   TensorBoard projector: vectors, metadata, config

A version is written into a hidden temporary folder next to the versions and
renamed into place only when complete, so a server polling `model_dir` never
sees half a model and an interrupted export leaves no version folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrec.errors import InputError
from tfrec.index.ann import IndexConfig, build_index_for_recall, scann_parameters
from tfrec.utils import ensure_folder

logger = logging.getLogger(__name__)

WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "tfrec_metadata.json"
TMP_PREFIX = ".tmp-export-"
PROJECTOR_LIMIT = 20_000


class RecommenderModule(tf.Module):
    """What the SavedModel serves: text preprocessing, towers and the index.

    Signatures (named inputs -> named outputs):
      serving_default: item_ids [batch, length] string (sessions, padded with
        "", length at most max_session_items), k [] int32  ->  item_ids
        [batch, k] string, scores [batch, k] float32, fallback [batch] bool;
        the sessions' own items are never recommended. A session with no
        known item gets the most popular items (scores: their share of the
        training events) and fallback true.
      similar_items: item_ids [batch] string, k  ->  item_ids, scores (the
        item itself excluded), known [batch] bool (an unknown item gets the
        most popular items).
      embed_items: item_ids [batch] string, texts [batch] string  ->
        embeddings [batch, dim], known [batch] bool. A known id uses the
        model's item embedding; an unknown one is embedded from its text.
      embed_query: item_ids [batch, length] string  ->  embeddings [batch, dim].
      item_texts: item_ids [batch] string  ->  texts [batch] string ("" unknown).
      recommend_for_user: user_ids [batch] string, k [] int32  ->  item_ids
        [batch, k] string, scores [batch, k] float32, known [batch] bool: the
        top k for the user's cached embedding (`UserCache`, computed at
        export), never one of the items it was built from. An unknown or
        empty user id gets the most popular items and known false.
    Unknown ids in a session are skipped (they carry no behaviour).
    """

    def __init__(self, model, item_ids: np.ndarray, index, max_k: int,
                 item_texts: np.ndarray | None = None, item_counts: np.ndarray | None = None,
                 max_session_items: int = 500, users: "UserCache | None" = None):
        super().__init__(name="tfrec")
        self.max_session_items = int(max_session_items)
        self.item_encoder = model.item_encoder
        self.query_tower = model.query_tower
        self.index = index
        self.max_k = int(max_k)
        self.history_length = int(model.query_tower.history_length)
        self.num_items = int(len(item_ids))
        keys = tf.constant(np.asarray(item_ids[1:]).astype(str))
        self.id_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                keys, tf.range(1, len(item_ids), dtype=tf.int32)), default_value=0)
        texts = np.asarray(item_texts[1:] if item_texts is not None
                           else [""] * (len(item_ids) - 1), dtype=object).astype(str)
        self.text_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, tf.constant(texts)), default_value="")
        # The answer for a query with no known item: the most popular items, with their
        # share of the training events as scores, flagged by the `fallback` output.
        counts = np.asarray(item_counts[1:] if item_counts is not None
                            else np.zeros(len(item_ids) - 1), dtype=np.float64)
        top = np.argsort(-counts, kind="stable")[:self.max_k]
        share = counts[top] / max(counts.sum(), 1.0)
        self.popular_ids = tf.constant(np.asarray(item_ids[1:]).astype(str)[top])
        self.popular_scores = tf.constant(share.astype(np.float32))
        users = users if users is not None else UserCache.empty(
            self.history_length, int(model.embedding_dim))
        self.num_users = len(users.ids)
        # Row 0 stands for "no such user" so that a lookup never gathers out of range; the
        # empty id is a key of it so that the table is never empty (a table may not be).
        self.user_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(np.concatenate([[""], np.asarray(users.ids).astype(str)]), tf.string),
                tf.range(0, self.num_users + 1, dtype=tf.int32)), default_value=0)
        dim = int(model.embedding_dim)
        self.user_embeddings = tf.Variable(
            np.vstack([np.zeros((1, dim), np.float32), users.embeddings.astype(np.float32)]),
            trainable=False, name="user_embeddings")
        self.user_histories = tf.Variable(
            np.vstack([np.zeros((1, self.history_length), np.int32),
                       users.histories.astype(np.int32)]),
            trainable=False, name="user_histories")

    def _history(self, item_ids):
        """[batch, length] string ids -> [batch, N] left-padded indices of the last N known."""
        index = self.id_table.lookup(item_ids)
        known = tf.ragged.boolean_mask(index, index > 0)
        lengths = tf.minimum(known.row_lengths(), self.history_length)
        n = self.history_length
        # Right-aligned copy of the last `lengths` known items of each row.
        total = known.row_lengths()
        cols = tf.range(n, dtype=tf.int64)[None, :]
        source = total[:, None] - n + cols
        valid = source >= (total - lengths)[:, None]
        padded = known.to_tensor(default_value=0)
        width = tf.shape(padded, out_type=tf.int64)[1]
        source = tf.clip_by_value(source, 0, tf.maximum(width - 1, 0))
        gathered = tf.gather(tf.pad(padded, [[0, 0], [0, 1]]), source, batch_dims=1)
        return tf.where(valid, gathered, tf.zeros_like(gathered))

    def _check_k(self, k):
        k = tf.convert_to_tensor(k, tf.int32)
        tf.debugging.assert_greater(k, 0, message="k must be at least 1")
        tf.debugging.assert_less_equal(
            k, self.max_k, message=f"k must be at most {self.max_k} (the index's max_k)")
        return tf.minimum(k, self.num_items - 1)

    def _top_k_excluding(self, queries, exclude, k):
        """Top k of the index for each query, never one of the ids in `exclude` [batch, m].

        Rows whose `exclude` holds no known id (an unknown or empty query)
        get the most popular items instead, flagged in `fallback`. A slot
        left when fewer than k items remain is "" with score -inf.
        """
        k = self._check_k(k)
        known = self.id_table.lookup(exclude) > 0
        scores, ids = self._search(queries, k, known)
        clash = tf.reduce_any(tf.equal(ids[:, :, None], exclude[:, None, :]), axis=-1)
        return self._top_k_of(scores, ids, clash, k, tf.logical_not(tf.reduce_any(known, 1)))

    def _top_k_excluding_indices(self, queries, exclude, k, fallback):
        """`_top_k_excluding` with `exclude` as [batch, m] vocabulary indices (0: none)
        and the rows answered by the popular items given as `fallback` [batch] bool."""
        k = self._check_k(k)
        known = exclude > 0
        scores, ids = self._search(queries, k, known)
        found = self.id_table.lookup(ids)
        clash = tf.reduce_any(tf.logical_and(tf.equal(found[:, :, None], exclude[:, None, :]),
                                             known[:, None, :]), axis=-1)
        return self._top_k_of(scores, ids, clash, k, fallback)

    def _search(self, queries, k, excluded):
        """(scores, ids) [batch, k + the most excluded items of a row]: one index call that
        fetches enough to still have k after dropping each row's `excluded` [batch, m]."""
        # The export checks that the index can return max_k + max_session_items (ScaNN's
        # reordering) and that a user's history is no longer than max_session_items.
        extra = tf.reduce_max(tf.concat([tf.reduce_sum(tf.cast(excluded, tf.int32), axis=1),
                                         [0]], 0))
        return self.index(queries, k=tf.minimum(k + extra, self.num_items - 1))

    def _top_k_of(self, scores, ids, clash, k, fallback):
        """The k best of (scores, ids) without the `clash` [batch, fetched] ones; the
        `fallback` [batch] rows get the popular items."""
        scores = tf.where(clash, tf.fill(tf.shape(scores), float("-inf")), scores)
        top_scores, position = tf.math.top_k(scores, k=tf.minimum(k, tf.shape(scores)[1]))
        top_ids = tf.gather(ids, position, batch_dims=1)
        top_ids = tf.where(tf.math.is_inf(top_scores), tf.fill(tf.shape(top_ids), ""), top_ids)
        n = tf.shape(top_ids)[1]
        popular_ids = tf.broadcast_to(self.popular_ids[None, :n], tf.shape(top_ids))
        popular_scores = tf.broadcast_to(self.popular_scores[None, :n], tf.shape(top_scores))
        return {"item_ids": tf.where(fallback[:, None], popular_ids, top_ids),
                "scores": tf.where(fallback[:, None], popular_scores, top_scores),
                "fallback": fallback}

    def _check_session_width(self, item_ids):
        tf.debugging.assert_less_equal(
            tf.shape(item_ids)[1], self.max_session_items,
            message=f"sessions may hold at most {self.max_session_items} items (the export's "
                    "max_session_items)")

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="item_ids"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def recommend(self, item_ids, k):
        self._check_session_width(item_ids)
        queries = self.query_tower(self._history(item_ids))
        return self._top_k_excluding(queries, item_ids, k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_ids"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def similar_items(self, item_ids, k):
        index = self.id_table.lookup(item_ids)
        out = self._top_k_excluding(self.item_encoder(index), item_ids[:, None], k)
        return {"item_ids": out["item_ids"], "scores": out["scores"], "known": index > 0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_ids"),
                                  tf.TensorSpec([None], tf.string, name="texts")])
    def embed_items(self, item_ids, texts):
        index = self.id_table.lookup(item_ids)
        by_id = self.item_encoder(index)
        if self.item_encoder.config.use_text:
            by_text = self.item_encoder.encode_text(texts)
        else:
            by_text = tf.zeros_like(by_id)
        known = index > 0
        return {"embeddings": tf.where(known[:, None], by_id, by_text), "known": known}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="item_ids")])
    def embed_query(self, item_ids):
        self._check_session_width(item_ids)
        return {"embeddings": self.query_tower(self._history(item_ids))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_ids")])
    def item_texts(self, item_ids):
        return {"texts": self.text_table.lookup(item_ids)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_ids"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def recommend_for_user(self, user_ids, k):
        row = self.user_table.lookup(user_ids)
        known = row > 0
        queries = tf.gather(self.user_embeddings, row)
        history = tf.gather(self.user_histories, row)
        out = self._top_k_excluding_indices(queries, history, k, tf.logical_not(known))
        return {"item_ids": out["item_ids"], "scores": out["scores"], "known": known}

    def signatures(self) -> dict:
        return {"serving_default": self.recommend, "similar_items": self.similar_items,
                "embed_items": self.embed_items, "embed_query": self.embed_query,
                "item_texts": self.item_texts, "recommend_for_user": self.recommend_for_user}


@dataclasses.dataclass
class UserCache:
    """The known users' query embeddings, computed once at export.

    Attributes:
      ids: [users] user ids (str).
      embeddings: [users, dim] float32 query embeddings of their histories.
      histories: [users, history_length] int32 vocabulary indices of the
        items each embedding was built from (0-padded on the left); served
        recommendations never include them.
    """

    ids: np.ndarray
    embeddings: np.ndarray
    histories: np.ndarray

    @classmethod
    def empty(cls, history_length: int, dim: int) -> "UserCache":
        return cls(np.zeros(0, dtype=object), np.zeros((0, dim), np.float32),
                   np.zeros((0, history_length), np.int32))


@dataclasses.dataclass
class ExportResult:
    path: Path
    version: int
    metadata: dict
    module: RecommenderModule | None = None


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.exists():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _clean_stale_temporaries(model_dir: Path) -> None:
    """Removes temporary folders of exports whose process is gone."""
    for path in model_dir.glob(TMP_PREFIX + "*"):
        pid = path.name.rsplit("-", 1)[-1]
        alive = False
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)
                alive = True
            except PermissionError:  # it exists, owned by another user
                alive = True
            except ProcessLookupError:
                alive = False
        if not alive:
            shutil.rmtree(path, ignore_errors=True)


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


def users_metadata(data, users: UserCache) -> dict:
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


def _write_warmup(path: Path, model_name: str, sessions: list[list[str]], k: int,
                  user_ids: list[str] = ()) -> int:
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    def record(signature: str, inputs: dict) -> bytes:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        return prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString()

    with tf.io.TFRecordWriter(str(path)) as writer:
        if len(user_ids):
            writer.write(record("recommend_for_user", {
                "user_ids": np.array(list(user_ids), dtype=object).astype(bytes),
                "k": np.int32(k)}))
        for start in range(0, len(sessions), 8):
            rows = sessions[start:start + 8]
            width = max(len(r) for r in rows)
            batch = np.array([r + [""] * (width - len(r)) for r in rows], dtype=object)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = "serving_default"
            request.inputs["item_ids"].CopyFrom(tf.make_tensor_proto(batch.astype(bytes)))
            request.inputs["k"].CopyFrom(tf.make_tensor_proto(np.int32(k)))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return (len(sessions) + 7) // 8 + (1 if len(user_ids) else 0)


def _write_projector(folder: Path, embeddings: np.ndarray, ids: np.ndarray, texts: np.ndarray,
                     counts: np.ndarray) -> int:
    """A TensorBoard projector folder for the most frequent items (at most PROJECTOR_LIMIT)."""
    folder.mkdir(parents=True, exist_ok=True)
    n = min(len(ids), PROJECTOR_LIMIT)
    top = np.argsort(-counts, kind="stable")[:n]
    np.savetxt(folder / "vectors.tsv", embeddings[top], delimiter="\t", fmt="%.5f")
    with (folder / "metadata.tsv").open("w") as f:
        f.write("item\ttext\tevents\n")
        for i in top:
            text = str(texts[i]).replace("\t", " ").replace("\n", " ")
            f.write(f"{ids[i]}\t{text}\t{int(counts[i])}\n")
    (folder / "projector_config.pbtxt").write_text(
        'embeddings {\n  tensor_name: "items"\n  tensor_path: "vectors.tsv"\n'
        '  metadata_path: "metadata.tsv"\n}\n')
    return n


def export(run_dir: str | Path, model_dir: str | Path, index_config: IndexConfig = IndexConfig(),
           version: int | None = None, serving_config_dir: str | Path | None = None,
           warmup_sessions: int = 32, recall_queries: int = 1000) -> ExportResult:
    """Exports the run's model as `model_dir/<version>/`.

    Raises:
      InputError: no finished checkpoint, a model dir that is a file, an
        unwritable location, an existing version, or recall under the floor.
    """
    from tfrec.run import check_run_data, load_run, prepare_training_data

    started = time.perf_counter()
    model_dir = Path(model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise InputError("model dir is a file, expected a folder", path=str(model_dir))
    config, vocab, model, checkpoint = load_run(run_dir)
    ensure_folder(model_dir, "model folder")
    if not os.access(model_dir, os.W_OK):
        raise InputError("model folder is not writable", path=str(model_dir))
    _clean_stale_temporaries(model_dir)
    versions = existing_versions(model_dir)
    if version is None:
        version = (versions[-1] + 1) if versions else 1
    elif version in versions:
        raise InputError(f"version {version} exists already; versions are never overwritten "
                         "(leave --version out to write the next one)",
                         path=str(model_dir / str(version)))
    elif version < 1:
        raise InputError(f"version must be a positive integer, got {version}",
                         key="export.version")
    model_name = model_dir.resolve().name

    logger.info("embedding %d catalogue items", vocab.size - 1)
    embeddings = model.item_embeddings()
    item_ids = vocab.ids.astype(str)

    logger.info("re-reading the training data for real query sessions")
    data = prepare_training_data(config)
    check_run_data(data.vocab, vocab, run_dir)
    sessions = sample_sessions(data, max(recall_queries, warmup_sessions))
    from tfrec.data.sequences import histories_from_lists

    queries = model.query_embeddings(histories_from_lists(sessions[:recall_queries],
                                                          model.query_tower.history_length))
    k = min(10, index_config.max_k)
    index, index_config, recall, build_seconds = build_index_for_recall(
        embeddings[1:], item_ids[1:], index_config, queries, k, log=logger.info)
    logger.info("index recall@%d against brute force on %d real queries: %.4f", k, len(queries),
                recall)
    if index_config.kind == "scann" and recall < index_config.recall_floor:
        raise InputError(
            f"ScaNN recall@{k} is {recall:.3f}, under the floor {index_config.recall_floor}; "
            "search more leaves (--leaves-to-search), reorder more candidates "
            "(--reorder), or lower --recall-floor", key="index.recall_floor")

    history_length = int(model.query_tower.history_length)
    if history_length > index_config.max_session_items:
        raise InputError(
            f"max_session_items ({index_config.max_session_items}) is under the model's "
            f"history_length ({history_length}): a user's recommendations exclude the "
            "history_length items of its cached embedding, and the index must return enough "
            "to drop them", key="index.max_session_items")
    logger.info("computing the cached user embeddings")
    user_ids, histories = user_histories(data.sessions, history_length)
    users = UserCache(user_ids, model.query_embeddings(histories), histories)
    users_meta = users_metadata(data, users)
    module = RecommenderModule(model, item_ids, index, index_config.max_k, vocab.text,
                               vocab.counts, index_config.max_session_items, users)
    tmp = model_dir / f"{TMP_PREFIX}{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        namespaces = ["TFText"] + (["Scann"] if index_config.kind == "scann" else [])
        options = tf.saved_model.SaveOptions(namespace_whitelist=namespaces)
        # Call every signature once so the index and towers are traced before saving.
        probe = tf.constant([[item_ids[1], ""]])
        module.recommend(probe, tf.constant(1))
        tf.saved_model.save(module, str(tmp), signatures=module.signatures(), options=options)
        extra = tmp / "assets.extra"
        (extra / "embeddings").mkdir(parents=True)
        np.save(extra / "embeddings" / "items.npy", embeddings[1:].astype(np.float32))
        (extra / "embeddings" / "item_ids.txt").write_text("\n".join(item_ids[1:]) + "\n")
        np.save(extra / "embeddings" / "users.npy", users.embeddings)
        np.save(extra / "embeddings" / "user_histories.npy", users.histories)
        (extra / "embeddings" / "user_ids.txt").write_text(
            "".join(f"{u}\n" for u in users.ids))
        projected = _write_projector(extra / "projector", embeddings[1:], item_ids[1:],
                                     vocab.text[1:], vocab.counts[1:])
        warm_sessions = [[str(item_ids[i]) for i in s] for s in sessions[:warmup_sessions]]
        records = _write_warmup(extra / WARMUP_FILE, model_name, warm_sessions, k,
                                [str(u) for u in users.ids[:8]])
        metadata = {
            "model": model_name, "version": version, "run": str(Path(run_dir).resolve()),
            "checkpoint": checkpoint, "index": index_config.kind,
            "index_parameters": (scann_parameters(len(embeddings) - 1, index_config)
                                 if index_config.kind == "scann" else {}),
            "max_k": index_config.max_k, "max_session_items": index_config.max_session_items,
            "history_length": int(model.query_tower.history_length),
            "items": int(vocab.size - 1),
            "embedding_dim": int(model.embedding_dim), "users": int(len(users.ids)),
            **users_meta,
            f"recall@{k}": recall, "recall_queries": int(len(queries)),
            "index_build_seconds": round(build_seconds, 3),
            "warmup_records": records, "projector_items": projected,
            "signatures": sorted(module.signatures()),
            "export_seconds": round(time.perf_counter() - started, 1),
        }
        (extra / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        final = model_dir / str(version)
        os.rename(tmp, final)  # atomic on one file system: all or nothing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if serving_config_dir is not None:
        write_serving_config(serving_config_dir, model_name, model_dir)
    logger.info("exported %s in %.1fs", final, time.perf_counter() - started)
    return ExportResult(final, version, metadata, module)


BATCHING_CONFIG = """\
max_batch_size { value: 256 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
pad_variable_length_inputs: true
"""


def write_serving_config(folder: str | Path, model_name: str, model_dir: str | Path) -> Path:
    """Adds or updates the model in `folder/models.config`; writes batching.config if absent."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    folder = ensure_folder(folder, "serving config folder")
    path = folder / "models.config"
    config = model_server_config_pb2.ModelServerConfig()
    if path.exists():
        try:
            text_format.Parse(path.read_text(), config)
        except text_format.ParseError as err:
            raise InputError(f"not a TF Serving model config: {err}", path=str(path)) from None
    entries = config.model_config_list.config
    entry = next((c for c in entries if c.name == model_name), None) or entries.add()
    entry.name = model_name
    entry.base_path = str(Path(model_dir).resolve())
    entry.model_platform = "tensorflow"
    path.write_text(text_format.MessageToString(config))
    batching = folder / "batching.config"
    if not batching.exists():
        batching.write_text(BATCHING_CONFIG)
    return path


def load_saved_model(path: str | Path):
    """Loads an exported version; registers the ScaNN and tensorflow-text ops first."""
    import scann  # noqa: F401  (Scann>... ops)
    import tensorflow_text  # noqa: F401  (CaseFoldUTF8, TFText>... ops)

    path = Path(path)
    if not (path / "saved_model.pb").exists():
        raise InputError("not a SavedModel folder (no saved_model.pb)", path=str(path))
    return tf.saved_model.load(str(path))
