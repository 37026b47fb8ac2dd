"""A model server that speaks TF Serving's gRPC API for tfrec SavedModels.

Stock `tensorflow_model_server` has neither the ScaNN nor the tensorflow-text
ops. This server loads the SavedModels in a Python process that registered
them, and answers TF Serving clients with the servicers shipped in
`tensorflow-serving-api`:

- PredictionService.Predict and GetModelMetadata (Classify, Regress,
  MultiInference answer UNIMPLEMENTED);
- ModelService.GetModelStatus and HandleReloadConfigRequest.

Each model's `base_path` is polled; a new version is loaded while the old one
keeps serving, then versions the policy no longer wants are unloaded. A
version that fails to load is reported (state END with its error) and the
served version stays.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import signal
import threading
from pathlib import Path

import grpc
import numpy as np

from tfrec.serving.config import ModelEntry, parse_model_config, read_model_config
from tfrec.serving.tensors import to_ndarray, to_proto

logger = logging.getLogger(__name__)

LOADING, AVAILABLE, UNLOADING, END = "LOADING", "AVAILABLE", "UNLOADING", "END"


class ServingError(Exception):
    """An RPC failure with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass
class Version:
    number: int
    path: Path
    state: str = LOADING
    error: str = ""
    model: object = None
    signature_defs: object = None


def _signature_defs(path: Path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    return proto.meta_graphs[0].signature_def


class ModelManager:
    """Loads, serves and unloads versions of the configured models."""

    def __init__(self, entries: list[ModelEntry], poll_seconds: float = 1.0):
        self._lock = threading.RLock()
        self.entries = {e.name: e for e in entries}
        self.versions: dict[str, dict[int, Version]] = {e.name: {} for e in entries}
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = None

    # -- loading --------------------------------------------------------------------------
    def sync(self) -> None:
        """One pass: load wanted versions found on disk, unload unwanted served ones."""
        for name, entry in list(self.entries.items()):
            on_disk = []
            if entry.base_path.is_dir():
                on_disk = [int(p.name) for p in entry.base_path.iterdir()
                           if p.is_dir() and p.name.isdigit()]
            wanted = entry.wanted(on_disk)
            for number in wanted:
                with self._lock:
                    known = self.versions[name].get(number)
                if known is None:
                    self._load(name, number, entry.base_path / str(number))
            with self._lock:
                served = self.versions[name]
                available = [v for v in wanted if served.get(v) and served[v].state == AVAILABLE]
                for number, version in list(served.items()):
                    gone = number not in on_disk
                    unwanted = number not in wanted
                    # Keep serving an old version until a wanted one is available.
                    if version.state == AVAILABLE and (gone or unwanted) and (available or gone):
                        version.state, version.model = END, None
                        logger.info("unloaded %s version %d", name, number)
                    elif version.state == END and version.error and gone:
                        del served[number]

    def _load(self, name: str, number: int, path: Path) -> None:
        from tfrec.export.saved_model import load_saved_model

        version = Version(number, path)
        with self._lock:
            self.versions[name][number] = version
        logger.info("loading %s version %d from %s", name, number, path)
        try:
            model = load_saved_model(path)
            defs = _signature_defs(path)
            self._warm_up(model, path)
        except Exception as err:  # a broken version must not take the server down
            with self._lock:
                version.state, version.error = END, f"{type(err).__name__}: {err}"[:2000]
            logger.warning("%s version %d failed to load: %s", name, number, version.error)
            return
        with self._lock:
            version.model, version.signature_defs, version.state = model, defs, AVAILABLE
        logger.info("%s version %d is AVAILABLE", name, number)

    @staticmethod
    def _warm_up(model, path: Path) -> None:
        """Replays the version's warm-up Predict requests before it is marked AVAILABLE."""
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        warmup = path / "assets.extra" / "tf_serving_warmup_requests"
        if not warmup.exists():
            return
        for record in tf.data.TFRecordDataset(str(warmup)):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            request = log.predict_log.request
            function = model.signatures[request.model_spec.signature_name or "serving_default"]
            function(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})

    def start(self) -> None:
        """Loads in the background: versions are LOADING until ready, then AVAILABLE."""
        self._thread = threading.Thread(target=self._poll, daemon=True, name="version-poller")
        self._thread.start()

    def _poll(self) -> None:
        try:
            self.sync()
        except Exception:
            logger.exception("initial load failed")
        while not self._stop.wait(self.poll_seconds):
            try:
                self.sync()
            except Exception:  # keep polling whatever one pass met
                logger.exception("version poll failed")

    def stop(self) -> None:
        self._stop.set()

    def reload(self, entries: list[ModelEntry]) -> None:
        """Replaces the model list (HandleReloadConfigRequest)."""
        with self._lock:
            for name in list(self.entries):
                if name not in {e.name for e in entries}:
                    del self.entries[name]
                    del self.versions[name]
            for entry in entries:
                self.entries[entry.name] = entry
                self.versions.setdefault(entry.name, {})
        self.sync()

    # -- lookups --------------------------------------------------------------------------
    def resolve(self, spec) -> tuple[str, Version]:
        """The version a ModelSpec asks for (default: the newest available)."""
        choice = spec.WhichOneof("version_choice")
        return self.find(spec.name, spec.version.value if choice == "version" else None,
                         spec.version_label if choice == "version_label" else None)

    def find(self, name: str, number: int | None = None,
             label: str | None = None) -> tuple[str, Version]:
        with self._lock:
            if name not in self.versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Latest({name})")
            served = self.versions[name]
            if number is not None:
                version = served.get(number)
                if version is None or version.state != AVAILABLE:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Servable not found for request: "
                                       f"Specific({name}, {number})")
                return name, version
            if label is not None:
                number = self.entries[name].labels.get(label)
                if number is None or number not in served or served[number].state != AVAILABLE:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Unrecognized servable version label: {label}")
                return name, served[number]
            available = [v for v in served.values() if v.state == AVAILABLE]
            if not available:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Latest({name})")
            return name, max(available, key=lambda v: v.number)

    def status(self, name: str, number: int | None = None) -> list[Version]:
        with self._lock:
            if name not in self.versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            versions = sorted(self.versions[name].values(), key=lambda v: v.number)
            if number:
                versions = [v for v in versions if v.number == number]
                if not versions:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Could not find version {number} of model {name}")
            return versions


def check_inputs(arrays: dict, function, max_batch: int, cast: bool = False) -> dict:
    """Named numpy inputs -> tensors, checked against the signature's TensorSpecs.

    With `cast` (JSON input, whose numbers have no width), integers and floats
    are converted to the signature's width; otherwise dtypes must match, as in
    TF Serving's gRPC API.

    Raises:
      ServingError(INVALID_ARGUMENT): an unknown or missing name, a wrong
        dtype or shape, or a batch over the limit.
    """
    import tensorflow as tf

    _, specs = function.structured_input_signature
    unknown = sorted(set(arrays) - set(specs))
    if unknown:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input name(s) {', '.join(unknown)} not in the signature; "
                           f"expected: {', '.join(sorted(specs))}")
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"missing input(s): {', '.join(missing)}")
    tensors = {}
    for name, spec in specs.items():
        value = np.asarray(arrays[name])
        expected = spec.dtype
        if cast and ((expected.is_integer and value.dtype.kind in "iu")
                     or (expected.is_floating and value.dtype.kind in "iuf")):
            value = value.astype(expected.as_numpy_dtype)
        kind = "string" if value.dtype.kind in "OSU" else value.dtype.name
        compatible = (
            (expected == tf.string and value.dtype.kind in "OSU")
            or (expected.is_integer and value.dtype.kind in "iu" and kind == expected.name)
            or (expected.is_floating and value.dtype.kind == "f" and kind == expected.name))
        if not compatible:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r}: expects dtype {expected.name}, got {kind}")
        if not spec.shape.is_compatible_with(value.shape):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r}: expects shape {spec.shape}, got "
                               f"{list(value.shape)}")
        if value.ndim and value.shape[0] > max_batch:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r}: batch of {value.shape[0]} is over the limit "
                               f"of {max_batch}")
        if expected == tf.string and value.dtype.kind == "U":
            value = np.char.encode(value, "utf-8")
        tensors[name] = tf.constant(value, dtype=expected)
    return tensors


class Predictor:
    """Runs a signature of a served version on named numpy inputs (gRPC and REST share it)."""

    def __init__(self, manager: ModelManager, max_batch: int = 4096, batcher=None):
        self.manager = manager
        self.max_batch = max_batch
        self.batcher = batcher

    def run(self, name: str, version: int | None, label: str | None, signature: str,
            arrays: dict, output_filter=(), cast: bool = False) -> tuple[str, int, str, dict]:
        import tensorflow as tf

        name, served = self.manager.find(name, version, label)
        signature = signature or "serving_default"
        function = served.model.signatures.get(signature)
        if function is None:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Serving signature name: \"{signature}\" not found in "
                               f"signature def (have: "
                               f"{', '.join(sorted(served.model.signatures))})")
        tensors = check_inputs(arrays, function, self.max_batch, cast)
        try:
            if self.batcher is not None:
                outputs = self.batcher.call((name, served.number, signature), function, tensors)
            else:
                outputs = {k: v.numpy() for k, v in function(**tensors).items()}
        except tf.errors.InvalidArgumentError as err:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               _first_line(err.message)) from None
        unknown = [o for o in output_filter if o not in outputs]
        if unknown:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output_filter names unknown output(s): {', '.join(unknown)}")
        if output_filter:
            outputs = {k: v for k, v in outputs.items() if k in output_filter}
        return name, served.number, signature, outputs


class PredictionServicer:
    """tensorflow.serving.PredictionService over a ModelManager."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.manager = predictor.manager

    def _fail(self, context, err: ServingError):
        context.abort(err.code, err.message)

    def Predict(self, request, context):
        from tensorflow_serving.apis import predict_pb2

        try:
            arrays = {}
            for key, proto in request.inputs.items():
                try:
                    arrays[key] = to_ndarray(proto)
                except Exception as err:  # MalformedTensor, or anything a bad proto raises
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"input {key!r}: malformed tensor: {err}") from None
            spec = request.model_spec
            choice = spec.WhichOneof("version_choice")
            name, number, signature, outputs = self.predictor.run(
                spec.name, spec.version.value if choice == "version" else None,
                spec.version_label if choice == "version_label" else None,
                spec.signature_name, arrays, list(request.output_filter))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = name
            response.model_spec.version.value = number
            response.model_spec.signature_name = signature
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(to_proto(value))
            return response
        except ServingError as err:
            self._fail(context, err)

    def GetModelMetadata(self, request, context):
        from tensorflow_serving.apis import get_model_metadata_pb2

        try:
            fields = set(request.metadata_field)
            if fields - {"signature_def"}:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "Metadata field(s) not supported: "
                                   f"{', '.join(sorted(fields - {'signature_def'}))}")
            if not fields:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "GetModelMetadataRequest must specify at least one "
                                   "metadata_field")
            name, version = self.manager.resolve(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = name
            response.model_spec.version.value = version.number
            defs = get_model_metadata_pb2.SignatureDefMap()
            for key, value in version.signature_defs.items():
                defs.signature_def[key].CopyFrom(value)
            response.metadata["signature_def"].Pack(defs)
            return response
        except ServingError as err:
            self._fail(context, err)

    def Classify(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Classify is not supported by tfrec serve")

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported by tfrec serve")

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "MultiInference is not supported by tfrec serve")


class ModelServicer:
    """tensorflow.serving.ModelService over a ModelManager."""

    def __init__(self, manager: ModelManager, base_dir: Path | None = None):
        self.manager = manager
        self.base_dir = base_dir

    def GetModelStatus(self, request, context):
        from tensorflow_serving.apis import get_model_status_pb2

        states = {LOADING: get_model_status_pb2.ModelVersionStatus.LOADING,
                  AVAILABLE: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
                  UNLOADING: get_model_status_pb2.ModelVersionStatus.UNLOADING,
                  END: get_model_status_pb2.ModelVersionStatus.END}
        try:
            spec = request.model_spec
            number = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
            response = get_model_status_pb2.GetModelStatusResponse()
            for version in self.manager.status(spec.name, number):
                status = response.model_version_status.add()
                status.version = version.number
                status.state = states[version.state]
                if version.error:
                    status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                    status.status.error_message = version.error
            return response
        except ServingError as err:
            context.abort(err.code, err.message)

    def HandleReloadConfigRequest(self, request, context):
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2

        from tfrec.errors import InputError

        try:
            text = text_format.MessageToString(request.config)
            entries = parse_model_config(text, "ReloadConfigRequest", self.base_dir)
        except InputError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, err.message)
        self.manager.reload(entries)
        return model_management_pb2.ReloadConfigResponse()


def _first_line(message: str) -> str:
    lines = [line for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if "k must" in line or "assert" in line.lower()]
    return (useful or lines or [message])[0].strip()


class ModelServer:
    """The gRPC server: one ModelManager, both servicers, graceful shutdown."""

    def __init__(self, model_config_file: str | Path, port: int = 8500, host: str = "127.0.0.1",
                 poll_seconds: float = 1.0, config_poll_seconds: float = 0.0,
                 max_batch: int = 4096, max_message_mb: int = 64, workers: int = 8,
                 rest_port: int | None = None, batcher=None):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.config_file = Path(model_config_file)
        self.manager = ModelManager(read_model_config(self.config_file), poll_seconds)
        self.config_poll_seconds = config_poll_seconds
        self._config_mtime = self.config_file.stat().st_mtime
        options = [("grpc.max_receive_message_length", max_message_mb * 2**20),
                   ("grpc.max_send_message_length", max_message_mb * 2**20)]
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(workers),
                                  options=options)
        self.predictor = Predictor(self.manager, max_batch, batcher)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.predictor), self.server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.manager, Path.cwd()), self.server)
        self.address = f"{host}:{port}"
        self.port = self.server.add_insecure_port(self.address)
        if self.port == 0:
            from tfrec.errors import InputError

            raise InputError(f"cannot listen on {self.address} (in use?)", key="port")
        self.rest = None
        if rest_port is not None:
            from tfrec.serving.rest import RestServer

            try:
                self.rest = RestServer(self.predictor, host, rest_port)
            except OSError as err:
                from tfrec.errors import InputError

                raise InputError(f"cannot listen on {host}:{rest_port}: {err.strerror}",
                                 key="rest_api_port") from None
        self._stopped = threading.Event()

    def start(self) -> None:
        self.server.start()
        if self.rest is not None:
            self.rest.start()
            logger.info("REST API on %s:%d", self.address.rsplit(":", 1)[0], self.rest.port)
        self.manager.start()
        if self.config_poll_seconds > 0:
            threading.Thread(target=self._watch_config, daemon=True).start()
        logger.info("serving on %s", self.address)

    def _watch_config(self) -> None:
        while not self._stopped.wait(self.config_poll_seconds):
            try:
                mtime = self.config_file.stat().st_mtime
                if mtime != self._config_mtime:
                    self._config_mtime = mtime
                    self.manager.reload(read_model_config(self.config_file))
                    logger.info("re-read %s", self.config_file)
            except Exception:
                logger.exception("could not re-read the model config")

    def stop(self, grace: float = 10.0) -> None:
        """Stops accepting calls; calls in flight get `grace` seconds to finish."""
        self._stopped.set()
        self.manager.stop()
        if self.rest is not None:
            self.rest.stop()
        self.server.stop(grace).wait()

    def serve_forever(self) -> None:
        """Runs until SIGTERM or SIGINT, then shuts down gracefully."""
        done = threading.Event()

        def handle(signum, frame):
            logger.info("signal %d: finishing calls in flight and stopping", signum)
            done.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        self.start()
        while not done.wait(0.5):
            pass
        self.stop()

