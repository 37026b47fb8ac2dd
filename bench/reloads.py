"""Versions loaded and unloaded for hours: the server's threads and memory across swaps.

    python bench/reloads.py --saved-model saved_models/retail/1 --cycles 20
    python bench/reloads.py --saved-model saved_models/retail/1 --cycles 20 \
        --baseline /tmp/tfrec-prev      # an earlier version's server too, in the same run
    python bench/reloads.py --items 200000 --cycles 10 --baseline /tmp/tfrec-prev

A real `tfrec serve` (no traffic but one call of each searching signature after each
load) serves a model folder whose newest version is replaced `--cycles` times, as a
catalogue update does: a copy of the export is moved in under the next number (a
rename: complete at once), the server loads it and unloads the old one (latest 1),
the old folder is deleted. After each swap the server's threads and resident memory
(VmRSS) are read from /proc. With --baseline (a folder holding an earlier version's
`tfrec` package, e.g. `git archive <commit> tfrec | tar -x -C /tmp/tfrec-prev`) the
same swaps run against that version's server, one server after the other. Growth per
swap that does not level off is what a server updated hourly keeps for good (the
table's "a swap" columns: the least-squares slope over the swaps, since a process's
resident memory also moves with its allocator). --items N swaps a generated N-item ScaNN
model (as bench/serve.py builds it) instead of --saved-model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tfrec  # noqa: E402,F401
import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc,  # noqa: E402
                                     predict_pb2, prediction_service_pb2_grpc)

from serve import free_port, generated_model  # noqa: E402

AVAILABLE = 30  # ModelVersionStatus.State


def process_figures(pid: int) -> tuple[int, float]:
    """(threads, resident MB) of a process."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024


def states(stub, name: str) -> dict:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    try:
        reply = stub.GetModelStatus(request, timeout=10)
    except grpc.RpcError:
        return {}
    return {v.version: v.state for v in reply.model_version_status}


def wait_for(test, what: str, seconds: float = 600) -> None:
    deadline = time.time() + seconds
    while not test():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def call_each(stub, item: str, similar: bool) -> None:
    """One call of each signature that searches the index (`similar_items` unless the
    model is a generated one, whose item table is a stand-in)."""
    calls = [("serving_default", {"item_ids": [[item]], "k": 10})]
    if similar:
        calls.append(("similar_items", {"item_ids": [item], "k": 10}))
    for signature, inputs in calls:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(
                tf.make_tensor_proto(value, dtype=tf.int32 if key == "k" else tf.string))
        stub.Predict(request, timeout=60)


def swaps(export: Path, cycles: int, workdir: Path, tree: str | None, similar: bool) -> list:
    """[(swap, threads, MB)] of one server: after the first load, then after each swap."""
    base = workdir / "m"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    shutil.copytree(export, base / "1")
    config = workdir / "models.config"
    config.write_text('model_config_list { config { name: "m" base_path: "%s" } }\n' % base)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["PYTHONPATH"] = os.path.abspath(tree or os.path.join(os.path.dirname(__file__), ".."))
    server = subprocess.Popen(
        [sys.executable, "-m", "tfrec", "-q", "serve", "--model_config_file", str(config),
         "--port", str(port), "--file_system_poll_wait_seconds", "0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=env["PYTHONPATH"])
    item = (export / "assets.extra" / "embeddings" / "item_ids.txt").read_text().split()[0]
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=600)
        status = model_service_pb2_grpc.ModelServiceStub(channel)
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        wait_for(lambda: states(status, "m").get(1) == AVAILABLE, "version 1")
        call_each(predict, item, similar)
        rows = [(0, *process_figures(server.pid))]
        for swap in range(1, cycles + 1):
            new, old = swap + 1, swap
            shutil.copytree(export, base / f".in-{new}")
            os.rename(base / f".in-{new}", base / str(new))
            wait_for(lambda: states(status, "m").get(new) == AVAILABLE
                     and states(status, "m").get(old) != AVAILABLE, f"version {new}")
            shutil.rmtree(base / str(old))
            wait_for(lambda: old not in states(status, "m"), f"version {old} gone")
            call_each(predict, item, similar)
            time.sleep(1.0)  # the unloaded version's release, if any, runs meanwhile
            rows.append((swap, *process_figures(server.pid)))
            print(f"  swap {swap}: {rows[-1][1]} threads, {rows[-1][2]:.0f} MB",
                  file=sys.stderr, flush=True)
        return rows
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved-model", help="a ScaNN version folder")
    parser.add_argument("--items", type=int, default=0,
                        help="swap a generated model of this many items instead")
    parser.add_argument("--cycles", type=int, default=20, help="version swaps")
    parser.add_argument("--baseline", help="a folder holding an earlier tfrec package")
    args = parser.parse_args()
    if not args.saved_model and not args.items:
        parser.error("give --saved-model or --items")
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        if args.items:
            print(f"generating a {args.items:,}-item ScaNN model ...", file=sys.stderr)
            export = generated_model(args.items, Path(workdir))
        else:
            export = Path(args.saved_model).resolve()
        for label, tree in [("this", None)] + ([("baseline", args.baseline)]
                                               if args.baseline else []):
            print(f"{label} server: {args.cycles} swaps ...", file=sys.stderr, flush=True)
            results[label] = swaps(export, args.cycles, Path(workdir) / label, tree,
                                   similar=not args.items)
    what = f"a generated {args.items:,}-item model" if args.items else str(export)
    print(f"{args.cycles} version swaps of {what} (load average "
          f"{os.getloadavg()[0]:.1f})")
    print(f"{'server':10} {'threads first / last':>22} {'MB first / last':>18} "
          f"{'threads a swap':>15} {'MB a swap':>10}")
    for label, rows in results.items():
        (_, t0, m0), (_, t1, m1) = rows[0], rows[-1]
        swaps_done = np.array([r[0] for r in rows[1:]], dtype=float)
        slopes = [np.polyfit(swaps_done, [r[j] for r in rows[1:]], 1)[0]
                  if len(swaps_done) > 1 else float("nan") for j in (1, 2)]
        print(f"{label:10} {t0:>10} / {t1:<9} {m0:>8.0f} / {m1:<7.0f} "
              f"{slopes[0]:>15.2f} {slopes[1]:>10.1f}")


if __name__ == "__main__":
    main()
