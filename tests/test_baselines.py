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
