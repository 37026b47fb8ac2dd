"""`serving_default`'s latency by session length: two exported versions side by side.

    .venv/bin/python bench/session_length.py OLD_VERSION NEW_VERSION [--rounds 300]

Sessions of 3 to 500 random catalogue items (the export's `max_session_items`
is 500 by default), k = 10, one intra-op thread (as `tfrec serve`), the two
versions taking turns on the same sessions. The ranking stage reads every
item of a session (its table sums and similarity features grow with it);
the query tower reads the last `history_length`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import tfrec  # noqa: F401  (first: it sets up tf.keras before TensorFlow is imported)
import tensorflow as tf  # noqa: I100

from tfrec.exporter.saved_model import load_saved_model  # noqa: I100

LENGTHS = (3, 20, 50, 100, 200, 500)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs=2, help="two exported version folders")
    parser.add_argument("--rounds", type=int, default=300, help="calls of each per length")
    args = parser.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    calls = [load_saved_model(v).signatures["serving_default"] for v in args.versions]
    ids = (Path(args.versions[0]) / "assets.extra" / "embeddings" / "item_ids.txt").read_text()
    ids = np.array(ids.split())
    rng = np.random.default_rng(0)
    k = tf.constant(10)
    print(f"serving_default, 1 caller, k = 10, {args.rounds} calls of each version per "
          "length, taking turns; p50 / p99 ms")
    print(f"{'items':>5}  {'first':>15}  {'second':>15}")
    for length in LENGTHS:
        if length > len(ids):
            break
        sessions = [tf.constant([list(rng.choice(ids, length, replace=False))])
                    for _ in range(50)]
        for call in calls:
            for session in sessions[:5]:
                call(item_ids=session, k=k)
        times = [[], []]
        for r in range(args.rounds):
            for j in ((0, 1) if r % 2 == 0 else (1, 0)):
                started = time.perf_counter()
                calls[j](item_ids=sessions[r % len(sessions)], k=k)
                times[j].append(time.perf_counter() - started)
        cells = [f"{np.percentile(t, 50) * 1e3:6.2f} / {np.percentile(t, 99) * 1e3:6.2f}"
                 for t in times]
        print(f"{length:5d}  {cells[0]:>15}  {cells[1]:>15}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
