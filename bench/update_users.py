"""Fresh user embeddings without retraining (`tfrec export --update-users`): users/s and memory.

    python bench/update_users.py                      # 1M users, 5 events each
    python bench/update_users.py --users 100000       # quicker

Trains a small run on generated clustered sessions (both stages, as `tfrec
train` does by default) and exports it; then writes generated events for
`--users` users (each `--events` events of one cluster's items, one item in
twenty unknown to the model) as Parquet, and runs the update twice, each in a
fresh process so the memory figures are the job's own:

  add:      every user of the file is new to the version (1M users added);
  refresh:  the same users again with later events (1M cached users updated).

Each run is `tfrec.exporter.users.update_users` in its steps: reading the file
(`read_user_events`), the per-user reduction (`latest_items`), then the new
version (the model loaded, the users merged with the cache and embedded by the
query tower, the index and the ranking stage rebuilt over the catalogue, the
version written whole: `update_users`). users/s is the users of the file over
the whole job, loading included; peak memory is the process's VmHWM.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tfrec  # noqa: E402,F401
from all_users import memory_mb  # noqa: E402  (bench/all_users.py)


def write_events(path: Path, users: int, events: int, items: list[str], clusters: int,
                 start: int, seed: int) -> int:
    """`users` x `events` generated events as Parquet (the run's events layout)."""
    rng = np.random.default_rng(seed)
    n = users * events
    user = np.repeat(np.arange(users), events)
    cluster = (user * 7919) % clusters
    per = max(1, len(items) // clusters)
    pick = cluster * per + rng.integers(0, per, n)
    ids = np.asarray(items, dtype=object)[np.minimum(pick, len(items) - 1)]
    ids[rng.random(n) < 0.05] = "unknown-item"
    frame = pd.DataFrame({
        "user_id": np.char.add("b", user.astype(str)).astype(object),
        "item_id": ids,
        "timestamp": start + np.tile(np.arange(events), users) * 60 + user % 3600,
        "event": "click"})
    frame.to_parquet(path, index=False)
    return n


def child(model_dir: str, events: str) -> None:
    """One update in this process; prints its figures as JSON."""
    import logging

    from tfrec.exporter.update import load_version_model, previous_version
    from tfrec.exporter.layout import VersionFolder
    from tfrec.exporter.users import latest_items, read_user_events, update_users

    logging.disable(logging.WARNING)
    started = time.perf_counter()
    source = previous_version(Path(model_dir), None)
    config, vocab, model = load_version_model(VersionFolder(source).read_metadata(), source)
    length = int(model.query_tower.history_length)
    t = time.perf_counter()
    frame = read_user_events(events, config.data.events_schema)
    read_seconds = time.perf_counter() - t
    t = time.perf_counter()
    latest, stats = latest_items(frame, vocab.lookup, length,
                                 config.data.sessions.dedupe_consecutive)
    reduce_seconds = time.perf_counter() - t
    users = int(frame["user"].nunique())
    del frame, model
    t = time.perf_counter()
    result = update_users(model_dir, events, latest=latest, latest_stats=stats)
    version_seconds = time.perf_counter() - t
    total = time.perf_counter() - started
    change = result.metadata["users_update"]
    print(json.dumps({"users": users, "events": stats["events"], "read_s": read_seconds,
                      "reduce_s": reduce_seconds, "version_s": version_seconds,
                      "total_s": total, "users_per_s": users / total,
                      "added": change["added"], "updated": change["updated"],
                      "cached": result.metadata["users"], "history_length": length,
                      "version_mb": sum(p.stat().st_size for p in result.path.rglob("*")
                                        if p.is_file()) / 2**20,
                      **memory_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5, help="events per user")
    parser.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "EVENTS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from session_helpers import train_generated_run
    from tfrec.exporter import export
    from tfrec.index import IndexConfig
    from tfrec.ranking.two_stage import train

    folder = Path(tempfile.mkdtemp(prefix="tfrec-bench-users-"))
    t = time.perf_counter()
    run = train_generated_run(folder, train, ["ranking.epochs=1"])
    export(run, folder / "model", IndexConfig(kind="scann", max_k=20))
    setup = time.perf_counter() - t
    items = pd.read_csv(folder / "items.csv")["item_id"].astype(str).tolist()
    print(f"run: {run} (small generated run, both stages), exported in {setup:.0f}s")
    rows = []
    for step, start, seed in (("add", 1_800_000_000, 1), ("refresh", 1_810_000_000, 2)):
        path = folder / f"{step}.parquet"
        t = time.perf_counter()
        n = write_events(path, args.users, args.events, items, 6, start, seed)
        print(f"{step}: {n:,} events of {args.users:,} users written in "
              f"{time.perf_counter() - t:.0f}s ({path.stat().st_size / 2**20:.0f} MB Parquet)")
        out = subprocess.run([sys.executable, __file__, "--child", str(folder / "model"),
                              str(path)], check=True, capture_output=True, text=True)
        rows.append((step, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"{'update':<9}{'users':>11}{'events':>12}{'read s':>8}{'reduce s':>10}"
          f"{'version s':>11}{'total s':>9}{'users/s':>10}{'peak MB':>9}")
    for step, r in rows:
        print(f"{step:<9}{r['users']:>11,}{r['events']:>12,}{r['read_s']:>8.1f}"
              f"{r['reduce_s']:>10.1f}{r['version_s']:>11.1f}{r['total_s']:>9.1f}"
              f"{r['users_per_s']:>10,.0f}{r['peak_mb']:>9,.0f}")
    for step, r in rows:
        print(f"{step}: {r['added']:,} added, {r['updated']:,} updated, {r['cached']:,} cached "
              f"users (history_length {r['history_length']}); version {r['version_mb']:.0f} MB")


if __name__ == "__main__":
    main()
