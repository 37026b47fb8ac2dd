"""What the query tower costs a request: encoding the history's items with the text tower
on every call (the earlier export) against gathering them from vectors computed once at
export time (`RecommenderModule.query_item_vectors`), both exports of one run loaded in this
process and called in turn.

    TFREC_DATA=../shared/data PYTHONPATH=. python bench/query_vectors.py --run runs/main

Prints, per export and signature, the wall time per call (p50, p99) and the process CPU
time per call (all threads; steadier than wall time on a shared host), and the versions'
sizes on disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tfrec  # noqa: F401  (first: it sets up tf.keras before TensorFlow is imported)
import scann  # noqa: F401,I100  (its ops, before a ScaNN SavedModel loads)
import tensorflow as tf  # noqa: I100

from tfrec.exporter import load_saved_model  # noqa: I100
from tfrec.exporter.layout import VersionFolder
from tfrec.utils import read_id_lines
from tfrec.exporter.module import RecommenderModule
from tfrec.exporter.saved_model import export
from tfrec.index import IndexConfig


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def measure(calls: dict, sessions: list, rounds: int) -> dict:
    """name -> (wall p50 ms, wall p99 ms, CPU ms per call), the calls taking turns."""
    names = list(calls)
    for name in names:  # traced and warm
        for session in sessions[:20]:
            calls[name](session)
    wall = {name: [] for name in names}
    cpu = {name: 0.0 for name in names}
    for r in range(rounds):
        session = sessions[r % len(sessions)]
        for name in (names if r % 2 == 0 else names[::-1]):
            c, t = time.process_time(), time.perf_counter()
            calls[name](session)
            wall[name].append(time.perf_counter() - t)
            cpu[name] += time.process_time() - c
    return {name: (*np.percentile(np.asarray(wall[name]) * 1000, [50, 99]),
                   cpu[name] / rounds * 1000) for name in names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a trained run folder (with a text tower)")
    parser.add_argument("--rounds", type=int, default=2000, help="calls of each export")
    parser.add_argument("--index", default="scann", help="the exports' index kind")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tfrec-bench-query-"))
    new = export(args.run, work / "gathered", IndexConfig(kind=args.index))
    # The earlier module: no vectors kept, the item encoder runs on each call.
    init = RecommenderModule.__init__

    def without_vectors(self, *a, **kw):
        init(self, *a, **kw)
        self.query_item_vectors = None

    RecommenderModule.__init__ = without_vectors
    try:
        old = export(args.run, work / "encoded", IndexConfig(kind=args.index))
    finally:
        RecommenderModule.__init__ = init
    ids = read_id_lines(VersionFolder(new.path).item_ids)
    rng = np.random.default_rng(0)
    sessions = [[ids[i] for i in rng.integers(0, len(ids), 3)] for _ in range(2000)]
    k = tf.constant(10)
    rows = []
    for signature in ("serving_default", "embed_query"):
        calls = {}
        for label, result in (("encoded per call (before)", old), ("gathered", new)):
            f = load_saved_model(result.path).signatures[signature]
            if signature == "serving_default":
                calls[label] = lambda s, f=f: f(item_ids=tf.constant([s]), k=k)
            else:
                calls[label] = lambda s, f=f: f(item_ids=tf.constant([s]))
        for label, (p50, p99, cpu) in measure(calls, sessions, args.rounds).items():
            rows.append((signature, label, p50, p99, cpu))
    a = load_saved_model(old.path).signatures["embed_query"]
    b = load_saved_model(new.path).signatures["embed_query"]
    batch = tf.constant([s for s in sessions[:256]])
    gap = float(np.abs(a(item_ids=batch)["embeddings"].numpy()
                       - b(item_ids=batch)["embeddings"].numpy()).max())
    print(f"{'signature':<16} {'query items':<26} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'CPU ms/call':>11}")
    for signature, label, p50, p99, cpu in rows:
        print(f"{signature:<16} {label:<26} {p50:7.2f} {p99:7.2f} {cpu:11.2f}")
    print(f"largest difference of the two exports' query embeddings (256 sessions): {gap:.2e}")
    print(f"version size: {folder_mb(old.path):.1f} MB before, {folder_mb(new.path):.1f} MB "
          f"with the vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
