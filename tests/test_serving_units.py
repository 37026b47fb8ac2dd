"""Serving pieces without a server: model config, version policies, batching."""

import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from tfrec.errors import InputError
from tfrec.serving.batching import BatchingParameters, Batcher, read_batching_parameters
from tfrec.serving.config import parse_model_config

CONFIG = """
model_config_list {
  config { name: "a" base_path: "/m/a" model_platform: "tensorflow" }
  config {
    name: "b" base_path: "rel/b"
    model_version_policy { latest { num_versions: 2 } }
    version_labels { key: "stable" value: 3 }
  }
  config { name: "c" base_path: "/m/c" model_version_policy { all {} } }
  config { name: "d" base_path: "/m/d"
           model_version_policy { specific { versions: 1 versions: 4 } } }
}
"""


def test_model_config_policies_and_labels(tmp_path):
    a, b, c, d = parse_model_config(CONFIG, relative_to=tmp_path)
    assert (a.name, str(a.base_path), a.wanted([1, 3, 2])) == ("a", "/m/a", [3])
    assert b.base_path == tmp_path / "rel/b" and b.wanted([1, 2, 3]) == [2, 3]
    assert b.labels == {"stable": 3}
    assert c.wanted([2, 1]) == [1, 2] and d.wanted([1, 2, 3, 4]) == [1, 4]


@pytest.mark.parametrize("text, message", [
    ("model_config_list { config { name: 'a' } }", "name and a base_path"),
    ("model_config_list { nonsense: 1 }", "not a TF Serving model config"),
    ("model_config_list { config { name: 'a' base_path: '/x' } "
     "config { name: 'a' base_path: '/y' } }", "listed twice"),
])
def test_bad_model_configs(text, message):
    with pytest.raises(InputError, match=message):
        parse_model_config(text, "models.config")


def test_batching_parameters_file(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 500 }\n"
                    "pad_variable_length_inputs: true\n")
    assert read_batching_parameters(path) == BatchingParameters(
        max_batch_size=64, batch_timeout_micros=500)
    path.write_text("max_batch_sise { value: 64 }\n")
    with pytest.raises(InputError, match="unknown batching parameter 'max_batch_sise'"):
        read_batching_parameters(path)


def test_batcher_merges_concurrent_calls_and_splits_rows():
    calls = []

    def model(item_ids, k):
        calls.append(item_ids.shape)
        width = tf.strings.length(tf.strings.reduce_join(item_ids, axis=1))
        return {"width": width * k}

    batcher = Batcher(BatchingParameters(max_batch_size=64, batch_timeout_micros=200_000))
    results = {}

    def call(i):
        ids = tf.constant([["x" * i] + [""] * (i % 3)])
        results[i] = batcher.call("m", model, {"item_ids": ids, "k": tf.constant(2)})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(1, 9)]
    for t in threads:
        t.start()
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert {i: int(r["width"][0]) for i, r in results.items()} == {i: 2 * i for i in range(1, 9)}
    assert len(calls) < 8  # merged: fewer model calls than requests
    assert batcher.requests == 8 and batcher.calls == len(calls)


def test_batcher_keeps_different_k_apart_and_reports_errors():
    def model(x, k):
        if int(k) < 0:
            raise ValueError("bad k")
        return {"y": x * int(k)}

    batcher = Batcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=1000))
    out = batcher.call("m", model, {"x": tf.constant([1, 2]), "k": tf.constant(3)})
    np.testing.assert_array_equal(out["y"], [3, 6])
    with pytest.raises(ValueError, match="bad k"):
        batcher.call("m", model, {"x": tf.constant([1]), "k": tf.constant(-1)})


def test_serve_thread_flags_are_checked(tmp_path, capsys):
    from tfrec import cli

    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "m" base_path: "/nowhere" } }\n')
    assert cli.main(["serve", "--model_config_file", str(config),
                     "--tensorflow_intra_op_parallelism", "-1"]) == 2
    assert "thread counts must be >= 0" in capsys.readouterr().err
