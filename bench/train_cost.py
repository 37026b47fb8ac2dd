"""The cost of the ranking stage at training time: `tfrec train` with and without it.

    TFREC_DATA=/work/shared/data python bench/train_cost.py              # Online Retail
    TFREC_DATA=/work/shared/data python bench/train_cost.py \\
        --config tfrec/configs/goodbooks.yaml
    TFREC_DATA=/work/shared/data python bench/train_cost.py --whole      # all of `make run`

Runs `tfrec train` twice in one command, one after the other, each in its
own process: the library defaults (two stages) and `ranking.enabled=false`
(the two-tower alone, on the whole training period), with the same seed.
Prints, side by side, the wall time and the CPU time (user + system, of the
child process: less sensitive than wall time to other jobs on the cores)
and the held-out HR@10 each run wrote, and the ratio of the two. With
--variant KEY=VALUE (repeatable) a third run, two stages with those settings
too, is timed in the same command (e.g. an earlier recipe beside the
defaults), and its ratio to the two-tower printed. With --whole each run is
the whole `make run` instead: `tfrec prepare`, `tfrec train` and `tfrec
export` (the two-tower alone exports its index; two stages export both), each
step's wall time printed beside the sum.
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

ROOT = Path(__file__).resolve().parents[1]


def _timed(command: list) -> tuple[float, float]:
    """(wall s, CPU s of the child) of one `python -m tfrec` command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tfrec", "-q", *command], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(config: str | None, run_dir: Path, enabled: bool, seed: int,
        settings: tuple[str, ...] = (), whole: bool = False) -> dict:
    chosen = ["--set", f"train.seed={seed}",
              "--set", f"ranking.enabled={'true' if enabled else 'false'}"]
    for setting in settings:
        chosen += ["--set", setting]
    if config:
        chosen[:0] = ["--config", config]
    steps = {}
    if whole:
        steps["prepare"] = _timed(["prepare", *chosen, "--out", str(run_dir) + "-data"])
    steps["train"] = _timed(["train", "--run-dir", str(run_dir), "--overwrite", *chosen])
    if whole:
        steps["export"] = _timed(["export", "--run", str(run_dir), "--model-dir",
                                  str(run_dir) + "-model"])
    evaluation = json.loads((run_dir / "eval.json").read_text())
    return {"wall": sum(w for w, _ in steps.values()), "cpu": sum(c for _, c in steps.values()),
            "hr": evaluation["all"]["hr@10"], "steps": {k: w for k, (w, _) in steps.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="run config (default: the bundled Online Retail one)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                        help="a third run: two stages with this setting too (repeatable)")
    parser.add_argument("--whole", action="store_true",
                        help="time the whole `make run`: prepare, train and export")
    args = parser.parse_args(argv)
    runs = [("two-tower alone", False, ()), ("two stages", True, ())]
    if args.variant:
        runs.append(("two stages, variant", True, tuple(args.variant)))
    with tempfile.TemporaryDirectory(prefix="tfrec-train-cost-") as tmp:
        rows = {name: run(args.config, Path(tmp) / f"run{i}", enabled, args.seed, settings,
                          args.whole)
                for i, (name, enabled, settings) in enumerate(runs)}
    if args.variant:
        print(f"variant: {' '.join(args.variant)}")
    steps = list(rows["two-tower alone"]["steps"]) if args.whole else []
    print(f"{'run':<22}{'wall s':>9}{'CPU s':>9}{'HR@10':>9}"
          + "".join(f"{step + ' s':>10}" for step in steps))
    for name, row in rows.items():
        print(f"{name:<22}{row['wall']:>9.0f}{row['cpu']:>9.0f}{row['hr']:>9.4f}"
              + "".join(f"{row['steps'][step]:>10.0f}" for step in steps))
    base = rows["two-tower alone"]
    for name, row in rows.items():
        if name != "two-tower alone":
            label = "ratio" if name == "two stages" else "ratio, variant"
            print(f"{label:<22}"
                  f"{row['wall'] / base['wall']:>9.2f}{row['cpu'] / base['cpu']:>9.2f}"
                  f"{row['hr'] / base['hr']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
