"""`tfrec serve` against requests built to cost it: what one small request may make the
server allocate, parse or echo, and HTTP it cannot speak. A real server process."""

import concurrent.futures
import json
import select
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving_helpers import count_json_values, predict_request, start_server, stub_of

SESSIONS = [["i1", "i2", "i3"], ["i10", "", ""]]


@pytest.fixture(scope="module")
def server(versions, tmp_path_factory):
    srv = start_server(versions, tmp_path_factory.mktemp("bounds"))
    yield srv
    srv.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def strings(shape, values) -> tensor_pb2.TensorProto:
    """A DT_STRING TensorProto declaring `shape`, carrying only `values`."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    proto.string_val.extend(values)
    return proto


def refused(server, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub_of(server).Predict(request, timeout=60)
    return err.value


def exchange(server, data: bytes, timeout: float = 5.0) -> tuple[list[bytes], bytes, bool]:
    """(status lines, everything received, closed by the server?) for raw bytes sent to
    the REST port; the client gives up after `timeout` s without an answer, and stops
    sending once an answer comes (a body refused on arrival is not read to its end)."""
    received, closed = b"", False
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=timeout) as sock:
        view, sent = memoryview(data), 0
        while sent < len(view):
            readable, writable, _ = select.select([sock], [sock], [], timeout)
            if readable or not writable:
                break
            try:
                sent += sock.send(view[sent:sent + (1 << 20)])
            except (BrokenPipeError, ConnectionResetError):
                break
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except (TimeoutError, socket.timeout):
            pass
        except ConnectionResetError:
            closed = True
    return [line for line in received.split(b"\r\n") if line.startswith(b"HTTP/")], received, \
        closed


def post(path: str, body: bytes, length: int | None = None) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: "
            f"{len(body) if length is None else length}\r\n\r\n").encode() + body


def error_of(received: bytes) -> str:
    return json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]


# -- 1: a value repeated to fill a declared shape --------------------------------------------
def test_a_value_repeated_over_a_declared_shape_is_refused_before_it_is_built(server):
    # 1,055 bytes on the wire; filled out as TensorFlow does, 999,000 copies: 1 GB.
    request = predict_request(SESSIONS)
    request.inputs["item_ids"].CopyFrom(strings([1998, 500], [b"x" * 1000]))
    assert request.ByteSize() < 1200
    before = rss_mb(server.proc.pid)
    started = time.perf_counter()
    err = refused(server, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == (
        "input 'item_ids': 999,000,000 bytes once built (request total 999,000,004) is over "
        "the limit of 33,554,432 bytes per request (tfrec serve --max_request_bytes); a value "
        "repeated to fill a declared shape counts once per element it fills")
    assert time.perf_counter() - started < 5.0
    assert rss_mb(server.proc.pid) - before < 100
    # One string over the per-string limit, and a fill that stays small, as TF Serving.
    request.inputs["item_ids"].CopyFrom(strings([1, 2], [b"i1", b"x" * 70_000]))
    err = refused(server, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == ("input 'item_ids': a string of 70,000 bytes is over the limit of "
                             "65,536 bytes per string (tfrec serve --max_string_bytes)")
    request.inputs["item_ids"].CopyFrom(strings([2, 3], [b"i1"]))
    response = stub_of(server).Predict(request, timeout=60)
    assert tf.make_ndarray(response.outputs["item_ids"]).shape == (2, 5)


# -- 2: a big REST body ----------------------------------------------------------------------
def test_a_rest_body_over_the_byte_limit_is_413_unread(server):
    # Only the head is sent: the answer must not wait for the body.
    started = time.perf_counter()
    lines, received, closed = exchange(server, post("/v1/models/shop:predict", b"",
                                                    length=32 * 2**20 + 1))
    assert lines == [b"HTTP/1.1 413 Request Entity Too Large"] and closed
    assert "over the limit of 33,554,432 bytes (tfrec serve --max_request_bytes)" in error_of(
        received)
    assert time.perf_counter() - started < 4.0


def test_a_rest_body_of_too_many_values_is_refused_before_it_is_parsed(server):
    # 1.2 million strings in 3.6 MB: parsing them would build a Python object each.
    body = b'{"inputs": {"item_ids": [[' + b",".join([b'""'] * 1_200_000) + b']], "k": 5}}'
    before = rss_mb(server.proc.pid)
    lines, received, closed = exchange(server, post("/v1/models/shop:predict", body), 30)
    assert lines == [b"HTTP/1.1 400 Bad Request"] and closed
    # Refused once the part read is over (after ~3 MB), or when all of it has been read.
    assert error_of(received) in [
        "the body holds more than 1,004,096 values: over the limit of 1,000,000 values per "
        "request (tfrec serve --max_request_elements), with one more per row allowed for a "
        f"scalar input repeated in every row (--max_batch); {fate}"
        for fate in ("it was not read in full, nor parsed", "it was not parsed")]
    assert rss_mb(server.proc.pid) - before < 50
    # Bodies of 30 MB, under the byte limit, three at once: counted, refused, and given back.
    body = b'{"inputs": {"item_ids": [[' + b",".join([b'""'] * 10_000_000) + b']], "k": 5}}'
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: exchange(server, post("/v1/models/shop:predict",
                                                                body), 60), range(3)))
    assert [lines for lines, _, _ in answers] == [[b"HTTP/1.1 400 Bad Request"]] * 3
    assert rss_mb(server.proc.pid) - before < 100
    # Lists of strings padded to the longest: refused before the padding is built.
    rows = [[""]] * 3000 + [[""] * 500]
    body = json.dumps({"inputs": {"item_ids": rows, "k": 5}}).encode()
    lines, received, _ = exchange(server, post("/v1/models/shop:predict", body), 30)
    assert lines == [b"HTTP/1.1 400 Bad Request"]
    assert error_of(received).startswith(
        "input 'item_ids': padding its 3,001 lists of strings to the longest (500) makes "
        "1,500,500 values, over the limit of 1,000,000 values per request")
    # A body under the limits is parsed and answered.
    body = json.dumps({"inputs": {"item_ids": [["i1", "i2"], ["i3"]], "k": 3}}).encode()
    lines, received, _ = exchange(server, post("/v1/models/shop:predict", body), 30)
    assert lines == [b"HTTP/1.1 200 OK"]


# -- 8: client strings echoed ----------------------------------------------------------------
def test_client_strings_are_echoed_cut_short(server):
    huge = "s" * 2**20
    short = "s" * 64 + "..."
    request = predict_request(SESSIONS, signature=huge)
    err = refused(server, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f'Serving signature name: "{short}" not found' in err.details()
    assert len(err.details()) < 1000
    err = refused(server, predict_request(SESSIONS, model=huge))
    assert err.code() == grpc.StatusCode.NOT_FOUND and f"Latest({short})" in err.details()
    request = predict_request(SESSIONS)
    request.inputs[huge].CopyFrom(request.inputs["k"])
    err = refused(server, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"input name(s) {short} not in the signature" in err.details()
    request = predict_request(SESSIONS)
    request.model_spec.version_label = huge
    err = refused(server, request)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == f"Unrecognized servable version label: {short}"
    # REST: a model name in the path, input names and values in the body.
    name = "m" * 60_000
    lines, received, _ = exchange(server, f"GET /v1/models/{name} HTTP/1.1\r\nHost: x\r\n"
                                          "\r\n".encode())
    assert lines == [b"HTTP/1.1 404 Not Found"]
    assert error_of(received) == f"Could not find any versions of model {'m' * 64}..."
    body = json.dumps({"inputs": {huge: [["i1"]], "k": 3}}).encode()
    lines, received, _ = exchange(server, post("/v1/models/shop:predict", body), 30)
    assert lines == [b"HTTP/1.1 400 Bad Request"] and len(received) < 1500
    assert f"input name(s) {short} not in the signature" in error_of(received)
    body = json.dumps({"instances": [{"item_ids": ["i1"], "k": huge},
                                     {"item_ids": ["i2"], "k": huge + "t"}]}).encode()
    lines, received, _ = exchange(server, post("/v1/models/shop:predict", body), 30)
    assert lines == [b"HTTP/1.1 400 Bad Request"] and len(received) < 1500
    assert stub_of(server).Predict(predict_request(SESSIONS), timeout=60).outputs


# -- 11: HTTP versions other than 1.x ----------------------------------------------------------
@pytest.mark.parametrize("data", [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                                  b"GET /v1/models/shop HTTP/9.9\r\nHost: x\r\n\r\n"])
def test_a_request_in_another_http_version_gets_a_status_line_and_a_close(server, data):
    lines, received, closed = exchange(server, data)
    assert lines == [b"HTTP/1.1 505 HTTP Version Not Supported"] and closed
    assert "Invalid HTTP version" in error_of(received)
    lines, _, closed = exchange(server, b"GET /v1/models/shop HTTP/1.x\r\nHost: x\r\n\r\n")
    assert lines == [b"HTTP/1.1 400 Bad Request"] and closed


# -- 4: connections trickling bytes ----------------------------------------------------------
class Trickler:
    """Holds up to `count` REST connections from 127.0.0.2, each sending a request head and
    then one body byte every half second; reconnects whatever the server closes."""

    def __init__(self, server, count: int = 256):
        self.server, self.count = server, count
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.opened = 0

    def _open(self):
        sock = socket.socket()
        sock.settimeout(2)
        try:
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", self.server.rest_port))
            sock.sendall(post("/v1/models/shop:predict", b"", length=100_000))
        except OSError:
            sock.close()
            return None
        self.opened += 1
        return sock

    def _run(self):
        socks = []
        while not self.stop.is_set():
            socks += [s for s in (self._open() for _ in range(self.count - len(socks))) if s]
            kept = []
            for sock in socks:
                try:
                    sock.send(b" ")
                    kept.append(sock)
                except OSError:
                    sock.close()
            socks = kept
            self.stop.wait(0.5)
        for sock in socks:
            sock.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def test_connections_trickling_from_one_address_leave_room_for_other_clients(server):
    body = json.dumps({"inputs": {"item_ids": [["i1", "i2"]], "k": 3}}).encode()
    with Trickler(server) as trickler:
        deadline = time.monotonic() + 30
        while trickler.opened < 256 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert trickler.opened >= 256
        answers = []
        for _ in range(8):  # a good client from 127.0.0.1, meanwhile
            started = time.perf_counter()
            lines, _, _ = exchange(server, post("/v1/models/shop:predict", body).replace(
                b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n"), 10)
            answers.append((lines, time.perf_counter() - started))
            time.sleep(0.25)
    assert [lines for lines, _ in answers] == [[b"HTTP/1.1 200 OK"]] * 8, answers
    assert max(took for _, took in answers) < 5.0


def test_the_server_still_answers(server):
    response = stub_of(server).Predict(predict_request(SESSIONS), timeout=60)
    assert np.asarray(tf.make_ndarray(response.outputs["item_ids"])).shape == (2, 5)


@pytest.mark.parametrize("chunk", [1 << 20, 7, 1])
def test_values_are_counted_as_the_json_parser_reads_them(monkeypatch, chunk):
    import random

    from tfrec.serving import rest

    def generate(depth=0):
        roll = rng.random()
        if depth < 4 and roll < 0.3:
            return [generate(depth + 1) for _ in range(rng.randint(0, 5))]
        if depth < 4 and roll < 0.45:
            return {rng.choice(["a", 'b"\\', ":,[", "\\\\"]) + str(i): generate(depth + 1)
                    for i in range(rng.randint(0, 4))}
        return rng.choice([1, -2.5e3, True, False, None, "x", 'q"u\\"o\\\\', ",:[]{}", "",
                           "\\", "é"])

    monkeypatch.setattr(rest, "_COUNT_CHUNK", chunk)  # a chunk may end anywhere
    rng = random.Random(chunk)
    for _ in range(300):
        value = generate()
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5,
                          indent=rng.choice([None, 1])).encode()
        n = count_json_values(value)
        assert not rest._too_many_values(text, n), text
        assert rest._too_many_values(text, n - 1), text
