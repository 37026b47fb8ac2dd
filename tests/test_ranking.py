"""The ranking stage: its protocol, candidates, features, loss and ranker."""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfrec.data.split import make_cases
from tfrec.data.vocab import build_vocabulary
from tfrec.errors import InputError
from tfrec.ranking import features as F
from tfrec.ranking.item_table import ItemItemTable
from tfrec.ranking.lexical import LexicalTable, tf_similarity
from tfrec.config import RankingConfig
from tfrec.ranking.protocol import index_map, ranker_cases, ranker_split, split_validation
from tfrec.run import load_run_config
from tfrec.tasks import ListwiseSoftmaxTask
from tfrec.ranking.ranker import (CandidateRanker, FoldedRanker, fit_ranker, list_ranks,
                                  score_lists)


def _events(per_user=False):
    rows = []
    for s in range(40):
        for j in range(3):
            rows.append({"user": f"u{s % 13}", "item": f"i{(s * 3 + j) % 17}",
                         "time": 1000 * s + j, "event": "buy",
                         "session": None if per_user else f"s{s}", "line": len(rows)})
    return pd.DataFrame(rows)


# The protocol ------------------------------------------------------------------------------

def test_ranker_sessions_are_never_stage1_sessions():
    events = _events()
    split = ranker_split(events, 0.25, per_user=False)
    stage1, ranker = set(split.stage1["session"]), set(split.ranker["session"])
    assert ranker and stage1
    assert not stage1 & ranker
    # The ranker gets the last sessions in time.
    assert split.ranker["time"].min() > split.stage1["time"].max()
    vocab = build_vocabulary(events)
    cases = make_cases(split.ranker, vocab, per_user=False)
    assert len(cases) == len(ranker)
    # Several cases per session: each from a ranker session, each hiding another item.
    more, groups = ranker_cases(split.ranker, vocab, load_run_config(None), False, 42,
                                per_session=3)
    assert len(more) > len(cases)
    assert set(groups.tolist()) == set(range(len(cases)))
    pairs = set(zip(groups.tolist(), more.targets.tolist()))
    assert len(pairs) == len(more)
    for query, target in zip(more.queries, more.targets):
        assert target not in query


def test_ranker_users_are_never_stage1_users():
    events = _events(per_user=True)
    split = ranker_split(events, 0.3, per_user=True, seed=7)
    stage1, ranker = set(split.stage1["user"]), set(split.ranker["user"])
    assert len(ranker) == round(13 * 0.3)
    assert not stage1 & ranker
    assert len(split.stage1) + len(split.ranker) == len(events)


def test_ranker_split_refuses_an_empty_side():
    with pytest.raises(InputError) as err:
        ranker_split(_events(), 1.0, per_user=False)
    assert err.value.key == "ranking.ranker_share"


def test_validation_keeps_a_session_on_one_side():
    groups = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 6, 7])
    fit, val = split_validation(groups, 0.25, seed=1)
    assert not set(fit) & set(val)
    assert len(fit) + len(val) == len(groups)
    assert not set(groups[fit]) & set(groups[val])
    assert len(set(groups[val])) == 2


def test_index_map_follows_ids():
    a = build_vocabulary(pd.DataFrame({"item": ["x", "y", "y", "z"]}))
    b = build_vocabulary(pd.DataFrame({"item": ["z", "z", "x"]}))
    mapped = index_map(a, b)
    for i in range(1, a.size):
        j = mapped[i]
        assert (b.ids[j] == a.ids[i]) if j else (a.ids[i] not in set(b.ids))
    assert mapped[a.index_of("y")] == 0


# Settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("change,key", [
    ({"num_candidates": 0}, "ranking.num_candidates"),
    ({"neighbours": 0}, "ranking.neighbours"),
    ({"ranker_share": 0.0}, "ranking.ranker_share"),
    ({"table_share": 1.5}, "ranking.table_share"),
    ({"hidden_units": ()}, "ranking.hidden_units"),
    ({"epochs": 0}, "ranking.epochs"),
    ({"learning_rate": 0.0}, "ranking.learning_rate"),
])
def test_bad_settings_are_refused_naming_the_key(change, key):
    with pytest.raises(InputError) as err:
        RankingConfig(**change)
    assert err.value.key == key


def test_candidate_list_shorter_than_k_is_refused():
    with pytest.raises(InputError) as err:
        RankingConfig(num_candidates=5).check_k(10)
    assert err.value.key == "ranking.num_candidates"
    RankingConfig(num_candidates=10).check_k(10)


# Candidates --------------------------------------------------------------------------------

def test_merge_is_deduplicated_excludes_the_query_and_keeps_the_share():
    two_tower = np.array([5, 3, 9, 1, 7, 2])
    table = np.array([3, 4, 8, 6])
    merged, tt_place, table_place = F.merge_candidates(two_tower, table, query=[9, 4],
                                                       width=6, table_share=0.5)
    assert len(set(merged.tolist())) == len(merged) == 6
    assert not {9, 4} & set(merged.tolist())
    # Alternating, the table first at equal keys: 3 (table), 5, [3 dup], [4 query], 8, [9], 6, 1
    assert merged.tolist() == [3, 5, 8, 6, 1, 7]
    assert tt_place.tolist() == [1, 0, 6, 6, 3, 4]
    assert table_place.tolist() == [0, 4, 2, 3, 4, 4]


def _tables(rng, size=12, dim=4):
    table = rng.normal(size=(size, size)).astype(np.float32)
    np.fill_diagonal(table, 0)
    table[0] = table[:, 0] = 0
    counts = rng.integers(0, 5, size)
    counts[0] = 0

    def unit(d):
        v = rng.normal(size=(size, d)).astype(np.float32)
        v[0] = 0
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    # Each row keeps its 6 strongest of 11 co-items: candidates meet missing entries
    # (weight 0) and negative weights.
    words = ["red", "mug", "tea", "cup", "blue", "heart", "light", "box"]
    draw = np.random.default_rng(size)
    texts = [""] + [" ".join(draw.choice(words, size=draw.integers(1, 5)))
                    for _ in range(size - 1)]
    return F.Tables(rng.normal(size=(size, dim)).astype(np.float32),
                    ItemItemTable.from_dense(table, table_size=6), counts,
                    unit(3), LexicalTable.build(texts, max_terms=3), unit(2))


def lexical_dense(table: LexicalTable) -> np.ndarray:
    """[V, terms + 1] the table's rows as dense vectors (a brute-force reference)."""
    dense = np.zeros((len(table.terms), len(table.vocabulary) + 1), np.float32)
    for row in range(len(table.terms)):
        for term, weight in zip(table.terms[row], table.weights[row]):
            if term:
                dense[row, term] += weight
    return dense


def test_lexical_terms_are_the_text_towers_words_in_any_script():
    from tfrec.ranking.lexical import tokenize

    # Latin text as before; a word with an umlaut or accent stays whole (it was cut at each
    # letter outside a-z), a decomposed accent and Thai marks are no breaks, markup no term.
    assert tokenize("WHITE HANGING HEART T-LIGHT HOLDER 3") == [
        "white", "hanging", "heart", "t", "light", "holder", "3"]
    assert tokenize("Größe Äpfel cafe\u0301 Misérables") == [
        "grösse", "äpfel", "café", "misérables"]
    assert tokenize("ถ้วยสีแดง") == ["ถ้วยสีแดง"]
    assert tokenize("<b>Red Mug</b> &amp; saucer") == ["red", "mug", "saucer"]
    # Each Chinese or Japanese character alone; full-width forms read as their letters.
    assert tokenize("黒い陶器のマグ") == ["黒", "い", "陶", "器", "の", "マ", "グ"]
    assert tokenize("ＡＢＣ１２３") == ["abc123"] and tokenize(None) == []
    # Rule 1, the terms of stages saved before (a table keeps the rules it was built with).
    assert tokenize("<b>Größe</b> 黒い", rules=1) == ["b", "gr", "e", "b"]
    old = LexicalTable.build(["", "Größe mug"], max_terms=4, rules=1)
    assert old.rules == 1 and old.vocabulary == ["gr", "e", "mug"]
    assert (old.rows(["Größe"])[0] > 0).sum() == 2  # read as its terms were
    # Two Japanese titles sharing words now share terms (they shared none).
    table = LexicalTable.build(["", "黒い陶器", "白い陶器", "赤いマグ"], max_terms=4)
    dense = lexical_dense(table)
    assert dense[1] @ dense[2] > 0.3 and dense[1] @ dense[2] > dense[1] @ dense[3]


def test_lexical_table_keeps_the_strongest_terms_and_scores_cosines():
    texts = ["", "red tea mug", "red red cup", "blue tea mug heart", "tea", "zebra"]
    table = LexicalTable.build(texts, max_terms=2)
    # Item 2 repeats 'red': its strongest terms are 'red' then 'cup'.
    names = [[table.vocabulary[t - 1] for t in row if t] for row in table.terms]
    assert names[2][0] == "red" and set(names[2]) == {"red", "cup"}
    assert names[0] == [] and not table.weights[0].any()
    assert all(len(n) <= 2 for n in names)
    dense = lexical_dense(table)
    np.testing.assert_allclose(np.linalg.norm(dense[1:], axis=1), 1.0, rtol=1e-6)
    a = np.array([[1, 3, 0]])
    b = np.array([[4, 2, 5, 1]])
    expected = (dense[a[0]] @ dense[b[0]].T)[None]
    np.testing.assert_allclose(table.similarity(a, b), expected, rtol=1e-6, atol=1e-7)
    got = tf_similarity(tf.constant(table.terms), tf.constant(table.weights), tf.constant(a),
                        tf.constant(b)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # A new text: known terms only, the same weighting.
    terms, weights = table.rows(["mug tea unheard", "nothing known"])
    assert {table.vocabulary[t - 1] for t in terms[0] if t} <= {"mug", "tea"}
    assert not terms[1].any() and not weights[1].any()
    bigger = table.with_rows(terms, weights)
    assert len(bigger.terms) == len(texts) + 2


def test_lexical_cosines_in_tensorflow_equal_numpys_for_long_queries():
    rng = np.random.default_rng(3)
    texts = [" ".join(f"w{t}" for t in rng.integers(0, 60, rng.integers(0, 9)))
             for _ in range(300)]
    table = LexicalTable.build(texts, max_terms=4)
    a, b = rng.integers(0, 300, (3, 70)), rng.integers(0, 300, (3, 40))
    a[:, :5] = 0  # padding rows, and items with fewer terms than 4, meet nothing
    got = tf_similarity(tf.constant(table.terms), tf.constant(table.weights), tf.constant(a),
                        tf.constant(b)).numpy()
    expected = table.similarity(a, b)
    assert (expected > 0).mean() > 0.05
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_candidates_exclude_the_query_and_padding_is_masked():
    rng = np.random.default_rng(0)
    tables = _tables(rng)
    queries = [[1, 2], [3], [4, 5, 6]]
    query_emb = rng.normal(size=(3, 4)).astype(np.float32)
    cands, mask, _, _ = F.candidates(query_emb, tables, queries, width=6, table_share=0.5)
    for row, query in enumerate(queries):
        listed = cands[row][mask[row]].tolist()
        assert len(listed) == len(set(listed)) == 6
        assert not set(query) & set(listed)
        assert 0 not in listed
    # The two-tower's best item is in every list.
    scores = query_emb @ tables.item_embeddings.T
    for row, query in enumerate(queries):
        scores[row, [0, *query]] = -np.inf
        assert int(np.argmax(scores[row])) in cands[row].tolist()


def test_candidate_lists_do_not_depend_on_the_chunk_and_ties_go_to_the_lower_index(
        monkeypatch):
    rng = np.random.default_rng(4)
    tables = _tables(rng)
    queries = [[1, 2], [3], [4, 5, 6], [7], [8, 9], [10], [11, 1]]
    query_emb = rng.normal(size=(len(queries), 4)).astype(np.float32)
    whole = F.candidates(query_emb, tables, queries, width=6, table_share=0.5)
    monkeypatch.setattr(F, "CANDIDATE_CHUNK_ELEMENTS", 2 * len(tables.counts))  # 2 rows
    for got, expected in zip(F.candidates(query_emb, tables, queries, width=6,
                                          table_share=0.5), whole):
        np.testing.assert_array_equal(got, expected)
    # The table's list from its sparse scores: positive scores only, not the query's
    # items nor index 0, best first and ties to the lower index (as tf.math.top_k).
    from scipy import sparse

    scores = sparse.csr_matrix(np.array([[5.0, 2.0, 0.0, 2.0, 3.0, -1.0, 2.0, 4.0]]))
    assert F._sparse_top(scores, 0, [7], depth=4).tolist() == [4, 1, 3, 6]
    assert F._sparse_top(scores, 0, [], depth=9).tolist() == [7, 4, 1, 3, 6]


# Features ----------------------------------------------------------------------------------

def test_features_in_tensorflow_equal_numpy():
    rng = np.random.default_rng(1)
    tables = _tables(rng)
    queries = [[1, 2, 3], [4], [5, 6, 5]]  # a repeated item counts once in the table's sums
    query_emb = rng.normal(size=(3, 4)).astype(np.float32)
    cands, mask, tt_place, table_place = F.candidates(query_emb, tables, queries, width=5,
                                                      table_share=0.5)
    mask[2, 3:] = False  # padding at the end of a list
    cands[2, 3:] = 0
    expected = F.candidate_features(query_emb, tables, queries, cands, mask, tt_place,
                                    table_place)
    layer = F.CandidateFeatures.from_tables(tables)
    assert layer.get_config()["num_items"] == 12
    assert F.CandidateFeatures.from_config(layer.get_config()).dims == layer.dims
    padded = np.zeros((3, 4), np.int32)
    for row, query in enumerate(queries):
        padded[row, :len(query)] = query
    got = layer({"query_items": padded, "query_embeddings": query_emb, "candidates": cands,
                 "candidate_mask": mask, "tt_place": tt_place,
                 "table_place": table_place}).numpy()
    assert got.shape == (3, 5, len(F.FEATURES))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Precomputed similarities give the same values as the vectors.
    import dataclasses
    lex = lexical_dense(tables.tfidf)
    with_grams = dataclasses.replace(tables, grams={"tfidf": lex @ lex.T})
    np.testing.assert_allclose(F.candidate_features(query_emb, with_grams, queries, cands, mask,
                                                    tt_place, table_place), expected,
                               rtol=1e-5, atol=1e-5)
    # Spot checks against the definitions.
    j = F.FEATURES.index("ii_score")
    c = cands[0, 0]
    dense = tables.table.matrix().toarray()
    assert expected[0, 0, j] == pytest.approx(dense[[1, 2, 3], c].sum(), rel=1e-5)
    j = F.FEATURES.index("ii_max")
    assert expected[0, 0, j] == pytest.approx(dense[[1, 2, 3], c].max(), rel=1e-5)
    j = F.FEATURES.index("tfidf_max")
    assert expected[1, 1, j] == pytest.approx(float(lex[4] @ lex[cands[1, 1]]), rel=1e-5,
                                              abs=1e-6)
    assert not expected[2, 3:].any()


# The loss and the ranker -------------------------------------------------------------------

def test_listwise_softmax_matches_a_hand_computed_value():
    scores = np.array([[2.0, 1.0, 0.5, 9.0], [0.0, 3.0, -1.0, 1.0], [1.0, 2.0, 3.0, 4.0]],
                      np.float32)
    labels = np.array([[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
    # Query 0: the padded 9.0 is left out; query 2 has no positive: no loss.
    first = -(1.0 - np.log(np.exp(2.0) + np.exp(1.0) + np.exp(0.5)))
    second = -(1.0 - np.log(np.exp(0.0) + np.exp(3.0) + np.exp(-1.0) + np.exp(1.0)))
    expected = (first + second) / 2
    got = float(ListwiseSoftmaxTask()(labels, scores, mask))
    assert got == pytest.approx(expected, rel=1e-6)
    unmasked = float(ListwiseSoftmaxTask()(labels, scores))
    assert unmasked > got  # the padded 9.0 now takes probability from the positive
    # A positive's label is its list's weight: 0.25 and 1.75 weigh the two losses.
    weighted = labels * np.array([[0.25], [1.75], [1.0]], np.float32)
    got = float(ListwiseSoftmaxTask()(weighted, scores, mask))
    assert got == pytest.approx((0.25 * first + 1.75 * second) / 2, rel=1e-6)


def test_list_weights_steer_the_fit_and_bad_ones_are_refused():
    # Two kinds of list disagree on which feature finds the target; the weights
    # decide which the ranker follows.
    rng = np.random.default_rng(4)
    n, width = 400, 10
    features = rng.normal(size=(n, width, 2)).astype(np.float32)
    kind = np.arange(n) % 2
    target = np.where(kind == 0, features[:, :, 0].argmax(1), features[:, :, 1].argmax(1))
    labels = np.zeros((n, width), np.float32)
    labels[np.arange(n), target] = 1
    mask = np.ones((n, width), bool)
    cands = np.tile(np.arange(width), (n, 1))

    def hits(weights, kind_of):
        model = fit_ranker(features, mask, labels, hidden_units=(8,), epochs=8,
                           learning_rate=0.02, batch_size=32, seed=0, weights=weights)
        ranks = list_ranks(score_lists(model, features, mask), cands, mask, target, width)
        return float((ranks[kind == kind_of] == 0).mean())

    first_only = np.where(kind == 0, 1.0, 0.02)
    second_only = np.where(kind == 1, 1.0, 0.02)
    assert hits(first_only, 0) > hits(second_only, 0) + 0.3
    assert hits(second_only, 1) > hits(first_only, 1) + 0.3
    for bad in (-first_only, np.zeros(n)):
        with pytest.raises(ValueError, match="weights"):
            fit_ranker(features, mask, labels, hidden_units=(4,), epochs=1, weights=bad)
    from tfrec.ranking.ranker import CandidateRanker

    with pytest.raises(ValueError, match="hidden_units must each be at least 1 wide"):
        CandidateRanker(3, (4, 0))


def test_ranker_learns_a_planted_signal():
    rng = np.random.default_rng(3)
    n, width, num_features = 600, 20, 4
    features = rng.normal(size=(n, width, num_features)).astype(np.float32)
    # The target is the item whose feature 2 minus feature 0 is largest
    # (neither feature alone orders the list).
    strength = features[:, :, 2] - features[:, :, 0]
    target_pos = strength.argmax(axis=1)
    cands = np.tile(np.arange(1, width + 1), (n, 1))
    labels = np.zeros((n, width), np.float32)
    labels[np.arange(n), target_pos] = 1
    mask = np.ones((n, width), bool)
    targets = cands[np.arange(n), target_pos]
    train, test = slice(0, 500), slice(500, n)
    model = fit_ranker(features[train], mask[train], labels[train], hidden_units=(16,),
                       epochs=15, learning_rate=0.01, batch_size=32, seed=0)
    ranks = list_ranks(score_lists(model, features[test], mask[test]), cands[test],
                       mask[test], targets[test], miss_rank=width)
    single = list_ranks(features[test, :, 2], cands[test], mask[test], targets[test], width)
    assert (ranks == 0).mean() > 0.8
    assert (ranks == 0).mean() > (single == 0).mean() + 0.2
    # A feature column subset is honoured (without feature 2 it cannot find the target).
    blind = fit_ranker(features[train], mask[train], labels[train], hidden_units=(16,),
                       epochs=5, learning_rate=0.01, seed=0, columns=[1, 3])
    blind_ranks = list_ranks(score_lists(blind, features[test], mask[test], [1, 3]),
                             cands[test], mask[test], targets[test], width)
    assert (blind_ranks == 0).mean() < 0.3


def test_ranker_masks_padding_and_round_trips_its_config():
    model = CandidateRanker(3, hidden_units=(4,), seed=1)
    model.adapt(np.ones((2, 5, 3), np.float32) * np.arange(3), np.ones((2, 5), bool))
    mask = np.array([[True, True, False, False, True]])
    scores = model({"features": np.ones((1, 5, 3), np.float32),
                    "candidate_mask": mask}).numpy()
    assert (scores[0, ~mask[0]] < -1e8).all()
    assert (scores[0, mask[0]] > -1e8).all()
    config = model.get_config()
    assert config == {"num_features": 3, "hidden_units": [4], "seed": 1, "members": 1}
    clone = CandidateRanker.from_config(config)
    assert clone.hidden_units == (4,)
    # A config saved before ensembles (no "members") is a single ranker.
    assert CandidateRanker.from_config({"num_features": 3, "hidden_units": [4],
                                        "seed": 1}).members == 1


@pytest.mark.parametrize("hidden_units,members", [((8,), 1), ((8, 4), 3), ((6, 5, 4), 2),
                                                  ((), 3)])  # (): linear members
def test_the_folded_ranker_scores_as_the_ranker_does(hidden_units, members):
    # The serving graph's ranker: normalisation folded in, members' first and last
    # layers merged, reading its columns of a wider feature vector.
    rng = np.random.default_rng(7)
    features = (rng.normal(size=(4, 9, 5)) * [1, 10, 0.1, 3, 100] + 2).astype(np.float32)
    mask = np.ones((4, 9), bool)
    model = CandidateRanker(3, hidden_units=hidden_units, seed=3, members=members)
    columns = [4, 0, 2]
    model.adapt(features[..., columns], mask)
    for scorer in model.scorers():  # non-zero biases, as a fit leaves them
        for layer in scorer.layers:
            layer.bias.assign(rng.normal(size=layer.bias.shape).astype(np.float32))
    expected = model({"features": features[..., columns], "candidate_mask": mask}).numpy()
    folded = FoldedRanker(model, columns, width=5)
    got = folded(tf.constant(features)).numpy()
    assert got.shape == (4, 9)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The columns it does not read do not move its scores.
    other = features.copy()
    other[..., [1, 3]] = rng.normal(size=(4, 9, 2))
    np.testing.assert_array_equal(folded(tf.constant(other)).numpy(), got)
    with pytest.raises(ValueError, match="2 columns for a ranker of 3 features"):
        FoldedRanker(model, [0, 1], width=5)


def test_an_ensemble_scores_the_mean_of_its_members_each_fit_on_its_own_loss():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(3, 6, 4)).astype(np.float32)
    mask = np.ones((3, 6), bool)
    mask[2, 4:] = False
    labels = np.zeros((3, 6), np.float32)
    labels[:, 1] = 1
    model = CandidateRanker(4, hidden_units=(8, 4), seed=2, members=3)
    model.adapt(features, mask)
    inputs = {"features": features, "candidate_mask": mask, "labels": labels}
    normalised = model.normalization(features)
    members = [tf.squeeze(s(normalised), -1).numpy() for s in model.scorers()]
    assert len(members) == 3 and not np.allclose(members[0], members[1])
    scores = model(inputs).numpy()
    np.testing.assert_allclose(scores[mask], np.mean(members, axis=0)[mask], atol=1e-5)
    assert (scores[~mask] < -1e8).all()
    # The loss is the mean of the members' own listwise losses (not the averaged
    # score's), so each member's gradient is its own.
    task = ListwiseSoftmaxTask()
    own = np.mean([float(task(labels, m, mask)) for m in members])
    assert float(model.compute_loss(inputs)) == pytest.approx(own, rel=1e-5)
    assert float(task(labels, scores, mask)) != pytest.approx(own, rel=1e-3)
    with pytest.raises(ValueError, match="members"):
        CandidateRanker(4, hidden_units=(8,), members=0)


def test_list_ranks_counts_ties_against_the_target_and_misses():
    scores = np.array([[1.0, 3.0, 3.0], [5.0, 1.0, 0.0]])
    cands = np.array([[7, 8, 9], [4, 5, 6]])
    mask = np.ones((2, 3), bool)
    ranks = list_ranks(scores, cands, mask, np.array([8, 3]), miss_rank=99)
    assert ranks.tolist() == [1, 99]


def test_features_run_in_a_graph():
    rng = np.random.default_rng(2)
    tables = _tables(rng)
    layer = F.CandidateFeatures.from_tables(tables)
    spec = {"query_items": tf.TensorSpec([None, None], tf.int32),
            "query_embeddings": tf.TensorSpec([None, 4], tf.float32),
            "candidates": tf.TensorSpec([None, None], tf.int32),
            "candidate_mask": tf.TensorSpec([None, None], tf.bool),
            "tt_place": tf.TensorSpec([None, None], tf.float32),
            "table_place": tf.TensorSpec([None, None], tf.float32)}
    graph = tf.function(layer, input_signature=[spec])
    out = graph({"query_items": tf.constant([[1, 0]]),
                 "query_embeddings": tf.ones([1, 4]),
                 "candidates": tf.constant([[2, 3, 0]]),
                 "candidate_mask": tf.constant([[True, True, False]]),
                 "tt_place": tf.zeros([1, 3]), "table_place": tf.zeros([1, 3])})
    assert out.shape == (1, 3, len(F.FEATURES))
    assert float(out[0, 0, F.FEATURES.index("ii_score")]) == pytest.approx(
        float(tables.table.matrix()[1, 2]), rel=1e-5)
    # The table's CSR arrays are the layer's weights (saved with it), not a V x V array.
    shapes = sorted(tuple(w.shape) for w in layer.weights)
    assert (12, 12) not in shapes
    assert (tables.table.num_entries,) in shapes and (13,) in shapes


def test_a_target_shown_as_new_loses_its_behaviour_or_its_place():
    rng = np.random.default_rng(4)
    tables = _tables(rng)
    norms = np.linalg.norm(tables.item_embeddings, axis=1, keepdims=True).clip(1e-9)
    tables.text = tables.item_embeddings / norms
    queries = [[1, 2], [3, 4]]
    query_emb = rng.normal(size=(2, 4)).astype(np.float32)
    cands, mask, a, b = F.candidates(query_emb, tables, queries, width=6, table_share=0.5)
    feats = F.candidate_features(query_emb, tables, queries, cands, mask, a, b)
    labels = np.zeros(cands.shape, np.float32)
    labels[:, 1] = 1
    before = feats.copy()
    # Case 1: its target's text-only score is below every listed two-tower score.
    tables.text[cands[1, 1]] = -query_emb[1] / np.linalg.norm(query_emb[1]) * 100
    kept = F.present_as_new(feats, cands, mask, labels, query_emb, tables, np.array([0, 1]))
    col = {name: j for j, name in enumerate(F.FEATURES)}
    assert kept == 1
    assert labels[1, 1] == 0 and labels[0, 1] == 1
    item = cands[0, 1]
    assert feats[0, 1, col["tt_score"]] == pytest.approx(float(tables.text[item] @ query_emb[0]),
                                                         rel=1e-5)
    for name in ("ii_score", "ii_max", "log_count", "has_behaviour", "i2v_mean", "i2v_max"):
        assert feats[0, 1, col[name]] == 0
    np.testing.assert_array_equal(feats[0, 0], before[0, 0])
    np.testing.assert_array_equal(feats[0, 1, col["tfidf_mean"]], before[0, 1, col["tfidf_mean"]])


# Text slots: items without behaviour found by their text ------------------------------------

def _text_tables(rng):
    """Tables of 12 items whose texts overlap in known ways; items 7..11 have no events."""
    tables = _tables(rng)
    texts = ["", "red tea mug", "blue cup", "green box", "red tea pot", "blue sky",
             "tea light", "red tea mug set", "red lamp", "blue cup saucer", "zebra", "tea"]
    tables.tfidf = LexicalTable.build(texts, max_terms=3)
    tables.counts = np.array([0, 3, 2, 4, 1, 2, 5, 0, 0, 0, 0, 0])
    return tables


def test_text_slots_hold_the_new_items_whose_text_best_matches_the_query():
    rng = np.random.default_rng(7)
    tables = _text_tables(rng)
    queries = [[1, 4], [2], [3], [1, 1, 4]]
    query_emb = rng.normal(size=(4, 4)).astype(np.float32)
    query_emb[3] = query_emb[0]
    plain = F.candidates(query_emb, tables, queries, width=3, table_share=0.5)
    cands, mask, tt_place, table_place = F.candidates(query_emb, tables, queries, width=3,
                                                      table_share=0.5, text_slots=2)
    assert cands.shape == (4, 5)
    for got, before in zip((cands, mask, tt_place, table_place), plain):
        np.testing.assert_array_equal(got[:, :3], before)  # the first N are as without
    dense = lexical_dense(tables.tfidf)
    new = np.flatnonzero(tables.counts == 0)[1:]
    for row, query in enumerate(queries):
        listed = set(cands[row, :3][mask[row, :3]].tolist()) | set(query)
        scores = {int(i): float(dense[sorted(set(query))].sum(0) @ dense[i]) for i in new
                  if i not in listed}
        best = sorted((i for i, s in scores.items() if s > 1e-6), key=lambda i: (-scores[i], i))
        picked = cands[row, 3:][mask[row, 3:]].tolist()
        assert picked == best[:2]
    # Query 0 (red tea mug, red tea pot): "red tea mug set" first, then "red lamp" (the
    # rarer shared word outweighs "tea" alone).
    assert cands[0, 3:].tolist() == [7, 8]
    # Query 2 ("green box") shares no term with a new item: no text pick.
    assert not mask[2, 3:].any()
    # A repeated query item counts once.
    np.testing.assert_array_equal(cands[3, 3:], cands[0, 3:])
    # Their places: the two-tower's own list (N where it is absent), the table's length.
    two_tower = query_emb @ tables.item_embeddings.T
    for row in range(4):
        two_tower[row, [0, *queries[row]]] = -np.inf
        order = np.argsort(-two_tower[row], kind="stable")[:3].tolist()
        for j in np.flatnonzero(mask[row, 3:]) + 3:
            expected = order.index(cands[row, j]) if cands[row, j] in order else 3
            assert tt_place[row, j] == expected
    # A dropped item is never picked.
    gone = F.candidates(query_emb, tables, queries, 3, 0.5, text_slots=2, unavailable=[7])
    assert 7 not in gone[0][0].tolist() and gone[0][0, 3] == 8


def test_a_target_shown_as_new_may_keep_its_place_by_its_text():
    rng = np.random.default_rng(8)
    tables = _text_tables(rng)
    queries = [[1, 4]]
    query_emb = rng.normal(size=(1, 4)).astype(np.float32)
    cands, mask, a, b = F.candidates(query_emb, tables, queries, width=4, table_share=0.5,
                                     text_slots=1)
    assert mask[0, 4] and tables.counts[cands[0, 4]] == 0  # a new item, by its text
    feats = F.candidate_features(query_emb, tables, queries, cands, mask, a, b)
    target = 0
    item = int(cands[0, target])
    labels = np.zeros(cands.shape, np.float32)
    labels[0, target] = 1
    col = {name: j for j, name in enumerate(F.FEATURES)}
    # Every listed two-tower score is above the target's text-only one (0): only its
    # text can keep it.
    feats[0, :, col["tt_score"]] = 5.0
    text_only = np.zeros((12, 4), np.float32)
    texts = ["", "red tea mug", "blue cup", "green box", "red tea pot", "blue sky",
             "tea light", "red tea mug set", "red lamp", "blue cup saucer", "zebra", "tea"]
    before = (feats.copy(), mask.copy(), labels.copy())
    # A text that matches the query better than the text pick's: kept, the pick dropped.
    texts[item] = "red tea mug pot"
    tables.tfidf = LexicalTable.build(texts, max_terms=3)
    kept = F.present_as_new(feats, cands, mask, labels, query_emb, tables, np.array([0]),
                            text_only, queries, width=4)
    assert kept == 1 and labels[0, target] == 1
    assert not mask[0, 4]  # the weakest text pick gave up its slot
    assert feats[0, target, col["tt_rank"]] == pytest.approx(np.log1p(4))
    assert feats[0, target, col["has_behaviour"]] == 0
    # A text that shares nothing with the query: taken out, the text pick stays.
    feats, mask, labels = (x.copy() for x in before)
    texts[item] = "zebra zebra"
    tables.tfidf = LexicalTable.build(texts, max_terms=3)
    kept = F.present_as_new(feats, cands, mask, labels, query_emb, tables, np.array([0]),
                            text_only, queries, width=4)
    assert kept == 0 and labels[0, target] == 0 and mask[0, 4]
    # Without text slots a well-matching text does not keep it either.
    feats, mask, labels = (x.copy() for x in before)
    texts[item] = "red tea mug pot"
    tables.tfidf = LexicalTable.build(texts, max_terms=3)
    kept = F.present_as_new(feats[:, :4], cands[:, :4], mask[:, :4], labels[:, :4], query_emb,
                            tables, np.array([0]), text_only)
    assert kept == 0


def test_the_serving_graph_picks_the_text_slots_as_numpy_does():
    from tfrec.ranking.serving import TwoStageScorer

    rng = np.random.default_rng(9)
    tables = _text_tables(rng)
    queries = [[1, 4], [2], [3], [1, 1, 4], [6, 5]]
    query_emb = rng.normal(size=(5, 4)).astype(np.float32)
    ranker = CandidateRanker(len(F.FEATURES), hidden_units=(4,), seed=1)
    n, m = 3, 2

    def graph(unavailable=(), exclude=None):
        scorer = TwoStageScorer(tables, ranker, n, 0.5, tuple(range(len(F.FEATURES))),
                                text_slots=m, unavailable=unavailable)
        scores = query_emb @ tables.item_embeddings.T
        scores[:, 0] = -np.inf
        for row, query in enumerate(queries):
            scores[row, query] = -np.inf
        tt_ids = np.argsort(-scores, axis=1, kind="stable")[:, :n].astype(np.int32)
        items = np.zeros((len(queries), 3), np.int32)
        for row, query in enumerate(queries):
            items[row, 3 - len(query):] = query
        exclude = np.zeros((len(queries), 1), np.int32) if exclude is None else exclude
        valid = (tt_ids[:, :, None] != exclude[:, None, :]).all(-1)  # as the export does
        return [x.numpy() for x in scorer.rank(items, query_emb, tt_ids, valid, exclude)]

    cands, mask, scores = graph()
    expected = F.candidates(query_emb, tables, queries, n, 0.5, text_slots=m)
    assert cands.shape == (5, n + m) and mask[:, n:].any()
    np.testing.assert_array_equal(mask, expected[1])
    np.testing.assert_array_equal(np.where(mask, cands, 0), expected[0])
    feats = F.candidate_features(query_emb, tables, queries, *expected)
    np.testing.assert_allclose(scores[mask], score_lists(ranker, feats, expected[1])[mask],
                               rtol=1e-5, atol=1e-5)
    # Dropped items and excluded ones are never picked.
    first = int(cands[0, n])
    cands, mask, _ = graph(unavailable=[first])
    assert first not in cands[0][mask[0]].tolist()
    np.testing.assert_array_equal(
        np.where(mask, cands, 0),
        F.candidates(query_emb, tables, queries, n, 0.5, text_slots=m, unavailable=[first])[0])
    cands, mask, _ = graph(exclude=np.full((5, 1), first, np.int32))
    assert first not in cands[mask].tolist()


def test_decoys_fill_each_list_to_its_count_of_new_looking_non_targets():
    from tfrec.ranking.features import FEATURES, show_decoys

    column = {name: j for j, name in enumerate(FEATURES)}
    rng = np.random.default_rng(0)
    lists, width, items = 3, 12, 40
    cands = np.stack([rng.permutation(np.arange(1, items))[:width] for _ in range(lists)])
    mask = np.ones((lists, width), bool)
    mask[2, 10:] = False
    labels = np.zeros((lists, width), np.float32)
    labels[:, 0] = 1.0
    features = rng.random((lists, width, len(FEATURES))).astype(np.float32)
    features[..., column["has_behaviour"]] = 1.0
    features[1, 1:7, column["has_behaviour"]] = 0.0  # list 1 holds 6 new non-targets already
    text = rng.normal(size=(items, 4)).astype(np.float32)
    query = rng.normal(size=(lists, 4)).astype(np.float32)
    before = features.copy()
    shown = show_decoys(features, cands, mask, labels, query, text, np.array([0, 1, 2]), 5)
    new = features[..., column["has_behaviour"]] == 0
    assert shown == 10 and new[0].sum() == 5 and new[1].sum() == 6 and new[2].sum() == 5
    np.testing.assert_array_equal(features[1], before[1])  # enough new items: untouched
    np.testing.assert_array_equal(features[:, 0], before[:, 0])  # targets untouched
    assert not new[2, 10:].any()  # padding never a decoy
    for i in (0, 2):
        for j in np.flatnonzero(new[i]):
            f = features[i, j]
            assert f[column["tt_score"]] == pytest.approx(text[cands[i, j]] @ query[i])
            assert f[column["log_count"]] == f[column["ii_score"]] == f[column["i2v_max"]] == 0
            # Their similarities to the query's text are theirs, as a new item's would be.
            assert f[column["text_mean"]] == before[i, j, column["text_mean"]]
    assert show_decoys(features, cands, mask, labels, query, text, np.array([0]), 0) == 0
