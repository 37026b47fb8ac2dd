"""Checks that the installed TensorFlow stack is one tfrec works with.

Runs on ``import tfrec`` from package metadata alone, so it costs no
TensorFlow import. TensorFlow Recommenders needs Keras 2 (``tf_keras``), and
the ScaNN ops are compiled against one TensorFlow release: a mismatch fails
late and obscurely (``Op type not registered``, Keras 3 errors deep in TFRS),
so it is caught here with a message that says what to install.
"""

from __future__ import annotations

from importlib import metadata

# distribution name -> (required "major.minor" prefix or exact version, why)
REQUIRED = {
    "tensorflow": ("2.20", "the stack is pinned to TensorFlow 2.20"),
    "tf-keras": ("2.20", "TensorFlow Recommenders needs Keras 2 matching TensorFlow"),
    "tensorflow-text": ("2.20", "tensorflow-text ops are built for one TensorFlow release"),
    "tensorflow-recommenders": ("0.7.7", "tested with TFRS 0.7.7"),
    "scann": ("1.4.2", "scann 1.4.2 is the release built for TensorFlow 2.20"),
}

INSTALL_HINT = "pip install -e . (or: make test), which installs the pinned stack from setup.cfg"


class IncompatibleStackError(ImportError):
    """The installed TensorFlow / Keras / scann versions do not work together."""


def _matches(version: str, wanted: str) -> bool:
    return version == wanted or version.startswith(wanted + ".")


def check_stack(required: dict[str, tuple[str, str]] | None = None,
                legacy_keras_in_time: bool = True) -> None:
    """Raises IncompatibleStackError naming every package of the wrong version.

    Args:
      required: distribution name -> (version prefix, reason); defaults to
        REQUIRED.
      legacy_keras_in_time: False when TensorFlow had been imported before
        ``TF_USE_LEGACY_KERAS=1`` was set, so ``tf.keras`` is Keras 3.

    Packages that are not installed at all are reported too. Set
    ``TFREC_SKIP_STACK_CHECK=1`` to bypass (at your own risk).

    Raises:
      IncompatibleStackError: a required package is missing or mismatched, or
        TensorFlow was imported before tfrec without ``TF_USE_LEGACY_KERAS=1``.
    """
    problems = []
    for dist, (wanted, why) in (required or REQUIRED).items():
        try:
            found = metadata.version(dist)
        except metadata.PackageNotFoundError:
            problems.append(f"  {dist}: not installed, need {wanted}.* ({why})")
            continue
        if not _matches(found, wanted):
            problems.append(f"  {dist}: {found} installed, need {wanted}.* ({why})")
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
        raise IncompatibleStackError(
            "tfrec cannot run with the installed packages:\n" + "\n".join(problems)
            + f"\nFix: {INSTALL_HINT}")
