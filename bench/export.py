"""Export at catalogue scale: ScaNN against brute force on a generated catalogue.

    python bench/export.py                 # 1M items, dimension 64
    python bench/export.py --items 100000  # quicker
    python bench/export.py --items 5000000 --brute-force numpy   # 5M: no brute-force export

The catalogue has planted structure (items scattered around sqrt(N) cluster
centres, as trained item embeddings are), queries are sessions of five items
of one cluster pooled by the query tower. For each index (ScaNN, and the
brute-force baseline in the same process) it prints: index build time,
SavedModel save time and size, recall@10 against exact search, and queries/s
through the exported `serving_default` signature, batched (256 sessions per
call) and single. The model is an id-only tfrec model whose embeddings are the
generated vectors, exported with the same `RecommenderModule` as `tfrec export`.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tfrec  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

from tfrec.config import ModelConfig  # noqa: E402
from tfrec.exporter.saved_model import RecommenderModule, load_saved_model  # noqa: E402
from tfrec.index.ann import IndexConfig, build_index, recall_at_k, scann_parameters  # noqa: E402
from tfrec.models import build_item_encoder, build_query_tower  # noqa: E402


class _Model:
    """The parts of a HybridModel that export uses."""

    def __init__(self, vectors: np.ndarray):
        n, dim = vectors.shape
        config = ModelConfig(embedding_dim=dim, use_text=False, history_length=5)
        self.item_encoder = build_item_encoder(config, n + 1, n + 1)
        self.item_encoder(tf.constant([0]))
        self.item_encoder.id_embedding.set_weights(
            [np.vstack([np.zeros((1, dim), np.float32), vectors])])
        self.query_tower = build_query_tower(config, self.item_encoder)


def catalogue(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clusters = max(int(np.sqrt(n)), 1)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    assignment = rng.integers(0, clusters, n)
    vectors = centres[assignment] + 0.7 * rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, assignment


def sessions_of(assignment: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    order = np.argsort(assignment, kind="stable")
    starts = np.searchsorted(assignment[order], np.arange(assignment.max() + 1))
    sizes = np.bincount(assignment, minlength=assignment.max() + 1)
    picked = rng.choice(np.flatnonzero(sizes >= 5), count)
    offsets = rng.integers(0, 1 << 30, (count, 5)) % sizes[picked][:, None]
    return order[starts[picked][:, None] + offsets] + 1  # vocabulary indices (0 = OOV)


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def measure(kind: str, vectors: np.ndarray, ids: np.ndarray, model: _Model,
            sessions: np.ndarray, queries: np.ndarray, workdir: Path,
            config: IndexConfig | None = None, label: str | None = None) -> dict:
    config = config or IndexConfig(kind=kind, max_k=100)
    t = time.perf_counter()
    index = build_index(vectors, ids[1:], config)
    build = time.perf_counter() - t
    recall = recall_at_k(index, queries, vectors, ids[1:], 10)
    module = RecommenderModule(model, ids, index, config.max_k)
    path = workdir / (label or kind)
    t = time.perf_counter()
    module.recommend(tf.constant([[ids[1]]]), tf.constant(1))
    namespaces = ["TFText"] + (["Scann"] if kind == "scann" else [])
    tf.saved_model.save(module, str(path), signatures=module.signatures(),
                        options=tf.saved_model.SaveOptions(namespace_whitelist=namespaces))
    save = time.perf_counter() - t
    del module, index
    served = load_saved_model(path).signatures["serving_default"]
    batch = tf.constant(ids[sessions[:256]])
    served(item_ids=batch, k=tf.constant(10))  # warm up
    t, calls = time.perf_counter(), 0
    while time.perf_counter() - t < 5.0:
        served(item_ids=batch, k=tf.constant(10))
        calls += 1
    batched = calls * 256 / (time.perf_counter() - t)
    t, calls = time.perf_counter(), 0
    while time.perf_counter() - t < 5.0:
        served(item_ids=batch[calls % 256:calls % 256 + 1], k=tf.constant(10))
        calls += 1
    single = calls / (time.perf_counter() - t)
    return {"index": label or kind, "build_s": build, "save_s": save, "size_mb": folder_mb(path),
            "recall": recall, "qps_batched": batched, "qps_single": single,
            "params": scann_parameters(len(vectors), config) if kind == "scann" else {},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def numpy_brute_force(vectors: np.ndarray, queries: np.ndarray) -> dict:
    """The exact top-10 by a numpy matrix product: the brute-force rate without an export."""
    from tfrec.index.ann import exact_top_k

    batch = queries[:256]
    t, calls = time.perf_counter(), 0
    while time.perf_counter() - t < 5.0 or calls < 2:
        exact_top_k(batch, vectors, 10)
        calls += 1
    batched = calls * len(batch) / (time.perf_counter() - t)
    t, calls = time.perf_counter(), 0
    while time.perf_counter() - t < 5.0 or calls < 2:
        exact_top_k(batch[calls % len(batch)][None], vectors, 10)
        calls += 1
    single = calls / (time.perf_counter() - t)
    return {"index": "numpy_exact", "build_s": 0.0, "save_s": 0.0, "size_mb": 0.0,
            "recall": 1.0, "qps_batched": batched, "qps_single": single, "params": {},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--brute-force", choices=["export", "numpy"], default="export",
                        help="baseline: a brute-force SavedModel (default), or a numpy exact "
                             "top-k in this process (no second export: for catalogues too big "
                             "to hold two exports in memory)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    parser.add_argument("--compare-reorder", type=int, metavar="N",
                        help="also a ScaNN row re-scoring N candidates (sessions of up to "
                             "N - 100 items), beside the default")
    args = parser.parse_args()
    t = time.perf_counter()
    vectors, assignment = catalogue(args.items, args.dim)
    ids = np.concatenate([["[OOV]"], np.char.add("i", np.arange(args.items).astype(str))])
    model = _Model(vectors)
    sessions = sessions_of(assignment, args.queries)
    queries = model.query_tower(tf.constant(sessions)).numpy()
    print(f"catalogue: {args.items:,} items, dimension {args.dim}, "
          f"{assignment.max() + 1:,} clusters; {args.queries:,} session queries; "
          f"generated in {time.perf_counter() - t:.1f}s", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="tfrec-bench-export-"))
    rows = []
    try:
        rows.append(measure("scann", vectors, ids, model, sessions, queries, workdir))
        print("  done: scann", file=sys.stderr, flush=True)
        if args.compare_reorder:
            other = IndexConfig(kind="scann", max_k=100,
                                num_reordering_candidates=args.compare_reorder,
                                max_session_items=args.compare_reorder - 100)
            rows.append(measure("scann", vectors, ids, model, sessions, queries, workdir, other,
                                f"scann_r{args.compare_reorder}"))
            rows[-1]["params"] = scann_parameters(len(vectors), other)
            print(f"  done: scann reorder {args.compare_reorder}", file=sys.stderr, flush=True)
        if args.brute_force == "export":
            rows.append(measure("brute_force", vectors, ids, model, sessions, queries, workdir))
        else:
            rows.append(numpy_brute_force(vectors, queries))
        print("  done: brute force", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    head = (f"{'index':<13}{'build s':>9}{'save s':>9}{'size MB':>9}{'recall@10':>11}"
            f"{'q/s batched':>13}{'q/s single':>12}{'peak RSS MB':>13}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['index']:<13}{r['build_s']:>9.1f}{r['save_s']:>9.1f}{r['size_mb']:>9.0f}"
              f"{r['recall']:>11.4f}{r['qps_batched']:>13,.0f}{r['qps_single']:>12,.0f}"
              f"{r['peak_rss_mb']:>13,.0f}")
    scann, brute = rows[0], rows[-1]
    for r in rows[1:-1]:
        print(f"{r['index']} {r['params']}")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({"items": args.items, "dim": args.dim,
                                               "rows": rows}, indent=2))
    print(f"ScaNN {scann['params']}: {scann['qps_batched'] / brute['qps_batched']:.1f}x the "
          f"brute-force batched rate, {scann['qps_single'] / brute['qps_single']:.1f}x single")


if __name__ == "__main__":
    main()
