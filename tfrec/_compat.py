"""Checks that the installed TensorFlow stack is one tfrec works with.

Runs on ``import tfrec`` from package metadata alone, so it costs no
TensorFlow import. TensorFlow Recommenders needs Keras 2 (``tf_keras``), and
the ScaNN ops are compiled against one TensorFlow release: a mismatch fails
late and obscurely (``Op type not registered``, Keras 3 errors deep in TFRS),
so it is caught here with a message that says what to install.

The versions themselves are pinned once, in ``setup.cfg``
(``install_requires``); this module reads them from the installed tfrec
distribution's metadata (or, in a source tree that was never installed, from
``setup.cfg`` itself).
"""

from __future__ import annotations

import configparser
import re
from importlib import metadata
from pathlib import Path

# The packages whose pinned version is checked, and why a mismatch matters.
STACK = {
    "tensorflow": "the stack is pinned to one TensorFlow release",
    "tf-keras": "TensorFlow Recommenders needs Keras 2 matching TensorFlow",
    "tensorflow-text": "tensorflow-text ops are built for one TensorFlow release",
    "tensorflow-recommenders": "the TFRS release tfrec is tested with",
    "scann": "the ScaNN release built for the pinned TensorFlow release",
}

INSTALL_HINT = "pip install -e . (or: make test), which installs the pinned stack from setup.cfg"

# "name[extras]==version" (a marker such as `; extra == "test"` is not an install pin).
_PIN = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)\s*$")
_SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"


class IncompatibleStackError(ImportError):
    """The installed TensorFlow / Keras / scann versions do not work together."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(requirements: list[str]) -> dict[str, str]:
    """Requirement strings -> {distribution: pinned version} for the exact (==) pins.

    A trailing ``.*`` is kept ("1.2.*"); requirements with a marker or
    another operator are not pins.
    """
    pins = {}
    for requirement in requirements:
        match = _PIN.match(requirement)
        if match:
            pins[_canonical(match.group(1))] = match.group(2)
    return pins


def installed_requirements() -> list[str]:
    """tfrec's install requirements: the installed distribution's metadata, else the
    source tree's setup.cfg, else none."""
    try:
        return list(metadata.requires("tfrec") or [])
    except metadata.PackageNotFoundError:
        pass
    if _SETUP_CFG.exists():
        parser = configparser.ConfigParser()
        parser.read(_SETUP_CFG)
        text = parser.get("options", "install_requires", fallback="")
        return [line.split("#")[0].strip() for line in text.splitlines()
                if line.split("#")[0].strip()]
    return []


def pinned_stack() -> dict[str, tuple[str, str]]:
    """The stack to check: distribution name -> (pinned version, why)."""
    pins = parse_pins(installed_requirements())
    return {dist: (pins[dist], why) for dist, why in STACK.items() if dist in pins}


def matches(version: str, pin: str) -> bool:
    """Whether an installed version satisfies ``==pin`` ("1.2.*" or "1.2.3")."""
    if pin.endswith(".*"):
        prefix = pin[:-2]
        return version == prefix or version.startswith(prefix + ".")
    return version == pin


def check_stack(required: dict[str, tuple[str, str]] | None = None,
                legacy_keras_in_time: bool = True) -> None:
    """Raises IncompatibleStackError naming every package of the wrong version.

    Args:
      required: distribution name -> (pinned version, reason); defaults to
        `pinned_stack()` (setup.cfg's pins).
      legacy_keras_in_time: False when TensorFlow had been imported before
        ``TF_USE_LEGACY_KERAS=1`` was set, so ``tf.keras`` is Keras 3.

    Packages that are not installed at all are reported too. Set
    ``TFREC_SKIP_STACK_CHECK=1`` to bypass (at your own risk).

    Raises:
      IncompatibleStackError: a required package is missing or mismatched, or
        TensorFlow was imported before tfrec without ``TF_USE_LEGACY_KERAS=1``.
    """
    problems = []
    for dist, (wanted, why) in (pinned_stack() if required is None else required).items():
        try:
            found = metadata.version(dist)
        except metadata.PackageNotFoundError:
            problems.append(f"  {dist}: not installed, need {dist}=={wanted} ({why})")
            continue
        if not matches(found, wanted):
            problems.append(f"  {dist}: {found} installed, need {dist}=={wanted} ({why})")
    try:
        keras_version = metadata.version("keras")
    except metadata.PackageNotFoundError:
        keras_version = None
    if not legacy_keras_in_time:
        problems.append(
            "  tensorflow was imported before tfrec without TF_USE_LEGACY_KERAS=1, so tf.keras is "
            f"Keras {keras_version or '3'}; import tfrec first or set TF_USE_LEGACY_KERAS=1 "
            "in the environment")
    if problems:
        # Only the import order wrong: the packages are fine, reinstalling fixes nothing.
        fix = ("" if not legacy_keras_in_time and len(problems) == 1
               else f"\nFix the versions: {INSTALL_HINT}")
        raise IncompatibleStackError(
            "tfrec cannot run with the installed packages:\n" + "\n".join(problems) + fix)
