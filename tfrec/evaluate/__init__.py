"""Offline evaluation: held-out cases, ranking metrics."""
