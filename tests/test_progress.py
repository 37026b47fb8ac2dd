"""Training progress: the bar's loss and the recorded loss are one quantity, the bar
knows an epoch's steps where they are known, and the "epoch saved" line has its own line."""

import io
import json
import logging
import sys

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfrec.training import build_callbacks, known_steps_per_epoch

STEPS = 5


class TinyModel(tfrs.Model):
    """A TFRS model (its `fit` logs each step's own loss) whose loss differs by batch."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(1.0)

    def compute_loss(self, features, training=False):
        return tf.reduce_mean(tf.square(self.w * features["x"] - 3.0))


def batches():
    """Batches of an unknown count, as tfrec's generator pipelines give them."""
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        yield {"x": rng.uniform(0, 10, 8).astype(np.float32)}


def fit_one_epoch(tmp_path, monkeypatch, steps_per_epoch):
    model = TinyModel()
    model.compile(optimizer=keras.optimizers.SGD(0.001))
    dataset = tf.data.Dataset.from_generator(
        batches, output_signature={"x": tf.TensorSpec([None], tf.float32)})
    epoch_var = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, epoch=epoch_var),
                                         str(tmp_path / "checkpoints"), max_to_keep=1)
    history: list[dict] = []
    _, callbacks = build_callbacks(tmp_path, manager, epoch_var, history, epochs=1,
                                   steps_per_epoch=steps_per_epoch)
    # The bar (stdout) and the log (stderr) share one terminal: one stream here.
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    handler = logging.StreamHandler(out)
    log = logging.getLogger("tfrec.training")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)  # not `log.level =`: that leaves the loggers' cached levels
    try:
        model.fit(dataset, epochs=1, callbacks=callbacks, verbose=1)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "history.jsonl").read_text().splitlines()]
    return out.getvalue(), losses


def test_the_recorded_loss_is_the_bars_last_loss_and_the_saved_line_is_its_own(
        tmp_path, monkeypatch):
    text, [loss] = fit_one_epoch(tmp_path, monkeypatch, STEPS)
    bar = [line for line in text.replace("\r", "\n").splitlines() if "loss:" in line][-1]
    shown = float(bar.split("loss:")[1].split()[0])
    assert f"{STEPS}/{STEPS}" in bar and "Unknown" not in text
    assert abs(shown - loss) <= 1e-4 * max(1.0, abs(loss))
    saved = [line for line in text.splitlines() if "saved to" in line]
    assert saved and all(line.startswith("epoch 1 saved to") for line in saved)


def test_an_unknown_epoch_length_still_records_the_mean(tmp_path, monkeypatch):
    text, [loss] = fit_one_epoch(tmp_path, monkeypatch, None)
    bar = [line for line in text.replace("\r", "\n").splitlines() if "loss:" in line][-1]
    assert abs(float(bar.split("loss:")[1].split()[0]) - loss) <= 1e-4 * max(1.0, abs(loss))


class Stub:
    """Just the parts of `TrainingData` the step count reads."""

    def __init__(self, examples, batch):
        self.next_items = type("NextItems", (), {"num_examples": examples,
                                                 "batch_size": batch})()


def test_known_steps_per_epoch():
    data = Stub(1000, 128)
    assert known_steps_per_epoch(data, ("next_items",)) == 8  # the last batch short
    assert known_steps_per_epoch(data, ("next_items", "pairs"), steps_per_epoch=3) == 3
    assert known_steps_per_epoch(data, ("pairs", "next_items")) is None  # subsampled pairs
    # 2 workers: 7 full batches, 3 each, one dataset element of 2, which each worker steps
    # through batch by batch (`tfrec.data.shard`): 2 steps (the bar counted 1).
    assert known_steps_per_epoch(data, ("next_items",), num_shards=2) == 2
    # A cap of 3 steps: rounded up to whole elements of 2, 4 steps (of 28 batches' 6).
    assert known_steps_per_epoch(Stub(28 * 128, 128), ("next_items",), steps_per_epoch=3,
                                 num_shards=2) == 4


def retrieval_data(folder):
    """The training data of a small generated click log, retrieval batches of 100."""
    from tfrec.data.synthetic import event_files_settings, write_event_files
    from tfrec.run import load_run_config, prepare_training_data

    files = write_event_files(folder, 3000, 60, num_users=300, num_clusters=4, seed=1)
    return prepare_training_data(load_run_config(None, [
        *event_files_settings(*files), "model.use_text=false",
        "train.retrieval_batch_size=100", "train.split_fraction=0.1"]))


def test_the_known_steps_are_the_steps_an_epoch_runs(tmp_path):
    from tfrec.training import make_dataset

    data = retrieval_data(tmp_path)
    for cap in (None, 7):
        steps = known_steps_per_epoch(data, ("next_items",), cap)
        data.next_items.set_epoch(0)
        assert steps == sum(1 for _ in make_dataset(data, ("next_items",), cap))
        assert steps > 7 if cap is None else steps == 7


def test_the_pair_stream_may_follow_the_retrieval_stream(tmp_path):
    """Streams zip in the model's task order: the pairs repeat after the next items."""
    from tfrec.training import make_dataset

    data = retrieval_data(tmp_path)
    steps = known_steps_per_epoch(data, ("next_items",))
    elements = list(make_dataset(data, ("next_items", "pairs")))
    assert len(elements) == steps > 1
    assert {"history", "next_item", "target", "context", "negatives"} <= set(elements[0])
