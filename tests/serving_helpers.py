"""A real `tfrec serve` process on free loopback ports, for the serving tests."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: Path, tmp: Path, *extra: str):
        self.port = free_port()
        self.rest_port = free_port()
        config = tmp / "models.config"
        config.write_text('model_config_list { config { name: "shop" base_path: "%s" '
                          'model_platform: "tensorflow" '
                          'version_labels { key: "stable" value: 1 } } }\n' % base)
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        self.log = open(tmp / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tfrec", "serve", "--model_config_file", str(config),
             "--port", str(self.port), "--file_system_poll_wait_seconds", "0.2",
             "--rest_api_port", str(self.rest_port), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        grpc.channel_ready_future(self.channel).result(timeout=120)

    def status(self):
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "shop"
        response = stub.GetModelStatus(request, timeout=10)
        names = get_model_status_pb2.ModelVersionStatus.State.Name
        return {s.version: (names(s.state), s.status.error_message)
                for s in response.model_version_status}

    def wait_for(self, version: int, state: str = "AVAILABLE", timeout: float = 120):
        deadline = time.time() + timeout
        seen = []
        while time.time() < deadline:
            try:
                current = self.status().get(version, (None, ""))[0]
            except grpc.RpcError:
                current = None
            if current and (not seen or seen[-1] != current):
                seen.append(current)
            if current == state:
                return seen
            time.sleep(0.02)
        raise AssertionError(f"version {version} never reached {state}; saw {seen}")

    def stop(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.log.close()


def start_server(versions, tmp_path, *extra):
    base = tmp_path / "shop"
    base.mkdir()
    shutil.copytree(versions / "1", base / "1")
    srv = Server(base, tmp_path, *extra)
    srv.base, srv.versions = base, versions
    srv.wait_for(1)
    return srv


def predict_request(sessions, k=5, signature="serving_default", version=None, model="shop"):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["item_ids"].CopyFrom(tf.make_tensor_proto(np.array(sessions, dtype=bytes)))
    request.inputs["k"].CopyFrom(tf.make_tensor_proto(np.int32(k)))
    return request


def stub_of(server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(server.channel)


class Caller:
    """Calls Predict in a loop on its own thread while the `with` block runs; records the
    versions that answered (`served`) and the status code of every failed call."""

    def __init__(self, server, sessions):
        import threading

        self.stub = stub_of(server)
        self.sessions = sessions
        self.failures, self.served = [], set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._call_forever)

    def _call_forever(self):
        while not self._stop.is_set():
            try:
                self.served.add(self.stub.Predict(predict_request(self.sessions), timeout=30)
                                .model_spec.version.value)
            except grpc.RpcError as err:
                self.failures.append(err.code())

    def wait_until_served(self, version: int, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while version not in self.served and time.time() < deadline:
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def count_json_values(value) -> int:
    """The values (strings, numbers, true, false, null) of a parsed JSON value; object
    keys not counted."""
    if isinstance(value, list):
        return sum(map(count_json_values, value))
    if isinstance(value, dict):
        return sum(map(count_json_values, value.values()))
    return 1
