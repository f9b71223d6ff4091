"""Import torchvision ResNet weights from ``.safetensors`` files, with NumPy only (no torch).

The safetensors format: an 8-byte little-endian ``uint64`` header length ``N``; ``N`` bytes of
UTF-8 JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the end of the header) plus an optional ``"__metadata__"`` string map; then
the raw little-endian, C-ordered tensor bytes.

Export from PyTorch with ``safetensors.torch.save_file(model.state_dict(), "resnet.safetensors")``
and load with :func:`resnet_from_safetensors`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxadv.nn.resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "load_safetensors",
    "save_safetensors",
    "load_torchvision_resnet",
    "resnet_from_safetensors",
]

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


# ---------------------------------------------------------------------------------------------
# torchvision -> NNX
# ---------------------------------------------------------------------------------------------

# Axis permutations between NNX's HWIO convolution kernels and torch's OIHW weights.
_OIHW_FROM_HWIO = (3, 2, 0, 1)
_HWIO_FROM_OIHW = (2, 3, 1, 0)


def _expected_tensors(
    module: nnx.Module,
) -> dict[str, tuple[nnx.Variable, tuple[int, ...], tuple[int, ...] | None]]:
    """``{torch name: (variable, torch shape, transpose torch -> NNX or None)}``."""
    expected = {}
    for path, sub in nnx.iter_modules(module):
        prefix = ".".join(str(p) for p in path)
        prefix = prefix + "." if prefix else ""
        if isinstance(sub, nnx.Conv):
            if sub.bias is not None:
                raise ValueError(
                    f"{prefix[:-1] or 'module'} is a Conv with a bias; torchvision ResNet "
                    "convolutions have none (use_bias=False)"
                )
            k = sub.kernel
            shape = tuple(k.shape[i] for i in _OIHW_FROM_HWIO)
            expected[prefix + "weight"] = (k, shape, _HWIO_FROM_OIHW)
        elif isinstance(sub, nnx.BatchNorm):
            for torch_name, var in (
                ("weight", sub.scale),
                ("bias", sub.bias),
                ("running_mean", sub.mean),
                ("running_var", sub.var),
            ):
                expected[prefix + torch_name] = (var, tuple(var.shape), None)
        elif isinstance(sub, nnx.Linear):
            k = sub.kernel
            expected[prefix + "weight"] = (k, (k.shape[1], k.shape[0]), (1, 0))
            if sub.bias is not None:
                expected[prefix + "bias"] = (sub.bias, tuple(sub.bias.shape), None)
    return expected


def load_torchvision_resnet(
    module: ResNet,
    tensors: Mapping[str, Any],
    *,
    strict: bool = True,
    prefix: str = "",
) -> ResNet:
    """Copy a torchvision ResNet ``state_dict`` (as arrays) into ``module``, in place.

    Names map one to one (``conv1.weight``, ``bn1.running_var``, ``layer3.1.downsample.0.weight``,
    ``fc.bias``, ...); convolution weights go from torch's ``OIHW`` to ``HWIO``, ``fc.weight`` from
    ``(out, in)`` to ``(in, out)``, BN ``weight/bias/running_mean/running_var`` to
    ``scale/bias/mean/var``. Every value is cast to the variable's dtype (``float32``).
    ``*.num_batches_tracked`` counters are ignored. The module's train/eval mode is unchanged.

    Args:
        module: a :class:`~jaxadv.nn.ResNet` of the matching architecture.
        tensors: ``{torch name: array}``, e.g. from :func:`load_safetensors`.
        strict: if ``True``, tensors the module has no place for are an error; if ``False`` they
            are ignored. Missing or mis-shaped tensors are always an error.
        prefix: a prefix every name carries in ``tensors`` (e.g. ``"module."`` for a state dict
            saved from ``nn.DataParallel``).

    Returns:
        ``module`` itself, with the imported weights.

    Raises:
        ValueError: naming every missing, unexpected (when ``strict``) and mis-shaped tensor; the
            module is left untouched in that case.
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"module must be a flax.nnx.Module, got {type(module).__name__}")
    expected = _expected_tensors(module)
    given = {}
    unexpected = []
    for name, value in tensors.items():
        if not name.startswith(prefix):
            unexpected.append(name)
            continue
        key = name[len(prefix) :]
        if key == "num_batches_tracked" or key.endswith(".num_batches_tracked"):
            continue
        if key in expected:
            given[key] = value
        else:
            unexpected.append(name)
    missing = [prefix + k for k in expected if k not in given]
    wrong = []
    for key, value in given.items():
        shape = tuple(np.shape(value))
        if shape != expected[key][1]:
            wrong.append(f"{prefix}{key}: expected {expected[key][1]}, got {shape}")
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
    if unexpected and strict:
        problems.append(
            f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected)} "
            "(pass strict=False to ignore them)"
        )
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}, torch layout): {'; '.join(wrong)}")
    if problems:
        raise ValueError(
            f"cannot load torchvision weights into {type(module).__name__}: " + "; ".join(problems)
        )
    for key, value in given.items():
        var, _, perm = expected[key]
        arr = np.asarray(value)
        if perm is not None:
            arr = arr.transpose(perm)
        var.set_value(jnp.asarray(arr, dtype=var.get_value().dtype))
    return module


_ARCHS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


def resnet_from_safetensors(
    path: str | os.PathLike,
    arch: str,
    num_classes: int | None = None,
    *,
    in_channels: int | None = None,
    stem: str | None = None,
    strict: bool = True,
    prefix: str = "",
) -> ResNet:
    """Build a ResNet and load torchvision weights from a ``.safetensors`` file.

    ``num_classes``, ``in_channels`` and ``stem`` default to what the file says (``fc.weight``'s
    rows, ``conv1.weight``'s input channels, and its kernel: 7x7 → ``'imagenet'``, 3x3 →
    ``'cifar'``); given explicitly they must agree with it. The returned module is in eval mode
    (running batch-norm statistics), ready for :func:`jaxadv.from_nnx`.

    Args:
        path: the ``.safetensors`` file (a torchvision ``state_dict``).
        arch: ``'resnet18'`` or ``'resnet50'``.
        num_classes, in_channels, stem: architecture overrides (see above).
        strict, prefix: as in :func:`load_torchvision_resnet`.

    Returns:
        The loaded :class:`~jaxadv.nn.ResNet`.
    """
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {sorted(_ARCHS)}, got {arch!r}")
    tensors = load_safetensors(path)
    conv1 = tensors.get(prefix + "conv1.weight")
    fc = tensors.get(prefix + "fc.weight")
    if conv1 is None or fc is None or conv1.ndim != 4 or fc.ndim != 2:
        raise ValueError(
            f"{os.fspath(path)!r} does not look like a torchvision ResNet state dict: "
            f"needs 4-d {prefix}conv1.weight and 2-d {prefix}fc.weight"
        )
    if num_classes is None:
        num_classes = int(fc.shape[0])
    if in_channels is None:
        in_channels = int(conv1.shape[1])
    if stem is None:
        stem = {7: "imagenet", 3: "cifar"}.get(int(conv1.shape[-1]))
        if stem is None:
            raise ValueError(
                f"cannot infer the stem from a {conv1.shape[-1]}x{conv1.shape[-1]} conv1 kernel; "
                "pass stem='imagenet' or 'cifar'"
            )
    block, layers = _ARCHS[arch]
    # Every weight is overwritten, so skip the random initialisation: build the module with
    # abstract (shape-only) variables and let the loader fill them in.
    module = nnx.eval_shape(
        lambda: ResNet(block, layers, num_classes, in_channels, stem=stem, rngs=nnx.Rngs(0))
    )
    load_torchvision_resnet(module, tensors, strict=strict, prefix=prefix)
    unfilled = [
        ".".join(str(p) for p in path)
        for path, leaf in nnx.to_flat_state(nnx.state(module))
        if isinstance(leaf.get_value(), jax.ShapeDtypeStruct)
    ]
    if unfilled:  # pragma: no cover - the loader covers every variable of a ResNet
        raise RuntimeError(f"variables left uninitialised after import: {', '.join(unfilled)}")
    module.eval()
    return module
