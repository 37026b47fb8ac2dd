"""Apache Beam, imported once for the Beam jobs, with a clear error when the extra is missing."""

from __future__ import annotations

import logging

try:
    # Without its gcp extra Beam warns on import that the BigQuery client is missing;
    # these pipelines do not use it.
    logging.disable(logging.WARNING)
    import apache_beam as beam
except ImportError as err:  # the extra is not installed
    raise ImportError("the Beam pipeline needs Apache Beam: pip install 'tfrec[beam]'") from err
finally:
    logging.disable(logging.NOTSET)

__all__ = ["beam"]
