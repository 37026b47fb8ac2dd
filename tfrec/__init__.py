"""tfrec: item embeddings from user behaviour and item text, served with ANN search.

Importing tfrec sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported
anywhere (TensorFlow Recommenders needs Keras 2, i.e. ``tf_keras``), then checks
that the installed TensorFlow / tf-keras / tensorflow-text / TFRS / scann
versions work together.
"""

from __future__ import annotations

import os

import sys

# Whether tf.keras can still become Keras 2 depends on the variable's value at
# the moment TensorFlow was first imported, so remember what it was.
_legacy_keras_before = (os.environ.get("TF_USE_LEGACY_KERAS") == "1"
                        or "tensorflow" not in sys.modules)
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfrec import _compat  # noqa: E402

if os.environ.get("TFREC_SKIP_STACK_CHECK") != "1":
    _compat.check_stack(legacy_keras_in_time=_legacy_keras_before)

__version__ = "0.1.0"

from tfrec.errors import InputError  # noqa: E402

__all__ = ["InputError", "__version__"]
