"""tfrec: item embeddings from user behaviour and item text, served with ANN search.

The public API is the names in ``tfrec.__all__``, one ``import tfrec`` away:
settings (``tfrec.RunConfig``, ``tfrec.load_run_config`` ...), the layers,
tasks, samplers and model (``tfrec.ItemEncoder``, ``tfrec.RetrievalTask``,
``tfrec.InBatchSampler``, ``tfrec.HybridModel``, ``tfrec.build_model`` ...)
and the workflows (``tfrec.train``, ``tfrec.export``,
``tfrec.load_saved_model``). They are imported on first use, so
``import tfrec`` itself does not import TensorFlow; ``tfrec.custom_objects()``
imports every Keras class tfrec defines (so that Keras can load a model of
one's own holding them).

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

TensorFlow's C++ log is hidden (``TF_CPP_MIN_LOG_LEVEL=3``) unless
``TF_CPP_MIN_LOG_LEVEL`` is already set: set it (``0``: everything) before
importing tfrec to see it.
"""

from __future__ import annotations

import os

import sys

# Whether tf.keras can still become Keras 2 depends on the variable's value at
# the moment TensorFlow was first imported, so remember what it was.
_legacy_keras_before = (os.environ.get("TF_USE_LEGACY_KERAS") == "1"
                        or "tensorflow" not in sys.modules)
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ log (oneDNN, CUDA, cuInit lines at start-up) stays quiet
# unless the user asked for it: set TF_CPP_MIN_LOG_LEVEL (0 shows everything)
# before importing tfrec.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

from tfrec import _compat  # noqa: E402

if os.environ.get("TFREC_SKIP_STACK_CHECK") != "1":
    _compat.check_stack(legacy_keras_in_time=_legacy_keras_before)

__version__ = "0.1.0"

import importlib  # noqa: E402
import typing  # noqa: E402

from tfrec.errors import InputError  # noqa: E402

# The public API: name -> the module that defines it. Imported on first use
# (PEP 562), so `import tfrec` stays cheap (no TensorFlow) and still sets the
# environment above before anything imports TensorFlow.
_LAZY = {
    # Settings.
    "RunConfig": "tfrec.config",
    "DataConfig": "tfrec.config",
    "PairConfig": "tfrec.config",
    "ModelConfig": "tfrec.config",
    "TextConfig": "tfrec.config",
    "TrainConfig": "tfrec.config",
    "IndexConfig": "tfrec.config",
    "load_run_config": "tfrec.run",
    # Data of a run: split, vocabulary, pipelines, held-out cases.
    "prepare_training_data": "tfrec.run",
    # Layers and model.
    "TextEncoder": "tfrec.towers.text_encoder",
    "ItemEncoder": "tfrec.towers.item_encoder",
    "QueryTower": "tfrec.towers.query_tower",
    "HybridModel": "tfrec.models.hybrid",
    "build_model": "tfrec.models.builder",
    # Losses and the retrieval task's negative samplers.
    "SkipGramTask": "tfrec.tasks.skipgram",
    "ListwiseSoftmaxTask": "tfrec.tasks.listwise",
    "RetrievalTask": "tfrec.tasks.retrieval",
    "InBatchSampler": "tfrec.tasks.samplers",
    "CatalogueSampler": "tfrec.tasks.samplers",
    "UniformSampler": "tfrec.tasks.samplers",
    "MixedSampler": "tfrec.tasks.samplers",
    "build_optimizer": "tfrec.optimizers",
    # Workflows.
    "train": "tfrec.ranking.two_stage",  # what `tfrec train` runs: both stages by default
    "load_run": "tfrec.run",
    "export": "tfrec.exporter.saved_model",
    "load_saved_model": "tfrec.exporter.saved_model",
}

# The modules that define tfrec's Keras-serialisable classes (`custom_objects`).
_KERAS_MODULES = ("tfrec.towers.tokenizer", "tfrec.towers.text_encoder",
                  "tfrec.towers.item_encoder", "tfrec.towers.query_tower",
                  "tfrec.tasks.skipgram", "tfrec.tasks.retrieval", "tfrec.tasks.listwise",
                  "tfrec.models.hybrid", "tfrec.optimizers", "tfrec.ranking.ranker",
                  "tfrec.ranking.item_scorer", "tfrec.ranking.features")


def custom_objects() -> dict:
    """Every Keras class tfrec defines, by its registered name ("tfrec>ItemEncoder").

    Calling it registers them with Keras, so that `tf_keras.models.load_model`
    reads a model of one's own that holds tfrec layers (a `HybridModel` or a
    `CandidateRanker` file loads without it); the dict is what Keras'
    `custom_objects=` takes.
    """
    for module in _KERAS_MODULES:
        importlib.import_module(module)
    from tf_keras.utils import get_custom_objects

    return {name: obj for name, obj in get_custom_objects().items()
            if name.startswith("tfrec>")}


__all__ = ["InputError", "__version__", "custom_objects", *_LAZY]

if typing.TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from tfrec.config import (  # noqa: F401
        DataConfig, IndexConfig, ModelConfig, PairConfig, RunConfig, TextConfig, TrainConfig)
    from tfrec.exporter.saved_model import export, load_saved_model  # noqa: F401
    from tfrec.models.builder import build_model  # noqa: F401
    from tfrec.models.hybrid import HybridModel  # noqa: F401
    from tfrec.optimizers import build_optimizer  # noqa: F401
    from tfrec.run import load_run, load_run_config, prepare_training_data  # noqa: F401
    from tfrec.tasks.retrieval import RetrievalTask  # noqa: F401
    from tfrec.tasks.samplers import (  # noqa: F401
        CatalogueSampler, InBatchSampler, MixedSampler, UniformSampler)
    from tfrec.tasks.listwise import ListwiseSoftmaxTask  # noqa: F401
    from tfrec.tasks.skipgram import SkipGramTask  # noqa: F401
    from tfrec.towers.item_encoder import ItemEncoder  # noqa: F401
    from tfrec.towers.query_tower import QueryTower  # noqa: F401
    from tfrec.towers.text_encoder import TextEncoder  # noqa: F401
    from tfrec.ranking.two_stage import train  # noqa: F401


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        # Not a public name: Python then looks for a submodule (`from tfrec import cli`).
        raise AttributeError(f"module 'tfrec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
