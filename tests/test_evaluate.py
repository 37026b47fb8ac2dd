"""tfrec evaluate: metrics, the split, the baselines and the report."""

import base64
import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from tfrec import cli
from tfrec.config import SessionConfig
from tfrec.data.split import make_cases, split_events
from tfrec.data.vocab import build_vocabulary
from tfrec.evaluate import baselines, methods
from tfrec.evaluate.bar import MIN_CASES, check_bar
from tfrec.evaluate.runner import evaluate_run, parse_baselines
from tfrec.evaluate.table import format_report
from tfrec.errors import InputError
from tfrec.metrics import hit_rate, ndcg, target_ranks


# ----------------------------------------------------------------------------- metrics

def test_hit_rate_and_ndcg_by_hand():
    ranks = np.array([0, 1, 9, 10, 40])
    assert hit_rate(ranks, 10) == pytest.approx(3 / 5)
    assert hit_rate(ranks, 1) == pytest.approx(1 / 5)
    # 1/log2(2) + 1/log2(3) + 1/log2(11), the two outside the top 10 count 0.
    assert ndcg(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)
    assert math.isnan(hit_rate(np.array([]), 10))


def test_target_ranks_by_hand():
    items = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    queries = np.array([[1.0, 0.0], [1.0, 0.0]])
    valid = np.array([False, True, True, True, True])
    # Scores for the query: 1.0, 0.0, 0.7, -1.0 (items 1..4).
    ranks = target_ranks(queries, items, np.array([2, 2]), [[], [1]], valid)
    # Target 2 (score 0): items 1 and 3 score higher; with item 1 excluded only item 3.
    assert ranks.tolist() == [2, 1]


def test_target_ranks_with_a_stand_in_target_embedding():
    items = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    queries = np.array([[1.0, 0.0], [1.0, 0.0]])
    valid = np.array([False, True, True, True, True])
    # Target 2 scored as [0.8, 0] (0.8) instead of its own row (0.0): only item 1
    # (1.0) is above it; its own row no longer competes. Target 1 scored as [0, 1]
    # (0.0): item 3 (0.7) is above, item 2 (0.0) ties and is not counted
    # without tie_seed, and its own row no longer competes either.
    stand_in = np.array([[0.8, 0.0], [0.0, 1.0]])
    ranks = target_ranks(queries, items, np.array([2, 1]), [[], []], valid, tie_seed=None,
                         target_embeddings=stand_in)
    assert ranks.tolist() == [1, 1]


def test_ties_are_broken_at_random_not_in_the_targets_favour():
    items = np.ones((1001, 1))
    queries = np.ones((500, 1))
    targets = np.random.default_rng(0).integers(1, 1001, 500)
    valid = np.ones(1001, bool)
    valid[0] = False
    ranks = target_ranks(queries, items, targets, [[]] * 500, valid)
    # Everything ties: ranks are uniform on 0..999, not all 0.
    assert 350 < ranks.mean() < 650
    assert hit_rate(ranks, 10) < 0.05
    optimistic = target_ranks(queries, items, targets, [[]] * 500, valid, tie_seed=None)
    assert optimistic.max() == 0


# ----------------------------------------------------------------------------- the split

def retail_events():
    """Two customers, baskets on both sides of 2011-10-01, one basket spanning midnight."""
    rows = [
        ("u1", "A", "2011-09-01 10:00", "s1"), ("u1", "B", "2011-09-01 10:00", "s1"),
        ("u1", "C", "2011-09-30 23:50", "s2"), ("u1", "D", "2011-10-01 00:05", "s2"),
        ("u2", "A", "2011-10-02 09:00", "s3"), ("u2", "E", "2011-10-02 09:00", "s3"),
        ("u2", "B", "2011-10-02 09:00", "s3"), ("u1", "B", "2011-10-05 12:00", "s4"),
        ("u1", "F", "2011-10-05 12:00", "s4"),
    ]
    frame = pd.DataFrame(rows, columns=["user", "item", "time", "session"])
    frame["time"] = pd.to_datetime(frame["time"]).astype("datetime64[s]").astype("int64")
    frame["event"] = pd.NA
    frame["line"] = np.arange(2, len(frame) + 2)
    return frame


def test_split_never_puts_a_test_session_in_training():
    events = retail_events()
    train, test, cut = split_events(events, "2011-10-01")
    # s2 starts before the cut, so its event after midnight stays in training.
    assert set(train["session"]) == {"s1", "s2"}
    assert set(test["session"]) == {"s3", "s4"}
    assert not set(train["session"]) & set(test["session"])
    assert len(train) + len(test) == len(events)
    assert test.groupby("session")["time"].min().min() >= cut


def test_cases_come_from_test_sessions_only_and_mark_cold_targets():
    events = retail_events()
    train, test, _ = split_events(events, "2011-10-01")
    items = pd.DataFrame({"item": list("ABCDEF"), "text": ["a", "b", "c", "d", "e", "f"],
                          "market": None})
    vocab = build_vocabulary(train, items)
    cases = make_cases(test, vocab, seed=1, session_config=SessionConfig())
    assert len(cases) == 2
    test_items = set(vocab.lookup(test["item"]))
    for query, target in zip(cases.queries, cases.targets):
        assert target in test_items and set(query) <= test_items and target not in query
    # E and F were never sold before the split: cold.
    expected_cold = [vocab.ids[t] in ("E", "F") for t in cases.targets]
    assert cases.cold.tolist() == expected_cold
    # Each case knows its user (the bar's intervals resample users, not cases).
    from tfrec.data.sessions import sessionize

    sessions = sessionize(test, vocab, SessionConfig())
    users = [sessions.user_ids[u] for u in cases.users]
    by_user = test.groupby("user")["item"].apply(set)
    for user, query, target in zip(users, cases.queries, cases.targets):
        assert {vocab.ids[i] for i in query} | {vocab.ids[target]} <= by_user[user]


# ----------------------------------------------------------------------------- baselines

@pytest.fixture
def tiny():
    """Items 1-4 'red' things bought together, 5-8 'blue' ones; item 9 is cold."""
    from tfrec.data.sessions import sessionize

    rng = np.random.default_rng(0)
    rows = []
    for s in range(300):
        group = list("ABCD") if s % 2 else list("EFGH")
        for item in rng.choice(group, 3, replace=False):
            rows.append((f"u{s % 40}", item, 1_000_000 + s * 7200, None))
    events = pd.DataFrame(rows, columns=["user", "item", "time", "session"])
    events["event"] = pd.NA
    events["line"] = np.arange(len(events))
    items = pd.DataFrame({"item": list("ABCDEFGHI"),
                          "text": ["red cup", "red mug", "red plate", "red bowl", "blue cup",
                                   "blue mug", "blue plate", "blue bowl", "red jug"],
                          "market": None})
    vocab = build_vocabulary(events, items)
    sessions = sessionize(events, vocab, SessionConfig())
    return vocab, sessions


def ranks_for(emb, vocab, query_ids, target_ids):
    queries = [[vocab.index_of(i) for i in q] for q in query_ids]
    targets = np.array([vocab.index_of(t) for t in target_ids])
    valid = np.ones(vocab.size, bool)
    valid[0] = False
    return target_ranks(emb.queries, emb.items, targets, queries, valid)


def test_popularity_ranks_by_training_count(tiny):
    vocab, _ = tiny
    emb = baselines.popularity(vocab, [[vocab.index_of("A")]])
    top = int(np.argmax(emb.items[:, 0]))
    assert vocab.counts[top] == vocab.counts.max()
    assert emb.items[vocab.index_of("I"), 0] == 0  # cold: no events


def test_tfidf_finds_the_item_with_shared_words(tiny):
    vocab, _ = tiny
    queries = [["A", "B", "C"], ["E", "F", "G"], ["A", "B", "C"]]
    emb = baselines.tfidf(vocab, [[vocab.index_of(i) for i in q] for q in queries])
    ranks = ranks_for(emb, vocab, queries, ["D", "H", "I"])
    # "red bowl" after three red things; "blue bowl" after three blue ones.
    assert ranks[:2].tolist() == [0, 0]
    # The cold "red jug" shares "red": only "red bowl" ranks above it, no blue item.
    assert ranks[2] == 1


def test_gensim_item2vec_learns_co_bought_items(tiny):
    vocab, sessions = tiny
    queries = [["A", "B"], ["E", "F"]] * 2
    emb = baselines.item2vec_gensim(sessions, vocab, [[vocab.index_of(i) for i in q]
                                                      for q in queries], dim=8, epochs=20,
                                    sample=0.0, workers=1)
    # The other two items of the group come first (ranks 0 and 1), not the other group.
    assert ranks_for(emb, vocab, queries, ["C", "G", "D", "H"]).max() <= 1
    assert not emb.items[vocab.index_of("I")].any()  # cold item: no vector


def test_gensim_item2vec_gives_the_same_vectors_every_time():
    """One training thread by default: with two, gensim's threads race and each run differs."""
    from session_helpers import sessions_of
    from test_baselines import vocabulary

    rng = np.random.default_rng(0)
    lists = [rng.choice(np.arange(1, 60), 4, replace=False).tolist() for _ in range(3000)]
    vocab = vocabulary(60, [0] + [1] * 59)

    def vectors():
        return baselines.item2vec_gensim(sessions_of(lists), vocab, [[1]], dim=8,
                                         epochs=3).items

    first = vectors()
    assert np.linalg.norm(first[1:], axis=1).min() > 0.1  # trained vectors, not zeros
    np.testing.assert_array_equal(first, vectors())


def test_parse_baselines_rejects_unknown_names():
    assert parse_baselines("none") == ()
    assert parse_baselines("popularity,tfidf_text") == ("popularity", "tfidf_text")
    with pytest.raises(InputError, match="unknown baseline.*word2vec"):
        parse_baselines("popularity,word2vec")
    assert parse_baselines("ease, ease,popularity") == ("ease", "popularity")  # fitted once
    for empty in ("", " , "):
        with pytest.raises(InputError, match="no baseline named"):
            parse_baselines(empty)


class Oracle(methods.EmbeddingBaseline):
    """A toy baseline that is told each case's target: it must rank every one first."""

    name, label = "oracle", "oracle (told the targets)"

    def fit(self, run):
        self.fitted_on = run.vocab.size
        items = np.eye(run.vocab.size, dtype=np.float32)
        return methods.Fitted(baselines.Embeddings(items, items[run.cases.targets]))


def test_a_registered_baseline_is_run_by_evaluate(run_dir, tmp_path, monkeypatch):
    oracle = Oracle()
    monkeypatch.setitem(methods.REGISTRY, "oracle", oracle)
    assert parse_baselines("oracle,popularity") == ("oracle", "popularity")
    result = evaluate_run(run_dir, tmp_path / "ev", ("oracle",))
    scores = result["methods"]["oracle"]
    assert set(result["methods"]) == {"tfrec", "oracle"}
    assert oracle.fitted_on == result["protocol"]["candidates"] + 1  # the run's vocabulary
    assert scores["label"] == "oracle (told the targets)"
    assert scores["all"]["cases"] == result["protocol"]["cases"]
    assert scores["all"]["hr_curve"][0] == 1.0 and scores["all"]["ndcg@10"] == 1.0
    assert result["methods"]["tfrec"]["all"]["hr_curve"][0] < 1.0
    assert "oracle (told the targets)" in format_report(result)
    with pytest.raises(ValueError, match="taken"):
        methods.register(Oracle())


def test_check_bar_compares_the_right_groups():
    def method(a, w, c):
        return {"all": {"hr@10": a}, "warm": {"hr@10": w}, "cold": {"hr@10": c}}

    methods = {"tfrec": method(0.25, 0.24, 0.2), "tfidf_text": method(0.2, 0.19, 0.21),
               "item2vec_gensim": method(0.18, 0.23, 0.0)}
    checks = {c["check"]: c["met"] for c in check_bar(methods, 10, {"cold": 0.18})}
    assert checks == {"beats every baseline on all cases": True,
                      "matches or beats the best text-only method on cold targets": False,
                      "matches or beats item2vec on warm targets": True,
                      "HR@10 on cold targets >= 0.18": True}


def test_check_bar_against_ease_the_text_off_variant_and_cold_hr_at_50():
    def method(a, w, c, warm_ndcg=0.1, cold_at_50=None):
        curve = lambda at_10, at_50: [at_10] * 10 + [at_50] * 40  # noqa: E731
        return {"all": {"hr@10": a, "ndcg@10": 0.1, "hr_curve": curve(a, a)},
                "warm": {"hr@10": w, "ndcg@10": warm_ndcg, "hr_curve": curve(w, w)},
                "cold": {"hr@10": c, "ndcg@10": 0.1,
                         "hr_curve": curve(c, c if cold_at_50 is None else cold_at_50)}}

    methods = {"tfrec": method(0.30, 0.31, 0.22, warm_ndcg=0.18, cold_at_50=0.40),
               "ease": method(0.31, 0.33, 0.0, warm_ndcg=0.17),
               "itemknn": method(0.26, 0.28, 0.0),
               "tfidf_text": method(0.18, 0.18, 0.21, cold_at_50=0.45),
               "tfrec_text_off": method(0.25, 0.27, 0.0)}
    checks = {c["check"]: (c["met"], c["metric"], c.get("best_baseline"))
              for c in check_bar(methods, 10, None)}
    assert checks == {
        # EASE is in "every baseline", and is ahead here.
        "beats every baseline on all cases": (False, "hr@10", "ease"),
        "matches or beats the best text-only method on cold targets": (True, "hr@10",
                                                                       "tfidf_text"),
        "matches or beats the best text-only method on cold targets (HR@50)": (
            False, "hr@50", "tfidf_text"),
        "matches or beats EASE on warm targets": (False, "hr@10", "ease"),
        "matches or beats EASE on warm targets (NDCG@10)": (True, "ndcg@10", "ease"),
        "matches or beats its own text-off variant on warm targets": (True, "hr@10",
                                                                      "tfrec_text_off")}
    # A baseline that was not run (skipped above the catalogue limit) is not checked.
    del methods["ease"]
    names = {c["check"] for c in check_bar(methods, 10, None)}
    assert not any("EASE" in n for n in names)
    assert "beats every baseline on all cases" in names
    # At k = 50 the HR@50 cold check would repeat the HR@k one.
    assert not any("(HR@50)" in c["check"] for c in check_bar(methods, 50, None))
    # Both stages over 20 candidates: at k = 30 their "hr@30" is their HR@20; no check at
    # a K beyond the list is made (nor the cold HR@50 one).
    short = {group: {**entry, "hr@30": 0.5, "ndcg@30": 0.2, "hr_curve": entry["hr_curve"][:20]}
             for group, entry in methods["tfrec"].items()}
    others = {name: {group: {**entry, "hr@30": 0.9, "ndcg@30": 0.3}
                     for group, entry in m.items()} for name, m in methods.items()
              if name != "tfrec"}
    assert check_bar({"tfrec": short, **others}, 30, None) == []
    assert check_bar({"tfrec": short, **others}, 10, None)  # within the list: checked


def test_a_check_over_too_few_cases_is_neither_met_nor_missed():
    def method(cold, cases):
        return {"all": {"hr@10": 0.3, "cases": 100}, "warm": {"hr@10": 0.3, "cases": 100 - cases},
                "cold": {"hr@10": cold, "cases": cases}}

    # 0.0000 against 0.0000 over 10 cold cases used to print "[met]".
    methods = {"tfrec": method(0.0, 10), "tfidf_text": method(0.0, 10)}
    checks = {c["check"]: c for c in check_bar(methods, 10, {"cold": 0.0, "all": 0.2})}
    cold = checks["matches or beats the best text-only method on cold targets"]
    assert cold["met"] is None and cold["cases"] == 10
    assert checks["HR@10 on cold targets >= 0.0"]["met"] is None
    assert checks["HR@10 on all targets >= 0.2"]["met"] is True  # 100 cases: judged
    report = {"k": 10, "protocol": {"cases": 100, "warm_cases": 90, "cold_cases": 10,
                                    "candidates": 50},
              "methods": {}, "index_recall": {"index": "scann", "queries": 1,
                                              "recall": {"10": 1.0}},
              "conversion": {"available": False, "reason": "none"},
              "checks": list(checks.values())}
    text = format_report(report)
    assert ("[too few cases (10)] matches or beats the best text-only method on cold targets"
            in text)
    assert "[met] HR@10 on all targets >= 0.2" in text
    # At the minimum the check is judged again.
    methods = {"tfrec": method(0.0, MIN_CASES), "tfidf_text": method(0.0, MIN_CASES)}
    checks = {c["check"]: c["met"] for c in check_bar(methods, 10, None)}
    assert checks["matches or beats the best text-only method on cold targets"] is True


# ----------------------------------------------------------------------------- the report

@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    result = evaluate_run(run_dir, out, ("popularity", "tfidf_text", "item2vec_gensim",
                                         "ease", "itemknn", "ease_tfidf", "tfrec_id_off"),
                          gensim_epochs=3)
    return out, result


def test_report_has_every_method_on_the_same_cases(report):
    _, result = report
    assert set(result["methods"]) == {"tfrec", "popularity", "tfidf_text", "item2vec_gensim",
                                      "ease", "itemknn", "ease_tfidf", "tfrec_id_off"}
    assert result["skipped"] == {}
    cases = result["protocol"]["cases"]
    for m in result["methods"].values():
        assert m["all"]["cases"] == cases
        assert m["warm"]["cases"] + m["cold"]["cases"] == cases
        curve = m["all"]["hr_curve"]
        assert len(curve) == 50 and curve == sorted(curve)
        assert curve[9] == pytest.approx(m["all"]["hr@10"])
    # The trained model is far above popularity on clustered data.
    assert result["methods"]["tfrec"]["all"]["hr@10"] > result["methods"]["popularity"]["all"][
        "hr@10"]
    assert result["index_recall"]["recall"]["10"] > 0.5
    # Every comparison with a baseline holds its paired interval, users resampled.
    compared = [c for c in result["checks"] if "best_baseline" in c]
    assert compared
    for check in compared:
        low, high = check["noise"]["interval95"]
        assert low <= check["noise"]["difference"] <= high
        assert check["noise"]["difference"] == pytest.approx(check["model"] - check["baseline"])
        assert 0 < check["noise"]["users"] <= result["protocol"]["cases"]


def brute_force_cold_start(run_dir, k=10):
    """HR@k of the warm targets scored by their text embedding, and the cold items' share
    of the top-k slots, one case at a time with numpy."""
    import tensorflow as tf

    from tfrec.data.sequences import histories_from_lists
    from tfrec.run import load_run, prepare_training_data

    config, vocab, model, _ = load_run(run_dir)
    cases = prepare_training_data(config).cases
    items = model.item_embeddings()
    queries = model.query_embeddings(histories_from_lists(cases.queries,
                                                          config.model.history_length))
    text = model.item_encoder.encode_text(tf.constant(vocab.text.astype(str))).numpy()
    cold = vocab.counts == 0
    hits, slots = [], []
    for query, own, target, is_cold in zip(queries, cases.queries, cases.targets, cases.cold):
        scores = items @ query
        scores[0] = -np.inf
        scores[list(own)] = -np.inf
        slots.append(cold[np.argsort(-scores, kind="stable")[:k]].mean())
        if not is_cold:
            scores[target] = -np.inf
            hits.append((scores > text[target] @ query).sum() < k)
    return float(np.mean(hits)), float(np.mean(slots))


def test_cold_start_figures(report, run_dir):
    from tfrec.run import load_run

    _, result = report
    cs = result["cold_start"]
    assert cs["available"] and cs["warm_cases"] == result["methods"]["tfrec"]["warm"]["cases"]
    # The warm targets scored as usual are the table's warm figures.
    assert cs["warm"]["hr@10"] == pytest.approx(result["methods"]["tfrec"]["warm"]["hr@10"])
    # The generated item texts name their cluster: a warm target scored by its
    # text alone still beats popularity (measured: 0.82 against 0.25).
    assert cs["warm_as_new"]["hr@10"] > result["methods"]["popularity"]["all"]["hr@10"]
    warm_as_new, top_k_slots = brute_force_cold_start(run_dir)
    assert cs["warm_as_new"]["hr@10"] == pytest.approx(warm_as_new, abs=1e-6)
    vocab = load_run(run_dir)[1]
    cold_items = int((vocab.counts[1:] == 0).sum())
    assert cold_items > 0
    assert cs["cold_share"]["catalogue"] == pytest.approx(cold_items / (vocab.size - 1))
    assert cs["cold_share"]["targets"] == pytest.approx(
        result["protocol"]["cold_cases"] / result["protocol"]["cases"])
    # Cold items reach the top k by their text, without crowding it (measured: 0.065).
    assert 0.0 < cs["cold_share"]["top_k_slots"] < 0.5
    assert cs["cold_share"]["top_k_slots"] == pytest.approx(top_k_slots, abs=1e-6)
    assert "cold start: warm targets scored by their text alone" in format_report(result)
    # The text-alone warning is printed exactly when the figures carry it.
    assert ("warning" in cs) == (cs["warm_as_new"]["hr@10"] > cs["warm"]["hr@10"] + 0.02)
    assert ("rank higher by their text alone" in format_report(result)) == ("warning" in cs)


def test_text_embeddings_that_outrank_trained_ones_are_warned_about(monkeypatch):
    import types

    from tfrec.evaluate import analyses

    rng = np.random.default_rng(0)
    items = rng.normal(size=(30, 8)).astype(np.float32)
    items[0] = 0.0
    query = rng.normal(size=8).astype(np.float32)
    # Every text-only embedding lies along the query: any item shown by its text wins.
    monkeypatch.setattr(analyses, "text_embeddings", lambda model, texts: np.tile(
        query * 10, (len(items), 1)))
    cases = types.SimpleNamespace(cold=np.zeros(20, bool), targets=np.arange(1, 21),
                                  queries=[[25]] * 20)
    vocab = types.SimpleNamespace(text=np.array([""] * 30, dtype=object),
                                  counts=np.ones(30, np.int64))
    valid = np.ones(30, bool)
    valid[0] = False
    figures = analyses.cold_start_figures(
        None, vocab, cases, np.full(20, 50), items, np.tile(query, (20, 1)), valid, 10)
    assert figures["warm_as_new"]["hr@10"] == 1.0 and figures["warm"]["hr@10"] == 0.0
    assert figures["warning"].startswith("warm targets rank higher by their text alone than "
                                         "by their trained embedding (HR@10 1.0000 against "
                                         "0.0000)")
    monkeypatch.setattr(analyses, "text_embeddings", lambda model, texts: -np.tile(
        query, (len(items), 1)))
    figures = analyses.cold_start_figures(
        None, vocab, cases, np.full(20, 50), items, np.tile(query, (20, 1)), valid, 10)
    assert "warning" not in figures


def test_cold_start_needs_a_text_tower():
    from tfrec.evaluate.analyses import cold_start_figures

    class IdsOnly:
        class item_encoder:
            use_text = False

    class Vocab:
        text = np.array(["", "red cup"], dtype=object)

    figures = cold_start_figures(IdsOnly(), Vocab(), None, None, None, None, None, 10)
    assert figures == {"available": False, "reason": "the model has no text tower"}


def test_report_files_and_html_plots_exist(report):
    out, result = report
    text = (out / "report.json").read_text()
    assert "NaN" not in text  # strict JSON: groups without cases are null
    on_disk = json.loads(text)
    assert on_disk["methods"].keys() == result["methods"].keys()
    page = (out / "report.html").read_text()
    referenced = re.findall(r'data-file="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert {f for f, _ in referenced} == set(on_disk["plots"])
    assert {"plots/hr_at_k.png", "plots/warm_cold.png", "plots/index_recall.png",
            "plots/embedding_map.png"} <= set(on_disk["plots"])
    for name, data in referenced:
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and base64.b64decode(data) == png
    for label in ("popularity", "text only (TF-IDF)", "item2vec (gensim)", "EASE",
                  "ItemKNN (cosine)"):
        assert label in page
    cold_start = on_disk["cold_start"]
    assert "<h2>Cold start</h2>" in page
    assert f"{cold_start['cold_share']['top_k_slots']:.1%} of the top-10 slots" in page
    assert "both_stages_top_k_slots" not in cold_start['cold_share']  # one stage: one share


def test_report_lists_ease_and_itemknn_with_their_tuning(report):
    out, result = report
    on_disk = json.loads((out / "report.json").read_text())
    for name, parameter in (("ease", "lambda"), ("itemknn", "neighbours")):
        method = on_disk["methods"][name]
        tuning = method["tuning"]
        assert tuning["parameter"] == parameter and tuning["validation_cases"] > 0
        grid = baselines.EASE_LAMBDAS if name == "ease" else baselines.KNN_NEIGHBOURS
        assert list(tuning["hr@10"]) == [str("all" if v == 0 else v) for v in grid]
        assert tuning["hr@10"][str(tuning["chosen"])] == max(tuning["hr@10"].values())
        # (That items without training events score 0 is test_baselines' check: this
        # report's held-out cases have no cold target.)
        assert method["cold"]["cases"] == 0
    # Clustered sessions: the item-item methods find the basket's group.
    assert on_disk["methods"]["ease"]["warm"]["hr@10"] > on_disk["methods"]["popularity"][
        "warm"]["hr@10"]
    checks = {c["check"] for c in on_disk["checks"]}
    assert {"matches or beats EASE on warm targets",
            "matches or beats EASE on warm targets (NDCG@10)"} <= checks
    page = (out / "report.html").read_text()
    assert "<h2>Baseline settings</h2>" in page and "matches or beats EASE" in page
    printed = format_report(result)
    assert f"EASE: lambda {on_disk['methods']['ease']['tuning']['chosen']} chosen on" in printed
    # The hybrid reuses EASE's λ and chooses its new items' weight; warm items score as
    # EASE's, so its warm figures are EASE's but where a new item outranks the target.
    hybrid = on_disk["methods"]["ease_tfidf"]
    [weight] = hybrid["tuning"]
    lam = on_disk["methods"]["ease"]["tuning"]["chosen"]
    assert weight["lambda"] == lam
    assert weight["parameter"] == "new_item_weight" and weight["validation_cases"] > 0
    assert hybrid["warm"]["hr@10"] <= on_disk["methods"]["ease"]["warm"]["hr@10"]
    assert (f"EASE + TF-IDF for new: new_item_weight {weight['chosen']} (with lambda {lam:g}) "
            "chosen" in printed)
    assert "EASE + TF-IDF for new: new_item_weight" in page


def test_item_item_baselines_skipped_above_the_catalogue_limit(run_dir, tmp_path, caplog,
                                                               capsys):
    out = tmp_path / "ev"
    with caplog.at_level("INFO", logger="tfrec.evaluate.runner"):
        result = evaluate_run(run_dir, out, ("ease", "itemknn", "tfidf_text"),
                              max_item_item_catalogue=100)
    message = (f"skipped: catalogue of {result['protocol']['candidates']:,} items is above the "
               "100-item limit of the item-item baselines")
    assert set(result["methods"]) == {"tfrec", "tfidf_text"}
    assert result["skipped"] == {"ease": {"label": "EASE", "reason": message},
                                 "itemknn": {"label": "ItemKNN (cosine)", "reason": message}}
    assert f"EASE: {message}" in caplog.text
    assert json.loads((out / "report.json").read_text())["skipped"] == result["skipped"]
    assert message in format_report(result)
    assert "EASE</th><td colspan=\"7\" class=\"skipped\">" + message in (
        out / "report.html").read_text()
    assert not any("EASE" in c["check"] for c in result["checks"])
    assert cli.main(["-q", "evaluate", "--run", str(run_dir), "--out", str(tmp_path / "cli"),
                     "--baselines", "ease", "--max-item-item-catalogue", "100"]) == 0
    assert f"EASE                    {message}" in capsys.readouterr().out


def test_conversion_rank_where_the_data_has_conversions(report):
    _, result = report
    conversion = result["conversion"]
    # The generated sessions end in a purchase a third of the time.
    assert conversion["available"] and conversion["sessions"] > 10
    assert len(conversion["share_in_top_k"]) == 50


def test_evaluate_cli_prints_the_table(run_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    assert cli.main(["-q", "evaluate", "--run", str(run_dir), "--out", str(out),
                     "--baselines", "popularity"]) == 0
    printed = capsys.readouterr().out
    assert "tfrec (full model)" in printed and "popularity" in printed
    assert "index recall@10" in printed and (out / "report.html").exists()
    assert format_report(json.loads((out / "report.json").read_text())) in printed


def test_evaluate_cli_bad_input(run_dir, tmp_path, capsys):
    assert cli.main(["evaluate", "--run", str(tmp_path), "--baselines", "none"]) == 2
    assert "config.json" in capsys.readouterr().err
    assert cli.main(["evaluate", "--run", str(run_dir), "--baselines", "gensim"]) == 2
    assert "unknown baseline" in capsys.readouterr().err
    assert cli.main(["evaluate", "--run", str(run_dir), "-k", "500"]) == 2
    assert "k must be" in capsys.readouterr().err


def test_evaluate_an_exported_version_matches_its_run(versions, report, tmp_path, capsys):
    from session_helpers import copy_export

    version = copy_export(versions, "scann", tmp_path / "models" / "shop")
    out = tmp_path / "ev"
    # The run comes from the export's metadata.
    assert cli.main(["-q", "evaluate", "--saved-model", str(version.path), "--out", str(out),
                     "--baselines", "none"]) == 0
    assert "the export's index" in capsys.readouterr().out
    exported = json.loads((out / "report.json").read_text())
    from_run = report[1]["methods"]["tfrec"]
    # The export's embed_items signature gives the same text-only embeddings.
    assert exported["cold_start"]["warm_as_new"]["hr@10"] == pytest.approx(
        report[1]["cold_start"]["warm_as_new"]["hr@10"], abs=0.01)
    # Same embeddings (cached in the export), same queries (its embed_query signature).
    for group in ("all", "warm", "cold"):
        if from_run[group]["cases"] == 0:
            assert exported["methods"]["tfrec"][group]["hr@10"] is None
            continue
        assert exported["methods"]["tfrec"][group]["hr@10"] == pytest.approx(
            from_run[group]["hr@10"], abs=0.01)
    assert exported["index_recall"]["index"] == "export"
    assert exported["index_recall"]["recall"]["10"] > 0.5
    assert cli.main(["evaluate", "--saved-model", str(tmp_path)]) == 2
    assert "tfrec: error:" in capsys.readouterr().err
    # A version that is not there: said so (it blamed the metadata).
    assert cli.main(["evaluate", "--saved-model", str(version.path.parent / "7")]) == 2
    err = capsys.readouterr().err
    assert "not a SavedModel folder (no saved_model.pb)" in err and "metadata" not in err
    # A model folder for a version: named as such (it blamed metadata that is not there).
    assert cli.main(["evaluate", "--saved-model", str(version.path.parent)]) == 2
    assert (f"it is a model folder: give a version folder, e.g. {version.path}"
            in capsys.readouterr().err)


def test_index_recall_of_a_catalogue_too_small_for_scann_is_exact_search():
    from tfrec.evaluate.analyses import index_recall
    from tfrec.index.ann import SCANN_MIN_ITEMS

    rng = np.random.default_rng(0)
    items = rng.normal(size=(SCANN_MIN_ITEMS - 3, 8)).astype(np.float32)  # row 0: padding
    result = index_recall(items, items[1:4])
    assert result["index"] == "brute_force" and result["parameters"] == {}
    assert all(value == 1.0 for value in result["recall"].values())
    assert index_recall(rng.normal(size=(40, 8)).astype(np.float32), items[1:4, :8]
                        )["index"] == "scann"


def test_an_unfinished_run_and_a_report_folder_that_is_a_file_are_refused(run_dir, tmp_path):
    import shutil

    from tfrec.errors import InputError

    with pytest.raises(InputError, match="the report folder is a file"):
        (tmp_path / "events.csv").write_text("x")
        evaluate_run(run_dir, tmp_path / "events.csv", ())
    # A run cut short (or still training): its checkpoint is not the run's model.
    cut = tmp_path / "cut"
    shutil.copytree(run_dir, cut)
    history = (cut / "history.jsonl").read_text().splitlines()
    (cut / "history.jsonl").write_text("".join(line + "\n" for line in history[:-1]))
    with pytest.raises(InputError, match=rf"the run has finished {len(history) - 1} of its "
                                         rf"{len(history)} epoch"):
        evaluate_run(cut, tmp_path / "ev", ())


def test_a_variant_is_reused_only_whole_and_as_a_two_tower(tmp_path):
    import json
    import types

    from tfrec.config import RankingConfig, RunConfig
    from tfrec.run_folder import RunFolder

    config = RunConfig(ranking=RankingConfig(enabled=True))
    run = types.SimpleNamespace(config=config, run_dir=tmp_path)
    variant = methods.TextOff()._variant(run)
    assert not variant.ranking.enabled and not variant.model.use_text
    folder = RunFolder(tmp_path).variant("tfrec_text_off")
    folder.checkpoints.mkdir(parents=True)
    folder.config_file.write_text(json.dumps(variant.to_dict()))
    epochs = variant.train.epochs
    folder.history_file.write_text('{"epoch": 1}\n' * (epochs - 1))
    assert not methods.TextOff()._reusable(run)  # an evaluate stopped while it trained
    folder.history_file.write_text('{"epoch": 1}\n' * epochs)
    assert methods.TextOff()._reusable(run)


def test_two_evaluates_at_once_train_a_variant_once(tmp_path, monkeypatch):
    # Both saw no trained variant and trained it into one folder side by side.
    import json
    import threading
    import time
    import types

    import tfrec.run
    import tfrec.training
    from tfrec.config import RunConfig
    from tfrec.run_folder import RunFolder

    run = types.SimpleNamespace(config=RunConfig(), run_dir=tmp_path)
    folder = RunFolder(tmp_path).variant("tfrec_text_off")
    calls = []

    def train(config, path, verbose=None):
        calls.append(path)
        time.sleep(0.5)
        folder.checkpoints.mkdir(parents=True)
        folder.config_file.write_text(json.dumps(config.to_dict()))
        folder.history_file.write_text('{"epoch": 1}\n' * config.train.epochs)
        return types.SimpleNamespace(model="trained")

    monkeypatch.setattr(tfrec.training, "train", train)
    monkeypatch.setattr(tfrec.run, "load_run", lambda path: (None, None, "reused", None))
    models = []
    threads = [threading.Thread(target=lambda: models.append(methods.TextOff().fit(run).model))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and sorted(models) == ["reused", "trained"]


def test_an_export_of_another_run_is_warned_about(tmp_path, caplog):
    import json
    import logging

    from tfrec.evaluate.runner import warn_if_another_run

    version = tmp_path / "m" / "1"
    (version / "assets.extra").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (version / "assets.extra" / "tfrec_metadata.json").write_text(
        json.dumps({"run": str(tmp_path / "a")}))
    assert warn_if_another_run(version, tmp_path / "a") is None
    with caplog.at_level(logging.WARNING, logger="tfrec.evaluate.runner"):
        message = warn_if_another_run(version, tmp_path / "b")
    assert message and "was made from the run" in message and message in caplog.text


def test_top_k_items_holds_one_chunk_of_scores_at_a_time():
    """Each chunk's [chunk, V] partition is let go once its top k is taken (the top k's
    slices held every chunk's whole partition: memory as queries x items)."""
    import tracemalloc

    from tfrec.metrics import top_k_items

    rng = np.random.default_rng(0)
    queries, items = rng.normal(size=(2000, 8)), rng.normal(size=(5000, 8))
    valid = np.ones(5000, bool)
    exclude = [[i % 5000] for i in range(2000)]
    tracemalloc.start()
    try:
        top = top_k_items(queries, items, exclude, valid, 10, chunk=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One chunk's scores and partition: 100 x 5,000 x 8 bytes twice, 8 MB; every chunk's
    # partitions would be 80 MB.
    assert peak < 30e6, peak
    scores = queries @ items.T
    scores[np.arange(2000), [e[0] for e in exclude]] = -np.inf
    expected = np.sort(np.argsort(-scores, axis=1)[:, :10], axis=1)
    np.testing.assert_array_equal(np.sort(top, axis=1), expected)
