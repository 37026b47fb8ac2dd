"""TF Serving's gRPC services (PredictionService, ModelService) over the version manager."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from google.protobuf import text_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_management_pb2, predict_pb2)

from tfrec.errors import InputError
from tfrec.serving.config import outside_roots, parse_model_config
from tfrec.serving.errors import ServingError, capped, shown
from tfrec.serving.pacing import ErrorPace, peer_address
from tfrec.serving.predict import (Predictor, check_bytes, check_elements, declared_size,
                                   invalid)
from tfrec.serving.tensors import (MalformedTensor, built_bytes, declared_shape, to_ndarray,
                                   to_proto)
from tfrec.serving.versions import AVAILABLE, END, LOADING, START, UNLOADING, ModelManager

logger = logging.getLogger(__name__)

_STATES = {START: get_model_status_pb2.ModelVersionStatus.START,
           LOADING: get_model_status_pb2.ModelVersionStatus.LOADING,
           AVAILABLE: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
           UNLOADING: get_model_status_pb2.ModelVersionStatus.UNLOADING,
           END: get_model_status_pb2.ModelVersionStatus.END}


def _version_choice(spec) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    return (spec.version.value if choice == "version" else None,
            spec.version_label if choice == "version_label" else None)


class PredictionServicer:
    """tensorflow.serving.PredictionService over a Predictor.

    Args:
      predictor: runs the calls.
      pace: error answers are held to their client address's pace (`ErrorPace`;
        None: never held).
    """

    def __init__(self, predictor: Predictor, pace: ErrorPace | None = None):
        self.predictor = predictor
        self.manager = predictor.manager
        self.pace = pace

    def _refuse(self, context, err: ServingError):
        if self.pace is not None:
            self.pace.hold(peer_address(context.peer()))
        context.abort(err.code, capped(err.message))

    def _arrays(self, request) -> dict:
        """The request's inputs as numpy arrays, bounded first from the protos alone: their
        declared sizes (`--max_request_elements`), then the bytes they would build, values
        repeated to fill a shape included (`--max_request_bytes`, `--max_string_bytes`)."""
        counts = {}
        for key, proto in request.inputs.items():
            try:
                counts[key] = declared_size(declared_shape(proto))
            except MalformedTensor as err:
                raise invalid(f"input {shown(key)!r}: malformed tensor: {err}") from None
        check_elements(counts, self.predictor.limits)
        sizes, longest = {}, {}
        for key, proto in request.inputs.items():
            try:
                sizes[key], longest[key] = built_bytes(proto, counts[key])
            except MalformedTensor as err:
                raise invalid(f"input {shown(key)!r}: malformed tensor: {err}") from None
        check_bytes(sizes, longest, self.predictor.limits)
        arrays = {}
        for key, proto in request.inputs.items():
            try:
                arrays[key] = to_ndarray(proto)
            except Exception as err:  # MalformedTensor, or anything a bad proto raises
                raise invalid(f"input {shown(key)!r}: malformed tensor: "
                              f"{shown(err, 200)}") from None
        return arrays

    def Predict(self, request, context):
        try:
            arrays = self._arrays(request)
            spec = request.model_spec
            number, label = _version_choice(spec)
            name, number, signature, outputs = self.predictor.run(
                spec.name, number, label, spec.signature_name, arrays,
                list(request.output_filter), is_active=context.is_active)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = name
            response.model_spec.version.value = number
            response.model_spec.signature_name = signature
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(to_proto(value))
            return response
        except ServingError as err:
            self._refuse(context, err)

    def GetModelMetadata(self, request, context):
        try:
            fields = set(request.metadata_field)
            if fields - {"signature_def"}:
                raise invalid("Metadata field(s) not supported: " + ", ".join(
                    shown(f) for f in sorted(fields - {"signature_def"})[:5]))
            if not fields:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            served = self.manager.resolve(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = served.name
            response.model_spec.version.value = served.number
            defs = get_model_metadata_pb2.SignatureDefMap()
            for key, value in served.signature_defs.items():
                defs.signature_def[key].CopyFrom(value)
            response.metadata["signature_def"].Pack(defs)
            return response
        except ServingError as err:
            self._refuse(context, err)

    def Classify(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Classify is not supported by tfrec serve")

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported by tfrec serve")

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "MultiInference is not supported by tfrec serve")


class ModelServicer:
    """tensorflow.serving.ModelService over a ModelManager.

    HandleReloadConfigRequest, which can point the server at other SavedModels, is
    off unless `allow_reload` (`--allow_reload`); on, it takes only absolute base
    paths under `roots` (`--model_roots`, by default the folders of the model
    config file's base paths at start).

    Args:
      manager: the version manager.
      roots: the folders a reloaded base path must be under.
      allow_reload: answer HandleReloadConfigRequest (else PERMISSION_DENIED).
      labels_for_unavailable: a reload may label a version that is not AVAILABLE
        (else FAILED_PRECONDITION, the model keeping its labels, as TF Serving).
    """

    def __init__(self, manager: ModelManager, roots: list[Path] = (),
                 allow_reload: bool = False, labels_for_unavailable: bool = False):
        self.manager = manager
        self.roots = list(roots)
        self.allow_reload = allow_reload
        self.labels_for_unavailable = labels_for_unavailable

    def GetModelStatus(self, request, context):
        try:
            spec = request.model_spec
            number, label = _version_choice(spec)
            response = get_model_status_pb2.GetModelStatusResponse()
            for version in self.manager.status(spec.name, number or None, label):
                status = response.model_version_status.add()
                status.version = version.number
                status.state = _STATES[version.state]
                status.status.SetInParent()  # error code OK, present for every version
                if version.error:
                    status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                    status.status.error_message = version.error
                elif version.detail:  # not an error: what it waits for, why it still serves
                    status.status.error_message = version.detail
            return response
        except ServingError as err:
            context.abort(err.code, capped(err.message))

    def HandleReloadConfigRequest(self, request, context):
        if not self.allow_reload:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "HandleReloadConfigRequest is off: start tfrec serve with "
                          "--allow_reload to enable it")
        if request.config.WhichOneof("config") is None:
            # As TF Serving: a request without a config changes nothing (an operator
            # tool's empty request must not unload every model).
            logger.info("HandleReloadConfigRequest from %s: no config in the request; "
                        "taking no action", context.peer())
            return model_management_pb2.ReloadConfigResponse()
        try:
            text = text_format.MessageToString(request.config)
            entries = parse_model_config(text, "ReloadConfigRequest")
        except InputError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, capped(err.message))
        refused = outside_roots(entries, self.roots)
        if refused is not None:
            kind, message = refused
            context.abort(grpc.StatusCode.INVALID_ARGUMENT if kind == "relative"
                          else grpc.StatusCode.PERMISSION_DENIED, capped(message))
        logger.info("HandleReloadConfigRequest from %s: %s", context.peer(),
                    capped("; ".join(f"{e.name}: {e.base_path}" for e in entries)
                           or "no models"))
        refused = self.manager.reload(entries, self.labels_for_unavailable)
        if refused:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, capped("; ".join(refused)))
        return model_management_pb2.ReloadConfigResponse()
