"""The production path: a final model on every event, and fresh user embeddings without
retraining (`tfrec train --final-from`, `tfrec export --update-users`)."""

import json
import logging
import os
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from tfrec.cli import main
from tfrec.exporter.layout import LAST_VERSION

LATE_USERS = ("late-1", "late-2")


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """An evaluated run (both stages, the last 15% of the time range held out) whose data
    has two users with events only after the split, its final model trained through the
    command line, and the export of each."""
    from tfrec.data.synthetic import event_files_settings, write_event_files
    from tfrec.exporter import export
    from tfrec.index import IndexConfig
    from tfrec.ranking.two_stage import train
    from tfrec.run import load_run_config

    folder = tmp_path_factory.mktemp("production")
    events_path, items_path = write_event_files(folder, 6_000, 120, num_users=500,
                                                num_clusters=6, num_cold=0, seed=5)
    events = pd.read_csv(events_path)
    end = int(events["timestamp"].max())
    late = pd.DataFrame({"user_id": np.repeat(LATE_USERS, 3),
                         "item_id": ["i3", "i7", "i9", "i11", "i12", "i14"],
                         "timestamp": end - 100 + np.arange(6), "event": "click"})
    pd.concat([events, late]).to_csv(events_path, index=False)
    config = load_run_config(None, [
        *event_files_settings(events_path, items_path), "model.embedding_dim=16",
        "model.text.token_dim=8", "model.text.filters=8", "train.epochs=2",
        "train.split_fraction=0.15", "train.steps_per_epoch=6", "ranking.epochs=1",
        "ranking.members=1"])
    evaluated = folder / "run"
    train(config, evaluated, verbose=0)
    final = folder / "final"
    assert main(["-q", "train", "--final-from", str(evaluated), "--run-dir", str(final)]) == 0
    index = IndexConfig(kind="brute_force", max_k=20)
    export(evaluated, folder / "evaluated_model", index)
    export(final, folder / "final_model", index)
    return {"folder": folder, "events": events_path, "evaluated": evaluated, "final": final,
            "evaluated_model": folder / "evaluated_model", "final_model": folder / "final_model"}


def _metadata(version_dir):
    return json.loads((version_dir / "assets.extra" / "tfrec_metadata.json").read_text())


def _recommend_for_user(version_dir, users, k=5):
    import tensorflow as tf

    from tfrec.exporter import load_saved_model

    out = load_saved_model(version_dir).signatures["recommend_for_user"](
        user_ids=tf.constant(list(users)), k=tf.constant(k))
    return out["item_ids"].numpy(), out["known"].numpy()


def test_the_final_model_trains_every_event_and_serves_users_after_the_old_split(production):
    from tfrec.run_folder import RunFolder

    evaluated, final = RunFolder(production["evaluated"]), RunFolder(production["final"])
    config = final.read_config()
    assert config.train.split_fraction == 0 and config.train.split_date is None
    assert config.model == evaluated.read_config().model
    assert len(final.read_history()) == len(evaluated.read_history()) == 2
    assert not final.eval_file.exists()  # nothing held out, nothing evaluated
    assert final.ranking.exists()  # the two-stage training kept its ranker slice
    record = final.read_evaluated_as()
    assert record["run"] == str(production["evaluated"].resolve())
    assert record["events"] == len(pd.read_csv(production["events"]))
    assert record["eval"]["hr@10"] == evaluated.read_eval()["all"]["hr@10"]

    old = _metadata(production["evaluated_model"] / "1")
    new = _metadata(production["final_model"] / "1")
    assert new["evaluated_as"] == record and new["trained_on"].startswith("every event")
    assert old["evaluated_as"]["run"] == record["run"]
    # The evaluated run's export cannot serve the users whose events are all after the
    # split, and says so; the final model's serves them.
    assert old["users_not_cached"] >= len(LATE_USERS)
    uncached = (production["evaluated_model"] / "1" / "assets.extra" / "embeddings" /
                "uncached_user_ids.txt").read_text().split()
    assert set(LATE_USERS) <= set(uncached)
    assert new["users_not_cached"] == 0
    _, known = _recommend_for_user(production["evaluated_model"] / "1", LATE_USERS)
    assert not known.any()
    items, known = _recommend_for_user(production["final_model"] / "1", LATE_USERS)
    assert known.all() and (items != b"").all()


def test_the_final_model_trains_the_epochs_the_evaluated_run_finished(production, tmp_path):
    from tfrec.run_folder import RunFolder
    from tfrec.training import final_run_config

    # A run that stopped after its first epoch (of two): its final model trains one.
    stopped = RunFolder(tmp_path / "stopped")
    stopped.path.mkdir()
    source = RunFolder(production["evaluated"])
    shutil.copy(source.config_file, stopped.config_file)
    stopped.history_file.write_text(source.history_file.read_text().splitlines()[0] + "\n")
    config, record = final_run_config(stopped.path)
    assert config.train.epochs == record["epochs"] == 1
    assert record["eval"] is None and record["split"]["split_fraction"] == 0.15
    assert config.data == source.read_config().data


def test_the_final_model_refuses_other_settings_and_its_own_folder(production, capsys):
    assert main(["train", "--final-from", str(production["evaluated"]), "--run-dir",
                 str(production["folder"] / "x"), "--set", "model.embedding_dim=8"]) == 2
    assert "takes the evaluated run's settings" in capsys.readouterr().err
    assert main(["train", "--final-from", str(production["evaluated"]), "--run-dir",
                 str(production["evaluated"])]) == 2
    assert "a run folder of its own" in capsys.readouterr().err
    assert main(["train", "--final-from", str(production["final"]), "--run-dir",
                 str(production["folder"] / "y")]) == 2
    assert "a final model already" in capsys.readouterr().err


def test_all_users_notes_the_users_it_cannot_serve(production, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--all-users", "--model-dir",
                 str(production["evaluated_model"]), "-k", "3", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    count = _metadata(production["evaluated_model"] / "1")["users_not_cached"]
    assert err.count(f"{count:,} users of the run's data are not in the output") == 1  # once
    assert not set(LATE_USERS) & set(pd.read_parquet(out)["user_id"])


def _copy_model(production, tmp_path):
    base = tmp_path / "shop"
    shutil.copytree(production["final_model"], base)
    return base


def _update_file(tmp_path, rows, name="update.csv"):
    path = tmp_path / name
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event"]).to_csv(
        path, index=False)
    return path


def test_update_users_recomputes_embeddings_with_the_query_tower_and_adds_users(
        production, tmp_path, capsys):
    from tfrec.data.sequences import histories_from_lists
    from tfrec.run import load_run

    base = _copy_model(production, tmp_path)
    v1 = base / "1"
    users = (v1 / "assets.extra" / "embeddings" / "user_ids.txt").read_text().split()
    histories = np.load(v1 / "assets.extra" / "embeddings" / "user_histories.npy")
    old_embeddings = np.load(v1 / "assets.extra" / "embeddings" / "users.npy")
    user = users[3]
    t = 1_800_000_000
    path = _update_file(tmp_path, [
        (user, "i5", t + 2, "click"), (user, "i8", t + 1, "click"),  # out of order
        (user, "nope", t + 3, "click"),  # unknown to the model: skipped
        ("brand-new", "i2", t, "click"), ("brand-new", "i4", t + 5, "click"),
        ("only-unknown", "nope", t, "click")])
    assert main(["-q", "export", "--model-dir", str(base), "--update-users", str(path),
                 "--no-serving-config"]) == 0
    printed = capsys.readouterr().out
    assert "1 users updated, 1 added" in printed and "2 events skipped" in printed

    _, vocab, model, _ = load_run(production["final"])
    length = int(model.query_tower.history_length)
    v2 = base / "2" / "assets.extra" / "embeddings"
    new_users = (v2 / "user_ids.txt").read_text().split()
    new_embeddings = np.load(v2 / "users.npy")
    new_histories = np.load(v2 / "user_histories.npy")
    assert new_users[:len(users)] == users and new_users[len(users):] == ["brand-new"]
    expected = {user: [i for i in histories[3] if i > 0] + list(vocab.lookup(["i8", "i5"])),
                "brand-new": list(vocab.lookup(["i2", "i4"]))}
    for name, items in expected.items():
        row = new_users.index(name)
        want = histories_from_lists([items], length)
        np.testing.assert_array_equal(new_histories[row], want[0])
        np.testing.assert_allclose(new_embeddings[row], model.query_embeddings(want)[0],
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(new_embeddings[3], old_embeddings[3])
    # Users the file does not name keep their state.
    others = [i for i in range(len(users)) if i != 3]
    np.testing.assert_array_equal(new_embeddings[others], old_embeddings[others])
    meta = _metadata(base / "2")
    assert meta["users_update"]["added"] == 1 and meta["users_update"]["no_known_item"] == 1
    assert meta["evaluated_as"] == _metadata(v1)["evaluated_as"]
    # The served version answers the new user from its cache, both stages reading its items.
    ids, known = _recommend_for_user(base / "2", ["brand-new", "only-unknown"])
    assert known.tolist() == [True, False]
    assert not {b"i2", b"i4"} & set(ids[0])


@pytest.mark.parametrize("rows, message", [
    ([("u1", "i2", "not a time", "click")], "cannot parse"),
    ([("", "i2", 1_800_000_000, "click")], "missing user id"),
])
def test_update_users_on_bad_input_writes_nothing(production, tmp_path, capsys, rows,
                                                  message):
    base = _copy_model(production, tmp_path)
    before = sorted(p.relative_to(base) for p in base.rglob("*"))
    path = _update_file(tmp_path, rows)
    assert main(["export", "--model-dir", str(base), "--update-users", str(path),
                 "--no-serving-config"]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.relative_to(base) for p in base.rglob("*")) == before
    # A file without the run's columns, and a missing file: errors naming the file.
    unknown = _update_file(tmp_path, [("u1", "zz", 1_800_000_000, "click")], "unknown.csv")
    assert main(["export", "--model-dir", str(base), "--update-users", str(unknown),
                 "--no-serving-config"]) == 2
    assert "nothing to update" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("who,what\nu1,i2\n")
    for given in (bad, tmp_path / "missing.csv"):
        assert main(["export", "--model-dir", str(base), "--update-users", str(given),
                     "--no-serving-config"]) == 2
        err = capsys.readouterr().err
        assert str(given) in err
    # The run's layout is named for the file to follow; no setting export cannot take.
    assert main(["export", "--model-dir", str(base), "--update-users", str(bad),
                 "--no-serving-config"]) == 2
    err = capsys.readouterr().err
    assert "columns user_id, item_id, timestamp (ISO 8601 or epoch s)" in err, err
    assert "write the file so" in err and "set data.events_schema" not in err, err
    assert sorted(p.relative_to(base) for p in base.rglob("*")) == before
    # Another run of the same data given as the version's run: its users would not share
    # the version's space. Refused, naming it.
    good = _update_file(tmp_path, [("u1", "i3", 1_800_000_000, "click")], "good.csv")
    assert main(["export", "--model-dir", str(base), "--update-users", str(good),
                 "--run", str(production["evaluated"]), "--no-serving-config"]) == 2
    err = capsys.readouterr().err
    assert "is not the model version 1 was exported from" in err and "(--run)" in err
    assert sorted(p.relative_to(base) for p in base.rglob("*")) == before


def test_a_running_server_picks_up_the_refreshed_users_with_no_failed_call(
        production, tmp_path):
    from serving_helpers import Caller, Server, stub_of
    from tensorflow_serving.apis import predict_pb2
    import tensorflow as tf

    base = tmp_path / "shop"
    base.mkdir()
    shutil.copytree(production["final_model"] / "1", base / "1")
    server = Server(base, tmp_path)
    try:
        server.wait_for(1)

        def for_user(user):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "shop"
            request.model_spec.signature_name = "recommend_for_user"
            request.inputs["user_ids"].CopyFrom(tf.make_tensor_proto(np.array([user], bytes)))
            request.inputs["k"].CopyFrom(tf.make_tensor_proto(np.int32(3)))
            response = stub_of(server).Predict(request, timeout=30)
            return response.model_spec.version.value, tf.make_ndarray(
                response.outputs["known"])[0]

        assert for_user("fresh") == (1, False)
        path = _update_file(tmp_path, [("fresh", "i2", 1_800_000_000, "click"),
                                       ("fresh", "i6", 1_800_000_001, "click")])
        with Caller(server, [["i2", "i3"]]) as caller:
            assert main(["-q", "export", "--model-dir", str(base), "--update-users", str(path),
                         "--no-serving-config"]) == 0
            server.wait_for(2)
            caller.wait_until_served(2)
            time.sleep(0.3)
        assert caller.failures == [] and caller.served >= {1, 2}
        assert for_user("fresh") == (2, True)
    finally:
        server.stop()
    assert not [p for p in os.listdir(base) if p.startswith(".tmp")]


def test_the_beam_pipeline_gives_the_local_jobs_version(production, tmp_path, capsys, caplog):
    pytest.importorskip("apache_beam")
    t = 1_800_000_000
    rows = [("u1", "i5", t + 2, "click"), ("u1", "i5", t + 3, "click"),
            ("u1", "nope", t + 4, "click"), ("u2", "i8", t, "click"),
            ("new-a", "i2", t, "click"), ("new-a", "i4", t + 5, "click"),
            ("new-b", "nope", t, "click"), ("new-b", "other", t + 1, "click")]
    local, beam = tmp_path / "local", tmp_path / "beam"
    for base in (local, beam):
        shutil.copytree(production["final_model"] / "1", base / "1")
    logs = tmp_path / "logs"
    logs.mkdir()
    _update_file(logs, rows[:3] + rows[6:], "a.csv")
    _update_file(logs, rows[3:6], "b.csv")
    assert main(["-q", "export", "--model-dir", str(local), "--update-users",
                 str(_update_file(tmp_path, rows)), "--no-serving-config"]) == 0
    assert main(["-q", "export", "--model-dir", str(beam), "--update-users",
                 str(logs / "*.csv"), "--runner", "DirectRunner", "--no-serving-config"]) == 0
    assert "pipeline DONE" in capsys.readouterr().out
    a, b = (base / "2" / "assets.extra" / "embeddings" for base in (local, beam))
    assert (a / "user_ids.txt").read_text() == (b / "user_ids.txt").read_text()
    np.testing.assert_array_equal(np.load(a / "user_histories.npy"),
                                  np.load(b / "user_histories.npy"))
    np.testing.assert_allclose(np.load(a / "users.npy"), np.load(b / "users.npy"), atol=1e-6)
    changes = [_metadata(base / "2")["users_update"] for base in (local, beam)]
    for change in changes:
        change.pop("updated_at"), change.pop("events_file")
    assert changes[0] == changes[1]
    assert changes[0]["unknown_items"] == 2 and changes[0]["no_known_item"] == 1
    # A bad row in one file fails the job: nothing is written.
    _update_file(logs, [("u9", "i2", "never", "click")], "c.csv")
    assert main(["export", "--model-dir", str(beam), "--update-users", str(logs / "*.csv"),
                 "--runner", "DirectRunner", "--no-serving-config"]) == 2
    err = capsys.readouterr().err
    assert "cannot parse" in err and "Traceback" not in err
    # Beam's own log of the error (a traceback before the one line) is left out.
    assert not [r for r in caplog.records if r.name.startswith("apache_beam")
                and r.levelno >= logging.ERROR]
    assert sorted(p.name for p in beam.iterdir()) == [LAST_VERSION, "1", "2"]


def test_an_added_item_does_not_top_every_list_of_a_final_model(production, tmp_path):
    # A final model's ranker learns from a catalogue whose items all have behaviour: the
    # items added to its export later must not take every list's first place (a ranker
    # that met items without behaviour only as targets shown as new put them first: 98%
    # of the users here, with ranking.new_decoys: 0; 0.5% with the default).
    info = json.loads((production["final"] / "ranking" / "stage.json").read_text())["info"]
    assert info["decoys_shown_as_new"] >= 4 * info["fit_cases"]
    model_dir = tmp_path / "model"
    shutil.copytree(production["final_model"], model_dir)
    added = tmp_path / "added.csv"
    texts = pd.read_csv(production["folder"] / "items.csv")["text"].iloc[:2].tolist()
    pd.DataFrame({"item_id": ["new-1", "new-2"], "text": texts}).to_csv(added, index=False)
    assert main(["-q", "export", "--model-dir", str(model_dir), "--no-serving-config",
                 "--add-items", str(added)]) == 0
    users = pd.read_csv(production["events"])["user_id"].astype(str).unique()[:200]
    found, known = _recommend_for_user(model_dir / "2", users, k=5)
    assert known.all()
    first = np.char.decode(found[:, 0].astype(bytes), "utf-8")
    share = np.isin(first, ["new-1", "new-2"]).mean()
    assert share < 0.5, f"an added item is first for {share:.0%} of the users"


def test_a_final_runs_ranking_stage_refits_on_resume(production, tmp_path):
    # A run with nothing held out: its model was never called before the stage's fit.
    import dataclasses

    from tfrec.ranking.two_stage import train
    from tfrec.run_folder import RunFolder

    run = tmp_path / "final"
    shutil.copytree(production["final"], run)
    saved = RunFolder(run).read_config()
    train(saved, run, resume=True, verbose=0,
          ranking=dataclasses.replace(saved.ranking, epochs=2))
    assert RunFolder(run).read_config().ranking.epochs == 2
    assert json.loads((run / "ranking" / "stage.json").read_text())["info"]["fit_cases"] > 0


def test_events_not_newer_than_the_last_refresh_are_warned_about(caplog):
    import logging

    from tfrec.exporter.users import warn_if_seen_before

    latest = pd.DataFrame({"user": ["u1", "u2"], "time": [1_700_000_000, 1_700_000_500]})
    metadata = {"users_update": {"last_event": "2023-11-14T22:15:00+00:00"}}  # 1_700_000_100
    with caplog.at_level(logging.WARNING, logger="tfrec.exporter.users"):
        message = warn_if_seen_before(latest, metadata, "2")
    assert message.startswith("1 of the events given are at or before 2023-11-14T22:15:00")
    assert message in caplog.text
    assert warn_if_seen_before(latest.iloc[1:], metadata, "2") is None
    assert warn_if_seen_before(latest, {}, "1") is None  # nothing to compare with
    # A user the version does not hold has no history to count an event twice in.
    assert warn_if_seen_before(latest, metadata, "2", np.array(["u2"], dtype=object)) is None
    assert warn_if_seen_before(latest, metadata, "2", np.array(["u1"], dtype=object))
    # Never refreshed: the export's users were built from the training sessions.
    trained = {"users_data": {"last_session_start": "2023-11-14T22:15:00+00:00"}}
    message = warn_if_seen_before(latest, trained, "1")
    assert message.startswith("1 of the events given are before 2023-11-14T22:15:00+00:00, "
                              "when the last training session")
    assert warn_if_seen_before(latest.iloc[1:], trained, "1") is None


def test_evaluating_a_final_model_names_the_evaluated_run(production, capsys):
    # Its export alone leads to the final run, which holds no case out: named at once.
    assert main(["evaluate", "--saved-model", str(production["final_model"] / "1")]) == 2
    err = capsys.readouterr().err
    assert "the run is a final model" in err
    assert f"--run {production['evaluated'].resolve()}" in err
    assert "--saved-model EXPORT" not in err  # (it once suggested the leaky route below)
    # Nor on the evaluated run's cases: it trained on them.
    assert main(["evaluate", "--run", str(production["evaluated"]), "--saved-model",
                 str(production["final_model"] / "1"), "--baselines", "none"]) == 2
    err = capsys.readouterr().err
    assert "the export is of a final model" in err and "held-out cases" in err
    assert "evaluate.saved_model" in err or "--saved-model" in err
