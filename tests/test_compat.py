import os
import subprocess
import sys

import pytest

from tfrec import _compat


def run_python(code):
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)


def test_wrong_versions_are_named():
    required = {"tensorflow": ("1.15", "why not"), "no-such-package-xyz": ("1.0", "needed")}
    with pytest.raises(_compat.IncompatibleStackError) as err:
        _compat.check_stack(required)
    message = str(err.value)
    assert "tensorflow: 2.20" in message and "need 1.15.*" in message
    assert "no-such-package-xyz: not installed" in message
    assert "pip install" in message


def test_installed_stack_passes():
    _compat.check_stack()


def test_import_sets_legacy_keras_before_tensorflow():
    result = run_python("import tfrec, tensorflow as tf, tensorflow_recommenders as tfrs\n"
                        "print(tf.keras.layers.Dense.__module__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("tf_keras.")


def test_tensorflow_imported_first_is_a_clear_error():
    result = run_python("import tensorflow\nimport tfrec")
    assert result.returncode != 0
    assert "imported before tfrec without TF_USE_LEGACY_KERAS=1" in result.stderr
