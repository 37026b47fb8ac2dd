"""The ranking stage's candidate lists in numpy (`tfrec.ranking.features.candidates`, what
`tfrec train` and `tfrec evaluate` make for every ranker and held-out case) on generated
catalogues: seconds and peak memory, this code beside an earlier one.

    python bench/candidate_lists.py --items 100000 1000000 --cases 2000 \\
        --baseline /tmp/tfrec-prev

Each (code, catalogue size) runs in a process of its own: the catalogue of
`bench/export.py` (vectors around planted cluster centres, dimension 64) with the
generated tables of `bench/serve.py` (20 co-items per item from its cluster), queries of
five items of one cluster, N = 200 candidates, half from the table. It prints the time of
the call and the process's peak RSS before and after it; with --baseline (a folder
holding an earlier version's `tfrec` package) the same for that code, and whether both
gave the same candidate sets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(items: int, cases: int, out: str) -> dict:
    """One size in this process: the generated tables, then the timed call."""
    sys.path.insert(0, HERE)
    import tfrec  # noqa: F401
    from export import catalogue  # noqa: E402
    from serve import generated_tables  # noqa: E402

    from tfrec.ranking import features as F

    vectors, assignment = catalogue(items, 64)
    tables = generated_tables(vectors, assignment)
    rng = np.random.default_rng(0)
    order = np.argsort(assignment, kind="stable")
    starts = np.searchsorted(assignment[order], np.arange(assignment.max() + 1))
    sizes = np.bincount(assignment)
    clusters = rng.choice(np.flatnonzero(sizes >= 5), cases)
    queries = [(order[starts[c] + rng.choice(sizes[c], 5, replace=False)] + 1).tolist()
               for c in clusters]
    query_emb = np.stack([tables.item_embeddings[q].mean(axis=0) for q in queries])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    cands, mask, _, _ = F.candidates(query_emb, tables, queries, 200, 0.5)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(out, np.where(mask, cands, 0))
    return {"seconds": seconds, "rss_before": before, "rss_after": after}


def run(tree: str, items: int, cases: int, out: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["PYTHONPATH"] = tree
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", str(items),
                             str(cases), out], env=env, check=True, capture_output=True,
                            text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=float, nargs="+", default=[1e5, 1e6])
    parser.add_argument("--cases", type=int, default=2000, help="queries per size")
    parser.add_argument("--baseline", help="a folder holding an earlier `tfrec` package")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(int(args.one[0]), int(args.one[1]), args.one[2])))
        return 0
    trees = {"this": os.path.dirname(HERE)}
    if args.baseline:
        trees["baseline"] = os.path.abspath(args.baseline)
    print(f"{'items':>10s} {'code':9s} {'seconds':>8s} {'peak MB before':>15s} "
          f"{'peak MB after':>14s}  same sets")
    with tempfile.TemporaryDirectory() as tmp:
        for items in (int(v) for v in args.items):
            lists = {}
            for name, tree in trees.items():
                out = str(Path(tmp) / f"{name}-{items}.npy")
                got = run(tree, items, args.cases, out)
                lists[name] = np.sort(np.load(out), axis=1)
                same = ("" if name == "this" else
                        str(bool((lists[name] == lists["this"]).all())))
                print(f"{items:10,d} {name:9s} {got['seconds']:8.1f} {got['rss_before']:15,.0f} "
                      f"{got['rss_after']:14,.0f}  {same}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
