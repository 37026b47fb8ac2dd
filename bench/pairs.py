"""Pair-pipeline throughput and memory, side by side with a plain-Python baseline.

    python bench/pairs.py                      # bundled data + generated logs up to 10M events
    python bench/pairs.py --sizes 1e6 --no-bundled  # a quick look: one generated log

For each log it prints, in one table: tfrec's pairs/s (with negatives) with 1
and 2 threads, the same through `tf.data` (what Keras sees), a baseline
(a per-session Python loop with per-batch `numpy.random.choice` negatives,
the usual hand-written item2vec feeder) on the same sessions, and memory:
the peak RSS of the whole run and the extra memory one epoch needs on top of
the loaded sessions. Each generated size runs in its own process so its peak
memory is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tfrec  # noqa: E402,F401
from tfrec.config import PairConfig  # noqa: E402
from tfrec.data.pipeline import EpochStats, PairPipeline  # noqa: E402
from tfrec.data.sessions import sessionize  # noqa: E402
from tfrec.data.vocab import build_vocabulary  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssWatch:
    """Samples RSS every few ms in a thread; .extra is the peak above the start."""

    def __enter__(self):
        self.start, self.peak, self._stop = rss_mb(), rss_mb(), False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()
        self.extra = self.peak - self.start


def baseline_pairs_per_second(sessions, vocab, config: PairConfig, max_seconds: float) -> float:
    """The usual hand-written feeder: Python loops over sessions and positions."""
    counts = vocab.counts.astype(np.float64) ** config.negative_power
    probs = counts / counts.sum()
    rng = np.random.default_rng(0)
    pairs, batch_t, batch_c = 0, [], []
    started = time.perf_counter()
    for items in sessions.to_lists():
        for i, centre in enumerate(items):
            for j in range(max(0, i - config.window), min(len(items), i + config.window + 1)):
                if j != i and items[j] != centre:
                    batch_t.append(centre)
                    batch_c.append(items[j])
            if len(batch_t) >= config.batch_size:
                rng.choice(len(probs), size=(len(batch_t), config.num_negatives), p=probs)
                pairs += len(batch_t)
                batch_t, batch_c = [], []
        if time.perf_counter() - started > max_seconds:
            break
    return pairs / (time.perf_counter() - started)


def measure(events, label: str, config: PairConfig, baseline_seconds: float,
            tf_data: bool) -> dict:
    started = time.perf_counter()
    vocab = build_vocabulary(events)
    sessions = sessionize(events, vocab)
    prep_seconds = time.perf_counter() - started
    del events
    row = {"log": label, "events": sessions.num_events, "items": vocab.size - 1,
           "prepare_s": round(prep_seconds, 1)}
    for workers in (1, 2):
        pipeline = PairPipeline(sessions, vocab, config, workers=workers)
        stats = EpochStats()
        with RssWatch() as watch:
            t = time.perf_counter()
            for _ in pipeline.epoch(0, stats):
                pass
            seconds = time.perf_counter() - t
        row[f"pairs_s_{workers}t"] = stats.pairs / seconds
        row["epoch_extra_mb"] = max(row.get("epoch_extra_mb", 0), watch.extra)
        row["pairs"] = stats.pairs
    if tf_data:
        pipeline = PairPipeline(sessions, vocab, config, workers=2)
        import tensorflow as tf

        @tf.autograph.experimental.do_not_convert
        def count(total, batch):
            return total + tf.size(batch["target"], tf.int64)

        dataset = pipeline.as_dataset()
        # Consumed inside the graph, as Keras fit does, not by a Python loop;
        # the first pass warms tf.data up and is not counted.
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            n = int(dataset.reduce(tf.constant(0, tf.int64), count))
            best = max(best, n / (time.perf_counter() - t))
        row["pairs_s_tfdata"] = best
    row["baseline_pairs_s"] = baseline_pairs_per_second(sessions, vocab, config,
                                                        baseline_seconds)
    row["sessions_mb"] = sum(a.nbytes for a in (sessions.items, sessions.weights,
                                                sessions.is_conversion, sessions.row_splits,
                                                sessions.converted, sessions.user)) / 2**20
    row["peak_rss_mb"] = peak_mb()
    return row


def child(size: int, items: int, config: PairConfig, baseline_seconds: float,
          tf_data: bool) -> dict:
    from tfrec.data.synthetic import generate_events

    if size == 0:
        from tfrec.datasets.online_retail import read_online_retail
        events, _, _ = read_online_retail()
        label = "bundled Online Retail"
    else:
        events = generate_events(size, items, seed=0)
        label = f"generated {size / 1e6:g}M events"
    return measure(events, label, config, baseline_seconds, tf_data)


def fmt(rows: list[dict]) -> str:
    head = (f"{'log':<26}{'events':>12}{'items':>10}{'pairs/epoch':>13}{'tfrec 1 thr':>13}"
            f"{'tfrec 2 thr':>13}{'tf.data':>11}{'baseline':>11}{'speed-up':>10}"
            f"{'sessions MB':>13}{'epoch +MB':>11}{'peak RSS MB':>13}")
    lines = [head, "-" * len(head)]
    for r in rows:
        tfd = f"{r['pairs_s_tfdata'] / 1e6:.2f}M" if "pairs_s_tfdata" in r else "-"
        lines.append(
            f"{r['log']:<26}{r['events']:>12,}{r['items']:>10,}{r['pairs']:>13,}"
            f"{r['pairs_s_1t'] / 1e6:>12.2f}M{r['pairs_s_2t'] / 1e6:>12.2f}M{tfd:>11}"
            f"{r['baseline_pairs_s'] / 1e6:>10.2f}M"
            f"{r['pairs_s_2t'] / r['baseline_pairs_s']:>9.0f}x"
            f"{r['sessions_mb']:>13.0f}{r['epoch_extra_mb']:>11.0f}{r['peak_rss_mb']:>13.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6,2.5e6,5e6,1e7",
                        help="generated log sizes in events (comma-separated)")
    parser.add_argument("--items-per-event", type=float, default=0.1,
                        help="catalogue size as a share of events (0.1: 10M events, 1M items)")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--baseline-seconds", type=float, default=10.0,
                        help="how long the baseline runs on each log")
    parser.add_argument("--no-bundled", action="store_true")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    config = PairConfig(window=args.window, num_negatives=args.negatives)
    if args.child is not None:
        size = int(args.child)
        row = child(size, max(int(size * args.items_per_event), 100), config,
                    args.baseline_seconds, tf_data=size == 0)
        print(json.dumps(row))
        return
    sizes = ([] if args.no_bundled else [0]) + [int(float(s)) for s in args.sizes.split(",")
                                                if s.strip()]
    print(f"pair pipeline: window {args.window}, {args.negatives} negatives, subsample "
          f"{config.subsample:g}, batch {config.batch_size}, {os.cpu_count()} cores", flush=True)
    rows = []
    for size in sizes:
        result = subprocess.run(
            [sys.executable, __file__, "--child", str(size), "--items-per-event",
             str(args.items_per_event), "--window", str(args.window), "--negatives",
             str(args.negatives), "--baseline-seconds", str(args.baseline_seconds)],
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.exit(f"size {size} failed:\n{result.stderr}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"  done: {rows[-1]['log']}", file=sys.stderr, flush=True)
    print(fmt(rows))
    if len(rows) > 1:
        gen = [r for r in rows if r["log"].startswith("generated")]
        if len(gen) > 1:
            per_event = [r["sessions_mb"] * 2**20 / r["events"] for r in gen]
            extra = [r["epoch_extra_mb"] for r in gen]
            print(f"memory: sessions take {min(per_event):.1f}-{max(per_event):.1f} bytes/event "
                  f"(linear); one epoch adds {min(extra):.0f}-{max(extra):.0f} MB whatever the "
                  "log size (chunked)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
