"""`tfrec serve`: a real server process on a free loopback port, called over real gRPC."""

import json
import os
import re
import subprocess
import sys
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf

from tfrec.exporter import load_saved_model
from tfrec.serving.client import RecommenderClient

from serving_helpers import Caller, predict_request, start_server, stub_of

SESSIONS = [["i1", "i2", "i3"], ["i10", "", ""]]


@pytest.fixture
def server(versions, tmp_path):
    """A server of its own, for tests that change versions or stop it."""
    srv = start_server(versions, tmp_path)
    yield srv
    srv.stop()


@pytest.fixture
def reloadable(versions, tmp_path):
    """A server of its own that answers HandleReloadConfigRequest (dashed flag spelling)."""
    srv = start_server(versions, tmp_path, "--allow-reload")
    yield srv
    srv.stop()


def reload_request(*models):
    """A ReloadConfigRequest of (name, base_path) pairs."""
    from tensorflow_serving.apis import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest()
    for name, base in models:
        entry = request.config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, str(base), "tensorflow"
    return request


def reload_stub(server):
    from tensorflow_serving.apis import model_service_pb2_grpc

    return model_service_pb2_grpc.ModelServiceStub(server.channel)


@pytest.fixture(scope="module")
def shared(versions, tmp_path_factory):
    """One server for the read-only tests, with batching on."""
    srv = start_server(versions, tmp_path_factory.mktemp("shared"), "--enable_batching")
    yield srv
    srv.stop()


def test_predict_matches_the_saved_model_in_process(shared):
    server = shared
    response = stub_of(server).Predict(predict_request(SESSIONS), timeout=30)
    local = load_saved_model(server.base / "1").signatures["serving_default"](
        item_ids=tf.constant(SESSIONS), k=tf.constant(5))
    ids = tf.make_ndarray(response.outputs["item_ids"])
    np.testing.assert_array_equal(ids, local["item_ids"].numpy())
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]),
                               local["scores"].numpy(), rtol=1e-5)
    assert response.model_spec.version.value == 1
    # The client class gives the same, and output_filter trims the outputs.
    client = RecommenderClient(server.target, "shop")
    assert [i for i, _ in client.recommend([SESSIONS[0]], k=5)[0]] == ids[0].astype(
        str).tolist()
    client.close()
    request = predict_request(SESSIONS)
    request.output_filter.append("item_ids")
    assert set(stub_of(server).Predict(request, timeout=30).outputs) == {"item_ids"}


def test_metadata_lists_the_signatures(shared):
    server = shared
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "shop"
    request.metadata_field.append("signature_def")
    response = stub_of(server).GetModelMetadata(request, timeout=30)
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    assert {"serving_default", "similar_items", "embed_items", "embed_query"} <= set(
        defs.signature_def)
    assert set(defs.signature_def["serving_default"].inputs) == {"item_ids", "k"}
    # The outputs' ranks are declared ([batch, k] lists, [batch] flags), as the README says.
    for name in ("serving_default", "similar_items", "recommend_for_user"):
        outputs = defs.signature_def[name].outputs
        for output, rank in (("item_ids", 2), ("scores", 2)):
            shape = outputs[output].tensor_shape
            assert not shape.unknown_rank and len(shape.dim) == rank, (name, output)


def test_new_version_is_picked_up_with_zero_failed_calls_and_corrupt_one_ignored(server):
    with Caller(server, SESSIONS) as caller:
        shutil.copytree(server.versions / "2", server.base / ".incoming")
        os.rename(server.base / ".incoming", server.base / "2")
        seen = server.wait_for(2)
        assert seen[0] == "LOADING" or seen == ["AVAILABLE"]
        caller.wait_until_served(2)
        # A corrupt version 3 (complete, but not a SavedModel): reported, and version 2
        # keeps serving.
        shutil.copytree(server.versions / "2" / "variables", server.base / ".v3" / "variables")
        (server.base / ".v3" / "saved_model.pb").write_bytes(b"not a saved model")
        os.rename(server.base / ".v3", server.base / "3")
        state, error = None, ""
        deadline = time.time() + 60
        while state != "END" and time.time() < deadline:
            state, error = server.status().get(3, (None, ""))
            time.sleep(0.05)
        assert state == "END" and error
        time.sleep(0.5)
    assert caller.failures == []
    assert caller.served >= {1, 2}
    assert server.status()[2][0] == "AVAILABLE"
    response = stub_of(server).Predict(predict_request(SESSIONS), timeout=30)
    assert response.model_spec.version.value == 2


def test_status_goes_loading_then_available_and_config_reloads(reloadable):
    server = reloadable
    # The stable label names version 1 while it is served.
    request = predict_request(SESSIONS)
    request.model_spec.version_label = "stable"
    assert stub_of(server).Predict(request, timeout=30).model_spec.version.value == 1
    shutil.copytree(server.versions / "2", server.base / ".incoming")
    os.rename(server.base / ".incoming", server.base / "2")
    seen = server.wait_for(2)
    assert seen == ["LOADING", "AVAILABLE"], seen
    # The policy (latest 1) then unloads version 1, and its label with it.
    server.wait_for(1, "END")
    with pytest.raises(grpc.RpcError) as err:
        stub_of(server).Predict(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # HandleReloadConfigRequest: a second model on the same versions.
    reload_stub(server).HandleReloadConfigRequest(
        reload_request(("shop", server.base), ("shop2", server.base)), timeout=120)
    request = predict_request(SESSIONS)
    request.model_spec.name = "shop2"
    assert stub_of(server).Predict(request, timeout=30).model_spec.version.value == 2
    # A request without a config changes nothing, as TF Serving (it unloaded every model).
    from tensorflow_serving.apis import model_management_pb2

    reload_stub(server).HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(),
                                                  timeout=60)
    assert stub_of(server).Predict(request, timeout=30).model_spec.version.value == 2
    assert "taking no action" in (server.base.parent / "server.log").read_text()
    # A label for a version that is not served is refused, and the labels stay.
    labelled = reload_request(("shop", server.base), ("shop2", server.base))
    labelled.config.model_config_list.config[1].version_labels["canary"] = 7
    with pytest.raises(grpc.RpcError) as err:
        reload_stub(server).HandleReloadConfigRequest(labelled, timeout=120)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ("Request to assign label to version 7 of model shop2, which is not currently "
            "available for inference") in err.value.details()
    request.model_spec.version_label = "canary"
    with pytest.raises(grpc.RpcError) as err:
        stub_of(server).Predict(request, timeout=30)
    assert "Unrecognized servable version label" in err.value.details()


@pytest.mark.parametrize("change, code", [
    (lambda r: r.model_spec.__setattr__("name", "nope"), grpc.StatusCode.NOT_FOUND),
    (lambda r: r.model_spec.version.__setattr__("value", 9), grpc.StatusCode.NOT_FOUND),
    (lambda r: r.model_spec.__setattr__("version_label", "canary"), grpc.StatusCode.NOT_FOUND),
    (lambda r: r.model_spec.__setattr__("signature_name", "nope"),
     grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: r.inputs["items"].CopyFrom(r.inputs["item_ids"]),
     grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: r.inputs["k"].CopyFrom(tf.make_tensor_proto(np.float32(5))),
     grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: r.inputs["k"].CopyFrom(tf.make_tensor_proto(np.int32(100000))),
     grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: r.inputs["item_ids"].CopyFrom(tf.make_tensor_proto(np.array(
        [[[b"i1"]]]))), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: r.output_filter.append("nope"), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: r.inputs["k"].__setattr__("tensor_content", b"\0\0"),  # 2 bytes for an int32
     grpc.StatusCode.INVALID_ARGUMENT),
])
def test_bad_requests_get_their_status_code_and_the_server_keeps_answering(
        shared, change, code):
    server = shared
    request = predict_request(SESSIONS)
    change(request)
    with pytest.raises(grpc.RpcError) as err:
        stub_of(server).Predict(request, timeout=30)
    assert err.value.code() == code, err.value.details()
    assert stub_of(server).Predict(predict_request(SESSIONS), timeout=30).outputs


@pytest.mark.parametrize("change, message", [
    (lambda r: r.output_filter.extend(["scores", "scores"]),
     "duplicate output tensor alias: scores"),  # TF Serving's words
    (lambda r: r.inputs["k"].int_val.append(4), "input 'k': malformed tensor: 2 values for "
                                                "a shape of 1 values"),
])
def test_duplicate_filters_and_surplus_values_are_named(shared, change, message):
    request = predict_request(SESSIONS)
    change(request)
    with pytest.raises(grpc.RpcError) as err:
        stub_of(shared).Predict(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_unsupported_rpcs_are_unimplemented(shared):
    server = shared
    from tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "shop"
    with pytest.raises(grpc.RpcError) as err:
        stub_of(server).Classify(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_sigterm_lets_calls_in_flight_finish(server):
    stub = stub_of(server)
    big = [["i1", "i2", "i3"]] * 4000
    futures = [stub.Predict.future(predict_request(big, k=20), timeout=60) for _ in range(6)]
    time.sleep(0.2)
    server.proc.send_signal(signal.SIGTERM)
    results = [f.result() for f in futures]  # raises if any call was dropped
    assert all(tf.make_ndarray(r.outputs["item_ids"]).shape == (4000, 20) for r in results)
    assert server.proc.wait(timeout=60) == 0


def rest(server, path, body=None):
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=data,
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_rest_predict_equals_grpc_predict(shared):
    grpc_out = stub_of(shared).Predict(predict_request(SESSIONS, k=4), timeout=30)
    grpc_ids = tf.make_ndarray(grpc_out.outputs["item_ids"]).astype(str).tolist()
    code, columnar = rest(shared, "/v1/models/shop:predict",
                          {"inputs": {"item_ids": [["i1", "i2", "i3"], ["i10"]], "k": 4}})
    assert code == 200 and columnar["outputs"]["item_ids"] == grpc_ids
    np.testing.assert_allclose(columnar["outputs"]["scores"],
                               tf.make_ndarray(grpc_out.outputs["scores"]), rtol=1e-5)
    code, rows = rest(shared, "/v1/models/shop/versions/1:predict",
                      {"instances": [{"item_ids": s, "k": 4} for s in SESSIONS]})
    assert code == 200 and [p["item_ids"] for p in rows["predictions"]] == grpc_ids
    code, status = rest(shared, "/v1/models/shop")
    assert code == 200 and status["model_version_status"][0]["state"] == "AVAILABLE"
    code, meta = rest(shared, "/v1/models/shop/metadata")
    assert code == 200 and "serving_default" in meta["metadata"]["signature_def"][
        "signature_def"]
    assert rest(shared, "/v1/models/nope:predict", {"inputs": {}})[0] == 404
    code, err = rest(shared, "/v1/models/shop:predict", {"inputs": {"item_ids": [["i1"]]}})
    assert code == 400 and "missing input" in err["error"]
    assert rest(shared, "/v1/models/shop:predict", {"rows": 1})[0] == 400


def test_rest_row_format_batches_single_and_identical_rows(shared):
    local = load_saved_model(shared.base / "1").signatures
    session = ["i1", "i2", "i3"]
    expected = local["serving_default"](item_ids=tf.constant([session]), k=tf.constant(3))[
        "item_ids"].numpy().astype(str).tolist()
    for instances in ([{"item_ids": session, "k": 3}], [{"item_ids": session, "k": 3}] * 2):
        code, rows = rest(shared, "/v1/models/shop:predict", {"instances": instances})
        assert code == 200, rows
        assert [p["item_ids"] for p in rows["predictions"]] == expected * len(instances)
    code, rows = rest(shared, "/v1/models/shop:predict",
                      {"signature_name": "embed_items",
                       "instances": [{"item_ids": "new", "texts": ""}] * 2})
    assert code == 200 and len(rows["predictions"]) == 2, rows
    code, rows = rest(shared, "/v1/models/shop:predict",
                      {"signature_name": "item_texts", "instances": ["i1", "i2"]})
    texts = local["item_texts"](item_ids=tf.constant(["i1", "i2"]))["texts"].numpy()
    # One output: TF Serving answers with its values alone, not an object naming it.
    assert code == 200 and rows["predictions"] == [t.decode() for t in texts], rows
    code, columns = rest(shared, "/v1/models/shop:predict",
                         {"signature_name": "item_texts", "inputs": ["i1", "i2"]})
    assert code == 200 and columns == {"outputs": [t.decode() for t in texts]}, columns
    code, columns = rest(shared, "/v1/models/shop:predict",
                         {"inputs": {"item_ids": [session], "k": 3}})
    assert code == 200 and columns["outputs"]["item_ids"] == expected, columns
    code, err = rest(shared, "/v1/models/shop:predict", {"inputs": [session]})
    assert code == 400 and "'inputs' holds bare values" in err["error"], err
    code, err = rest(shared, "/v1/models/shop:predict",
                     {"instances": [{"item_ids": session, "k": 3},
                                    {"item_ids": session, "k": 4}]})
    assert code == 400 and "input 'k'" in err["error"] and "instances differ" in err["error"]


def test_batched_server_gives_each_caller_its_own_rows(shared):
    stub = stub_of(shared)
    sessions = [[f"i{i}", f"i{i + 1}"] for i in range(1, 40)]
    futures = [stub.Predict.future(predict_request([s], k=3), timeout=30) for s in sessions]
    got = [tf.make_ndarray(f.result().outputs["item_ids"])[0].astype(str).tolist()
           for f in futures]
    local = load_saved_model(shared.base / "1").signatures["serving_default"](
        item_ids=tf.constant(sessions), k=tf.constant(3))["item_ids"].numpy().astype(str)
    assert got == local.tolist()


def test_recommend_command_prints_items_with_text(shared, capsys):
    from tfrec.cli import main

    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--items", "i1,i2", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("session: i1 (") and len(out) == 4
    rank, item, score, *text = out[1].split()
    assert rank == "1." and float(score) > 0 and text  # the item's catalogue text
    # --json: the same list, one JSON object a program reads.
    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--items", "i1,i2,nope", "-k", "3", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["session"] == ["i1", "i2", "nope"] and listed["unknown"] == ["nope"]
    assert not listed["fallback"] and [e["rank"] for e in listed["items"]] == [1, 2, 3]
    assert listed["items"][0]["item_id"] == item and listed["items"][0]["text"]
    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--items", "nope", "-k", "2", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["fallback"] and listed["unknown"] == ["nope"] and len(listed["items"]) == 2
    assert listed["added_after_training"] == []
    assert main(["-q", "recommend", "--server", shared.target, "--model", "nope",
                 "--items", "i1"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--items", "nope", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "the most popular items" in out[1] and len(out) == 5
    # A version label of the model config (the shared server's: stable -> 1).
    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--items", "i1,i2", "-k", "3", "--version-label", "stable"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--items", "i1", "--version-label", "canary"]) == 2
    assert "Unrecognized servable version label: canary" in capsys.readouterr().err
    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--items", "i1", "--version-label", "stable", "--version", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    client = RecommenderClient(shared.target, "shop", version_label="stable")
    assert len(client.recommend([["i1", "i2"]], k=3)[0]) == 3
    client.close()
    with pytest.raises(ValueError, match="not both"):
        RecommenderClient(shared.target, "shop", version=1, version_label="stable")


# -- hostile input and operator mistakes -----------------------------------------------------
def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def declared(shape, values=(b"i1",)):
    """An item_ids TensorProto declaring `shape` but carrying only `values`."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    proto.string_val.extend(values)
    return proto


@pytest.mark.parametrize("shape, message", [
    ([1, 5_000_000], "5,000,000 values (request total 5,000,001) is over the limit of "
                     "1,000,000 values per request"),
    ([1, 2**40], "is over the limit of 1,000,000 values per request"),
    ([0, 3], "input 'item_ids': the batch is empty"),
    ([1, 600], "sessions of 600 items are over the limit of 500 (the export's "
               "max_session_items)"),
])
def test_declared_shapes_are_bounded_before_anything_is_allocated(shared, shape, message):
    before = rss_mb(shared.proc.pid)
    request = predict_request(SESSIONS)
    request.inputs["item_ids"].CopyFrom(declared(shape, () if 0 in shape else (b"i1",)))
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as err:
        stub_of(shared).Predict(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert time.perf_counter() - started < 2.0
    assert rss_mb(shared.proc.pid) - before < 50
    assert stub_of(shared).Predict(predict_request(SESSIONS), timeout=30).outputs


def test_k_out_of_range_names_the_input_and_the_rule(shared, capsys):
    from tfrec.cli import main

    for k in (21, 0):
        with pytest.raises(grpc.RpcError) as err:
            stub_of(shared).Predict(predict_request(SESSIONS, k=k), timeout=30)
        assert err.value.details() == (f"input 'k': must be between 1 and 20 (the index's "
                                       f"max_k), got {k}")
    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--items", "i1", "-k", "500"]) == 2
    assert "input 'k': must be between 1 and 20" in capsys.readouterr().err
    # Beyond what a signature's int32 k holds: the setting's rule, no traceback.
    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--items", "i1", "-k", "99999999999"]) == 2
    err = capsys.readouterr().err
    assert "setting 'recommend.k' (-k)" in err and "from 1 to 2147483647" in err, err


def test_unknown_sessions_get_popular_items_flagged_over_grpc(shared):
    response = stub_of(shared).Predict(predict_request([["nope", ""], ["i1", "i2"]], k=3),
                                       timeout=30)
    assert tf.make_ndarray(response.outputs["fallback"]).tolist() == [True, False]
    ids = tf.make_ndarray(response.outputs["item_ids"]).astype(str)
    assert "" not in ids[0] and ids[0].tolist() != ids[1].tolist()


def test_deleting_the_newest_version_serves_the_previous_one(server):
    shutil.copytree(server.versions / "2", server.base / "2")
    server.wait_for(2)
    assert server.status()[1][0] == "END"
    shutil.rmtree(server.base / "2")
    server.wait_for(1)
    response = stub_of(server).Predict(predict_request(SESSIONS), timeout=30)
    assert response.model_spec.version.value == 1


def test_a_version_copied_by_hand_is_served_only_once_complete(server):
    source, target = server.versions / "2", server.base / "2"
    with Caller(server, SESSIONS) as caller:
        target.mkdir()  # `cp -r` makes the folder before the files
        deadline = time.time() + 30
        while server.status().get(2, ("",))[0] != "START" and time.time() < deadline:
            time.sleep(0.05)
        assert server.status()[2] == ("START", "waiting for saved_model.pb, "
                                      "variables/variables.index, "
                                      "variables/variables.data-00000-of-00001")
        # The model files first, the extra assets (metadata, warm-up) last.
        for path in sorted(source.iterdir()):
            if path.name != "assets.extra":
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, target / path.name)
        time.sleep(2.0)  # ten polls
        assert server.status()[2] == ("START", "waiting for assets.extra/tfrec_metadata.json")
        assert caller.served == {1}
        shutil.copytree(source / "assets.extra", target / "assets.extra")
        server.wait_for(2)
        caller.wait_until_served(2)
    assert caller.failures == []
    # Loaded with its metadata: the server checks k against version 2's max_k.
    with pytest.raises(grpc.RpcError) as err:
        stub_of(server).Predict(predict_request(SESSIONS, k=21), timeout=30)
    assert "(the index's max_k)" in err.value.details()
    log = (server.base.parent / "server.log").read_text()
    assert re.search(r"shop version 2 at .* is not complete yet", log)


def test_a_wrong_base_path_by_reload_keeps_the_model_serving(reloadable, tmp_path):
    server = reloadable
    missing, broken = tmp_path / "missing", tmp_path / "broken"
    shutil.copytree(server.versions / "1" / "variables", broken / "1" / "variables")
    (broken / "1" / "saved_model.pb").write_bytes(b"not a saved model")
    stub = reload_stub(server)
    with Caller(server, SESSIONS) as caller:
        stub.HandleReloadConfigRequest(reload_request(("shop", missing)), timeout=120)
        time.sleep(1.0)  # several polls
        state, detail = server.status()[1]
        assert state == "AVAILABLE" and f"its base_path {missing} does not exist" in detail
        # A path whose only version does not load: the version from before still serves.
        stub.HandleReloadConfigRequest(reload_request(("shop", broken)), timeout=120)
        deadline = time.time() + 60
        while "failed to load" not in server.status()[1][1] and time.time() < deadline:
            time.sleep(0.1)
        state, detail = server.status()[1]
        assert state == "AVAILABLE" and f"its base_path {broken} has no version" in detail
        stub.HandleReloadConfigRequest(reload_request(("shop", server.base)), timeout=120)
        time.sleep(0.5)
    assert caller.failures == [] and caller.served == {1}
    assert server.status()[1] == ("AVAILABLE", "")
    log = (tmp_path / "server.log").read_text()
    assert re.search(rf"WARNING.*'shop'.*{re.escape(str(missing))} does not exist.*still "
                     "serving version 1", log), log[-3000:]
    assert re.search(rf"WARNING.*still serving version 1 from .*its base_path "
                     rf"{re.escape(str(broken))} has no version that loads", log)


def test_a_wrong_base_path_in_the_config_file_keeps_serving_and_rest_shows_no_path(
        versions, tmp_path):
    srv = start_server(versions, tmp_path, "--model_config_file_poll_wait_seconds", "0.2")
    config = tmp_path / "models.config"
    right = config.read_text()
    missing = tmp_path / "typo"
    try:
        with Caller(srv, SESSIONS) as caller:
            config.write_text(right.replace(str(srv.base), str(missing)).rstrip()[:-1]
                              + ' config { name: "ghost" base_path: "%s" } }\n' % missing)
            deadline = time.time() + 30
            while "does not exist" not in srv.status()[1][1] and time.time() < deadline:
                time.sleep(0.1)
            assert srv.status()[1] == ("AVAILABLE", f"still served from {srv.base / '1'}, "
                                       f"loaded before: its base_path {missing} does not exist")
            # REST clients get what happened, not the server's paths.
            code, status = rest(srv, "/v1/models/shop")
            assert code == 200 and str(tmp_path) not in json.dumps(status)
            assert status["model_version_status"][0]["state"] == "AVAILABLE"
            assert "see the server log" in status["model_version_status"][0]["status"][
                "error_message"]
            code, error = rest(srv, "/v1/models/ghost")
            assert code == 404 and str(tmp_path) not in json.dumps(error)
            assert "no version found under the model's base path" in error["error"]
            code, error = rest(srv, "/v1/models/ghost:predict", {"instances": [["i1"]]})
            assert code == 404 and str(tmp_path) not in json.dumps(error)
            # A typo in a field name: one log line naming it, no traceback, still serving.
            config.write_text(right.replace("model_platform", "model_platfrom"))
            log = tmp_path / "server.log"
            deadline = time.time() + 30
            while "could not re-read" not in log.read_text() and time.time() < deadline:
                time.sleep(0.1)
            assert re.search(r"ERROR could not re-read the model config .*: .*model_platfrom",
                             log.read_text()), log.read_text()[-2000:]
            assert "Traceback" not in log.read_text()
            config.write_text(right)
            deadline = time.time() + 30
            while srv.status()[1][1] and time.time() < deadline:
                time.sleep(0.1)
        assert caller.failures == [] and caller.served == {1}
        assert srv.status()[1] == ("AVAILABLE", "")
    finally:
        srv.stop()


def test_rest_status_of_a_failed_load_shows_no_path_or_exception_text(server, tmp_path):
    bad = server.base / ".v2"
    shutil.copytree(server.versions / "2" / "variables", bad / "variables")
    (bad / "saved_model.pb").write_bytes(b"not a saved model")
    os.rename(bad, server.base / "2")
    deadline = time.time() + 60
    while server.status().get(2, ("",))[0] != "END" and time.time() < deadline:
        time.sleep(0.1)
    state, error = server.status()[2]  # gRPC GetModelStatus: the operator's API
    assert state == "END" and "retried when its files change" in error
    code, status = rest(server, "/v1/models/shop")
    assert code == 200
    failed = next(v for v in status["model_version_status"] if v["version"] == "2")
    assert failed["state"] == "END" and failed["status"] == {
        "error_code": "UNKNOWN", "error_message": "version 2 failed to load; see the server log"}
    assert str(tmp_path) not in json.dumps(status) and error not in json.dumps(status)
    log = (tmp_path / "server.log").read_text()
    assert re.search(r"WARNING.*shop version 2 failed to load", log)
    assert str(server.base / "2") in log


def test_reload_is_off_unless_allowed(shared, tmp_path):
    server = shared  # started without --allow-reload
    with pytest.raises(grpc.RpcError) as err:
        reload_stub(server).HandleReloadConfigRequest(
            reload_request(("shop", tmp_path / "elsewhere")), timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--allow_reload" in err.value.details()
    assert server.status() == {1: ("AVAILABLE", "")}


def test_reload_takes_only_absolute_paths_under_the_model_roots(reloadable, tmp_path):
    server = reloadable
    stub = reload_stub(server)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    shutil.copytree(server.versions / "2", outside / "2")
    (tmp_path / "link").symlink_to(outside)  # under the root, but leads out of it
    for base, code, message in [
            ("shop", grpc.StatusCode.INVALID_ARGUMENT, "base_path 'shop' is relative"),
            (outside, grpc.StatusCode.PERMISSION_DENIED, "is outside the model roots"),
            (tmp_path / "link", grpc.StatusCode.PERMISSION_DENIED,
             "is outside the model roots"),
            (tmp_path / ".." / outside.name, grpc.StatusCode.PERMISSION_DENIED,
             "is outside the model roots")]:
        with pytest.raises(grpc.RpcError) as err:
            stub.HandleReloadConfigRequest(reload_request(("shop", base)), timeout=30)
        assert err.value.code() == code and message in err.value.details(), base
    assert server.status() == {1: ("AVAILABLE", "")}
    shutil.copytree(server.versions / "2", tmp_path / "inside" / "2")
    stub.HandleReloadConfigRequest(reload_request(("shop", tmp_path / "inside")), timeout=120)
    server.wait_for(2)


def test_a_second_server_on_the_same_port_refuses_to_start(shared, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "x" base_path: "%s" } }\n'
                      % shared.base)
    second = subprocess.run(
        [sys.executable, "-m", "tfrec", "serve", "--model_config_file", str(config),
         "--port", str(shared.port)], capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 2
    assert f"cannot listen on 127.0.0.1:{shared.port}: the port is in use" in second.stderr
    assert stub_of(shared).Predict(predict_request(SESSIONS), timeout=30).outputs


def test_start_names_a_missing_base_path_the_bound_port_and_what_loaded(versions, tmp_path):
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    base, missing = tmp_path / "shop", tmp_path / "no-such-folder"
    shutil.copytree(versions / "1", base / "1")
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "shop" base_path: "%s" } '
                      'config { name: "ghost" base_path: "%s" } }\n' % (base, missing))
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.Popen(  # the dashed spelling of TF Serving's flags
        [sys.executable, "-m", "tfrec", "serve", "--model-config-file", str(config),
         "--port", "0", "--rest-api-port", "0", "--file-system-poll-wait-seconds", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        timer = threading.Timer(180, proc.kill)
        timer.start()
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("tfrec serve: serving on"):
                break
        timer.cancel()
        announced = lines[-1]
        assert announced.startswith("tfrec serve: serving on 127.0.0.1:"), lines
        port = int(re.search(r"serving on 127\.0\.0\.1:([0-9]+) \(gRPC\)", announced)[1])
        assert port != 0 and re.search(r", 127\.0\.0\.1:[1-9][0-9]* \(REST\)", announced)
        assert "shop: version 1 AVAILABLE" in announced  # said once the first load is done
        assert f"ghost: nothing to serve: its base_path {missing} does not exist" in announced
        warned = [line for line in lines[:-1] if "WARNING" in line and "'ghost'" in line]
        assert warned and str(missing) in warned[0]
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "ghost"
        with pytest.raises(grpc.RpcError) as err:
            model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert f"its base_path {missing} does not exist" in err.value.details()
        request.model_spec.name = "shop"
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, timeout=30)
        assert [s.version for s in status.model_version_status] == [1]
        channel.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def test_sigterm_lets_grpc_and_rest_calls_in_flight_finish_within_the_grace(versions, tmp_path):
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 4096 }\nbatch_timeout_micros { value: 2000000 }\n")
    srv = start_server(versions, tmp_path, "--enable_batching", "--batching_parameters_file",
                       str(batching), "--grace_period_seconds", "30")
    try:
        rest_result = {}
        thread = threading.Thread(target=lambda: rest_result.update(code=rest(
            srv, "/v1/models/shop:predict", {"inputs": {"item_ids": [["i1"]], "k": 3}})[0]))
        thread.start()
        future = stub_of(srv).Predict.future(predict_request(SESSIONS, k=3), timeout=60)
        time.sleep(0.5)  # both calls are held in the batch queue for 2 s
        srv.proc.send_signal(signal.SIGTERM)
        assert future.result().outputs
        thread.join(60)
        assert rest_result == {"code": 200}
        assert srv.proc.wait(timeout=60) == 0
    finally:
        srv.stop()


def raw_http(server, data: bytes) -> list[bytes]:
    """Status lines of every response the server sends before it closes the connection."""
    import socket

    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return [line for line in received.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def test_rest_rejections_against_the_real_server(shared):
    code, err = rest(shared, "/v1/models/shop:predict",
                     {"inputs": {"item_ids": [["i1"]], "k": 4294967301}})
    assert code == 400 and "input 'k': 4294967301 is out of range for int32" in err["error"]
    assert rest(shared, "/v1/models/shop/labels/canary")[0] == 404
    assert rest(shared, "/v1/models/shop/versions/0")[0] == 404
    assert rest(shared, "/v1/models/shop/labels/stable")[0] == 200
    code, err = rest(shared, "/v1/models/shop:predict",
                     {"inputs": {"item_ids": [["i1"]], "k": {"a": 1}}})
    assert code == 400 and "'k'" in err["error"]
    smuggled = (b"GET /v1/models/shop HTTP/1.1\r\nHost: x\r\n\r\n")
    chunked = (b"POST /v1/models/shop:predict HTTP/1.1\r\nHost: x\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(smuggled) + smuggled
               + b"\r\n0\r\n\r\n")
    assert raw_http(shared, chunked) == [b"HTTP/1.1 411 Length Required"]
    bad_length = b"POST /v1/models/shop:predict HTTP/1.1\r\nContent-Length: abc\r\n\r\n"
    assert raw_http(shared, bad_length + smuggled) == [b"HTTP/1.1 400 Bad Request"]
    deep = b"[" * 100_000 + b"]" * 100_000
    assert raw_http(shared, b"POST /v1/models/shop:predict HTTP/1.1\r\nContent-Length: %d\r\n"
                    b"\r\n" % len(deep) + deep) == [b"HTTP/1.1 400 Bad Request"]
    assert stub_of(shared).Predict(predict_request(SESSIONS), timeout=30).outputs
