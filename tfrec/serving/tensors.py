"""TensorProto <-> numpy for the server's hot path.

`tf.make_ndarray` and `tf.make_tensor_proto` are general and cost about
40-80 us per tensor in Python; a Predict call converts two inputs and two or
three outputs. The common cases (strings, and numbers packed in
`tensor_content` or listed one per element) are converted here directly
from the proto's fields (and booleans, an output of most signatures, to a
proto), anything else goes to TensorFlow's functions, so
the results are the same.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

# dtype enum -> (little-endian numpy dtype, the repeated field listing values one by one)
_NUMERIC = {
    types_pb2.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    types_pb2.DT_INT32: (np.dtype("<i4"), "int_val"),
    types_pb2.DT_INT64: (np.dtype("<i8"), "int64_val"),
}
_ENUM = {np.dtype(dtype).newbyteorder("="): enum for enum, (dtype, _) in _NUMERIC.items()}
# The TensorProto fields that list a number tensor's values one per element.
_VALUE_FIELDS = ("float_val", "double_val", "int_val", "int64_val", "bool_val", "half_val",
                 "uint32_val", "uint64_val")


class MalformedTensor(ValueError):
    """A TensorProto whose values do not fit its shape or dtype."""


def declared_shape(proto: tensor_pb2.TensorProto) -> list[int]:
    """The shape a TensorProto declares, read before any value is allocated.

    Raises:
      MalformedTensor: an unknown rank or a negative dimension.
    """
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(size < 0 for size in shape) or proto.tensor_shape.unknown_rank:
        raise MalformedTensor(f"shape {shape} is not fully defined")
    return shape


def built_bytes(proto: tensor_pb2.TensorProto, count: int) -> tuple[int, int]:
    """What a TensorProto of `count` declared values takes once built, read from the proto
    alone (nothing is allocated).

    TensorFlow fills a shape given fewer values than it declares by repeating the last
    one, so one 1,000-byte string declared [1000, 1000] builds 1 GB: the repeats are
    counted here.

    Returns:
      (bytes of the values, filled out to `count`: strings' lengths, numbers' widths;
       the longest string's bytes, 0 for numbers).

    Raises:
      MalformedTensor: more strings than the shape declares, or a dtype with no width.
    """
    if proto.dtype == types_pb2.DT_STRING:
        given = len(proto.string_val)
        if given > count:
            raise MalformedTensor(f"{given:,} strings for a shape of {count:,} values")
        if not given:
            return 0, 0
        lengths = list(map(len, proto.string_val))
        return sum(lengths) + (count - given) * lengths[-1], max(lengths)
    try:
        width = tf.dtypes.as_dtype(proto.dtype).size
    except Exception:  # TypeError for an unknown enum
        width = 0
    if not width:  # an unknown enum, or a type with no width (resource, variant)
        raise MalformedTensor(f"unsupported dtype {proto.dtype}")
    if not proto.tensor_content:
        given = max(len(getattr(proto, field)) for field in _VALUE_FIELDS)
        if given > count:
            raise MalformedTensor(f"{given:,} values for a shape of {count:,} values")
    return count * width, 0


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The numpy array a TensorProto holds (strings as an object array of bytes).

    A proto with fewer values than its shape is filled out with its last
    value, as TensorFlow does: bound the declared size (`declared_shape`) and
    the bytes it builds (`built_bytes`) before calling this on untrusted input.
    """
    shape = declared_shape(proto)
    count = math.prod(shape)
    if proto.dtype == types_pb2.DT_STRING and len(proto.string_val) == count:
        values = np.empty(count, dtype=object)
        values[:] = list(proto.string_val)
        return values.reshape(shape)
    numeric = _NUMERIC.get(proto.dtype)
    if numeric is not None:
        dtype, field = numeric
        if proto.tensor_content:
            if len(proto.tensor_content) != count * dtype.itemsize:
                raise MalformedTensor(f"tensor_content holds {len(proto.tensor_content)} bytes, "
                                      f"shape {shape} of {dtype.name} needs "
                                      f"{count * dtype.itemsize}")
            return np.frombuffer(proto.tensor_content, dtype=dtype).astype(
                dtype.newbyteorder("=")).reshape(shape)
        values = getattr(proto, field)
        if len(values) == count:
            return np.asarray(values, dtype=dtype.newbyteorder("=")).reshape(shape)
    try:
        return tf.make_ndarray(proto)
    except Exception as err:  # TensorFlow raises several types for bad protos
        raise MalformedTensor(str(err)) from None


def to_proto(value) -> tensor_pb2.TensorProto:
    """A TensorProto of a numpy array (bytes/str arrays become DT_STRING)."""
    array = np.asarray(value)
    proto = tensor_pb2.TensorProto()
    enum = _ENUM.get(array.dtype)
    if enum is not None:
        proto.dtype = enum
        for size in array.shape:
            proto.tensor_shape.dim.add().size = size
        proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")
                                                    ).tobytes()
        return proto
    if array.dtype == np.bool_:  # listed one per element, as TensorFlow lists them
        proto.dtype = types_pb2.DT_BOOL
        proto.tensor_shape.SetInParent()  # present for a scalar too, as TensorFlow's
        for size in array.shape:
            proto.tensor_shape.dim.add().size = size
        proto.bool_val.extend(array.reshape(-1).tolist())
        return proto
    if array.dtype.kind in "SO":
        flat = array.reshape(-1).tolist()
        if all(isinstance(v, bytes) for v in flat):
            proto.dtype = types_pb2.DT_STRING
            for size in array.shape:
                proto.tensor_shape.dim.add().size = size
            proto.string_val.extend(flat)
            return proto
    return tf.make_tensor_proto(array)
