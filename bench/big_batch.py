"""One large `serving_default` request: its time and the process's peak memory.

    .venv/bin/python bench/big_batch.py VERSION ROWS ITEMS

ROWS sessions of ITEMS random catalogue items each, in one call (after one
small call that loads and traces the version); prints the seconds and the
peak RSS over the loaded version's. Run once per version (a process each):
the peak is the process's own.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

import tfrec  # noqa: F401  (first: it sets up tf.keras before TensorFlow is imported)
import tensorflow as tf  # noqa: I100

from tfrec.exporter.saved_model import load_saved_model  # noqa: I100


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", help="an exported version folder")
    parser.add_argument("rows", type=int, help="sessions in the request")
    parser.add_argument("items", type=int, help="items per session")
    args = parser.parse_args(argv)
    call = load_saved_model(args.version).signatures["serving_default"]
    ids = (Path(args.version) / "assets.extra" / "embeddings" / "item_ids.txt").read_text()
    ids = np.array(ids.split())
    call(item_ids=tf.constant([list(ids[:3])]), k=tf.constant(10))
    loaded = peak_mb()
    rng = np.random.default_rng(0)
    batch = tf.constant([list(rng.choice(ids, args.items, replace=False))
                         for _ in range(args.rows)])
    started = time.perf_counter()
    call(item_ids=batch, k=tf.constant(10))
    seconds = time.perf_counter() - started
    peak = peak_mb()
    print(f"{args.version}: {args.rows} sessions x {args.items} items: {seconds:.2f} s, "
          f"peak RSS {peak:.0f} MB (+{peak - loaded:.0f} MB over the loaded version)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
