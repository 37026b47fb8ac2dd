"""tfrec evaluate on a run with a ranking stage: both stages, stage 1 alone, the
ablations and the candidate lists' recall."""

import json

import numpy as np
import pytest

from tfrec import cli
from tfrec.evaluate.bar import check_bar
from tfrec.evaluate.methods import ABLATION_PREFIX, MODEL, STAGE1, ablation_name
from tfrec.evaluate.runner import evaluate_run
from tfrec.evaluate.table import format_report
from tfrec.ranking import features as F
from tfrec.ranking.features import FEATURE_GROUPS

WIDTH = 20  # the fixture's N
SLOTS = 2  # its text slots: a list is WIDTH + SLOTS wide, below MAX_K, so the curves stop there
LIST = WIDTH + SLOTS


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory):
    """A small run trained with both stages (generated clustered sessions, some items
    hidden from training: cold targets)."""
    from session_helpers import train_generated_run
    from tfrec.ranking.two_stage import train

    return train_generated_run(tmp_path_factory.mktemp("staged"), train, [
        "model.objective=retrieval", "train.retrieval_batch_size=128", "train.cold_items=0.1",
        "ranking.epochs=10", "ranking.members=1", f"ranking.num_candidates={WIDTH}",
        "ranking.hidden_units=[8]", f"ranking.text_slots={SLOTS}"])


@pytest.fixture(scope="module")
def staged_report(staged_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("staged_evaluation")
    return out, evaluate_run(staged_run, out, ("popularity",))


@pytest.fixture(scope="module")
def truth(staged_run):
    """The run's model, stage, cases and `evaluate_stages`' figures, made apart from
    `tfrec evaluate`."""
    from tfrec.metrics import rank_targets
    from tfrec.ranking.stage import evaluate_stages
    from tfrec.ranking.two_stage import load_stage
    from tfrec.run import load_run, prepare_training_data

    config, _, model, _ = load_run(staged_run)
    data = prepare_training_data(config)
    stage = load_stage(staged_run, model)
    ranks, items, queries = rank_targets(model, data.cases.queries, data.cases.targets,
                                         config.model.history_length)
    return {"config": config, "data": data, "stage": stage, "stage1_ranks": ranks,
            "items": items, "queries": queries,
            "stages": evaluate_stages(stage, model, data, config.model.history_length, 10)}


def test_the_report_has_both_stages_stage1_and_an_ablation_per_group(staged_report):
    out, result = staged_report
    ablations = [ablation_name(group) for group in FEATURE_GROUPS]
    assert list(result["methods"]) == [MODEL, STAGE1, *ablations, "popularity"]
    assert result["methods"][MODEL]["label"] == "tfrec (both stages)"
    cases = result["protocol"]["cases"]
    for name, m in result["methods"].items():
        assert m["all"]["cases"] == cases
        two_stage = name == MODEL or name.startswith(ABLATION_PREFIX)
        # A two-stage row ranks LIST candidates: its curve stops there.
        assert len(m["all"]["hr_curve"]) == (LIST if two_stage else 50)
        assert m.get("list_width") == (LIST if two_stage else None)
    for group, names in FEATURE_GROUPS.items():
        assert result["methods"][ablation_name(group)]["left_out"] == list(names)
    on_disk = json.loads((out / "report.json").read_text())
    assert list(on_disk["methods"]) == list(result["methods"])
    assert on_disk["ranking_stage"]["ablations"] is True
    printed = format_report(result)
    for m in result["methods"].values():
        assert m["label"] in printed
    assert "tfrec w/o item_item" in printed and "candidate recall (HR@22)" in printed
    page = (out / "report.html").read_text()
    assert "<h2>Ranking stage</h2>" in page and "tfrec w/o two_tower" in page
    assert "<h3>Candidate recall (HR@22)</h3>" in page
    # The model's other rows against it: the paired difference is the rows' difference.
    for name in (STAGE1, *ablations):
        m = result["methods"][name]
        vs = m["vs_model"]["all"]["hr@10"]
        assert vs["difference"] == pytest.approx(
            m["all"]["hr@10"] - result["methods"][MODEL]["all"]["hr@10"], abs=1e-12)
        assert vs["users"] >= 1
    assert "vs_model" not in result["methods"][MODEL]
    assert "vs_model" not in result["methods"]["popularity"]
    assert "against both stages (HR@10 difference" in printed
    assert "Against both stages (HR@10 difference" in page


def test_the_model_row_is_evaluate_stages_and_stage1_is_the_two_tower(staged_report, truth):
    from tfrec.metrics import hit_rate

    _, result = staged_report
    cases = truth["data"].cases
    model, stage1 = result["methods"][MODEL], result["methods"][STAGE1]
    for group in ("all", "warm", "cold"):
        expected = truth["stages"][group]
        assert model[group]["cases"] == expected["cases"]
        if not expected["cases"]:
            continue
        for metric in ("hr@10", "ndcg@10"):
            assert model[group][metric] == pytest.approx(expected[metric], abs=1e-9)
            assert stage1[group][metric] == pytest.approx(truth["stages"]["stage1"][group][
                metric], abs=1e-9)
    # The two stages rank differently on this run (else the rows would test nothing): their
    # NDCG@10 or their hit-rate curves differ (one HR@10 alone may tie by chance).
    width = len(model["all"]["hr_curve"])
    assert (model["all"]["ndcg@10"], model["all"]["hr_curve"]) != (
        stage1["all"]["ndcg@10"], stage1["all"]["hr_curve"][:width])
    # Stage 1's whole curve is the two-tower's own ranks over the catalogue.
    ranks = truth["stage1_ranks"]
    for group, mask in (("all", np.ones(len(ranks), bool)), ("cold", cases.cold)):
        assert stage1[group]["hr_curve"] == pytest.approx(
            [hit_rate(ranks[mask], k) for k in range(1, 51)], abs=1e-12)
    # The two-stage curve: each target's place in its ranked list (from the stage itself).
    exact = truth["stage"].target_ranks(truth["queries"], cases.queries, cases.targets)
    assert model["all"]["hr_curve"] == pytest.approx(
        [float(np.mean(exact < k)) for k in range(1, LIST + 1)], abs=1e-12)


def test_the_saved_stage_scores_as_the_trained_one_did(staged_run, staged_report):
    """eval.json holds both stages' figures measured by `tfrec train` with the stage
    still in memory; the stage loaded from the run folder must reproduce them."""
    _, result = staged_report
    trained = json.loads((staged_run / "eval.json").read_text())
    for group in ("all", "warm", "cold"):
        if not trained[group]["cases"]:
            continue
        for metric in ("hr@10", "ndcg@10"):
            assert result["methods"][MODEL][group][metric] == pytest.approx(
                trained[group][metric], abs=1e-6), (group, metric)
            assert result["methods"][STAGE1][group][metric] == pytest.approx(
                trained["stage1"][group][metric], abs=1e-6), (group, metric)


def brute_force_lists(truth) -> dict:
    """Each case's candidate lists one at a time: the two-tower's top N, the table's
    top N (positive scores), and both merged half and half (the table's j-th item,
    then the two-tower's j-th, duplicates skipped), the query's items left out, then
    the text slots' picks."""
    stage, cases = truth["stage"], truth["data"].cases
    assert stage.table_share == 0.5
    table = stage.tables.table.matrix().toarray()
    items = stage.tables.item_embeddings
    lists = {"two_tower": [], "table": [], "merged": []}
    for query_emb, query in zip(truth["queries"], cases.queries):
        own = set(query) | {0}
        tt = [i for i in np.argsort(-(items @ query_emb), kind="stable") if i not in own]
        scores = table[sorted(set(query))].sum(axis=0)
        ii = [i for i in np.argsort(-scores, kind="stable") if i not in own and scores[i] > 0]
        tt, ii = tt[:WIDTH], ii[:WIDTH]
        merged = []
        for j in range(WIDTH):
            for source in (ii, tt):
                if j < len(source) and source[j] not in merged:
                    merged.append(source[j])
        lists["two_tower"].append(tt)
        lists["table"].append(ii)
        merged = merged[:WIDTH]
        pickable = np.asarray(stage.tables.counts) == 0
        pickable[0] = False
        picks = F.text_picks(stage.tables.tfidf, [query], pickable, SLOTS,
                             np.array([merged + [0] * (WIDTH - len(merged))]),
                             np.array([[True] * len(merged) + [False] * (WIDTH - len(merged))]))
        lists["merged"].append(merged + picks[0].tolist())
    return lists


def test_candidate_recall_is_a_count_of_targets_in_the_lists(staged_report, truth):
    _, result = staged_report
    cases = truth["data"].cases
    recall = result["ranking_stage"]["candidate_recall"]
    assert result["ranking_stage"]["num_candidates"] == WIDTH
    lists = brute_force_lists(truth)
    for source in ("merged", "two_tower", "table"):
        found = np.array([t in found for t, found in zip(cases.targets, lists[source])])
        for group, mask in (("all", np.ones(len(found), bool)), ("warm", ~cases.cold),
                            ("cold", cases.cold)):
            assert 0.0 <= recall[source][group] <= 1.0
            assert recall[source][group] == pytest.approx(found[mask].mean(), abs=1e-12), (
                source, group)
    # evaluate_stages counts the merged list the same way.
    assert recall["merged"]["all"] == pytest.approx(truth["stages"]["candidate_recall"])
    # The table has no weight for items without training events: no cold target.
    assert cases.cold.sum() > 0 and recall["table"]["cold"] == 0.0
    # The model's HR@N is its candidate recall: the ranker only reorders the list.
    assert result["methods"][MODEL]["all"]["hr_curve"][-1] == pytest.approx(
        recall["merged"]["all"])


def test_the_cold_items_share_of_both_stages_top_slots_is_counted_from_the_stage(
        staged_report, truth):
    out, result = staged_report
    cases, vocab = truth["data"].cases, truth["data"].vocab
    cands, mask, scores = truth["stage"].score(truth["queries"], cases.queries)
    cold_item = vocab.counts == 0
    top = []
    for row in range(len(cands)):
        order = np.argsort(-scores[row][mask[row]], kind="stable")[:10]
        top.extend(cands[row][mask[row]][order].tolist())
    share = result["cold_start"]["cold_share"]
    assert share["both_stages_top_k_slots"] == pytest.approx(cold_item[top].mean(), abs=1e-12)
    assert 0.0 < share["both_stages_top_k_slots"] < 1.0
    printed = format_report(result)
    assert (f"{share['top_k_slots']:.1%} of stage 1's top-10 slots and "
            f"{share['both_stages_top_k_slots']:.1%} of both stages'") in printed
    assert "of both stages'" in (out / "report.html").read_text()


def test_ablations_off_and_k_beyond_the_list(staged_run, tmp_path, capsys):
    out = tmp_path / "ev"
    assert cli.main(["-q", "evaluate", "--run", str(staged_run), "--out", str(out),
                     "--baselines", "none", "--no-ablations", "-k", "25"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == [MODEL, STAGE1]
    assert report["ranking_stage"]["ablations"] is False
    assert "ablations off" in printed
    # K = 25 > N + m = 22: a target outside the list is a miss at every K, so the
    # two-stage HR@25 is its HR@22, never more.
    model = report["methods"][MODEL]["all"]
    assert model["hr@25"] == pytest.approx(model["hr_curve"][-1])
    assert len(model["hr_curve"]) == LIST
    assert "HR@25 of the two-stage rows is their HR@22" in printed
    assert "then up to 2 items without behaviour found by their text" in printed


def test_a_run_without_a_ranking_stage_has_none_of_the_rows(run_dir, tmp_path):
    result = evaluate_run(run_dir, tmp_path / "ev", ("popularity",))
    assert list(result["methods"]) == [MODEL, "popularity"]
    assert result["methods"][MODEL]["label"] == "tfrec (full model)"
    assert "list_width" not in result["methods"][MODEL]
    assert len(result["methods"][MODEL]["all"]["hr_curve"]) == 50
    assert "ranking_stage" not in result
    assert not any("stage 1" in c["check"] for c in result["checks"])
    assert "ranking stage" not in format_report(result)
    assert "Ranking stage" not in (tmp_path / "ev" / "report.html").read_text()


def test_the_bar_compares_both_stages_with_the_baselines_not_with_its_own_rows():
    def method(a, w, c, length=50):
        return {g: {"hr@10": v, "ndcg@10": 0.1, "hr_curve": [v] * length}
                for g, v in (("all", a), ("warm", w), ("cold", c))}

    methods = {MODEL: method(0.30, 0.32, 0.20, length=WIDTH),
               STAGE1: method(0.25, 0.25, 0.22),
               ablation_name("tfidf"): method(0.31, 0.33, 0.10, length=WIDTH),
               "tfidf_text": method(0.20, 0.19, 0.21)}
    checks = {c["check"]: (c["met"], c["best_baseline"]) for c in check_bar(methods, 10, None)}
    assert checks == {
        # An ablation above the model is not a baseline the model must beat.
        "beats every baseline on all cases": (True, "tfidf_text"),
        "matches or beats the best text-only method on cold targets": (False, "tfidf_text"),
        "the ranking stage matches or beats stage 1 alone on all cases": (True, STAGE1)}
    # With no HR@50 (a list of 20), the HR@50 cold check is left out, not judged on HR@20.
    assert not any("(HR@50)" in c for c in checks)
    methods[MODEL] = method(0.30, 0.32, 0.20)
    assert any("(HR@50)" in c["check"] for c in check_bar(methods, 10, None))


def test_a_two_stage_export_is_also_scored_as_served(staged_run, staged_report, tmp_path):
    """`tfrec evaluate --saved-model` on a two-stage export: a row of its serving_default's
    top k (both stages as served), which brute force makes the in-process row's figures;
    the index recall is the one the export measured (its serving_default gives the
    ranker's top k, not the index's)."""
    from tfrec.evaluate.methods import SERVED
    from tfrec.exporter import export
    from tfrec.index import IndexConfig

    version = export(staged_run, tmp_path / "models", IndexConfig(kind="brute_force"))
    result = evaluate_run(None, tmp_path / "ev", ("popularity",), saved_model=version.path,
                          ablations=False)
    served, model = result["methods"][SERVED], result["methods"][MODEL]
    assert served["list_width"] == WIDTH  # k is at most N
    cases = result["protocol"]["cases"]
    for group in ("all", "warm"):
        # Ties may fall either way in the graph's top k (in-process they count against
        # the target): at most a case apart.
        assert abs(served[group]["hr@10"] - model[group]["hr@10"]) <= 1.0 / cases + 1e-9
        assert served[group]["hr@10"] == pytest.approx(
            staged_report[1]["methods"][MODEL][group]["hr@10"], abs=1.0 / cases + 1e-9)
    recall = result["index_recall"]
    assert recall["measured"].startswith("at export") and recall["recall"]["10"] == 1.0
    printed = format_report(result)
    assert "tfrec as served" in printed and "sessions, at export" in printed


def test_an_export_whose_stage_was_refitted_since_is_refused(staged_run, tmp_path):
    """The export's two-tower under a ranker fitted after it is a model that never existed."""
    import dataclasses
    import shutil

    from tfrec.errors import InputError
    from tfrec.exporter import export
    from tfrec.index import IndexConfig
    from tfrec.ranking.two_stage import train
    from tfrec.run_folder import RunFolder

    run = tmp_path / "run"
    shutil.copytree(staged_run, run, ignore=shutil.ignore_patterns("evaluation"))
    version = export(run, tmp_path / "models", IndexConfig(kind="brute_force"))
    config = RunFolder(run).read_config()
    # One epoch: the refusal turns on the stage being refitted, not on how well it fits.
    train(None, run, resume=True, verbose=0,
          ranking=dataclasses.replace(config.ranking, members=2, epochs=1))
    with pytest.raises(InputError, match="not the one this export serves"):
        evaluate_run(None, tmp_path / "ev", (), saved_model=version.path, ablations=False)
    # Another run's export on this run's cases is scored, with a warning (not this check).
    scored = evaluate_run(staged_run, tmp_path / "ev2", (), saved_model=version.path,
                          ablations=False)
    assert scored["methods"][MODEL]["all"]["cases"] > 0


def test_a_scann_export_is_scored_one_session_a_request():
    """ScaNN answers a query alone and in a batch by different paths (a session's list
    can differ a little): an export is scored as clients call it, one session a request;
    a brute-force export, whose answers never depend on the batch, in batches."""
    import types

    import tensorflow as tf

    from tfrec.evaluate.exported import ExportedModel

    calls = []

    def serving_default(item_ids, k):
        calls.append(int(item_ids.shape[0]))
        return {"item_ids": tf.constant([["b", "a"]] * int(item_ids.shape[0]))}

    model = ExportedModel.__new__(ExportedModel)
    model.module = types.SimpleNamespace(signatures={"serving_default": serving_default})
    model.vocab = types.SimpleNamespace(ids=np.array(["", "a", "b", "c"], dtype=object))
    for kind, sizes in (("scann", [1, 1, 1]), ("brute_force", [3])):
        calls.clear()
        model.metadata = {"index_kind": kind, "max_k": 2}
        ranks, width = model.served_ranks([[2], [1], [1, 2]], np.array([1, 2, 3]), 5)
        assert calls == sizes and width == 2
        assert ranks.tolist() == [1, 0, 2]  # "a" second, "b" first, "c" a miss
