"""Two exported versions' `serving_default` in one process, called in turn: whether they
answer alike, and the wall time (p50, p99) and process CPU time per call of each.

    PYTHONPATH=. python bench/compare_exports.py saved_models/a/1 saved_models/b/1 --rounds 2000

Export the same run with the two codes to compare (`tfrec export --index brute_force`
makes the answers comparable: a ScaNN index is trained from a random start, so two ScaNN
exports of one run may order near candidates differently).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import tfrec  # noqa: F401  (first: it sets up tf.keras before TensorFlow is imported)
import scann  # noqa: F401,I100  (its ops, before a ScaNN SavedModel loads)
import tensorflow as tf  # noqa: I100

from tfrec.exporter import load_saved_model  # noqa: I100
from tfrec.exporter.layout import VersionFolder
from tfrec.utils import read_id_lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs=2, help="two version folders")
    parser.add_argument("--rounds", type=int, default=2000, help="calls of each")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--intra-op-threads", type=int, default=1,
                        help="TensorFlow's intra-op threads here (default 1, as tfrec serve; "
                             "0: TensorFlow chooses)")
    parser.add_argument("--callers", type=int, default=1,
                        help="threads calling at once (above 1: the versions take turns by "
                             "blocks of --block calls a thread, and requests/s is printed)")
    parser.add_argument("--block", type=int, default=100,
                        help="with --callers: calls a thread makes per turn")
    args = parser.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    paths = [Path(p) for p in args.versions]
    calls = {str(p): load_saved_model(p).signatures["serving_default"] for p in paths}
    ids = read_id_lines(VersionFolder(paths[0]).item_ids)
    rng = np.random.default_rng(0)
    sessions = [[ids[i] for i in rng.integers(0, len(ids), 3)] for _ in range(2000)]
    k = tf.constant(args.k)
    a, b = (f(item_ids=tf.constant(sessions[:256]), k=k) for f in calls.values())
    same = float((a["item_ids"].numpy() == b["item_ids"].numpy()).all(axis=1).mean())
    gap = float(np.abs(a["scores"].numpy() - b["scores"].numpy()).max())
    print(f"256 sessions: the same top {args.k} in {same:.1%} of them; largest score "
          f"difference {gap:.2e}")
    names = list(calls)
    for f in calls.values():  # warm
        for s in sessions[:50]:
            f(item_ids=tf.constant([s]), k=k)
    if args.callers > 1:
        return concurrent(calls, sessions, k, args.rounds, args.callers, args.block)
    wall = {n: [] for n in names}
    cpu = {n: 0.0 for n in names}
    for r in range(args.rounds):
        s = sessions[r % len(sessions)]
        for n in (names if r % 2 == 0 else names[::-1]):
            c, t = time.process_time(), time.perf_counter()
            calls[n](item_ids=tf.constant([s]), k=k)
            wall[n].append(time.perf_counter() - t)
            cpu[n] += time.process_time() - c
    print(f"{'version':<40} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/call':>11}")
    for n in names:
        p50, p99 = np.percentile(np.asarray(wall[n]) * 1000, [50, 99])
        print(f"{n[-40:]:<40} {p50:7.2f} {p99:7.2f} {cpu[n] / args.rounds * 1000:11.2f}")
    return 0


def concurrent(calls: dict, sessions: list, k, rounds: int, callers: int, block: int) -> int:
    """`callers` threads call one version at a time, `block` calls each, the versions
    taking turns until each has had `rounds` calls a thread."""
    import threading

    names = list(calls)
    wall = {n: [] for n in names}
    busy = {n: 0.0 for n in names}
    cpu = {n: 0.0 for n in names}
    turns = max(1, rounds // block)
    for turn in range(turns):
        for n in (names if turn % 2 == 0 else names[::-1]):
            times = [[] for _ in range(callers)]

            def work(j, n=n, times=times):
                for r in range(block):
                    s = sessions[(turn * block * callers + j * block + r) % len(sessions)]
                    t = time.perf_counter()
                    calls[n](item_ids=tf.constant([s]), k=k)
                    times[j].append(time.perf_counter() - t)

            threads = [threading.Thread(target=work, args=(j,)) for j in range(callers)]
            c, t = time.process_time(), time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            busy[n] += time.perf_counter() - t
            cpu[n] += time.process_time() - c
            wall[n].extend(x for part in times for x in part)
    print(f"{callers} callers, {turns} turns of {block} calls a caller each")
    print(f"{'version':<40} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/call':>11}")
    for n in names:
        p50, p99 = np.percentile(np.asarray(wall[n]) * 1000, [50, 99])
        print(f"{n[-40:]:<40} {len(wall[n]) / busy[n]:7.0f} {p50:7.2f} {p99:7.2f} "
              f"{cpu[n] / len(wall[n]) * 1000:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
