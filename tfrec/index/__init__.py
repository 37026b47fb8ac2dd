"""Nearest-neighbour indexes over item embeddings (ScaNN, brute force)."""

from tfrec.index.ann import IndexConfig, build_index, recall_at_k, scann_parameters

__all__ = ["IndexConfig", "build_index", "recall_at_k", "scann_parameters"]
