"""New items without retraining: `tfrec export --add-items` against a full re-export.

    python bench/catalogue.py                          # both catalogues
    python bench/catalogue.py --skip-generated         # the bundled one only
    python bench/catalogue.py --items 100000 --add 1000   # a quicker generated row

Two catalogues:

* bundled: the run behind `saved_models/retail` (`runs/main`, from `make run`;
  skipped if absent). The full re-export is `tfrec.export` of the run (it
  re-reads the training data, embeds every item, caches the users); the
  update is `update_catalogue` adding --retail-add items (texts made from
  halves of two catalogue texts) to that version.
* generated: --items unit vectors around sqrt(N) centres (as bench/export.py)
  as the id embeddings of a model with a text tower (untrained: it only has
  to be timed), --users cached users. The full re-export embeds every item
  with the model, builds and checks the index and writes the version; the
  update adds --add items embedded from their text. Both go through the
  library's `write_version`, as the command does; the run-folder loading and
  data re-reading of a real export are not part of this row.

Every step runs in a process of its own, so its peak RSS is its own; the
model is built (untimed) in both steps of a row, so the peaks compare. The
index is ScaNN with its defaults, recall@10 checked as the command does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

ROOT = Path(__file__).resolve().parent.parent
WORDS = 5000


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the bundled catalogue ------------------------------------------------------------------
def retail_items(version_dir: Path, count: int, out: Path, seed: int = 0) -> None:
    import pandas as pd

    from tfrec.exporter.layout import VersionFolder
    from tfrec.utils import read_id_lines
    from tfrec.run import load_run

    version = VersionFolder(version_dir)
    ids = read_id_lines(version.item_ids)
    meta = version.read_metadata()
    vocab = load_run(meta["run"])[1]
    texts = [str(t) for t in vocab.text[vocab.lookup(ids)] if str(t).strip()]
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(texts), (2, count))
    new = [" ".join(texts[i].split()[:2] + texts[j].split()[2:]) or texts[i]
           for i, j in zip(a, b)]
    pd.DataFrame({"item_id": [f"NEW{i:05d}" for i in range(count)], "text": new}).to_csv(
        out, index=False)


def step_retail_full(work: Path, args) -> dict:
    from tfrec.exporter import export
    from tfrec.index import IndexConfig

    started = time.perf_counter()
    result = export(args.run, work / "retail", IndexConfig())
    return {"seconds": time.perf_counter() - started, "items": result.metadata["items"],
            "recall": result.metadata["recall@10"], "peak_mb": peak_mb()}


def step_retail_add(work: Path, args) -> dict:
    from tfrec.exporter import CatalogueUpdate, update_catalogue

    items = work / "retail_new.csv"
    retail_items(work / "retail" / "1", args.retail_add, items)
    started = time.perf_counter()
    result = update_catalogue(work / "retail", CatalogueUpdate(add_items=items))
    return {"seconds": time.perf_counter() - started, "items": result.metadata["items"],
            "recall": result.metadata["recall@10"], "peak_mb": peak_mb()}


# -- the generated catalogue ----------------------------------------------------------------
class _Model:
    """An id + text model whose id embeddings are the generated vectors (text part zero
    for catalogue items: their texts are not tokenised into the model)."""

    def __init__(self, vectors: np.ndarray, history_length: int = 5):
        import tensorflow as tf

        from tfrec.config import ModelConfig, TextConfig
        from tfrec.models import build_item_encoder, build_query_tower

        n, dim = vectors.shape
        config = ModelConfig(embedding_dim=dim, use_text=True, fusion="sum", text_gate=False,
                             history_length=history_length,
                             text=TextConfig(token_dim=32, filters=32))
        self.item_encoder = build_item_encoder(
            config, n + 1, n + 1, text_vocabulary=[f"w{i}" for i in range(WORDS)], seed=0)
        self.item_encoder(tf.constant([0]))
        self.item_encoder.id_embedding.set_weights(
            [np.vstack([np.zeros((1, dim), np.float32), vectors])])
        self.query_tower = build_query_tower(config, self.item_encoder)
        self.embedding_dim = dim

    def item_embeddings(self, item_index=None, batch_size: int = 65_536) -> np.ndarray:
        import tensorflow as tf

        if item_index is None:
            item_index = np.arange(self.item_encoder.num_items, dtype=np.int32)
        return np.concatenate([self.item_encoder(tf.constant(item_index[i:i + batch_size]))
                               .numpy() for i in range(0, len(item_index), batch_size)])

    def query_embeddings(self, histories: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return np.concatenate([self.query_tower(tf.constant(histories[i:i + 65_536])).numpy()
                               for i in range(0, len(histories), 65_536)])


def generated(args):
    """(model, vocab, users) of the generated catalogue (deterministic)."""
    from export import catalogue, sessions_of
    from tfrec.data.vocab import ItemVocabulary
    from tfrec.exporter import UserCache

    vectors, assignment = catalogue(args.items, args.dim)
    rng = np.random.default_rng(3)
    words = rng.integers(0, WORDS, (args.items, 4))
    texts = np.array([""] + [" ".join(f"w{w}" for w in row) for row in words], dtype=object)
    counts = np.concatenate([[0], np.sort(rng.zipf(1.5, args.items))[::-1]]).astype(np.int64)
    ids = np.concatenate([["[OOV]"], np.char.add("i", np.arange(args.items).astype(str))])
    vocab = ItemVocabulary(ids=ids.astype(object), text=texts,
                           market=np.full(args.items + 1, -1, np.int32), market_names=[],
                           counts=counts)
    model = _Model(vectors)
    histories = sessions_of(assignment, args.users, seed=2).astype(np.int32)
    users = UserCache(np.char.add("u", np.arange(args.users).astype(str)).astype(object),
                      model.query_embeddings(histories), histories)
    return model, vocab, users


def step_generated_full(work: Path, args) -> dict:
    from tfrec.exporter.catalogue import Catalogue
    from tfrec.exporter.module import RecommenderModule
    from tfrec.exporter.saved_model import (VersionContents, build_checked_index,
                                            index_metadata, prepare_version, write_version)
    from tfrec.index import IndexConfig

    model, vocab, users = generated(args)
    started = time.perf_counter()
    model_dir, version = prepare_version(work / "generated", None)
    catalogue = Catalogue.from_vocabulary(vocab, model.item_embeddings())
    users = type(users)(users.ids, model.query_embeddings(users.histories), users.histories)
    queries = users.embeddings[:1000]
    config = IndexConfig()
    index, config, recall, build = build_checked_index(catalogue, config, queries, 10)
    module = RecommenderModule(model, vocab.ids, index, config.max_k, vocab.text, vocab.counts,
                               config.max_session_items, users)
    metadata = {**index_metadata(catalogue, config, recall, 10, len(queries), build),
                "history_length": 5, "embedding_dim": args.dim}
    warm = [[str(vocab.ids[i]) for i in h if i] for h in users.histories[:32]]
    write_version(model_dir, version,
                  VersionContents(module, catalogue, vocab.ids.astype(str), users, warm,
                                  metadata), started)
    return {"seconds": time.perf_counter() - started, "items": len(catalogue),
            "recall": recall, "peak_mb": peak_mb()}


def step_generated_add(work: Path, args) -> dict:
    import pandas as pd

    from tfrec.exporter import CatalogueUpdate, VersionFolder
    from tfrec.exporter.update import write_updated_version

    model, vocab, _ = generated(args)
    rng = np.random.default_rng(4)
    words = rng.integers(0, WORDS, (args.add, 4))
    new = pd.DataFrame({"item": [f"new{i}" for i in range(args.add)],
                        "text": [" ".join(f"w{w}" for w in row) for row in words]})
    source = work / "generated" / "1"
    started = time.perf_counter()
    metadata = VersionFolder(source).read_metadata()
    result = write_updated_version(work / "generated", source, metadata, model, vocab, new, [],
                                   CatalogueUpdate(add_items="generated"))
    return {"seconds": time.perf_counter() - started, "items": result.metadata["items"],
            "recall": result.metadata["recall@10"], "peak_mb": peak_mb()}


STEPS = {"retail-full": step_retail_full, "retail-add": step_retail_add,
         "generated-full": step_generated_full, "generated-add": step_generated_add}


def run_step(name: str, work: Path, argv: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    done = subprocess.run([sys.executable, __file__, "--step", name, "--work", str(work),
                           *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"step {name} failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "main"),
                        help="the bundled run (default runs/main)")
    parser.add_argument("--retail-add", type=int, default=1000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--add", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--skip-generated", action="store_true")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        import tfrec  # noqa: F401  (legacy Keras before TensorFlow)
        from tfrec.cli import set_native_logging

        set_native_logging(False)
        print(json.dumps(STEPS[args.step](Path(args.work), args)))
        return
    passed = [f"--run={args.run}", f"--retail-add={args.retail_add}",
              f"--items={args.items}", f"--add={args.add}", f"--users={args.users}",
              f"--dim={args.dim}"]
    work = Path(tempfile.mkdtemp(prefix="tfrec-catalogue-"))
    rows = []
    try:
        if (Path(args.run) / "config.json").exists():
            full = run_step("retail-full", work, passed)
            add = run_step("retail-add", work, passed)
            rows.append((f"bundled ({full['items']:,} items) + {args.retail_add:,}", full, add))
        else:
            print(f"bundled catalogue: {args.run} not found (make run); row skipped")
        if not args.skip_generated:
            full = run_step("generated-full", work, passed)
            add = run_step("generated-add", work, passed)
            rows.append((f"generated ({full['items']:,} items) + {args.add:,}", full, add))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'catalogue':<34} {'re-export s':>11} {'add s':>8} {'speed-up':>8} "
          f"{'recall@10':>16} {'peak RSS MB':>18}")
    print(f"{'':<34} {'':>11} {'':>8} {'':>8} {'full / add':>16} {'full / add':>18}")
    print("-" * 100)
    for name, full, add in rows:
        print(f"{name:<34} {full['seconds']:>11.1f} {add['seconds']:>8.1f} "
              f"{full['seconds'] / add['seconds']:>7.1f}x "
              f"{full['recall']:>7.4f} / {add['recall']:.4f} "
              f"{full['peak_mb']:>8,.0f} / {add['peak_mb']:,.0f}")


if __name__ == "__main__":
    main()
