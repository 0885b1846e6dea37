"""msgpack with numpy arrays and scalars as openpi's msgpack_numpy packs them, and no pickle anywhere.

    packb(obj) -> bytes;  unpackb(data) -> obj

Arrays: ndarray -> {b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": shape}; numpy
scalars -> {b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}. Object, void and complex dtypes are
refused in both directions (an object array could only travel as pickle).
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

REFUSED_KINDS = ("O", "V", "c")  # object, void (structured / raw), complex
ARRAY_TAG, SCALAR_TAG = b"__ndarray__", b"__npgeneric__"


def _refuse(dtype: np.dtype, where: str) -> None:
    if dtype.kind in REFUSED_KINDS:
        raise ValueError(f"{where} has dtype {dtype} ({dtype.str}); object, void and complex arrays cannot be "
                        "sent (there is no pickle fallback)")


def encode_numpy(obj: Any) -> Any:
    """msgpack `default` hook: numpy arrays and scalars -> tagged maps (anything else msgpack cannot pack
    raises TypeError naming its type)."""
    if isinstance(obj, np.ndarray):
        _refuse(obj.dtype, "an array")
        return {ARRAY_TAG: True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        _refuse(obj.dtype, "a numpy scalar")
        return {SCALAR_TAG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot pack an object of type {type(obj).__name__} (send numpy arrays, numbers, strings, "
                    "lists and dicts)")


def decode_numpy(obj: dict) -> Any:
    """msgpack `object_hook`: tagged maps -> numpy arrays (read-only views of the message) and scalars. Checks
    the dtype and that the bytes fit the shape, so a forged map raises a clear error instead of reading past."""
    if ARRAY_TAG in obj:
        dtype = _wire_dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        data = obj.get(b"data")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ValueError(f"array map has shape {shape!r}; expected a list of non-negative ints")
        if not isinstance(data, bytes):
            raise ValueError(f"array map has data of type {type(data).__name__}; expected bytes")
        want = math.prod(shape) * dtype.itemsize
        if len(data) != want:
            raise ValueError(f"array map of shape {list(shape)} and dtype {dtype.str} needs {want} bytes, got "
                             f"{len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if SCALAR_TAG in obj:
        dtype = _wire_dtype(obj.get(b"dtype"))
        return dtype.type(obj.get(b"data"))
    return obj


def _wire_dtype(name: Any) -> np.dtype:
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    if not isinstance(name, str):
        raise ValueError(f"array map has dtype {name!r}; expected a dtype string such as '<f4'")
    try:
        dtype = np.dtype(name)
    except TypeError as err:
        raise ValueError(f"array map has an unknown dtype {name!r}: {err}") from None
    _refuse(dtype, "array map")
    return dtype


def packb(obj: Any) -> bytes:
    """obj -> msgpack bytes, numpy arrays and scalars included (as openpi's msgpack_numpy packs them)."""
    return msgpack.packb(obj, default=encode_numpy, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """msgpack bytes -> obj, tagged maps back to numpy arrays and scalars."""
    return msgpack.unpackb(data, object_hook=decode_numpy, raw=False)
