"""Exporting trained runs as TF Serving SavedModels."""

from tfrec.exporter.saved_model import (ExportResult, RecommenderModule, UserCache, export,
                                        load_saved_model)

__all__ = ["ExportResult", "RecommenderModule", "UserCache", "export", "load_saved_model"]
