"""REST predict bodies counted while they arrive (`rest._ValueCounter`), and what a client
is told when a request fails unexpectedly; against a server in this process."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import random
import re
import select
import shutil
import socket
import time
import tracemalloc
import types

import numpy as np
import pytest

from serving_helpers import count_json_values
from tfrec.serving import pacing, rest

ANSWER = 15.0  # seconds a "must answer" read may take on a loaded machine


# -- the counter: the same answer as the whole-text count, whatever parts it arrives in ------
def whole_text_count(raw: bytes, most: int, chunk: int) -> tuple[bool, int | None]:
    """The count as it was done on a whole body before bodies were counted on arrival
    (kept here as the reference the counter must agree with): (over?, where the count
    stopped once over, if before the end)."""
    bound = 0
    for start in range(0, len(raw), chunk):
        end = start + chunk
        bound += raw.count(b",", start, end) + raw.count(b"[", start, end) + raw.count(
            b":", start, end)
        if bound >= most:
            break
    else:
        return False, None
    data = np.frombuffer(raw, dtype=np.uint8)
    count, start, in_string, in_token = 0, 0, False, False
    while start < len(raw):
        end = min(len(raw), start + chunk)
        if end < len(raw):
            found = re.compile(rb"[^\\]").search(raw, end - 1)
            end = found.end() if found else len(raw)
        part = data[start:end]
        quotes = np.flatnonzero(part == ord('"'))
        if quotes.size and raw.find(b"\\", start, end) >= 0:
            backslash = np.zeros(part.size + 2, dtype=np.int8)
            backslash[1:-1] = part == ord("\\")
            edges = np.diff(backslash)
            runs, after = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            after = after[((after - runs) % 2 == 1) & (after < part.size)]
            quotes = np.setdiff1d(quotes, after[part[after] == ord('"')], assume_unique=True)
        toggle = np.zeros(part.size, dtype=np.uint8)
        toggle[quotes] = 1
        inside = np.bitwise_xor.accumulate(toggle).astype(bool) ^ in_string
        token = ~(rest._STRUCTURE[part] | inside | (part == ord('"')))
        starts = int(np.count_nonzero(token[1:] & ~token[:-1])) + bool(token[0] and
                                                                       not in_token)
        strings = quotes[1 if in_string else 0::2].size
        keys = int(np.count_nonzero((part == ord(":")) & ~inside))
        count += starts + strings - keys
        if count > most + 1:
            return True, end
        in_string, in_token = bool(inside[-1]), bool(token[-1])
        start = end
    return count > most, None


def bound(text: bytes) -> int:
    return text.count(b",") + text.count(b"[") + text.count(b":")


def json_texts(rng: random.Random, n: int) -> list[tuple[bytes, int]]:
    """(text, its values) for JSON texts of at most 100 bytes, heavy in what a split can
    fall into: strings, escaped quotes, runs of backslashes, keys before their colon (with
    white space between), bare tokens."""
    strings = ['', 'x', 'q"u\\"o\\\\', '\\', '\\\\', '\\\\\\"', '"', ',:[]{}', 'é', 'a b',
               '\\\\\\\\']

    def generate(depth=0):
        roll = rng.random()
        if depth < 4 and roll < 0.3:
            return [generate(depth + 1) for _ in range(rng.randint(0, 5))]
        if depth < 4 and roll < 0.45:
            return {rng.choice(strings) + str(i): generate(depth + 1)
                    for i in range(rng.randint(0, 4))}
        return rng.choice([1, -2.5e3, 123456789, True, False, None, *strings])

    texts = []
    while len(texts) < n:
        value = generate()
        separators = rng.choice([(",", ":"), (", ", ": "), (" ,", " : "), (",\n", "\t:")])
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5,
                          separators=separators).encode()
        if len(text) <= 100:
            texts.append((text, count_json_values(value)))
    return texts


def other_texts(rng: random.Random, n: int) -> list[bytes]:
    """Texts that are not JSON, from JSON's punctuation, backslashes and tokens: the counter
    must give the whole-text answer for these too."""
    alphabet = [b'"', b"\\", b"\\\\", b"\\\\\\", b":", b",", b"[", b"]", b"{", b"}", b" ",
                b"a", b"12", b'"k"', b'\\"']
    return [b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            for _ in range(n)]


def arrivals(text: bytes, rng: random.Random) -> list[list[int]]:
    """Ways a text may arrive, as the lengths read after each socket read: a byte at a time,
    in two parts split next to every quote, backslash and colon, and in random parts."""
    n = len(text)
    ways = [list(range(1, n + 1))]
    ways += [[split, n] for split in range(1, n) if text[split - 1:split + 1].strip(b",[]{}")]
    for _ in range(3):
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(1, 6)))) if n > 1 else []
        ways.append(cuts + [n])
    return ways


def fed(text: bytes, most: int, way: list[int]) -> tuple[int | None, bool]:
    """(the length read when refused on arrival, the answer at the end) for `text` arriving
    as `way`, into a buffer of its length whose unread bytes are zeros, as a body is read."""
    counter = rest._ValueCounter(most)
    buffer = bytearray(len(text))
    for end in way:
        buffer[:end] = text[:end]
        if end < len(text) and counter.update(buffer, end):
            return end, True
    buffer[:] = text
    return None, counter.finish(buffer)


@pytest.mark.parametrize("chunk,search", [(1, 0.5), (2, 0.5), (3, 0.5), (5, 0.5), (8, 0.5),
                                          (1 << 20, 0.5), (3, 0.0), (1 << 20, 0.0),
                                          (3, np.inf), (1 << 20, np.inf)])
def test_counted_on_arrival_as_the_whole_text_was_counted(monkeypatch, chunk, search):
    monkeypatch.setattr(rest, "_COUNT_CHUNK", chunk)  # a segment may end anywhere
    # Strings placed by a binary search per byte, by the running parity, or as it comes.
    monkeypatch.setattr(rest, "_SEARCH_SHARE", search)
    rng = random.Random(chunk)
    texts = json_texts(rng, 50) + [(text, None) for text in other_texts(rng, 30)] + [
        (b"", 0), (b"1", 1), (b'"\\\\\\"', 1), (b'{"a" :1}', 1), (b'["\\\\", "\\"", 1]', 3),
        (b"\\" * 9 + b'"x"', None), (b'{"\\\\\\"k" \t: ["\\\\\\\\", 2]}', 2)]
    checked = refused = 0
    for text, values in texts:
        # Around the count, and small limits that the cheap bound passes.
        limits = {0, 1, rng.randint(0, 30)}
        if values is not None:
            limits |= {m for m in range(values - 2, values + 1) if m >= 0}
        for most in sorted(limits):
            expected, stopped = whole_text_count(text, most, chunk)
            assert rest._too_many_values(text, most) == expected, (text, most)
            for way in arrivals(text, rng):
                # Refused at the first read past where the whole count stopped, once the
                # cheap bound of the part read has reached the limit too.
                known = next((end for end in way if stopped is not None
                              and stopped <= end < len(text) and bound(text[:end]) >= most),
                             None)
                assert fed(text, most, way) == (known, expected), (text, most, way)
                refused += known is not None
                checked += 1
    assert checked > 1000
    assert refused > 0 or chunk > 100  # some bodies were refused before their end


def test_a_body_over_the_limit_is_known_from_a_part_of_it():
    body = b'{"inputs": {"item_ids": [[' + b",".join([b'"a\\\\"'] * 600_000) + b']], "k": 5}}'
    counter = rest._ValueCounter(100_000)
    for end in range(0, len(body), 65536):  # socket reads of 64 KiB
        if counter.update(body, end):
            break
    assert 100_000 * 6 < end < 3 * (1 << 20)  # the first segment end over the limit
    assert rest._too_many_values(body, 100_000) and not rest._too_many_values(body, 600_001)


def test_a_long_run_of_backslashes_is_held_back_once():
    # A run arriving in many parts is looked at once in all, not once per part.
    body = b"[" + b"," * 200 + b'"' + b"\\" * (4 << 20) + b'"' + b',"x"' * 300 + b"]"
    counter = rest._ValueCounter(100)
    looked = []
    real = np.frombuffer

    def frombuffer(data, dtype=float, count=-1, offset=0):
        looked.append(count)
        return real(data, dtype=dtype, count=count, offset=offset)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rest.np, "frombuffer", frombuffer)
        for end in range(1, len(body), 4096):
            counter.update(body, end)
        answer = counter.finish(body)
    assert answer == whole_text_count(body, 100, rest._COUNT_CHUNK)[0]
    assert sum(looked) < 3 * len(body)


# -- a server in this process, serving a real export --------------------------------------
@pytest.fixture(scope="module")
def served(versions, tmp_path_factory):
    from tfrec.config import ServeConfig
    from tfrec.serving import server as serving

    tmp = tmp_path_factory.mktemp("rest-stream")
    base = tmp / "shop"
    base.mkdir()
    shutil.copytree(versions / "1", base / "1")
    config = tmp / "models.config"
    config.write_text('model_config_list { config { name: "shop" base_path: "%s" '
                      'model_platform: "tensorflow" } }\n' % base)
    with pytest.MonkeyPatch.context() as patch:
        # The process-wide interpreter settings are the server process's, not this one's.
        patch.setattr(serving, "_tune_memory", lambda: None)
        server = serving.ModelServer(ServeConfig(model_config_file=str(config), port=0,
                                                 rest_api_port=0))
    server.start()
    assert server.wait_first_loads(120) == []
    yield server
    server.stop(0)


def exchange(server, data: bytes) -> tuple[int, dict, bytes]:
    """(status, JSON body, everything received) of one request sent on its own connection."""
    with socket.create_connection(("127.0.0.1", server.rest.port), timeout=ANSWER) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), received


def post(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def send_until_answered(sock: socket.socket, data: memoryview) -> int:
    """Sends `data` while the server reads it, until it answers; the bytes sent."""
    sent = 0
    while sent < len(data):
        readable, writable, _ = select.select([sock], [sock], [], ANSWER)
        if readable:
            break
        assert writable, "the server neither read nor answered"
        try:
            sent += sock.send(data[sent:sent + 65536])
        except (BrokenPipeError, ConnectionResetError):
            break
    return sent


GOOD = json.dumps({"inputs": {"item_ids": [["i1", "i2", "i3"]], "k": 5}}).encode()


def test_an_unexpected_failure_is_500_without_its_text(served, monkeypatch, caplog):
    secret = "cannot open /srv/private/weights-7f3a.bin (token hunter2)"
    real_find = served.manager.find

    class Raising:
        """The real signature, failing when called."""

        def __init__(self, function):
            self.structured_input_signature = function.structured_input_signature
            self.structured_outputs = function.structured_outputs

        def __call__(self, **tensors):
            raise RuntimeError(secret)

    def find(*args, **kwargs):
        loaded = real_find(*args, **kwargs)
        signatures = {name: Raising(function)
                      for name, function in loaded.model.signatures.items()}
        return dataclasses.replace(loaded, model=types.SimpleNamespace(signatures=signatures))

    monkeypatch.setattr(served.manager, "find", find)
    with caplog.at_level(logging.ERROR, logger="tfrec.serving.rest"):
        status, body, received = exchange(served, post("/v1/models/shop:predict", GOOD))
    assert status == 500
    assert body == {"error": "internal error; the server log has the details"}
    assert b"hunter2" not in received and b"RuntimeError" not in received
    assert secret in caplog.text  # the log has it
    monkeypatch.undo()
    status, body, _ = exchange(served, post("/v1/models/shop:predict", GOOD))
    assert status == 200 and len(body["outputs"]["item_ids"][0]) == 5


def test_a_body_over_the_value_limit_is_refused_before_it_is_all_sent(served):
    # 10M strings in 30 MB, under the 32 MiB byte limit; the limit is passed after ~3 MB.
    body = b'{"inputs": {"item_ids": [[""' + b',""' * (10_000_000 - 1) + b']], "k": 5}}'
    limits = served.predictor.limits
    assert len(body) < served.rest.httpd.max_body_bytes
    data = memoryview(post("/v1/models/shop:predict", body))
    received = b""
    with socket.create_connection(("127.0.0.1", served.rest.port), timeout=ANSWER) as sock:
        sent = send_until_answered(sock, data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n"), received[:200]
    assert sent < len(data) - 10 * 2**20, sent  # the answer came with most of the body unsent
    assert "Connection: close" in received.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["error"] == (
        f"the body holds more than {limits.max_elements + limits.max_batch:,} values: over "
        f"the limit of {limits.max_elements:,} values per request (tfrec serve "
        "--max_request_elements), with one more per row allowed for a scalar input repeated "
        "in every row (--max_batch); it was not read in full, nor parsed")
    # The server still serves.
    status, answer, _ = exchange(served, post("/v1/models/shop:predict", GOOD))
    assert status == 200 and len(answer["outputs"]["item_ids"][0]) == 5


def test_a_body_refused_on_arrival_is_not_given_its_declared_length(served):
    # The body is grown as it arrives: refused after ~3 MB, it never takes 30 MB.
    body = b'{"inputs": {"item_ids": [[""' + b',""' * (10_000_000 - 1) + b']], "k": 5}}'
    data = memoryview(post("/v1/models/shop:predict", body))
    tracemalloc.start()
    try:
        with socket.create_connection(("127.0.0.1", served.rest.port), timeout=ANSWER) as sock:
            assert send_until_answered(sock, data) < len(data)
            assert sock.recv(65536).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 25e6, peak  # the declared length alone is 30 MB


def test_only_predict_bodies_are_counted_on_arrival(served):
    # Another path reads the body in full and answers as it always did.
    body = b'{"inputs": {"item_ids": [[""' + b',""' * 1_200_000 + b']], "k": 5}}'
    status, answer, _ = exchange(served, post("/v1/models/shop", body))
    assert status == 405 and answer["error"].startswith("status and metadata take GET")
    # A predict body just under the limit arrives in full and is parsed (the input it names
    # is refused by the checks that follow).
    limits = served.predictor.limits
    most = limits.max_elements + limits.max_batch
    body = b'{"inputs": {"item_ids": [[""' + b',""' * (most - 2) + b']], "k": 5}}'
    status, answer, _ = exchange(served, post("/v1/models/shop:predict", body))
    assert status == 400 and answer["error"].startswith("input 'item_ids': "), answer


def test_a_client_sending_on_after_its_refusal_is_held_unread_until_it_hangs_up(
        served, monkeypatch):
    # A client that replays refused bodies without reading the answers: past the drained
    # megabyte the server stops reading, so the client waits on its own send buffer (it is
    # not reset at once, free to send the next body). Its connection is let go at the
    # linger's end, or as soon as its hang-up arrives (here a reset: the client closes
    # with the answer unread; a FIN would wait behind the unsent bytes).
    monkeypatch.setattr(rest, "_LINGER_SECONDS", 8.0)
    body = b'{"inputs": {"item_ids": [[""' + b',""' * (10_000_000 - 1) + b']], "k": 5}}'
    data = memoryview(post("/v1/models/shop:predict", body))
    httpd = served.rest.httpd
    sock = socket.create_connection(("127.0.0.1", served.rest.port), timeout=ANSWER)
    mine = sock.getsockname()

    def held():
        # This connection, by its address (other tests' connections may come and go).
        for conn in list(httpd.connections):
            try:
                if conn.getpeername() == mine:
                    return True
            except OSError:  # closed meanwhile
                pass
        return False

    try:
        sent = send_until_answered(sock, data)
        assert sent < len(data)
        sock.settimeout(0.5)
        blocked = False
        while sent < len(data):
            try:
                sent += sock.send(data[sent:sent + 65536])
            except TimeoutError:
                blocked = True  # the server no longer reads
                break
        assert blocked, "the whole body went through"
        time.sleep(1.0)
        assert held()  # held, not closed
        # The answer is there (peeked: left unread, so the close below resets).
        assert sock.recv(65536, socket.MSG_PEEK).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        started = time.monotonic()
        sock.close()
        while held() and time.monotonic() - started < ANSWER:
            time.sleep(0.02)
        assert not held()
        assert time.monotonic() - started < 4.0  # at the hang-up, not at the linger's end
    finally:
        sock.close()


def test_error_answers_to_one_address_are_paced_past_a_burst(served, monkeypatch):
    # A client replaying refused requests gets `rate` answers a second (after a burst of
    # as many), however fast it sends; its good requests are never held.
    pace = served.rest.httpd.pace
    monkeypatch.setattr(pace, "rate", 10.0)
    monkeypatch.setattr(pace, "budget", {})
    bad = post("/v1/models/shop:predict", b'{"inputs": {"item_ids": [["i1"]], "k": "x"}}')
    times = []
    for _ in range(35):
        started = time.monotonic()
        status, answer, _ = exchange(served, bad)
        times.append(time.monotonic() - started)
        assert status == 400 and "k" in answer["error"]
    assert sum(times[:8]) < 1.0  # the burst: answered at once
    assert sum(times) > 2.2  # then 10 a second: 25 more answers take 2.5 s at least
    # In debt for the longest hold: a good request is not held, the next error answer is.
    pace.budget["127.0.0.1"] = (-10.0, time.monotonic())
    started = time.monotonic()
    status, answer, _ = exchange(served, post("/v1/models/shop:predict", GOOD))
    assert status == 200 and time.monotonic() - started < 0.9  # not the 1 s hold
    pace.budget["127.0.0.1"] = (-10.0, time.monotonic())
    started = time.monotonic()
    assert exchange(served, bad)[0] == 400
    assert pacing.MAX_DELAY - 0.1 < time.monotonic() - started < 10 * pacing.MAX_DELAY


def test_grpc_error_answers_are_paced_with_at_most_two_held(served, monkeypatch):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfrec.serving import server as serving

    pace = served.error_pace  # gRPC's
    monkeypatch.setattr(pace, "rate", 10.0)
    monkeypatch.setattr(pace, "budget", {})
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{served.port}"))
    bad = predict_pb2.PredictRequest()
    bad.model_spec.name = "no_such_model"

    def call():
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(bad, timeout=ANSWER)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        return time.monotonic() - started

    times = [call() for _ in range(35)]
    assert sum(times[:8]) < 1.0 and sum(times) > 2.2  # a burst, then 10 a second
    # At most two answers are held at once (the server's workers beyond its calls), so
    # good calls keep theirs: with five clients in debt, three are answered at once.
    pace.budget["127.0.0.1"] = (-10.0, time.monotonic())
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        waits = sorted(pool.map(lambda _: call(), range(5)))
    assert waits[2] < 0.5 and waits[-1] > pacing.MAX_DELAY - 0.3
    assert serving.HELD_ERRORS == 2


def test_the_error_pace_is_a_token_bucket_per_address():
    pace = pacing.ErrorPace(4.0)
    clock = 100.0
    assert [pace.delay("a", clock) for _ in range(4)] == [0.0] * 4  # a burst of `rate`
    assert [pace.delay("a", clock) for _ in range(3)] == [0.25, 0.5, 0.75]  # then 4 a second
    assert [pace.delay("a", clock) for _ in range(3)] == [1.0] * 3  # held at most MAX_DELAY
    assert pace.delay("b", clock) == 0.0  # per address
    clock += 1.5
    assert pace.delay("a", clock) == pytest.approx(0.0)  # the debt is capped: paid off in 1 s
    assert all(pacing.ErrorPace(0.0).delay("c") == 0.0 for _ in range(100))  # 0: no pacing
    pace.forget(clock + 0.4)
    assert set(pace.budget) == {"a", "b"}  # neither silent for 2 s yet
    pace.forget(clock + 0.6)
    assert set(pace.budget) == {"a"}  # "b" silent 2.1 s: refilled, dropped
    pace.forget(clock + 3.0)
    assert pace.budget == {}
    with pytest.raises(ValueError, match="rate"):
        pacing.ErrorPace(-1.0)
    assert pacing.peer_address("ipv4:127.0.0.1:50051") == "127.0.0.1"
    assert pacing.peer_address("ipv6:[::1]:50051") == "::1"
    assert pacing.peer_address("unix:/tmp/s") == "unix:/tmp/s"


def test_a_predict_runs_the_signatures_graph_directly(served):
    # The server's calls skip the signature's Python binding (predict.DirectCall; its
    # outputs are compared with the signature call's in test_two_stage_export.py).
    status, answer, _ = exchange(served, post("/v1/models/shop:predict", GOOD))
    assert status == 200 and len(answer["outputs"]["item_ids"][0]) == 5
    call = served.manager.find("shop", None, None).calls["serving_default"]
    assert call.direct is not None
    status, _, _ = exchange(served, post("/v1/models/shop:predict", GOOD))
    assert status == 200  # and the next call reuses it
    assert served.manager.find("shop", None, None).calls["serving_default"] is call
