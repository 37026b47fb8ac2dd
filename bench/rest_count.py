"""What refusing an over-limit REST body costs the server: `rest._ValueCounter` fed a
body in 64 KiB reads until it is known over the value limit, beside the same counter of
an earlier commit, taking turns in one process.

    .venv/bin/python bench/rest_count.py --baseline 2e55e7c

The bodies are those of bench/abuse.py's big-body cases (strings) and one of numbers;
the limit is the server's default `--max_request_elements` (1,000,000).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tfrec.serving import rest  # noqa: E402

READ = 65536


def baseline_module(revision: str):
    """tfrec/serving/rest.py as of `revision`, imported under another name."""
    source = subprocess.run(["git", "show", f"{revision}:tfrec/serving/rest.py"],
                            check=True, capture_output=True).stdout
    path = Path(tempfile.mkdtemp()) / "rest_baseline.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("rest_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refused_at(module, body: bytes, most: int) -> int | None:
    counter = module._ValueCounter(most)
    for end in range(READ, len(body), READ):
        if counter.update(body, end):
            return end
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="a git revision whose counter runs beside this one")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--most", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    versions = {"this tree": rest}
    if args.baseline:
        versions[f"baseline {args.baseline}"] = baseline_module(args.baseline)
    head = b'{"inputs": {"item_ids": [['
    tail = b']], "k": 5}}'
    bodies = {"10M empty strings": head + b",".join([b'""'] * 10_000_000) + tail,
              "12M one-letter strings": head + b",".join([b'"a"'] * 12_000_000) + tail,
              "10M ids of 6 letters": head + b",".join([b'"i12345"'] * 10_000_000) + tail,
              "10M numbers": head + b",".join([b"123"] * 10_000_000) + tail}
    print(f"ms to refuse a body (limit {args.most:,} values, {READ // 1024} KiB reads), "
          f"median of {args.repeat}, versions taking turns")
    print(f"{'body':<26} {'MB':>5} {'refused at MB':>13} " +
          " ".join(f"{name:>22}" for name in versions))
    for name, body in bodies.items():
        times = {v: [] for v in versions}
        ends = {}
        for _ in range(args.repeat):
            for v, module in versions.items():
                start = time.perf_counter()
                ends[v] = refused_at(module, body, args.most)
                times[v].append((time.perf_counter() - start) * 1000)
        if len(set(ends.values())) != 1:
            raise SystemExit(f"{name}: the versions refused at different places: {ends}")
        end = next(iter(ends.values()))
        print(f"{name:<26} {len(body) / 1e6:5.0f} {end / 1e6 if end else float('nan'):13.1f} " +
              " ".join(f"{np.median(times[v]):22.1f}" for v in versions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
