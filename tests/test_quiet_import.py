"""`import tfrec` keeps TensorFlow's C++ start-up log quiet unless the user asks for it."""

import os
import re
import subprocess
import sys
from pathlib import Path

# A TensorFlow C++ log line: "2026-01-01 10:00:00.000000: E external/...cc:51] ...".
NATIVE_LOG = re.compile(r"^\S+ \S+: [IWEF] \S+:\d+\]", re.MULTILINE)
# Import tfrec, then make TensorFlow start (its first operation probes CUDA).
SCRIPT = "import tfrec; import tensorflow as tf; print(int(tf.constant(1) + 1))"


def run_python(script, **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_USE_LEGACY_KERAS", "TFREC_VERBOSE")}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**environ, **env}, timeout=300)


def test_import_tfrec_prints_no_tensorflow_start_up_lines():
    result = run_python(SCRIPT)
    assert result.returncode == 0 and result.stdout.strip() == "2", result.stderr
    assert not NATIVE_LOG.search(result.stderr), result.stderr
    for word in ("cuInit", "oneDNN", "cuda"):
        assert word not in result.stderr
    plain = run_python("import tfrec")
    assert plain.returncode == 0 and plain.stderr == ""


def test_a_level_the_user_set_is_kept_and_brings_the_log_back():
    result = run_python(SCRIPT + "; import os; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])",
                        TF_CPP_MIN_LOG_LEVEL="0")
    assert result.returncode == 0 and result.stdout.split() == ["2", "0"], result.stderr
    assert NATIVE_LOG.search(result.stderr), result.stderr
