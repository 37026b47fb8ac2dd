"""What `tfrec evaluate` measures beside the ranking table: cold start, index recall,
the converted item's rank, and the map of the item embeddings."""

from __future__ import annotations

import collections
import dataclasses
import string
import time

import numpy as np
import tensorflow as tf

from tfrec.data.sessions import sessionize
from tfrec.evaluate.exported import ExportedModel
from tfrec.evaluate.methods import MAX_K
from tfrec.index.ann import (SCANN_MIN_ITEMS, IndexConfig, build_index, recall_at_ks,
                             scann_parameters)
from tfrec.metrics import hit_rate, ndcg, rank_targets, target_ranks, top_k_items


def text_embeddings(model, texts: np.ndarray, batch_size: int = 65_536) -> np.ndarray | None:
    """Each text embedded by the model's text path alone (None without a text tower).

    Args:
      model: a trained model (its item encoder's text path) or an `ExportedModel`
        (its `embed_items` signature).
    """
    if isinstance(model, ExportedModel):
        return model.text_embeddings(texts)
    encoder = model.item_encoder
    if not encoder.use_text:
        return None
    texts = np.asarray(texts).astype(str)
    return np.concatenate([encoder.encode_text(tf.constant(texts[i:i + batch_size])).numpy()
                           for i in range(0, len(texts), batch_size)])


# How far the text-only HR@k may exceed the full embedding's before the report warns (a
# text-only embedding knows less than a trained one, so it should not rank targets higher).
TEXT_ALONE_MARGIN = 0.02


def cold_start_figures(model, vocab, cases, ranks: np.ndarray, item_emb: np.ndarray,
                       query_emb: np.ndarray, valid: np.ndarray, k: int,
                       stage_top: np.ndarray | None = None) -> dict:
    """How the model treats items it knows only by their text.

    - simulated cold start: HR@k / NDCG@k of the warm targets scored with
      their text-only embedding in place of their full one (every warm
      target as if it were a brand-new item), beside the same targets scored
      normally (`ranks`: the model's ranks of every case);
    - top-k slot shares: the share of the model's top-k slots that go to cold
      items, beside the cold items' share of the catalogue and of the targets
      (far above the targets' share means cold items are ranked by a bias,
      crowding out warm ones); with `stage_top` ([n, k] both stages' top k items of
      each case, 0 where a list is shorter), both stages' share too.
    """
    text = text_embeddings(model, vocab.text)
    out = {"available": text is not None}
    if text is None:
        return {**out, "reason": "the model has no text tower"}
    warm = ~cases.cold
    targets = cases.targets[warm]
    queries = [q for q, w in zip(cases.queries, warm) if w]
    as_new = target_ranks(query_emb[warm], item_emb, targets, queries, valid,
                          target_embeddings=text[targets])
    as_is = ranks[warm]
    cold_item = np.zeros(len(item_emb), dtype=bool)
    cold_item[1:] = vocab.counts[1:] == 0
    slots = top_k_items(query_emb, item_emb, cases.queries, valid, k)
    share = {"top_k_slots": float(cold_item[slots].mean()),
             "targets": float(cases.cold.mean()), "catalogue": float(cold_item[valid].mean())}
    if stage_top is not None:
        filled = stage_top[stage_top > 0]
        share["both_stages_top_k_slots"] = float(cold_item[filled].mean()) if len(
            filled) else 0.0
    figures = {**out, "warm_cases": int(warm.sum()),
               "warm": {f"hr@{k}": hit_rate(as_is, k), f"ndcg@{k}": ndcg(as_is, k)},
               "warm_as_new": {f"hr@{k}": hit_rate(as_new, k), f"ndcg@{k}": ndcg(as_new, k)},
               "cold_share": share}
    alone, full = figures["warm_as_new"][f"hr@{k}"], figures["warm"][f"hr@{k}"]
    if alone > full + TEXT_ALONE_MARGIN:
        figures["warning"] = (
            f"warm targets rank higher by their text alone than by their trained embedding "
            f"(HR@{k} {alone:.4f} against {full:.4f}): a text-only embedding scores high for "
            "any query (item text that says little about behaviour does this), so the "
            "two-tower puts new items above their worth; a ranker reading has_behaviour "
            "corrects its lists, the two-tower alone does not")
    return figures


def index_recall(items: np.ndarray, queries: np.ndarray, ks=(1, 5, 10, 20, 50)) -> dict:
    """ScaNN (the export's settings) against exact search on the case queries; a catalogue
    too small for ScaNN is searched exactly, as the export searches it."""
    embeddings, ids = items[1:], np.arange(1, len(items)).astype(str)
    kind = "scann" if len(embeddings) >= SCANN_MIN_ITEMS else "brute_force"
    config = IndexConfig(kind=kind, max_k=max(ks))
    started = time.perf_counter()
    index = build_index(embeddings, ids, config)
    build = time.perf_counter() - started
    recall = recall_at_ks(index, queries, embeddings, ids, ks)
    return {"index": kind, "parameters": (scann_parameters(len(embeddings), config)
                                          if kind == "scann" else {}),
            "queries": int(len(queries)), "build_seconds": round(build, 3),
            "recall": {str(k): v for k, v in recall.items()}}


def conversion_ranks(test_events, vocab, model, history_length: int, session_config,
                     items: np.ndarray) -> dict:
    """Airbnb's measure: rank of each test session's converted item given its other items."""
    if len(test_events) == 0:
        return {"available": False, "reason": "no test events"}
    known = test_events[vocab.lookup(test_events["item"].to_numpy(dtype=object)) > 0]
    if len(known) == 0:
        return {"available": False, "reason": "no test event is on a catalogue item"}
    config = dataclasses.replace(session_config, max_length=1 << 30)
    sessions = sessionize(known, vocab, config)
    queries, targets = [], []
    for s, (a, b) in enumerate(zip(sessions.row_splits[:-1], sessions.row_splits[1:])):
        target = int(sessions.converted[s])
        if target <= 0:
            continue
        query = list(dict.fromkeys(i for i in sessions.items[a:b].tolist() if i != target))
        if query:
            queries.append(query)
            targets.append(target)
    if not targets:
        return {"available": False,
                "reason": "the test sessions have no conversion event "
                          f"(types {', '.join(session_config.conversion_types)}) after other "
                          "items"}
    ranks, _, _ = rank_targets(model, queries, targets, history_length, items)
    return {"available": True, "sessions": len(targets),
            "mean_rank": float(ranks.mean()), "median_rank": float(np.median(ranks)),
            "share_in_top_k": [hit_rate(ranks, k) for k in range(1, MAX_K + 1)]}


def categories_of(vocab, top: int = 8) -> tuple[np.ndarray, list[str]]:
    """Item -> category index for the map: the last word of the item's text.

    Product titles end in their head noun (".. T-LIGHT HOLDER", ".. LUNCH
    BAG"), which is the text's category; the `top` most common ones get a
    colour, the rest are "other". A word is what spaces separate, less the
    punctuation around it ("(Sci-Fi)" is "Sci-Fi", not "fi"); spellings that
    differ only in case are one category, named by its most common spelling.
    Items without text fall back to their market.
    """
    heads = [_last_word(t) for t in vocab.text]
    markets = np.asarray(vocab.market_names + [""], dtype=object)[vocab.market]
    labels = np.asarray([h if h else str(m) for h, m in zip(heads, markets)], dtype=object)
    labels[0] = ""
    keys = np.asarray([str(v).lower() for v in labels], dtype=object)
    values, counts = np.unique(keys[keys != ""], return_counts=True)
    chosen = [str(v) for v in values[np.argsort(-counts, kind="stable")][:top]]
    index = {key: i for i, key in enumerate(chosen)}
    names = [collections.Counter(labels[keys == key]).most_common(1)[0][0] for key in chosen]
    return np.asarray([index.get(str(k), -1) for k in keys]), names


def _last_word(text) -> str:
    """The text's last space-separated word without the punctuation around it ("")."""
    for word in reversed(str(text).split() if isinstance(text, str) else []):
        word = word.strip(string.punctuation)
        if word:
            return word
    return ""


def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    centred = embeddings - embeddings.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T
