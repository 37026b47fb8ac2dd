"""An exported version scored like a trained model (`tfrec evaluate --saved-model`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrec.errors import InputError
from tfrec.exporter.layout import INDEX_KIND, ModelFolder, VersionFolder
from tfrec.exporter.saved_model import load_saved_model
from tfrec.index.ann import tied_hits
from tfrec.metrics import top_k_items
from tfrec.utils import read_id_lines, utf8_text


class ExportedModel:
    """An exported version scored like a trained model: its cached item
    embeddings, its `embed_query` signature, and its own index for recall."""

    def __init__(self, path: Path, vocab):
        self.path = Path(path)
        self.vocab = vocab
        self.module = load_saved_model(self.path)
        folder = VersionFolder(self.path)
        try:
            vectors = np.load(folder.items)
            ids = read_id_lines(folder.item_ids)
        except OSError as err:
            raise InputError(f"the export has no cached item embeddings ({err.strerror})",
                             path=str(folder.embeddings)) from None
        index = vocab.lookup(np.asarray(ids, dtype=object))
        self.metadata = folder.read_metadata()
        if (index == 0).any() or len(ids) != vocab.size - 1:
            added = int(self.metadata.get("added_items") or 0)
            dropped = int(self.metadata.get("dropped_items") or 0)
            # The catalogue's change, not another run: the ids the run does not know are
            # the added ones, and the run's ids missing are the dropped ones.
            if (added or dropped) and int((index == 0).sum()) == added and \
                    len(ids) - added == vocab.size - 1 - dropped:
                raise InputError(
                    f"the version's catalogue is not the run's: {added:,} items added and "
                    f"{dropped:,} dropped since training (tfrec export --add-items / "
                    "--drop-items); the evaluation scores the run's catalogue, so evaluate "
                    "a version exported from the run as it is (tfrec export --run)",
                    path=str(self.path))
            raise InputError("the export's items differ from the run's vocabulary (exported "
                             "from another run?)", path=str(folder.item_ids))
        self.items = np.zeros((vocab.size, vectors.shape[1]), np.float32)
        self.items[index] = vectors

    @property
    def two_stage(self) -> bool:
        """Does `serving_default` run the ranking stage (its top k the ranker's)?"""
        return "ranker" in self.metadata.get("stages", [])

    def item_embeddings(self) -> np.ndarray:
        return self.items

    def text_embeddings(self, texts: np.ndarray, batch_size: int = 4096) -> np.ndarray | None:
        """The export's `embed_items` for unknown ids: each text as a brand-new item."""
        function = self.module.signatures["embed_items"]
        texts = np.asarray(texts).astype(str)
        out = [function(item_ids=tf.constant([""] * len(texts[i:i + batch_size])),
                        texts=tf.constant(texts[i:i + batch_size]))["embeddings"].numpy()
               for i in range(0, len(texts), batch_size)]
        vectors = np.concatenate(out) if out else np.zeros((0, self.items.shape[1]), np.float32)
        return vectors if np.abs(vectors).sum() > 0 else None  # no text tower: all zeros

    def _ids(self, history: np.ndarray):
        names = np.where(history > 0, self.vocab.ids[history], "").astype(object)
        return tf.constant(names.astype(str))

    def query_embeddings(self, history: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        function = self.module.signatures["embed_query"]
        return np.concatenate([function(item_ids=self._ids(history[i:i + batch_size]))[
            "embeddings"].numpy() for i in range(0, len(history), batch_size)])

    def served_ranks(self, queries: list, targets: np.ndarray, k: int,
                     batch_size: int | None = None) -> tuple[np.ndarray, int]:
        """(ranks [n], width): each target's place in `serving_default`'s top `width`
        for its case's query items as one session (`width` at the ranks of a miss), width
        = k cut to the export's max_k. A query longer than the export's
        max_session_items sends its last ones.

        A ScaNN export answers a session a little differently alone and beside others
        (ScaNN searches one query and a batch of them by different paths, each
        deterministic): its cases are sent one request each, as a client sends a
        session (`batch_size` default 1). A brute-force export's answers do not depend
        on the batch: 512 sessions a request."""
        if batch_size is None:
            batch_size = 1 if self.metadata.get(INDEX_KIND, "scann") == "scann" else 512
        function = self.module.signatures["serving_default"]
        width = int(min(k, self.metadata.get("max_k", k)))
        longest = int(self.metadata.get("max_session_items", 500))
        names = self.vocab.ids.astype(str)
        ranks = np.full(len(queries), width, np.int64)
        for start in range(0, len(queries), batch_size):
            rows = [list(q)[-longest:] for q in queries[start:start + batch_size]]
            if not rows:
                continue
            length = max(1, max(len(q) for q in rows))
            sessions = [[names[i] for i in q] + [""] * (length - len(q)) for q in rows]
            found = function(item_ids=tf.constant(sessions), k=tf.constant(width))
            found = utf8_text(found["item_ids"].numpy())
            wanted = names[np.asarray(targets[start:start + len(rows)])]
            hit = found == wanted[:, None]
            ranks[start:start + len(rows)] = np.where(hit.any(axis=1), hit.argmax(axis=1),
                                                      width)
        return ranks, width

    def recorded_recall(self) -> dict:
        """The index recall the export measured against brute force (a two-stage
        export's `serving_default` gives the ranker's top k, not the index's)."""
        recall = {key.split("@")[1]: float(value) for key, value in self.metadata.items()
                  if key.startswith("recall@")}
        return {"index": "export", "path": str(self.path),
                "queries": int(self.metadata.get("recall_queries", 0)), "recall": recall,
                "measured": "at export (the export's metadata)"}

    def index_recall(self, history: np.ndarray, queries: np.ndarray, k: int = 10) -> dict:
        """The exported serving_default top-k against exact top-k (query items excluded;
        ties counted, `tied_hits`)."""
        function = self.module.signatures["serving_default"]
        found = np.concatenate([utf8_text(function(item_ids=self._ids(history[i:i + 1024]),
                                                   k=tf.constant(k))["item_ids"].numpy())
                                for i in range(0, len(history), 1024)])
        valid = np.ones(len(self.items), dtype=bool)
        valid[0] = False
        top = top_k_items(queries, self.items, list(history), valid, k)  # query items excluded
        rows = self.vocab.lookup(found.ravel().astype(object)).reshape(found.shape)
        recall = tied_hits(queries, self.items, np.where(rows > 0, rows, -1), top, k)
        return {"index": "export", "path": str(self.path), "queries": int(len(history)),
                "recall": {str(k): recall}}


def run_of_export(path: Path) -> Path:
    """The run folder an exported version names in its metadata.

    Raises:
      InputError: a model folder (versions below it) given for a version, no run in the
        metadata, or a run that is gone.
    """
    meta = VersionFolder(path).metadata
    if not VersionFolder(path).saved_model.exists():
        versions = ModelFolder(path).versions() if Path(path).is_dir() else []
        if versions:
            raise InputError(f"it is a model folder: give a version folder, e.g. "
                             f"{Path(path) / str(versions[-1])}", path=str(path),
                             key="evaluate.saved_model")
        raise InputError(f"not a SavedModel folder (no {VersionFolder.saved_model.name})",
                         path=str(path), key="evaluate.saved_model")
    try:
        run = VersionFolder(path).read_metadata()["run"]
    except (InputError, KeyError):
        raise InputError("cannot find the export's run in its metadata; give evaluate.run_dir too",
                         path=str(meta)) from None
    if not Path(run).is_dir():
        raise InputError(f"the export's run folder {run} is gone; give evaluate.run_dir",
                         path=str(meta), key="evaluate.run_dir")
    return Path(run)
