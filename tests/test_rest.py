"""The REST server in-process, with a stub predictor: framing, limits, timeouts, stop, JSON."""

from __future__ import annotations

import json
import socket
import threading
import time
import types

import grpc
import numpy as np
import pytest

from tfrec.serving.errors import ServingError
from tfrec.serving.rest import RestServer

ANSWER = 15.0  # seconds a "must answer" read may take on a loaded machine


class StubManager:
    """Model "shop": versions 1 and 2, label "stable" -> 1."""

    versions = {1: "AVAILABLE", 2: "AVAILABLE"}
    labels = {"stable": 1}

    def status(self, name, number=None, label=None):
        if name != "shop":
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find model {name}")
        if label is not None:
            if label not in self.labels:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Unrecognized label: {label}")
            number = self.labels[label]
        if number is not None and number not in self.versions:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"no version {number}")
        return [types.SimpleNamespace(number=n, state=s, error="", detail="")
                for n, s in sorted(self.versions.items()) if number in (None, n)]

    def find(self, name, number=None, label=None):
        found = self.status(name, number, label)[-1]
        return types.SimpleNamespace(name=name, number=found.number, signature_defs={})


class StubPredictor:
    """Echoes: one row per item_ids row; records the arrays it was given."""

    def __init__(self):
        self.manager = StubManager()
        self.calls = []
        self.entered = threading.Event()
        self.gate = None  # a threading.Event the call waits for

    def run(self, name, version, label, signature, arrays, output_filter=(), cast=False,
            rows=False):
        self.manager.find(name, version, label)
        self.calls.append(arrays)
        self.rows = rows
        if "boom" in arrays:
            raise RuntimeError("unexpected")
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(60)
        ids = np.asarray(arrays.get("item_ids", [[b"x"]]))
        n = ids.shape[0] if ids.ndim else 1
        return name, 1, "serving_default", {
            "item_ids": np.array([[b"a", b"b"]] * n, dtype=object),
            "scores": np.zeros((n, 2), np.float32)}


@pytest.fixture
def make():
    servers = []

    def _make(**options):
        predictor = StubPredictor()
        server = RestServer(predictor, "127.0.0.1", 0, **options)
        server.start()
        servers.append(server)
        return server, predictor

    yield _make
    for server in servers:
        server.stop(0)


def connect(server, timeout=ANSWER):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return sock


def request(method, path, body=None, headers=None):
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    data = b""
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        lines.append(f"Content-Length: {len(data)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def read_response(reader):
    """(status, headers, body) of the next response; None at EOF."""
    line = reader.readline()
    if not line:
        return None
    status = int(line.split()[1])
    headers = {}
    while True:
        line = reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        key, value = line.decode().split(":", 1)
        headers[key.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", 0)))
    return status, headers, (json.loads(body) if body else None)


def read_until_closed(sock):
    """Every response until the server closes the connection (it must, in ANSWER s)."""
    reader = sock.makefile("rb")
    responses = []
    try:
        while (response := read_response(reader)) is not None:
            responses.append(response)
    except ConnectionResetError:
        pass
    return responses


def call(server, method, path, body=None, headers=None):
    with connect(server) as sock:
        sock.sendall(request(method, path, body, {"Connection": "close", **(headers or {})}))
        return read_until_closed(sock)[0]


def test_json_integers_are_int64_never_wrapped(make):
    server, predictor = make()
    status, _, _ = call(server, "POST", "/v1/models/shop:predict",
                        {"inputs": {"item_ids": [["i1"]], "k": 4294967301}})
    assert status == 200
    k = predictor.calls[-1]["k"]
    assert k.dtype == np.int64 and int(k) == 4294967301
    status, _, _ = call(server, "POST", "/v1/models/shop:predict",
                        {"inputs": {"item_ids": [["i1"]], "k": [4294967301, -2**40]}})
    assert status == 200
    k = predictor.calls[-1]["k"]
    assert k.dtype == np.int64 and k.tolist() == [4294967301, -2**40]
    status, _, _ = call(server, "POST", "/v1/models/shop:predict",
                        {"instances": [{"item_ids": ["i1"], "k": 2**63 - 1},
                                       {"item_ids": ["i2"], "k": 2**63 - 1}]})
    assert status == 200 and predictor.calls[-1]["k"].tolist() == [2**63 - 1] * 2
    for k in (2**63, -2**63 - 1, 10**30):
        status, headers, body = call(server, "POST", "/v1/models/shop:predict",
                                     {"inputs": {"item_ids": [["i1"]], "k": [1, k]}})
        assert status == 400 and "'k'" in body["error"] and "64-bit" in body["error"]
    assert len(predictor.calls) == 3


def test_body_over_the_limit_is_413_and_never_parsed_as_a_request(make):
    server, predictor = make()
    smuggled = request("POST", "/v1/models/shop:predict", {"inputs": {"item_ids": [["x"]]}})
    with connect(server) as sock:
        sock.sendall(b"POST /v1/models/shop:predict HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Length: %d\r\n\r\n" % (64 * 2**20 + 1) + smuggled)
        responses = read_until_closed(sock)
    assert [r[0] for r in responses] == [413]
    assert responses[0][1]["connection"] == "close" and "limit" in responses[0][2]["error"]
    assert predictor.calls == []


def test_chunked_body_is_411_and_never_parsed_as_a_request(make):
    server, predictor = make()
    smuggled = request("GET", "/v1/models/shop")
    body = b'{"inputs": {}}'
    with connect(server) as sock:
        sock.sendall(b"POST /v1/models/shop:predict HTTP/1.1\r\nHost: test\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) + smuggled)
        responses = read_until_closed(sock)
    assert [r[0] for r in responses] == [411]
    assert "Content-Length" in responses[0][2]["error"]
    assert responses[0][1]["connection"] == "close"
    assert predictor.calls == []


def test_post_without_content_length_is_411(make):
    server, predictor = make()
    with connect(server) as sock:
        sock.sendall(b"POST /v1/models/shop:predict HTTP/1.1\r\nHost: test\r\n\r\n"
                     + request("GET", "/v1/models/shop"))
        responses = read_until_closed(sock)
    assert [r[0] for r in responses] == [411]
    assert predictor.calls == []


@pytest.mark.parametrize("length", ["-1", "abc", "1x", "+5", "", "5, 6",
                                    "99999999999999999999999"])
def test_malformed_content_length_is_400_and_closes(make, length):
    server, predictor = make()
    with connect(server) as sock:
        sock.sendall(b"POST /v1/models/shop:predict HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Length: " + length.encode() + b"\r\n\r\n{}")
        responses = read_until_closed(sock)
    assert [r[0] for r in responses] == [400]
    assert "Content-Length" in responses[0][2]["error"]
    assert predictor.calls == []


def test_body_shorter_than_declared_is_408_after_the_read_timeout(make):
    server, predictor = make(read_timeout=0.5)
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /v1/models/shop:predict HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Length: 100\r\n\r\n" + b'{"inputs": ')
        responses = read_until_closed(sock)
        took = time.monotonic() - start
    assert [r[0] for r in responses] == [408] and responses[0][1]["connection"] == "close"
    assert 0.4 < took < ANSWER
    assert predictor.calls == []


def test_idle_connections_are_closed_after_the_read_timeout(make):
    server, _ = make(read_timeout=0.5)
    with connect(server) as idle, connect(server) as kept:
        kept.sendall(request("GET", "/v1/models/shop"))
        reader = kept.makefile("rb")
        status, headers, _ = read_response(reader)
        assert status == 200 and headers.get("connection") != "close"
        start = time.monotonic()
        assert read_response(reader) is None  # EOF: closed while idle
        assert read_until_closed(idle) == []
        assert time.monotonic() - start < ANSWER


def test_connections_over_the_limit_get_503_at_once(make):
    server, _ = make(max_connections=3)
    held = [connect(server) for _ in range(3)]
    try:
        for sock in held:  # each is surely being served, kept alive
            sock.sendall(request("GET", "/v1/models/shop"))
            assert read_response(sock.makefile("rb"))[0] == 200
        with connect(server) as extra:
            start = time.monotonic()
            responses = read_until_closed(extra)  # no request sent: answered on accept
            assert [r[0] for r in responses] == [503]
            assert responses[0][1]["connection"] == "close"
            assert "too many connections" in responses[0][2]["error"]
            assert time.monotonic() - start < ANSWER
    finally:
        held.pop().close()
        for sock in held:
            sock.close()
    deadline = time.monotonic() + ANSWER
    while True:  # the slots free up once the server has seen the closes
        status = call(server, "GET", "/v1/models/shop")[0]
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200


def test_stop_lets_the_request_in_flight_finish(make):
    server, predictor = make()
    predictor.gate = threading.Event()
    keep = connect(server)
    keep.sendall(request("GET", "/v1/models/shop"))
    keep_reader = keep.makefile("rb")
    assert read_response(keep_reader)[0] == 200
    busy = connect(server)
    busy.sendall(request("POST", "/v1/models/shop:predict",
                         {"inputs": {"item_ids": [["i1"]], "k": 2}}))
    assert predictor.entered.wait(ANSWER)
    stopper = threading.Thread(target=server.stop, args=(30,))
    stopper.start()
    try:
        deadline = time.monotonic() + ANSWER
        while True:  # new connections are refused
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER).close()
            except ConnectionRefusedError:
                break
            except ConnectionResetError:  # caught in the listener's backlog as it closed
                pass
            assert time.monotonic() < deadline, "still accepting connections after stop"
            time.sleep(0.05)
        # a request on a kept-alive connection meanwhile: 503 and close
        keep.sendall(request("GET", "/v1/models/shop"))
        status, headers, _ = read_response(keep_reader)
        assert status == 503 and headers["connection"] == "close"
        assert read_response(keep_reader) is None
        assert stopper.is_alive()  # still waiting for the call in flight
    finally:
        predictor.gate.set()
    responses = read_until_closed(busy)
    assert [r[0] for r in responses] == [200]
    assert responses[0][2]["outputs"]["item_ids"] == [["a", "b"]]
    assert responses[0][1]["connection"] == "close"
    stopper.join(ANSWER)
    assert not stopper.is_alive()
    keep.close()
    busy.close()


def test_stop_closes_what_is_still_running_after_the_grace_period(make):
    server, predictor = make()
    predictor.gate = threading.Event()
    try:
        with connect(server) as busy:
            busy.sendall(request("POST", "/v1/models/shop:predict",
                                 {"inputs": {"item_ids": [["i1"]]}}))
            assert predictor.entered.wait(ANSWER)
            start = time.monotonic()
            server.stop(0.3)
            assert 0.25 < time.monotonic() - start < ANSWER
            assert read_until_closed(busy) == []
    finally:
        predictor.gate.set()


DEEP = b'{"inputs": {"item_ids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"


@pytest.mark.parametrize("body, name", [
    ({"instances": [{"item_ids": {"a": 1}, "k": 5}]}, "item_ids"),
    ({"instances": [{"item_ids": ["i1"], "k": {"a": 1}}]}, "k"),
    ({"inputs": {"item_ids": [["i1"]], "k": [[1, 2], [3]]}}, "k"),
    ({"inputs": {"item_ids": [["i1"]], "k": [1, [2]]}}, "k"),
    ({"inputs": {"item_ids": [["i1"]], "k": None}}, "k"),
    ({"inputs": {"item_ids": [["i1"]], "k": True}}, "k"),
    ({"inputs": {"item_ids": [["i1", 3]], "k": 1}}, "item_ids"),
    ({"inputs": {"item_ids": [["i1"]], "k": {"b64": "!!"}}}, "k"),
    ({"inputs": {"item_ids": [["i1"]], "k": json.loads("[" * 40 + "1" + "]" * 40)}}, "k"),
    (DEEP, "item_ids"),
    (b'{"inputs": {"item_ids": [["\\ud800"]], "k": 1}}', "item_ids"),
    (b'{"inputs": {"item_ids": [["i1"]], "k": 1', None),
    (b"\xff\xfe{}", None),
    (b'["not", "an", "object"]', None),
    ({"inputs": {"k": 1}, "instances": [{"k": 1}]}, None),
    ({"instances": [{"k": 1}, {"j": 1}]}, None),
    ({"rows": 1}, None),
])
def test_bad_json_is_400_naming_the_input(make, body, name):
    server, predictor = make()
    status, headers, reply = call(server, "POST", "/v1/models/shop:predict", body)
    assert status == 400, reply
    if name:
        assert f"input {name!r}" in reply["error"]
    assert predictor.calls == []
    assert call(server, "GET", "/v1/models/shop")[0] == 200  # still serving


def test_status_passes_version_and_label_through(make):
    server, _ = make()
    versions = {path: call(server, "GET", path) for path in (
        "/v1/models/shop", "/v1/models/shop/labels/stable", "/v1/models/shop/versions/2",
        "/v1/models/shop/labels/canary", "/v1/models/shop/versions/0", "/v1/models/nope")}
    got = {path: (status, [v["version"] for v in body["model_version_status"]]
                  if status == 200 else None)
           for path, (status, _, body) in versions.items()}
    assert got == {"/v1/models/shop": (200, ["1", "2"]),
                   "/v1/models/shop/labels/stable": (200, ["1"]),
                   "/v1/models/shop/versions/2": (200, ["2"]),
                   "/v1/models/shop/labels/canary": (404, None),
                   "/v1/models/shop/versions/0": (404, None),
                   "/v1/models/nope": (404, None)}
    status, _, meta = call(server, "GET", "/v1/models/shop/labels/stable/metadata")
    assert status == 200 and meta["model_spec"]["version"] == "1"
    # Percent-encoded, as a URL carries a name with a space or beyond ASCII: decoded.
    status, _, body = call(server, "GET", "/v1/models/%73hop/labels/st%61ble")
    assert status == 200 and [v["version"] for v in body["model_version_status"]] == ["1"]
    status, _, body = call(server, "GET", "/v1/models/sh%FFop")
    assert status == 400 and "not percent-encoded UTF-8" in body["error"]


def test_predict_formats_and_keep_alive(make):
    server, predictor = make()
    with connect(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(  # pipelined on one connection
            request("POST", "/v1/models/shop:predict",
                    {"inputs": {"item_ids": [["i1", "i2"], ["i3"]], "k": 2}})
            + request("POST", "/v1/models/shop/versions/1:predict",
                      {"instances": [{"item_ids": ["i1"], "k": 2},
                                     {"item_ids": ["i2", "i3", "i4"], "k": 2}]}))
        status, _, columnar = read_response(reader)
        assert status == 200 and columnar["outputs"]["item_ids"] == [["a", "b"]] * 2
        assert columnar["outputs"]["scores"] == [[0.0, 0.0]] * 2
        status, headers, rows = read_response(reader)
        assert status == 200 and headers.get("connection") != "close"
        assert rows["predictions"] == [{"item_ids": ["a", "b"], "scores": [0.0, 0.0]}] * 2
    first, second = predictor.calls
    assert first["item_ids"].tolist() == [[b"i1", b"i2"], [b"i3", b""]]
    assert second["item_ids"].tolist() == [[b"i1", b"", b""], [b"i2", b"i3", b"i4"]]
    assert second["k"].tolist() == [2, 2] and second["k"].dtype == np.int64  # one per row
    assert predictor.rows
    floats = call(server, "POST", "/v1/models/shop:predict",
                  {"inputs": {"item_ids": [["i1"]], "w": [1, 2.5]}})
    assert floats[0] == 200 and predictor.calls[-1]["w"].dtype == np.float64


@pytest.mark.parametrize("instances, expected", [
    # One row: every input gets a batch dimension of 1 (a scalar input such as k too: the
    # predictor takes it from the rows, knowing the signature).
    ([{"user_ids": "1", "k": 3}], {"user_ids": [b"1"], "k": [3]}),
    ([{"user_ids": "1", "k": 3}, {"user_ids": "1", "k": 3}],
     {"user_ids": [b"1", b"1"], "k": [3, 3]}),
    ([{"item_ids": "a", "texts": ""}, {"item_ids": "b", "texts": ""}],
     {"item_ids": [b"a", b"b"], "texts": [b"", b""]}),
    ([{"item_ids": ["i1", "i2"], "k": 2}], {"item_ids": [[b"i1", b"i2"]], "k": [2]}),
    ([{"item_ids": ["i1"]}, {"item_ids": ["i1"]}], {"item_ids": [[b"i1"], [b"i1"]]}),
    (["1", "2"], {None: [b"1", b"2"]}),  # bare values: the one input of the signature
    (["1"], {None: [b"1"]}),
    ([{"b64": "YQ=="}, "b"], {None: [b"a", b"b"]}),  # a binary value is not named inputs
    ([[1, 2], [1, 2]], {None: [[1, 2], [1, 2]]}),
])
def test_row_format_stacks_every_input_over_the_rows(instances, expected):
    from tfrec.serving.rest import _arrays_from_json

    arrays, rows = _arrays_from_json({"instances": instances})
    assert rows and {k: v.tolist() for k, v in arrays.items()} == expected
    assert all(v.shape[0] == len(instances) for v in arrays.values())


def test_row_format_refuses_named_and_bare_instances_mixed(make):
    server, predictor = make()
    status, _, reply = call(server, "POST", "/v1/models/shop:predict",
                            {"instances": [{"item_ids": ["i1"]}, "i2"]})
    assert status == 400 and "instance 1" in reply["error"] and predictor.calls == []


def test_unexpected_errors_are_500_and_the_server_keeps_serving(make):
    server, _ = make()
    status, headers, body = call(server, "POST", "/v1/models/shop:predict",
                                 {"inputs": {"boom": 1}})
    assert status == 500 and body == {"error": "internal error; the server log has the details"}
    assert call(server, "POST", "/v1/models/nope:predict", {"inputs": {"k": 1}})[0] == 404
    assert call(server, "GET", "/v1/models/shop")[0] == 200


def test_methods_and_connection_close(make):
    server, _ = make()
    with connect(server) as sock:  # HEAD: 405, no body, closed
        sock.sendall(request("HEAD", "/v1/models/shop"))
        reader = sock.makefile("rb")
        line = reader.readline()
        assert line.split()[1] == b"405"
        rest = reader.read()  # headers only, then EOF
        assert b"Allow: GET, POST" in rest and rest.endswith(b"\r\n\r\n")
    assert call(server, "PUT", "/v1/models/shop", {})[0] == 405
    assert call(server, "BREW", "/v1/models/shop")[0] == 501
    assert call(server, "GET", "/v1/models/shop:predict")[0] == 405
    assert call(server, "POST", "/v1/models/shop", {})[0] == 405
    assert call(server, "GET", "/v2/nothing")[0] == 404
    with connect(server) as sock:  # Connection: close is honoured
        sock.sendall(request("GET", "/v1/models/shop", headers={"Connection": "close"})
                     + request("GET", "/v1/models/shop"))
        responses = read_until_closed(sock)
    assert [r[0] for r in responses] == [200] and responses[0][1]["connection"] == "close"


def test_a_client_trickling_bytes_is_cut_off_at_the_request_deadline(make):
    server, predictor = make(read_timeout=0.3)
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /v1/models/shop:predict HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Length: 100\r\n\r\n")
        closed = False
        for _ in range(40):  # one byte every 0.2 s: every read completes within its timeout
            try:
                sock.sendall(b" ")
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        if not closed:
            read_until_closed(sock)
        took = time.monotonic() - start
    assert took < 0.3 * 6 + 3.0  # not the 8 s the trickle would take
    assert predictor.calls == []


def connect_from(server, source, timeout=ANSWER):
    """A connection from another loopback address (Linux routes all of 127/8 to lo)."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    return sock


def test_one_address_may_hold_only_its_share_of_the_connections(make):
    server, _ = make(max_connections=10, max_connections_per_address=2)
    held = [connect_from(server, "127.0.0.2") for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(request("GET", "/v1/models/shop"))
            assert read_response(sock.makefile("rb"))[0] == 200
        with connect_from(server, "127.0.0.2") as extra:
            responses = read_until_closed(extra)
        assert [r[0] for r in responses] == [503]
        assert "from one address (limit 2)" in responses[0][2]["error"]
        assert call(server, "GET", "/v1/models/shop")[0] == 200  # another address
    finally:
        for sock in held:
            sock.close()


def test_headers_trickled_are_cut_off_at_the_header_deadline(make):
    server, predictor = make(read_timeout=1.0, header_timeout=0.5)
    data = b"GET /v1/models/shop HTTP/1.1\r\nHost: test\r\nX-Padding: " + b"x" * 200
    with connect(server) as sock:
        start = time.monotonic()
        for byte in data:  # one byte every 0.1 s: each read completes within its timeout
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - start > 8:
                break
        read_until_closed(sock)
        took = time.monotonic() - start
    assert took < 0.5 + 3.0  # not the 25 s the trickle would take


def test_a_body_trickled_under_the_minimum_rate_gets_408(make):
    server, predictor = make(read_timeout=0.5, min_body_rate=1000)
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /v1/models/shop:predict HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Length: 100000\r\n\r\n")  # at 1000 bytes/s: 100 s allowed
        answer = b""
        sock.settimeout(0.1)
        while time.monotonic() - start < 8:  # a byte every 0.1 s: under the rate
            try:
                sock.sendall(b" ")
                answer += sock.recv(65536)
                break
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                break
        took = time.monotonic() - start
        sock.settimeout(ANSWER)
        while answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"bytes/s" in answer, answer
    assert took < 0.5 + 2.0
    assert predictor.calls == []
