"""Bounds on an ONNX model file, checked before ONNX Runtime builds a session from it (torch-free).

ONNX Runtime allocates every initializer a model declares and trusts declared shapes; a small
file can declare a tensor of 2**40 elements, or point its weights at any file on the disk
(external data, ``data_location = EXTERNAL``). :func:`onnx_problem` walks the protobuf wire format
(ONNX ``onnx.proto3``: ModelProto.graph = 7; GraphProto.node = 1, initializer = 5, input = 11,
output = 12; TensorProto.dims = 1, data_type = 2, raw_data = 9, external_data = 13,
data_location = 14) without the ``onnx`` package and refuses, in one line naming the file and the
tensor:

- a file larger than ``LIMITS.model_bytes``;
- a tensor (initializer, Constant node value) or a graph input/output whose declared shape has
  more than ``LIMITS.model_tensor_elements`` elements, or a negative dimension;
- raw data whose length differs from what the declared shape and type need;
- external data whose location is absolute, leaves the model's folder, or does not exist.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Iterator

from fetalplanes.core.limits import LIMITS

__all__ = ["onnx_problem"]


class ModelFileError(ValueError):
    """Internal: one refusal; :func:`onnx_problem` returns its message (``runtime.session.check_onnx``
    raises the public ``ModelFileError`` with it)."""

# TensorProto.DataType -> bytes per element (strings and sub-byte types are not size-checked).
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
                  17: 1, 18: 1, 19: 1, 20: 1}
_EXTERNAL = 1


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, int value or sub-buffer) of one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Malformed(f"field {number} declares {size} bytes past the end of its message")
            yield number, wire, buf[pos:pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise _Malformed(f"unsupported wire type {wire}")


def _packed(value: object) -> list[int]:
    if isinstance(value, int):
        return [value]
    out, pos, buf = [], 0, value
    while pos < len(buf):  # type: ignore[arg-type]
        item, pos = _varint(buf, pos)  # type: ignore[arg-type]
        out.append(item - (1 << 64) if item >= 1 << 63 else item)
    return out


def _tensor(buf: memoryview, path: Path, where: str) -> None:
    dims: list[int] = []
    name, dtype, raw, location, ext = "", 0, None, 0, {}
    for number, _wire, value in _fields(buf):
        if number == 1:
            dims += _packed(value)
        elif number == 2 and isinstance(value, int):
            dtype = value
        elif number == 8 and not isinstance(value, int):
            name = bytes(value).decode("utf-8", "replace")
        elif number == 9 and not isinstance(value, int):
            raw = len(value)
        elif number == 14 and isinstance(value, int):
            location = value
        elif number == 13 and not isinstance(value, int):
            entry = {n: bytes(v).decode("utf-8", "replace") for n, _w, v in _fields(value) if not isinstance(v, int)}
            ext[entry.get(1, "")] = entry.get(2, "")
    label = f"{where} {name!r}" if name else where
    count = _elements(dims, path, label)
    size = _ELEMENT_BYTES.get(dtype)
    if raw is not None and size is not None and raw != count * size:
        raise ModelFileError(f"{path}: {label} declares {count:,} elements of {size} byte(s) but holds {raw:,} bytes; "
                             "expected raw data matching its shape")
    if location == _EXTERNAL:
        _external(ext, path, label)


def _elements(dims: list[int], path: Path, label: str) -> int:
    if any(d < 0 for d in dims):
        raise ModelFileError(f"{path}: {label} declares a negative dimension {dims}; expected sizes >= 0")
    count = math.prod(dims) if dims else 1
    if count > LIMITS.model_tensor_elements:
        raise ModelFileError(f"{path}: {label} declares shape {dims} = {count:,} elements; "
                             f"at most {LIMITS.model_tensor_elements:,} per tensor (model_tensor_elements)")
    return count


def _external(ext: dict[str, str], path: Path, label: str) -> None:
    location = ext.get("location", "")
    parts = PurePosixPath(location.replace("\\", "/")).parts
    if not location or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":") or ".." in parts:
        raise ModelFileError(f"{path}: {label} keeps its data in {location!r}, outside the model's folder; "
                             "expected a self-contained model (`fetalplanes export`) or data next to it")
    target = (path.parent / location).resolve()
    if path.parent.resolve() not in target.parents or not target.is_file():
        raise ModelFileError(f"{path}: {label} keeps its data in {location!r}, which is not a file in the model's "
                             "folder; expected a self-contained model (`fetalplanes export`)")


def _value_info(buf: memoryview, path: Path, where: str) -> None:
    name, dims = "", []
    for number, _w, value in _fields(buf):
        if number == 1 and not isinstance(value, int):
            name = bytes(value).decode("utf-8", "replace")
        elif number == 2 and not isinstance(value, int):  # TypeProto
            for n2, _w2, tensor_type in _fields(value):
                if n2 != 1 or isinstance(tensor_type, int):
                    continue
                for n3, _w3, shape in _fields(tensor_type):
                    if n3 != 2 or isinstance(shape, int):
                        continue
                    for n4, _w4, dim in _fields(shape):
                        if n4 == 1 and not isinstance(dim, int):
                            dims += [v for n5, _w5, v in _fields(dim) if n5 == 1 and isinstance(v, int)]
    _elements([d - (1 << 64) if d >= 1 << 63 else d for d in dims], path, f"{where} {name!r}")


def _graph(buf: memoryview, path: Path) -> None:
    for number, _w, value in _fields(buf):
        if isinstance(value, int):
            continue
        if number == 5:
            _tensor(value, path, "initializer")
        elif number in (11, 12):
            _value_info(value, path, "graph input" if number == 11 else "graph output")
        elif number == 1:  # NodeProto.attribute = 5; AttributeProto.t = 5, tensors = 10
            for n2, _w2, attribute in _fields(value):
                if n2 == 5 and not isinstance(attribute, int):
                    for n3, _w3, tensor in _fields(attribute):
                        if n3 in (5, 10) and not isinstance(tensor, int):
                            _tensor(tensor, path, "constant")


def onnx_problem(path: str | Path) -> str | None:
    """Why an ONNX file's declared sizes or external data exceed
    :data:`~fetalplanes.core.limits.LIMITS` (one line naming the file and the tensor), or None."""
    path = Path(path)
    size = path.stat().st_size
    if size > LIMITS.model_bytes:
        return f"{path}: {size:,} bytes; at most {LIMITS.model_bytes:,} for a model file (model_bytes)"
    buf = memoryview(path.read_bytes())
    try:
        for number, _w, value in _fields(buf):
            if number == 7 and not isinstance(value, int):
                _graph(value, path)
    except _Malformed as err:
        return f"{path}: not a readable ONNX model ({err}); expected an .onnx from `fetalplanes export`"
    except ModelFileError as err:
        return str(err)
    return None
