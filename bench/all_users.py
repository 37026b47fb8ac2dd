"""Every user's top-k in one job (`tfrec recommend --all-users`): users/s and memory.

    python bench/all_users.py                        # 1M users x 1M items, 60 s of the job
    python bench/all_users.py --seconds 0            # the whole job (about 10x longer)
    python bench/all_users.py --users 100000 --items 100000 --seconds 0   # quicker, whole

Builds a generated catalogue (as bench/export.py: items around sqrt(N)
cluster centres, dimension 64) and generated users (each a history of five
items of one cluster, embedded by the query tower), exports an id-only tfrec
model with the users cached in it (`RecommenderModule` with a `UserCache`,
ScaNN index, max_k 100, as `tfrec export` writes it), then runs
`tfrec.all_users.recommend_all_users` on it in a fresh process, so the figures
are the job's own: users/s, the process's memory after loading the model
and at its peak, and the Parquet bytes per user. With `--seconds S` (default
60) the job is stopped after S seconds of recommending and the time for all
users is extrapolated from its rate (the job holds one chunk of users at a
time, so its rate and memory do not change along the user list); `--seconds
0` runs it to the end. Baselines in the same command: the same
`recommend_for_user` signature called one user at a time (how a
per-user server call computes it), and a numpy exact top-k over the same
user and item embeddings with the same exclusions (brute force, batched).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # no CUDA probing lines in the output

import tfrec  # noqa: E402,F401


def memory_mb() -> dict:
    """This process's resident memory now and at its peak (VmRSS, VmHWM), MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return {"rss_mb": fields["VmRSS"], "peak_mb": fields["VmHWM"]}


class _TimeUp(Exception):
    pass


def run_job(model_dir: Path, out: Path, k: int, seconds: float, batch_size: int,
            single_seconds: float) -> dict:
    """The batch job in this process, stopped after `seconds` of recommending (0: never);
    then the signature one user at a time for `single_seconds`."""
    import tensorflow as tf

    from tfrec import all_users

    started = time.perf_counter()
    marks: list = []

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if not marks:
            marks.append((0, now, memory_mb()["rss_mb"], 0))  # first chunk done
        tmp = out.parent / f".{out.name}{all_users.TMP_MARK}{os.getpid()}"
        size = tmp.stat().st_size if tmp.exists() else 0
        marks.append((done, now, memory_mb()["rss_mb"], size))
        if seconds and now - marks[0][1] >= seconds and done < total:
            raise _TimeUp

    loaded = None
    try:
        summary = all_users.recommend_all_users(model_dir, out, k=k, batch_size=batch_size,
                                                progress=progress)
        whole = True
        size = summary.path.stat().st_size
    except _TimeUp:
        whole, size = False, marks[-1][3]
    total = all_users.count_users(model_dir / "1")
    # The rate from the end of the first chunk (tracing, warm-up) to the last one.
    (d0, t0, rss0, _), (d1, t1, rss1, _) = marks[1], marks[-1]
    rate = (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0
    peak = memory_mb()["peak_mb"]
    signature = all_users.load_user_recommender(model_dir / "1")
    loaded = memory_mb()
    users = [u for chunk, _ in zip(all_users.user_id_batches(model_dir / "1", 256), range(1))
             for u in chunk]
    signature(user_ids=tf.constant(users[:1]), k=tf.constant(k))
    t, calls = time.perf_counter(), 0
    while time.perf_counter() - t < single_seconds:
        signature(user_ids=tf.constant(users[calls % len(users):][:1]), k=tf.constant(k))
        calls += 1
    return {"whole_job": whole, "users_done": d1, "users": total, "users_per_s": rate,
            "job_seconds": t1 - marks[0][1], "first_chunk_at_s": t0 - started,
            "rss_first_chunk_mb": rss0, "rss_last_chunk_mb": rss1,
            "rss_max_chunks_mb": max(m[2] for m in marks), "peak_mb": peak,
            "parquet_bytes_per_user": size / max(d1, 1),
            "single_users_per_s": calls / (time.perf_counter() - t),
            "rss_after_reload_mb": loaded["rss_mb"]}


def build_export(folder: Path, items: int, users: int, dim: int, k: int) -> dict:
    """The generated catalogue and users, exported as `folder/1` with its user list."""
    import tensorflow as tf

    from export import _Model, catalogue, sessions_of
    from tfrec.exporter import RecommenderModule, UserCache, VersionFolder
    from tfrec.index.ann import IndexConfig, build_index

    t = time.perf_counter()
    vectors, assignment = catalogue(items, dim)
    ids = np.concatenate([["[OOV]"], np.char.add("i", np.arange(items).astype(str))])
    model = _Model(vectors)
    model.embedding_dim = dim
    histories = sessions_of(assignment, users, seed=2).astype(np.int32)
    embeddings = np.concatenate([model.query_tower(tf.constant(histories[s:s + 100_000])).numpy()
                                 for s in range(0, users, 100_000)])
    user_ids = np.char.add("u", np.arange(users).astype(str))
    generated = time.perf_counter() - t
    t = time.perf_counter()
    config = IndexConfig(kind="scann", max_k=k)
    index = build_index(vectors, ids[1:], config)
    build = time.perf_counter() - t
    t = time.perf_counter()
    module = RecommenderModule(model, ids, index, config.max_k,
                               users=UserCache(user_ids, embeddings, histories))
    module.recommend_for_user(tf.constant(user_ids[:2]), tf.constant(1))
    path = folder / "1"
    tf.saved_model.save(module, str(path), signatures=module.signatures(),
                        options=tf.saved_model.SaveOptions(
                            namespace_whitelist=["TFText", "Scann"]))
    version = VersionFolder(path)
    version.write_metadata({"max_k": k, "index_kind": "scann", "items": items, "users": users})
    with version.user_ids.open("w") as f:
        f.writelines(f"{u}\n" for u in user_ids)
    save = time.perf_counter() - t
    return {"vectors": vectors, "embeddings": embeddings, "histories": histories,
            "generate_s": generated, "build_s": build, "save_s": save,
            "clusters": int(assignment.max() + 1)}


def numpy_exact(vectors: np.ndarray, embeddings: np.ndarray, histories: np.ndarray, k: int,
                seconds: float, chunk: int = 64) -> float:
    """users/s of an exact top-k with each user's history excluded, numpy, batched."""
    t, done = time.perf_counter(), 0
    while time.perf_counter() - t < seconds or done == 0:
        rows = slice(done % len(embeddings), done % len(embeddings) + chunk)
        scores = embeddings[rows] @ vectors.T
        np.put_along_axis(scores, np.maximum(histories[rows] - 1, 0), -np.inf, axis=1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        np.take_along_axis(top, order, axis=1)
        done += len(scores)
    return done / (time.perf_counter() - t)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else
            f"{seconds // 60}m{seconds % 60:02d}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("-k", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="stop the job after this many seconds and extrapolate (0: run "
                             "it to the end)")
    parser.add_argument("--batch-size", type=int, default=1000,
                        help="users per signature call and row group (the job's default)")
    parser.add_argument("--baseline-seconds", type=float, default=15.0)
    parser.add_argument("--job", metavar="DIR", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.job:
        result = run_job(Path(args.job), Path(args.job).parent / "recs.parquet", args.k,
                         args.seconds, args.batch_size, args.baseline_seconds)
        print(json.dumps(result))
        return
    workdir = Path(tempfile.mkdtemp(prefix="tfrec-bench-batch-"))
    try:
        built = build_export(workdir / "model", args.items, args.users, args.dim, args.k)
        print(f"catalogue: {args.items:,} items, dimension {args.dim}, {built['clusters']:,} "
              f"clusters; {args.users:,} users (5-item histories); generated in "
              f"{built['generate_s']:.0f}s, ScaNN index in {built['build_s']:.0f}s, "
              f"saved in {built['save_s']:.0f}s", flush=True)
        print(f"  baseline: numpy exact top-{args.k} ...", file=sys.stderr, flush=True)
        exact = numpy_exact(built["vectors"], built["embeddings"], built["histories"], args.k,
                            args.baseline_seconds)
        del built
        print("  the job, in a fresh process ...", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--job", str(workdir / "model"), "-k", str(args.k),
             "--seconds", str(args.seconds), "--batch-size", str(args.batch_size),
             "--baseline-seconds", str(args.baseline_seconds)],
            stdout=subprocess.PIPE, text=True, check=True)
        job = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rate = job["users_per_s"]
    how = ("whole job" if job["whole_job"] else
           f"{job['users_done']:,} users in {job['job_seconds']:.0f}s, extrapolated")
    print(f"k = {args.k}, {args.batch_size} users per call and row group; the job's process: "
          f"model loaded and first chunk done at {job['first_chunk_at_s']:.0f}s")
    head = f"{'method':<36}{'users/s':>9}{'all users':>11}{'peak RSS MB':>13}"
    print(head)
    print("-" * len(head))
    for name, r, peak in (
            (f"tfrec recommend --all-users ({'whole' if job['whole_job'] else 'slice'})",
             rate, f"{job['peak_mb']:,.0f}"),
            ("same signature, 1 user per call", job["single_users_per_s"], ""),
            ("numpy exact top-k (64 per batch)", exact, f"{parent_peak:,.0f}*")):
        print(f"{name:<36}{r:>9,.0f}{duration(args.users / r) if r else '-':>11}{peak:>13}")
    print(f"job memory, MB: {job['rss_first_chunk_mb']:,.0f} after the first chunk, "
          f"{job['rss_last_chunk_mb']:,.0f} after the last ({how}), at most "
          f"{job['rss_max_chunks_mb']:,.0f} between chunks, peak (VmHWM) {job['peak_mb']:,.0f}")
    print(f"Parquet: {job['parquet_bytes_per_user']:,.0f} bytes per user "
          f"({job['parquet_bytes_per_user'] * args.users / 2**30:.2f} GB for all)")
    print("* the bench's own process (generation, index, export, numpy): not the job's")
    print(f"the job: {rate / exact:.1f}x numpy exact, {rate / job['single_users_per_s']:.1f}x "
          f"one user per call")


if __name__ == "__main__":
    main()
