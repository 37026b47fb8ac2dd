"""Exporting trained runs as TF Serving SavedModels, and new versions with a changed
catalogue."""

from tfrec.exporter.catalogue import Catalogue
from tfrec.exporter.module import RecommenderModule, UserCache
from tfrec.exporter.saved_model import ExportResult, export, load_saved_model
from tfrec.exporter.update import CatalogueUpdate, update_catalogue

__all__ = ["Catalogue", "CatalogueUpdate", "ExportResult", "RecommenderModule", "UserCache",
           "export", "load_saved_model", "update_catalogue"]
