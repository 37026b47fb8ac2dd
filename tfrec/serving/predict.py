"""Checking a request against the signature and the server's limits, and running it.

gRPC and REST share the `Predictor`. Every rejection is INVALID_ARGUMENT and
names the input and the rule it broke.
"""

from __future__ import annotations

import dataclasses
import math

import grpc
import numpy as np
import tensorflow as tf

from tfrec.config import ServeConfig
from tfrec.serving.errors import ServingError, shown, tensorflow_message
from tfrec.serving.versions import Loaded, ModelManager

# The largest message either way: a gRPC message, a REST body.
MAX_MESSAGE_BYTES = 64 * 2**20

# The key of the one input of REST's row format with bare values ({"instances": [v1, v2]}).
UNNAMED = None

# The REST (JSON) integers and floats are cast to the signature's width after a range check.
_RANGES = {tf.int32: np.iinfo(np.int32), tf.int64: np.iinfo(np.int64)}


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of the server.

    Attributes:
      max_batch: rows per request (`serve.max_batch`).
      max_elements: values in one request, all inputs together, counted from
        the declared shapes before anything is allocated
        (`serve.max_request_elements`).
      max_bytes: bytes one request's inputs take once built, all together:
        strings' lengths and numbers' widths, the values TensorFlow repeats to
        fill a declared shape included (`serve.max_request_bytes`).
      max_string_bytes: bytes of one string value (`serve.max_string_bytes`).
    """

    max_batch: int = ServeConfig.max_batch
    max_elements: int = ServeConfig.max_request_elements
    max_bytes: int = ServeConfig.max_request_bytes
    max_string_bytes: int = ServeConfig.max_string_bytes

    @classmethod
    def from_config(cls, config: ServeConfig) -> RequestLimits:
        return cls(config.max_batch, config.max_request_elements, config.max_request_bytes,
                   config.max_string_bytes)


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def check_elements(counts: dict, limits: RequestLimits) -> None:
    """Rejects a request whose inputs, together, hold more than `max_elements` values."""
    total = sum(counts.values())
    if total > limits.max_elements:
        name, largest = max(counts.items(), key=lambda kv: kv[1])
        raise invalid(f"input {shown(name)!r}: {largest:,} values (request total {total:,}) is "
                      f"over the limit of {limits.max_elements:,} values per request "
                      "(tfrec serve --max_request_elements)")


def check_bytes(sizes: dict, longest: dict, limits: RequestLimits) -> None:
    """Rejects a request holding a string over `max_string_bytes`, or whose inputs take more
    than `max_bytes` together once built.

    Args:
      sizes: input name -> bytes it takes once built (`tensors.built_bytes`).
      longest: input name -> bytes of its longest string (0 for numbers).
    """
    for name, size in longest.items():
        if size > limits.max_string_bytes:
            raise invalid(f"input {shown(name)!r}: a string of {size:,} bytes is over the limit "
                          f"of {limits.max_string_bytes:,} bytes per string "
                          "(tfrec serve --max_string_bytes)")
    total = sum(sizes.values())
    if total > limits.max_bytes:
        name, largest = max(sizes.items(), key=lambda kv: kv[1])
        raise invalid(f"input {shown(name)!r}: {largest:,} bytes once built (request total "
                      f"{total:,}) is over the limit of {limits.max_bytes:,} bytes per request "
                      "(tfrec serve --max_request_bytes); a value repeated to fill a declared "
                      "shape counts once per element it fills")


def _string_bytes(value: np.ndarray) -> tuple[int, int]:
    """(bytes, longest string's bytes) of a string array (bytes, or objects bytes or str)."""
    if value.dtype.kind == "S":
        return value.size * value.dtype.itemsize, value.dtype.itemsize if value.size else 0
    lengths = [len(v) if isinstance(v, bytes) else len(v.encode("utf-8", "surrogatepass"))
               for v in value.reshape(-1).tolist()]
    return sum(lengths), max(lengths, default=0)


def _cast(name: str, value: np.ndarray, expected: tf.DType) -> np.ndarray:
    """JSON numbers -> the signature's dtype, refusing values that do not fit."""
    if expected.is_integer and value.dtype.kind in "iu":
        bounds = _RANGES.get(expected, np.iinfo(expected.as_numpy_dtype))
        if value.size and (value.min() < bounds.min or value.max() > bounds.max):
            bad = value.max() if value.max() > bounds.max else value.min()
            raise invalid(f"input {name!r}: {bad} is out of range for {expected.name} "
                          f"([{bounds.min}, {bounds.max}])")
        return value.astype(expected.as_numpy_dtype)
    if expected.is_floating and value.dtype.kind in "iuf":
        return value.astype(expected.as_numpy_dtype)
    return value


def name_bare_values(arrays: dict, specs: dict, key: str) -> dict:
    """Bare values (the key `UNNAMED`: REST's `key`, "instances" or "inputs", holding
    values, not objects of named inputs) named as the one input of the signature."""
    if UNNAMED not in arrays:
        return dict(arrays)
    if len(specs) != 1:
        raise invalid(f"'{key}' holds bare values, which only a signature of one input "
                      f"takes; this one has {len(specs)}: {', '.join(sorted(specs))}; send "
                      "an object of named inputs")
    return {next(iter(specs)): arrays[UNNAMED]}


def from_rows(arrays: dict, specs: dict) -> dict:
    """REST's row format ("instances") as the signature's inputs, as TF Serving reads it.

    Every input of `arrays` stacks one value per instance (its leading dimension is the
    number of instances). An input the signature declares as a scalar (shape [], such as
    k) must hold the same value in every instance and is passed as that scalar. Bare
    values (the key `UNNAMED`) are the input of a signature that has exactly one.

    Raises:
      ServingError(INVALID_ARGUMENT): bare values for a signature of several inputs, or a
        scalar input whose instances differ.
    """
    arrays = name_bare_values(arrays, specs, "instances")
    for name, spec in specs.items():
        value = arrays.get(name)
        if value is None or spec.shape.rank != 0:
            continue
        value = np.asarray(value)
        if value.ndim != 1:
            raise invalid(f"input {name!r}: expects shape {spec.shape} (one value, the same "
                          f"in every instance), got {list(value.shape[1:])} in each instance")
        if value.size and not (value == value[0]).all():
            raise invalid(f"input {name!r}: the signature takes one value (shape "
                          f"{spec.shape}) for all instances, but the instances differ "
                          f"({_differing(value)}); send one request per value")
        arrays[name] = value[:1].reshape(()) if value.size else value
    return arrays


def _differing(value: np.ndarray) -> str:
    """Two different values of `value`, for a message."""
    values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v
              for v in value.tolist()]
    other = next(v for v in values if v != values[0])
    first, other = (shown(v) if isinstance(v, str) else v for v in (values[0], other))
    return f"{first!r} and {other!r}"


def check_inputs(arrays: dict, function, limits: RequestLimits, served: Loaded | None = None,
                 cast: bool = False, rows: bool = False) -> dict:
    """Named numpy inputs -> tensors, checked against the signature and the limits.

    With `cast` (JSON input, whose numbers have no width), integers and floats
    are converted to the signature's width when they fit; otherwise dtypes
    must match, as in TF Serving's gRPC API. With `rows` (REST's "instances"),
    the arrays stack one value per instance (see `from_rows`). The export's own limits (max_k,
    max_session_items, from its metadata) are checked here too, so the
    caller reads the rule rather than a TensorFlow assertion.

    Raises:
      ServingError(INVALID_ARGUMENT): an unknown or missing name, a wrong
        dtype or shape, an empty or oversized batch, too many values, a k
        out of range or a session over the width the model reads.
    """
    _, specs = function.structured_input_signature
    arrays = from_rows(arrays, specs) if rows else name_bare_values(arrays, specs, "inputs")
    unknown = sorted(set(arrays) - set(specs))
    if unknown:
        raise invalid(f"input name(s) {_listed(unknown)} not in the signature; "
                      f"expected: {', '.join(sorted(specs))}")
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise invalid(f"missing input(s): {', '.join(missing)}")
    check_elements({name: int(np.size(arrays[name])) for name in specs}, limits)
    metadata = served.metadata if served is not None else {}
    values, sizes, longest = {}, {}, {}
    for name, spec in specs.items():
        value = np.asarray(arrays[name])
        expected = spec.dtype
        if cast and value.size == 0:  # JSON's [] or [[]]: no value, so no type to check
            value = np.empty(value.shape, object if expected == tf.string
                             else expected.as_numpy_dtype)
        elif cast:
            value = _cast(name, value, expected)
        kind = "string" if value.dtype.kind in "OSU" else value.dtype.name
        compatible = (
            (expected == tf.string and value.dtype.kind in "OSU")
            or (expected.is_integer and value.dtype.kind in "iu" and kind == expected.name)
            or (expected.is_floating and value.dtype.kind == "f" and kind == expected.name))
        if not compatible:
            raise invalid(f"input {name!r}: expects dtype {expected.name}, got {kind}")
        if expected == tf.string and value.dtype.kind == "O" and not all(
                isinstance(v, (bytes, str)) for v in value.reshape(-1).tolist()):
            raise invalid(f"input {name!r}: expects strings, got other values")
        if not spec.shape.is_compatible_with(value.shape):
            raise invalid(f"input {name!r}: expects shape {spec.shape}, got {list(value.shape)}")
        if value.ndim and value.shape[0] == 0:
            raise invalid(f"input {name!r}: the batch is empty; send at least one row")
        if value.ndim and value.shape[0] > limits.max_batch:
            raise invalid(f"input {name!r}: batch of {value.shape[0]} is over the limit of "
                          f"{limits.max_batch} (tfrec serve --max_batch)")
        if name == "k" and value.ndim == 0 and "max_k" in metadata:
            k, max_k = int(value), int(metadata["max_k"])
            if not 1 <= k <= max_k:
                raise invalid(f"input 'k': must be between 1 and {max_k} (the index's max_k), "
                              f"got {k}")
        width = metadata.get("max_session_items")
        if width and value.ndim == 2 and expected == tf.string and value.shape[1] > width:
            raise invalid(f"input {name!r}: sessions of {value.shape[1]} items are over the "
                          f"limit of {width} (the export's max_session_items); send the most "
                          f"recent {width}")
        if expected == tf.string and value.dtype.kind == "U":
            value = np.char.encode(value, "utf-8")
        if expected == tf.string:
            sizes[name], longest[name] = _string_bytes(value)
        else:
            sizes[name], longest[name] = value.size * expected.size, 0
        values[name] = value
    check_bytes(sizes, longest, limits)
    return {name: tf.constant(value, dtype=specs[name].dtype) for name, value in values.items()}


def _listed(names, most: int = 5) -> str:
    """Client-given names for a message: each cut short, at most `most` of them."""
    names = list(names)
    text = ", ".join(shown(n) for n in names[:most])
    return text + (f" (and {len(names) - most} more)" if len(names) > most else "")


class DirectCall:
    """Calls a loaded signature as `function(**tensors)` does, without its Python binding.

    A signature call binds its keyword arguments to the function's declared inputs,
    converts them, resolves the captured variables and packs the outputs: about 0.2 ms of
    Python per call (bench/RESULTS.md, "The signature's graph called directly"), as much
    as the server's own handling of a request. The inputs `check_inputs` makes are
    already tensors of the declared dtypes and shapes, so this runs the signature's graph
    function on them and the captures it holds, resolved once. The same outputs (the
    graph is the same; tests compare every signature of an export). Functions that do not
    have that form (not a loaded signature, a distributed variable among the captures,
    inputs not named as the signature's) are called as they are.
    """

    def __init__(self, function):
        self.function = function
        self.direct = None
        try:
            _, specs = function.structured_input_signature
            names = sorted(specs)
            captured = list(function.captured_inputs)
            graph_inputs = [t.name.split(":")[0] for t in function.inputs]
            run = function._inference_function.call_preflattened
            from tensorflow.python.distribute import distribute_utils
            distributed = any(distribute_utils.is_distributed_variable(c) for c in captured)
        except (AttributeError, TypeError, ValueError, ImportError):
            return
        if (not distributed and graph_inputs[:len(names)] == names
                and len(graph_inputs) == len(names) + len(captured)):
            self.direct = (run, names, captured)

    def __call__(self, **tensors) -> dict:
        if self.direct is None:
            return self.function(**tensors)
        run, names, captured = self.direct
        outputs = run([tensors[name] for name in names] + captured)
        if not isinstance(outputs, dict):
            outputs = tf.nest.pack_sequence_as(self.function.structured_outputs,
                                               tf.nest.flatten(outputs))
        return outputs


def signature_call(served: Loaded, signature: str, function) -> DirectCall:
    """The served version's `DirectCall` of `signature` (made once)."""
    call = served.calls.get(signature)
    if call is None or call.function is not function:
        call = served.calls[signature] = DirectCall(function)
    return call


class Predictor:
    """Runs a signature of a served version on named numpy inputs (gRPC and REST share it)."""

    def __init__(self, manager: ModelManager, limits: RequestLimits = RequestLimits(),
                 batcher=None):
        self.manager = manager
        self.limits = limits
        self.batcher = batcher

    @property
    def max_batch(self) -> int:
        return self.limits.max_batch

    def run(self, name: str, version: int | None, label: str | None, signature: str,
            arrays: dict, output_filter=(), cast: bool = False,
            is_active=None, rows: bool = False) -> tuple[str, int, str, dict]:
        """(model name, version, signature, outputs) of one call.

        `rows`: the arrays are REST's row format (see `from_rows`).
        `is_active` (e.g. a gRPC context's) is asked before the model runs: a
        call its client gave up on is not computed.

        Raises:
          ServingError: NOT_FOUND (model, version, label), INVALID_ARGUMENT
            (inputs), CANCELLED (the client left).
        """
        served = self.manager.find(name, version, label)
        signature = signature or "serving_default"
        function = served.model.signatures.get(signature)
        if function is None:
            raise invalid(f"Serving signature name: \"{shown(signature)}\" not found in "
                          f"signature def (have: {', '.join(sorted(served.model.signatures))})")
        tensors = check_inputs(arrays, function, self.limits, served, cast, rows)
        seen = set()
        for alias in output_filter:
            if alias in seen:  # TF Serving's answer
                raise invalid(f"duplicate output tensor alias: {shown(alias)}")
            seen.add(alias)
        unknown = [o for o in output_filter if o not in function.structured_outputs]
        if unknown:
            raise invalid(f"output_filter names unknown output(s): {_listed(unknown)}; "
                          f"the signature has: {', '.join(sorted(function.structured_outputs))}")
        if is_active is not None and not is_active():
            raise ServingError(grpc.StatusCode.CANCELLED, "the client cancelled the call")
        call = signature_call(served, signature, function)
        try:
            if self.batcher is not None:
                outputs = self.batcher.call((served.name, served.number, signature), call,
                                            tensors)
            else:
                outputs = {k: v.numpy() for k, v in call(**tensors).items()}
        except tf.errors.InvalidArgumentError as err:
            raise invalid(tensorflow_message(err.message)) from None
        if output_filter:
            outputs = {k: v for k, v in outputs.items() if k in output_filter}
        return served.name, served.number, signature, outputs


def declared_size(shape: list[int]) -> int:
    """Values a shape declares (Python integers: no overflow for absurd shapes)."""
    return math.prod(shape) if shape else 1
