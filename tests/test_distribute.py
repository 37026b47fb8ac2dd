"""train.strategy: batch-level sharding, TF_CONFIG, mirrored, and two real workers on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tfrec.cli import main
from tfrec.data.shard import shard_batches, stack_batches, worker_batches
from tfrec.data.synthetic import write_event_files
from tfrec.distribute import Worker, cluster_worker, parse_tf_config
from tfrec.run import load_run_config
from tfrec.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32
STEPS = 4


def batches(sizes):
    """Batches numbered by their first value: batch j holds j * 100 + row."""
    return [{"x": np.arange(n) + 100 * j, "y": np.full((n, 2), j)} for j, n in enumerate(sizes)]


# -- sharding at the batch level ---------------------------------------------------------

@pytest.mark.parametrize("full, short", [(7, 1), (8, 0), (9, 1), (1, 1), (0, 1)])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_worker_gets_as_many_batches_and_together_they_cover_the_groups(full, short, n):
    stream = batches([BATCH] * full + [5] * short)
    shards = [[b["x"][0] // 100 for b in shard_batches(iter(stream), n, i, BATCH)]
              for i in range(n)]
    if n == 1:  # one worker: the stream as it is, short batch included
        assert shards[0] == list(range(full + short))
        return
    assert [len(s) for s in shards] == [full // n] * n
    for i, shard in enumerate(shards):
        assert shard == list(range(i, full // n * n, n))  # batches i, i+n, ...


def test_stacking_concatenates_n_batches_and_drops_the_incomplete_group():
    stacked = list(stack_batches(iter(batches([BATCH] * 5)), 2))
    assert len(stacked) == 2
    np.testing.assert_array_equal(
        stacked[1]["x"], np.concatenate([np.arange(BATCH) + 200, np.arange(BATCH) + 300]))
    assert stacked[0]["y"].shape == (2 * BATCH, 2)


def test_worker_elements_hold_the_workers_own_batches_in_order():
    stream = batches([BATCH] * 11 + [3])
    elements = list(worker_batches(iter(stream), 2, 1, BATCH))
    # Own batches 1, 3, 5, 7, 9 -> elements (1, 3), (5, 7); 9 waits for a partner.
    assert [sorted(set(e["x"] // 100)) for e in elements] == [[1, 3], [5, 7]]
    with pytest.raises(ValueError, match="index 2 of 2"):
        list(worker_batches(iter(stream), 2, 2, BATCH))


# -- the strategy setting and TF_CONFIG --------------------------------------------------

def tf_config(cluster, task_type="worker", index=0):
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_cluster_worker_reads_tf_config():
    assert cluster_worker("default", {}) == Worker()
    assert cluster_worker("mirrored", {"TF_CONFIG": "garbage"}) == Worker()
    two = {"worker": ["localhost:1001", "localhost:1002"]}
    w0 = cluster_worker("multi_worker", {"TF_CONFIG": tf_config(two)})
    w1 = cluster_worker("multi_worker", {"TF_CONFIG": tf_config(two, index=1)})
    assert (w0.index, w0.count, w0.is_chief) == (0, 2, True)
    assert (w1.index, w1.count, w1.is_chief) == (1, 2, False)
    # With a chief task, the chief is 0 and the workers come after it.
    three = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    assert parse_tf_config(json.loads(tf_config(three, "chief"))).is_chief
    worker0 = parse_tf_config(json.loads(tf_config(three, "worker", 0)))
    assert (worker0.index, worker0.count, worker0.is_chief) == (1, 3, False)


@pytest.mark.parametrize("value, expected", [
    (None, "multi_worker needs the TF_CONFIG environment variable"),
    ("{cluster:", "TF_CONFIG (for train.strategy 'multi_worker'): not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', 'needs "cluster"'),
    ('{"cluster": {"worker": ["a:1"]}, "tsak": {}}', "unknown key 'tsak'"),
    (tf_config({"worker": ["a:1"], "ps": ["b:1"]}), "has a 'ps' job"),
    (tf_config({"worker": ["a"]}), "must be a list of \"host:port\" addresses"),
    (tf_config({"worker": ["a:1", "b:1"]}, index=2), "task index 2 is out of range"),
    (tf_config({"worker": ["a:1"]}, task_type="chief"), "task type 'chief' is not a job"),
    (tf_config({"chief": ["a:1", "b:1"]}, task_type="chief"), "at most one chief"),
    # Two tasks on one address wait for each other for ever.
    (tf_config({"chief": ["a:1"], "worker": ["b:1", "a:1"]}, task_type="chief"),
     "address a:1 is given to two tasks"),
])
def test_bad_tf_config_is_a_clear_error(value, expected):
    environ = {} if value is None else {"TF_CONFIG": value}
    with pytest.raises(InputError) as err:
        cluster_worker("multi_worker", environ)
    assert expected in err.value.message
    assert "TF_CONFIG" in err.value.message


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_event_files(folder, 3000, 80, num_users=300, num_clusters=4, num_cold=3, seed=4)
    return folder


def write_config(folder: Path, data_files: Path, strategy: str, objective: str = "both",
                 optimizer: str = "adam") -> Path:
    """A tiny run; both objectives by default (so both tasks run under the strategy)."""
    config = {
        "data": {"layout": "events", "events": str(data_files / "events.csv"),
                 "items": str(data_files / "items.csv"),
                 "events_schema": {"event_col": "event"}, "pairs": {"batch_size": BATCH}},
        "model": {"embedding_dim": 16, "objective": objective,
                  "text": {"token_dim": 8, "filters": 8}},
        "train": {"epochs": 1, "steps_per_epoch": STEPS, "split_fraction": 0.15,
                  "retrieval_batch_size": BATCH, "strategy": strategy, "optimizer": optimizer},
    }
    path = folder / "run.json"
    path.write_text(json.dumps(config))
    return path


def test_bad_strategy_exits_2_naming_the_setting(tmp_path, data_files, capsys, monkeypatch):
    config = write_config(tmp_path, data_files, "default")
    run = tmp_path / "run"
    args = ["-q", "train", "--config", str(config), "--run-dir", str(run)]
    assert main(args + ["--strategy", "bogus"]) == 2
    err = capsys.readouterr().err
    assert ("setting 'train.strategy' (--strategy): strategy must be 'default', 'mirrored' or "
            "'multi_worker', got 'bogus'") in err, err
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main(args + ["--strategy", "multi_worker"]) == 2
    err = capsys.readouterr().err
    assert ("setting 'train.strategy' (--strategy): multi_worker needs the TF_CONFIG "
            "environment") in err
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1"]}}')
    assert main(args + ["--strategy", "multi_worker"]) == 2
    assert 'TF_CONFIG (for train.strategy \'multi_worker\'): needs "task"' in (
        capsys.readouterr().err)
    assert not run.exists()  # refused before anything was written


@pytest.mark.parametrize("optimizer", ["adam", "lazy_adam"])
def test_mirrored_trains_on_one_cpu_and_writes_a_run_folder(tmp_path, data_files, optimizer):
    import tensorflow as tf

    from tfrec.run import load_run
    from tfrec.training import train

    config = load_run_config(write_config(tmp_path, data_files, "mirrored",
                                          optimizer=optimizer))
    result = train(config, tmp_path / "run", verbose=0)
    assert type(result.model.optimizer).__name__ == {"adam": "Adam",
                                                     "lazy_adam": "LazyAdam"}[optimizer]
    strategy = result.model.distribute_strategy
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 1
    assert result.worker.is_chief and result.evaluation["all"]["cases"] > 0
    assert [h["epoch"] for h in result.history] == [1]
    assert np.isfinite(result.history[0]["loss"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"][
        "strategy"] == "mirrored"
    _, _, model, latest = load_run(tmp_path / "run")
    assert Path(latest).name == "ckpt-1"
    np.testing.assert_allclose(model.item_embeddings(), result.model.item_embeddings(),
                               atol=1e-6)


SCALING = textwrap.dedent('''
    """The skip-gram loss of a batch split over two replicas sums to the loss of the batch."""
    import json
    import sys

    import tfrec  # noqa: F401
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from tfrec.models import build_model
    from tfrec.run import load_run_config, prepare_training_data

    config = load_run_config(sys.argv[1])
    data = prepare_training_data(config)
    batch = {k: tf.constant(v) for k, v in next(data.pairs.epoch(0)).items()}
    half = len(batch["target"]) // 2
    halves = [{k: v[:half] for k, v in batch.items()}, {k: v[half:] for k, v in batch.items()}]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build_model(config.model, data.vocab, seed=1)
        model.compute_loss(batch)  # creates the variables
    whole = float(model.compute_loss(batch))  # outside the scope: one replica
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: halves[context.replica_id_in_sync_group])
    losses = strategy.run(model.compute_loss, args=(per_replica,))
    print(json.dumps({"whole": whole, "replicas": strategy.num_replicas_in_sync,
                      "split": [float(x) for x in strategy.experimental_local_results(losses)]}))
''')


def test_replica_losses_add_up_to_the_global_batch_loss(tmp_path, data_files):
    # Gradients are summed across replicas, so the batch-mean skip-gram loss
    # must be divided by the number of replicas (and Keras refuses its AUTO
    # reduction under a strategy altogether).
    script = tmp_path / "scaling.py"
    script.write_text(SCALING)
    config = write_config(tmp_path, data_files, "default", objective="skipgram")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, str(script), str(config)], capture_output=True,
                          text=True, env=env, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert all(x > 0 for x in result["split"]) and result["split"][0] != result["split"][1]
    assert sum(result["split"]) == pytest.approx(result["whole"], rel=1e-5)


# -- two workers on loopback -------------------------------------------------------------

DRIVER = textwrap.dedent('''
    """One worker of the two-worker test: trains, then writes what the test compares."""
    import json
    import os
    import sys

    import numpy as np

    import tfrec  # noqa: F401  (before TensorFlow)
    import tensorflow as tf  # imported only: the strategy must come before any op

    from tfrec import distribute
    from tfrec.run import load_run_config
    from tfrec.training import train

    config_path, run_dir, out = sys.argv[1:4]
    directories, steps = [], []

    class RecordingManager(tf.train.CheckpointManager):
        def __init__(self, checkpoint, directory, *args, **kwargs):
            directories.append(str(directory))
            super().__init__(checkpoint, directory, *args, **kwargs)

    tf.train.CheckpointManager = RecordingManager
    create_strategy = distribute.create_strategy

    def create_then_record(name):
        strategy = create_strategy(name)
        from tfrec.models import HybridModel

        compute_loss = HybridModel.compute_loss

        def recording_loss(self, features, training=False):
            if not training:
                return compute_loss(self, features, training)

            def note(target, next_item):
                steps.append([target.numpy().tolist(), next_item.numpy().tolist()])
                return 0

            done = tf.py_function(note, [features["target"], features["next_item"]], tf.int32)
            with tf.control_dependencies([done]):
                return tf.identity(compute_loss(self, features, training))

        HybridModel.compute_loss = recording_loss
        return strategy

    distribute.create_strategy = create_then_record
    result = train(load_run_config(config_path), run_dir, verbose=0)
    np.savez(out + ".npz", item_embeddings=result.model.item_embeddings(),
             **{f"w{i}": w for i, w in enumerate(result.model.get_weights())})
    with open(out + ".json", "w") as f:
        json.dump({"chief": result.worker.is_chief, "index": result.worker.index,
                   "directories": directories,
                   "left": [d for d in directories if os.path.exists(d)],
                   "steps": steps, "history": result.history}, f)
''')


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (bound together, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


PORT_CLASH = ("Address already in use", "Could not start gRPC server", "Failed to add port")


def run_workers(tmp_path: Path, config: Path, run: Path, timeout: float = 240,
                attempts: int = 3) -> list[dict]:
    """Starts the two workers and waits for both; retries only a port clash."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    for attempt in range(attempts):
        addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
        procs, outs = [], []
        for index in range(2):
            out = tmp_path / f"worker{index}-{attempt}"
            temp = tmp_path / f"tmp{index}-{attempt}"
            temp.mkdir()
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(temp),
                       PYTHONPATH=os.pathsep.join([str(ROOT)] + [
                           p for p in [os.environ.get("PYTHONPATH")] if p]),
                       TF_CONFIG=json.dumps({"cluster": {"worker": addresses},
                                             "task": {"type": "worker", "index": index}}))
            procs.append(subprocess.Popen(
                [sys.executable, str(driver), str(config), str(run), str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True))
            outs.append({"out": out, "temp": temp})
        deadline = time.monotonic() + timeout
        try:
            for proc, out in zip(procs, outs):
                _, out["stderr"] = proc.communicate(
                    timeout=max(1.0, deadline - time.monotonic()))
                out["rc"] = proc.returncode
        except subprocess.TimeoutExpired:
            for proc in procs:
                proc.kill()
            tails = [(p.communicate()[1] or "")[-2000:] for p in procs]
            pytest.fail(f"the workers did not finish in {timeout:.0f}s (a hang?):\n"
                        + "\n---\n".join(tails))
        clash = any(rc["rc"] != 0 and any(m in rc["stderr"] for m in PORT_CLASH)
                    for rc in outs)
        if not clash:
            return outs
        shutil.rmtree(run, ignore_errors=True)
    pytest.fail("no free pair of loopback ports after retries")


def expected_steps(config_path: Path) -> list[list]:
    """Each worker's batches computed here: targets and next items, batches i, i+2, ..."""
    from tfrec.run import prepare_training_data

    data = prepare_training_data(load_run_config(config_path))
    pairs = [b["target"].tolist() for b in data.pairs.epoch(0) if len(b["target"]) == BATCH]
    nexts = [b["next_item"].tolist() for b in data.next_items.epoch(0)
             if len(b["next_item"]) == BATCH]
    return [[[pairs[2 * g + i], nexts[2 * g + i]] for g in range(STEPS)] for i in range(2)]


def test_two_workers_train_one_model_on_their_own_batches(tmp_path, data_files):
    from tfrec.run import load_run

    config = write_config(tmp_path, data_files, "multi_worker")
    run = tmp_path / "run"
    workers = run_workers(tmp_path, config, run)
    for index, w in enumerate(workers):
        assert w["rc"] == 0, f"worker {index} failed:\n{w['stderr'][-3000:]}"
    reports = [json.loads(Path(str(w["out"]) + ".json").read_text()) for w in workers]
    weights = [np.load(str(w["out"]) + ".npz") for w in workers]
    assert [r["chief"] for r in reports] == [True, False]

    # Each worker trained STEPS steps of full batches, its own ones: batches i, i+2, ...
    expected = expected_steps(config)
    for index, report in enumerate(reports):
        assert report["steps"] == expected[index], f"worker {index} trained on other batches"
        assert [h["epoch"] for h in report["history"]] == [1]
    assert reports[0]["history"][0]["loss"] == pytest.approx(reports[1]["history"][0]["loss"])

    # Gradients summed across workers: both end with the same weights.
    assert set(weights[0].files) == set(weights[1].files)
    for name in weights[0].files:
        np.testing.assert_allclose(weights[0][name], weights[1][name], atol=1e-6, err_msg=name)

    # The chief wrote the run folder; its checkpoint restores to its final weights.
    assert reports[0]["directories"] == [str(run / "checkpoints")]
    _, _, model, latest = load_run(run)
    assert Path(latest).name == "ckpt-1"
    np.testing.assert_allclose(model.item_embeddings(), weights[0]["item_embeddings"],
                               atol=1e-6)
    assert len((run / "history.jsonl").read_text().splitlines()) == 1
    assert len(list((run / "logs").rglob("events.out.tfevents.*"))) == 1
    assert (run / "eval.json").exists() and (run / "config.json").exists()

    # The other worker saved elsewhere, into a temporary folder it removed.
    (other,) = reports[1]["directories"]
    assert not Path(other).is_relative_to(run) and reports[1]["left"] == []
    assert not any(workers[1]["temp"].glob("tfrec-*"))


def test_evaluate_trains_the_variants_of_a_multi_worker_run_in_one_process(tmp_path, data_files,
                                                                           monkeypatch):
    import tfrec.training
    from tfrec.evaluate.methods import EvaluationRun, TextOff

    trained = []

    def fake_train(config, folder, verbose=None):
        trained.append(config)
        return type("Result", (), {"model": "model"})()

    monkeypatch.setattr(tfrec.training, "train", fake_train)
    config = load_run_config(write_config(tmp_path, data_files, "multi_worker"))
    assert TextOff().fit(EvaluationRun(tmp_path, config, None, 10)).model == "model"
    assert trained[0].train.strategy == "default" and not trained[0].model.use_text


def test_a_worker_waiting_for_its_cluster_stops_on_ctrl_c(tmp_path, data_files):
    """TensorFlow waits for the other workers in C++, where Python's handlers never run:
    Ctrl-C then ends the process (it was stopped by SIGKILL alone). (SIGTERM is
    TensorFlow's while it waits: its coordination service takes it as a notice of
    preemption.)"""
    config = write_config(tmp_path, data_files, "multi_worker")
    addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
    env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": addresses},
                                                 "task": {"type": "worker", "index": 0}}))
    # (SIGINT as a terminal's process has it: a test runner's worker may ignore it, and a
    # child inherits that.)
    proc = subprocess.Popen([sys.executable, "-m", "tfrec", "train", "--config", str(config),
                             "--run-dir", str(tmp_path / "run")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        for line in proc.stderr:  # the worker says what it waits for
            lines.append(line)
            if "waiting for every task of the cluster" in line:
                break
        assert proc.poll() is None, "".join(lines)
        time.sleep(2)  # into TensorFlow's wait
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == -signal.SIGINT
    finally:
        proc.kill()
        proc.wait()
