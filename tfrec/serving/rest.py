"""TF Serving's REST API (`/v1/models/...`) over the same Predictor as gRPC."""

from __future__ import annotations

import http.server
import json
import logging
import re
import threading

import grpc
import numpy as np

from tfrec.serving.errors import ServingError

logger = logging.getLogger(__name__)

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                   r"(?P<verb>:predict|/metadata)?/?$")
_HTTP = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
         grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.FAILED_PRECONDITION: 400}
_MAX_BODY = 64 * 2**20


def _jsonable(value):
    value = np.asarray(value)
    if value.dtype.kind in "OS":
        if value.ndim == 0:
            return value.item().decode("utf-8", "replace")
        return [_jsonable(v) for v in value]
    return value.tolist()


def _arrays_from_json(body: dict) -> tuple[dict, bool]:
    """(named arrays, row format?) from a predict body ("instances" or "inputs")."""
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "'instances' must be a non-empty list")
        if not all(isinstance(i, dict) for i in instances):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "each instance must be an object of named inputs")
        names = set(instances[0])
        if any(set(i) != names for i in instances):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "every instance must name the same inputs")
        arrays = {}
        for name in names:
            values = [i[name] for i in instances]
            if all(np.ndim(v) == 0 for v in values) and len({json.dumps(v) for v in values}) == 1:
                arrays[name] = np.asarray(values[0])  # a scalar input such as k
            else:
                arrays[name] = _ragged_to_array(values)
        return arrays, True
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, dict):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "'inputs' must be an object of named inputs")
        return {k: _ragged_to_array(v) if isinstance(v, list) else np.asarray(v)
                for k, v in inputs.items()}, False
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       "the body needs 'instances' (row format) or 'inputs' (columnar)")


def _ragged_to_array(values):
    """Lists of string lists of different lengths are padded with "" (no item)."""
    if values and all(isinstance(v, list) for v in values) and all(
            isinstance(x, str) for v in values for x in v):
        width = max(len(v) for v in values)
        values = [v + [""] * (width - len(v)) for v in values]
    array = np.asarray(values)
    if array.dtype.kind == "U":
        array = np.char.encode(array, "utf-8").astype(object)
    elif array.dtype.kind == "i":
        array = array.astype(np.int32)
    elif array.dtype.kind == "f":
        array = array.astype(np.float32)
    return array


class RestServer:
    """A threaded HTTP server for status, metadata and predict."""

    def __init__(self, predictor, host: str, port: int, **_options):
        self.predictor = predictor
        handler = self._handler()
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float = 10.0) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        predictor = self.predictor
        manager = predictor.manager

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                logger.debug("rest: " + fmt, *args)

            def _send(self, code: int, payload: dict):
                data = json.dumps(payload).encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self):
                match = _PATH.match(self.path.split("?")[0])
                if not match:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Malformed request: {self.command} {self.path}")
                version = int(match["version"]) if match["version"] else None
                return match["name"], version, match["label"], match["verb"]

            def do_GET(self):
                try:
                    name, version, label, verb = self._route()
                    if verb == ":predict":
                        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                           "predict needs POST")
                    if verb == "/metadata":
                        from google.protobuf import json_format

                        served = manager.find(name, version, label)
                        name = served.name
                        defs = {k: json_format.MessageToDict(v)
                                for k, v in served.signature_defs.items()}
                        self._send(200, {"model_spec": {"name": name,
                                                        "version": str(served.number)},
                                         "metadata": {"signature_def": {
                                             "signature_def": defs}}})
                        return
                    versions = manager.status(name, version)
                    self._send(200, {"model_version_status": [
                        {"version": str(v.number), "state": v.state,
                         "status": {"error_code": "UNKNOWN" if v.error else "OK",
                                    "error_message": v.error}} for v in versions]})
                except ServingError as err:
                    self._send(_HTTP.get(err.code, 500), {"error": err.message})

            def do_POST(self):
                try:
                    name, version, label, verb = self._route()
                    if verb != ":predict":
                        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                           "only :predict takes POST")
                    length = int(self.headers.get("Content-Length") or 0)
                    if length > _MAX_BODY:
                        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                           f"request body over {_MAX_BODY} bytes")
                    try:
                        body = json.loads(self.rfile.read(length) or b"{}")
                    except json.JSONDecodeError as err:
                        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                           f"malformed JSON: {err}") from None
                    if not isinstance(body, dict):
                        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                           "the body must be a JSON object")
                    arrays, rows = _arrays_from_json(body)
                    _, _, _, outputs = predictor.run(name, version, label,
                                                     body.get("signature_name", ""), arrays,
                                                     cast=True)
                    if rows:
                        n = next(iter(outputs.values())).shape[0]
                        predictions = [{k: _jsonable(v[i]) for k, v in outputs.items()}
                                       for i in range(n)]
                        self._send(200, {"predictions": predictions})
                    else:
                        self._send(200, {"outputs": {k: _jsonable(v)
                                                     for k, v in outputs.items()}})
                except ServingError as err:
                    self._send(_HTTP.get(err.code, 500), {"error": err.message})
                except Exception as err:  # keep serving
                    logger.exception("REST predict failed")
                    self._send(500, {"error": f"{type(err).__name__}: {err}"})

        return Handler
