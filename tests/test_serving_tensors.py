"""The server's TensorProto conversions agree with TensorFlow's own."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from tfrec.serving.tensors import MalformedTensor, to_ndarray, to_proto

ARRAYS = [
    np.array([[b"85123A", b"22423", b""]], dtype=object),
    np.array([b"a", b"bb"], dtype="S2"),
    np.array([[0.5, -1.25], [3.0, 1e-30]], dtype=np.float32),
    np.arange(6, dtype=np.int32).reshape(2, 1, 3) - 3,
    np.array([2**40, -7], dtype=np.int64),
    np.array([0.1, 0.2], dtype=np.float64),
    np.int32(10),
    np.zeros((0, 3), dtype=np.float32),
    np.array([True, False]),
    np.array([[True], [False]]),
    np.array([1, 2], dtype=np.uint8),  # not a fast path either
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(np.shape(a))}")
def test_conversions_match_tensorflow(array):
    expected = tf.make_ndarray(tf.make_tensor_proto(array))
    for proto in (to_proto(array), tf.make_tensor_proto(array)):
        got = to_ndarray(proto)
        assert got.shape == expected.shape
        assert got.dtype == expected.dtype or (got.dtype == object and expected.dtype == object)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(tf.make_ndarray(proto), expected)


@pytest.mark.parametrize("array", [np.array([True, False, True]), np.zeros((2, 0), bool),
                                   np.array([[False], [True]]), np.bool_(True)])
def test_boolean_protos_are_tensorflows(array):
    assert to_proto(array) == tf.make_tensor_proto(array)


def test_values_listed_one_per_element_and_broadcast_scalars():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[4, 5, 6])
    proto.tensor_shape.dim.add().size = 3
    np.testing.assert_array_equal(to_ndarray(proto), [4, 5, 6])
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.5])
    proto.tensor_shape.dim.add().size = 4  # one value fills the tensor, as in TensorFlow
    np.testing.assert_array_equal(to_ndarray(proto), np.full(4, 1.5, np.float32))


def test_malformed_tensors_name_the_problem():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\0" * 6)
    proto.tensor_shape.dim.add().size = 2
    with pytest.raises(MalformedTensor, match="holds 6 bytes.*needs 8"):
        to_ndarray(proto)
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    proto.tensor_shape.dim.add().size = -1
    with pytest.raises(MalformedTensor, match="not fully defined"):
        to_ndarray(proto)
