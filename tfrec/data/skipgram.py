"""Skip-gram (target, context) pairs from sessions, with Airbnb global context.

Everything is vectorised over all events of a chunk: the only Python loop
runs over window offsets (1..W), never over events or pairs.
"""

from __future__ import annotations

import numpy as np

from tfrec.data.sessions import Sessions

KIND_WINDOW = 0
KIND_GLOBAL = 1


def keep_probabilities(counts: np.ndarray, threshold: float) -> np.ndarray:
    """word2vec subsampling: P(keep) = (sqrt(f / t) + 1) * t / f, capped at 1.

    f is the item's share of all events and t the threshold; t = 0 keeps all.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if threshold <= 0:
        return np.ones(len(counts), dtype=np.float32)
    freq = counts / max(counts.sum(), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = (np.sqrt(freq / threshold) + 1.0) * threshold / freq
    keep[~np.isfinite(keep)] = 1.0
    return np.minimum(keep, 1.0).astype(np.float32)


def skipgram_pairs(sessions: Sessions, window: int | None, global_context: bool = True,
                   keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """All (target, context) pairs of `sessions`, in a fixed order.

    Args:
      sessions: the sessions (or a slice of them).
      window: W: pair each event with the W events before and after it in its
        session. None: set mode, every other event of the session is context.
      global_context: also pair every event of a converted session with the
        session's converted item (once per event, in that direction), unless
        the event is that item itself.
      keep: optional [num_events] bool, events that survive subsampling; the
        window then runs over the surviving events (as in word2vec).

    Returns:
      dict of equal-length arrays: target, context (int32 item indices),
      weight (float32, the larger of the two events' weights) and kind
      (int8: KIND_WINDOW or KIND_GLOBAL). Pairs of an item with itself are
      dropped.
    """
    items, weights = sessions.items, sessions.weights
    session_of = sessions.session_ids()
    if keep is not None:
        items, weights, session_of = items[keep], weights[keep], session_of[keep]
    n = len(items)
    if window is None:
        lengths = np.bincount(session_of, minlength=sessions.num_sessions) if n else [0]
        window = max(int(np.max(lengths)) - 1, 0)
    left, right = [], []
    for d in range(1, min(window, max(n - 1, 0)) + 1):
        a = np.flatnonzero(session_of[:-d] == session_of[d:])
        left.append(a)
        right.append(a + d)
    if left:
        left_i = np.concatenate(left)
        right_i = np.concatenate(right)
        # Both directions: each centre sees its W neighbours on either side.
        t_idx = np.concatenate([left_i, right_i])
        c_idx = np.concatenate([right_i, left_i])
    else:
        t_idx = c_idx = np.zeros(0, dtype=np.int64)
    target = items[t_idx]
    context = items[c_idx]
    weight = np.maximum(weights[t_idx], weights[c_idx])
    kind = np.full(len(target), KIND_WINDOW, dtype=np.int8)

    if global_context and n:
        converted = sessions.converted[session_of]
        g = np.flatnonzero((converted >= 0) & (converted != items))
        if len(g):
            conv_weight = sessions.converted_weight[session_of[g]]
            target = np.concatenate([target, items[g]])
            context = np.concatenate([context, converted[g]])
            weight = np.concatenate([weight, np.maximum(weights[g], conv_weight)])
            kind = np.concatenate([kind, np.full(len(g), KIND_GLOBAL, dtype=np.int8)])

    distinct = target != context
    return {"target": target[distinct].astype(np.int32),
            "context": context[distinct].astype(np.int32),
            "weight": weight[distinct].astype(np.float32),
            "kind": kind[distinct]}
