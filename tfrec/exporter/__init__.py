"""Exporting trained runs as TF Serving SavedModels, and new versions with a changed
catalogue.

The names below are imported on first use (PEP 562), so `tfrec.exporter.layout`
(the files of a version, no TensorFlow) can be imported on its own cheaply.
"""

from __future__ import annotations

import importlib
import typing

_LAZY = {
    "Catalogue": "tfrec.exporter.catalogue",
    "CatalogueUpdate": "tfrec.exporter.update",
    "ExportResult": "tfrec.exporter.saved_model",
    "ModelFolder": "tfrec.exporter.layout",
    "RecommenderModule": "tfrec.exporter.module",
    "UserCache": "tfrec.exporter.module",
    "VersionFolder": "tfrec.exporter.layout",
    "export": "tfrec.exporter.saved_model",
    "load_saved_model": "tfrec.exporter.saved_model",
    "release_saved_model": "tfrec.exporter.saved_model",
    "update_catalogue": "tfrec.exporter.update",
}

__all__ = sorted(_LAZY)

if typing.TYPE_CHECKING:
    from tfrec.exporter.catalogue import Catalogue  # noqa: F401
    from tfrec.exporter.layout import ModelFolder, VersionFolder  # noqa: F401
    from tfrec.exporter.module import RecommenderModule, UserCache  # noqa: F401
    from tfrec.exporter.saved_model import (ExportResult, export, load_saved_model,  # noqa: F401
                                            release_saved_model)
    from tfrec.exporter.update import CatalogueUpdate, update_catalogue  # noqa: F401


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tfrec.exporter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
