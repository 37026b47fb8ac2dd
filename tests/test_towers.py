import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfrec.config import ModelConfig, TextConfig
from tfrec.data.synthetic import generate_events, generate_items
from tfrec.data.vocab import build_vocabulary
from tfrec.models import HybridModel, build_model
from tfrec.towers import ItemEncoder, QueryTower, TextEncoder, TextTokenizer
from tfrec.towers.tokenizer import build_token_vocabulary

TEXTS = ["WHITE HANGING HEART T-LIGHT HOLDER", "red mug", "Crème brûlée dish, SET/3", "",
         "unknownword mug"]


@pytest.fixture(scope="module")
def tokenizer():
    vocab = build_token_vocabulary(TEXTS[:3])
    return TextTokenizer(vocab, sequence_length=6)


def test_token_vocabulary_is_learned_with_the_tokeniser_ops():
    vocab = build_token_vocabulary(TEXTS[:3] + ["red heart"])
    assert vocab[:2] == ["heart", "red"]  # in two texts each; then alphabetical
    assert {"t", "light", "crème", "brûlée", "set", "3"} <= set(vocab)
    assert build_token_vocabulary(TEXTS, min_count=2) == ["mug"]
    assert len(build_token_vocabulary(TEXTS, max_tokens=3)) == 3


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

    text = TextEncoder(vocabulary_size=20, output_dim=8,
                       config=TextConfig(token_dim=4, filters=3, widths=(1, 2)))
    ids = tf.constant([[2, 3, 0], [4, 0, 0]])
    out = text(ids)
    clone = roundtrip(text)
    clone(ids)
    clone.set_weights(text.get_weights())
    np.testing.assert_allclose(clone(ids), out, rtol=1e-6)

    encoder = ItemEncoder(num_items=5, num_id_items=3, config=ModelConfig(
        embedding_dim=8, id_dropout=0.3,
        text=TextConfig(sequence_length=6, token_dim=4, filters=3, widths=(1, 2))),
        text_vocabulary=tokenizer.vocabulary)
    encoder.set_item_texts(["", "red mug", "heart", "white mug", "set"])
    out = encoder(tf.constant([1, 2, 4]))
    clone = roundtrip(encoder)
    clone(tf.constant([0]))
    clone.set_weights(encoder.get_weights())
    np.testing.assert_allclose(clone(tf.constant([1, 2, 4])), out, rtol=1e-6)

    for pooling in ("mean", "recency", "attention"):
        tower = QueryTower(encoder, dataclasses.replace(
            encoder.config, history_length=4, pooling=pooling, recency_decay=0.5))
        history = tf.constant([[0, 0, 1, 2], [0, 0, 0, 0]])
        pooled = tower(history)
        clone = roundtrip(tower)
        clone(history)
        clone.set_weights(tower.get_weights())
        np.testing.assert_allclose(clone(history), pooled, rtol=1e-5, atol=1e-6)


def test_model_get_config_round_trip():
    events = generate_events(2000, 40, num_clusters=4, seed=1)
    items = generate_items(40, num_clusters=4, num_cold=4, seed=1)
    vocab = build_vocabulary(events, items)
    model = build_model(ModelConfig(embedding_dim=8, objective="both", pooling="attention",
                                    text=TextConfig(token_dim=4, filters=4)), vocab)
    config = model.get_config()
    clone = HybridModel.from_config(config)
    assert clone.get_config() == config
    assert clone.query_tower.item_encoder is clone.item_encoder  # still one shared encoder
    # Keras' own serialisation finds the registered class.
    assert keras.utils.get_registered_object("tfrec>HybridModel") is HybridModel


def test_item_encoder_fusion_and_cold_items():
    encoder = ItemEncoder(num_items=4, num_id_items=2, config=ModelConfig(
        embedding_dim=8, id_dropout=0.5,
        text=TextConfig(sequence_length=4, token_dim=4, filters=4, widths=(1,))),
        text_vocabulary=["red", "mug"], seed=3)
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
    ids_only = ItemEncoder(num_items=4, num_id_items=2, config=ModelConfig(
        embedding_dim=8, use_text=False, id_dropout=0.5), seed=3)
    np.testing.assert_allclose(ids_only(batch, training=True).numpy(), ids_only(batch).numpy(),
                               rtol=1e-6)


def test_concat_fusion_gives_each_path_its_half():
    vocab = build_token_vocabulary(TEXTS)
    config = ModelConfig(embedding_dim=8, fusion="concat",
                         text=TextConfig(sequence_length=6, token_dim=4, filters=4))
    encoder = ItemEncoder(num_items=5, num_id_items=3, config=config, text_vocabulary=vocab,
                          seed=0)
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
    assert roundtrip(encoder).config.fusion == "concat"
    # text_share sets the text part's width; the id part gets the rest.
    narrow = ItemEncoder(num_items=5, num_id_items=3, config=dataclasses.replace(
        encoder.config, text_share=0.25), text_vocabulary=vocab, seed=0)
    narrow.set_item_texts(TEXTS)
    assert (narrow.id_dim, narrow.text_dim) == (6, 2)
    assert narrow.id_embedding.output_dim == 6
    assert not narrow(tf.constant([4])).numpy()[0, :6].any()
    assert roundtrip(narrow).config.text_share == 0.25
    with pytest.raises(ValueError, match="fusion"):
        ItemEncoder(num_items=5, num_id_items=3, config={"fusion": "product"})


def test_text_encoder_mean_tokens_joins_the_projection_and_ignores_padding():
    encoder = TextEncoder(vocabulary_size=6, output_dim=4, config=TextConfig(
        token_dim=3, filters=2, widths=(1,), mean_tokens=True))
    short = encoder(tf.constant([[2, 3]])).numpy()
    padded = encoder(tf.constant([[2, 3, 0, 0, 0]])).numpy()
    np.testing.assert_allclose(short, padded, rtol=1e-5, atol=1e-6)
    assert encoder.projection.kernel.shape == (2 + 3, 4)
    # Unigram max-pooling cannot see a repeated token; the mean can.
    max_only = TextEncoder(vocabulary_size=6, output_dim=4, config=dataclasses.replace(
        encoder.config, mean_tokens=False))
    np.testing.assert_allclose(max_only(tf.constant([[2, 3, 3]])).numpy(),
                               max_only(tf.constant([[2, 3]])).numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(encoder(tf.constant([[2, 3, 3]])).numpy() - short).max() > 1e-6
    assert roundtrip(encoder).config.mean_tokens is True


def test_char_ngrams_share_buckets_across_word_forms_and_round_trip():
    from tfrec.towers.tokenizer import CharNgramHasher

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
    vocab = build_token_vocabulary(TEXTS)
    text = TextConfig(sequence_length=6, token_dim=4, filters=4)
    with_ngrams = dataclasses.replace(text, char_ngrams=(3, 4), ngram_buckets=997,
                                      max_ngrams=32)
    encoder = ItemEncoder(num_items=5, num_id_items=3,
                          config=ModelConfig(embedding_dim=8, text=with_ngrams),
                          text_vocabulary=vocab, seed=0)
    encoder.set_item_texts(TEXTS)
    assert encoder.item_ngrams.shape == (5, 32)
    emb = encoder(tf.constant([1, 3, 4])).numpy()
    # The stored n-grams and the raw-text path agree (what serving a new item uses).
    np.testing.assert_allclose(encoder.encode_text(tf.constant(TEXTS[3:5])).numpy()[1],
                               emb[2], rtol=1e-5, atol=1e-6)
    # A word unknown to the token vocabulary still reaches the encoder by its n-grams.
    by_token = ItemEncoder(num_items=5, num_id_items=3,
                           config=ModelConfig(embedding_dim=8, text=text),
                           text_vocabulary=vocab, seed=0)
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
    assert clone.config.negatives == "catalogue" and clone.query_tower.config.query_layers == (16,)
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
