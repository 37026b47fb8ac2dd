"""Cost growth: time and memory against the number of events and of items.

    python bench/scale.py                                  # events 1M/3M/10M, items 100k/1M/5M
    python bench/scale.py --events 1e6 3e6 --items 1e5 1e6 # a subset

Each size runs in its own process, so each peak RSS is that size's alone.

Events (generated sessions, items = events / 10): reading into sessions
(vocabulary + sessionise), one epoch of skip-gram pairs with negatives, and
behaviour-tower training steps (Keras fit, batch 65,536 pairs) timed over a
fixed number of steps and scaled to the epoch: a line per size, with the
ratios to the smallest size beside them, so the linear and super-linear parts
show.

Items: `bench/export.py` per catalogue size (ScaNN build, SavedModel save and
size, recall@10, q/s batched and single, peak RSS); the brute-force baseline
is a numpy exact top-k in the same process from 5M items on (a second,
brute-force SavedModel would double the memory for nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))


def events_child(num_events: int, steps: int, optimizer: str = "adam") -> dict:
    import numpy as np

    import tfrec  # noqa: F401
    from tfrec.config import ModelConfig, PairConfig, SessionConfig
    from tfrec.data.pipeline import PairPipeline
    from tfrec.data.sessions import sessionize
    from tfrec.data.synthetic import generate_events
    from tfrec.data.vocab import build_vocabulary

    events = generate_events(num_events, max(num_events // 10, 100), seed=3)
    t = time.perf_counter()
    vocab = build_vocabulary(events)
    sessions = sessionize(events, vocab, SessionConfig())
    read_s = time.perf_counter() - t
    del events
    pairs = PairPipeline(sessions, vocab, PairConfig(batch_size=65_536, global_context=False))
    t, total = time.perf_counter(), 0
    for block in pairs.epoch_blocks(0):
        total += block["target"].size
    pairs_s = time.perf_counter() - t

    from tfrec.models import build_model
    from tfrec.optimizers import build_optimizer

    model = build_model(ModelConfig(embedding_dim=64, use_text=False), vocab, seed=1)
    # Adam keeps dense moment tables: every step decays all of them, so its
    # step time grows with the catalogue; LazyAdam, Adagrad and SGD touch only
    # the rows of the batch.
    model.compile(optimizer=build_optimizer(optimizer, 0.01))
    model.fit(pairs.as_dataset().take(2), verbose=0)  # trace
    t = time.perf_counter()
    model.fit(pairs.as_dataset().take(steps), verbose=0)
    step_s = (time.perf_counter() - t) / steps
    epoch_train_s = step_s * np.ceil(total / 65_536)
    return {"events": num_events, "optimizer": optimizer, "items": int(vocab.size - 1),
            "pairs": int(total),
            "read_s": read_s, "pairs_epoch_s": pairs_s, "train_epoch_s": float(epoch_train_s),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_events(sizes, steps: int, optimizer: str) -> list[dict]:
    rows = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--child-events", str(int(n)),
                              "--steps", str(steps), "--optimizer", optimizer],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"events size {n:g} failed")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  done: {int(n):,} events", file=sys.stderr, flush=True)
    return rows


def run_items(sizes) -> list[dict]:
    rows = []
    for n in sizes:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, os.path.join(HERE, "export.py"), "--items", str(int(n)),
                   "--json", f.name] + (["--brute-force", "numpy"] if n >= 5e6 else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"catalogue size {n:g} failed")
            result = json.load(open(f.name))
        scann, brute = result["rows"]
        rows.append({"items": int(n), **{k: scann[k] for k in (
            "build_s", "save_s", "size_mb", "recall", "qps_batched", "qps_single",
            "peak_rss_mb")}, "brute": brute["index"], "brute_qps_batched": brute["qps_batched"],
            "brute_qps_single": brute["qps_single"]})
        print(f"  done: {int(n):,} items", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=float, nargs="*", default=[1e6, 3e6, 1e7])
    parser.add_argument("--items", type=float, nargs="*", default=[1e5, 1e6, 5e6])
    parser.add_argument("--steps", type=int, default=30, help="training steps timed per size")
    parser.add_argument("--optimizer", choices=["adam", "lazy_adam", "adagrad", "sgd"],
                        default="adam",
                        help="optimizer of the timed training steps (default adam)")
    parser.add_argument("--child-events", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_events:
        print(json.dumps(events_child(args.child_events, args.steps, args.optimizer)))
        return
    if args.events:
        rows = run_events(args.events, args.steps, args.optimizer)
        base = rows[0]
        print(f"\n{'events':>11}{'items':>10}{'pairs':>13}{'read s':>9}{'pairs s':>9}"
              f"{'train s*':>10}{'peak MB':>9}   growth vs first row: events, read, pairs, "
              "train, memory")
        for r in rows:
            g = [r["events"] / base["events"], r["read_s"] / base["read_s"],
                 r["pairs_epoch_s"] / base["pairs_epoch_s"],
                 r["train_epoch_s"] / base["train_epoch_s"],
                 r["peak_rss_mb"] / base["peak_rss_mb"]]
            print(f"{r['events']:>11,}{r['items']:>10,}{r['pairs']:>13,}{r['read_s']:>9.1f}"
                  f"{r['pairs_epoch_s']:>9.1f}{r['train_epoch_s']:>10.0f}{r['peak_rss_mb']:>9,.0f}"
                  "   " + " ".join(f"{x:5.1f}x" for x in g))
        print(f"  * one epoch of behaviour-tower training ({args.optimizer}), from {args.steps} "
              "timed steps")
    if args.items:
        rows = run_items(args.items)
        base = rows[0]
        print(f"\n{'items':>10}{'build s':>9}{'save s':>8}{'size MB':>9}{'recall@10':>10}"
              f"{'q/s batch':>11}{'q/s single':>11}{'vs brute':>10}{'peak MB':>9}"
              "   growth vs first row: items, build, size, memory")
        for r in rows:
            g = [r["items"] / base["items"], r["build_s"] / base["build_s"],
                 r["size_mb"] / base["size_mb"], r["peak_rss_mb"] / base["peak_rss_mb"]]
            print(f"{r['items']:>10,}{r['build_s']:>9.1f}{r['save_s']:>8.1f}{r['size_mb']:>9,.0f}"
                  f"{r['recall']:>10.4f}{r['qps_batched']:>11,.0f}{r['qps_single']:>11,.0f}"
                  f"{r['qps_batched'] / r['brute_qps_batched']:>9.1f}x{r['peak_rss_mb']:>9,.0f}"
                  "   " + " ".join(f"{x:5.1f}x" for x in g))
        print("  vs brute = batched q/s over the brute-force baseline's (a brute-force "
              "SavedModel; numpy exact top-k from 5M items)")


if __name__ == "__main__":
    main()
