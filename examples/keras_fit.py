"""Keras `fit` on a tiny catalogue built here, with the composable model API.

The towers are built from their own arguments, the losses are task layers
(skip-gram pairs, and a retrieval softmax with mixed negative sampling), and
`tfrec.HybridModel` sums them. The trained towers are then exported as a
SavedModel with a brute-force index, loaded back with
`tfrec.load_saved_model` and asked for recommendations.

Run:  python examples/keras_fit.py [--sessions N] [--epochs E]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import tfrec  # first: sets TF_USE_LEGACY_KERAS=1 before TensorFlow is imported

THEMES = ["red kitchen", "blue garden", "green party", "white bathroom"]
NOUNS = ["mug", "bowl", "lamp", "towel", "candle", "basket", "frame", "clock"]


def catalogue():
    """Item ids, texts and themes; index 0 is the unknown-item slot."""
    ids = ["<unknown>"] + [f"{t.split()[0]}-{n}" for t in THEMES for n in NOUNS]
    texts = [""] + [f"{t} {n}" for t in THEMES for n in NOUNS]
    theme = np.array([-1] + [i for i in range(len(THEMES)) for _ in NOUNS])
    return np.array(ids), np.array(texts, dtype=object), theme


def sessions(theme: np.ndarray, count: int, rng: np.random.RandomState) -> np.ndarray:
    """[count, 4] item indices: each session browses four items of one theme."""
    items = np.arange(1, len(theme))
    return np.stack([rng.choice(items[theme[1:] == t], 4, replace=False)
                     for t in rng.randint(0, len(THEMES), count)]).astype(np.int32)


def features(batch: np.ndarray, num_items: int, rng: np.random.RandomState) -> dict:
    """What each task reads: a skip-gram pair per session (with 3 random negatives),
    and the session's first three items as the history of its fourth."""
    next_item = batch[:, 3]
    share = np.bincount(next_item, minlength=num_items) / len(next_item)
    return {"target": batch[:, 0], "context": batch[:, 1],
            "negatives": rng.randint(1, num_items, (len(batch), 3)).astype(np.int32),
            "weight": np.ones(len(batch), np.float32),
            "history": batch[:, :3], "next_item": next_item,
            "candidate_probability": share[next_item].astype(np.float32)}


def build(texts: np.ndarray, seed: int):
    from tfrec.towers import TextTokenizer, build_token_vocabulary

    num_items, dim = len(texts), 16
    tokenizer = TextTokenizer(build_token_vocabulary(texts[1:], max_tokens=100, min_count=1),
                              sequence_length=4)
    _, text_dim = tfrec.ItemEncoder.part_widths(dim, use_ids=True, use_text=True,
                                                fusion="concat", text_share=0.5)
    text_encoder = tfrec.TextEncoder(tokenizer.vocabulary_size, text_dim, token_dim=8,
                                     filters=8, widths=(1, 2), mean_tokens=True,
                                     ngram_buckets=None)
    # Every item has events here, so every index 1..num_items-1 gets an id embedding.
    encoder = tfrec.ItemEncoder(num_items, num_items, embedding_dim=dim, use_ids=True,
                                use_text=True, fusion="concat", text_share=0.5,
                                id_dropout=0.1, text_gate=True, normalize=True,
                                tokenizer=tokenizer, text_encoder=text_encoder, seed=seed)
    encoder.set_item_texts(texts)
    query_tower = tfrec.QueryTower(encoder, history_length=3, pooling="mean",
                                   recency_decay=1.0, history_dropout=0.0, query_layers=(),
                                   seed=seed)
    tasks = [tfrec.SkipGramTask(temperature=0.1, weight=0.5),
             tfrec.RetrievalTask(tfrec.MixedSampler(num_sampled=16, seed=seed),
                                 temperature=0.1, weight=1.0)]
    return tfrec.HybridModel(encoder, query_tower, tasks, text_alignment=0.0)


def export(model, ids: np.ndarray, texts: np.ndarray, counts: np.ndarray, folder: Path) -> Path:
    """The towers, the tokeniser and a brute-force index as one SavedModel."""
    import tensorflow as tf

    from tfrec.exporter.saved_model import RecommenderModule
    from tfrec.index.ann import build_index

    index = build_index(model.item_embeddings()[1:], ids[1:],
                        tfrec.IndexConfig(kind="brute_force", max_k=10))
    module = RecommenderModule(model, ids, index, max_k=10, item_texts=texts.astype(str),
                               item_counts=counts)
    module.recommend(tf.constant([[ids[1], ""]]), tf.constant(1))  # trace before saving
    tf.saved_model.save(module, str(folder), signatures=module.signatures(),
                        options=tf.saved_model.SaveOptions(namespace_whitelist=["TFText"]))
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)

    import tensorflow as tf

    rng = np.random.RandomState(42)
    ids, texts, theme = catalogue()
    train = sessions(theme, args.sessions, rng)
    counts = np.bincount(train.ravel(), minlength=len(ids))
    dataset = tf.data.Dataset.from_tensor_slices(features(train, len(ids), rng)).batch(64)

    model = build(texts, seed=42)
    print("streams:", ", ".join(model.streams))
    model.compile(optimizer=tfrec.build_optimizer("adam", 0.01))
    history = model.fit(dataset, epochs=args.epochs, verbose=0).history["loss"]
    print(f"loss: {history[0]:.3f} -> {history[-1]:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        loaded = tfrec.load_saved_model(export(model, ids, texts, counts, Path(tmp) / "1"))
        session = [str(ids[1]), str(ids[2])]  # two red kitchen items
        out = loaded.signatures["serving_default"](
            item_ids=tf.constant([session]), k=tf.constant(5))
        top = [i.decode() for i in out["item_ids"].numpy()[0]]
        print("session:", " ".join(session))
        print("recommended:", " ".join(top))
        same = np.mean([theme[list(ids).index(i)] == 0 for i in top])
        print(f"same theme: {same:.0%}")


if __name__ == "__main__":
    main()
