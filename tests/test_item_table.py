"""The item-item table: its estimators against EASE worked out by hand, the cut to M
rows, the settings' checks, .npz round trips and the TensorFlow scorer against numpy."""

import numpy as np
import pytest

from tfrec.errors import InputError
from tfrec.ranking import item_item
from tfrec.ranking import item_table
from tfrec.ranking.item_table import ItemItemTable, build_item_table, table_from_baskets
from session_helpers import sessions_of


def baskets_of(lists, num_items):
    return item_item.basket_matrix(sessions_of(lists), num_items)


def ease_by_hand(lists, num_items, lam):
    """B [num_items, num_items] of EASE over the items with events (numpy inverse)."""
    x = baskets_of(lists, num_items).toarray()
    active = np.flatnonzero(x.sum(axis=0) > 0)
    gram = x[:, active].T @ x[:, active]
    p = np.linalg.inv(gram + lam * np.eye(len(active)))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    out = np.zeros((num_items, num_items))
    out[np.ix_(active, active)] = b
    return out


def ridge_on_co_items(lists, num_items, lam):
    """Each column j: the ridge regression of X_j on the items co-occurring with j."""
    x = baskets_of(lists, num_items).toarray()
    gram = x.T @ x
    out = np.zeros((num_items, num_items))
    for j in range(num_items):
        co = np.flatnonzero(gram[j] > 0)
        co = co[co != j]
        if len(co):
            out[co, j] = np.linalg.solve(gram[np.ix_(co, co)] + lam * np.eye(len(co)),
                                         gram[co, j])
    return out


def dense_table(table):
    return table.matrix().toarray().astype(np.float64)


# Items 1-3 and 4-6: two groups whose items all co-occur, with unequal counts;
# item 7 only ever alone (no co-items); item 8 has no events; 0 is the OOV bucket.
CLIQUES = [[1, 2, 3], [1, 2], [2, 3], [1, 2], [4, 5], [4, 5, 6], [5, 6], [4, 6], [4, 5],
           [7], [7], [2, 1, 2]]
# A chain 1-2-3-4-5: 1 and 3 never co-occur, but EASE links them through 2.
CHAIN = [[1, 2], [2, 3], [3, 4], [4, 5], [1, 2], [2, 3, 4], [5, 4]]
NUM_ITEMS = 9


@pytest.mark.parametrize("neighbours", [1, 3, 7, 40])
def test_neighbourhoods_from_dense_rows_equal_the_sorted_ones(monkeypatch, neighbours):
    # Small counts over 29 items: many ties at each row's cut, settled by the lower index.
    rng = np.random.default_rng(neighbours)
    lists = [list(rng.choice(np.arange(1, 30), size=int(rng.integers(2, 8)), replace=False))
             for _ in range(200)]
    gram = item_table.sparse_gram(baskets_of(lists, 30))
    dense = item_table._dense_neighbourhoods(gram, neighbours, block_rows=7)
    assert item_table.neighbourhoods(gram, neighbours)[1].tolist() == dense[1].tolist()
    monkeypatch.setattr(item_table, "DENSE_ROWS_DENSITY", 2.0)  # the sorting path only
    splits, members = item_table.neighbourhoods(gram, neighbours)
    np.testing.assert_array_equal(dense[0], splits)
    np.testing.assert_array_equal(dense[1], members)
    assert np.diff(splits).max() == min(neighbours, 28)


def test_a_lambda_grid_reads_what_does_not_depend_on_lambda_once(monkeypatch):
    baskets = baskets_of(CHAIN + CLIQUES, NUM_ITEMS)
    made = []
    plan = item_table.NeighbourhoodPlan
    monkeypatch.setattr(item_table, "NeighbourhoodPlan",
                        lambda *a, **k: made.append(1) or plan(*a, **k))
    cache = {}
    for lam in (1.0, 5.0, 1.0):
        shared = table_from_baskets(baskets, lam, "neighbourhood", cache=cache)
        alone = table_from_baskets(baskets, lam, "neighbourhood")
        np.testing.assert_array_equal(shared.indices, alone.indices)
        np.testing.assert_array_equal(shared.weights, alone.weights)
    assert len(made) == 4  # one for the shared fits, one per fit alone
    other = baskets_of(CHAIN, NUM_ITEMS)  # other baskets: the cache is not read
    np.testing.assert_array_equal(
        dense_table(table_from_baskets(other, 2.0, "neighbourhood", cache=cache)),
        dense_table(table_from_baskets(other, 2.0, "neighbourhood")))


@pytest.mark.parametrize("estimator", ["ease", "neighbourhood"])
def test_a_table_keeping_every_co_item_is_ease(estimator):
    table = table_from_baskets(baskets_of(CLIQUES, NUM_ITEMS), 3.0, estimator,
                               table_size=NUM_ITEMS, neighbours=NUM_ITEMS)
    np.testing.assert_allclose(dense_table(table), ease_by_hand(CLIQUES, NUM_ITEMS, 3.0),
                               atol=1e-6)
    assert table.info["estimator"] == estimator


def test_dense_ease_on_a_chain_keeps_two_hop_weights():
    table = table_from_baskets(baskets_of(CHAIN, NUM_ITEMS), 2.0, "ease", NUM_ITEMS)
    expected = ease_by_hand(CHAIN, NUM_ITEMS, 2.0)
    np.testing.assert_allclose(dense_table(table), expected, atol=1e-6)
    assert abs(expected[1, 3]) > 1e-3  # a weight between items that never co-occur


def test_the_neighbourhood_estimator_regresses_on_co_items_only():
    table = table_from_baskets(baskets_of(CHAIN, NUM_ITEMS), 2.0, "neighbourhood",
                               NUM_ITEMS, NUM_ITEMS)
    got = dense_table(table)
    np.testing.assert_allclose(got, ridge_on_co_items(CHAIN, NUM_ITEMS, 2.0), atol=1e-6)
    assert got[1, 3] == 0.0


def test_neighbourhoods_are_the_strongest_co_items():
    # item 1 co-occurs with 2 three times, with 3 twice, with 4 once
    lists = [[1, 2], [1, 2], [1, 2, 3], [1, 3], [1, 4]]
    gram = item_table.sparse_gram(baskets_of(lists, 5))
    splits, members = item_table.neighbourhoods(gram, 2)
    assert members[splits[1]:splits[2]].tolist() == [2, 3]
    assert members[splits[4]:splits[5]].tolist() == [1]
    assert splits[1] - splits[0] == 0  # index 0 has no events
    x = baskets_of(lists, 5).toarray()
    full = x.T @ x
    co = [2, 3]
    expected = np.linalg.solve(full[np.ix_(co, co)] + 5.0 * np.eye(2), full[co, 1])
    table = table_from_baskets(baskets_of(lists, 5), 5.0, "neighbourhood", 5, neighbours=2)
    got = dense_table(table)
    np.testing.assert_allclose(got[co, 1], expected, atol=1e-6)
    assert got[4, 1] == 0.0  # 4 is not among 1's two strongest co-items


@pytest.mark.parametrize("estimator", ["ease", "neighbourhood"])
def test_cutting_to_m_keeps_each_rows_m_largest_weights(estimator):
    full = dense_table(table_from_baskets(baskets_of(CHAIN + CLIQUES, NUM_ITEMS), 1.0,
                                          estimator, NUM_ITEMS, NUM_ITEMS))
    table = table_from_baskets(baskets_of(CHAIN + CLIQUES, NUM_ITEMS), 1.0, estimator,
                               table_size=2, neighbours=NUM_ITEMS)
    for item in range(NUM_ITEMS):
        cols, vals = table.row(item)
        nonzero = np.flatnonzero(full[item])
        expected = nonzero[np.lexsort((nonzero, -full[item, nonzero]))][:2]
        assert cols.tolist() == expected.tolist()
        np.testing.assert_allclose(vals, full[item, expected], atol=1e-6)
    assert max(np.diff(table.row_splits)) == 2
    assert np.diff(table.row_splits)[2] == 2 and len(np.flatnonzero(full[2])) > 2


@pytest.mark.parametrize("estimator", ["ease", "neighbourhood"])
def test_items_without_co_items_have_empty_rows(estimator):
    table = table_from_baskets(baskets_of(CLIQUES, NUM_ITEMS), 1.0, estimator)
    lengths = np.diff(table.row_splits)
    assert lengths[7] == 0 and lengths[8] == 0 and lengths[0] == 0
    assert lengths[1] == 2 and lengths[4] == 2
    assert table.top_items([7], 5)[0].tolist() == []


def test_auto_is_dense_ease_where_the_table_holds_it_whole_up_to_the_limit():
    baskets = baskets_of(CHAIN, NUM_ITEMS)  # 5 active items
    small = table_from_baskets(baskets, 1.0, "auto", table_size=4, dense_max_items=5)
    large = table_from_baskets(baskets, 1.0, "auto", table_size=4, dense_max_items=4)
    cut = table_from_baskets(baskets, 1.0, "auto", table_size=3, dense_max_items=5)
    assert small.info["estimator"] == "ease" and large.info["estimator"] == "neighbourhood"
    assert cut.info["estimator"] == "neighbourhood"


@pytest.mark.parametrize("settings, key", [
    ({"table_size": 0}, "ranking.table_size"),
    ({"neighbours": 0}, "ranking.neighbours"),
    ({"estimator": "svd"}, "ranking.estimator"),
    ({"lam": 0.0}, "ranking.ease_lambda"),
    ({"lam": None, "lambdas": (10, -1)}, "ranking.ease_lambdas"),
    ({"lam": None, "lambdas": ()}, "ranking.ease_lambdas"),
])
def test_bad_settings_are_refused_naming_the_key(settings, key):
    arguments = {"lam": 1.0, **settings}
    with pytest.raises(InputError) as caught:
        build_item_table(sessions_of(CLIQUES), NUM_ITEMS, **arguments)
    assert caught.value.key == key


def test_lambda_is_chosen_on_the_validation_slice_and_the_table_refitted():
    rng = np.random.default_rng(0)
    groups = [np.arange(1, 11), np.arange(11, 21), np.arange(21, 31)]
    lists = [rng.choice(groups[rng.integers(3)], size=3, replace=False).tolist()
             for _ in range(300)]
    table = build_item_table(sessions_of(lists), 31, "neighbourhood", lambdas=(1, 1000),
                             neighbours=50)
    tuning = table.info["tuning"]
    assert tuning["validation_cases"] == 30 and tuning["fit_sessions"] == 270
    assert tuning["chosen"] == max((1, 1000), key=lambda v: (tuning["hr@10"][str(v)],
                                                             tuning["ndcg@10"][str(v)], -v))
    refit = table_from_baskets(baskets_of(lists, 31), tuning["chosen"], "neighbourhood",
                               neighbours=50)
    np.testing.assert_array_equal(table.weights, refit.weights)


def test_dense_ease_above_its_limit_is_refused(monkeypatch):
    monkeypatch.setattr(item_table, "EASE_MAX_ITEMS", 4)
    with pytest.raises(InputError) as caught:
        table_from_baskets(baskets_of(CHAIN, NUM_ITEMS), 1.0, "ease")
    assert caught.value.key == "ranking.estimator"
    table_from_baskets(baskets_of(CHAIN, NUM_ITEMS), 1.0, "neighbourhood")


def test_no_validation_case_is_refused():
    with pytest.raises(InputError) as caught:
        build_item_table(sessions_of([[1], [2]]), 3)
    assert caught.value.key == "ranking.ease_lambdas"


def test_scores_top_items_and_candidates():
    table = ItemItemTable(row_splits=[0, 0, 2, 3, 3], indices=[3, 2, 1], weights=[0.5, -1, 2])
    scores = table.scores([[1, 2], [2, 2], []])
    np.testing.assert_array_equal(scores, [[0, 2, -1, 0.5], [0, 2, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(table.scores([[1, 2]], np.array([[3, -1, 1]])),
                                  [[0.5, 0, 2]])
    items, totals = table.top_items([1], 5)
    assert items.tolist() == [3, 2] and totals.tolist() == [0.5, -1.0]
    assert table.top_items([1, 2], 5)[0].tolist() == [3]  # 1 and 2 are the query's own
    assert table.top_items([1], 5, exclude=[3])[0].tolist() == [2]


def test_inconsistent_arrays_are_refused():
    with pytest.raises(ValueError):
        ItemItemTable(row_splits=[0, 2, 1], indices=[1, 2], weights=[1.0, 1.0])


def test_npz_round_trip(tmp_path):
    table = table_from_baskets(baskets_of(CLIQUES, NUM_ITEMS), 2.0, "neighbourhood")
    table.save(tmp_path / "table.npz")
    loaded = ItemItemTable.load(tmp_path / "table.npz")
    for name in ("row_splits", "indices", "weights"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(table, name))
        assert getattr(loaded, name).dtype == getattr(table, name).dtype
    assert loaded.info == table.info
    # A path without .npz is written and read as given; exclude takes any array-like.
    table.save(tmp_path / "table")
    assert (tmp_path / "table").exists() and not (tmp_path / "table.npz.npz").exists()
    again = ItemItemTable.load(tmp_path / "table")
    np.testing.assert_array_equal(again.weights, table.weights)
    query = [1]
    ids, _ = table.top_items(query, 5)
    for exclude in (np.array(ids[:2]), list(ids[:2]), set(ids[:2].tolist())):
        kept, _ = table.top_items(query, 5, exclude=exclude)
        assert not set(kept.tolist()) & set(ids[:2].tolist())


# -- the TensorFlow layer -----------------------------------------------------------------

def random_table(num_items=40, seed=0):
    rng = np.random.default_rng(seed)
    lists = [rng.choice(np.arange(1, num_items - 3), size=rng.integers(2, 6),
                        replace=False).tolist() for _ in range(400)]
    return table_from_baskets(baskets_of(lists, num_items), 5.0, "neighbourhood",
                              table_size=6, neighbours=12)


def histories():
    # padding, repeats, an item without a row (num_items - 1) and an empty history
    return [[3, 5, 5, 0, 0], [1, 2, 3, 4, 6], [39, 0, 0, 0, 0], [0, 0, 0, 0, 0],
            [7, 0, 0, 0, 0]]


def test_the_layer_scores_equal_numpy():
    from tfrec.ranking.item_scorer import ItemItemScorer

    table = random_table()
    layer = ItemItemScorer.from_table(table)
    history = np.array(histories(), np.int32)
    queries = [[i for i in row if i > 0] for row in histories()]
    rng = np.random.default_rng(1)
    candidates = rng.integers(-1, 40, size=(len(history), 30))
    got = layer.score(history, candidates).numpy()
    np.testing.assert_array_equal(got, table.scores(queries, candidates))
    assert np.count_nonzero(got) > 10
    called = layer({"history": history, "candidate_ids": candidates}).numpy()
    np.testing.assert_array_equal(called, got)


def test_the_layer_candidates_equal_numpy_top_items():
    from tfrec.ranking.item_scorer import ItemItemScorer

    table = random_table()
    layer = ItemItemScorer.from_table(table)
    ids, scores = layer.candidates(np.array(histories(), np.int32), 8)
    ids, scores = ids.numpy(), scores.numpy()
    assert ids.shape == (5, 8) and ids.dtype == np.int32
    for row, history in enumerate(histories()):
        query = [i for i in history if i > 0]
        items, totals = table.top_items(query, 8)
        count = len(items)
        np.testing.assert_array_equal(scores[row, :count], totals)
        np.testing.assert_array_equal(ids[row, :count], items)
        assert (ids[row, count:] == -1).all() and np.isneginf(scores[row, count:]).all()
    assert (ids[1] >= 0).all()  # a long history fills all 8
    assert (ids[3] == -1).all()


def test_the_layer_round_trips_through_its_config_and_weights(tmp_path):
    import tf_keras as keras

    from tfrec.ranking.item_scorer import ItemItemScorer

    table = random_table(seed=3)
    layer = ItemItemScorer.from_table(table)
    assert layer.get_config()["num_items"] == 40
    assert layer.get_config()["num_entries"] == table.num_entries
    assert not layer.trainable_weights
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, ItemItemScorer)
    clone.set_weights(layer.get_weights())
    history = np.array(histories(), np.int32)
    np.testing.assert_array_equal(clone.candidates(history, 5)[0].numpy(),
                                  layer.candidates(history, 5)[0].numpy())


def test_generated_baskets_stay_inside_one_planted_cluster():
    from tfrec.data.synthetic import generate_baskets, item_clusters

    items, splits = generate_baskets(5000, 300, num_clusters=6, seed=4)
    assert splits[-1] == len(items) and (np.diff(splits) >= 2).all()
    assert items.min() >= 1 and items.max() <= 300
    clusters = item_clusters(300, 6, seed=4)[items - 1]
    session = np.repeat(np.arange(len(splits) - 1), np.diff(splits))
    first = clusters[splits[:-1]]
    assert (clusters == first[session]).all()
    assert len(np.unique(first)) == 6


def test_gram_blocks_and_the_whole_gram_give_the_same_weights():
    rng = np.random.default_rng(5)
    lists = [rng.choice(np.arange(40), size=rng.integers(2, 7), replace=False).tolist()
             for _ in range(300)]
    gram = item_table.sparse_gram(baskets_of(lists, 40))

    def entries(**budgets):
        rows, cols, values = item_table.neighbourhood_weights(gram, 3.0, 10, **budgets)
        return sparse_dense(rows, cols, values)

    def sparse_dense(rows, cols, values):
        out = np.zeros((40, 40))
        out[rows, cols] = values
        return out

    whole = entries()
    blocks = entries(dense_budget=0, gram_budget=30 ** 2, solve_budget=10 ** 2 * 4)
    np.testing.assert_allclose(blocks, whole, rtol=1e-6, atol=1e-7)
    assert np.count_nonzero(whole) > 300


def test_from_dense_keeps_each_rows_strongest_non_zero_entries():
    weights = np.array([[0, 3, -1, 2], [5, 0, 4, 4], [0, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    table = ItemItemTable.from_dense(weights, table_size=2)
    assert table.row_splits.tolist() == [0, 2, 4, 4, 5]
    assert table.indices.tolist() == [1, 3, 0, 2, 0]  # ties to the lower index
    assert table.weights.tolist() == [3, 2, 5, 4, 1]
    np.testing.assert_array_equal(ItemItemTable.from_dense(weights).matrix().toarray(), weights)


@pytest.mark.parametrize("starts, limits", [([0, 5, 5, 9], [3, 5, 9, 12]), ([4, 4], [4, 4]),
                                            ([], [])])
def test_spans_and_select_equal_ragged_range_and_boolean_mask(starts, limits):
    import tensorflow as tf

    from tfrec.ranking.item_scorer import select, spans

    starts, limits = tf.constant(starts, tf.int64), tf.constant(limits, tf.int64)
    flat, owner = spans(starts, limits)
    expected = tf.ragged.range(starts, limits)
    np.testing.assert_array_equal(flat.numpy(), expected.flat_values.numpy())
    np.testing.assert_array_equal(owner.numpy(), expected.value_rowids().numpy())
    values = tf.reshape(tf.range(12), [3, 4])
    mask = values % 3 == 0
    picked, doubled = select(mask, values, values * 2)
    np.testing.assert_array_equal(picked.numpy(), tf.boolean_mask(values, mask).numpy())
    np.testing.assert_array_equal(doubled.numpy(), [0, 6, 12, 18])
    assert select(tf.zeros([2, 2], tf.bool), values[:2, :2]).shape == (0,)
