"""The model wiring the towers to the tasks, and the builder from the model settings."""

from tfrec.models.builder import (build_item_encoder, build_model, build_query_tower,
                                  build_tasks, required_streams)
from tfrec.models.hybrid import HybridModel

__all__ = ["HybridModel", "build_item_encoder", "build_model", "build_query_tower",
           "build_tasks", "required_streams"]
