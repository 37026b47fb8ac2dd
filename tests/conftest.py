"""Shared fixtures: tiny inline event logs written to temporary files."""

from __future__ import annotations

import textwrap

import pytest

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any test imports TensorFlow)


@pytest.fixture
def write(tmp_path):
    """write(name, text) -> path of a file holding the dedented text."""

    def _write(name: str, text: str):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write
