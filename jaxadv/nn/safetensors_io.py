"""Read and write ``.safetensors`` files with NumPy only (no torch, no safetensors package).

The format: an 8-byte little-endian ``uint64`` header length ``N``; ``N`` bytes of UTF-8 JSON
mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the end of the header) plus an optional ``"__metadata__"`` string map; then the raw
little-endian, C-ordered tensor bytes.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["load_safetensors", "save_safetensors"]

# safetensors dtype tag -> little-endian NumPy dtype as stored. BF16 has no NumPy dtype: it is read
# as uint16 and widened (see _bf16_to_f32).
_READ_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
_WRITE_TAGS: dict[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    # bfloat16 is the upper half of a float32: shifting the bits up is exact.
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a ``.safetensors`` file into NumPy arrays.

    ``F16`` and ``BF16`` are widened to ``float32`` (exactly); ``F64``, ``F32``, integer and
    boolean tensors keep their type. ``"__metadata__"`` is skipped.

    Args:
        path: file to read.

    Returns:
        ``{name: array}`` in native byte order, in the file's header order.

    Raises:
        ValueError: a truncated or malformed file, or an unsupported dtype (the message names the
            tensor).
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{os.fspath(path)!r} is not a safetensors file: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(
            f"{os.fspath(path)!r}: header length {n} runs past the end of the file "
            f"({len(data)} bytes); the file is truncated or not safetensors"
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{os.fspath(path)!r}: the safetensors header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{os.fspath(path)!r}: the safetensors header is not a JSON object")
    body = memoryview(data)[8 + n :]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            tag = info["dtype"]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"tensor {name!r}: malformed header entry {info!r}") from e
        if tag not in _READ_DTYPES:
            raise ValueError(
                f"tensor {name!r}: unsupported safetensors dtype {tag!r} "
                f"(supported: {', '.join(_READ_DTYPES)})"
            )
        dtype = np.dtype(_READ_DTYPES[tag])
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(body) or end - begin != count * dtype.itemsize:
            raise ValueError(
                f"tensor {name!r}: data_offsets [{begin}, {end}] do not hold {tag}{list(shape)} "
                f"({count * dtype.itemsize} bytes) inside the {len(body)}-byte data section"
            )
        arr = np.frombuffer(body[begin:end], dtype=dtype, count=count).reshape(shape)
        if tag == "BF16":
            arr = _bf16_to_f32(arr)
        elif tag == "F16":
            arr = arr.astype(np.float32)
        else:
            arr = arr.astype(dtype.newbyteorder("="))  # native order, and a writable copy
        out[name] = arr
    return out


def save_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write NumPy (or JAX) arrays to a ``.safetensors`` file.

    Supported dtypes: float64/32/16, ``ml_dtypes.bfloat16`` (as ``BF16``), int64/32/16/8, uint8,
    bool.

    Args:
        path: file to write (overwritten).
        tensors: ``{name: array}``; names must be non-empty and not ``"__metadata__"``.
        metadata: optional ``{str: str}`` stored under ``"__metadata__"``.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from jaxadv.nn import load_safetensors, save_safetensors
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> save_safetensors(path, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
        >>> load_safetensors(path)["w"].shape
        (2, 3)
    """
    header: dict[str, Any] = {}
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must map str to str (the safetensors format requires it)")
        header["__metadata__"] = dict(metadata)
    chunks: list[bytes] = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        arr = np.asarray(value)
        tag = _WRITE_TAGS.get(arr.dtype.name)
        if tag is None:
            raise TypeError(
                f"tensor {name!r}: dtype {arr.dtype} cannot be stored in safetensors "
                f"(supported: {', '.join(_WRITE_TAGS)})"
            )
        if tag == "BF16":
            raw = np.ascontiguousarray(arr).view(np.uint16).astype("<u2").tobytes()
        else:
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": tag,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the reference writer pads the header to 8-byte alignment
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)
