"""`tfrec train` with the ranking stage: the leakage rule, the saved stage, the switch."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tfrec.cli import main
from tfrec.data.synthetic import write_event_files
from tfrec.ranking import stage as stage_lib
from tfrec.ranking import two_stage
from tfrec.run import load_run, load_run_config, prepare_training_data


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    events, items = write_event_files(folder, 8_000, 90, num_users=700, num_clusters=5,
                                      num_cold=4, seed=5)
    config = {
        "data": {"layout": "events", "events": str(events), "items": str(items),
                 "events_schema": {"event_col": "event"}, "pairs": {"batch_size": 512}},
        "model": {"embedding_dim": 16, "text": {"token_dim": 8, "filters": 8}},
        "train": {"epochs": 1, "split_fraction": 0.15, "learning_rate": 0.01},
        "ranking": {"epochs": 3, "num_candidates": 30, "hidden_units": [8]},
    }
    (folder / "run.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def trained(data_files, tmp_path_factory):
    """A two-stage run, and what its stage-1 hook and the table builder were given."""
    run = tmp_path_factory.mktemp("runs") / "run"
    config = load_run_config(data_files / "run.json")
    seen = {"tables": [], "lambdas": [], "chosen": []}
    build = stage_lib._table

    def recording_table(config_, sessions, size, lambdas=None):
        seen["tables"].append(int(len(sessions.items)))
        seen["lambdas"].append(lambdas)
        table = build(config_, sessions, size, lambdas)
        seen["chosen"].append(table.info["lambda"])
        return table

    stage_lib._table = recording_table
    try:
        result = two_stage.train(config, run, verbose=0)
    finally:
        stage_lib._table = build
    return run, config, result, seen


def test_no_ranker_case_is_in_the_two_tower_or_the_table_fit(trained):
    run, config, result, seen = trained
    data = prepare_training_data(config)
    stage1, split = stage_lib.stage1_training_data(config, data)
    # The two-tower and the first table see stage 1's events only, the second table every
    # training event (for the held-out cases and the export).
    assert len(stage1.sessions.items) < len(data.sessions.items)
    assert seen["tables"] == [len(stage1.sessions.items), len(data.sessions.items)]
    # λ is chosen on each table's own sessions (never the held-out cases): the whole
    # period's from the grid's values next to stage 1's choice.
    grid = sorted(config.ranking.ease_lambdas)
    at = grid.index(seen["chosen"][0])
    assert seen["lambdas"] == [None, tuple(grid[max(0, at - 1):at + 2])]
    assert seen["chosen"][1] in seen["lambdas"][1]
    # No event of the ranker's slice is in stage 1's sessions: the (user, time) pairs differ.
    s1 = set(zip(split.stage1["user"], split.stage1["time"]))
    ranker = set(zip(split.ranker["user"], split.ranker["time"]))
    assert ranker and not s1 & ranker
    # The ranker's cases come from its slice: each case's items were all bought there.
    cases, _ = stage_lib.ranker_cases(split.ranker, data.vocab, config, split.per_user,
                                      config.train.eval_seed, 1)
    ranker_items = set(data.vocab.lookup(split.ranker["item"].to_numpy(dtype=object)).tolist())
    assert all(set(q) | {int(t)} <= ranker_items for q, t in zip(cases.queries, cases.targets))


def test_items_only_in_the_ranker_slice_embed_by_their_text(trained):
    run, config, result, _ = trained
    data = prepare_training_data(config)
    _, split = stage_lib.stage1_training_data(config, data)
    counts = stage_lib.event_counts(split.stage1, data.vocab)
    _, vocab, model, _ = load_run(run)
    model.item_embeddings()  # builds the layers (a restore is deferred until then)
    ids = model.item_encoder.id_embedding.embeddings.numpy()
    unseen = np.flatnonzero(counts[:len(ids)] == 0)[1:]
    seen = np.flatnonzero(counts[:len(ids)] > 0)
    assert not ids[unseen].any()
    assert np.abs(ids[seen]).sum(axis=1).min() > 0


def test_a_click_log_without_item_text_trains_both_stages(data_files, tmp_path, caplog):
    """Events alone (no items table, `model.use_text: false`): both stages train and
    evaluate; an item seen only in the ranker's slice has no text to embed by, and the
    log says what serves it instead."""
    config = json.loads((data_files / "run.json").read_text())
    events = Path(config["data"]["events"]).read_text().splitlines()
    times = sorted(int(line.split(",")[2]) for line in events[1:])
    # Two sessions of a new item inside the ranker's slice (the training period's last 12%
    # of the first 85% of the events): stage 1 never sees it.
    late = times[int(0.8 * len(times))]
    extra = [f"{user},{item},{late + 60 * n},click" for user in ("new-u1", "new-u2")
             for n, item in enumerate(("fresh", "i1", "i2"))]
    (tmp_path / "events.csv").write_text("\n".join(events + extra) + "\n")
    run = tmp_path / "run"
    config = load_run_config(data_files / "run.json", [f"data.events={tmp_path / 'events.csv'}",
                                                       "data.items=null", "model.use_text=false"])
    with caplog.at_level("INFO", logger="tfrec"):
        two_stage.train(config, run, verbose=0)
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["all"]["cases"] > 0 and "stage1" in evaluation
    assert (run / "ranking" / "stage.json").exists()
    [cleared] = [r.getMessage() for r in caplog.records
                 if "only in the ranker's slice" in r.getMessage()]
    assert "no text tower" in cleared and "embed by their text" not in cleared


def test_every_warm_fit_case_is_also_shown_as_new_in_a_weighted_copy(trained):
    run, config, _, _ = trained
    assert config.ranking.new_copies  # the default
    # Without decoys: their draws run along the fit lists, which the copies change (the
    # lists shown as new differ), so they would differ between the two builds by chance.
    config = dataclasses.replace(config, ranking=dataclasses.replace(config.ranking,
                                                                     new_decoys=0))
    _, _, model, _ = load_run(run)
    data = prepare_training_data(config)
    stage1, split = stage_lib.stage1_training_data(config, data)
    copied, _ = stage_lib.ranker_lists(config, data, stage1, split, model)
    off = dataclasses.replace(config, ranking=dataclasses.replace(config.ranking,
                                                                  new_copies=False))
    plain, _ = stage_lib.ranker_lists(off, data, stage1, split, model)
    share, n = config.ranking.new_share, len(plain.targets)
    counts = stage_lib.event_counts(split.stage1, data.vocab)
    warm = plain.fit_rows[counts[plain.targets[plain.fit_rows]] > 0]
    copies = np.arange(n, n + len(warm))
    assert len(warm) and len(copied.targets) == n + len(warm)
    np.testing.assert_array_equal(copied.targets[copies], plain.targets[warm])
    np.testing.assert_array_equal(copied.fit_rows, np.concatenate([plain.fit_rows, copies]))
    np.testing.assert_array_equal(np.sort(copied.new_rows[np.isin(copied.new_rows, copies)]),
                                  copies)
    # The validation lists (and the cases they show as new) are the same either way.
    val = plain.validation_rows
    np.testing.assert_array_equal(copied.validation_rows, val)
    np.testing.assert_array_equal(copied.features[val], plain.features[val])
    np.testing.assert_array_equal(copied.new_rows[~np.isin(copied.new_rows, copies)],
                                  plain.new_rows[np.isin(plain.new_rows, val)])
    # Each warm case as itself, then its copy with the target shown as new: out of
    # the list, or in it without behaviour.
    itself = warm[~np.isin(warm, plain.new_rows)]
    np.testing.assert_array_equal(copied.features[itself], plain.features[itself])
    behaviour = stage_lib.F.FEATURES.index("has_behaviour")
    for row in copies:
        at = np.flatnonzero(copied.labels[row] > 0)
        assert not len(at) or copied.features[row, at[0], behaviour] == 0
    assert (copied.labels[copies].sum(axis=1) > 0).any()
    # The weights keep the balance: a warm case 1 - share, its copy share, the rest 1.
    weights = copied.weights
    np.testing.assert_allclose(weights[warm], 1 - share)
    np.testing.assert_allclose(weights[copies], share)
    rest = np.setdiff1d(np.arange(n), warm)
    np.testing.assert_allclose(weights[rest], 1.0)
    assert plain.weights is None or np.all(plain.weights == 1)
    assert copied.info["new_copies"] and not plain.info["new_copies"]


def test_a_run_saved_before_new_copies_reads_as_fit_without_them(trained, tmp_path):
    run, _, _, _ = trained
    saved = json.loads((run / "config.json").read_text())
    del saved["ranking"]["new_copies"], saved["ranking"]["new_decoys"]
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(saved))
    from tfrec.run_folder import RunFolder
    old = RunFolder(folder).read_config().ranking
    assert (old.new_copies, old.new_decoys) == (False, 0)  # as those rankers were fit
    new = RunFolder(run).read_config().ranking
    assert new.new_copies is True and new.new_decoys == type(new)().new_decoys


def test_a_ranking_stage_cut_short_leaves_an_eval_marked_stage_1_alone(
        data_files, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(two_stage, "fit_ranking_stage", interrupted)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        two_stage.train(load_run_config(data_files / "run.json"), run, verbose=0)
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["unfinished"].startswith("stage 1 alone: the ranking stage has not "
                                               "finished (tfrec train --resume fits it)")
    assert "stage1" not in evaluation and not (run / "ranking").exists()


def test_the_saved_stage_scores_as_the_trained_one_and_eval_has_both_stages(trained):
    run, config, result, _ = trained
    evaluation = json.loads((run / "eval.json").read_text())
    assert set(evaluation) >= {"all", "warm", "cold", "stage1", "candidate_recall", "ranking"}
    assert "unfinished" not in evaluation
    assert 0 < evaluation["candidate_recall"] <= 1
    _, vocab, model, _ = load_run(run)
    stage = two_stage.load_stage(run, model)
    assert stage.num_candidates == 30 and len(stage.columns) == len(stage_lib.F.FEATURES)
    again = stage_lib.evaluate_stages(stage, model, result.data, config.model.history_length,
                                      config.train.eval_k)
    for name in ("all", "warm"):
        assert again[name] == pytest.approx(evaluation[name])
        assert again["stage1"][name] == pytest.approx(evaluation["stage1"][name])
    # The two stages are not the two-tower under another name: the ranker reorders.
    data = result.data
    query_emb = model.query_embeddings(
        stage_lib.histories_from_lists(data.cases.queries, config.model.history_length))
    cands, mask, scores = stage.score(query_emb, data.cases.queries)
    tt = np.einsum("nd,nkd->nk", query_emb, stage.tables.item_embeddings[cands])
    order_ranker = np.argsort(-np.where(mask, scores, -np.inf), axis=1)[:, :10]
    order_tt = np.argsort(-np.where(mask, tt, -np.inf), axis=1)[:, :10]
    assert (order_ranker != order_tt).any()
    # The new items' share of the top-k slots, counted here one list at a time.
    k, new = config.train.eval_k, np.asarray(data.vocab.counts) == 0
    new[0] = False
    slots = evaluation["new_item_slots"]
    assert new[1:].any() and slots["catalogue"] == pytest.approx(new[1:].mean())
    assert slots["targets"] == pytest.approx(data.cases.cold.mean())
    both, first = [], []
    items = stage.tables.item_embeddings
    for row, query in enumerate(data.cases.queries):
        listed = np.flatnonzero(mask[row])
        both += list(cands[row, listed[np.argsort(-scores[row, listed])][:k]])
        whole = query_emb[row] @ items.T
        whole[0], whole[query] = -np.inf, -np.inf
        first += list(np.argsort(-whole)[:k])
    assert slots["both_stages"] == pytest.approx(new[both].mean(), abs=0.002)
    assert slots["stage1"] == pytest.approx(new[first].mean(), abs=0.002)
    # A query is read as the set of its items, as the exported signatures read a session:
    # repeats and padding change nothing.
    queries = [list(q) for q in data.cases.queries[:20]]
    messy = [[0] + q + q[:1] + [0] for q in queries]
    a = stage.score(query_emb[:20], queries)
    b = stage.score(query_emb[:20], messy)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_a_warning_when_the_ranker_hides_new_items(caplog):
    slots = {"catalogue": 0.2, "targets": 0.08, "stage1": 0.9, "both_stages": 0.0, "k": 10}
    with caplog.at_level("WARNING"):
        assert two_stage.warn_if_new_items_hidden(slots, 0.1)
    assert "hold 0.0% of both stages' held-out top-10 slots, against 90.0% of stage 1's" in (
        caplog.text) and "raise ranking.new_share (now 0.1" in caplog.text
    # Exposure near the catalogue's share, or stage 1 showing none either: no warning.
    for both, stage1 in ((0.15, 0.9), (0.0, 0.0), (0.019, 0.0)):
        assert not two_stage.warn_if_new_items_hidden(
            {**slots, "both_stages": both, "stage1": stage1}, 0.1)


def test_ranking_off_trains_the_two_tower_alone(data_files, tmp_path):
    run = tmp_path / "run"
    assert main(["-q", "train", "--config", str(data_files / "run.json"), "--run-dir", str(run),
                 "--set", "ranking.enabled=false"]) == 0
    assert not (run / "ranking").exists()
    assert "stage1" not in json.loads((run / "eval.json").read_text())


def test_a_candidate_list_shorter_than_k_is_refused_before_training(
        data_files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["-q", "train", "--config", str(data_files / "run.json"), "--run-dir", str(run),
                 "--set", "ranking.num_candidates=5"]) == 2
    err = capsys.readouterr().err
    assert "ranking.num_candidates" in err and "k = 10" in err
    assert not Path(run / "checkpoints").exists()


def test_negative_text_slots_are_refused_naming_the_setting(data_files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["-q", "train", "--config", str(data_files / "run.json"), "--run-dir", str(run),
                 "--set", "ranking.text_slots=-1"]) == 2
    err = capsys.readouterr().err
    assert "ranking.text_slots" in err
    assert not Path(run / "checkpoints").exists()


def test_a_ranker_slice_without_a_usable_session_is_refused_before_training(
        data_files, tmp_path, capsys):
    # The end of the training period holds only one-item sessions: no ranker case. Said
    # before the two-tower trains (it was said after, when the advice no longer applied).
    import pandas as pd

    events = pd.read_csv(data_files / "events.csv")
    end = int(events["timestamp"].max())
    late = pd.DataFrame({"user_id": [f"late-{i}" for i in range(2_000)],
                         "item_id": [f"i{i % 50}" for i in range(2_000)],
                         "timestamp": end + 10 + np.arange(2_000) * 100, "event": "click"})
    path = tmp_path / "events.csv"
    pd.concat([events, late]).to_csv(path, index=False)
    run = tmp_path / "run"
    assert main(["-q", "train", "--config", str(data_files / "run.json"), "--run-dir", str(run),
                 "--set", f"data.events={path}", "--set", "train.split_fraction=0.05"]) == 2
    err = capsys.readouterr().err
    assert "ranking.ranker_share" in err and "no session with two distinct items" in err
    assert not Path(run / "checkpoints").exists()


def test_an_interrupted_save_leaves_the_previous_stage_whole(trained, tmp_path, monkeypatch):
    import shutil

    import tensorflow as tf

    run, _, _, _ = trained
    _, _, model, _ = load_run(run)
    stage = two_stage.load_stage(run, model)
    folder = tmp_path / "ranking"
    shutil.copytree(run / "ranking", folder)
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after tables.npz is written, before the ranker

    stage.tables.counts = stage.tables.counts + 1  # a save that differs from the one kept
    monkeypatch.setattr(tf.train.Checkpoint, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stage.save(folder)
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranking"]
    monkeypatch.undo()
    stage.save(folder)  # whole: the new tables with their ranker and metadata
    saved = stage_lib.RankingStage.load(folder, model.item_embeddings())
    np.testing.assert_array_equal(saved.tables.counts, stage.tables.counts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranking"]


def test_a_damaged_stage_is_refused_naming_its_file(trained, tmp_path):
    import shutil

    from tfrec.errors import InputError

    run, _, _, _ = trained
    _, _, model, _ = load_run(run)
    meta = json.loads((run / "ranking" / "stage.json").read_text())
    del meta["ranker"]
    damages = [("stage.json", b"{not json"), ("tables.npz", b"cut short"),
               ("tables.npz", b""), ("ranker.index", b"\x00"),
               ("stage.json", json.dumps(meta).encode())]
    for number, (name, content) in enumerate(damages):
        folder = tmp_path / str(number) / "ranking"
        shutil.copytree(run / "ranking", folder)
        (folder / name).write_bytes(content)
        with pytest.raises(InputError) as caught:
            stage_lib.RankingStage.load(folder, model.item_embeddings())
        message = str(caught.value)
        assert f"ranking stage is damaged ({name}:" in message, message
        assert f"tfrec train --run-dir {folder.parent} --resume" in message
    folder = tmp_path / "missing" / "ranking"
    shutil.copytree(run / "ranking", folder)
    (folder / "tables.npz").unlink()
    with pytest.raises(InputError, match=r"damaged \(tables.npz: "):
        stage_lib.RankingStage.load(folder, model.item_embeddings())
    # Stage 1 alone wanted (tfrec export --no-ranking-stage): warned about, not needed.
    with pytest.raises(InputError, match="damaged"):
        two_stage.load_stage(folder.parent, model)
    assert two_stage.load_stage(folder.parent, model, missing_ok=True) is None


def test_a_ranker_on_few_cases_or_under_the_two_tower_is_warned_about():
    good = {"ranker_cases": 3000, "validation": {"hr_two_stage": 0.34,
                                                 "hr_candidates_by_two_tower": 0.22, "k": 10}}
    assert stage_lib.ranker_warnings(good) == []
    [few] = stage_lib.ranker_warnings({**good, "ranker_cases": 31})
    assert few.startswith("the ranker learned from 31 cases (fewer than 100)")
    [unchecked] = stage_lib.ranker_warnings({"ranker_cases": 3000})
    assert "no validation cases" in unchecked
    [worse] = stage_lib.ranker_warnings({**good, "validation": {
        "hr_two_stage": 0.40, "hr_candidates_by_two_tower": 0.47, "k": 10}})
    assert "worse than the two-tower's scores do (HR@10 0.4000 against 0.4700)" in worse
    assert "--no-ranking-stage" in worse


def test_an_export_of_stage_1_alone_warns_when_its_lists_fill_with_new_items(caplog):
    from tfrec.exporter.saved_model import warn_if_new_items_flood

    flood = {"new_item_slots": {"stage1": 0.898, "targets": 0.05, "both_stages": 0.061,
                                "catalogue": 0.6, "k": 10}}
    message = warn_if_new_items_flood(flood)
    assert message.startswith("served by stage 1 alone, items without behaviour")
    assert "89.8% of stage 1's held-out top-10 slots against 5.0% of the targets" in message
    assert "held them to 6.1%: serve both stages" in message and message in caplog.text
    # The bundled run's shares (6.9% against 6.4%), or no figures: nothing to say.
    assert warn_if_new_items_flood({"new_item_slots": {"stage1": 0.069, "targets": 0.064,
                                                       "k": 10}}) is None
    assert warn_if_new_items_flood(None) is None and warn_if_new_items_flood({}) is None
