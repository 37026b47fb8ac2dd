"""Every script in examples/ runs (small sizes) and prints what it promises."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Arguments that keep each script small enough for the suite.
SMALL = {"keras_fit.py": ["--sessions", "1000", "--epochs", "3"]}


def run(script: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), *SMALL[script]],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_example_has_its_small_arguments():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(SMALL)


@pytest.mark.parametrize("script", sorted(SMALL))
def test_example_runs(script):
    out = run(script)
    if script == "keras_fit.py":
        lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        assert lines["streams"] == "pairs, next_items"
        first, last = (float(x) for x in lines["loss"].split(" -> "))
        assert last < first
        recommended = lines["recommended"].split()
        assert len(recommended) == 5 and not set(recommended) & set(lines["session"].split())
        # The session is two red kitchen items: most of the top 5 share the theme
        # (chance: a quarter of the catalogue).
        assert sum(item.startswith("red-") for item in recommended) >= 3, out
