"""tfrec: item embeddings from user behaviour and item text, served with ANN search.

Importing tfrec sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported
anywhere (TensorFlow Recommenders needs Keras 2, i.e. ``tf_keras``), then checks
that the installed TensorFlow / tf-keras / tensorflow-text / TFRS / scann
versions work together.

It also turns on TensorFlow's pooling (BFC) allocator for CPU memory unless
``TF_CPU_ALLOCATOR_USE_BFC`` is already set: a skip-gram step builds tensors
of a hundred MB and more, and with the default allocator each one is fresh
memory the kernel must fault in page by page; pooled, they reuse the last
step's pages (training steps 1.5-1.8x faster; peak memory up to a quarter
higher). Set ``TF_CPU_ALLOCATOR_USE_BFC=false`` before importing tfrec to
keep TensorFlow's default. It takes effect if set before TensorFlow's first
operation in the process.
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
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

from tfrec import _compat  # noqa: E402

if os.environ.get("TFREC_SKIP_STACK_CHECK") != "1":
    _compat.check_stack(legacy_keras_in_time=_legacy_keras_before)

__version__ = "0.1.0"

from tfrec.errors import InputError  # noqa: E402

__all__ = ["InputError", "__version__"]
