"""The compact msgpack + raw-numpy codec used by featurizer tasks and results."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import numpy as np
import pytest

from feedserve.codec import CodecError, decode, encode


def assert_same_array(got: Any, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_round_trip_of_plain_data() -> None:
    msg = {
        "ints": [0, 1, -1, 2**62, -(2**63)],
        "floats": [0.5, -1e300, float("inf")],
        "flags": [True, False, None],
        "text": "naïve café – 日本語 – emoji 🚀",
        "raw": b"\x00\xff\x10binary",
        "nested": {"a": [{"b": {"c": []}}, {}], "empty": ""},
        7: "int key",
    }
    assert decode(encode(msg)) == msg


def test_tuples_come_back_as_lists_and_numpy_scalars_as_python() -> None:
    got = decode(encode({"t": (1, (2, 3)), "f": np.float32(1.5), "i": np.int64(-7)}))
    assert got == {"t": [1, [2, 3]], "f": 1.5, "i": -7}
    assert type(got["i"]) is int


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.linspace(-1, 1, 7, dtype=np.float64),
        np.array([-(2**63), 0, 2**63 - 1], dtype=np.int64),
        np.arange(-5, 5, dtype=np.int32),
        np.arange(10, dtype=np.int8),
        np.array([0, 255, 17], dtype=np.uint8),
        np.array([1.5, -2.25], dtype=np.float16),
        np.array([[True, False], [False, True]]),
        np.array([1 + 2j, -3j], dtype=np.complex64),
        np.array(["ab", "ü€"], dtype="<U2"),
        np.array(3.25, dtype=np.float32),  # 0-d
        np.array(7, dtype=np.int64),  # 0-d
        np.zeros(0, dtype=np.float32),  # empty
        np.zeros((3, 0, 2), dtype=np.int64),  # empty, several dims
    ],
    ids=lambda a: f"{a.dtype}-{list(a.shape)}",
)
def test_array_round_trip(array: np.ndarray) -> None:
    got = decode(encode({"x": array}))["x"]
    assert_same_array(got, array)


@pytest.mark.parametrize("dtype", [">f4", ">i8", ">u2", ">f8"])
def test_big_endian_input(dtype: str) -> None:
    array = np.arange(12).reshape(3, 4).astype(dtype)
    got = decode(encode(array))
    assert got.dtype == np.dtype(dtype).newbyteorder("<")
    np.testing.assert_array_equal(got, array)
    zero_d = decode(encode(np.array(2.5, dtype=">f8")))
    assert zero_d.shape == () and zero_d == 2.5


def test_non_contiguous_input() -> None:
    base = np.arange(60, dtype=np.int64).reshape(6, 10)
    for view in (base[:, ::3], base.T, base[::-2, 1:4], np.asfortranarray(base)):
        got = decode(encode(view))
        assert_same_array(got, np.ascontiguousarray(view))


def test_arrays_nested_in_messages() -> None:
    msg = {
        "member": {"input_ids": np.arange(5, dtype=np.int64), "known": True},
        "lists": [np.ones(2, np.float32), "x", [np.zeros((1, 1), np.int32)]],
    }
    got = decode(encode(msg))
    assert got["member"]["known"] is True
    assert_same_array(got["member"]["input_ids"], msg["member"]["input_ids"])  # type: ignore[index]
    assert got["lists"][1] == "x"
    assert_same_array(got["lists"][0], np.ones(2, np.float32))
    assert_same_array(got["lists"][2][0], np.zeros((1, 1), np.int32))


def test_decoded_arrays_are_read_only_and_decode_takes_any_buffer() -> None:
    data = encode(np.arange(4, dtype=np.int32))
    for buf in (data, bytearray(data), memoryview(data)):
        got = decode(buf)
        assert got.tolist() == [0, 1, 2, 3]
        assert not got.flags.writeable


@pytest.mark.parametrize(
    "value",
    [
        np.array([1, "a"], dtype=object),
        {"nested": [np.array([None])]},
        np.zeros(2, dtype=[("post_id", "<i8"), ("action", "u1")]),  # fields would be lost
        object(),
        {1, 2},
    ],
    ids=["object-array", "nested-object-array", "structured", "object", "set"],
)
def test_unencodable_values_are_rejected(value: Any) -> None:
    with pytest.raises(CodecError):
        encode(value)


def _ext(payload: bytes, code: int = 1) -> bytes:
    return bytes(msgpack.packb(msgpack.ExtType(code, payload)))


def _array_ext(header: object, body: bytes = b"") -> bytes:
    return _ext(bytes(msgpack.packb(header)) + body)


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "never-used-byte": b"\xc1",
    "list-cut-short": b"\x92\x01",
    "truncated": encode({"a": 1})[:-1],
    "trailing-bytes": encode([1, 2]) + b"\x01",
    "unknown-extension": _ext(b"", code=9),
    "array-without-header": _ext(b""),
    "header-not-a-pair": _array_ext(5),
    "unknown-dtype": _array_ext(("no-such-dtype", [1]), b"\x00" * 4),
    "dtype-not-a-string": _array_ext((1, [1]), b"\x00" * 4),
    "shape-not-ints": _array_ext(("<f4", ["a"]), b"\x00" * 4),
    "too-few-bytes": _array_ext(("<f4", [3]), b"\x00" * 4),
    "partial-item": _array_ext(("<f4", [1]), b"\x00" * 3),
    "object-dtype": _array_ext(("|O", [1]), b"\x00" * 8),  # no pickled objects sneak in
    "unhashable-map-key": b"\x81\x90\x01",  # {[]: 1}
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_bytes_raise_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


def test_float32_vector_is_compact() -> None:
    array = np.random.default_rng(0).normal(size=1024).astype(np.float32)
    data = encode(array)
    assert len(data) < 1.1 * array.nbytes
    assert len(data) < len(json.dumps(array.tolist())) / 2
    in_message = encode({"embedding": array, "post_id": 12})
    assert len(in_message) < 1.1 * array.nbytes
