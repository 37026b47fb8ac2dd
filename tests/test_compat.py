import configparser
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tfrec import _compat

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"


def run_python(code):
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)


def setup_cfg_pins():
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    lines = parser.get("options", "install_requires").splitlines()
    return _compat.parse_pins([line.split("#")[0] for line in lines])


def test_wrong_versions_are_named():
    required = {"tensorflow": ("1.15.*", "why not"), "no-such-package-xyz": ("1.0", "needed")}
    with pytest.raises(_compat.IncompatibleStackError) as err:
        _compat.check_stack(required)
    message = str(err.value)
    assert f"tensorflow: {metadata.version('tensorflow')} installed" in message
    assert "need tensorflow==1.15.* (why not)" in message
    assert "no-such-package-xyz: not installed, need no-such-package-xyz==1.0" in message
    assert "pip install" in message


def test_pins_parsed_from_requirement_strings():
    pins = _compat.parse_pins(["tensorflow==2.20.*", "scann[tf]==1.4.2", "grpcio",
                               "numpy<2.5,>=2", 'apache-beam==2.77.*; extra == "beam"',
                               "TF_Keras==2.20.*"])
    assert pins == {"tensorflow": "2.20.*", "scann": "1.4.2", "tf-keras": "2.20.*"}
    assert _compat.matches("2.20.0", "2.20.*") and _compat.matches("2.20", "2.20.*")
    assert not _compat.matches("2.21.0", "2.20.*") and not _compat.matches("2.200.1", "2.20.*")
    assert _compat.matches("0.7.7", "0.7.7") and not _compat.matches("0.7.70", "0.7.7")


def test_the_checked_pins_are_setup_cfgs():
    # setup.cfg owns the versions; the check reads them from the installed metadata.
    checked = {dist: pin for dist, (pin, _) in _compat.pinned_stack().items()}
    assert set(checked) == set(_compat.STACK)
    expected = setup_cfg_pins()
    assert checked == {dist: expected[dist] for dist in _compat.STACK}
    source = Path(_compat.__file__).read_text()
    assert not any(pin in source for pin in checked.values())


def test_installed_stack_passes():
    for dist, (pin, _) in _compat.pinned_stack().items():
        assert _compat.matches(metadata.version(dist), pin), dist
    _compat.check_stack()  # raises on a mismatch


def test_import_sets_legacy_keras_before_tensorflow():
    result = run_python("import tfrec, tensorflow as tf, tensorflow_recommenders as tfrs\n"
                        "print(tf.keras.layers.Dense.__module__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("tf_keras.")


def test_tensorflow_imported_first_is_a_clear_error():
    result = run_python("import tensorflow\nimport tfrec")
    assert result.returncode != 0
    assert "imported before tfrec without TF_USE_LEGACY_KERAS=1" in result.stderr
    # The packages are right: no advice to reinstall them.
    assert "pip install" not in result.stderr
