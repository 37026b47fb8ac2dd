"""Soak/abuse bench: good gRPC traffic with and without hostile traffic beside it.

    python bench/abuse.py                          # saved_models/retail if present, else generated
    python bench/abuse.py --seconds 10 --json abuse.json
    python bench/abuse.py --model-dir saved_models/retail --seconds 20
    python bench/abuse.py --generated              # always build a small model from generated data

It starts a real `tfrec serve` process on free loopback ports (gRPC and REST)
serving the newest version in `--model-dir` (a folder of integer version
folders, as `make run` writes to saved_models/retail). With `--generated` (the
default when saved_models/retail is absent) it first trains a small model on
generated sessions and exports it (brute-force index) to a temporary folder.

Phase A (baseline): `--clients` threads (default 4) send good Predict requests
(serving_default, one session of 1-20 real item ids, k = 10) for `--seconds`.
Phase B: the same good clients for the same time while `--hostile-threads`
threads (default 2) replay hostile requests over and over (huge declared tensor
shapes, k out of range, wrong dtypes, unknown names, a 5,000-id session, and
malformed HTTP over raw sockets: oversize/negative/non-numeric Content-Length,
chunked bodies carrying a second request, stalled bodies, nested and ragged
JSON, 100k-deep JSON, unknown labels/versions), with 50 idle REST connections
held open for the whole phase. The hostile threads run in a process of their own
(--hostile-in-process: beside the good clients, whose interpreter they then share).

Phase C: for each heavy case alone (a 1 KB string declared [1998, 500], which
TensorFlow would fill to 1 GB; a 57 MB REST body of 12M strings; a 30 MB body of
10M strings, under the byte limit; lists of strings whose padding would make
1.5M values; a 1 MB signature name; an HTTP/2 preface; 128 connections from
another loopback address trickling a body a byte at a time), the same good clients
for `--case-seconds` while the hostile threads replay only that case; the
good requests' p99 over phase A's (the quiet baseline) and the server's RSS
growth over the case (the largest VmRSS sampled every 50 ms during it, and
after it, against before it) are reported for each. These cases are also
replayed in phase B.

It prints, as markdown tables: the good requests' count, errors, p50 and p99
for both phases; the server's RSS (VmRSS from /proc) at start, after A and
after B; each hostile case's outcomes (gRPC status code, or HTTP status codes
and whether the server closed the connection); and PASS/FAIL against:
p99 under hostile traffic at most 2x the baseline p99, RSS growth at most
200 MB (after B, and during and after each case of C), no good-request
errors, and the server alive and answering after B and C.
The server is then stopped with SIGTERM and its exit code reported. The exit
status is non-zero if any criterion fails. Everything is bounded: about
2 x seconds + 6 x case-seconds plus startup (and model building with --generated); every client
call and socket has a short timeout.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tfrec  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import grpc  # noqa: E402
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from tfrec.exporter.layout import ModelFolder, VersionFolder  # noqa: E402
from tfrec.utils import read_id_lines  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO / "saved_models" / "retail"
GOOD_TIMEOUT = 5.0      # s, one good Predict
HOSTILE_TIMEOUT = 3.0   # s, one hostile gRPC call or raw HTTP exchange
STALL_SECONDS = 2.0     # s, the client holds a stalled body this long, then closes
IDLE_CONNECTIONS = 50
TRICKLERS = 128         # connections one trickling case holds (from another address)
P99_RATIO_LIMIT = 2.0
RSS_GROWTH_LIMIT_MB = 200.0


# ---------------------------------------------------------------- model and server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_generated_model(work: Path) -> Path:
    """A small trained and exported model from generated data (as tests/conftest.py's run_dir)."""
    from tfrec.data.synthetic import event_files_settings, write_event_files
    from tfrec.exporter import export
    from tfrec.index import IndexConfig
    from tfrec.run import load_run_config
    from tfrec.training import train

    data = work / "data"
    data.mkdir(parents=True)
    files = write_event_files(data, 8_000, 150, num_users=800, num_clusters=6, num_cold=5,
                              seed=4)
    config = load_run_config(None, [
        *event_files_settings(*files), "model.embedding_dim=16", "model.objective=retrieval",
        "model.text.token_dim=8", "model.text.filters=8", "train.epochs=1",
        "train.split_fraction=0.15", "train.retrieval_batch_size=128"])
    train(config, work / "run", verbose=0)
    model_dir = work / "generated"
    export(work / "run", model_dir, IndexConfig(kind="brute_force", max_k=100))
    return model_dir


def latest_version(model_dir: Path) -> Path:
    versions = ModelFolder(model_dir).versions()
    if not versions:
        raise SystemExit(f"abuse.py: no integer version folders in {model_dir}")
    return ModelFolder(model_dir).version(versions[-1]).path


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """`python -m tfrec serve` on free loopback ports, its output in a log file."""

    def __init__(self, model_dir: Path, name: str, work: Path, startup_timeout: float):
        self.name = name
        self.port, self.rest_port = free_port(), free_port()
        config = work / "models.config"
        config.write_text('model_config_list { config { name: "%s" base_path: "%s" '
                          'model_platform: "tensorflow" } }\n' % (name, model_dir.resolve()))
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        self.log_path = work / "server.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tfrec", "serve", "--model_config_file", str(config),
             "--port", str(self.port), "--rest_api_port", str(self.rest_port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        try:
            self._wait_available(startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_available(self, timeout: float) -> None:
        deadline = time.time() + timeout
        stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.name
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"abuse.py: the server exited ({self.proc.returncode}) "
                                 f"during startup:\n{self.log_tail()}")
            try:
                response = stub.GetModelStatus(request, timeout=2)
                names = get_model_status_pb2.ModelVersionStatus.State.Name
                if any(names(s.state) == "AVAILABLE" for s in response.model_version_status):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"abuse.py: no AVAILABLE version after {timeout:.0f} s:\n"
                         f"{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self, field: str = "VmRSS") -> float | None:
        return rss_mb(self.proc.pid, field)

    def stop(self, timeout: float = 30.0) -> tuple[int | None, str]:
        """SIGTERM, wait; SIGKILL after `timeout`. (exit code, how it ended)."""
        self.channel.close()
        how = "exited before SIGTERM"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
                how = "SIGTERM"
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                how = f"SIGKILL (no exit {timeout:.0f} s after SIGTERM)"
        self.log.close()
        return self.proc.returncode, how


# ---------------------------------------------------------------- requests

def string_tensor(values, shape) -> tensor_pb2.TensorProto:
    """A DT_STRING TensorProto with the given (declared) shape and values, unchecked."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    proto.string_val.extend(v.encode() if isinstance(v, str) else v for v in values)
    return proto


def int_tensor(values, shape, dtype=types_pb2.DT_INT32) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    if dtype == types_pb2.DT_INT64:
        proto.int64_val.extend(values)
    else:
        proto.int_val.extend(values)
    return proto


def predict_request(item_ids: tensor_pb2.TensorProto, k: int = 10, model: str = "",
                    signature: str = "serving_default", version: int | None = None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["item_ids"].CopyFrom(item_ids)
    request.inputs["k"].CopyFrom(int_tensor([k], []))
    return request


def session_request(ids: list[str], model: str, k: int = 10):
    return predict_request(string_tensor(ids, [1, len(ids)]), k, model)


# ---------------------------------------------------------------- raw HTTP

def _responses(buffer: bytes, bodies: list | None = None) -> tuple[list[int], bool]:
    """(status codes of the complete responses in buffer, is the last one incomplete?);
    their bodies are appended to `bodies` if given."""
    codes = []
    while buffer:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return codes, True
        head = buffer[:head_end].decode("latin-1").split("\r\n")
        try:
            code = int(head[0].split()[1])
        except (IndexError, ValueError):
            return codes, True
        length = 0
        for line in head[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    pass
        if len(buffer) < head_end + 4 + length:
            return codes, True
        codes.append(code)
        if bodies is not None:
            bodies.append(buffer[head_end + 4:head_end + 4 + length])
        buffer = buffer[head_end + 4 + length:]
    return codes, False


def http_exchange(port: int, data: bytes, wait: float = HOSTILE_TIMEOUT,
                  linger: float = 0.3) -> tuple[str, str]:
    """Send raw bytes to 127.0.0.1:port; read responses for up to `wait` s.

    After the first complete response, waits `linger` s more for further
    responses or the server closing. Returns an outcome such as "400 open",
    "400+400 closed", "none held" (no response, the client gave up after
    `wait` s) or "none closed" (the server closed without answering), and the
    first response's body (cut short) as a detail.
    """
    buffer = b""
    end = "held"
    sock = None
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            end = "reset"
        except socket.timeout:
            pass  # the server stopped reading (e.g. 413 before a big body): read its answer
        deadline = time.monotonic() + wait
        while end == "held":
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                end = "reset"
                break
            if not chunk:
                end = "closed"
                break
            buffer += chunk
            codes, partial = _responses(buffer)
            if codes and not partial:
                deadline = min(deadline, time.monotonic() + linger)
    except ConnectionRefusedError:
        return "refused", ""
    except OSError as err:
        return f"error {type(err).__name__}", str(err)
    finally:
        if sock is not None:
            sock.close()
    bodies = []
    codes, _ = _responses(buffer, bodies)
    if end == "held" and codes:
        end = "open"
    detail = bodies[0].decode("utf-8", "replace") if bodies else ""
    return f"{'+'.join(map(str, codes)) or 'none'} {end}", detail


def post(path: str, body: bytes, extra_headers: str = "", content_length=None) -> bytes:
    length = len(body) if content_length is None else content_length
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra_headers}\r\n")
    return head.encode() + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


# ---------------------------------------------------------------- hostile cases

def heavy_cases(model: str) -> list:
    """The cases built to make one request cost the server much (phase C, and in B):
    [(name, callable(grpc_stub, rest_port) -> (outcome, detail))]."""
    cases = []
    predict = f"/v1/models/{model}:predict"
    request = predict_request(string_tensor([b"x" * 1000], [1998, 500]), 10, model)
    cases.append((f"grpc 1 KB string declared [1998, 500] ({request.ByteSize():,} bytes, "
                  "1 GB filled)", _grpc_run(request)))
    body = b'{"inputs": {"item_ids": [[' + b",".join([b'"a"'] * 12_000_000) + b']], "k": 5}}'
    # The requests' bytes are built once: building 48 MB per call would cost the bench's
    # own interpreter, and its good clients with it.
    data = post(predict, body)
    cases.append((f"rest body of 12M strings ({len(body) / 1e6:.0f} MB)",
                  lambda _stub, port: http_exchange(port, data)))
    body30 = b'{"inputs": {"item_ids": [[' + b",".join([b'""'] * 10_000_000) + b']], "k": 5}}'
    data30 = post(predict, body30)
    cases.append((f"rest body of 10M strings ({len(body30) / 1e6:.0f} MB, under the byte "
                  "limit)", lambda _stub, port: http_exchange(port, data30)))
    rows = post(predict, json.dumps({"inputs": {"item_ids": [[""]] * 3000 + [[""] * 500],
                                                "k": 5}}).encode())
    cases.append(("rest string lists padded to 3,001 x 500",
                  lambda _stub, port: http_exchange(port, rows)))
    request = predict_request(string_tensor([b"i"], [1, 1]), 10, model,
                              signature="s" * 2**20)
    cases.append(("grpc 1 MB signature name", _grpc_run(request)))
    cases.append(("rest HTTP/2 preface (PRI * HTTP/2.0)",
                  lambda _stub, port: http_exchange(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")))
    head = post(predict, b"", content_length=100_000)
    cases.append((f"rest {TRICKLERS} connections from 127.0.0.2 trickling a body",
                  lambda _stub, port: trickle(port, head)))
    return cases


def trickle(port: int, head: bytes, count: int = TRICKLERS, most: float = 20.0,
            source: str = "127.0.0.2") -> tuple[str, str]:
    """`count` connections from `source` (another loopback address: the good clients'
    is 127.0.0.1), each sending `head` and then a byte every 0.5 s until the server cuts it
    off (or `most` s). Outcome: how many were refused at once (503), cut off, and when."""
    socks, refused, failed = [], 0, 0
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(2.0)
        try:
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(head)
            sock.setblocking(False)  # (with a timeout, recv waits whatever its flags)
            socks.append(sock)
        except OSError:
            sock.close()
            failed += 1
    start = time.monotonic()
    time.sleep(0.3)
    live, cut = [], []
    for sock in socks:
        try:
            data = sock.recv(65536)
            refused += data.startswith(b"HTTP/1.1 503")
            sock.close()
        except BlockingIOError:
            live.append(sock)
        except OSError:
            sock.close()
            cut.append(0.0)
    while live and time.monotonic() - start < most:
        for sock in list(live):
            try:
                sock.send(b" ")
                sock.recv(65536)  # an answer, or EOF: cut off
                raise ConnectionResetError
            except BlockingIOError:
                continue
            except OSError:
                live.remove(sock)
                sock.close()
                cut.append(time.monotonic() - start)
        time.sleep(0.5)
    for sock in live:
        sock.close()
    outcome = f"{refused} refused, {len(cut)} cut, {len(live)} held"
    detail = (f"cut after {min(cut):.1f}-{max(cut):.1f} s" if cut else "") + (
        f"; {failed} could not connect" if failed else "")
    return outcome, detail


def _grpc_run(request):
    def run(stub, _port):
        try:
            response = stub.Predict(request, timeout=HOSTILE_TIMEOUT)
            return "OK", ", ".join(f"{k} {[d.size for d in v.tensor_shape.dim]}"
                                   for k, v in sorted(response.outputs.items()))
        except grpc.RpcError as err:
            return err.code().name, err.details() or ""
    return run


def hostile_cases(model: str, version: int, ids: list[str], rng: random.Random):
    """[(name, callable(grpc_stub, rest_port) -> (outcome, detail))], in replay order."""
    cases = []

    def grpc_case(name, request):
        cases.append((name, _grpc_run(request)))

    def http_case(name, data, **kwargs):
        cases.append((name, lambda _stub, port: http_exchange(port, data, **kwargs)))

    one = [ids[0]]
    for size in (5_000_000, 1_000_000, 2**40):
        grpc_case(f"grpc item_ids shape [1, {size:_}], 1 value",
                  predict_request(string_tensor(one, [1, size]), 10, model))
    for k in (10**6, 0, -1):
        grpc_case(f"grpc k = {k:_}", session_request(ids[:3], model, k))
    grpc_case("grpc empty batch, shape [0, 3]",
              predict_request(string_tensor([], [0, 3]), 10, model))
    grpc_case("grpc int64 item_ids",
              predict_request(int_tensor([1, 2, 3], [1, 3], types_pb2.DT_INT64), 10, model))
    grpc_case("grpc unknown signature",
              predict_request(string_tensor(ids[:3], [1, 3]), 10, model, signature="nope"))
    grpc_case("grpc unknown model",
              predict_request(string_tensor(ids[:3], [1, 3]), 10, "no_such_model"))
    grpc_case("grpc unknown version",
              predict_request(string_tensor(ids[:3], [1, 3]), 10, model, version=987654))
    wide = [rng.choice(ids) for _ in range(5000)]
    grpc_case("grpc session of 5,000 real ids", session_request(wide, model))

    predict = f"/v1/models/{model}:predict"
    three = json.dumps(ids[:3])
    http_case('rest "k": 4294967301 (2**32 + 5)', post(predict, (
        '{"instances": [{"item_ids": %s, "k": 4294967301}]}' % three).encode()))
    http_case("rest Content-Length 64 MB + 1, small body",
              post(predict, b'{"instances": []}', content_length=64 * 2**20 + 1))
    smuggled = (f"GET /v1/models/{model}/versions/{version} HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\n\r\n").encode()
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    http_case("rest chunked body holding a 2nd request",
              f"POST {predict} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              f"Transfer-Encoding: chunked\r\n\r\n".encode() + chunk, linger=1.0)
    te_cl = b"0\r\n\r\n" + smuggled
    http_case("rest chunked + Content-Length (CL.TE)",
              post(predict, te_cl, "Transfer-Encoding: chunked\r\n"), linger=1.0)
    http_case("rest Content-Length: -1", post(predict, b'{"instances": []}',
                                              content_length=-1))
    http_case("rest Content-Length: abc", post(predict, b'{"instances": []}',
                                               content_length="abc"))
    body = ('{"instances": [{"item_ids": %s, "k": 5}]}' % three).encode()
    http_case(f"rest body short of Content-Length (held {STALL_SECONDS:.0f} s)",
              post(predict, body[:10], content_length=len(body)), wait=STALL_SECONDS)
    http_case("rest nested object item_ids",
              post(predict, b'{"instances": [{"item_ids": {"a": 1}, "k": 5}]}'))
    http_case("rest ragged numeric lists",
              post(predict, b'{"inputs": {"item_ids": [[1, 2], [3, [4, 5]]], "k": 5}}'))
    depth = 100_000
    http_case(f"rest {depth:_}-deep JSON [[[...]]]",
              post(predict, b"[" * depth + b"]" * depth))
    http_case("rest GET labels/canary", get(f"/v1/models/{model}/labels/canary"))
    http_case("rest GET versions/0", get(f"/v1/models/{model}/versions/0"))
    return cases


class Tally:
    """case -> Counter of outcomes, the longest call and each outcome's first detail
    (error message or response body), shared by the hostile threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.outcomes = collections.defaultdict(collections.Counter)
        self.slowest = collections.defaultdict(float)
        self.details = collections.defaultdict(dict)
        self.order = []

    def add(self, case: str, outcome: str, detail: str, seconds: float) -> None:
        with self.lock:
            if case not in self.outcomes:
                self.order.append(case)
            self.outcomes[case][outcome] += 1
            self.details[case].setdefault(outcome, " ".join(detail.split())[:160])
            self.slowest[case] = max(self.slowest[case], seconds)


def hostile_worker(cases, offset: int, target: str, rest_port: int, stop: threading.Event,
                   tally: Tally) -> None:
    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        i = offset
        while not stop.is_set():
            name, run = cases[i % len(cases)]
            i += 1
            start = time.perf_counter()
            try:
                outcome, detail = run(stub, rest_port)
            except Exception as err:  # a bench bug or an unexpected client error: record it
                outcome, detail = f"client {type(err).__name__}", str(err)
            tally.add(name, outcome, detail, time.perf_counter() - start)
    finally:
        channel.close()


def hostile_child(spec: dict) -> None:
    """The hostile threads in a process of their own (`--hostile-child`): they replay the
    cases `spec` names until a line arrives on stdin, then print their tally as JSON. Apart
    from the good clients, their Python work (building, sending, reading) does not make
    the good clients wait for this bench's interpreter: what is measured is the server."""
    model_dir = Path(spec["model_dir"])
    ids = read_id_lines(VersionFolder(model_dir).item_ids)
    heavy = heavy_cases(spec["name"])
    if spec["heavy"] is None:
        cases = hostile_cases(spec["name"], spec["version"], ids, random.Random(0)) + heavy
    else:
        cases = [heavy[spec["heavy"]]]
    stop, tally = threading.Event(), Tally()
    threads = spec["threads"]
    step = max(1, len(cases) // max(1, threads))
    workers = [threading.Thread(target=hostile_worker, daemon=True,
                                args=(cases, i * step, spec["target"], spec["rest_port"], stop,
                                      tally)) for i in range(threads)]
    print("ready", flush=True)
    sys.stdin.readline()  # start
    for t in workers:
        t.start()
    sys.stdin.readline()  # stop
    stop.set()
    for t in workers:
        t.join(HOSTILE_TIMEOUT + STALL_SECONDS + 5)
    print(json.dumps({"order": tally.order, "outcomes": tally.outcomes,
                      "slowest": tally.slowest, "details": tally.details}), flush=True)


class HostileProcess:
    """`hostile_child` as a subprocess: `start()`, then `stop()` -> a Tally."""

    def __init__(self, spec: dict):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                      "--hostile-child", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = "-"
        while line and line.strip() != "ready":
            line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"the hostile process did not start: {line!r}")

    def start(self) -> None:
        self.proc.stdin.write("start\n")
        self.proc.stdin.flush()

    def stop(self) -> Tally:
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        out, _ = self.proc.communicate(timeout=HOSTILE_TIMEOUT + STALL_SECONDS + 60)
        found = json.loads(out.strip().splitlines()[-1])
        tally = Tally()
        tally.order = found["order"]
        for case in tally.order:
            tally.outcomes[case] = collections.Counter(found["outcomes"][case])
            tally.slowest[case] = found["slowest"][case]
            tally.details[case] = found["details"][case]
        return tally


def idle_connections(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2.0))
        except OSError:
            pass
    return socks


def idle_outcomes(socks: list[socket.socket]) -> collections.Counter:
    """Whether the server kept each idle connection open to the end of the phase."""
    outcomes = collections.Counter()
    for sock in socks:
        try:
            sock.setblocking(False)
            data = sock.recv(65536)
            codes, _ = _responses(data)
            outcomes["closed by server" if not data else
                     f"{'+'.join(map(str, codes)) or 'data'} from server"] += 1
        except BlockingIOError:
            outcomes["open at end"] += 1
        except ConnectionResetError:
            outcomes["reset by server"] += 1
        except OSError as err:
            outcomes[f"error {type(err).__name__}"] += 1
        finally:
            sock.close()
    return outcomes


# ---------------------------------------------------------------- good clients

def good_worker(target: str, model: str, ids: list[str], seed: int, stop: threading.Event,
                latencies: list, errors: collections.Counter, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    mine, bad = [], collections.Counter()
    try:
        while not stop.is_set():
            request = session_request([rng.choice(ids) for _ in range(rng.randint(1, 20))],
                                      model)
            start = time.perf_counter()
            try:
                response = stub.Predict(request, timeout=GOOD_TIMEOUT)
                if not response.outputs:
                    bad["no outputs"] += 1
                    continue
                mine.append(time.perf_counter() - start)
            except grpc.RpcError as err:
                bad[err.code().name] += 1
    finally:
        channel.close()
        with lock:
            latencies.extend(mine)
            errors.update(bad)


def run_phase(server: Server, ids: list[str], seconds: float, clients: int,
              hostile=None, hostile_threads: int = 0, seed: int = 0,
              spec: dict | None = None) -> dict:
    """Good clients for `seconds`, beside `hostile` cases replayed by `hostile_threads`
    threads: in this process, or with `spec` (see `hostile_child`) in a process of their
    own."""
    stop = threading.Event()
    latencies, errors, lock = [], collections.Counter(), threading.Lock()
    threads = [threading.Thread(target=good_worker, daemon=True,
                                args=(server.target, server.name, ids, seed + i, stop,
                                      latencies, errors, lock)) for i in range(clients)]
    tally, socks, child = Tally(), [], None
    if hostile:
        socks = idle_connections(server.rest_port, IDLE_CONNECTIONS)
        if spec is not None:
            child = HostileProcess({**spec, "threads": hostile_threads})
        else:
            step = max(1, len(hostile) // max(1, hostile_threads))
            threads += [threading.Thread(target=hostile_worker, daemon=True,
                                         args=(hostile, i * step, server.target,
                                               server.rest_port, stop, tally))
                        for i in range(hostile_threads)]
    start = time.perf_counter()
    if child is not None:
        child.start()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    if child is not None:
        tally = child.stop()
    join_deadline = time.monotonic() + max(GOOD_TIMEOUT, HOSTILE_TIMEOUT) + 5
    stuck = 0
    for t in threads:
        t.join(max(0.0, join_deadline - time.monotonic()))
        stuck += t.is_alive()
    elapsed = time.perf_counter() - start
    result = summarize(latencies, errors, elapsed)
    result["stuck_threads"] = stuck
    if hostile:
        idle = idle_outcomes(socks)
        tally.order.append(f"rest {IDLE_CONNECTIONS} idle connections, held for the phase")
        tally.outcomes[tally.order[-1]] = idle
        tally.slowest[tally.order[-1]] = time.perf_counter() - start
        result["hostile"] = [{"case": c, "calls": sum(tally.outcomes[c].values()),
                              "slowest_s": round(tally.slowest[c], 2),
                              "outcomes": dict(tally.outcomes[c].most_common()),
                              "details": tally.details.get(c, {})}
                             for c in tally.order]
    return result


class RssSampler:
    """The largest VmRSS of `pid` sampled every 50 ms while the `with` block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while True:
            value = rss_mb(self.pid)
            if value is not None:
                self.peak = value if self.peak is None else max(self.peak, value)
            if self._stop.wait(0.05):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def summarize(latencies: list, errors: collections.Counter, elapsed: float) -> dict:
    ms = np.asarray(latencies) * 1000
    return {"requests": int(len(ms) + sum(errors.values())), "ok": int(len(ms)),
            "errors": int(sum(errors.values())), "error_codes": dict(errors),
            "seconds": round(elapsed, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
            "max_ms": round(float(ms.max()), 2) if len(ms) else None}


def final_check(server: Server, ids: list[str]) -> str:
    """'answering' if the server is alive and answers a good Predict within 10 s."""
    if not server.alive():
        return f"exited ({server.proc.returncode})"
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    try:
        stub.Predict(session_request(ids[:3], server.name), timeout=10)
        return "answering"
    except grpc.RpcError as err:
        return f"alive, Predict {err.code().name}"


# ---------------------------------------------------------------- report

def table(header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in header]] + [["-" if c is None else str(c) for c in r]
                                          for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in cells[1:]])


def fmt(value, digits=1):
    return None if value is None else f"{value:,.{digits}f}"


def case_pairs(server: Server, ids: list[str], spec: dict, args) -> None:
    """`--pairs`: the good clients' p99 alone and beside one heavy case, pair by pair."""
    heavy = heavy_cases(spec["name"])
    index = next((i for i, case in enumerate(heavy) if case[0].startswith(args.case)), None)
    if index is None:
        raise SystemExit(f"no heavy case starts with {args.case!r}: "
                         f"{', '.join(case[0] for case in heavy)}")

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    print(f"{heavy[index][0]}: {args.pairs} pairs of {args.case_seconds:g} s phases, "
          f"{args.clients} good clients")
    print(f"{'pair':>4} {'quiet p99 ms':>12} {'beside p99 ms':>13} {'ratio':>6} "
          f"{'hostile calls':>13} {'server CPU s quiet':>18} {'beside':>7}  outcomes")
    for pair in range(args.pairs):
        start = cpu_seconds()
        quiet = run_phase(server, ids, args.case_seconds, args.clients, seed=1 + pair)
        middle = cpu_seconds()
        case = run_phase(server, ids, args.case_seconds, args.clients, [heavy[index]],
                         args.hostile_threads, seed=201 + pair, spec={**spec, "heavy": index})
        end = cpu_seconds()
        calls = case["hostile"][0]
        ratio = case["p99_ms"] / quiet["p99_ms"] if quiet["p99_ms"] else float("nan")
        print(f"{pair + 1:>4} {quiet['p99_ms']:12.1f} {case['p99_ms']:13.1f} {ratio:6.2f} "
              f"{calls['calls']:13d} {middle - start:18.2f} {end - middle:7.2f}  "
              f"{dict(calls['outcomes'])}", flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--hostile-child"]:
        hostile_child(json.loads(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="folder of integer version folders (default saved_models/retail "
                             "if it exists, else --generated)")
    parser.add_argument("--generated", action="store_true",
                        help="train and export a small model from generated data")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=4, help="good client threads")
    parser.add_argument("--hostile-threads", type=int, default=2)
    parser.add_argument("--case-seconds", type=float, default=8.0,
                        help="length of each heavy case's phase (C); 0 skips phase C")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON "
                                                       "('-' for stdout)")
    parser.add_argument("--hostile-in-process", action="store_true",
                        help="run the hostile threads in this process, beside the good "
                             "clients (their Python work then delays the good clients too); "
                             "by default they run in a process of their own")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (server log, generated model)")
    parser.add_argument("--pairs", type=int, default=0, metavar="N",
                        help="only N pairs of phases for one heavy case (--case): the good "
                             "clients alone, then beside the case, each --case-seconds long, "
                             "with the server's CPU time in each")
    parser.add_argument("--case", default="rest body of 10M",
                        help="with --pairs: the heavy case whose name starts so")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="tfrec-abuse-"))
    server = None
    try:
        if args.model_dir is None and not args.generated:
            if ModelFolder(DEFAULT_MODEL_DIR).versions():
                args.model_dir = DEFAULT_MODEL_DIR
            else:
                args.generated = True
        if args.generated:
            print(f"model: generated (saved_models/retail absent or --generated); building "
                  f"in {work} ...", flush=True)
            tb = time.perf_counter()
            model_dir = build_generated_model(work)
            print(f"model: built in {time.perf_counter() - tb:.0f} s", flush=True)
        else:
            model_dir = args.model_dir
        version_dir = latest_version(model_dir)
        ids = read_id_lines(VersionFolder(version_dir).item_ids)
        name = "generated" if args.generated else model_dir.resolve().name
        print(f"model: {model_dir} version {version_dir.name} ({len(ids):,} item ids), "
              f"served as {name!r}", flush=True)

        ts = time.perf_counter()
        server = Server(model_dir, name, work, args.startup_timeout)
        startup = time.perf_counter() - ts
        print(f"server: pid {server.proc.pid}, gRPC {server.port}, REST {server.rest_port}, "
              f"AVAILABLE after {startup:.1f} s", flush=True)
        warm = run_phase(server, ids, 1.0, 1)
        if args.pairs:
            spec = {"model_dir": str(version_dir), "name": name,
                    "version": int(version_dir.name), "target": server.target,
                    "rest_port": server.rest_port}
            case_pairs(server, ids, spec, args)
            return 0
        rss = {"start": server.rss()}
        print(f"phase A: {args.clients} good clients, {args.seconds:.0f} s ...", flush=True)
        phase_a = run_phase(server, ids, args.seconds, args.clients, seed=1)
        rss["after_a"] = server.rss()
        heavy = heavy_cases(name)
        cases = hostile_cases(name, int(version_dir.name), ids, random.Random(0)) + heavy
        print(f"phase B: {args.clients} good clients + {args.hostile_threads} hostile threads "
              f"({len(cases)} cases) + {IDLE_CONNECTIONS} idle connections, "
              f"{args.seconds:.0f} s ...", flush=True)
        spec = None if args.hostile_in_process else {
            "model_dir": str(version_dir), "name": name, "version": int(version_dir.name),
            "target": server.target, "rest_port": server.rest_port, "heavy": None}
        phase_b = run_phase(server, ids, args.seconds, args.clients, cases,
                            args.hostile_threads, seed=101, spec=spec)
        rss["after_b"] = server.rss()
        phase_c = []
        for i, case in enumerate(heavy if args.case_seconds > 0 else []):
            print(f"phase C: {case[0]}, {args.case_seconds:.0f} s ...", flush=True)
            before = server.rss()
            with RssSampler(server.proc.pid) as sampler:
                result = run_phase(server, ids, args.case_seconds, args.clients, [case],
                                   args.hostile_threads, seed=201 + i,
                                   spec=spec and {**spec, "heavy": i})
            after = server.rss()
            result.update(case=case[0], rss_before=before, rss_after=after,
                          rss_peak=sampler.peak,
                          p99_ratio=(result["p99_ms"] / phase_a["p99_ms"]
                                     if result["p99_ms"] and phase_a["p99_ms"] else None),
                          rss_growth=(max(sampler.peak or after, after) - before
                                      if before is not None and after is not None else None))
            phase_c.append(result)
        rss["peak"] = server.rss("VmHWM")
        state = final_check(server, ids)
        exit_code, how = server.stop()
        server = None
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    ratio = (phase_b["p99_ms"] / phase_a["p99_ms"]
             if phase_a["p99_ms"] and phase_b["p99_ms"] else None)
    growth = (rss["after_b"] - rss["start"]
              if rss["after_b"] is not None and rss["start"] is not None else None)
    errors = phase_a["errors"] + phase_b["errors"] + sum(c["errors"] for c in phase_c)
    worst_ratio = max((c["p99_ratio"] for c in phase_c if c["p99_ratio"] is not None),
                      default=None)
    worst_growth = max((c["rss_growth"] for c in phase_c if c["rss_growth"] is not None),
                       default=None)
    criteria = [
        ("good p99, B / A", ratio, f"<= {P99_RATIO_LIMIT:g}",
         ratio is not None and ratio <= P99_RATIO_LIMIT),
        ("server RSS growth, MB", growth, f"<= {RSS_GROWTH_LIMIT_MB:g}",
         growth is not None and growth <= RSS_GROWTH_LIMIT_MB),
        ("good-request errors", errors, "0", errors == 0),
        ("server after B and C", state, "answering", state == "answering"),
    ]
    if phase_c:
        criteria[2:2] = [
            ("worst heavy case: good p99, C / A", worst_ratio, f"<= {P99_RATIO_LIMIT:g}",
             worst_ratio is not None and worst_ratio <= P99_RATIO_LIMIT),
            ("worst heavy case: RSS growth, MB", worst_growth, f"<= {RSS_GROWTH_LIMIT_MB:g}",
             worst_growth is not None and worst_growth <= RSS_GROWTH_LIMIT_MB)]
    passed = all(c[3] for c in criteria)

    print()
    print("Good requests (gRPC Predict, serving_default, 1-20 real ids, k = 10)")
    print()
    rows = []
    for label, phase in (("A baseline", phase_a), ("B hostile", phase_b)):
        errs = ", ".join(f"{k} {v}" for k, v in phase["error_codes"].items())
        rows.append([label, f"{phase['requests']:,}", phase["errors"] if not errs
                     else f"{phase['errors']} ({errs})",
                     f"{phase['ok'] / phase['seconds']:,.0f}", fmt(phase["p50_ms"]),
                     fmt(phase["p99_ms"]), fmt(phase["max_ms"])])
    print(table(["phase", "requests", "errors", "ok/s", "p50 ms", "p99 ms", "max ms"], rows))
    print()
    print(f"p99 B / A: {fmt(ratio, 2)}")
    print()
    print("Server memory, MB")
    print()
    print(table(["start", "after A", "after B", "peak (VmHWM)"],
                [[fmt(rss["start"]), fmt(rss["after_a"]), fmt(rss["after_b"]),
                  fmt(rss["peak"])]]))
    print()
    print(f"Hostile cases ({args.hostile_threads} threads, replayed in a loop during B; gRPC: "
          f"status code; REST: HTTP codes and whether the server closed the connection; "
          f"'none held' = no answer, client gave up)")
    print()
    print(table(["case", "calls", "slowest s", "outcomes"],
                [[h["case"], h["calls"], f"{h['slowest_s']:.2f}",
                  "; ".join(f"{o} x{n}" for o, n in h["outcomes"].items())]
                 for h in phase_b["hostile"]]))
    print()
    print("First message per case and outcome (gRPC details, HTTP body, or OK output shapes)")
    print()
    print(table(["case", "outcome", "message"],
                [[h["case"], o, (m[:100] + "...") if len(m) > 100 else m]
                 for h in phase_b["hostile"] for o, m in h["details"].items()]))
    print()
    if phase_c:
        print(f"Heavy cases, each alone beside the good clients for {args.case_seconds:.0f} s "
              f"({args.hostile_threads} threads replaying it; p99 ratio against phase A; RSS "
              "growth: the largest VmRSS sampled during the case or after it, minus before)")
        print()
        print(table(["case", "calls", "outcomes", "good p99 ms", "p99 C / A", "good errors",
                     "RSS before", "RSS peak", "RSS after", "growth MB"],
                    [[c["case"], c["hostile"][0]["calls"],
                      "; ".join(f"{o} x{n}" for o, n in c["hostile"][0]["outcomes"].items()),
                      fmt(c["p99_ms"]), fmt(c["p99_ratio"], 2), c["errors"],
                      fmt(c["rss_before"]), fmt(c["rss_peak"]), fmt(c["rss_after"]),
                      fmt(c["rss_growth"])] for c in phase_c]))
        print()
    print(table(["criterion", "value", "limit", "result"],
                [[c[0], fmt(c[1], 2) if isinstance(c[1], float) else c[1], c[2],
                  "PASS" if c[3] else "FAIL"] for c in criteria]))
    print()
    total = time.perf_counter() - t0
    print(f"server stopped by {how}, exit code {exit_code}; threads still running after "
          f"the phases: {phase_a['stuck_threads'] + phase_b['stuck_threads']}; "
          f"total {total:.0f} s")
    print(f"overall: {'PASS' if passed else 'FAIL'}")

    if args.json:
        figures = {"model_dir": str(model_dir), "generated": args.generated,
                   "version": int(version_dir.name), "seconds": args.seconds,
                   "clients": args.clients, "hostile_threads": args.hostile_threads,
                   "startup_s": round(startup, 2), "warmup": warm,
                   "phase_a": phase_a, "phase_b": phase_b, "phase_c": phase_c,
                   "p99_ratio": ratio,
                   "rss_mb": rss, "rss_growth_mb": growth, "server_after_b": state,
                   "server_exit_code": exit_code, "server_stopped_by": how,
                   "criteria": {c[0]: {"value": round(c[1], 2) if isinstance(c[1], float)
                                       else c[1], "limit": c[2], "pass": c[3]}
                                for c in criteria},
                   "pass": passed, "total_s": round(total, 1)}
        text = json.dumps(figures, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
