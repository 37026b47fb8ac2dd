import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfrec.config import ModelConfig, TextConfig
from tfrec.data.synthetic import generate_events, generate_items
from tfrec.data.vocab import build_vocabulary
from tfrec.models import HybridModel, build_item_encoder, build_model
from tfrec.tasks import CatalogueSampler
from tfrec.towers import ItemEncoder, QueryTower, TextEncoder, TextTokenizer
from tfrec.towers.tokenizer import CharNgramHasher, build_token_vocabulary

TEXTS = ["WHITE HANGING HEART T-LIGHT HOLDER", "red mug", "Crème brûlée dish, SET/3", "",
         "unknownword mug"]


def vocabulary(texts, max_tokens=100, min_count=1):
    return build_token_vocabulary(texts, max_tokens=max_tokens, min_count=min_count)


def text_encoder(vocabulary_size, output_dim, token_dim=4, filters=4, widths=(1, 2, 3),
                 mean_tokens=True, ngram_buckets=None):
    return TextEncoder(vocabulary_size, output_dim, token_dim=token_dim, filters=filters,
                       widths=widths, mean_tokens=mean_tokens, ngram_buckets=ngram_buckets)


def item_encoder(num_items, num_id_items, vocab=(), embedding_dim=8, use_ids=True,
                 use_text=True, fusion="sum", text_share=0.5, id_dropout=0.0, text_gate=False,
                 normalize=True, sequence_length=6, widths=(1, 2), hasher=None, seed=0):
    """An item encoder built from its own arguments (as `build_item_encoder` does)."""
    tokenizer = text = None
    if use_text:
        tokenizer = TextTokenizer(list(vocab), sequence_length)
        _, text_dim = ItemEncoder.part_widths(embedding_dim, use_ids, use_text, fusion,
                                              text_share)
        text = text_encoder(tokenizer.vocabulary_size, text_dim, widths=widths,
                            ngram_buckets=None if hasher is None else hasher.num_buckets)
    return ItemEncoder(num_items, num_id_items, embedding_dim=embedding_dim, use_ids=use_ids,
                       use_text=use_text, fusion=fusion, text_share=text_share,
                       id_dropout=id_dropout, text_gate=text_gate, normalize=normalize,
                       tokenizer=tokenizer, text_encoder=text, hasher=hasher, seed=seed)


def query_tower(encoder, history_length=4, pooling="mean", recency_decay=0.5,
                history_dropout=0.0, query_layers=(), seed=0):
    return QueryTower(encoder, history_length=history_length, pooling=pooling,
                      recency_decay=recency_decay, history_dropout=history_dropout,
                      query_layers=query_layers, seed=seed)


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(vocabulary(TEXTS[:3]), sequence_length=6)


def test_token_vocabulary_is_learned_with_the_tokeniser_ops():
    vocab = vocabulary(TEXTS[:3] + ["red heart"])
    assert vocab[:2] == ["heart", "red"]  # in two texts each; then alphabetical
    assert {"t", "light", "crème", "brûlée", "set", "3"} <= set(vocab)
    assert vocabulary(TEXTS, min_count=2) == ["mug"]
    assert len(vocabulary(TEXTS, max_tokens=3)) == 3


def test_a_combining_mark_stays_in_its_word():
    # Thai vowels and tones, and an accent written as a combining mark, are no word breaks.
    assert vocabulary(["ถ้วยสีแดง", "cafe\u0301 au-lait"]) == ["au", "café", "lait", "ถ้วยสีแดง"]


def test_html_markup_is_no_word_and_chinese_and_japanese_split_by_character():
    # A product feed's HTML: tags and entities spent the token budget as words.
    assert vocabulary(['<div class="t"><b>Red Mug</b> &amp; &#39;saucer&#39;<br/></div>']) == [
        "mug", "red", "saucer"]
    # A comparison is not a tag.
    assert vocabulary(["size < 5 and > 3"]) == ["3", "5", "and", "size"]
    # Without spaces, a Japanese title was one token, shared with no other text.
    vocab = vocabulary(["黒い陶器のマグカップ", "白い陶器"])
    assert sorted(vocab[:3]) == sorted(["い", "陶", "器"])  # in both texts: first
    assert set(vocab) == set("黒い陶器のマグカップ白")


def test_a_run_saved_before_the_markup_and_cjk_rules_reads_its_texts_as_it_learned_them(
        tmp_path):
    import json

    from tfrec.config import RunConfig
    from tfrec.run_folder import RunFolder
    from tfrec.towers import TextTokenizer, build_token_vocabulary

    text = "<b>傋佁</b> 仩位 mug"
    old = build_token_vocabulary([text], 100, 1, rules=1)
    assert set(old) == {"b", "傋佁", "仩位", "mug"}  # as earlier releases learned them
    assert set(build_token_vocabulary([text], 100, 1)) == {"傋", "佁", "仩", "位", "mug"}
    ids = TextTokenizer(old, 6, rules=1)(tf.constant(["仩位 傋佁 cup"])).numpy()[0]
    assert ids.tolist() == [old.index("仩位") + 2, old.index("傋佁") + 2, 1, 0, 0, 0]
    # The new rules on that vocabulary: every Chinese word unknown (what an added item
    # of an old run got: any two such texts embedded alike).
    assert TextTokenizer(old, 6)(tf.constant(["仩位 傋佁"])).numpy()[0].tolist()[:4] == [
        1, 1, 1, 1]
    with pytest.raises(ValueError, match="rules must be one of"):
        TextTokenizer(old, 6, rules=3)
    # A run's config saved before the setting: its vocabulary tells its rules (a word of
    # several Chinese characters only the first rules make); a new run's says 2.
    saved = RunConfig().to_dict()
    del saved["model"]["text"]["tokenizer_rules"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    folder = RunFolder(tmp_path)
    folder.text_vocab_file.write_text("".join(f"{t}\n" for t in old))
    assert folder.read_config().model.text.tokenizer_rules == 1
    folder.text_vocab_file.write_text("mug\n傋\n佁\n")
    assert folder.read_config().model.text.tokenizer_rules == 2
    assert RunConfig().model.text.tokenizer_rules == 2


def test_tokeniser_ids(tokenizer):
    ids = tokenizer(tf.constant(TEXTS)).numpy()
    assert ids.shape == (5, 6) and ids.dtype == np.int32
    vocab = tokenizer.vocabulary
    assert ids[0].tolist() == [vocab.index(t) + 2 for t in
                               ["white", "hanging", "heart", "t", "light", "holder"]]
    assert ids[1].tolist() == [vocab.index("red") + 2, vocab.index("mug") + 2, 0, 0, 0, 0]
    assert ids[3].tolist() == [0] * 6          # empty text: all padding
    assert ids[4][0] == 1                      # unknown token -> 1


def test_tokeniser_same_ids_direct_map_unbatched_and_batched(tokenizer):
    direct = tokenizer(tf.constant(TEXTS)).numpy()
    ds = tf.data.Dataset.from_tensor_slices(TEXTS)
    unbatched = np.stack([x.numpy() for x in ds.map(lambda t: tokenizer(t[None])[0])])
    batched = np.concatenate([x.numpy() for x in ds.batch(2).map(tokenizer)])
    np.testing.assert_array_equal(direct, unbatched)
    np.testing.assert_array_equal(direct, batched)


def roundtrip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    return clone


def test_get_config_round_trips(tokenizer):
    clone = roundtrip(tokenizer)
    np.testing.assert_array_equal(clone(tf.constant(TEXTS)), tokenizer(tf.constant(TEXTS)))

    text = text_encoder(vocabulary_size=20, output_dim=8, token_dim=4, filters=3, widths=(1, 2))
    assert set(text.get_config()) - set(keras.layers.Layer().get_config()) == {
        "vocabulary_size", "output_dim", "token_dim", "filters", "widths", "mean_tokens",
        "ngram_buckets", "seed"}
    ids = tf.constant([[2, 3, 0], [4, 0, 0]])
    out = text(ids)
    clone = roundtrip(text)
    clone(ids)
    clone.set_weights(text.get_weights())
    np.testing.assert_allclose(clone(ids), out, rtol=1e-6)

    encoder = item_encoder(5, 3, tokenizer.vocabulary, id_dropout=0.3, text_gate=True)
    encoder.set_item_texts(["", "red mug", "heart", "white mug", "set"])
    out = encoder(tf.constant([1, 2, 4]))
    clone = roundtrip(encoder)
    assert isinstance(clone.text_encoder, TextEncoder) and clone.text_encoder is not text
    assert clone.tokenizer.vocabulary == tokenizer.vocabulary and clone.text_gate
    clone(tf.constant([0]))
    clone.set_weights(encoder.get_weights())
    np.testing.assert_allclose(clone(tf.constant([1, 2, 4])), out, rtol=1e-6)

    for pooling in ("mean", "recency", "attention"):
        tower = query_tower(encoder, pooling=pooling, query_layers=(6,))
        history = tf.constant([[0, 0, 1, 2], [0, 0, 0, 0]])
        pooled = tower(history)
        clone = roundtrip(tower)
        assert (clone.pooling, clone.recency_decay, clone.query_layers) == (pooling, 0.5, (6,))
        clone(history)
        clone.set_weights(tower.get_weights())
        np.testing.assert_allclose(clone(history), pooled, rtol=1e-5, atol=1e-6)


def test_the_builder_passes_every_setting_to_the_layers():
    config = ModelConfig(embedding_dim=12, fusion="concat", text_share=0.25, id_dropout=0.2,
                         normalize=False, text_gate=False, history_length=7, pooling="recency",
                         recency_decay=0.7, history_dropout=0.1, query_layers=(5,),
                         text=TextConfig(sequence_length=5, token_dim=3, filters=2,
                                         widths=(2,), mean_tokens=False, char_ngrams=(3,),
                                         ngram_buckets=101, max_ngrams=9))
    encoder = build_item_encoder(config, 6, 4, ["red", "mug"], seed=3)
    assert (encoder.embedding_dim, encoder.fusion, encoder.text_share, encoder.id_dropout,
            encoder.normalize, encoder.text_gate, encoder.seed) == (
        12, "concat", 0.25, 0.2, False, False, 3)
    assert (encoder.id_dim, encoder.text_dim) == (9, 3)
    assert (encoder.tokenizer.sequence_length, encoder.hasher.max_ngrams,
            encoder.hasher.num_buckets, encoder.hasher.widths) == (5, 9, 101, (3,))
    text = encoder.text_encoder
    assert (text.output_dim, text.token_dim, text.filters, text.widths, text.mean_tokens,
            text.ngram_buckets) == (3, 3, 2, (2,), False, 101)


def test_model_get_config_round_trip():
    events = generate_events(2000, 40, num_clusters=4, seed=1)
    items = generate_items(40, num_clusters=4, num_cold=4, seed=1)
    vocab = build_vocabulary(events, items)
    model = build_model(ModelConfig(embedding_dim=8, objective="both", pooling="attention",
                                    negatives="sampled", num_sampled=7,
                                    text=TextConfig(token_dim=4, filters=4)), vocab)
    config = model.get_config()
    # The shared item encoder is written once, by the model.
    assert config["query_tower"]["config"]["item_encoder"] is None
    clone = HybridModel.from_config(config)
    assert clone.get_config() == config
    assert clone.query_tower.item_encoder is clone.item_encoder  # still one shared encoder
    assert [type(t).__name__ for t in clone.tasks] == ["SkipGramTask", "RetrievalTask"]
    assert clone.tasks[1].sampler.num_sampled == 7 and clone.streams == ("pairs", "next_items")
    # Keras' own serialisation finds the registered class.
    assert keras.utils.get_registered_object("tfrec>HybridModel") is HybridModel


def test_item_encoder_fusion_and_cold_items():
    encoder = item_encoder(4, 2, ["red", "mug"], id_dropout=0.5, sequence_length=4, widths=(1,),
                           seed=3)
    encoder.set_item_texts(["", "red mug", "red", "mug"])
    out = encoder(tf.constant([[1, 2], [3, 9]])).numpy()
    assert out.shape == (2, 2, 8)
    np.testing.assert_allclose(np.linalg.norm(out[0, 0]), 1.0, rtol=1e-5)  # unit length
    # Item 2 has no id (cold): its embedding is its text path alone.
    text_only = encoder.encode_text(tf.constant(["red"])).numpy()[0]
    np.testing.assert_allclose(out[0, 1], text_only, rtol=1e-5, atol=1e-6)
    # An index past the catalogue is unknown: no id, no text -> zero vector.
    np.testing.assert_allclose(out[1, 1], 0.0, atol=1e-6)
    # Id-dropout acts only in training: in about half the calls the warm item
    # loses its id, at every place it occurs in that call.
    batch = tf.constant([1] * 20)
    dropped = 0
    for _ in range(100):
        trained = encoder(batch, training=True).numpy()
        changed = np.abs(trained - out[0, 0]).sum(-1) > 1e-4
        assert changed.all() or not changed.any()
        if changed.any():
            dropped += 1
            np.testing.assert_allclose(trained[0], encoder.encode_text(
                tf.constant(["red mug"])).numpy()[0], rtol=1e-5, atol=1e-6)
    assert 25 < dropped < 75
    np.testing.assert_allclose(encoder(batch).numpy(), np.tile(out[0, 0], (20, 1)), rtol=1e-5)
    # Without a text path nothing could stand in for a hidden id: no dropout.
    ids_only = item_encoder(4, 2, use_text=False, id_dropout=0.5, seed=3)
    np.testing.assert_allclose(ids_only(batch, training=True).numpy(), ids_only(batch).numpy(),
                               rtol=1e-6)


def test_concat_fusion_gives_each_path_its_half():
    vocab = vocabulary(TEXTS)
    encoder = item_encoder(5, 3, vocab, fusion="concat", widths=(1, 2, 3))
    encoder.set_item_texts(TEXTS)
    emb = encoder(tf.constant([1, 2, 3, 4])).numpy()
    assert (encoder.id_dim, encoder.text_dim) == (4, 4) and emb.shape == (4, 8)
    # Item 3 has neither id nor text: nothing to embed, zeros.
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), [1, 1, 0, 1], rtol=1e-5)
    # Item 4 has no id: the id half is zero, the text half carries it.
    assert not emb[3, :4].any() and emb[3, 4:].any()
    # Warm items: both halves in use; and the text path alone matches encode_text.
    assert emb[:2, :4].any() and emb[:2, 4:].any()
    np.testing.assert_allclose(encoder.encode_text(tf.constant(TEXTS[3:5])).numpy()[1],
                               emb[3], rtol=1e-5, atol=1e-6)
    assert roundtrip(encoder).fusion == "concat"
    # text_share sets the text part's width; the id part gets the rest.
    narrow = item_encoder(5, 3, vocab, fusion="concat", text_share=0.25)
    narrow.set_item_texts(TEXTS)
    assert (narrow.id_dim, narrow.text_dim) == (6, 2)
    assert narrow.id_embedding.output_dim == 6
    assert not narrow(tf.constant([4])).numpy()[0, :6].any()
    assert roundtrip(narrow).text_share == 0.25
    with pytest.raises(ValueError, match="fusion"):
        item_encoder(5, 3, vocab, fusion="product")
    # The text encoder must be as wide as the text part.
    with pytest.raises(ValueError, match="output_dim"):
        ItemEncoder(5, 3, embedding_dim=8, use_ids=True, use_text=True, fusion="concat",
                    text_share=0.5, id_dropout=0.0, text_gate=False, normalize=True,
                    tokenizer=TextTokenizer(vocab, 6), text_encoder=text_encoder(20, 8))
    with pytest.raises(ValueError, match="needs ids, text or both"):
        ItemEncoder(5, 3, embedding_dim=8, use_ids=False, use_text=False, fusion="concat",
                    text_share=0.5, id_dropout=0.0, text_gate=False, normalize=True)
    for bad in (0, -2, 2.5):
        with pytest.raises(ValueError, match="history_length must be a positive integer"):
            QueryTower(narrow, history_length=bad, pooling="mean", recency_decay=0.8,
                       history_dropout=0.0, query_layers=())


def test_text_encoder_mean_tokens_joins_the_projection_and_ignores_padding():
    encoder = text_encoder(vocabulary_size=6, output_dim=4, token_dim=3, filters=2, widths=(1,),
                           mean_tokens=True)
    short = encoder(tf.constant([[2, 3]])).numpy()
    padded = encoder(tf.constant([[2, 3, 0, 0, 0]])).numpy()
    np.testing.assert_allclose(short, padded, rtol=1e-5, atol=1e-6)
    assert encoder.projection.kernel.shape == (2 + 3, 4)
    # Unigram max-pooling cannot see a repeated token; the mean can.
    max_only = text_encoder(vocabulary_size=6, output_dim=4, token_dim=3, filters=2,
                            widths=(1,), mean_tokens=False)
    np.testing.assert_allclose(max_only(tf.constant([[2, 3, 3]])).numpy(),
                               max_only(tf.constant([[2, 3]])).numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(encoder(tf.constant([[2, 3, 3]])).numpy() - short).max() > 1e-6
    assert roundtrip(encoder).mean_tokens is True


def test_char_ngrams_share_buckets_across_word_forms_and_round_trip():
    hasher = CharNgramHasher(widths=(3,), num_buckets=1 << 20, max_ngrams=16)
    ids = hasher(tf.constant(["hearts", "heart", "mug", ""])).numpy()
    assert ids.shape == (4, 16) and ids.dtype == np.int32
    # "<hearts>" has 6 trigrams, "<heart>" 5; they share "<he", "hea", "ear", "art".
    assert (ids[0] > 0).sum() == 6 and (ids[1] > 0).sum() == 5
    assert len(set(ids[0][ids[0] > 0]) & set(ids[1][ids[1] > 0])) == 4
    assert not set(ids[2][ids[2] > 0]) & set(ids[1][ids[1] > 0])
    assert not ids[3].any()  # empty text: padding only
    assert ids.max() < (1 << 20)
    clone = roundtrip(hasher)
    np.testing.assert_array_equal(clone(tf.constant(["hearts"])).numpy(), ids[:1])
    # Cut at max_ngrams.
    assert (CharNgramHasher((3, 4), 1000, 4)(tf.constant(["holder"])).numpy() > 0).sum() == 4


def test_item_encoder_with_char_ngrams_embeds_unseen_words_by_their_subwords():
    vocab = vocabulary(TEXTS)
    encoder = item_encoder(5, 3, vocab, fusion="concat", text_gate=True, widths=(1, 2, 3),
                           hasher=CharNgramHasher((3, 4), 997, 32))
    encoder.set_item_texts(TEXTS)
    assert encoder.item_ngrams.shape == (5, 32)
    emb = encoder(tf.constant([1, 3, 4])).numpy()
    # The stored n-grams and the raw-text path agree (what serving a new item uses).
    np.testing.assert_allclose(encoder.encode_text(tf.constant(TEXTS[3:5])).numpy()[1],
                               emb[2], rtol=1e-5, atol=1e-6)
    # A word unknown to the token vocabulary still reaches the encoder by its n-grams.
    by_token = item_encoder(5, 3, vocab, fusion="concat", text_gate=True, widths=(1, 2, 3))
    by_token.set_item_texts(TEXTS)
    a, b = (e.encode_text(tf.constant(["zebras", "quokka"])).numpy()
            for e in (encoder, by_token))
    assert np.abs(a[0] - a[1]).max() > 1e-4      # told apart by their n-grams
    np.testing.assert_allclose(b[0], b[1], atol=1e-6)  # both just "unknown token"
    clone = roundtrip(encoder)
    clone(tf.constant([0]))
    clone.set_weights(encoder.get_weights())
    np.testing.assert_allclose(clone(tf.constant([1, 3, 4])).numpy(), emb, rtol=1e-5,
                               atol=1e-6)


def test_query_tower_mlp_and_separate_query_items_round_trip():
    events = generate_events(2000, 40, num_clusters=4, seed=1)
    items = generate_items(40, num_clusters=4, num_cold=4, seed=1)
    vocab = build_vocabulary(events, items)
    model = build_model(ModelConfig(embedding_dim=8, objective="retrieval",
                                    query_items="separate", query_layers=(16,),
                                    negatives="catalogue",
                                    text=TextConfig(token_dim=4, filters=4)), vocab)
    # Two item spaces: the query tower's encoder is not the candidate tower.
    assert model.query_tower.item_encoder is not model.item_encoder
    config = model.get_config()
    clone = HybridModel.from_config(config)
    history = tf.constant([[0, 1, 2], [3, 4, 5]])
    query = model.query_tower(history).numpy()
    np.testing.assert_allclose(np.linalg.norm(query, axis=1), 1.0, rtol=1e-5)
    assert clone.get_config() == config
    assert clone.query_tower.item_encoder is not clone.item_encoder
    assert isinstance(clone.tasks[0].sampler, CatalogueSampler)
    assert clone.query_tower.query_layers == (16,)
    clone.query_tower(history)
    clone.item_encoder(tf.constant([1]))
    model.item_encoder(tf.constant([1]))
    for a, b in ((clone.query_tower, model.query_tower),
                 (clone.item_encoder, model.item_encoder)):
        a.set_weights(b.get_weights())
    np.testing.assert_allclose(clone.query_tower(history).numpy(), query, rtol=1e-5,
                               atol=1e-6)


def test_a_checkpoint_naming_the_item_encoder_candidate_tower_still_restores(tmp_path):
    events = generate_events(2000, 40, num_clusters=4, seed=1)
    items = generate_items(40, num_clusters=4, num_cold=4, seed=1)
    vocab = build_vocabulary(events, items)
    config = ModelConfig(embedding_dim=8, query_items="separate",
                         text=TextConfig(token_dim=4, filters=4))
    model = build_model(config, vocab, seed=1)
    expected = model.item_embeddings()
    # Runs trained before the rename saved the item encoder as "candidate_tower".
    old = tf.train.Checkpoint(model=tf.train.Checkpoint(candidate_tower=model.item_encoder,
                                                        query_tower=model.query_tower))
    path = old.write(str(tmp_path / "old"))
    fresh = build_model(config, vocab, seed=2)
    assert np.abs(fresh.item_embeddings() - expected).max() > 1e-3
    tf.train.Checkpoint(model=fresh).read(path).assert_existing_objects_matched()
    np.testing.assert_allclose(fresh.item_embeddings(), expected, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_holding_the_logit_bias_at_the_model_level_still_restores(tmp_path):
    events = generate_events(2000, 40, num_clusters=4, seed=1)
    items = generate_items(40, num_clusters=4, num_cold=4, seed=1)
    vocab = build_vocabulary(events, items)
    config = ModelConfig(embedding_dim=8, objective="both", use_text=False)
    model = build_model(config, vocab, seed=1)
    expected = model.item_embeddings()
    model.tasks[0].logit_bias.assign(0.75)
    # Runs trained before tasks were layers saved the bias as the model's "logit_bias".
    old = tf.train.Checkpoint(model=tf.train.Checkpoint(
        item_encoder=model.item_encoder, query_tower=model.query_tower,
        logit_bias=model.tasks[0].logit_bias))
    path = old.write(str(tmp_path / "old"))
    fresh = build_model(config, vocab, seed=2)
    tf.train.Checkpoint(model=fresh).read(path).assert_existing_objects_matched()
    assert float(fresh.tasks[0].logit_bias.numpy()) == 0.75
    np.testing.assert_allclose(fresh.item_embeddings(), expected, rtol=1e-6)


@pytest.mark.parametrize("pooling,layers,normalize", [
    ("mean", (), True), ("recency", (8,), True), ("attention", (), False)])
def test_a_query_from_precomputed_item_vectors_equals_the_tower(tokenizer, pooling, layers,
                                                                normalize):
    encoder = item_encoder(6, 6, tokenizer.vocabulary, use_text=True, fusion="concat",
                           normalize=normalize)
    encoder.set_item_texts(TEXTS + [""])
    tower = query_tower(encoder, history_length=4, pooling=pooling, query_layers=layers)
    history = tf.constant([[0, 0, 1, 2], [3, 4, 5, 1], [0, 0, 0, 0], [0, 5, 0, 2]])
    expected = tower(history).numpy()
    vectors = tower.item_vectors(batch_size=4)
    assert vectors.shape == (6, 8)
    if pooling == "attention":  # a non-zero attention query, so the weights matter
        tower.attention_query.assign(tf.ones([8]))
        expected = tower(history).numpy()
    got = tower.from_item_vectors(history, vectors).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected[0] - expected[1]).max() > 1e-3  # distinct queries


def test_int64_indices_past_int32_do_not_wrap_round_to_an_item():
    from tfrec.towers import ItemEncoder

    encoder = ItemEncoder(10, 10, embedding_dim=4, use_ids=True, use_text=False, fusion="sum",
                          text_share=0.5, id_dropout=0.0, text_gate=False, normalize=False,
                          seed=1)
    wide = encoder(tf.constant([2 ** 32 + 1, 1, 12], tf.int64)).numpy()
    outside = encoder(tf.constant([12], tf.int32)).numpy()[0]
    # 2**32 + 1 reads as an index outside the catalogue (as 12 does), not as item 1.
    np.testing.assert_array_equal(wide[0], outside)
    assert not np.array_equal(wide[0], wide[1])
