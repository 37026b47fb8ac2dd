"""Serving latency and throughput: `tfrec serve` over gRPC beside the in-process call.

    python bench/serve.py --saved-model saved_models/retail/1   # + a generated 1M-item model
    python bench/serve.py --saved-model saved_models/retail/1 --items 0   # bundled model only
    python bench/serve.py --two-stage-run runs/main   # the ranking stage on against off
    python bench/serve.py --saved-model saved_models/retail/1 --items 0 --concurrency 8 \
        --rows grpc --baseline /tmp/tfrec-prev   # this server beside an earlier one

With --two-stage-run (a run trained with its ranking stage) it measures the
second stage's cost instead: the run exported twice (ScaNN, the ranking stage
on and off) and a generated catalogue (--items) with a generated ranking stage
(its item-item table, feature tables and an untrained ranker of the run's
shape; N = 200), each called in-process by one caller, single-session
requests (k = 10), on and off alternating so both meet the same load.

For each model it prints requests/s and p50/p99 latency of single-session
requests (k = 10; --batch N: N sessions a request) from concurrent gRPC
clients (a plain PredictionServiceStub each) against a real `tfrec serve`
process, with and without server-side batching, beside the same SavedModel
signature called in-process (one caller, and the same number of concurrent
callers). Clients and server share this
machine's cores, as they would on a 2-core host.

A "handler, no gRPC" row calls `tfrec serve`'s Predict handler in-process
(request proto in, response proto out, the client's request building
included, as in the gRPC rows). A "gRPC floor" row runs the same clients against a
Python gRPC server that answers every Predict with a stored copy of the model's response (no model,
no input conversion): the cost of the transport and the Python gRPC stack on
both sides, which no server written in Python can go under.

With --baseline (a folder holding an earlier version's `tfrec` package, e.g.
`git archive <commit> tfrec | tar -x -C /tmp/tfrec-prev`) the gRPC rows are run
against that version's server too, in the same run, taking turns with this
one's; with --two-stage-run, the run is also exported by that version and its
stage timed beside this one's ("on (baseline)"). Server rows report the
server's resident memory (VmRSS) after the load.
--rows picks rows: inproc, handler, grpc, onethread (one intra- and one inter-op
thread), tfthreads (the server with --tensorflow_intra_op_parallelism 0), batching,
floor. The in-process rows run with --intra-op-threads (default: the server's default).
"""

from __future__ import annotations

import argparse
import json
import os
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

import tfrec  # noqa: E402,F401
import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrec.config import ServeConfig  # noqa: E402
from tfrec.exporter.layout import VersionFolder  # noqa: E402
from tfrec.exporter.saved_model import load_saved_model  # noqa: E402
from tfrec.utils import read_id_lines  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sessions_from(model_dir: Path, count: int, seed: int = 0) -> list[list[str]]:
    ids = read_id_lines(VersionFolder(model_dir).item_ids)
    rng = np.random.default_rng(seed)
    return [[ids[i] for i in rng.integers(0, len(ids), 3)] for _ in range(count)]


def rows_of(request) -> list[list[str]]:
    """A request's sessions: one session (a list of ids), or a batch of them."""
    return request if request and isinstance(request[0], list) else [request]


def batched(sessions: list, size: int) -> list:
    """Requests of `size` sessions each (size 1: the sessions themselves)."""
    if size <= 1:
        return sessions
    return [sessions[i:i + size] for i in range(0, len(sessions) - size + 1, size)]


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ms = np.asarray(latencies) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def run_callers(call, sessions, concurrency: int, seconds: float) -> dict:
    latencies, lock, stop = [], threading.Lock(), threading.Event()
    errors = []

    def worker(offset):
        n = offset
        local = []
        while not stop.is_set():
            session = sessions[n % len(sessions)]
            t = time.perf_counter()
            try:
                call(session)
            except Exception as err:  # counted, not hidden
                errors.append(err)
            local.append(time.perf_counter() - t)
            n += concurrency
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    p50, p99 = percentiles(latencies)
    return {"rps": len(latencies) / elapsed, "p50": p50, "p99": p99, "errors": len(errors)}


def in_process(model_dir: Path, sessions, concurrency: int, seconds: float) -> dict:
    function = load_saved_model(model_dir).signatures["serving_default"]
    k = tf.constant(10)

    def call(session):
        function(item_ids=tf.constant(rows_of(session)), k=k)

    call(sessions[0])
    return run_callers(call, sessions, concurrency, seconds)


K_PROTO = tf.make_tensor_proto(np.int32(10))


def predict_request(session):
    """A PredictRequest for one session, k = 10, built as a TF Serving client builds it."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["item_ids"].CopyFrom(tf.make_tensor_proto(np.array(rows_of(session),
                                                                      dtype=bytes)))
    request.inputs["k"].CopyFrom(K_PROTO)
    return request


def handler_only(model_dir: Path, sessions, concurrency: int, seconds: float,
                 workdir: Path) -> dict:
    """`tfrec serve`'s Predict handler called in-process: the server's own work, no gRPC."""
    from tfrec.serving.config import ModelEntry
    from tfrec.serving.grpc_api import PredictionServicer
    from tfrec.serving.predict import Predictor
    from tfrec.serving.versions import ModelManager

    class Context:  # what the handler asks of a gRPC context
        def is_active(self):
            return True

        def abort(self, code, message):
            raise RuntimeError(f"{code}: {message}")

    base = workdir / "handler-base"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    os.symlink(model_dir.resolve(), base / "1")
    manager = ModelManager([ModelEntry("m", base)])
    manager.sync()
    servicer = PredictionServicer(Predictor(manager))
    context = Context()

    def call(session):
        servicer.Predict(predict_request(session), context)

    call(sessions[0])
    return run_callers(call, sessions, concurrency, seconds)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def clients_against(server: subprocess.Popen, port: int, sessions, concurrency: int,
                    seconds: float, ready_seconds: float) -> dict:
    """Plain PredictionServiceStub clients against a server process, which is then stopped.

    Waits (up to `ready_seconds`) until the server answers a Predict, then runs
    the timed callers; SIGTERM stops the server whatever happens.
    """
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=ready_seconds)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def call(session):
            stub.Predict(predict_request(session), timeout=30)

        deadline = time.time() + ready_seconds
        while True:  # until a version is loaded and answers
            try:
                call(sessions[0])
                break
            except grpc.RpcError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        before = rss_mb(server.pid)
        result = run_callers(call, sessions, concurrency, seconds)
        return {**result, "rss": rss_mb(server.pid), "rss_before": before}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)


def over_grpc(model_dir: Path, sessions, concurrency: int, seconds: float,
              batching: bool, workdir: Path, extra: tuple[str, ...] = (),
              tree: str | None = None) -> dict:
    """`tfrec serve` (from `tree`, a folder holding a `tfrec` package, if given) under
    `concurrency` clients."""
    base = workdir / "base"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    os.symlink(model_dir.resolve(), base / "1")
    config = workdir / "models.config"
    config.write_text('model_config_list { config { name: "m" base_path: "%s" } }\n' % base)
    port = free_port()
    args = [sys.executable, "-m", "tfrec", "-q", "serve", "--model_config_file", str(config),
            "--port", str(port), *extra]
    if batching:
        params = workdir / "batching.config"
        params.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 1000 }\n"
                          "pad_variable_length_inputs: true\n")
        args += ["--enable_batching", "--batching_parameters_file", str(params)]
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["PYTHONPATH"] = os.path.abspath(tree or os.path.join(os.path.dirname(__file__), ".."))
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=env, cwd=env["PYTHONPATH"])
    return clients_against(server, port, sessions, concurrency, seconds, ready_seconds=600)


def echo_server(port: int, response_file: str, workers: int) -> None:
    """A PredictionService that answers every call with the stored response."""
    import concurrent.futures

    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    response = predict_pb2.PredictResponse.FromString(Path(response_file).read_bytes())

    class Echo(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            return response

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(workers))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(1))
    server.wait_for_termination()


def over_grpc_floor(model_dir: Path, sessions, concurrency: int, seconds: float,
                    workdir: Path) -> dict:
    """The gRPC clients against `echo_server` holding this model's real response."""
    from tensorflow_serving.apis import predict_pb2

    function = load_saved_model(model_dir).signatures["serving_default"]
    outputs = function(item_ids=tf.constant(rows_of(sessions[0])), k=tf.constant(10))
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "m"
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
    response_file = workdir / "response.pb"
    response_file.write_bytes(response.SerializeToString())
    port = free_port()
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--echo-server",
                               str(port), str(response_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return clients_against(server, port, sessions, concurrency, seconds, ready_seconds=120)


# TF Serving's thread flags: one op at a time, one thread per op.
ONE_THREAD = ("--tensorflow_intra_op_parallelism", "1", "--tensorflow_inter_op_parallelism", "1")
TF_THREADS = ("--tensorflow_intra_op_parallelism", "0")  # TensorFlow chooses (one per core)


def generated_model(items: int, workdir: Path) -> Path:
    """A 1M-item ScaNN SavedModel built as bench/export.py builds it."""
    sys.path.insert(0, os.path.dirname(__file__))
    from export import _Model, catalogue  # noqa: E402

    from tfrec.exporter.saved_model import RecommenderModule
    from tfrec.index.ann import IndexConfig, build_index

    vectors, _ = catalogue(items, 64)
    ids = np.concatenate([["[OOV]"], np.char.add("i", np.arange(items).astype(str))])
    model = _Model(vectors)
    model.embedding_dim = vectors.shape[1]
    index = build_index(vectors, ids[1:], IndexConfig(kind="scann", max_k=100))
    module = RecommenderModule(model, ids, index, 100)
    module.recommend(tf.constant([[ids[1]]]), tf.constant(1))
    path = workdir / "generated" / "1"
    tf.saved_model.save(module, str(path), signatures=module.signatures(),
                        options=tf.saved_model.SaveOptions(namespace_whitelist=["TFText",
                                                                                "Scann"]))
    VersionFolder(path).embeddings.mkdir(parents=True)
    VersionFolder(path).item_ids.write_text("\n".join(ids[1:]))
    VersionFolder(path).metadata.write_text('{"max_k": 100}')  # a version loads once it has one
    return path


def generated_tables(vectors: np.ndarray, assignment: np.ndarray, co_items: int = 20,
                     seed: int = 0):
    """The ranking stage's tables (`tfrec.ranking.features.Tables`) for a generated
    catalogue: each item's `co_items` table entries from its own cluster, random counts
    (about 2% of the items without events), unit text and skip-gram vectors, 8 lexical
    terms."""
    from tfrec.ranking import features as F
    from tfrec.ranking.item_table import ItemItemTable
    from tfrec.ranking.lexical import LexicalTable

    rng = np.random.default_rng(seed)
    n, dim = vectors.shape
    order = np.argsort(assignment, kind="stable")
    starts = np.searchsorted(assignment[order], np.arange(assignment.max() + 1))
    sizes = np.bincount(assignment, minlength=assignment.max() + 1)
    offsets = rng.integers(0, 1 << 30, (n, co_items)) % sizes[assignment][:, None]
    neighbours = order[starts[assignment][:, None] + offsets] + 1
    # Row 0 (padding) is empty; row i holds item i's co_items entries.
    table = ItemItemTable(np.concatenate([[0], np.arange(n + 1) * co_items]),
                          neighbours.ravel().astype(np.int32),
                          rng.random(n * co_items, dtype=np.float32))

    def unit(width):
        v = rng.normal(size=(n + 1, width)).astype(np.float32)
        v[0] = 0
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    terms = rng.integers(1, 5000, (n + 1, 8)).astype(np.int32)
    terms[0] = 0
    lexical = LexicalTable(terms, unit(8), [f"t{j}" for j in range(4999)],
                           np.ones(5000, np.float32))
    counts = rng.integers(0, 50, n + 1)
    counts[0] = 0
    return F.Tables(np.vstack([np.zeros((1, dim), np.float32), vectors]), table, counts,
                    unit(32), lexical, unit(32))


def generated_ranking_stage(vectors: np.ndarray, assignment: np.ndarray, num_candidates: int,
                            co_items: int = 20, seed: int = 0, text_slots: int = 0):
    """A ranking stage for a generated catalogue: its `generated_tables`, and an
    untrained ranker of the trained one's shape (what serving costs, not what it
    scores); `text_slots` pick from the items without events."""
    from tfrec.config import RankingConfig
    from tfrec.ranking import features as F
    from tfrec.ranking.ranker import CandidateRanker
    from tfrec.ranking.serving import TwoStageScorer

    tables = generated_tables(vectors, assignment, co_items, seed)
    rng = np.random.default_rng([seed, 1])
    ranker = CandidateRanker(len(F.FEATURES), RankingConfig.hidden_units, seed=seed,
                             members=RankingConfig.members)
    ranker.adapt(rng.normal(size=(1000, len(F.FEATURES))).astype(np.float32))
    ranker({"features": tf.zeros([1, 1, len(F.FEATURES)]),
            "candidate_mask": tf.ones([1, 1], tf.bool)})
    return TwoStageScorer(tables, ranker, num_candidates, 0.5, tuple(range(len(F.FEATURES))),
                          text_slots=text_slots)


def alternating(calls: dict, sessions, rounds: int) -> dict:
    """name -> {p50, p99} of each call over `rounds` sessions, the calls taking turns
    (first in turn by round) so that they meet the same load."""
    names = list(calls)
    latencies = {name: [] for name in names}
    for name in names:  # traced and warm
        for session in sessions[:20]:
            calls[name](session)
    for r in range(rounds):
        session = sessions[r % len(sessions)]
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            calls[name](session)
            latencies[name].append(time.perf_counter() - t)
    out = {}
    for name in names:
        p50, p99 = percentiles(latencies[name])
        out[name] = {"p50": p50, "p99": p99}
    return out


def baseline_export(baseline: str, run_dir: Path, out: Path) -> Path:
    """The run exported (ScaNN, ranking stage on) by the earlier `tfrec` package in the
    folder `baseline`, in a process of its own: the path of its version."""
    code = ("import sys; from tfrec.exporter.saved_model import export; "
            "from tfrec.index.ann import IndexConfig; "
            "print(export(sys.argv[1], sys.argv[2], IndexConfig(kind='scann'), "
            "ranking_stage=True).path)")
    done = subprocess.run([sys.executable, "-c", code, str(run_dir), str(out)], check=True,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.path.abspath(baseline)})
    return Path(done.stdout.strip().splitlines()[-1])


def two_stage(run_dir: Path, items: int, rounds: int, workdir: Path,
              baseline: str | None = None) -> list:
    """Rows (model, stage 2 on/off, p50, p99) of the ranking stage's cost; with
    `baseline`, the bundled run's stage as the earlier package exports it too."""
    from tfrec.exporter.saved_model import export, ranking_index_config
    from tfrec.exporter.module import RecommenderModule
    from tfrec.index.ann import IndexConfig, build_index

    rows = []
    k = tf.constant(10)
    print("exporting the run with its ranking stage on and off ...", file=sys.stderr,
          flush=True)
    on = export(run_dir, workdir / "bundled", IndexConfig(kind="scann"), ranking_stage=True)
    off = export(run_dir, workdir / "bundled", IndexConfig(kind="scann"), ranking_stage=False)
    signatures = {name: load_saved_model(r.path).signatures["serving_default"]
                  for name, r in (("on", on), ("off", off))}
    if baseline:
        print(f"exporting the run with the package in {baseline} ...", file=sys.stderr,
              flush=True)
        path = baseline_export(baseline, run_dir, workdir / "baseline")
        signatures["on (baseline)"] = load_saved_model(path).signatures["serving_default"]
    sessions = sessions_from(on.path, 2000)
    slots = on.metadata["ranking_stage"].get("text_slots", 0)
    if slots:  # the same stage without its text slots (what they cost)
        plain = workdir / "plain_run"
        shutil.copytree(run_dir, plain, ignore=shutil.ignore_patterns("evaluation"))
        meta = json.loads((plain / "ranking" / "stage.json").read_text())
        (plain / "ranking" / "stage.json").write_text(json.dumps({**meta, "text_slots": 0}))
        without = export(plain, workdir / "plain", IndexConfig(kind="scann"))
        signatures[f"on, no text slots (of {slots})"] = load_saved_model(
            without.path).signatures["serving_default"]
    calls = {name: (lambda session, f=f: f(item_ids=tf.constant([session]), k=k))
             for name, f in signatures.items()}
    candidates = on.metadata["ranking_stage"]["num_candidates"]
    for name, r in alternating(calls, sessions, rounds).items():
        rows.append(("bundled", name, candidates, r))
    del signatures, calls
    if items:
        sys.path.insert(0, os.path.dirname(__file__))
        from export import _Model, catalogue  # noqa: E402

        print(f"building a {items:,}-item ScaNN model and ranking stage ...", file=sys.stderr,
              flush=True)
        vectors, assignment = catalogue(items, 64)
        ids = np.concatenate([["[OOV]"], np.char.add("i", np.arange(items).astype(str))])
        model = _Model(vectors)
        model.embedding_dim = vectors.shape[1]
        config = ranking_index_config(IndexConfig(kind="scann", max_k=100), 200)
        index = build_index(vectors, ids[1:], config)
        ranking = generated_ranking_stage(vectors, assignment, 200)
        slotted = generated_ranking_stage(vectors, assignment, 200, text_slots=10)
        modules = {"on": RecommenderModule(model, ids, index, 100, ranking=ranking),
                   "on, 10 text slots": RecommenderModule(model, ids, index, 100,
                                                          ranking=slotted),
                   "off": RecommenderModule(model, ids, index, 100)}
        rng = np.random.default_rng(0)
        sessions = [[ids[i] for i in rng.integers(1, items + 1, 3)] for _ in range(2000)]
        calls = {name: (lambda session, m=m: m.recommend(tf.constant([session]), k))
                 for name, m in modules.items()}
        for name, r in alternating(calls, sessions, rounds).items():
            rows.append((f"generated {items / 1e6:g}M", name, 200, r))
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--echo-server"]:
        echo_server(int(sys.argv[2]), sys.argv[3], workers=8)  # as tfrec serve
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saved-model", help="an exported version folder")
    parser.add_argument("--two-stage-run", help="measure the ranking stage's cost: a run "
                                                "trained with its ranking stage")
    parser.add_argument("--rounds", type=int, default=2000,
                        help="with --two-stage-run: calls of each model")
    parser.add_argument("--items", type=int, default=1_000_000,
                        help="also a generated catalogue of this many items (0: skip)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rows", default="inproc,handler,grpc,onethread,batching,floor",
                        help="rows to run (comma-separated): inproc, handler, grpc, "
                             "onethread, tfthreads, batching, floor")
    parser.add_argument("--baseline", help="a folder holding an earlier version's tfrec "
                                           "package: its server's gRPC rows too (with "
                                           "--two-stage-run: its export of the run)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="server rows this many times each, taking turns")
    parser.add_argument("--batch", type=int, default=1,
                        help="sessions per request (default 1)")
    parser.add_argument("--intra-op-threads", type=int,
                        default=ServeConfig.tensorflow_intra_op_parallelism,
                        help="TensorFlow's intra-op threads in this process (the in-process "
                             "rows and --two-stage-run); default: tfrec serve's default, so "
                             "that both sides run alike (0: TensorFlow chooses)")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    wanted = set(args.rows.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="tfrec-bench-serve-"))
    if args.two_stage_run:
        try:
            rows = two_stage(Path(args.two_stage_run), args.items, args.rounds, workdir,
                             args.baseline)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"ranking stage on / off: in-process serving_default, 1 caller, single-session "
              f"requests (3 items), k = 10, {args.rounds} calls each, alternating; "
              f"{os.cpu_count()} cores, {args.intra_op_threads} intra-op threads")
        width = max(9, *(len(row[1]) + 1 for row in rows))
        head = f"{'model':<16}{'stage 2':<{width}}{'N':>5}{'p50 ms':>9}{'p99 ms':>9}"
        print(head)
        print("-" * len(head))
        for label, name, n, r in rows:
            print(f"{label:<16}{name:<{width}}{n:>5}{r['p50']:>9.2f}{r['p99']:>9.2f}")
        for label in dict.fromkeys(row[0] for row in rows):
            mine = {name: r for lab, name, _, r in rows if lab == label}
            for name in mine:
                if name != "off":
                    print(f"{label}: stage 2 ({name}) adds "
                          f"{mine[name]['p50'] - mine['off']['p50']:.2f} ms at p50, "
                          f"{mine[name]['p99'] - mine['off']['p99']:.2f} ms at p99")
        return
    if not args.saved_model:
        parser.error("give --saved-model (or --two-stage-run)")
    models = [("bundled", Path(args.saved_model))]
    try:
        if args.items:
            print(f"building a {args.items:,}-item ScaNN model ...", file=sys.stderr, flush=True)
            models.append((f"generated {args.items / 1e6:g}M",
                           generated_model(args.items, workdir)))
        head = (f"{'model':<16}{'path':<30}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}"
                f"{'errors':>8}{'RSS MB':>9}")
        rows = []
        c, secs = args.concurrency, args.seconds
        for label, path in models:
            sessions = batched(sessions_from(path, 2000 * args.batch), args.batch)
            plan = []  # (row key, name, thunk)
            if "inproc" in wanted:
                plan += [("inproc", "in-process, 1 caller",
                          lambda: in_process(path, sessions, 1, secs)),
                         ("inproc", f"in-process, {c} callers",
                          lambda: in_process(path, sessions, c, secs))]
            if "handler" in wanted:
                plan.append(("handler", f"handler, no gRPC, {c}",
                             lambda: handler_only(path, sessions, c, secs, workdir)))
            trees = [("", None)] + ([(" (baseline)", args.baseline)] if args.baseline else [])
            for turn in range(args.repeat):
                again = f" #{turn + 1}" if args.repeat > 1 else ""
                for suffix, tree in (trees if turn % 2 == 0 else trees[::-1]):
                    # (row, label, server-side batching, extra server arguments)
                    for key, row, batching, extra in (
                            ("grpc", f"gRPC, {c} clients", False, ()),
                            ("onethread", f"gRPC, {c}, 1 TF thread", False, ONE_THREAD),
                            ("tfthreads", f"gRPC, {c}, TF's threads", False, TF_THREADS),
                            ("batching", f"gRPC+batching, {c}", True, ())):
                        if key in wanted:
                            plan.append((key, f"{row}{suffix}{again}",
                                         lambda t=tree, b=batching, e=extra: over_grpc(
                                             path, sessions, c, secs, b, workdir, e, tree=t)))
            if "floor" in wanted:
                plan.append(("floor", f"gRPC floor, {c}",
                             lambda: over_grpc_floor(path, sessions, c, secs, workdir)))
            for _, name, thunk in plan:
                rows.append((label, name, thunk()))
                print(f"  done: {label}, {name}", file=sys.stderr, flush=True)
        print(f"requests of {args.batch} session(s), k = 10, {args.seconds:g} s each, "
              f"{os.cpu_count()} cores; in-process: {args.intra_op_threads} intra-op threads")
        print(head)
        print("-" * len(head))
        for label, name, r in rows:
            rss = f"{r['rss']:>9.0f}" if "rss" in r else ""
            print(f"{label:<16}{name:<30}{r['rps']:>12,.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}"
                  f"{r['errors']:>8}{rss}")
        for label, _ in models:
            mine = {name: r for lab, name, r in rows if lab == label}
            inproc = mine.get(f"in-process, {c} callers")
            if inproc is None:
                continue
            floor = mine.get(f"gRPC floor, {c}")
            for name, served in mine.items():
                if not name.startswith("gRPC, "):
                    continue
                above = (f"; above the gRPC floor: {served['p50'] - floor['p50']:.2f} ms at p50"
                         if floor else "")
                print(f"{label}, {name}: server p50 is {served['p50'] / inproc['p50']:.2f}x, "
                      f"p99 {served['p99'] / inproc['p99']:.2f}x the in-process call at the "
                      f"same concurrency (p50 {inproc['p50']:.2f} ms, p99 {inproc['p99']:.2f} "
                      f"ms){above}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
