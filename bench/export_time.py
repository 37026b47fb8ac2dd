"""`tfrec export` wall time of one run, this code beside an earlier one, taking turns.

    python bench/export_time.py --run runs/main --baseline /tmp/tfrec-prev --repeat 3
    python bench/export_time.py --run runs/main --index brute_force

Each export is a fresh `tfrec export` process (its start-up, TensorFlow's import, the
run's loading, the signatures' tracing, the index build and the SavedModel's write), run
from this checkout and, with --baseline (a folder holding an earlier version's `tfrec`
package, e.g. `git archive <commit> tfrec | tar -x -C /tmp/tfrec-prev`), from that one,
alternating so both meet the same load. Prints each export's seconds and the median of
each code. The exports are written to a temporary folder and removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def export_seconds(tree: str, run: str, out: Path, index: str) -> float:
    """One `tfrec export` of `run` into `out`, with the `tfrec` package of `tree`."""
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["PYTHONPATH"] = tree
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tfrec", "-q", "export", "--run", run,
                    "--model-dir", str(out), "--no-serving-config", "--index", index],
                   check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a trained run folder")
    parser.add_argument("--baseline", help="a folder holding an earlier `tfrec` package")
    parser.add_argument("--index", default="scann", choices=("scann", "brute_force"))
    parser.add_argument("--repeat", type=int, default=3, help="exports per code")
    args = parser.parse_args(argv)
    run = os.path.abspath(args.run)
    trees = {"this": HERE}
    if args.baseline:
        trees["baseline"] = os.path.abspath(args.baseline)
    times = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            order = list(trees) if r % 2 == 0 else list(trees)[::-1]
            for name in order:
                seconds = export_seconds(trees[name], run, Path(tmp) / name, args.index)
                times[name].append(seconds)
                print(f"round {r + 1}: {name:8s} {seconds:6.1f} s", flush=True)
    for name, values in times.items():
        values = sorted(values)
        print(f"{name:8s} median {values[len(values) // 2]:6.1f} s "
              f"(min {values[0]:.1f}, max {values[-1]:.1f}; {args.index}, {len(values)} exports)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
