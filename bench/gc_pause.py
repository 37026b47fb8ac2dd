"""What a full garbage collection costs a server holding a loaded model, before and after
`tfrec serve` moves the loaded objects out of the collector's reach (`settle_heap`).

    PYTHONPATH=. .venv/bin/python bench/gc_pause.py saved_models/retail/1

The version is loaded as `tfrec serve` loads it, the server's process settings applied
(`_tune_memory`: young collections every 100,000 allocations), then REST-sized JSON
bodies of many lists are parsed as the REST API parses them, first as the server did
before (`before`), then after `settle_heap` (`after`), in one process. It prints the
full collections seen and their cost, and the parse time's p50 / p99 / max.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

import tfrec  # noqa: F401  (first: it sets up tf.keras before TensorFlow is imported)
import scann  # noqa: F401,I100  (its ops, before a ScaNN SavedModel loads)

from tfrec.serving import rest, server  # noqa: I100
from tfrec.serving.versions import _load_version, settle_heap


def run(body: bytes, calls: int) -> dict:
    pauses, started = [], {}

    def watch(phase, info):
        if info["generation"] != 2:
            return
        if phase == "start":
            started["t"] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started["t"])

    gc.callbacks.append(watch)
    try:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            rest._parse_json(body)
            times.append(time.perf_counter() - start)
    finally:
        gc.callbacks.remove(watch)
    ms = np.asarray(times) * 1000
    return {"full": len(pauses), "full_ms": float(np.median(pauses) * 1000) if pauses else 0.0,
            "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "max": float(ms.max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", type=Path, help="an exported version folder")
    parser.add_argument("--lists", type=int, default=200_000,
                        help="one-string lists in each body (rows of a row-format request)")
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    server._tune_memory()
    loaded = _load_version("m", 1, args.version)  # noqa: F841  (held: the model stays loaded)
    body = json.dumps({"instances": [[""]] * args.lists}).encode()
    gc.collect()
    print(f"{args.version}: {len(gc.get_objects()):,} objects tracked by the collector; "
          f"bodies of {args.lists:,} lists ({len(body) / 1e6:.1f} MB), {args.calls} parses each")
    rows = [("before", run(body, args.calls))]
    seconds, frozen = settle_heap()
    print(f"settle_heap: {seconds * 1000:.0f} ms, {frozen:,} objects frozen")
    rows.append(("after", run(body, args.calls)))
    print(f"{'':<8}{'full collections':>17}{'ms each (median)':>18}{'parse p50 ms':>14}"
          f"{'p99 ms':>9}{'max ms':>9}")
    for name, r in rows:
        print(f"{name:<8}{r['full']:>17}{r['full_ms']:>18.1f}{r['p50']:>14.2f}{r['p99']:>9.2f}"
              f"{r['max']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
