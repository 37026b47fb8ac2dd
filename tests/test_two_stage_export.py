"""`tfrec export` of a run with a ranking stage: both stages in one signature call."""

import dataclasses
import logging
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tfrec.cli import main
from tfrec.errors import InputError
from tfrec.exporter import CatalogueUpdate, export, load_saved_model, update_catalogue
from tfrec.exporter.layout import VersionFolder
from tfrec.index import IndexConfig
from tfrec.ranking import features as F
from tfrec.ranking.serving import merge_order, serving_tables, TwoStageScorer
from tfrec.run import load_run
from tfrec.run_folder import RunFolder

K = 10
N = 20
TEXT_SLOTS = 5  # on here (off by default): the graph picks them as numpy does


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory):
    """A run of both stages on generated data (about 10 s)."""
    from session_helpers import train_generated_run
    from tfrec.ranking.two_stage import train

    return train_generated_run(
        tmp_path_factory.mktemp("two_stage"), train,
        ["data.pairs.batch_size=512", "train.learning_rate=0.01", f"ranking.num_candidates={N}",
         "ranking.epochs=2", "ranking.ease_lambda=10", f"ranking.text_slots={TEXT_SLOTS}"],
        num_events=12_000, num_items=120, num_users=1000, num_cold=6, seed=3)


@pytest.fixture(scope="module")
def stage(two_stage_run):
    from tfrec.ranking.two_stage import load_stage

    _, vocab, model, _ = load_run(two_stage_run)
    return vocab, model, load_stage(two_stage_run, model)


EXPORT_WARNINGS = []  # what the `exports` fixture's export from Python logged


class _Records(logging.Handler):
    def __init__(self, level):
        super().__init__(level)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def exports(two_stage_run, tmp_path_factory):
    """Brute-force exports: both stages; stage 2 off (through the command line); and the
    same run without its ranking stage (stage 1's code path)."""
    base = tmp_path_factory.mktemp("models")
    # The warnings of an export from Python (test_an_export_from_python_warns_of_no_...).
    handler = _Records(logging.WARNING)
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        on = export(two_stage_run, base / "on", IndexConfig(kind="brute_force"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    EXPORT_WARNINGS[:] = [r.getMessage() for r in handler.records]
    assert main(["-q", "export", "--run", str(two_stage_run), "--model-dir", str(base / "off"),
                 "--index", "brute_force", "--max-k", str(N), "--no-ranking-stage",
                 "--no-serving-config"]) == 0
    stage1_run = base / "stage1_run"
    shutil.copytree(two_stage_run, stage1_run, ignore=shutil.ignore_patterns("ranking"))
    # A run whose training stopped before its ranking stage is refused, naming --resume ...
    with pytest.raises(InputError, match="ranking stage was never finished.*--resume"):
        export(stage1_run, base / "alone", IndexConfig(kind="brute_force", max_k=N))
    assert not (base / "alone" / "1").exists()
    # ... and one trained without a ranking stage is stage 1 alone.
    folder = RunFolder(stage1_run)
    config = folder.read_config()
    folder.write_config(dataclasses.replace(
        config, ranking=dataclasses.replace(config.ranking, enabled=False)))
    alone = export(stage1_run, base / "alone", IndexConfig(kind="brute_force", max_k=N))
    return on.path, base / "off" / "1", alone.path


def padded(sessions):
    width = max(len(s) for s in sessions)
    return tf.constant([s + [""] * (width - len(s)) for s in sessions])


def expected_top_k(stage, query_embeddings, queries, names, k=K):
    """(ids [n, k], scores [n, k], comparable [n]) of the in-process ranking stage's top
    k; `comparable`: the query's two source lists have no (near) ties, whose order
    numpy's partial sort and the graph's top k may break differently (changing an
    item's place in a list, a feature)."""
    query_embeddings = np.asarray(query_embeddings, np.float32)
    cands, mask, scores = stage.score(query_embeddings, queries)
    scores = np.where(mask, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (np.asarray(names)[np.take_along_axis(cands, order, 1)],
            np.take_along_axis(scores, order, 1), ~tied_sources(stage, query_embeddings,
                                                                queries))


def tied_sources(stage, query_embeddings, queries, tol=1e-5):
    """[n] bool: the two-tower's or the table's top N + 1 scores of the query hold two
    within `tol`."""
    from tfrec.ranking.item_item import multi_hot

    tables = stage.tables
    two_tower = query_embeddings @ tables.item_embeddings.T
    table = np.asarray((multi_hot(queries, len(tables.counts))
                        @ tables.table.matrix().astype(np.float64)).toarray(), np.float32)
    tied = np.zeros(len(queries), bool)
    for row, query in enumerate(queries):
        for values, positive in ((two_tower[row], False), (table[row], True)):
            values = np.delete(values, [0, *query])
            top = np.sort(values[values > 0] if positive else values)
            top = top[::-1][:stage.num_candidates + 1]
            tied[row] |= bool((np.diff(top) > -tol).any())
    return tied


def assert_same_top_k(out, ids, scores, comparable):
    """The exported top k equal the in-process one on the comparable rows (most rows)."""
    assert comparable.mean() >= 0.5, "too few queries without ties to compare"
    got = out["item_ids"].numpy().astype(str)[comparable]
    np.testing.assert_array_equal(got, ids[comparable])
    np.testing.assert_allclose(out["scores"].numpy()[comparable], scores[comparable],
                               rtol=1e-5, atol=1e-5)


def assert_served_as_in_process(model, stage, sessions):
    """`serving_default` of the loaded export `model` on `sessions` gives the in-process
    ranking stage's top K (its query: each session's known items, each once); returns
    the signature's output."""
    vocab, _, ranking = stage
    out = model.signatures["serving_default"](item_ids=padded(sessions), k=tf.constant(K))
    embeddings = model.signatures["embed_query"](item_ids=padded(sessions))["embeddings"]
    queries = [list(dict.fromkeys(int(i) for i in vocab.lookup(np.asarray(s, dtype=object))
                                  if i > 0)) for s in sessions]
    ids, scores, comparable = expected_top_k(ranking, embeddings.numpy(), queries,
                                             vocab.ids.astype(str))
    assert_same_top_k(out, ids, scores, comparable)
    return out, queries


def sessions_of(vocab, count, seed=0):
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in vocab.ids[1:]]
    return [[ids[j] for j in rng.choice(len(ids), rng.integers(1, 5), replace=False)]
            for _ in range(count)]


def two_tower_scores(run, stage, count, seed):
    """(queries: `count` generated sessions as vocabulary indices, their query embeddings
    [count, d] float32, the two-tower's scores of every item [count, V], padding at -inf)."""
    from tfrec.data.sequences import histories_from_lists

    vocab, model, ranking = stage
    queries = [[int(i) for i in vocab.lookup(np.asarray(s, dtype=object))]
               for s in sessions_of(vocab, count, seed=seed)]
    q = np.asarray(model.query_embeddings(histories_from_lists(
        queries, load_run(run)[0].model.history_length)), np.float32)
    scores = q @ ranking.tables.item_embeddings.T
    scores[:, 0] = -np.inf
    return queries, q, scores


# The merge ---------------------------------------------------------------------------------

@pytest.mark.parametrize("share,new_slots", [(0.0, 0), (0.3, 0), (0.5, 0), (1 / 3, 0),
                                             (1.0, 0), (0.5, 2), (0.3, 3), (0.0, 2), (1.0, 3)])
def test_merge_in_tensorflow_equals_merge_candidates(share, new_slots):
    class Merge(TwoStageScorer):  # the merge alone, no tables
        def __init__(self, n, share, new):
            tf.Module.__init__(self)
            self.num_candidates = n
            order, rank, used = merge_order(n, share)
            self._order = tf.constant(order)
            self._table_rank, self._tt_rank = tf.constant(rank[:n]), tf.constant(rank[n:])
            self._use_table, self._use_tt = bool(used[0]), bool(used[n])
            self.new_slots, self._new = new_slots, tf.constant(new)

    n, rows = 8, 100
    rng = np.random.default_rng(int(share * 100) + new_slots)
    new = rng.random(16) < 0.3  # items without behaviour (never in the table's lists)
    new[0] = False
    lists = {name: (np.zeros((rows, n), np.int32), np.zeros((rows, n), bool))
             for name in ("table", "tt")}
    expected, moved = [], 0
    for row in range(rows):
        drawn = {}
        for name, length in (("table", rng.integers(0, n + 1)), ("tt", n)):
            pool = np.arange(1, 16) if name == "tt" else np.flatnonzero(~new)[1:]
            drawn[name] = rng.permutation(pool)[:length]
            lists[name][0][row, :len(drawn[name])] = drawn[name]
            lists[name][1][row, :len(drawn[name])] = True
        expected.append(F.merge_candidates(drawn["tt"], drawn["table"], [], n, share, new,
                                           new_slots))
        moved += not np.array_equal(expected[-1][0], F.merge_candidates(
            drawn["tt"], drawn["table"], [], n, share)[0])
    merge = Merge(n, share, new)
    tt_ids, tt_valid = lists["tt"]
    order = None
    if new_slots:
        tt_ids, tt_valid, order = merge.promote_new(tf.constant(tt_ids), tf.constant(tt_valid))
    got = [x.numpy() for x in merge.merge(*lists["table"], tt_ids, tt_valid, order)]
    for row, (merged, tt_place, table_place) in enumerate(expected):
        m = len(merged)
        assert got[1][row].sum() == m and not got[0][row, m:].any()
        np.testing.assert_array_equal(got[0][row, :m], merged)
        np.testing.assert_array_equal(got[2][row, :m], tt_place)
        np.testing.assert_array_equal(got[3][row, :m], table_place)
    # The promotion changed some lists (when the two-tower has slots to give).
    assert (moved > 0) == (new_slots > 0 and share < 1.0)


def test_new_items_move_to_the_front_of_the_two_tower_list():
    new = np.zeros(10, bool)
    new[[6, 8, 9]] = True
    two_tower = np.array([1, 2, 3, 6, 4, 8, 5, 9])
    table = np.array([7, 2])
    merged, tt_place, _ = F.merge_candidates(two_tower, table, [], 6, 0.5, new, 2)
    # The two-tower's list becomes 6, 8, 1, 2, 3, 4, 5, 9; merged with the table's 7, 2.
    # Keys (j + 1) / share, the table first at equal keys: 7 6 | 2 8 | 1 | [2] 3
    assert merged.tolist() == [7, 6, 2, 8, 1, 3]
    assert tt_place.tolist() == [8, 3, 1, 5, 0, 2]  # places in the two-tower's own order
    plain, _, _ = F.merge_candidates(two_tower, table, [], 6, 0.5)
    assert 9 not in merged and 8 not in plain


def test_the_graph_moves_new_items_forward_as_numpy_does(two_stage_run, stage):
    ranking = stage[2]
    assert ranking.tables.counts[1:].min() == 0, "the run has no item without behaviour"
    promoted = dataclasses.replace(ranking, new_slots=3)
    scorer = TwoStageScorer(promoted.tables, promoted.ranker, N, promoted.table_share,
                            promoted.columns, new_slots=3, text_slots=promoted.text_slots)
    queries, q, scores = two_tower_scores(two_stage_run, stage, 60, seed=4)
    for row, query in enumerate(queries):
        scores[row, query] = -np.inf
    tt_ids = np.argsort(-scores, axis=1, kind="stable")[:, :N].astype(np.int32)
    width = max(len(s) for s in queries)
    items = np.asarray([[0] * (width - len(s)) + s for s in queries], np.int32)
    cands, mask, got = (x.numpy() for x in scorer.rank(
        items, q, tt_ids, np.ones_like(tt_ids, bool), np.zeros((len(queries), 1), np.int32)))
    expected_cands, expected_mask, expected = promoted.score(q, queries)
    comparable = ~tied_sources(promoted, q, queries)
    assert comparable.mean() >= 0.5
    np.testing.assert_array_equal(mask[comparable], expected_mask[comparable])
    np.testing.assert_array_equal(np.where(mask, cands, 0)[comparable],
                                  expected_cands[comparable])
    np.testing.assert_allclose(np.where(mask, got, 0)[comparable],
                               np.where(expected_mask, expected, 0)[comparable],
                               rtol=1e-4, atol=1e-4)
    # ... and the promotion brought items without behaviour the plain lists lack.
    plain, plain_mask, _ = ranking.score(q, queries)
    new = promoted.tables.counts == 0
    gained = [set(c[m & new[c]]) - set(p[pm]) for c, m, p, pm in
              zip(expected_cands, expected_mask, plain, plain_mask)]
    assert any(gained)


# Both stages in the exported signatures ----------------------------------------------------

def test_serving_default_equals_the_in_process_ranking_stage(exports, stage):
    sessions = sessions_of(stage[0], 40) + [["i1", "nope", "i2"]]
    out, _ = assert_served_as_in_process(load_saved_model(exports[0]), stage, sessions)
    assert not out["fallback"].numpy().any()
    for session, row in zip(sessions, out["item_ids"].numpy().astype(str)):
        assert not set(session) & set(row)


def test_a_short_scann_search_still_gives_the_ranker_n_distinct_candidates(
        two_stage_run, stage, tmp_path):
    """One leaf searched of as many as items (a leaf or two each) for N = 20: ScaNN
    answers every row short (NaN scores, a duplicated id); the signature searches every
    leaf again, so the ranking stage sees the exact two-tower list (every item
    reordered) and answers as in-process."""
    narrow = export(two_stage_run, tmp_path / "narrow", IndexConfig(
        kind="scann", num_leaves=1000, num_leaves_to_search=1, recall_floor=0.0))
    # Its recall at the stage's depth, measured through the same search: the short rows
    # searched again over every leaf.
    depth = narrow.metadata["ranking_stage"]["index_recall"]
    assert depth["k"] == N and 0.99 <= depth["recall"] <= 1.0
    out, _ = assert_served_as_in_process(load_saved_model(narrow.path), stage,
                                         sessions_of(stage[0], 40, seed=1))
    for row in out["item_ids"].numpy().astype(str):
        assert len(set(row)) == K and "" not in row


def blind_index(catalogue, index_config, queries, k):
    """`build_checked_index` of an index that never returns an item without behaviour."""
    from tfrec.index.ann import build_index

    warm = np.asarray(catalogue.counts) > 0
    config = dataclasses.replace(index_config, kind="brute_force")
    return (build_index(catalogue.embeddings[warm], catalogue.ids[warm], config), config,
            1.0, 0.0)


def test_items_without_behaviour_the_index_misses_are_scored_exactly(
        two_stage_run, stage, tmp_path, monkeypatch):
    """An index that never returns the items without behaviour (an approximate search at
    depth N misses some; here all): with `index.exact_new_items` (the default) they are
    scored exactly beside it and the export serves the in-process stage's lists; with 0
    the two-tower list lacks them and some lists differ."""
    import tfrec.exporter.saved_model as saved_model

    monkeypatch.setattr(saved_model, "build_checked_index", blind_index)
    vocab, _, ranking = stage
    cold = vocab.ids[1:][np.asarray(vocab.counts[1:]) == 0].astype(str)
    assert 0 < len(cold) <= IndexConfig.exact_new_items
    exact = export(two_stage_run, tmp_path / "exact", IndexConfig(kind="brute_force"))
    blind = export(two_stage_run, tmp_path / "blind",
                   IndexConfig(kind="brute_force", exact_new_items=0))
    assert exact.metadata["exact_new_items"] == IndexConfig.exact_new_items
    assert blind.metadata["exact_new_items"] == 0
    sessions = sessions_of(vocab, 60, seed=4)
    out, _ = assert_served_as_in_process(load_saved_model(exact.path), stage, sessions)
    served = out["item_ids"].numpy().astype(str)
    missed = load_saved_model(blind.path).signatures["serving_default"](
        item_ids=padded(sessions), k=tf.constant(K))["item_ids"].numpy().astype(str)
    assert (served != missed).any(axis=1).sum() >= 3
    # The lists differ where the exact search brought a new item into the candidates.
    assert np.isin(served, cold).sum() > np.isin(missed, cold).sum()


def test_new_items_are_scored_by_the_item_tower_when_the_query_tower_has_its_own(
        tmp_path, monkeypatch):
    """`model.query_items: separate`: the query tower's item encodings are its own; the
    new items scored beside the index are the item tower's rows (the index's), and the
    export serves the in-process stage's lists."""
    import tfrec.exporter.saved_model as saved_model
    from session_helpers import train_generated_run
    from tfrec.ranking.two_stage import load_stage, train

    run = train_generated_run(
        tmp_path, train,
        ["data.pairs.batch_size=512", "train.learning_rate=0.01", f"ranking.num_candidates={N}",
         "ranking.epochs=2", "ranking.ease_lambda=10", "model.query_items=separate"],
        num_events=6_000, num_items=80, num_users=500, num_cold=5, seed=7)
    _, vocab, model, _ = load_run(run)
    separate = (vocab, model, load_stage(run, model))
    monkeypatch.setattr(saved_model, "build_checked_index", blind_index)
    exported = export(run, tmp_path / "models", IndexConfig(kind="brute_force"))
    loaded = load_saved_model(exported.path)
    new = np.flatnonzero(np.asarray(vocab.counts[1:]) == 0)
    assert len(new)
    np.testing.assert_array_equal(loaded.new_item_embeddings.numpy(),
                                  model.item_embeddings()[1:][new])
    assert_served_as_in_process(loaded, separate, sessions_of(vocab, 50, seed=2))


def test_a_long_session_is_ranked_on_all_its_items_as_in_process(exports, stage):
    """Sessions of 55-80 items (the query tower reads the last 50): the ranking stage reads
    every item of the session, each once, as it was trained and evaluated; a repeated
    item counts once."""
    rng = np.random.default_rng(5)
    ids = [str(i) for i in stage[0].ids[1:]]
    sessions = [[ids[j] for j in rng.choice(len(ids), rng.integers(55, 81), replace=False)]
                for _ in range(30)]
    sessions = [s[:5] + s[:3] + s[5:] if row % 3 == 0 else s for row, s in enumerate(sessions)]
    _, queries = assert_served_as_in_process(load_saved_model(exports[0]), stage, sessions)
    assert max(len(q) for q in queries) > 50


def test_a_large_batch_is_ranked_in_chunks_with_the_same_answers(two_stage_run, stage,
                                                                 monkeypatch):
    """A budget of 3,000 feature values makes a batch of 40 queries run in chunks of a few
    rows (an export's budget is 4M values: a 4,096-session request no longer needs
    gigabytes at once): the same lists and scores as in one piece."""
    import tfrec.ranking.serving as serving

    ranking = stage[2]
    queries, q, scores = two_tower_scores(two_stage_run, stage, 40, seed=2)
    tt_ids = np.argsort(-scores, axis=1, kind="stable")[:, :N + 5].astype(np.int32)
    width = max(len(s) for s in queries)
    items = np.asarray([[0] * (width - len(s)) + s for s in queries], np.int32)
    inputs = (items, q, tt_ids, ~np.isin(tt_ids, items), items)

    def ranked(budget):
        monkeypatch.setattr(serving, "CHUNK_ELEMENTS", budget)
        scorer = TwoStageScorer(ranking.tables, ranking.ranker, N, ranking.table_share,
                                ranking.columns, text_slots=ranking.text_slots)
        return [x.numpy() for x in tf.function(scorer.rank)(*inputs)]

    whole, chunked = ranked(1 << 22), ranked(3000)
    assert 3000 // (width * (N + ranking.text_slots) * 8) < 10  # chunks of a few rows
    for got, want in zip(chunked[:2], whole[:2]):
        np.testing.assert_array_equal(got, want)
    # The products of another batch shape may round differently.
    np.testing.assert_allclose(chunked[2], whole[2], rtol=1e-5, atol=1e-5)


def test_recommend_for_user_equals_the_in_process_ranking_stage(exports, stage):
    vocab, _, ranking = stage
    folder = VersionFolder(exports[0])
    users = np.array(folder.user_ids.read_text().split())[:40]
    histories = np.load(folder.user_histories)[:40]
    embeddings = np.load(folder.users)[:40]
    out = load_saved_model(exports[0]).signatures["recommend_for_user"](
        user_ids=tf.constant(users), k=tf.constant(K))
    queries = [h[h > 0].tolist() for h in histories]
    ids, scores, comparable = expected_top_k(ranking, embeddings, queries, vocab.ids.astype(str))
    assert out["known"].numpy().all()
    assert_same_top_k(out, ids, scores, comparable)


def test_similar_items_rank_the_items_candidates_by_its_own_embedding(exports, stage):
    vocab, model, ranking = stage
    items = [str(i) for i in vocab.ids[1:41]]
    out = load_saved_model(exports[0]).signatures["similar_items"](
        item_ids=tf.constant(items), k=tf.constant(K))
    index = vocab.lookup(np.asarray(items, dtype=object))
    ids, scores, comparable = expected_top_k(ranking, model.item_embeddings()[index],
                                             [[i] for i in index], vocab.ids.astype(str))
    assert out["known"].numpy().all()
    assert_same_top_k(out, ids, scores, comparable)


def test_stage_two_off_gives_stage_one_exactly(exports, stage):
    vocab = stage[0]
    _, off, alone = exports
    meta = {name: VersionFolder(path).read_metadata() for name, path in
            (("off", off), ("alone", alone))}
    assert meta["off"]["ranking_stage"]["enabled"] is False
    assert meta["off"]["ranking_stage"]["index_recall"] is None  # no stage reads it
    assert meta["off"]["stages"] == meta["alone"]["stages"] == ["two_tower"]
    assert meta["alone"]["ranking_stage"] is None
    folder = VersionFolder(alone)
    calls = {"serving_default": {"item_ids": padded(sessions_of(vocab, 30) + [["nope"]])},
             "similar_items": {"item_ids": tf.constant(["i1", "i7", "cold0", "nope"])},
             "recommend_for_user": {"user_ids": tf.constant(
                 folder.user_ids.read_text().split()[:30] + ["nobody"])}}
    models = [load_saved_model(off), load_saved_model(alone)]
    for name, inputs in calls.items():
        outs = [m.signatures[name](**inputs, k=tf.constant(K)) for m in models]
        assert sorted(outs[0]) == sorted(outs[1])
        for key in outs[0]:
            a, b = (o[key].numpy() for o in outs)
            assert a.dtype == b.dtype and a.shape == b.shape, (name, key)
            # Strings as their bytes, numbers as their bits.
            assert (a.tolist() == b.tolist() if a.dtype == object
                    else a.tobytes() == b.tobytes()), (name, key)


def test_stages_differ_where_stage_two_is_on(exports, stage):
    """The check above can fail: the ranker reorders stage 1's lists."""
    on, off, _ = exports
    sessions = padded(sessions_of(stage[0], 30))
    outs = [load_saved_model(p).signatures["serving_default"](item_ids=sessions,
                                                              k=tf.constant(K))
            for p in (on, off)]
    assert (outs[0]["item_ids"].numpy() != outs[1]["item_ids"].numpy()).any()


def test_metadata_records_both_stages_and_k_is_at_most_n(exports, stage):
    _, _, ranking = stage
    meta = VersionFolder(exports[0]).read_metadata()
    assert meta["stages"] == ["two_tower", "ranker"]
    rs = meta["ranking_stage"]
    assert rs["enabled"] is True and rs["num_candidates"] == N
    assert rs["table_share"] == ranking.table_share
    assert rs["text_slots"] == ranking.text_slots == TEXT_SLOTS
    assert rs["features"] == [F.FEATURES[j] for j in ranking.columns]
    assert rs["item_item_table"]["entries"] == ranking.tables.table.num_entries
    assert meta["max_k"] == N  # the index's default max_k (100) cut to N
    model = load_saved_model(exports[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"k must be at most {N}"):
        model.signatures["serving_default"](item_ids=padded([["i1"]]), k=tf.constant(N + 1))
    out = model.signatures["serving_default"](item_ids=padded([["i1"]]), k=tf.constant(N))
    assert (out["item_ids"].numpy() != b"").sum() == N


def test_a_candidate_list_over_the_reordering_budget_is_refused(two_stage_run, tmp_path):
    config = IndexConfig(kind="scann", max_k=10, max_session_items=50,
                         num_reordering_candidates=N + 49)
    with pytest.raises(InputError) as err:
        export(two_stage_run, tmp_path / "m", config)
    assert err.value.key == "index.num_reordering_candidates"
    assert not (tmp_path / "m" / "1").exists()


def test_scann_reorders_enough_for_the_candidate_list():
    from tfrec.exporter.saved_model import ranking_index_config
    from tfrec.index.ann import scann_parameters

    config = ranking_index_config(IndexConfig(max_k=100, max_session_items=500), 300)
    assert scann_parameters(10**6, config)["num_reordering_candidates"] == 800
    assert ranking_index_config(IndexConfig(max_k=500), 300).max_k == 300


# Catalogue changes -------------------------------------------------------------------------

def test_added_items_are_recommended_and_dropped_ones_never(exports, stage, tmp_path):
    vocab, model, ranking = stage
    base = tmp_path / "m"
    shutil.copytree(exports[0].parent, base)
    # A new item with the text of a known one: its text (and its lexical row) say it is
    # like that item.
    twins = {old: f"new_{old}" for old in ("i3", "i50", "i7", "i20", "i1", "i90")}
    items = tmp_path / "items.csv"
    items.write_text("item_id,text\n" + "".join(
        f"{new},\"{vocab.text[vocab.index_of(old)]}\"\n" for old, new in twins.items()))
    added = update_catalogue(base, CatalogueUpdate(add_items=items))
    meta = added.metadata
    assert meta["ranking_stage"]["enabled"] and meta["added_items"] == len(twins)
    loaded = load_saved_model(added.path)
    # Exactly the in-process stage over the tables with the added rows.
    catalogue_ids = VersionFolder(added.path).item_ids.read_text().split()
    assert catalogue_ids[-len(twins):] == list(twins.values())
    names = np.concatenate([vocab.ids.astype(str), catalogue_ids[-len(twins):]])
    embeddings = np.load(VersionFolder(added.path).items)[-len(twins):]
    tables = serving_tables(ranking.tables, model, [vocab.text[vocab.index_of(o)]
                                                    for o in twins], embeddings, [])
    bigger = dataclasses.replace(ranking, tables=tables)
    queries = ([[vocab.index_of(o)] for o in twins]
               + [[vocab.size + j] for j in range(len(twins))])
    query_emb = np.vstack([model.item_embeddings()[[q[0] for q in queries[:len(twins)]]],
                           embeddings])
    ids, scores, comparable = expected_top_k(bigger, query_emb, queries, names, k=N)
    out = loaded.signatures["similar_items"](item_ids=tf.constant(names[[q[0] for q in queries]]),
                                             k=tf.constant(N))
    assert_same_top_k(out, ids, scores, comparable)
    assert out["known"].numpy().all()
    # Each twin is a candidate for the query of its known item: its text matches best.
    assert bigger.text_slots > 0
    cands, mask, _ = bigger.lists(query_emb[:len(twins)], queries[:len(twins)])
    for row, new in enumerate(range(vocab.size, vocab.size + len(twins))):
        assert new in cands[row][mask[row]].tolist()
    # An item's twin (same text, same lexical row, no behaviour) is recommended among its
    # most similar items. How many of the six varies with the ranker's fit (2 to 6 of 6
    # seen): at least one, which an added item never made a candidate cannot be.
    top = out["item_ids"].numpy()[:len(twins), :K].astype(str).tolist()
    assert sum(new in row for new, row in zip(twins.values(), top)) >= 1
    # Dropping what was recommended: never a candidate again, from either source.
    dropped = sorted(set(out["item_ids"].numpy()[:, :3].astype(str).ravel()) - {""})
    drops = tmp_path / "drop.txt"
    drops.write_text("\n".join(dropped) + "\n")
    after = update_catalogue(base, CatalogueUpdate(drop_items=drops))
    loaded = load_saved_model(after.path)
    sessions = padded(sessions_of(vocab, 30) + [["i3", "i50"]])
    for name, inputs in (("serving_default", {"item_ids": sessions}),
                         ("similar_items", {"item_ids": tf.constant(["i3", "i50", "i7"])})):
        got = loaded.signatures[name](**inputs, k=tf.constant(K))["item_ids"]
        assert not set(got.numpy().astype(str).ravel()) & set(dropped)
        assert (got.numpy() != b"").all()


def test_stage_two_off_carries_over_to_the_next_version(exports, tmp_path):
    base = tmp_path / "m"
    shutil.copytree(exports[1].parent, base)
    drops = tmp_path / "drop.txt"
    drops.write_text("i5\n")
    after = update_catalogue(base, CatalogueUpdate(drop_items=drops))
    assert after.metadata["ranking_stage"]["enabled"] is False
    assert after.metadata["stages"] == ["two_tower"]
    drops.write_text("i6\n")
    on = update_catalogue(base, CatalogueUpdate(drop_items=drops), ranking_stage=True)
    assert on.metadata["stages"] == ["two_tower", "ranker"]
    # The index's recall where the ranking stage reads it: exact for brute force.
    depth = on.metadata["ranking_stage"]["index_recall"]
    assert depth["k"] == N and depth["recall"] == 1.0 and depth["queries"] > 0


def test_the_servers_direct_call_of_every_signature_equals_the_signature_call(exports, stage):
    # tfrec serve runs a signature's graph function on its checked inputs, without the
    # signature's Python binding (`predict.DirectCall`): the same outputs, bit for bit.
    from tfrec.serving.predict import DirectCall

    vocab = stage[0]
    on, _, alone = exports
    users = VersionFolder(alone).user_ids.read_text().split()[:5] + ["nobody"]
    inputs = {"item_ids": padded(sessions_of(vocab, 6) + [["nope"]]),
              "k": tf.constant(K), "user_ids": tf.constant(users)}
    checked = 0
    for path in (on, alone):
        for name, function in load_saved_model(path).signatures.items():
            _, specs = function.structured_input_signature
            given = {}
            for key, spec in specs.items():
                if key == "item_ids" and spec.shape.rank == 1:
                    given[key] = tf.constant(["i1", "i7", "cold0", "nope"])
                elif key == "texts":
                    given[key] = tf.constant(["red mug", "", "blue lamp", "x"])
                else:
                    given[key] = inputs[key]
            call = DirectCall(function)
            assert call.direct is not None, name  # the direct path, not the fallback
            want, got = function(**given), call(**given)
            assert sorted(want) == sorted(got), name
            for key in want:
                a, b = want[key].numpy(), got[key].numpy()
                assert a.dtype == b.dtype and a.shape == b.shape, (name, key)
                assert (a.tolist() == b.tolist() if a.dtype == object
                        else a.tobytes() == b.tobytes()), (name, key)
            checked += 1
    assert checked >= 10

    # Anything that is not a loaded signature is called as it is.
    def plain(**tensors):
        return {"twice": tensors["x"] * 2}

    call = DirectCall(plain)
    assert call.direct is None and call(x=tf.constant(3))["twice"].numpy() == 6


def test_a_reordering_budget_under_the_ranking_stages_depth_names_the_export_flags(
        two_stage_run, tmp_path, capsys):
    # Over max_k + max_session_items (the index's own rule), under N + max_session_items.
    assert main(["-q", "export", "--run", str(two_stage_run), "--model-dir", str(tmp_path),
                 "--max-k", str(K), "--reorder", str(K + 500), "--no-serving-config"]) == 2
    err = capsys.readouterr().err
    assert f"raise it to {N + 500} (--reorder)" in err and "--no-ranking-stage" in err
    assert "--set" not in err and not (tmp_path / "1").exists()


def test_an_export_from_python_warns_of_no_unbuilt_layer(exports):
    # The `exports` fixture's first export (from Python, both stages) recorded its warnings.
    said = [m for m in EXPORT_WARNINGS if "Skipping full serialization" in m]
    assert said == []  # the ranking stage's layers were said to be "not built"


def test_an_update_refuses_a_ranking_stage_refitted_since_and_records_the_run_given(
        two_stage_run, exports, tmp_path):
    base = tmp_path / "m"
    shutil.copytree(exports[0].parent, base)
    assert VersionFolder(base / "1").read_metadata()["ranking_stage"]["fingerprint"]
    moved = tmp_path / "moved_run"
    shutil.copytree(two_stage_run, moved)
    drop = tmp_path / "drop.txt"
    drop.write_text("i3\n")
    # The stage as a resume with new ranking settings leaves it (here: its description
    # rewritten): a version built on version 1 would re-rank every list silently.
    stage_json = moved / "ranking" / "stage.json"
    original = stage_json.read_text()
    stage_json.write_text(original + "\n")
    with pytest.raises(InputError, match="the run's ranking stage is not the one version 1 "
                                         "serves") as err:
        update_catalogue(base, CatalogueUpdate(drop_items=drop), run_dir=moved)
    assert err.value.key == "export.run"
    assert sorted(p.name for p in base.iterdir() if p.name.isdigit()) == ["1"]
    # The stage as exported: built, and the version records the run it was given (the
    # next update finds the run where it is now).
    stage_json.write_text(original)
    result = update_catalogue(base, CatalogueUpdate(drop_items=drop), run_dir=moved)
    assert result.metadata["run"] == str(moved.resolve())
    assert (result.metadata["ranking_stage"]["fingerprint"]
            == VersionFolder(base / "1").read_metadata()["ranking_stage"]["fingerprint"])


def test_a_saved_stage_keeps_its_tokeniser_rules_and_an_older_one_reads_as_the_first(
        two_stage_run, stage, tmp_path):
    from tfrec.ranking.stage import RankingStage

    vocab, model, ranking = stage
    assert ranking.tables.tfidf.rules == 2
    older = tmp_path / "ranking"
    shutil.copytree(two_stage_run / "ranking", older)
    with np.load(older / "tables.npz") as z:
        arrays = {name: z[name] for name in z.files if name != "lexical_rules"}
    np.savez(older / "tables.npz", **arrays)  # as a stage saved before the rules were kept
    # Its terms tell: ASCII only, the first rules'; a term beyond ASCII, the current ones'.
    assert RankingStage.load(older, model.item_embeddings()).tables.tfidf.rules == 1
    arrays["lexical_vocabulary"] = np.append(arrays["lexical_vocabulary"], "größe")
    np.savez(older / "tables.npz", **arrays)
    assert RankingStage.load(older, model.item_embeddings()).tables.tfidf.rules == 2
