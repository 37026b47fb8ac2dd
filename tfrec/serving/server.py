"""`tfrec serve`: a model server that speaks TF Serving's gRPC (and REST) API.

Stock `tensorflow_model_server` has neither the ScaNN nor the tensorflow-text
ops. This server loads the SavedModels in a Python process that registered
them, and answers TF Serving clients with the servicers shipped in
`tensorflow-serving-api`:

- PredictionService.Predict and GetModelMetadata (Classify, Regress,
  MultiInference answer UNIMPLEMENTED);
- ModelService.GetModelStatus and HandleReloadConfigRequest (off unless --allow_reload).

The parts: `versions` (which versions are loaded), `predict` (request
checks and the model call, shared by both APIs), `grpc_api` (the servicers),
`rest` (the REST API); this module wires them together and owns the
process's life: the listening ports and a graceful stop.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import gc
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from tfrec.config import ServeConfig
from tfrec.errors import InputError
from tfrec.serving.config import model_roots, read_model_config
from tfrec.serving.grpc_api import ModelServicer, PredictionServicer
from tfrec.serving.pacing import ErrorPace
from tfrec.serving.predict import MAX_MESSAGE_BYTES, Predictor, RequestLimits
from tfrec.serving.rest import RestServer
from tfrec.serving.versions import ModelManager

logger = logging.getLogger(__name__)

# How long `serve_forever` waits for the first loads before saying which are still loading.
FIRST_LOAD_WAIT_SECONDS = 60.0

# Blocks of this size or more (a big request body) are mapped on their own and given back
# to the system when freed (glibc's M_MMAP_THRESHOLD).
MMAP_THRESHOLD_BYTES = 4 * 2**20
# Python's cyclic garbage collector: container objects allocated between young collections.
GC_YOUNG_THRESHOLD = 100_000
# How long a thread holding the interpreter runs before a thread waiting for it may take it
# (Python's default: 5 ms).
SWITCH_INTERVAL_SECONDS = 0.0005
# gRPC error answers held to their client's pace at once (`tfrec.serving.pacing`).
HELD_ERRORS = 2


def _tune_memory() -> None:
    """Keeps requests that allocate much, but briefly, from costing the whole process.

    - glibc's mmap threshold otherwise rises to the largest block freed (up to 32 MB): a
      30 MB request body is then carved from a per-thread arena that keeps it, and every
      REST connection has a thread, so refused big bodies grew the process by 500 MB.
      It is fixed at `MMAP_THRESHOLD_BYTES` (no effect without glibc).
    - Python collects its youngest objects every 700 container allocations, so a JSON
      body of a few thousand lists has some of them promoted to the oldest generation, and
      every few hundred such requests trigger a full collection, which walks every object
      of the loaded models (100 ms or more, holding the interpreter): good calls beside
      them waited 8-13 times longer at p99. Young collections are made every
      `GC_YOUNG_THRESHOLD` allocations instead: short-lived request objects die first.
      (And the loaded models are frozen out of full collections once loaded:
      `tfrec.serving.versions.settle_heap`.)
    - A thread waiting for the interpreter waits until the thread holding it has run
      Python's switch interval (5 ms) when that thread does not release it on its own:
      a good call's thread, back from the model, waited that long behind a REST thread
      counting or parsing a hostile body (a 30 MB body is 40 ms of counting). At
      `SWITCH_INTERVAL_SECONDS` a thread beside such work waited 1.2-1.5 ms at p99
      instead of 3.8-4.1 ms (bench/RESULTS.md, Serving under hostile traffic).
    """
    try:
        ctypes.CDLL(None).mallopt(-3, MMAP_THRESHOLD_BYTES)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(GC_YOUNG_THRESHOLD, young), older, oldest)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


class ModelServer:
    """The gRPC (and optional REST) server over one ModelManager.

    Args:
      config: the `serve` settings (`tfrec.config.ServeConfig`): the model
        config file, ports, polling, request limits, the REST API's timeout
        and connection cap, the grace period. The gRPC port is bound
        exclusively: a second server on the same port refuses to start.
      batcher: merges concurrent calls (`tfrec.serving.batching.Batcher`).
      max_message_bytes: largest gRPC message either way (and REST body, with
        `max_request_bytes` if smaller).
      workers: gRPC worker threads (calls served at once).
    """

    def __init__(self, config: ServeConfig, batcher=None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, workers: int = 8):
        _tune_memory()
        self.config_file = Path(config.model_config_file)
        entries = read_model_config(self.config_file)
        self.manager = ModelManager(entries, config.file_system_poll_wait_seconds)
        self.model_roots = model_roots(config.model_roots, entries)
        self.config_poll_seconds = config.model_config_file_poll_wait_seconds
        self.grace = config.grace_period_seconds
        self._config_mtime = self.config_file.stat().st_mtime
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.so_reuseport", 0)]  # a second server on this port must fail
        # Error answers held to their client's pace take workers of their own
        # (`tfrec.serving.pacing`), so the calls served at once stay `workers`.
        self.error_pace = pace = ErrorPace(config.max_errors_per_second,
                                           max_held=HELD_ERRORS)
        self.server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(workers + HELD_ERRORS), options=options)
        self.predictor = Predictor(self.manager, RequestLimits.from_config(config), batcher)
        host, port, rest_port = config.host, config.port, config.rest_api_port
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.predictor, pace), self.server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.manager, self.model_roots, config.allow_reload,
                          config.allow_version_labels_for_unavailable_models), self.server)
        self.host, self._config = host, config
        self._max_body_bytes = min(max_message_bytes, config.max_request_bytes)
        # The ports are bound once the models' first loads are done (`start`), as TF
        # Serving opens its ports: until then a client's connection is refused, which it
        # retries, and a readiness probe does not see a server with nothing loaded. A port
        # in use is named here, before any model loads.
        _check_free(host, port, config.key("port"), "(another tfrec serve?)")
        if rest_port is not None and rest_port != 0:
            _check_free(host, rest_port, config.key("rest_api_port"), "")
        self.port = self.address = self.rest = None
        self._stopped = threading.Event()
        self._still_loading: list[str] = []

    def _listen(self) -> None:
        """Binds the gRPC port (and the REST one) and starts answering on them."""
        config, host = self._config, self.host
        wanted = f"{host}:{config.port}"
        try:
            port = self.server.add_insecure_port(wanted)
        except RuntimeError:  # newer grpcio raises where older returned 0
            port = 0
        if port == 0:
            raise InputError(f"cannot listen on {wanted}: the port is in use (another "
                             "tfrec serve?) or the address is not this host's",
                             key=config.key("port"))
        self.port = port
        self.address = f"{host}:{self.port}"  # the port bound (--port 0: a free one)
        if config.rest_api_port is not None:
            try:
                self.rest = RestServer(self.predictor, host, config.rest_api_port,
                                       read_timeout=config.rest_api_timeout_seconds,
                                       max_connections=config.rest_api_max_connections,
                                       max_connections_per_address=(
                                           config.rest_api_max_connections_per_address),
                                       header_timeout=config.rest_api_header_timeout_seconds,
                                       min_body_rate=config.rest_api_min_bytes_per_second,
                                       error_rate=config.max_errors_per_second,
                                       max_body_bytes=self._max_body_bytes,
                                       limits=self.predictor.limits)
            except OSError as err:
                self.server.stop(0)
                raise InputError(f"cannot listen on {host}:{config.rest_api_port}: "
                                 f"{err.strerror}", key=config.key("rest_api_port")) from None
        self.server.start()
        if self.rest is not None:
            self.rest.start()
            logger.info("REST API on %s:%d", self.host, self.rest.port)

    def start(self, first_load_wait: float = None) -> None:
        """Loads the models, then opens the ports: once the first load attempt of every
        model has finished (loaded or failed), or after `first_load_wait` seconds
        (default `FIRST_LOAD_WAIT_SECONDS`; `still_loading` names the models then still
        loading), or at once when the server is stopped meanwhile.

        Raises:
          InputError: a port taken since the server was made.
        """
        wait = FIRST_LOAD_WAIT_SECONDS if first_load_wait is None else first_load_wait
        self.manager.start()
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            self._still_loading = self.wait_first_loads(min(0.5, max(left, 0.0)))
            if not self._still_loading or left <= 0 or self._stopped.is_set():
                break
        if self._stopped.is_set():
            return
        self._listen()
        if self.config_poll_seconds > 0:
            threading.Thread(target=self._watch_config, daemon=True,
                             name="config-watcher").start()

    def wait_first_loads(self, timeout: float | None = None) -> list[str]:
        """Waits until the first load attempt of every configured model has finished.

        Returns:
          the models still loading at `timeout`.
        """
        return self.manager.wait_first_sync(timeout)

    @property
    def still_loading(self) -> list[str]:
        """The models whose first load was still running when the ports opened."""
        return list(self._still_loading)

    def announcement(self, still_loading: list[str]) -> str:
        """What the server serves, once the first loads are done (or `still_loading`)."""
        rest = f", {self.host}:{self.rest.port} (REST)" if self.rest is not None else ""
        batching = ", batching on" if self.predictor.batcher is not None else ""
        models = "; ".join(self.manager.describe(name) for name in sorted(self.manager.entries))
        text = (f"serving on {self.address} (gRPC){rest}, TF Serving API{batching}; Ctrl-C or "
                f"SIGTERM stops. Models: {models or 'none configured'}")
        if still_loading:
            text += (f" (still loading after {FIRST_LOAD_WAIT_SECONDS:g} s: "
                     f"{', '.join(still_loading)})")
        return text

    def _watch_config(self) -> None:
        while not self._stopped.wait(self.config_poll_seconds):
            try:
                mtime = self.config_file.stat().st_mtime
                if mtime != self._config_mtime:
                    self._config_mtime = mtime
                    self.manager.reload(read_model_config(self.config_file),
                                        self._config.allow_version_labels_for_unavailable_models)
                    logger.info("re-read %s", self.config_file)
            except (InputError, OSError) as err:  # a typo or a file mid-write: named, no trace
                logger.error("could not re-read the model config (the models loaded keep "
                             "serving; fix the file and it is read again): %s",
                             getattr(err, "message", None) or err)
            except Exception:
                logger.exception("could not re-read the model config")

    def stop(self, grace: float | None = None) -> None:
        """Stops accepting calls; calls in flight on either API get `grace` seconds to finish."""
        grace = self.grace if grace is None else grace
        self._stopped.set()
        self.manager.stop()
        done = self.server.stop(grace)
        if self.rest is not None:
            self.rest.stop(grace)
        done.wait()

    def serve_forever(self, announce=None) -> None:
        """Runs until SIGTERM or SIGINT, then stops gracefully (see `stop`).

        Once the first load attempt of every model has finished (or after
        `FIRST_LOAD_WAIT_SECONDS`, naming the models still loading) it opens its ports
        and says what it serves: passed to `announce` if given, else logged.
        """
        done = threading.Event()

        def handle(signum, frame):
            logger.info("signal %d: finishing calls in flight (grace %.0f s) and stopping",
                        signum, self.grace)
            done.set()
            self._stopped.set()  # a start still waiting for the first loads ends

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        logger.info("loading the models; the ports open once the first loads are done")
        self.start()
        if not done.is_set():
            text = self.announcement(self.still_loading)
            if announce is not None:
                announce(text)
            else:
                logger.info("%s", text)
        while not done.wait(0.5):
            pass
        self.stop()


def _host_key(port_key: str) -> str:
    return port_key.rpartition(".")[0] + ".host"  # serve.port -> serve.host


def _check_free(host: str, port: int, key: str, hint: str) -> None:
    """Raises InputError naming `key` when host:port cannot be bound now (in use, or not
    an address of this host). Port 0 (any free port) is always free."""
    if not port:
        return
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host.strip("[]"), port))
    except socket.gaierror as err:  # the host, not the port
        raise InputError(f"cannot listen on {host}: not an address or host name of this "
                         f"machine ({err.strerror})", key=_host_key(key)) from None
    except OSError as err:
        if err.errno == errno.EADDRNOTAVAIL:
            raise InputError(f"cannot listen on {host}: not an address of this machine "
                             f"({err.strerror})", key=_host_key(key)) from None
        what = "the port is in use" if err.errno == errno.EADDRINUSE else err.strerror
        raise InputError(f"cannot listen on {host}:{port}: {what}"
                         + (f" {hint}" if hint else ""), key=key) from None
