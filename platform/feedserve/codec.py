"""Compact binary encoding for messages that carry tensors (featurizer tasks and results).

msgpack with one extension type for numpy arrays: dtype string, shape and the raw
little-endian bytes. A float32 [1024] array costs 4 KiB plus a few bytes, not the ~12 KiB of
a JSON list. Only plain data crosses the wire (no pickle), so a message cannot execute code.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_NDARRAY = 1
CONTENT_TYPE = "application/x-feedserve-msgpack"
SERIALIZER_NAME = "feedserve"


class CodecError(ValueError):
    """Raised when a message cannot be encoded or decoded."""


def _default(obj: object) -> msgpack.ExtType:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise CodecError("object arrays cannot be encoded")
        if obj.dtype.fields is not None:  # dtype.str would be "|V<n>": the fields would be lost
            raise CodecError("structured arrays cannot be encoded")
        arr = np.ascontiguousarray(obj)
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        # obj.shape, not arr.shape: ascontiguousarray turns a 0-d array into shape (1,)
        header = msgpack.packb((dt.str, list(obj.shape)))
        return msgpack.ExtType(_NDARRAY, header + arr.astype(dt, copy=False).tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    raise CodecError(f"cannot encode {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _NDARRAY:
        raise CodecError(f"unknown extension type {code}")
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    try:
        dtype_str, shape = next(unpacker)
        offset = unpacker.tell()
        arr = np.frombuffer(data, dtype=np.dtype(dtype_str), offset=offset)
        return arr.reshape(shape)
    except (StopIteration, TypeError, ValueError) as exc:  # a header that is not (dtype, shape)
        raise CodecError(f"malformed array: {exc!r}") from exc


def encode(obj: Any) -> bytes:
    """Encode nested dicts/lists/scalars/strings/bytes and numpy arrays."""
    return msgpack.packb(obj, default=_default, use_bin_type=True, strict_types=False)


def decode(data: bytes | bytearray | memoryview) -> Any:
    """Inverse of :func:`encode`. Arrays come back read-only views on the message buffer."""
    try:
        return msgpack.unpackb(bytes(data), ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
        ValueError,
        TypeError,
    ) as exc:
        raise CodecError(f"malformed message: {exc}") from exc
