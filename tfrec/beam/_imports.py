"""What the Beam jobs share: Apache Beam, imported with a clear error when the extra is
missing, and reading a job's counters."""

from __future__ import annotations

import contextlib
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

from apache_beam.metrics.metric import MetricsFilter  # noqa: E402,I100


def make_pipeline(pipeline_args, key: str):
    """A `beam.Pipeline` of the given options; a runner Beam does not know is an
    InputError naming `key` (Beam's own error is a ValueError from deep inside)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from tfrec.errors import InputError

    options = PipelineOptions(list(pipeline_args))
    try:
        return beam.Pipeline(options=options), options
    except ValueError as err:
        if "runner" not in str(err).lower():
            raise
        raise InputError(str(err).split(". Valid values")[0] + " (a Beam runner, e.g. "
                         "DirectRunner, DataflowRunner, FlinkRunner, SparkRunner)",
                         key=key) from None


class _RaisedAnyway(logging.Filter):
    """Drops Beam's own log of an error the job raises to its caller anyway (bad input,
    Ctrl-C): the caller names it in one line; Beam's copy is a traceback before it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("apache_beam"):
            return True
        from tfrec.errors import InputError

        kind = record.exc_info[0] if record.exc_info else None
        if kind is not None and issubclass(kind, (InputError, KeyboardInterrupt)):
            return False
        text = record.getMessage()
        return "tfrec.errors.InputError" not in text and "KeyboardInterrupt" not in text


@contextlib.contextmanager
def beam_errors_raised_not_logged():
    """While a job runs: Beam's log lines about an InputError or an interrupt are left out
    (the error still reaches the caller, which names it)."""
    handlers = logging.getLogger().handlers
    quiet = _RaisedAnyway()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def counter(result, namespace: str, name: str) -> int | None:
    """A finished pipeline's counter `name` of `namespace` (None: the runner keeps no
    metrics)."""
    try:
        counters = result.metrics().query(
            MetricsFilter().with_namespace(namespace).with_name(name))["counters"]
    except Exception:  # noqa: BLE001  (a runner without metrics support)
        return None
    return sum(c.committed if c.committed is not None else c.attempted for c in counters)


__all__ = ["beam", "beam_errors_raised_not_logged", "counter", "make_pipeline"]
