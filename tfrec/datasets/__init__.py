"""Data sets bundled with tfrec (see ATTRIBUTION.md for sources and licences)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def online_retail_path() -> Path:
    """Path of the bundled UCI Online Retail CSV (CC BY 4.0, see ATTRIBUTION.md)."""
    return _HERE / "online_retail.csv.gz"
