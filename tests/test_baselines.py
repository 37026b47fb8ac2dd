"""EASE and ItemKNN: the closed forms by hand, the validation slice, the catalogue limit."""

import numpy as np
import pytest

from tfrec.data.vocab import OOV_TOKEN, ItemVocabulary
from tfrec.errors import InputError
from tfrec.evaluate import baselines
from tfrec.ranking import item_item
from tfrec.metrics import target_ranks
from session_helpers import sessions_of


def vocabulary(num_items, counts):
    ids = np.array([OOV_TOKEN] + [f"i{j}" for j in range(1, num_items)], dtype=object)
    return ItemVocabulary(ids=ids, text=np.full(num_items, "", dtype=object),
                          market=np.full(num_items, -1, np.int32), market_names=[],
                          counts=np.asarray(counts, np.int64))


# Items 1-4 bought in four baskets (item 1 twice in the first: counted once);
# item 5 is cold (text only, no events); 0 is the OOV bucket.
BASKETS = [[1, 2, 1], [1, 2, 3], [2, 3, 4], [1, 4]]
X = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 1]], dtype=np.float64)
QUERIES = [[1], [2, 3], [4]]


@pytest.fixture
def tiny():
    return sessions_of(BASKETS), vocabulary(6, [0, 3, 3, 2, 2, 0])


def scores(emb):
    """[queries, items] dense scores, as target_ranks computes them."""
    return np.asarray(emb.queries @ emb.items.T)


def expected_ranks(full_scores, targets, queries):
    ranks = []
    for row, (target, query) in enumerate(zip(targets, queries)):
        s = full_scores[row].copy()
        s[[0] + list(query)] = -np.inf
        assert (s == s[target]).sum() == 1  # no ties: the rank is the count above
        ranks.append(int((s > s[target]).sum()))
    return ranks


def test_ease_against_the_closed_form_by_hand(tiny):
    sessions, vocab = tiny
    lam = 2.0
    gram = X.T @ X + lam * np.eye(4)
    p = np.linalg.inv(gram)
    b = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            b[i, j] = 0.0 if i == j else -p[i, j] / p[j, j]
    # The matrix form: B = I - P diag(1/diag P), whose diagonal is 1 - 1 = 0.
    np.testing.assert_allclose(b, np.eye(4) - p @ np.diag(1.0 / np.diag(p)), atol=1e-12)
    active, gram_1_to_4 = item_item.active_gram(item_item.basket_matrix(sessions, vocab.size))
    assert active.tolist() == [1, 2, 3, 4]  # the cold item and OOV stay out of the algebra
    np.testing.assert_array_equal(gram_1_to_4, X.T @ X)
    weights = item_item.ease_weights(gram_1_to_4, lam)
    np.testing.assert_array_equal(gram_1_to_4, X.T @ X)  # not modified
    np.testing.assert_allclose(weights, b, rtol=1e-5, atol=1e-7)
    assert not np.diag(weights).any()

    emb = baselines.ease(sessions, vocab, QUERIES, lam=lam)
    assert emb.tuning is None
    full_b = np.zeros((6, 6))
    full_b[1:5, 1:5] = b
    x_query = np.zeros((3, 6))
    for row, q in enumerate(QUERIES):
        x_query[row, q] = 1.0
    np.testing.assert_allclose(scores(emb), x_query @ full_b, rtol=1e-5, atol=1e-7)
    assert not scores(emb)[:, 5].any()  # cold item: all-zero column, score 0
    targets = np.array([3, 1, 2])
    valid = np.ones(6, bool)
    valid[0] = False
    ranks = target_ranks(emb.queries, emb.items, targets, QUERIES, valid)
    assert ranks.tolist() == expected_ranks(x_query @ full_b, targets, QUERIES)


def test_itemknn_against_cosine_by_hand(tiny):
    sessions, vocab = tiny
    counts = X.T @ X
    s = counts / np.sqrt(np.outer(np.diag(counts), np.diag(counts)))
    np.fill_diagonal(s, 0.0)
    _, gram = item_item.active_gram(item_item.basket_matrix(sessions, vocab.size))
    weights = item_item.cosine_weights(gram, 0)
    np.testing.assert_allclose(weights, s, rtol=1e-6)
    # Item 1 co-occurs with 2 twice: cosine 2 / sqrt(3 * 3).
    assert weights[0, 1] == pytest.approx(2 / 3)
    # One neighbour per item: each row keeps only its largest entry.
    top1 = item_item.cosine_weights(gram, 1)
    np.testing.assert_array_equal(gram, X.T @ X)  # not modified
    assert ((top1 > 0).sum(axis=1) == 1).all()
    assert np.allclose(top1.max(axis=1), s.max(axis=1))

    emb = baselines.itemknn(sessions, vocab, QUERIES, neighbours=0)
    full_s = np.zeros((6, 6))
    full_s[1:5, 1:5] = s
    x_query = np.zeros((3, 6))
    for row, q in enumerate(QUERIES):
        x_query[row, q] = 1.0
    np.testing.assert_allclose(scores(emb), x_query @ full_s, rtol=1e-6)


def clustered_sessions(num_sessions=400, seed=0):
    """Items 1-10 bought together, 11-20 together; item 21 is cold."""
    rng = np.random.RandomState(seed)
    lists = []
    for s in range(num_sessions):
        group = np.arange(1, 11) if s % 2 else np.arange(11, 21)
        lists.append(rng.choice(group, rng.randint(2, 6), replace=False).tolist())
    counts = np.bincount(np.concatenate(lists), minlength=22)
    return sessions_of(lists), vocabulary(22, counts)


def test_validation_slice_holds_out_whole_training_sessions():
    sessions, vocab = clustered_sessions()
    matrix = item_item.basket_matrix(sessions, vocab.size)
    held = item_item.validation_slice(matrix, share=0.1, max_cases=30, seed=3)
    assert len(held) == 30 and held.fit.shape[0] == 400 - 30
    rows = [set(matrix.indices[a:b].tolist()) for a, b in
            zip(matrix.indptr[:-1], matrix.indptr[1:])]
    fit_rows = [set(held.fit.indices[a:b].tolist()) for a, b in
                zip(held.fit.indptr[:-1], held.fit.indptr[1:])]
    for query, target in zip(held.queries, held.targets):
        assert target not in query
        assert set(query) | {int(target)} in rows
    # The fit has every training row but the held-out ones.
    assert sorted(map(sorted, fit_rows + [set(q) | {int(t)} for q, t in
                                          zip(held.queries, held.targets)])) == \
        sorted(map(sorted, rows))


def test_the_setting_is_chosen_on_training_sessions_never_on_the_test_cases(monkeypatch):
    sessions, vocab = clustered_sessions()
    training = {frozenset(s) for s in sessions.to_lists()}
    seen = []
    real = baselines.target_ranks

    def spy(queries, items, targets, exclude, *args, **kwargs):
        seen.append([frozenset(q) | {int(t)} for q, t in zip(exclude, targets)])
        return real(queries, items, targets, exclude, *args, **kwargs)

    monkeypatch.setattr(baselines, "target_ranks", spy)
    test_a = [[1, 2], [11, 12]]
    test_b = [[3], [13, 14, 15], [21]]
    emb_a = baselines.ease(sessions, vocab, test_a, k=3, lambdas=(1, 10, 100))
    assert len(seen) == 3  # one validation ranking per λ, nothing else
    assert all(case in training for call in seen for case in call)
    emb_b = baselines.ease(sessions, vocab, test_b, k=3, lambdas=(1, 10, 100))
    drop = {"seconds"}
    assert ({k: v for k, v in emb_a.tuning.items() if k not in drop}
            == {k: v for k, v in emb_b.tuning.items() if k not in drop})
    tuning = emb_a.tuning
    assert tuning["parameter"] == "lambda" and tuning["validation_cases"] == 40
    assert tuning["fit_sessions"] == 360
    assert set(tuning["hr@3"]) == {"1", "10", "100"}
    assert tuning["hr@3"][str(tuning["chosen"])] == max(tuning["hr@3"].values())
    knn = baselines.itemknn(sessions, vocab, test_a, k=3, grid=(2, 0))
    assert set(knn.tuning["hr@3"]) == {"2", "all"} and knn.tuning["parameter"] == "neighbours"


def test_both_find_the_co_bought_group():
    sessions, vocab = clustered_sessions()
    queries = [[1, 2, 3], [11, 12, 13]]
    valid = np.ones(vocab.size, bool)
    valid[0] = False
    # (ItemKNN with every neighbour: with the few kept by a small N, an item
    # of the group may be no query item's neighbour and score 0.)
    for method, setting in ((baselines.ease, {}), (baselines.itemknn, {"neighbours": 0})):
        emb = method(sessions, vocab, queries, k=5, **setting)
        s = scores(emb)
        # The other 7 items of the query's group come first.
        for row, group in enumerate((range(4, 11), range(14, 21))):
            row_scores = np.where(valid, s[row], -np.inf)
            row_scores[queries[row]] = -np.inf
            assert set(np.argsort(-row_scores)[:7]) == set(group)
        assert not s[:, 21].any()


def test_item_item_baselines_stop_above_the_catalogue_limit(tiny):
    sessions, vocab = tiny
    assert baselines.item_item_skip_reason(5, 5) is None
    assert baselines.item_item_skip_reason(30_001, 30_000) == (
        "skipped: catalogue of 30,001 items is above the 30,000-item limit of the item-item "
        "baselines")
    with pytest.raises(InputError, match="catalogue of 5 items is above the 4-item limit"):
        baselines.ease(sessions, vocab, QUERIES, lam=1.0, max_items=4)
    with pytest.raises(InputError, match="above the 4-item limit"):
        baselines.itemknn(sessions, vocab, QUERIES, max_items=4)


def test_hold_out_hides_one_item_of_each_held_row_and_fits_on_the_rest():
    lists = [[1, 2, 3], [2, 4], [3, 5, 6, 7], [1, 4]]
    baskets = item_item.basket_matrix(sessions_of(lists), 8)
    cases = item_item.hold_out(baskets, np.array([0, 2]), np.random.default_rng(0))
    assert cases.fit.shape[0] == 2
    assert [sorted(r) for r in cases.fit.tolil().rows] == [[2, 4], [1, 4]]
    for row, query, target in zip([0, 2], cases.queries, cases.targets):
        assert target not in query and sorted(query + [int(target)]) == sorted(lists[row])


def texted(vocab, texts):
    """The vocabulary with item texts (index 0 the OOV bucket, no text)."""
    return ItemVocabulary(ids=vocab.ids, text=np.array([""] + texts, dtype=object),
                          market=vocab.market, market_names=[], counts=vocab.counts)


def clustered_with_text():
    """`clustered_sessions`, items 1-10 'red ...', 11-20 'blue ...', cold item 21 'red jug'."""
    sessions, vocab = clustered_sessions()
    kinds = ["cup", "mug", "plate", "bowl", "jar", "pot", "tin", "box", "bag", "hat"]
    return sessions, texted(vocab, [f"red {k}" for k in kinds] + [f"blue {k}" for k in kinds]
                            + ["red jug"])


def test_the_hybrid_scores_warm_items_as_ease_and_new_ones_by_their_text():
    sessions, vocab = clustered_with_text()
    queries = [[1, 2, 3], [11, 12], [4]]
    hybrid = baselines.ease_tfidf(sessions, vocab, queries, lam=10.0, weight=0.5)
    assert hybrid.tuning is None and hybrid.weight == 0.5
    ease = baselines.ease(sessions, vocab, queries, lam=10.0)
    text = baselines.tfidf(vocab, queries)
    full = scores(hybrid) + hybrid.extra_scores(0, len(queries))
    np.testing.assert_allclose(full[:, 1:21], scores(ease)[:, 1:21], atol=1e-6)
    cosine = np.asarray((text.queries @ text.items.T).toarray())
    np.testing.assert_allclose(full[:, 21], 0.5 * cosine[:, 21], atol=1e-6)
    assert full[0, 21] > 0 and full[1, 21] == 0  # 'red jug' meets the red query only
    # Ranked with the protocol's ties and exclusions, as one dense matrix would be.
    targets = np.array([21, 13, 5])
    valid = np.ones(vocab.size, bool)
    valid[0] = False
    ranks = target_ranks(hybrid.queries, hybrid.items, targets, queries, valid,
                         extra_scores=hybrid.extra_scores)
    assert ranks.tolist() == expected_ranks(full, targets, queries)
    with pytest.raises(ValueError, match="cannot be combined"):
        target_ranks(hybrid.queries, hybrid.items, targets, queries, valid,
                     target_embeddings=np.zeros((3, hybrid.items.shape[1])),
                     extra_scores=hybrid.extra_scores)


def test_the_new_item_weight_is_chosen_on_training_sessions_with_targets_shown_as_new():
    sessions, vocab = clustered_with_text()
    first = baselines.ease_tfidf(sessions, vocab, [[1, 2]], lam=10.0, k=3,
                                 weights=(0.01, 0.1, 1.0, 10.0))
    [tuning] = first.tuning
    assert tuning["parameter"] == "new_item_weight" and tuning["validation_cases"] == 40
    assert tuning["new_share"] == pytest.approx(1 / 21, abs=1e-4)  # item 21 of 21
    s = tuning["new_share"]
    for w in ("0.01", "0.1", "1.0", "10.0"):
        assert tuning["hr@3"][w] == pytest.approx(
            (1 - s) * tuning["hr@3 as is"][w] + s * tuning["hr@3 as new"][w], abs=1e-4)
    # A target shown as new is found by its words only under a weight that counts.
    assert tuning["hr@3 as new"]["10.0"] > tuning["hr@3 as new"]["0.01"]
    assert tuning["hr@3"][str(tuning["chosen"])] == max(tuning["hr@3"].values())
    assert first.weight == tuning["chosen"]
    # The test cases play no part: other queries, the same choice and figures.
    other = baselines.ease_tfidf(sessions, vocab, [[11], [3, 4, 5]], lam=10.0, k=3,
                                 weights=(0.01, 0.1, 1.0, 10.0))
    drop = {"seconds"}
    assert ({k: v for k, v in other.tuning[0].items() if k not in drop}
            == {k: v for k, v in tuning.items() if k not in drop})
    # Both choices when λ is not given; the catalogue limit as EASE's.
    both = baselines.ease_tfidf(sessions, vocab, [[1, 2]], k=3, lambdas=(1, 10),
                                weights=(0.1, 1.0))
    assert [t["parameter"] for t in both.tuning] == ["lambda", "new_item_weight"]
    with pytest.raises(InputError, match="ease_tfidf: catalogue of 21 items"):
        baselines.ease_tfidf(sessions, vocab, [[1]], lam=1.0, weight=1.0, max_items=20)
