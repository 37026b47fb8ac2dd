"""Training on generated sessions with planted item clusters."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfrec.config import ModelConfig, PairConfig, SessionConfig, TextConfig
from tfrec.data.pipeline import PairPipeline
from tfrec.data.sequences import NextItemPipeline
from tfrec.data.sessions import sessionize
from tfrec.data.split import make_cases, split_events
from tfrec.data.synthetic import generate_events, generate_items
from tfrec.data.vocab import build_vocabulary
from tfrec.metrics import evaluate_model
from tfrec.models import build_model

NUM_ITEMS, NUM_CLUSTERS, NUM_COLD = 240, 8, 16
# The settings these mechanism tests were calibrated with (seeds 1-8), pinned
# so that a change of the library defaults does not move their bounds.
PINNED = dict(fusion="sum", temperature=0.1, history_length=20, text_gate=False)
TEXT = TextConfig(token_dim=16, filters=16, mean_tokens=False)


@pytest.fixture(scope="module")
def world():
    events = generate_events(24_000, NUM_ITEMS, num_users=2000, num_clusters=NUM_CLUSTERS,
                             seed=5)
    items = generate_items(NUM_ITEMS, NUM_CLUSTERS, num_cold=NUM_COLD, seed=5)
    train, test, _ = split_events(events, split_fraction=0.15)
    vocab = build_vocabulary(train, items)
    cluster = items.set_index("item")["cluster"].reindex(vocab.ids).to_numpy()
    return train, test, vocab, cluster


def fit(world, objective="skipgram", id_dropout=0.5, text_alignment=1.0, epochs=4, seed=1):
    train, _, vocab, _ = world
    sessions = sessionize(train, vocab, SessionConfig())
    model = build_model(ModelConfig(embedding_dim=32, objective=objective, id_dropout=id_dropout,
                                    text_alignment=text_alignment,
                                    text=TEXT, **PINNED), vocab, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    pairs = PairPipeline(sessions, vocab, PairConfig(batch_size=1024, seed=seed), workers=1)
    if objective == "retrieval":
        dataset = NextItemPipeline(sessions, vocab, 20, batch_size=256, seed=seed).as_dataset()
    else:
        dataset = pairs.as_dataset()
    history = model.fit(dataset, epochs=epochs, verbose=0)
    return model, history.history


def neighbour_purity(model, world, query_items, pool_items, k=10):
    """Share of each query item's k nearest pool items that are in its cluster."""
    _, _, vocab, cluster = world
    emb = model.item_embeddings()
    scores = emb[query_items] @ emb[pool_items].T
    scores[query_items[:, None] == pool_items[None, :]] = -np.inf
    top = pool_items[np.argsort(-scores, axis=1)[:, :k]]
    return float((cluster[top] == cluster[query_items][:, None]).mean())


@pytest.fixture(scope="module")
def trained(world):
    return fit(world)


def test_a_batch_of_the_wrong_stream_or_dtype_is_named(world):
    train, _, vocab, _ = world
    sessions = sessionize(train, vocab, SessionConfig())
    model = build_model(ModelConfig(embedding_dim=16, objective="retrieval", text=TEXT,
                                    **PINNED), vocab, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    pairs = PairPipeline(sessions, vocab, PairConfig(batch_size=256, seed=1), workers=1)
    with pytest.raises(ValueError, match=r"the batch lacks 'history', 'next_item', read by "
                                         r"the RetrievalTask from the 'next_items' stream.*"
                                         r"reads the streams next_items"):
        model.fit(pairs.as_dataset().take(2), verbose=0)
    batch = next(iter(NextItemPipeline(sessions, vocab, 20, batch_size=64, seed=1).as_dataset()))
    floats = tf.data.Dataset.from_tensors({**batch, "next_item": tf.cast(batch["next_item"],
                                                                         tf.float32)})
    with pytest.raises(ValueError, match="feature 'next_item' holds item indices "
                                         r"\(integers\), got float32"):
        model.fit(floats, verbose=0)


def test_a_batch_is_read_as_the_tasks_document_it(world):
    """Optional features may be left out, other integer and float widths are cast, and a
    feature of the wrong rank, ragged, or outside the catalogue is named."""
    train, _, vocab, _ = world
    sessions = sessionize(train, vocab, SessionConfig())
    model = build_model(ModelConfig(embedding_dim=16, objective="both", text=TEXT, **PINNED),
                        vocab, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    pairs = next(iter(PairPipeline(sessions, vocab, PairConfig(batch_size=64, seed=1),
                                   workers=1).as_dataset().batch(1).map(
        lambda b: {k: v[0] for k, v in b.items()})))
    nexts = next(iter(NextItemPipeline(sessions, vocab, 20, batch_size=64, seed=1).as_dataset()))

    def fit_on(batch):
        return model.fit(tf.data.Dataset.from_tensors(batch), verbose=0).history["loss"][-1]

    good = {**pairs, **nexts}
    without = {k: v for k, v in good.items() if k not in ("weight", "candidate_probability")}
    assert np.isfinite(fit_on(without))
    small = np.asarray(good["context"]) < 120  # fits int8; the catalogue (257) does not
    narrow = {k: (tf.boolean_mask(v, small) if k in ("target", "context", "negatives", "weight")
                  else v) for k, v in good.items()}
    narrow = {**narrow, "target": tf.cast(tf.minimum(narrow["target"], 120), tf.int8),
              "context": tf.cast(narrow["context"], tf.uint8)}
    assert np.isfinite(fit_on(narrow))
    widths = {**good, "target": tf.cast(good["target"], tf.int64),
              "history": tf.cast(good["history"], tf.int64),
              "weight": tf.cast(tf.round(good["weight"]), tf.int32),
              "candidate_probability": tf.cast(good["candidate_probability"], tf.float64)}
    assert np.isfinite(fit_on(widths))
    empty = {k: v[:0] for k, v in good.items()}
    assert fit_on(empty) == 0.0
    for bad, message in (
            ({"negatives": good["negatives"][:, 0]},
             r"feature 'negatives', read by the SkipGramTask from the 'pairs' stream, must be "
             r"\[B, K\] \(rank 2\), got shape \[64\]"),
            ({"history": good["history"][0]}, r"'history', .* must be \[B, N\] \(rank 2\)"),
            ({"weight": tf.strings.as_string(good["weight"])},
             "feature 'weight', read by the SkipGramTask .* holds numbers, got string")):
        with pytest.raises(ValueError, match=message):
            model._checked_features({**good, **bad})  # as fit traces a step
    # A step traced for any shape checks the rank per batch.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"feature negatives, read by "
                                                             r"the SkipGramTask .* must be "
                                                             r"\[B, K\] \(rank 2\)"):
        fit_on({**good, "negatives": good["negatives"][:, 0]})
    with pytest.raises(ValueError, match="feature 'history', read by the RetrievalTask from "
                                         "the 'next_items' stream, is a RaggedTensor: it must "
                                         r"be a dense \[B, N\] tensor"):
        model._checked_features({**good, "history": tf.RaggedTensor.from_tensor(
            good["history"])})
    size = vocab.size
    for name, value in (("next_item", tf.tensor_scatter_nd_update(
            good["next_item"], [[0]], [size])), ("target", tf.tensor_scatter_nd_update(
                tf.cast(good["target"], tf.int64), [[0]], [2 ** 32 + 1])),
                        ("context", -good["context"] - 1)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"feature {name}, read by the "
                                                                 ".* holds (a negative|an) "
                                                                 "item index"):
            fit_on({**good, name: value})


def test_histories_outside_the_catalogue_or_not_integers_are_refused(world):
    _, _, vocab, _ = world
    model = build_model(ModelConfig(embedding_dim=16, text=TEXT, **PINNED), vocab, seed=1)
    one = np.array([[0, 1, 2, vocab.size]])
    # The same message whichever path the batch takes (many rows go through the item
    # vectors computed once, few through the tower).
    for history in (one, np.repeat(one, 50, axis=0)):
        with pytest.raises(ValueError, match=f"item index {vocab.size} is outside the "
                                             f"catalogue's 0..{vocab.size - 1}"):
            model.query_embeddings(history)
    with pytest.raises(ValueError, match="histories hold item indices .integers., got float"):
        model.query_embeddings([[1.9, 2.2]])
    with pytest.raises(ValueError, match=r"histories must be \[n, N\]"):
        model.query_embeddings([1, 2])
    assert model.query_embeddings(np.zeros((0, 20), np.int64)).shape == (0, 16)


def test_a_mixed_precision_policy_and_bad_settings_are_refused(world):
    from tfrec.tasks import SkipGramTask

    _, _, vocab, _ = world
    config = ModelConfig(embedding_dim=16, text=TEXT, **PINNED)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with pytest.raises(ValueError, match="computes in float16 .the dtype policy "
                                             "'mixed_float16'.: tfrec's towers and tasks "
                                             "compute in float32"):
            build_model(config, vocab, seed=1)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = build_model(config, vocab, seed=1)
    for weight in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="a task's weight must be a finite number >= 0"):
            SkipGramTask(temperature=0.1, weight=weight)
    with pytest.raises(ValueError, match="text_alignment must be a finite number >= 0"):
        type(model)(model.item_encoder, model.query_tower, model.tasks, text_alignment=-1)
    encoder = model.item_encoder
    base = encoder.get_config()
    for change, message in (({"id_dropout": 1.5}, r"id_dropout must be in \[0, 1\)"),
                            ({"text_share": 2.0}, r"text_share must be in \(0, 1\)"),
                            ({"num_id_items": vocab.size + 1}, "num_id_items must be 1 to "
                                                               "num_items")):
        with pytest.raises(ValueError, match=message):
            type(encoder)(**{**base, **change})
    small = {**base["text_encoder"], "config": {**base["text_encoder"]["config"],
                                                "vocabulary_size": 3}}
    with pytest.raises(ValueError, match="the text encoder's vocabulary_size is 3, the "
                                         "tokenizer gives ids up to"):
        type(encoder)(**{**base, "text_encoder": small})


def test_a_tokenizer_refuses_a_single_text():
    from tfrec.towers import TextTokenizer

    tokenizer = TextTokenizer(["red", "mug"], sequence_length=4)
    assert tokenizer(tf.constant(["red mug"])).numpy().tolist() == [[2, 3, 0, 0]]
    with pytest.raises(ValueError, match=r"TextTokenizer reads a batch of texts, \[batch\] "
                                         r"strings, got one text"):
        tokenizer(tf.constant("red mug"))


def test_texts_without_a_word_are_named_not_a_traceback(world):
    from tfrec.errors import InputError

    train, _, _, _ = world
    items = generate_items(NUM_ITEMS, NUM_CLUSTERS, num_cold=NUM_COLD, seed=5)
    for texts in ("", "🍵 !!! ☕"):
        vocab = build_vocabulary(train, items.assign(text=texts))
        with pytest.raises(InputError, match=r"no item text gives a word the text tower can "
                                             r"learn \(256 items, (0|256) with text"):
            build_model(ModelConfig(embedding_dim=16, text=TEXT, **PINNED), vocab, seed=1)
    # A word in too few texts for model.text.min_token_count: named the same way.
    import dataclasses

    vocab = build_vocabulary(train, items.assign(text=[f"w{i}" for i in range(len(items))]))
    with pytest.raises(InputError, match=r"model.text.min_token_count \(2\) items"):
        build_model(ModelConfig(embedding_dim=16, **PINNED, text=dataclasses.replace(
            TEXT, min_token_count=2)), vocab, seed=1)


def test_item_embeddings_refuse_indices_outside_the_catalogue(trained):
    model, _ = trained
    size = model.item_encoder.num_items
    assert model.item_embeddings([0, size - 1]).shape == (2, 32)
    for index, message in (([1, size], f"item index {size} is outside the catalogue's "
                                       f"0..{size - 1} \\(1 of 2 outside\\)"),
                           ([-1], "item index -1 is outside"),
                           ([1.5], "item indices must be integers, got float64")):
        with pytest.raises(ValueError, match=message):
            model.item_embeddings(index)


def test_loss_falls(trained):
    _, history = trained
    assert history["loss"][-1] < 0.8 * history["loss"][0]


def test_held_out_items_rank_in_top_10_far_above_chance(trained, world):
    model, _ = trained
    _, test, vocab, _ = world
    cases = make_cases(test, vocab, seed=0)
    assert len(cases) > 100
    result = evaluate_model(model, cases, history_length=20, k=10)
    chance = 10 / (vocab.size - 1)
    assert result["warm"]["hr@10"] > 4 * chance, result


def test_warm_neighbours_are_cluster_mates(trained, world):
    model, _ = trained
    _, _, vocab, cluster = world
    warm = np.arange(1, vocab.num_warm + 1)
    purity = neighbour_purity(model, world, warm, warm)
    chance = 1 / NUM_CLUSTERS
    assert purity > 5 * chance


def test_text_only_cold_item_is_retrieved_among_its_cluster(trained, world):
    model, _ = trained
    _, _, vocab, _ = world
    cold = np.flatnonzero(vocab.counts == 0)[1:]  # index 0 is the OOV bucket
    assert len(cold) >= NUM_COLD
    warm = np.arange(1, vocab.num_warm + 1)
    purity = neighbour_purity(model, world, cold, warm)
    assert purity > 4 / NUM_CLUSTERS


def test_retrieval_objective_trains_the_query_tower(world):
    _, test, vocab, _ = world
    cases = make_cases(test, vocab, seed=0)
    untrained = build_model(ModelConfig(embedding_dim=32, objective="retrieval",
                                        text=TEXT, **PINNED), vocab, seed=1)
    before = evaluate_model(untrained, cases, history_length=20)["all"]["hr@10"]
    model, _ = fit(world, objective="retrieval", epochs=3)
    after = evaluate_model(model, cases, history_length=20)["all"]["hr@10"]
    assert after > 5 * 10 / (vocab.size - 1) and after > 3 * before, (before, after)


def test_factorized_top_k_metrics_in_evaluate(world):
    train, _, vocab, _ = world
    model, _ = fit(world, objective="retrieval", epochs=1)
    sessions = sessionize(train, vocab, SessionConfig())
    dataset = NextItemPipeline(sessions, vocab, 20, batch_size=256, seed=3).as_dataset()
    model.compile(optimizer=keras.optimizers.Adam(0.01), run_eagerly=True,
                  steps_per_execution=2)
    model.enable_topk_metrics(ks=(1, 10))
    # compile's own settings stay.
    assert model.run_eagerly and int(model._steps_per_execution.numpy()) == 2
    result = model.evaluate(dataset.take(6), steps=6, return_dict=True, verbose=0)
    top1 = result["factorized_top_k/top_1_categorical_accuracy"]
    top10 = result["factorized_top_k/top_10_categorical_accuracy"]
    assert top1 <= top10 and top10 > 5 * 10 / (vocab.size - 1), result


def cold_start_figures(model, world, k=10):
    """What id-dropout is for, measured: does the text path alone stand in for an item?

    Returns:
      cold_hr: HR@k of each text-only cold item for held-out queries from its
        own cluster, ranked against the whole catalogue minus the query's items.
      cold_auc: share of other clusters' items the cold item outscores on
        those queries (is it retrieved among its cluster at all).
      mates_above: share of the cold item's warm cluster-mates that outscore
        it (about 0.5 when a text-only item ranks like a typical mate).
      alignment: mean cosine between each warm item's text-only embedding and
        its full (id + text) embedding.
      warm_hr / text_only_hr: HR@k of held-out warm targets scored with their
        full embedding, and with their text-only embedding in its place (a
        simulated cold start of every warm target).
    """
    from tfrec.data.sequences import histories_from_lists

    _, test, vocab, cluster = world
    emb = model.item_embeddings()
    text = model.item_encoder.encode_text(tf.constant(vocab.text.astype(str))).numpy()
    warm = np.arange(1, vocab.num_warm + 1)
    cold = np.flatnonzero(vocab.counts == 0)[1:]
    cases = make_cases(test, vocab, seed=0)
    queries = model.query_embeddings(histories_from_lists(cases.queries, 20))
    query_cluster = np.array([np.bincount(cluster[q].astype(int)).argmax()
                              for q in cases.queries])
    scores = queries @ emb.T
    scores[:, 0] = -np.inf
    for row, own in enumerate(cases.queries):
        scores[row, own] = -np.inf
    hits, auc, mates_above = [], [], []
    for item in cold:
        rows = scores[query_cluster == cluster[item]]
        own = rows[:, [item]]
        hits.append(((rows > own).sum(1) < k).mean())
        others = np.flatnonzero(cluster != cluster[item])[1:]
        auc.append((rows[:, others] < own).mean())
        mates_above.append((rows[:, warm[cluster[warm] == cluster[item]]] > own).mean())
    targets = np.asarray(cases.targets)
    rows = np.flatnonzero(np.isin(targets, warm))
    full = scores[rows, targets[rows]]
    text_score = np.sum(queries[rows] * text[targets[rows]], axis=1)
    others_above = scores[rows] > text_score[:, None]
    others_above[np.arange(len(rows)), targets[rows]] = False
    return {"cold_hr": float(np.mean(hits)), "cold_auc": float(np.mean(auc)),
            "mates_above": float(np.mean(mates_above)),
            "alignment": float(np.mean(np.sum(text[warm] * emb[warm], axis=1))),
            "warm_hr": float(((scores[rows] > full[:, None]).sum(1) < k).mean()),
            "text_only_hr": float((others_above.sum(1) < k).mean())}


def test_id_dropout_puts_the_text_path_in_the_behaviour_space(world):
    # Measured on these generated clusters, retrieval objective, seeds 1-8
    # (off vs id_dropout 0.5): text-only/full cosine 0.80-0.82 vs 0.82-0.87 (on
    # above off by 0.019-0.065); warm cluster-mates outscoring a cold item
    # 0.08-0.23 vs 0.43-0.51; a warm target's HR@10 with its text-only
    # embedding minus with its full one +0.17 to +0.22 vs -0.05 to +0.02;
    # cold-item HR@10 0.74-0.95 vs 0.31-0.42. Another machine gave 0.21 and
    # 0.42 mates above and a -0.063 gap with dropout: the bounds leave room.
    # Without id-dropout the text path is never trained to stand alone and a
    # text-only item outranks most of its cluster-mates: cold items win top-10
    # places by a bias, not by fitting behaviour. With it, a text-only item
    # ranks like a typical mate and scores about as its full embedding would.
    train, _, vocab, _ = world
    sessions = sessionize(train, vocab, SessionConfig())

    def fit_retrieval(id_dropout):
        model = build_model(ModelConfig(embedding_dim=32, objective="retrieval",
                                        id_dropout=id_dropout, retrieval_context="session",
                                        text=TEXT, **PINNED),
                            vocab, seed=1)
        model.compile(optimizer=keras.optimizers.Adam(0.01))
        dataset = NextItemPipeline(sessions, vocab, 20, batch_size=256, seed=1,
                                   context="session").as_dataset()
        model.fit(dataset, epochs=4, verbose=0)
        return cold_start_figures(model, world)

    off, on = fit_retrieval(0.0), fit_retrieval(0.5)
    figures = f"off {off}, on {on}"  # a str: pytest would cut a dict's repr short
    assert on["alignment"] > off["alignment"], figures
    # Off: text-only items are over-ranked (they beat their own full embedding).
    assert off["mates_above"] < 0.35, figures
    assert off["text_only_hr"] > off["warm_hr"] + 0.12, figures
    # On: a text-only item ranks like its cluster-mates, still inside its cluster.
    assert 0.3 < on["mates_above"] < 0.7, figures
    assert on["mates_above"] > off["mates_above"] + 0.15, figures
    assert abs(on["text_only_hr"] - on["warm_hr"]) < 0.1, figures
    assert on["cold_auc"] > 0.95 and off["cold_auc"] > 0.95, figures
    # So the cold items' top-10 hit rate falls: the bias was what put them there.
    assert on["cold_hr"] < off["cold_hr"] - 0.2, figures


@pytest.mark.parametrize("options", [
    {"negatives": "catalogue"},
    {"negatives": "sampled", "num_sampled": 64},
    {"negatives": "mixed", "num_sampled": 64},
    {"query_items": "separate", "query_layers": (32,), "history_dropout": 0.2},
    {"normalize": False, "temperature": 1.0},
])
def test_retrieval_variants_learn_the_clusters(world, options):
    """Each measured model choice trains: held-out HR@10 far above chance."""
    train, test, vocab, _ = world
    sessions = sessionize(train, vocab, SessionConfig())
    cases = make_cases(test, vocab, seed=0)
    model = build_model(ModelConfig(embedding_dim=32, objective="retrieval", text=TEXT,
                                    **{**PINNED, **options}), vocab, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    before = evaluate_model(model, cases, history_length=20)["all"]["hr@10"]
    dataset = NextItemPipeline(sessions, vocab, 20, batch_size=256, seed=1).as_dataset()
    history = model.fit(dataset, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    hr = evaluate_model(model, cases, history_length=20)["all"]["hr@10"]
    assert hr > 5 * 10 / (vocab.size - 1) and hr > 3 * before, (options, before, hr)


def test_history_dropout_hides_items_only_in_training_and_never_empties_a_history():
    from tfrec.models import build_item_encoder, build_query_tower

    config = ModelConfig(embedding_dim=4, use_text=False, history_length=3, history_dropout=0.9)
    encoder = build_item_encoder(config, num_items=6, num_id_items=6, seed=0)
    tower = build_query_tower(config, encoder, seed=0)
    history = tf.constant([[1, 2, 3], [0, 0, 4]] * 50)
    np.testing.assert_allclose(tower(history).numpy(), tower(history).numpy())
    trained = tower(history, training=True).numpy()
    full = tower(history).numpy()
    assert np.abs(trained - full).max() > 1e-3          # items were hidden
    assert np.all(np.linalg.norm(trained, axis=1) > 0.99)  # no history left empty
    # A one-item history is kept whole whatever the draw.
    np.testing.assert_allclose(trained[1::2], full[1::2], rtol=1e-5, atol=1e-6)


def test_a_keras_file_reloads_the_trained_model_and_other_formats_are_refused(
        trained, world, tmp_path):
    model, _ = trained
    _, _, vocab, _ = world
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.name == model.name
    # HDF5 weights go into a model not yet built (its towers are built first).
    model.save_weights(tmp_path / "w.h5")
    fresh = build_model(ModelConfig(embedding_dim=32, objective="skipgram", id_dropout=0.5,
                                    text=TEXT, **PINNED), vocab, seed=9)
    fresh.built = False  # as a model put together by hand, before its first call
    fresh.load_weights(tmp_path / "w.h5")
    np.testing.assert_array_equal(fresh.item_embeddings(), model.item_embeddings())
    # Every weight came back: the same item and query embeddings, text path included.
    np.testing.assert_array_equal(loaded.item_embeddings(), model.item_embeddings())
    history = np.arange(1, 21, dtype=np.int32)[None, :] % vocab.size
    np.testing.assert_array_equal(loaded.query_embeddings(history),
                                  model.query_embeddings(history))
    assert [type(t).__name__ for t in loaded.tasks] == [type(t).__name__ for t in model.tasks]
    for target, options in ((tmp_path / "saved", {}), (tmp_path / "model.h5", {}),
                            (tmp_path / "x.keras", {"save_format": "tf"})):
        with pytest.raises(ValueError, match="saves to a .keras file .* tfrec.export"):
            model.save(target, **options)
        assert not target.exists()
