"""Serving pieces without a server: model config, version policies, batching."""

import threading
import time
import types
from pathlib import Path

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
    ("custom_model_config { type_url: 'x' }", "custom_model_config is not supported"),
    # A name or path that would write lines of its own into the server's log (a reload
    # logs them): a line break, a terminal escape, in a label too.
    ("model_config_list { config { name: 'a\\nWARNING forged' base_path: '/x' } }",
     r"model name 'a\\nWARNING forged' holds a control character"),
    ("model_config_list { config { name: 'a' base_path: '/x\\033[2K' } }",
     "model base_path .* holds a control character"),
    ("model_config_list { config { name: 'a' base_path: '/x' "
     "version_labels { key: 'st\\rable' value: 1 } } }", "version label .* control"),
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


# -- the version manager, with a fake loader (no TensorFlow model) -------------------------
class FakeLoader:
    """Loads a version folder unless it holds a file named BROKEN; counts the loads."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, name, number, path):
        from tfrec.serving.versions import Loaded

        with self.lock:
            self.calls.append(number)
        time.sleep(self.seconds)
        if (path / "BROKEN").exists() or not (path / "saved_model.pb").exists():
            raise ValueError(f"cannot load {path.name}")
        return Loaded(name, number, path, model=object(), signature_defs={}, metadata={})


def fake_version(path):
    """A version folder with the SavedModel's files (not a real SavedModel)."""
    (path / "variables").mkdir(parents=True)
    for name in ("saved_model.pb", "variables/variables.index",
                 "variables/variables.data-00000-of-00001"):
        (path / name).write_text("x")
    return path


def manager_over(tmp_path, versions, loader, **entry):
    from tfrec.serving.config import ModelEntry
    from tfrec.serving.versions import ModelManager

    base = tmp_path / "m"
    for number in versions:
        fake_version(base / str(number))
    return ModelManager([ModelEntry("m", base, **entry)], poll_seconds=0.01,
                        loader=loader), base


def test_a_call_keeps_its_model_when_the_version_is_unloaded(tmp_path):
    import shutil

    manager, base = manager_over(tmp_path, [1], FakeLoader())
    manager.sync()
    held = manager.find("m")
    fake_version(base / "2")
    manager.sync()
    assert manager.find("m").number == 2
    assert held.number == 1 and held.model is not None  # the call in flight still has it
    assert [v.state for v in manager.status("m")] == ["END", "AVAILABLE"]
    shutil.rmtree(base / "2")
    manager.sync()  # the newest deleted: the policy is re-applied, version 1 serves again
    assert manager.find("m").number == 1


def join_releases():
    """Waits for the index-release threads (their heap collection would otherwise run
    into the next test's)."""
    for thread in threading.enumerate():
        if thread.name == "index-release":
            thread.join(timeout=30)


def test_an_unloaded_versions_index_is_freed_once_no_call_holds_it(tmp_path):
    """TensorFlow keeps a dropped SavedModel's ScaNN searcher (its memory, a thread): the
    manager frees it (`release_saved_model`) once the version is unloaded and the last
    call holding it is done, never before."""
    import dataclasses
    import gc

    released = []

    class Model:
        def __init__(self, number):
            self.number = number
            self.index = types.SimpleNamespace(_serialized_searcher=object())  # ScaNN's

        def release_index(self):
            released.append(self.number)
            return True

    class IndexLoader(FakeLoader):
        def __call__(self, name, number, path):
            return dataclasses.replace(super().__call__(name, number, path),
                                       model=Model(number))

    manager, base = manager_over(tmp_path, [1], IndexLoader())
    manager.sync()
    held = manager.find("m")  # a call in flight on version 1
    fake_version(base / "2")
    manager.sync()
    assert manager.find("m").number == 2
    time.sleep(0.2)
    gc.collect()
    assert released == []  # unloaded, but a call still holds it
    del held
    deadline = time.monotonic() + 10
    while not released and time.monotonic() < deadline:
        time.sleep(0.01)
    assert released == [1]
    assert manager.find("m").number == 2 and released == [1]  # the served one is kept
    join_releases()


def test_an_unload_with_no_call_left_frees_the_index_in_the_same_pass(tmp_path, monkeypatch):
    """Unloaded by the poller's pass with no call holding it, a version's index is freed
    before that pass's heap collection: one collection an unload, no release thread."""
    import dataclasses

    import tfrec.serving.versions as versions

    released, settled = [], []

    class Model:
        def __init__(self, number):
            self.number = number
            self.index = types.SimpleNamespace(_serialized_searcher=object())

        def release_index(self):
            released.append((self.number, len(settled)))
            return True

    class IndexLoader(FakeLoader):
        def __call__(self, name, number, path):
            return dataclasses.replace(super().__call__(name, number, path),
                                       model=Model(number))

    real = versions.settle_heap
    monkeypatch.setattr(versions, "settle_heap", lambda: settled.append(1) or real())
    manager, base = manager_over(tmp_path, [1], IndexLoader())
    manager.sync()
    assert settled == [1]
    fake_version(base / "2")
    manager.sync()  # version 2 loads, version 1 is unloaded and freed, then one collection
    assert released == [(1, 1)] and settled == [1, 1]
    assert not [t for t in threading.enumerate() if t.name == "index-release"]
    manager.reload([])  # a model leaving the config: freed, then the reload's collection
    assert released == [(1, 1), (2, 2)] and settled == [1, 1, 1]


def test_a_load_that_fails_after_the_model_is_loaded_frees_its_index(tmp_path, monkeypatch):
    """The warm-up builds the searcher: a load failing there (a cut warm-up file), retried
    again and again, must not keep one each time."""
    import tfrec.serving.versions as versions

    released = []

    class Model:
        index = types.SimpleNamespace(_serialized_searcher=object())

        def release_index(self):
            released.append(True)
            return True

    def cut_warm_up(model, path):
        raise ValueError("a warm-up record cut short")

    monkeypatch.setattr(versions, "load_saved_model", lambda path: Model())
    monkeypatch.setattr(versions, "_signature_defs", lambda path: {})
    monkeypatch.setattr(versions, "_warm_up", cut_warm_up)
    version = fake_version(tmp_path / "m" / "1")
    with pytest.raises(ValueError, match="cut short"):
        versions._load_version("m", 1, version)
    assert released == [True]


def test_settling_twice_at_once_still_collects_the_dropped_model():
    """A collection that finds another under way returns at once; had its freeze run
    anyway, the unloaded model it was to collect would stay for good."""
    import gc
    import threading
    import weakref

    import tfrec.serving.versions as versions

    class Slow:  # garbage whose finalizer lets other threads run, as TensorFlow's do
        def __init__(self):
            self.me = self

        def __del__(self):
            time.sleep(0.3)

    class Model:
        def __init__(self):
            self.me = self  # a cycle: only the collector frees it
            self.index = types.SimpleNamespace(_serialized_searcher=object())

        def release_index(self):
            return True

    try:
        gc.freeze()
        model = Model()
        ref = weakref.ref(model)
        gc.unfreeze()
        Slow()
        first = threading.Thread(target=versions.settle_heap)
        first.start()
        time.sleep(0.1)  # the first collection is running Slow's finalizer
        versions._release_when_dropped(model, "m version 1")
        del model
        first.join()
        deadline = time.monotonic() + 10
        while ref() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ref() is None
    finally:
        join_releases()
        gc.unfreeze()


def test_a_version_change_collects_the_old_model_and_freezes_the_new(tmp_path):
    # A loaded model is many Python objects: they are moved out of the cyclic collector's
    # reach (gc.freeze) once loaded, and an unloaded model's cycles are still collected.
    import dataclasses
    import gc

    class HeavyLoader(FakeLoader):
        def __call__(self, name, number, path):
            loaded = super().__call__(name, number, path)
            model = [[number] for _ in range(100_000)]
            model.append(model)  # a cycle: only the collector frees it
            return dataclasses.replace(loaded, model=model)

    gc.collect()
    live = len(gc.get_objects()) + gc.get_freeze_count()
    manager, base = manager_over(tmp_path, [1], HeavyLoader())
    try:
        manager.sync()
        first = gc.get_freeze_count()
        assert first >= live + 100_000 and len(gc.get_objects()) < 1_000
        fake_version(base / "2")
        manager.sync()  # version 2 loads, version 1 is unloaded
        assert manager.find("m").number == 2
        second = gc.get_freeze_count()
        assert second < first + 50_000  # version 1's model was collected, not frozen
    finally:
        gc.unfreeze()


def test_concurrent_syncs_load_a_version_once(tmp_path):
    loader = FakeLoader(seconds=0.3)
    manager, _ = manager_over(tmp_path, [1, 2], loader, policy="all")
    threads = [threading.Thread(target=manager.sync) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(loader.calls) == [1, 2]
    assert [v.state for v in manager.status("m")] == ["AVAILABLE", "AVAILABLE"]


def test_a_failed_version_is_retried_when_its_files_change(tmp_path):
    loader = FakeLoader()
    manager, base = manager_over(tmp_path, [1], loader)
    (base / "1" / "BROKEN").write_text("")
    manager.sync()
    (state, error), = [(v.state, v.error) for v in manager.status("m")]
    assert state == "END" and "retried when its files change" in error
    manager.sync()
    assert loader.calls == [1]  # unchanged files: not retried before the back-off
    (base / "1" / "BROKEN").unlink()
    manager.sync()  # changed: looked at again, loaded once stable
    manager.sync()
    assert loader.calls == [1, 1] and manager.find("m").number == 1


def test_a_failed_version_is_retried_after_the_back_off(tmp_path, monkeypatch):
    from tfrec.serving import versions

    loader = FakeLoader()
    manager, base = manager_over(tmp_path, [1], loader)
    (base / "1" / "BROKEN").write_text("")
    manager.sync()
    clock = time.monotonic() + versions.RETRY_FIRST_SECONDS + 1
    monkeypatch.setattr(versions.time, "monotonic", lambda: clock)
    manager.sync()
    assert loader.calls == [1, 1]
    assert "load attempt 2" in manager.status("m")[0].error


def test_reload_to_a_missing_path_and_back_serves_again(tmp_path):
    import dataclasses

    manager, base = manager_over(tmp_path, [1], FakeLoader())
    manager.sync()
    entry = manager.entries["m"]
    missing = tmp_path / "missing"
    manager.reload([dataclasses.replace(entry, base_path=missing)])
    assert manager.find("m").number == 1  # kept: the new path has nothing that loads
    (kept,) = manager.status("m")
    assert kept.state == "AVAILABLE" and str(missing) in kept.detail
    assert "does not exist" in kept.detail
    broken = fake_version(tmp_path / "broken" / "1")
    (broken / "BROKEN").write_text("")
    manager.reload([dataclasses.replace(entry, base_path=broken.parent)])
    assert manager.find("m").path == base / "1"  # the new path's version fails to load
    assert "cannot load" in manager.status("m")[0].detail
    manager.reload([entry])
    assert manager.find("m").number == 1 and manager.status("m")[0].detail == ""


def test_a_model_dropped_from_the_config_is_logged_as_unloaded(tmp_path, caplog):
    import logging

    manager, base = manager_over(tmp_path, [1], FakeLoader())
    manager.sync()
    with caplog.at_level(logging.INFO, logger="tfrec.serving.versions"):
        manager.reload([])
    assert f"unloaded m version 1 ({base / '1'}): the model left the config" in caplog.text
    with pytest.raises(Exception, match="Servable not found"):
        manager.find("m")


def test_a_version_is_loaded_once_complete_and_stable(tmp_path):
    loader = FakeLoader()
    manager, base = manager_over(tmp_path, [1], loader)
    manager.sync()
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_text("x")  # variables still to come
    manager.sync()
    assert [(v.number, v.state) for v in manager.status("m")] == [(1, "AVAILABLE"),
                                                                  (2, "START")]
    assert "variables/variables.index" in manager.status("m")[1].detail
    assert manager.find("m").number == 1 and loader.calls == [1]
    (base / "2" / "variables").mkdir()
    (base / "2" / "variables" / "variables.index").write_text("x")
    (base / "2" / "variables" / "variables.data-00000-of-00002").write_text("x")
    manager.sync()
    assert "variables.data-00001-of-00002" in manager.status("m")[1].detail
    (base / "2" / "variables" / "variables.data-00001-of-00002").write_text("x")
    manager.sync()  # complete, but changed since the last look
    assert manager.status("m")[1].detail == "waiting for its files to stop changing"
    manager.sync()
    assert manager.find("m").number == 2 and loader.calls == [1, 2]


def test_versions_seen_for_the_first_time_are_looked_at_twice_in_one_pass(
        tmp_path, monkeypatch):
    from tfrec.serving import versions
    from tfrec.serving.config import ModelEntry
    from tfrec.serving.versions import ModelManager

    # The pass is timed: the heap's collection after the loads (a second or so in a test
    # process holding many models) is not what this test measures.
    monkeypatch.setattr(versions, "settle_heap", lambda: (0.0, 0))
    for number in (1, 2, 3):
        fake_version(tmp_path / "m" / str(number))
    manager = ModelManager([ModelEntry("m", tmp_path / "m", "all")], poll_seconds=0.4,
                           loader=FakeLoader())
    started = time.perf_counter()
    manager.sync()  # at start: loaded in the first pass, after one settle wait for all
    assert 0.4 <= time.perf_counter() - started < 0.8
    assert [v.state for v in manager.status("m")] == ["AVAILABLE"] * 3


def test_the_completeness_rule_of_real_exports(versions, tmp_path):
    """Brute force (loads in stock TF Serving) and ScaNN: complete as exported, and not
    without their metadata or warm-up records."""
    import shutil

    from tfrec.exporter.layout import VersionFolder
    from tfrec.serving.versions import _signature_names

    for number in (1, 2):
        folder = VersionFolder(shutil.copytree(versions / str(number), tmp_path / str(number)))
        names = _signature_names(folder.path)
        assert "similar_items" in names and folder.missing(names) == []
        folder.warmup.unlink()
        assert folder.missing(names) == ["assets.extra/tf_serving_warmup_requests"]
        shutil.rmtree(folder.extra)
        assert folder.missing(names) == ["assets.extra/tfrec_metadata.json"]
        assert folder.missing(None) == []  # a SavedModel that is not a tfrec export
        for name in ("saved_model.pb", "variables/variables.index"):
            (folder.path / name).unlink()
        assert folder.missing(None) == ["saved_model.pb", "variables/variables.index"]


def test_an_old_version_serves_until_the_new_one_loads(tmp_path):
    manager, base = manager_over(tmp_path, [1], FakeLoader())
    manager.sync()
    (base / "2").mkdir()  # never completes
    manager.sync()
    assert manager.find("m").number == 1
    assert [v.state for v in manager.status("m")] == ["AVAILABLE", "START"]
    fake_version(base / "3")
    (base / "3" / "BROKEN").write_text("")  # complete, fails to load
    manager.sync()
    assert manager.find("m").number == 1
    assert [v.state for v in manager.status("m")] == ["AVAILABLE", "END"]  # 2: not looked at


def test_status_of_an_unknown_label_or_version_is_not_found(tmp_path):
    from tfrec.serving.errors import ServingError

    manager, _ = manager_over(tmp_path, [1], FakeLoader(), labels={"stable": 1})
    manager.sync()
    assert [v.number for v in manager.status("m", label="stable")] == [1]
    for number, label in ((0, None), (7, None), (None, "canary")):
        with pytest.raises(ServingError) as err:
            manager.status("m", number, label)
        assert err.value.code.name == "NOT_FOUND"


def test_first_loads_are_waited_for_and_the_slow_ones_named(tmp_path):
    manager, _ = manager_over(tmp_path, [1], FakeLoader(seconds=1.0))
    manager.start()
    try:
        assert manager.wait_first_sync(0.05) == ["m"]
        assert manager.describe("m") == "m: still loading"
        assert manager.wait_first_sync(30) == []
        assert manager.describe("m") == "m: version 1 AVAILABLE"
    finally:
        manager.stop()


def test_a_missing_base_path_is_named_in_the_log_and_the_status(tmp_path, caplog):
    import logging

    from tfrec.serving.config import ModelEntry
    from tfrec.serving.errors import ServingError
    from tfrec.serving.versions import ModelManager

    missing = tmp_path / "nowhere"
    manager = ModelManager([ModelEntry("ghost", missing)], loader=FakeLoader())
    assert manager.wait_first_sync(0) == ["ghost"]
    assert manager.describe("ghost") == "ghost: still loading"
    with caplog.at_level(logging.WARNING, logger="tfrec.serving.versions"):
        manager.sync()
        manager.sync()  # warned once, not on every pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'ghost'" in warnings[0] and str(missing) in warnings[0]
    assert manager.wait_first_sync(0) == []
    assert str(missing) in manager.describe("ghost")
    for call in (manager.status, manager.find):
        with pytest.raises(ServingError) as err:
            call("ghost")
        assert err.value.code.name == "NOT_FOUND"
        assert str(missing) not in err.value.public  # for REST (and Predict) clients
        assert "no version found under the model's base path" in err.value.public
    with pytest.raises(ServingError) as err:
        manager.status("ghost")  # GetModelStatus: the operator's API
    assert f"its base_path {missing} does not exist" in err.value.message
    fake_version(missing / "1")
    manager.sync()
    assert manager.find("ghost").number == 1 and manager.problems == {}


def test_a_policy_or_label_naming_a_version_not_on_disk_is_named(tmp_path, caplog):
    import logging

    from tfrec.serving.errors import ServingError

    manager, base = manager_over(tmp_path, [1, 2, 3, 4], FakeLoader(), policy="specific",
                                 specific=(7,), labels={"canary": 7})
    with caplog.at_level(logging.WARNING, logger="tfrec.serving.versions"):
        manager.sync()
        manager.sync()  # warned once, not on every pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert (f"its version policy names version 7 and its base_path {base} holds version "
            "1, 2, 3, 4") in warnings[0]
    assert "label 'canary' names version 7, which is not served (serving: none)" in warnings[1]
    assert "names version 7" in manager.describe("m")
    with pytest.raises(ServingError) as err:
        manager.status("m")  # GetModelStatus names it
    assert "names version 7" in err.value.message
    fake_version(base / "7")
    manager.sync()
    assert manager.find("m").number == 7 and manager.problems == {}


def test_a_reload_may_label_only_an_available_version_unless_allowed(tmp_path, caplog):
    import dataclasses
    import logging

    from tfrec.serving.config import ModelEntry
    from tfrec.serving.errors import ServingError

    manager, base = manager_over(tmp_path, [1, 2], FakeLoader(), policy="specific",
                                 specific=(1,), labels={"stable": 1})
    manager.sync()
    entry = manager.entries["m"]
    # Version 2 is on disk but not served (the policy wants 1 only): refused, as TF
    # Serving, and the model keeps the labels it had; the versions part is applied.
    with caplog.at_level(logging.ERROR, logger="tfrec.serving.versions"):
        refused = manager.reload([dataclasses.replace(entry, specific=(1,),
                                                      labels={"stable": 1, "canary": 2})])
    assert refused == ["Request to assign label to version 2 of model m, which is not "
                       "currently available for inference (label 'canary')"]
    assert "keeps the labels it had" in caplog.text
    assert manager.entries["m"].labels == {"stable": 1}
    with pytest.raises(ServingError, match="Unrecognized servable version label"):
        manager.find("m", label="canary")
    # Serving both, the same labels apply; a label left as it was is not checked again.
    assert manager.reload([dataclasses.replace(entry, specific=(1, 2),
                                               labels={"stable": 1, "canary": 2})]) == []
    assert manager.find("m", label="canary").number == 2
    # A new model's labels are checked too; with the flag anything goes.
    other = ModelEntry("n", base, labels={"x": 9})
    assert len(manager.reload([manager.entries["m"], other])) == 1
    assert manager.entries["n"].labels == {}
    assert manager.reload([manager.entries["m"], other], labels_for_unavailable=True) == []
    assert manager.entries["n"].labels == {"x": 9}


def test_a_model_with_no_version_has_no_status_and_polling_once_is_allowed(tmp_path):
    from tfrec.config import ServeConfig
    from tfrec.serving.errors import ServingError

    manager, base = manager_over(tmp_path, [], FakeLoader())
    base.mkdir()
    with pytest.raises(ServingError, match="Could not find any versions of model m") as err:
        manager.status("m")  # before its first pass too: NOT_FOUND, not an empty list
    assert err.value.code.name == "NOT_FOUND"
    # --file_system_poll_wait_seconds 0: one pass at start, as TF Serving.
    ServeConfig(model_config_file="x", file_system_poll_wait_seconds=0).check()
    fake_version(base / "1")
    manager.poll_seconds = 0
    manager.start()
    manager._thread.join(30)
    assert not manager._thread.is_alive()
    assert manager.find("m").number == 1
    fake_version(base / "2")
    time.sleep(0.1)
    assert manager.find("m").number == 1  # not polled again ...
    manager.reload(list(manager.entries.values()))
    assert manager.find("m").number == 2  # ... until a reload


def test_the_ports_open_once_the_first_loads_are_done(tmp_path, monkeypatch):
    import socket

    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    from serving_helpers import free_port
    from tfrec.config import ServeConfig
    from tfrec.serving import server as serving

    fake_version(tmp_path / "m" / "1")
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "m" base_path: "%s" } }\n'
                      % (tmp_path / "m"))
    port, rest_port = free_port(), free_port()
    monkeypatch.setattr(serving, "_tune_memory", lambda: None)  # this process's settings
    server = serving.ModelServer(ServeConfig(model_config_file=str(config), port=port,
                                             rest_api_port=rest_port))
    gate, loader = threading.Event(), FakeLoader()
    server.manager._loader = lambda *args: gate.wait(60) and loader(*args)
    starting = threading.Thread(target=server.start)
    starting.start()
    try:
        time.sleep(0.3)
        assert server.wait_first_loads(0) == ["m"]  # loading ...
        for closed in (port, rest_port):  # ... and refused, as TF Serving before its loads
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", closed), timeout=5).close()
        gate.set()
        starting.join(60)
        assert not starting.is_alive() and server.port == port
        socket.create_connection(("127.0.0.1", rest_port), timeout=5).close()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "m"
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                request, timeout=30).model_version_status
        assert [(s.version, s.HasField("status"), s.status.error_code) for s in status] == [
            (1, True, 0)]  # an OK status present, as TF Serving gives it
    finally:
        gate.set()
        starting.join(60)
        server.stop(0)


# -- request checks ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def signature(tmp_path_factory):
    """A saved and loaded signature: named inputs, as the server sees them."""

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="item_ids"),
                                      tf.TensorSpec([], tf.int32, name="k")])
        def f(self, item_ids, k):
            return {"n": tf.shape(item_ids)[0] + k}

    path = str(tmp_path_factory.mktemp("signature"))
    module = Module()
    tf.saved_model.save(module, path, signatures={"serving_default": module.f})
    return tf.saved_model.load(path).signatures["serving_default"]


@pytest.mark.parametrize("arrays, cast, message", [
    ({"item_ids": np.array([[b"a"]] * 3, dtype=object), "k": np.int32(5)}, False, None),
    ({"item_ids": np.zeros((0, 2), dtype=object), "k": np.int32(5)}, False,
     "input 'item_ids': the batch is empty"),
    ({"item_ids": np.array([[b"a"]]), "k": np.int64(4294967301)}, True,
     "input 'k': 4294967301 is out of range for int32"),
    ({"item_ids": np.array([[b"a"]]), "k": np.int32(21)}, False,
     "input 'k': must be between 1 and 20 (the index's max_k), got 21"),
    ({"item_ids": np.array([[b"a"] * 31]), "k": np.int32(5)}, False,
     "sessions of 31 items are over the limit of 30"),
    ({"item_ids": np.array([[b"a"] * 30] * 40), "k": np.int32(5)}, False,
     "over the limit of 1,000 values per request"),
    ({"item_ids": np.array([[{"a": 1}]], dtype=object), "k": np.int32(5)}, True,
     "input 'item_ids': expects strings"),
])
def test_check_inputs_names_the_input_and_the_rule(signature, arrays, cast, message):
    from tfrec.serving.errors import ServingError
    from tfrec.serving.predict import RequestLimits, check_inputs
    from tfrec.serving.versions import Loaded

    served = Loaded("m", 1, None, None, {}, {"max_k": 20, "max_session_items": 30})
    limits = RequestLimits(max_batch=100, max_elements=1_000)
    if message is None:
        assert set(check_inputs(arrays, signature, limits, served, cast)) == {"item_ids", "k"}
        return
    with pytest.raises(ServingError) as err:
        check_inputs(arrays, signature, limits, served, cast)
    assert err.value.code.name == "INVALID_ARGUMENT" and message in err.value.message


def test_row_format_gives_a_scalar_input_its_one_value(signature):
    from tfrec.serving.errors import ServingError
    from tfrec.serving.predict import RequestLimits, check_inputs
    from tfrec.serving.rest import _arrays_from_json

    def run(instances):
        arrays, rows = _arrays_from_json({"instances": instances})
        return check_inputs(arrays, signature, RequestLimits(), cast=True, rows=rows)

    one = run([{"item_ids": ["a", "b"], "k": 3}])  # a single row
    assert one["item_ids"].shape == (1, 2) and one["k"].shape == () and int(one["k"]) == 3
    same = run([{"item_ids": ["a"], "k": 3}, {"item_ids": ["a"], "k": 3}])  # identical rows
    assert same["item_ids"].numpy().tolist() == [[b"a"], [b"a"]] and int(same["k"]) == 3
    for instances, message in (
            ([{"item_ids": ["a"], "k": 3}, {"item_ids": ["b"], "k": 4}],
             "input 'k': the signature takes one value (shape ()) for all instances, but the "
             "instances differ (3 and 4)"),
            ([{"item_ids": ["a"], "k": [3]}], "input 'k': expects shape ()"),
            (["a", "b"], "only a signature of one input takes; this one has 2: item_ids, k")):
        with pytest.raises(ServingError) as err:
            run(instances)
        assert err.value.code.name == "INVALID_ARGUMENT" and message in err.value.message


def test_json_empty_sessions_are_strings_not_a_dtype_error(signature):
    from tfrec.serving.errors import ServingError
    from tfrec.serving.predict import RequestLimits, check_inputs
    from tfrec.serving.rest import _arrays_from_json

    def run(body):
        arrays, rows = _arrays_from_json(body)
        return check_inputs(arrays, signature, RequestLimits(), cast=True, rows=rows)

    # An empty session has no values, so JSON gives it no type: it is a session all
    # the same (the model's popular-items fallback), over "inputs" and "instances".
    for body in ({"inputs": {"item_ids": [[]], "k": 3}},
                 {"instances": [{"item_ids": [], "k": 3}]}):
        tensors = run(body)
        assert tensors["item_ids"].dtype == tf.string and tensors["item_ids"].shape == (1, 0)
    for body, message in (({"inputs": {"item_ids": [], "k": 3}},
                           "expects shape (None, None), got [0]"),
                          ({"inputs": {"item_ids": [[], []], "k": []}}, "input 'k'")):
        with pytest.raises(ServingError) as err:
            run(body)
        assert err.value.code.name == "INVALID_ARGUMENT" and message in err.value.message
        assert "dtype" not in err.value.message


def test_row_format_bare_values_are_the_one_input():
    from tfrec.serving.predict import UNNAMED, from_rows

    specs = {"item_ids": tf.TensorSpec([None], tf.string)}
    arrays = from_rows({UNNAMED: np.array([b"1", b"2"], dtype=object)}, specs)
    assert list(arrays) == ["item_ids"] and arrays["item_ids"].tolist() == [b"1", b"2"]


def test_a_cancelled_call_is_not_computed(signature):
    from tfrec.serving.errors import ServingError
    from tfrec.serving.predict import Predictor
    from tfrec.serving.versions import Loaded

    calls = []

    class Model:
        signatures = {"serving_default": signature}

    class Manager:
        def find(self, name, number, label):
            return Loaded("m", 1, None, Model(), {}, {})

    class Batcher:
        def call(self, key, function, tensors):
            calls.append(key)

    predictor = Predictor(Manager(), batcher=Batcher())
    arrays = {"item_ids": np.array([[b"a"]], dtype=object), "k": np.int32(1)}
    with pytest.raises(ServingError) as err:
        predictor.run("m", None, None, "", arrays, is_active=lambda: False)
    assert err.value.code.name == "CANCELLED" and not calls


def test_tensorflow_assertions_read_as_their_message():
    from tfrec.serving.errors import tensorflow_message

    raw = ("Graph execution error:\n\nDetected at node assert_less_equal/Assert/Assert defined "
           "at (most recent call last):\n<stack traces unavailable>\nassertion failed: "
           "[k must be at most 20 (the index's max_k)] [Condition x <= y did not hold]\n"
           "\t [[{{node assert_less_equal/Assert/Assert}}]] [Op:__inference_signature_wrapper]")
    assert tensorflow_message(raw) == "k must be at most 20 (the index's max_k)"
    assert tensorflow_message("Graph execution error:\n\n") == "the model failed on this input"


# -- the command line --------------------------------------------------------------------
def test_every_serve_flag_takes_the_underscore_and_the_dashed_spelling():
    from tfrec.cli import build_parser, command_settings

    serve = command_settings("serve")
    values = {s.key: (True if s.type is bool else s.type(3) if s.type in (int, float)
                      else "x") for s in serve}

    def parse(spell):
        args = ["serve"]
        for s in serve:
            args += [spell(s.flag)] + ([] if s.type is bool else [str(values[s.key])])
        parsed = vars(build_parser().parse_args(args))
        return {s.key: parsed[s.key] for s in serve}

    assert any("_" in s.flag for s in serve)
    underscored = parse(lambda flag: flag)
    dashed = parse(lambda flag: "--" + flag[2:].replace("_", "-"))
    assert underscored == dashed == values


def test_model_roots_and_the_paths_a_reload_may_take(tmp_path, monkeypatch):
    from tfrec.serving.config import ModelEntry, model_roots, outside_roots

    monkeypatch.chdir(tmp_path)
    entries = [ModelEntry("a", tmp_path / "models" / "a"), ModelEntry("b", tmp_path / "b")]
    assert model_roots(None, entries) == sorted([tmp_path, tmp_path / "models"])
    assert model_roots("srv, /opt/models", entries) == [Path("/opt/models"), tmp_path / "srv"]
    roots = model_roots("srv", entries)
    assert outside_roots([ModelEntry("a", tmp_path / "srv" / "x")], roots) is None
    assert outside_roots([ModelEntry("a", tmp_path / "srv")], roots) is None
    assert outside_roots([ModelEntry("a", Path("srv/x"))], roots)[0] == "relative"
    for base in (tmp_path / "srv-2", tmp_path / "srv" / ".." / "b", Path("/etc")):
        kind, message = outside_roots([ModelEntry("a", base)], roots)
        assert kind == "outside" and "--model_roots" in message, base


def test_a_host_that_is_not_this_machines_is_named_not_the_port():
    from tfrec.errors import InputError
    from tfrec.serving.server import _check_free

    for host in ("999.1.1.1", "192.0.2.1"):  # not an address at all; not this machine's
        with pytest.raises(InputError, match=f"cannot listen on {host}: not an address") as err:
            _check_free(host, 8500, "serve.port", "(another tfrec serve?)")
        assert err.value.key == "serve.host" and "another tfrec serve" not in str(err.value)
