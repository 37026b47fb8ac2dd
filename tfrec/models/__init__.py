"""Models wiring the towers to TFRS tasks."""

from tfrec.models.hybrid import HybridModel, build_model

__all__ = ["HybridModel", "build_model"]
