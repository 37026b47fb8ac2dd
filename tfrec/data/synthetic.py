"""Generated event logs with planted structure, for benchmarks and tests.

Items fall into clusters; each session stays inside one cluster and draws its
items by a Zipf law, so popularity is as skewed as in real click logs and a
good embedding puts cluster-mates together. Everything is vectorised, so ten
million events take seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def generate_events(num_events: int, num_items: int, num_users: int | None = None,
                    num_clusters: int | None = None, mean_session_length: float = 8.0,
                    zipf: float = 1.05, conversion_rate: float = 0.1, seed: int = 0,
                    start_time: int = 1_700_000_000, arrival_days: float = 30.0
                    ) -> pd.DataFrame:
    """Returns a canonical events frame (user, item, time, event, session, line).

    Args:
      num_events: rows to generate (approximately: sessions are whole).
      num_items: catalogue size; item ids are "i<index>".
      num_users: distinct users (default num_events // 20).
      num_clusters: item clusters (default num_items // 50, at least 1).
      mean_session_length: mean events per session (geometric, at least 2).
      zipf: exponent of item popularity inside a cluster.
      conversion_rate: share of sessions whose last event is a "purchase"
        (the others are "click" events only).
      seed: seeds everything.
      start_time: epoch seconds of the first event.
      arrival_days: users start their first session at a uniform random time
        in this many days after start_time.

    Sessions are separated by gaps of 1-48 hours, events inside a session by
    10 s - 10 min, so a 30-minute gap splits them back exactly.
    """
    rng = np.random.default_rng(seed)
    num_users = num_users or max(num_events // 20, 1)
    num_clusters = num_clusters or max(num_items // 50, 1)
    num_sessions = max(int(num_events / mean_session_length), 1)
    lengths = np.maximum(rng.geometric(1.0 / (mean_session_length - 1), num_sessions) + 1, 2)
    lengths = lengths[: max(np.searchsorted(np.cumsum(lengths), num_events, "right"), 1)]
    num_sessions, n = len(lengths), int(lengths.sum())
    session_of = np.repeat(np.arange(num_sessions), lengths)

    cluster, item_index = _cluster_items(rng, session_of, num_sessions, num_items,
                                         num_clusters, zipf, seed)

    first = np.zeros(n, dtype=bool)
    first[np.concatenate([[0], np.cumsum(lengths)[:-1]])] = True
    steps = np.where(first, 0, rng.integers(10, 600, n))
    within = np.cumsum(steps) - np.repeat(np.cumsum(steps)[first], lengths)
    duration = within[np.cumsum(lengths) - 1]

    # Each user's sessions follow one another: start = previous start +
    # previous duration + a gap of 1-48 hours (a per-user running sum).
    user = rng.integers(0, num_users, num_sessions)
    order = np.argsort(user, kind="stable")
    step = duration[order] + rng.integers(3600, 48 * 3600, num_sessions)
    running = np.cumsum(step) - step
    user_sorted = user[order]
    group_start = np.ones(num_sessions, dtype=bool)
    group_start[1:] = user_sorted[1:] != user_sorted[:-1]
    base = np.maximum.accumulate(np.where(group_start, running, 0))
    session_start = np.empty(num_sessions, dtype=np.int64)
    # Users arrive at random times over the first `arrival_days`, so any time
    # slice holds sessions of many users.
    arrival = rng.integers(0, max(int(arrival_days * 86400), 1), num_users)
    session_start[order] = start_time + arrival[user_sorted] + running - base
    time = session_start[session_of] + within

    converted = rng.random(num_sessions) < conversion_rate
    last = np.cumsum(lengths) - 1
    event = np.full(n, "click", dtype=object)
    event[last[converted]] = "purchase"

    ids = np.char.add("i", np.arange(num_items).astype(str)).astype(object)
    users = np.char.add("u", np.arange(num_users).astype(str)).astype(object)
    frame = pd.DataFrame({
        "user": users[user[session_of]],
        "item": ids[item_index],
        "time": time.astype(np.int64),
        "event": event,
        "session": pd.Series(pd.NA, index=range(n), dtype="string").to_numpy(dtype=object),
        "line": np.arange(2, n + 2),
    })
    return frame


def _cluster_items(rng, session_of: np.ndarray, num_sessions: int, num_items: int,
                   num_clusters: int, zipf: float, seed: int) -> tuple:
    """(cluster [num_sessions], item index [len(session_of)]): each session's cluster
    and its events' items, drawn inside that cluster."""
    cluster = rng.integers(0, num_clusters, num_sessions)
    # Items are dealt to clusters round-robin after a shuffle; within a cluster,
    # rank r is drawn with probability ∝ (r + 1) ** -zipf.
    item_perm = np.random.default_rng([seed, 1]).permutation(num_items)
    cluster_size = np.bincount(np.arange(num_items) % num_clusters, minlength=num_clusters)
    max_size = int(cluster_size.max())
    rank_cdf = np.cumsum(np.arange(1, max_size + 1, dtype=np.float64) ** -zipf)
    u = rng.random(len(session_of)) * rank_cdf[cluster_size[cluster[session_of]] - 1]
    rank = np.searchsorted(rank_cdf, u, side="right")
    return cluster, item_perm[rank * num_clusters + cluster[session_of]]


def generate_baskets(num_events: int, num_items: int, num_clusters: int | None = None,
                     mean_session_length: float = 8.0, zipf: float = 1.05,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sessions of `generate_events`' planted structure as flat arrays, no events table.

    Each session stays inside one cluster and draws its items by a Zipf law
    there, as in `generate_events` (same clusters: `item_clusters`). For
    item-item benchmarks at millions of events, where the events table's
    strings would cost more than the item-item model.

    Returns:
      (items [num_events] int32 vocabulary indices: item "i<k>" is k + 1, 0
      being the OOV bucket; row_splits [num_sessions + 1] int64).
    """
    rng = np.random.default_rng(seed)
    num_clusters = num_clusters or max(num_items // 50, 1)
    num_sessions = max(int(num_events / mean_session_length), 1)
    lengths = np.maximum(rng.geometric(1.0 / (mean_session_length - 1), num_sessions) + 1, 2)
    lengths = lengths[: max(np.searchsorted(np.cumsum(lengths), num_events, "right"), 1)]
    session_of = np.repeat(np.arange(len(lengths)), lengths)
    _, item_index = _cluster_items(rng, session_of, len(lengths), num_items, num_clusters,
                                   zipf, seed)
    row_splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return (item_index + 1).astype(np.int32), row_splits


def item_clusters(num_items: int, num_clusters: int | None = None, seed: int = 0) -> np.ndarray:
    """[num_items] cluster of item "i<index>" in `generate_events` with the same args."""
    num_clusters = num_clusters or max(num_items // 50, 1)
    item_perm = np.random.default_rng([seed, 1]).permutation(num_items)
    clusters = np.empty(num_items, dtype=np.int64)
    clusters[item_perm] = np.arange(num_items) % num_clusters
    return clusters


def generate_items(num_items: int, num_clusters: int | None = None, num_cold: int = 0,
                   words_per_cluster: int = 8, cluster_words: int = 2, noise_words: int = 2,
                   noise_vocabulary: int = 50, seed: int = 0) -> pd.DataFrame:
    """An items table (item, text, market) for `generate_events` with the same args.

    Each cluster has its own words; an item's text is `cluster_words` words of
    its cluster plus `noise_words` words shared by all clusters, so text says
    something about the cluster but not everything. The market is the
    cluster. `num_cold` extra items "cold<k>" (round-robin over clusters) get
    text the same way but never appear in the events: cold-start items.
    """
    rng = np.random.default_rng([seed, 2])
    num_clusters = num_clusters or max(num_items // 50, 1)
    clusters = np.concatenate([item_clusters(num_items, num_clusters, seed),
                               np.arange(num_cold) % num_clusters])
    ids = ([f"i{k}" for k in range(num_items)] + [f"cold{k}" for k in range(num_cold)])
    own = rng.integers(0, words_per_cluster, (len(ids), cluster_words))
    noise = rng.integers(0, noise_vocabulary, (len(ids), noise_words))
    texts = [" ".join([f"c{c}w{w}" for w in own[i]] + [f"noise{w}" for w in noise[i]])
             for i, c in enumerate(clusters)]
    return pd.DataFrame({"item": ids, "text": texts, "market": [f"m{c}" for c in clusters],
                         "cluster": clusters})


def write_event_files(folder, num_events: int, num_items: int, num_users: int | None = None,
                      num_clusters: int | None = None, num_cold: int = 0,
                      seed: int = 0) -> tuple:
    """Generated events and items written as CSV files in the "events" layout.

    Columns: events.csv user_id, item_id, timestamp, event; items.csv
    item_id, text (`num_cold` items have text but no events).

    Returns:
      (events path, items path) inside `folder`.
    """
    from pathlib import Path

    folder = Path(folder)
    events = generate_events(num_events, num_items, num_users=num_users,
                             num_clusters=num_clusters, seed=seed)
    events_path, items_path = folder / "events.csv", folder / "items.csv"
    events.rename(columns={"user": "user_id", "item": "item_id", "time": "timestamp"})[
        ["user_id", "item_id", "timestamp", "event"]].to_csv(events_path, index=False)
    items = generate_items(num_items, num_clusters, num_cold=num_cold, seed=seed)
    items = items.rename(columns={"item": "item_id"})[["item_id", "text"]]
    items.to_csv(items_path, index=False)
    return events_path, items_path


def event_files_settings(events_path, items_path) -> list[str]:
    """The run settings (`--set` overrides) that read `write_event_files`' files."""
    return ["data.layout=events", f"data.events={events_path}", f"data.items={items_path}",
            "data.events_schema.event_col=event"]
