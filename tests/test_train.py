"""`tfrec train`: run folder, bad config, resume after a kill, NaN stop, README snippet."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tfrec.cli import main
from tfrec.data.synthetic import generate_events, generate_items
from tfrec.run import load_run_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    events = generate_events(12_000, 120, num_users=1000, num_clusters=6, seed=3)
    events["time"] = events["time"].astype("int64")
    events[["user", "item", "time", "event"]].rename(
        columns={"user": "user_id", "item": "item_id", "time": "timestamp"}).to_csv(
        folder / "events.csv", index=False)
    items = generate_items(120, 6, num_cold=6, seed=3)
    items[["item", "text", "market"]].rename(columns={"item": "item_id"}).to_csv(
        folder / "items.csv", index=False)
    return folder


def write_config(folder: Path, data_files: Path, **train) -> Path:
    config = {
        "data": {"layout": "events", "events": str(data_files / "events.csv"),
                 "items": str(data_files / "items.csv"),
                 "events_schema": {"event_col": "event"},
                 "pairs": {"batch_size": 512}},
        "model": {"embedding_dim": 16, "text": {"token_dim": 8, "filters": 8}},
        "train": {"epochs": 2, "split_fraction": 0.15, "learning_rate": 0.01, **train},
    }
    path = folder / "run.json"
    path.write_text(json.dumps(config))
    return path


def test_train_writes_a_complete_run_folder(tmp_path, data_files, capsys):
    config = write_config(tmp_path, data_files)
    run = tmp_path / "run"
    assert main(["-q", "train", "--config", str(config), "--run-dir", str(run)]) == 0
    printed = capsys.readouterr()
    out = printed.out
    assert "held-out hit rate" in out and "HR@10" in out
    # -q prints results only: no Keras progress, on either stream.
    assert "Epoch" not in out + printed.err and "loss:" not in out + printed.err
    assert json.loads((run / "config.json").read_text())["model"]["embedding_dim"] == 16
    assert (run / "vocab.tsv").read_text().startswith("item\tcount")
    assert len((run / "text_vocab.txt").read_text().split()) > 10
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["loss"] < history[0]["loss"]
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.index")) == [
        "ckpt-1.index", "ckpt-2.index"]
    assert any((run / "logs").rglob("events.out.tfevents.*"))
    evaluation = json.loads((run / "eval.json").read_text())
    assert set(evaluation) >= {"all", "warm", "cold"}
    # Six planted clusters of 20 items: a model that learned them ranks a held-out
    # item in its top 10 far more often than chance (10 of 120 items) does.
    assert evaluation["all"]["hr@10"] > 3 * 10 / 120 and evaluation["all"]["cases"] > 20
    # The same folder again without --resume is refused, not overwritten.
    assert main(["-q", "train", "--config", str(config), "--run-dir", str(run)]) == 2
    assert ("resume it with training.resume (--resume), replace it with training.overwrite "
            "(--overwrite)") in capsys.readouterr().err
    # --overwrite replaces a run, never a folder that merely holds a file named config.json.
    other = tmp_path / "project"
    (other / "src").mkdir(parents=True)
    (other / "config.json").write_text('{"app": "mine"}')
    (other / "src" / "main.py").write_text("precious = True\n")
    assert main(["-q", "train", "--config", str(config), "--run-dir", str(other),
                 "--overwrite"]) == 2
    assert "refusing to overwrite a folder that is not a tfrec run" in capsys.readouterr().err
    assert (other / "src" / "main.py").read_text() == "precious = True\n"


@pytest.mark.parametrize("overrides, expected", [
    (["model.embeding_dim=8"], "setting 'model.embeding_dim': unknown setting"),
    (["model.embedding_dim=0"], "setting 'model.embedding_dim': embedding_dim must be a "
                                "positive integer, got 0"),
    (["train.epochs=two"], "setting 'train.epochs' (--epochs): expected an integer, got 'two'"),
    (["data.items_schema.text_col=title"], "items.csv, column 'title', setting "
                                           "'data.items_schema.text_col': no column 'title'"),
    (["train.split_date=1990-01-01"], "no training events before the split"),
    (["data.items=null"], "the text tower needs item text"),
    (["model.fusion=concat", "model.text_share=1.5"], "text_share must be in (0, 1), got 1.5"),
    (["train.optimizer=lazyadam"], "optimizer must be 'adam', 'lazy_adam', 'adagrad' or "
                                   "'sgd', got 'lazyadam'"),
    (["model.objective=skipgram", "data.pairs.num_negatives=0"],
     "setting 'data.pairs.num_negatives': skip-gram pairs need at least one negative"),
])
def test_bad_config_exits_2_naming_the_key_or_file(tmp_path, data_files, capsys, overrides,
                                                   expected):
    config = write_config(tmp_path, data_files)
    args = ["-q", "train", "--config", str(config), "--run-dir", str(tmp_path / "r")]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err
    # Nothing half-made is left: the same command can run again once the input is fixed.
    assert not (tmp_path / "r").exists()


def test_a_resume_refits_the_ranking_stage_with_new_settings_and_refuses_others(
        tmp_path, data_files, capsys, monkeypatch):
    from tfrec.ranking import two_stage

    # As on a catalogue whose items are sold only in the ranker's slice (Online Retail):
    # their ids are cleared and the last checkpoint rewritten, by the refit too.
    real = two_stage.forget_unseen_ids
    monkeypatch.setattr(two_stage, "forget_unseen_ids",
                        lambda model, seen: max(real(model, seen), 1))
    config = write_config(tmp_path, data_files, epochs=1)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--run-dir", str(run),
                 "--set", "ranking.members=1"]) == 0
    # Keras' progress goes to stderr: stdout holds the results alone.
    printed = capsys.readouterr()
    assert "loss: " in printed.err and "loss: " not in printed.out
    assert printed.out.startswith("run folder: ")
    saved, stage = (run / "config.json").read_text(), (run / "ranking" / "stage.json").read_text()
    history = (run / "history.jsonl").read_text()
    capsys.readouterr()
    import tensorflow as tf

    def checkpointed():
        reader = tf.train.load_checkpoint(str(run / "checkpoints"))
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
                if name.startswith("optimizer/")}

    trained = checkpointed()
    assert any(name.startswith("optimizer/_variables/") for name in trained)
    # A setting of the two-tower, or of the slice the ranker learns from: refused, naming it
    # and both values, the run untouched.
    for change in ("model.embedding_dim=8", "ranking.ranker_share=0.3"):
        assert main(["-q", "train", "--run-dir", str(run), "--resume", "--set", change]) == 2
        err = capsys.readouterr().err
        key, value = change.split("=")
        assert key in err and f"-> {value}" in err and "new run" in err
    changed = tmp_path / "changed.json"
    changed.write_text(config.read_text().replace('"embedding_dim": 16', '"embedding_dim": 8'))
    assert main(["-q", "train", "--config", str(changed), "--run-dir", str(run),
                 "--resume"]) == 2
    assert "model.embedding_dim: 16 -> 8" in capsys.readouterr().err
    assert (run / "config.json").read_text() == saved
    assert (run / "ranking" / "stage.json").read_text() == stage
    # The ranking stage's own settings: refitted with them, no epoch trained, and the
    # run's config holds them.
    assert main(["-q", "train", "--run-dir", str(run), "--resume", "--set", "ranking.members=2",
                 "--set", "ranking.num_candidates=30"]) == 0
    assert "the run had trained its 1 epoch: none to train in " in capsys.readouterr().out
    refit = json.loads((run / "ranking" / "stage.json").read_text())
    assert refit["ranker"]["members"] == 2 and refit["num_candidates"] == 30
    # The refit rewrote the last checkpoint (ids seen only in the ranker's slice cleared)
    # and kept the optimizer's state in it: a later resume trains on from Adam's moments.
    refitted = checkpointed()
    assert refitted.keys() == trained.keys()
    for name, value in trained.items():  # restored, not made anew from zeros
        np.testing.assert_array_equal(refitted[name], value, err_msg=name)
    assert json.loads(stage)["ranker"]["members"] == 1
    ranking = json.loads((run / "config.json").read_text())["ranking"]
    assert ranking["members"] == 2 and ranking["num_candidates"] == 30
    assert (run / "history.jsonl").read_text() == history
    # The same from Python: the config given to a resume is checked, not ignored.
    import dataclasses

    from tfrec.errors import InputError
    from tfrec.ranking.two_stage import train
    from tfrec.run_folder import RunFolder

    saved = RunFolder(run).read_config()
    wider = dataclasses.replace(saved, model=dataclasses.replace(saved.model, embedding_dim=8))
    with pytest.raises(InputError, match="model.embedding_dim: 16 -> 8"):
        train(wider, run, resume=True, verbose=0)
    fewer = dataclasses.replace(saved, ranking=dataclasses.replace(saved.ranking, members=1))
    train(fewer, run, resume=True, verbose=0)
    assert json.loads((run / "ranking" / "stage.json").read_text())["ranker"]["members"] == 1
    assert RunFolder(run).read_config().ranking.members == 1
    assert (run / "history.jsonl").read_text() == history


def test_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  embedding_dim: [1,\n")
    assert main(["-q", "train", "--config", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert main(["-q", "train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_resume_after_a_kill_mid_epoch(tmp_path, data_files):
    config = write_config(tmp_path, data_files, epochs=3)
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfrec", "-q", "train", "--config", str(config), "--run-dir",
         str(run), "--set", "data.pairs.batch_size=64",
         # Small skip-gram batches: an epoch long enough to be killed in. The two-tower
         # alone: what is resumed here are its epochs (a resume redoes a ranking stage).
         "--set", "model.objective=skipgram", "--set", "ranking.enabled=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    first = run / "checkpoints" / "ckpt-1.index"
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert first.exists(), proc.stderr.read().decode() if proc.poll() is not None else "slow"
    time.sleep(0.5)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoints" / "ckpt-2.index").exists(), "epoch 2 finished too fast"
    before = (run / "history.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in before] == [1]

    assert main(["-q", "train", "--run-dir", str(run), "--resume"]) == 0
    after = (run / "history.jsonl").read_text().splitlines()
    assert after[0] == before[0]  # epoch 1 kept as it was, not retrained
    assert [json.loads(x)["epoch"] for x in after] == [1, 2, 3]
    assert (run / "checkpoints" / "ckpt-3.index").exists()
    # Nothing left to do: resuming a finished run trains no further epoch.
    assert main(["-q", "train", "--run-dir", str(run), "--resume"]) == 0
    assert len((run / "history.jsonl").read_text().splitlines()) == 3


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["-q", "train", "--run-dir", str(tmp_path / "empty"), "--resume"]) == 2
    assert "not a run folder" in capsys.readouterr().err
    # Continue it or replace it: not both (--overwrite was ignored in silence).
    assert main(["-q", "train", "--run-dir", str(tmp_path / "empty"), "--resume",
                 "--overwrite"]) == 2
    assert "resume continues the run folder and overwrite replaces it" in (
        capsys.readouterr().err)


def test_a_run_stopped_before_its_first_epoch_is_told_to_start_again(tmp_path, data_files,
                                                                     capsys):
    """A run that died before a checkpoint (a full disk, a kill) has nothing to resume:
    both the plain command and --resume say to start it again with --overwrite."""
    from tfrec.run_folder import RunFolder

    config = write_config(tmp_path, data_files, epochs=1)
    run = tmp_path / "run"
    RunFolder(run).path.mkdir()
    RunFolder(run).write_config(load_run_config(config))
    (run / "checkpoints").mkdir()
    assert main(["-q", "train", "--config", str(config), "--run-dir", str(run)]) == 2
    assert ("run folder exists, with no finished epoch (a run stopped before its first, or "
            "one still in it): unless it is training now, start it again with "
            "training.overwrite (--overwrite)") in capsys.readouterr().err
    assert main(["-q", "train", "--run-dir", str(run), "--resume"]) == 2
    assert "start it again with --overwrite: nothing trained is lost" in capsys.readouterr().err


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        tmp_path, data_files, monkeypatch):
    import tensorflow as tf

    from tfrec import training as train_lib

    real = train_lib.make_dataset

    def poisoned(data, streams, steps_per_epoch=None, **shard):
        dataset = real(data, streams, steps_per_epoch, **shard)
        state = {"batches": 0}

        def poison(batch):
            state["batches"] += 1
            if state["batches"] == 3:  # in the second epoch: epoch 1 has 2 steps
                # The float feature of either objective: pair weights (skip-gram)
                # or the candidates' sampling probabilities (retrieval, the default).
                key = "weight" if "weight" in batch else "candidate_probability"
                batch = dict(batch, **{key: batch[key] * float("nan")})
            return batch

        return tf.data.Dataset.from_generator(
            lambda: (poison({k: v.numpy() for k, v in b.items()}) for b in dataset),
            output_signature=dataset.element_spec)

    monkeypatch.setattr(train_lib, "make_dataset", poisoned)
    config = load_run_config(write_config(tmp_path, data_files, epochs=3, steps_per_epoch=2))
    run = tmp_path / "run"
    with pytest.raises(train_lib.TrainingDiverged) as err:
        train_lib.train(config, run, verbose=0)
    message = str(err.value)
    assert "epoch 2, step 1" in message and "ckpt-1" in message
    assert (run / "checkpoints" / "ckpt-1.index").exists()
    assert not (run / "checkpoints" / "ckpt-2.index").exists()


def tiny_online_retail(folder: Path) -> Path:
    """A data folder holding a small file in Online Retail's layout: 120 customers buying
    from 8 groups of 6 products over 2011 (the library defaults' split date inside it)."""
    import gzip

    rng = np.random.default_rng(5)
    lines = ["InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,"
             "Country"]
    words = ["RED", "BLUE", "HEART", "LANTERN", "CANDLE", "MUG", "BAG", "CLOCK"]
    invoice = 536000
    for customer in range(120):
        group = customer % 8
        for day in sorted(rng.choice(330, size=4, replace=False)):
            invoice += 1
            when = np.datetime64("2011-01-10T09:00") + np.timedelta64(int(day), "D")
            for product in rng.choice(6, size=3, replace=False):
                code = f"{20000 + 10 * group + product}"
                text = f"{words[group]} {words[(group + product) % 8]} ITEM {product}"
                lines.append(f"{invoice},{code},{text},2,{str(when).replace('T', ' ')},1.25,"
                             f"{13000 + customer},United Kingdom")
    (folder / "online_retail").mkdir(parents=True)
    path = folder / "online_retail" / "online_retail.csv.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode() + b"\n"))
    return path


def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    """The README's Python blocks as written, on a small file in Online Retail's layout in
    the data folder (TFREC_DATA), so that they run wherever the suite does."""
    from tfrec import datasets

    tiny_online_retail(tmp_path / "data")
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "data"))
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"### From Python\n(.*?)\n## ", readme, re.S)
    assert section, "README has no 'From Python' section"
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), re.S)
    assert len(blocks) == 3, "expected: build_model, the composable model, the commands"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["item_vectors"].shape == (namespace["data"].vocab.size, 32) == (49, 32)
    assert np.isfinite(namespace["metrics"]["loss"])
    assert namespace["model"].streams == ("pairs",)
    # The model composed by hand, on the same data: both tasks, mixed negatives.
    exec(compile(blocks[1], "README.md", "exec"), namespace)
    model = namespace["model"]
    assert model.streams == ("pairs", "next_items")
    assert type(model.tasks[1].sampler).__name__ == "MixedSampler"
    assert np.isfinite(model.history.history["loss"]).all()


def test_a_shorter_epoch_does_not_end_training(tmp_path, data_files, monkeypatch):
    # Subsampling makes epochs differ in length; Keras would hold every epoch
    # to the first one's step count and stop at the first shorter one.
    import itertools

    import tensorflow as tf

    from tfrec import training as train_lib

    real = train_lib.make_dataset

    def shrinking(data, streams, steps_per_epoch=None, **shard):
        dataset = real(data, streams, steps_per_epoch, **shard)
        passes = itertools.count()

        def generate():
            yield from itertools.islice(dataset.as_numpy_iterator(), 4 - next(passes))

        return tf.data.Dataset.from_generator(generate, output_signature=dataset.element_spec)

    monkeypatch.setattr(train_lib, "make_dataset", shrinking)
    config = load_run_config(write_config(tmp_path, data_files, epochs=3))
    result = train_lib.train(config, tmp_path / "run", verbose=0)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


def test_a_config_naming_only_the_data_trains_with_the_documented_defaults(
        tmp_path, data_files):
    """The library defaults are the measured settings the README documents."""
    from tfrec.config import ModelConfig, TextConfig
    from tfrec.tasks import InBatchSampler, RetrievalTask
    from tfrec.training import train

    config = load_run_config(None, [
        "data.layout=events", f"data.events={data_files / 'events.csv'}",
        f"data.items={data_files / 'items.csv'}", "data.events_schema.event_col=event"])
    assert config.model == ModelConfig() and config.model.text == TextConfig()
    documented = dict(objective="retrieval", embedding_dim=256, fusion="concat",
                      text_share=0.5, id_dropout=0.1, temperature=0.09,
                      retrieval_context="auto", history_length=50, pooling="mean",
                      query_items="shared", negatives="in_batch", text_gate=True)
    assert {k: getattr(config.model, k) for k in documented} == documented
    assert config.model.text.mean_tokens is True
    # And a run trains with them: one short epoch, the resolved model settings kept.
    config = load_run_config(None, [
        "data.layout=events", f"data.events={data_files / 'events.csv'}",
        f"data.items={data_files / 'items.csv'}", "data.events_schema.event_col=event",
        "train.epochs=1", "train.steps_per_epoch=3", "train.split_fraction=0.15"])
    result = train(config, tmp_path / "run", verbose=0)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert {k: saved[k] for k in documented} == documented
    model = result.model
    assert [type(t) for t in model.tasks] == [RetrievalTask] and model.embedding_dim == 256
    assert isinstance(model.tasks[0].sampler, InBatchSampler)
    assert model.tasks[0].temperature == 0.09
    assert (model.item_encoder.fusion, model.item_encoder.id_dropout,
            model.item_encoder.text_encoder.mean_tokens) == ("concat", 0.1, True)
    assert model.query_tower.history_length == 50
    # Generated clicks are a minute or more apart: the auto context is next-item.
    assert result.data.retrieval_context == "previous"
    assert result.evaluation["all"]["cases"] > 0


def test_epochs_and_strategy_given_to_train_apply_without_resume_too(tmp_path, data_files):
    from tfrec.training import resolve_config

    config = load_run_config(write_config(tmp_path, data_files, epochs=1))
    resolved = resolve_config(config, tmp_path / "run", False, 3, "mirrored")
    assert resolved.train.epochs == 3 and resolved.train.strategy == "mirrored"
    assert resolve_config(config, tmp_path / "run", False, None, None).train.epochs == 1


def test_a_run_path_that_is_a_file_and_a_stream_the_data_lacks_are_named(tmp_path, data_files):
    from tfrec.errors import InputError
    from tfrec.run import prepare_training_data
    from tfrec.training import make_dataset, train

    config = load_run_config(write_config(tmp_path, data_files, epochs=1))
    path = tmp_path / "notes.txt"
    path.write_text("mine\n")
    with pytest.raises(InputError, match="run path is a file, expected a run folder"):
        train(config, path)
    assert path.read_text() == "mine\n"
    data = prepare_training_data(load_run_config(write_config(tmp_path, data_files, epochs=1),
                                                 ["model.objective=skipgram"]))
    with pytest.raises(ValueError, match="no 'next_items' stream \\(it has pairs\\)"):
        make_dataset(data, ("pairs", "next_items"))
    with pytest.raises(ValueError, match="unknown training stream 'clicks'"):
        make_dataset(data, ("clicks",))


def _weights(run: Path) -> dict:
    """The last checkpoint's model variables, by name (the optimizer's slots left out)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(run / "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("model/") and "/.OPTIMIZER_SLOT/" not in name
            and "optimizer" not in name}


def test_a_seed_trains_one_model_and_a_resumed_run_ends_as_an_unstopped_one(
        tmp_path, data_files):
    """train.seed seeds every initialisation (the text tower's too), and the draws of
    training (id dropout, history dropout) are keyed on the step, not the process."""
    config = write_config(tmp_path, data_files, steps_per_epoch=15, seed=7)
    common = ["--set", "ranking.enabled=false", "--set", "model.history_dropout=0.2"]

    def train(name, *extra):
        assert main(["-q", "train", "--config", str(config), "--run-dir",
                     str(tmp_path / name), *common, *extra]) == 0
        return _weights(tmp_path / name)

    first, again = train("a"), train("b")
    assert first.keys() == again.keys() and any("text_encoder" in n for n in first)
    for name in first:
        np.testing.assert_allclose(first[name], again[name], atol=1e-6, err_msg=name)
    # One epoch, then resumed for the second: the model of the run never stopped.
    train("c", "--epochs", "1")
    assert main(["-q", "train", "--run-dir", str(tmp_path / "c"), "--resume",
                 "--epochs", "2"]) == 0
    resumed = _weights(tmp_path / "c")
    for name in first:
        np.testing.assert_allclose(resumed[name], first[name], atol=1e-6, err_msg=name)
    # Another seed, another model.
    other = train("d", "--set", "train.seed=8")
    assert any(not np.allclose(other[n], first[n]) for n in first if "text_encoder" in n)


def test_train_warns_when_no_event_item_is_in_the_items_table(tmp_path, data_files, caplog):
    # Ids written otherwise in the items file ("00012" against "12"): it trained quietly on
    # items with events and no text beside items with text and no events.
    import logging

    import pandas as pd

    items = pd.read_csv(data_files / "items.csv", dtype=str)
    items["item_id"] = "0" + items["item_id"]
    items.to_csv(tmp_path / "items.csv", index=False)
    config = json.loads(write_config(tmp_path, data_files, epochs=1,
                                     steps_per_epoch=2).read_text())
    config["data"]["items"] = str(tmp_path / "items.csv")
    (tmp_path / "run.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="tfrec.training"):
        assert main(["-q", "train", "--config", str(tmp_path / "run.json"), "--run-dir",
                     str(tmp_path / "run"), "--set", "ranking.enabled=false"]) == 0
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "no item id of the events is in the items table" in warned
    assert "items with events" in warned and "have no text" in warned


def test_the_run_records_what_it_trained_with_and_evaluate_sees_changed_data(
        tmp_path, data_files, caplog):
    import logging
    import shutil

    import pandas as pd

    from tfrec.data.split import cases_fingerprint
    from tfrec.evaluate.runner import evaluate_run
    from tfrec.evaluate.table import format_report
    from tfrec.run import prepare_training_data
    from tfrec.run_folder import RunFolder

    config = write_config(tmp_path, data_files, steps_per_epoch=10, epochs=1)
    run = tmp_path / "run"
    assert main(["-q", "train", "--config", str(config), "--run-dir", str(run), "--set",
                 "ranking.enabled=false"]) == 0
    [record] = RunFolder(run).read_provenance()
    import tfrec

    assert record["tfrec"] == tfrec.__version__ and record["resumed"] is False
    import subprocess

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode == 0:  # a checkout: the commit the package ran from
        assert record["tfrec_source"]["commit"] == head.stdout.strip()
    assert record["packages"]["tensorflow"].startswith("2.")
    cases = prepare_training_data(RunFolder(run).read_config()).cases
    assert record["data"]["cases"] == len(cases) > 0
    assert record["data"]["cases_sha256"] == cases_fingerprint(cases)
    assert "events.csv" in record["data"]["source"]
    assert main(["-q", "train", "--run-dir", str(run), "--resume", "--epochs", "2"]) == 0
    assert [r["resumed"] for r in RunFolder(run).read_provenance()] == [False, True]
    report = evaluate_run(run, tmp_path / "ev", ())
    assert report["protocol"]["data_matches_run"] is True
    # The same run read over data whose last events name other items (held-out ones: the
    # split, the training period and so the vocabulary are as they were): other cases.
    events = pd.read_csv(data_files / "events.csv").sort_values("timestamp", kind="stable")
    late = events.index[-300:]
    events.loc[late, "item_id"] = np.roll(events.loc[late, "item_id"].to_numpy(), 7)
    changed = tmp_path / "changed"
    changed.mkdir()
    events.to_csv(changed / "events.csv", index=False)
    shutil.copy(data_files / "items.csv", changed / "items.csv")
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    saved = json.loads((moved / "config.json").read_text())
    saved["data"]["events"] = str(changed / "events.csv")
    saved["data"]["items"] = str(changed / "items.csv")
    (moved / "config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="tfrec.evaluate.runner"):
        report = evaluate_run(moved, tmp_path / "ev2", ())
    assert report["protocol"]["data_matches_run"] is False
    assert any("other held-out cases than the run trained with" in r.getMessage()
               for r in caplog.records)
    assert "not the cases the run trained with" in format_report(report)
