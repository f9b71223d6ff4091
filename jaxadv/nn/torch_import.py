"""Import torch weights from ``.safetensors`` files, with NumPy only (no torch).

Architectures: torchvision's ResNet-18/50, DenseNet-121 (and other DenseNets) and VGG-11/13/16/19
(with or without BN); RobustBench's WideResNet (28-10, 34-10, ...) and PreActResNet-18. One reader
(:func:`load_safetensors`, from :mod:`jaxadv.nn.safetensors_io`) and one loader
(:func:`load_torch_state_dict`, which checks every expected tensor's name and shape before writing
anything) serve them all; the ``*_from_safetensors`` functions read the architecture's sizes from
the file, build the module and load it in eval mode.

Export from PyTorch with ``safetensors.torch.save_file(model.state_dict(), "model.safetensors")``
(for a checkpoint that holds more than the weights, save its ``state_dict`` entry) and load with
the matching ``*_from_safetensors``; wrap with :func:`jaxadv.from_nnx` (with the model's
``mean``/``std``) to attack it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxadv.nn.densenet import DenseNet
from jaxadv.nn.resnet import BasicBlock, Bottleneck, ResNet
from jaxadv.nn.robustbench import PreActResNet, Shortcut, WideResNet
from jaxadv.nn.safetensors_io import load_safetensors, save_safetensors
from jaxadv.nn.vgg import VGG, VGG_CONFIGS

__all__ = [
    "load_safetensors",
    "save_safetensors",
    "load_torch_state_dict",
    "resnet_from_safetensors",
    "densenet_from_safetensors",
    "vgg_from_safetensors",
    "wide_resnet_from_safetensors",
    "preact_resnet_from_safetensors",
]

# ---------------------------------------------------------------------------------------------
# torch state dict -> NNX
# ---------------------------------------------------------------------------------------------

# Axis permutations between NNX's HWIO convolution kernels and torch's OIHW weights.
_OIHW_FROM_HWIO = (3, 2, 0, 1)
_HWIO_FROM_OIHW = (2, 3, 1, 0)
_LIST_AT_MOST = 6  # names listed per kind of problem; the count says how many there are


def _expected_tensors(
    module: nnx.Module,
) -> dict[str, tuple[nnx.Variable, tuple[int, ...], tuple[int, ...] | None]]:
    """``{torch name: (variable, torch shape, transpose torch -> NNX or None)}``."""
    expected = {}
    for path, sub in nnx.iter_modules(module):
        prefix = ".".join(str(p) for p in path)
        prefix = prefix + "." if prefix else ""
        if isinstance(sub, nnx.Conv):
            k = sub.kernel
            shape = tuple(k.shape[i] for i in _OIHW_FROM_HWIO)
            expected[prefix + "weight"] = (k, shape, _HWIO_FROM_OIHW)
            if sub.bias is not None:
                expected[prefix + "bias"] = (sub.bias, tuple(sub.bias.shape), None)
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


def _listed(names: list[str], sep: str = ", ") -> str:
    shown = sep.join(names[:_LIST_AT_MOST])
    more = len(names) - _LIST_AT_MOST
    return f"{shown}{sep}... and {more} more" if more > 0 else shown


def _hints(missing: list[str], unexpected: list[str], prefix: str) -> list[str]:
    """A prefix every name seems to carry, or the closest missing name of a renamed tensor."""
    if not missing or not unexpected:
        return []
    for name in unexpected[:50]:
        for key in missing:
            bare = key[len(prefix) :]
            if name == bare or name.endswith("." + bare):
                guess = name[: len(name) - len(bare)]
                return [
                    f"the file's names seem to carry the prefix {guess!r}: pass prefix={guess!r}"
                ]
    out = []
    for name in unexpected[:_LIST_AT_MOST]:
        close = difflib.get_close_matches(name, missing, n=1, cutoff=0.8)
        if close:
            out.append(f"{name} may be {close[0]}")
    return out


def load_torch_state_dict(
    module: nnx.Module,
    tensors: Mapping[str, Any],
    *,
    strict: bool = True,
    prefix: str = "",
) -> nnx.Module:
    """Copy a torch ``state_dict`` (as arrays) into an NNX module whose paths mirror its keys.

    Every ``nnx.Conv``, ``nnx.BatchNorm`` and ``nnx.Linear`` at attribute path ``a.b.3`` expects
    torch's ``a.b.3.weight`` (and ``.bias``; BN also ``.running_mean`` / ``.running_var``).
    Convolution weights go from torch's ``OIHW`` to ``HWIO``, Linear weights from ``(out, in)`` to
    ``(in, out)``, BN ``weight/bias/running_mean/running_var`` to ``scale/bias/mean/var``. Every
    value is cast to the variable's dtype (``float32``). ``*.num_batches_tracked`` counters are
    ignored. The module's train/eval mode is unchanged. Works for every architecture of
    :mod:`jaxadv.nn` (ResNet, DenseNet, VGG, WideResNet, PreActResNet).

    Args:
        module: the NNX module of the matching architecture (may hold abstract variables from
            ``nnx.eval_shape``; they are all filled).
        tensors: ``{torch name: array}``, e.g. from :func:`load_safetensors`.
        strict: if ``True``, tensors the module has no place for are an error; if ``False`` they
            are ignored. Missing or mis-shaped tensors are always an error.
        prefix: a prefix every name carries in ``tensors`` (e.g. ``"module."`` for a state dict
            saved from ``nn.DataParallel``).

    Returns:
        ``module`` itself, with the imported weights.

    Raises:
        ValueError: naming the missing, unexpected (when ``strict``) and mis-shaped tensors (a
            few of each, with their counts, and a hint for a renamed tensor or a forgotten
            prefix); checked before anything is written, so the module is left untouched.
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
        problems.append(f"missing tensors ({len(missing)}): {_listed(missing)}")
    if unexpected and strict:
        problems.append(
            f"unexpected tensors ({len(unexpected)}): {_listed(unexpected)} "
            "(pass strict=False to ignore them)"
        )
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}, torch layout): {_listed(wrong, '; ')}")
    if problems:
        hints = _hints(missing, unexpected, prefix)
        raise ValueError(
            f"cannot load torch weights into {type(module).__name__}: "
            + "; ".join(problems)
            + (f" (hint: {'; '.join(hints)})" if hints else "")
        )
    for key, value in given.items():
        var, _, perm = expected[key]
        arr = np.asarray(value)
        if perm is not None:
            arr = arr.transpose(perm)
        var.set_value(jnp.asarray(arr, dtype=var.get_value().dtype))
    return module


def _build_and_load(
    build: Callable[[], nnx.Module], tensors: Mapping[str, Any], strict: bool, prefix: str
) -> Any:
    # Every weight is overwritten, so skip the random initialisation: build the module with
    # abstract (shape-only) variables and let the loader fill them in.
    module = nnx.eval_shape(build)
    load_torch_state_dict(module, tensors, strict=strict, prefix=prefix)
    unfilled = [
        ".".join(str(p) for p in path)
        for path, leaf in nnx.to_flat_state(nnx.state(module))
        if isinstance(leaf.get_value(), jax.ShapeDtypeStruct)
    ]
    if unfilled:  # pragma: no cover - the loader covers every variable of these architectures
        raise RuntimeError(f"variables left uninitialised after import: {', '.join(unfilled)}")
    module.eval()
    return module


def _require(
    tensors: Mapping[str, Any], prefix: str, ndims: dict[str, int], what: str, path: Any
) -> list[np.ndarray]:
    """The tensors the architecture's sizes are read from, or an error naming those absent."""
    found = [tensors.get(prefix + name) for name in ndims]
    bad = [
        f"{nd}-d {prefix}{name}" + ("" if t is None else f" (got {t.ndim}-d)")
        for (name, nd), t in zip(ndims.items(), found, strict=True)
        if t is None or t.ndim != nd
    ]
    if bad:
        name = next(iter(ndims))
        carried = [k[: -len(name)] for k in tensors if k.endswith("." + name)]
        hint = f"pass prefix={carried[0]!r}" if carried else "pass prefix= if every name has one"
        raise ValueError(
            f"{os.fspath(path)!r} does not look like a {what} state dict: needs "
            f"{', '.join(bad)} ({hint})"
        )
    return found  # type: ignore[return-value]


def _count(tensors: Mapping[str, Any], pattern: str, start: int = 0) -> int:
    """How many consecutive ``i >= start`` have some name beginning with ``pattern.format(i)``.

    Any tensor of a block counts it, so one renamed tensor is reported by the loader as missing
    and unexpected rather than silently shrinking the architecture.
    """
    i = start
    while any(k.startswith(pattern.format(i)) for k in tensors):
        i += 1
    return i - start


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
        strict, prefix: as in :func:`load_torch_state_dict`.

    Returns:
        The loaded :class:`~jaxadv.nn.ResNet`.
    """
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {sorted(_ARCHS)}, got {arch!r}")
    tensors = load_safetensors(path)
    conv1, fc = _require(
        tensors, prefix, {"conv1.weight": 4, "fc.weight": 2}, "torchvision ResNet", path
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
    return _build_and_load(
        lambda: ResNet(block, layers, num_classes, in_channels, stem=stem, rngs=nnx.Rngs(0)),
        tensors,
        strict,
        prefix,
    )


# torchvision < 0.3 (and CheXNet checkpoints) named a dense layer's children "norm.1", "conv.2", ...;
# torchvision renames them on load the same way.
_LEGACY_DENSE = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def densenet_from_safetensors(
    path: str | os.PathLike,
    num_classes: int | None = None,
    *,
    in_channels: int | None = None,
    strict: bool = True,
    prefix: str = "",
) -> DenseNet:
    """Build a DenseNet and load torchvision weights (``densenet121`` layout) from ``.safetensors``.

    The architecture is read from the file: stem width and input channels from
    ``features.conv0.weight``, dense layers per block by counting ``denselayer{j}``, growth rate and
    ``bn_size`` from the first dense layer, ``num_classes`` from ``classifier.weight`` (14 for
    CheXNet). The old dense-layer names (``norm.1``, ``conv.2``, ...) of early torchvision and of
    CheXNet checkpoints are renamed as torchvision does. A CheXNet checkpoint typically needs
    ``prefix='module.densenet121.'``, and its ``classifier.0.*`` (a Linear inside a Sequential
    with the sigmoid) renamed to ``classifier.*``.

    Args:
        path: the ``.safetensors`` file.
        num_classes, in_channels: overrides; given explicitly they must agree with the file.
        strict, prefix: as in :func:`load_torch_state_dict`.

    Returns:
        The loaded :class:`~jaxadv.nn.DenseNet` in eval mode, ready for :func:`jaxadv.from_nnx`.
    """
    tensors = {_LEGACY_DENSE.sub(r"\1\2", k): v for k, v in load_safetensors(path).items()}
    first = "features.denseblock1.denselayer1."
    conv0, conv1, conv2, fc = _require(
        tensors,
        prefix,
        {
            "features.conv0.weight": 4,
            first + "conv1.weight": 4,
            first + "conv2.weight": 4,
            "classifier.weight": 2,
        },
        "torchvision DenseNet",
        path,
    )
    num_blocks = _count(tensors, prefix + "features.denseblock{}.", 1)
    blocks = [
        _count(tensors, f"{prefix}features.denseblock{i}.denselayer{{}}.", 1)
        for i in range(1, num_blocks + 1)
    ]
    growth = int(conv2.shape[0])
    bn_size = max(1, int(conv1.shape[0]) // growth)
    num_classes = int(fc.shape[0]) if num_classes is None else num_classes
    in_channels = int(conv0.shape[1]) if in_channels is None else in_channels
    return _build_and_load(
        lambda: DenseNet(
            growth,
            tuple(blocks),
            int(conv0.shape[0]),
            bn_size,
            num_classes,
            in_channels,
            rngs=nnx.Rngs(0),
        ),
        tensors,
        strict,
        prefix,
    )


def vgg_from_safetensors(
    path: str | os.PathLike,
    config: str = "vgg16",
    num_classes: int | None = None,
    *,
    batch_norm: bool | None = None,
    in_channels: int | None = None,
    strict: bool = True,
    prefix: str = "",
) -> VGG:
    """Build a VGG and load torchvision weights (``vgg16`` / ``vgg16_bn`` layout) from ``.safetensors``.

    ``batch_norm`` defaults to whether the file has ``features.1.running_mean`` (the ``_bn``
    variants); ``num_classes``, the hidden width and ``in_channels`` come from ``classifier.6``,
    ``classifier.0`` and ``features.0``.

    Args:
        path: the ``.safetensors`` file.
        config: ``'vgg11'``, ``'vgg13'``, ``'vgg16'`` or ``'vgg19'``.
        num_classes, batch_norm, in_channels: overrides; given explicitly they must agree with the
            file.
        strict, prefix: as in :func:`load_torch_state_dict`.

    Returns:
        The loaded :class:`~jaxadv.nn.VGG` in eval mode, ready for :func:`jaxadv.from_nnx`.
    """
    if config not in VGG_CONFIGS:
        raise ValueError(f"config must be one of {sorted(VGG_CONFIGS)}, got {config!r}")
    tensors = load_safetensors(path)
    conv0, fc0, fc6 = _require(
        tensors,
        prefix,
        {"features.0.weight": 4, "classifier.0.weight": 2, "classifier.6.weight": 2},
        "torchvision VGG",
        path,
    )
    if batch_norm is None:
        batch_norm = prefix + "features.1.running_mean" in tensors
    num_classes = int(fc6.shape[0]) if num_classes is None else num_classes
    in_channels = int(conv0.shape[1]) if in_channels is None else in_channels
    return _build_and_load(
        lambda: VGG(
            config,
            batch_norm=batch_norm,
            num_classes=num_classes,
            in_channels=in_channels,
            hidden=int(fc0.shape[0]),
            rngs=nnx.Rngs(0),
        ),
        tensors,
        strict,
        prefix,
    )


def wide_resnet_from_safetensors(
    path: str | os.PathLike,
    num_classes: int | None = None,
    *,
    depth: int | None = None,
    widen_factor: int | None = None,
    in_channels: int | None = None,
    strict: bool = True,
    prefix: str = "",
) -> WideResNet:
    """Build a RobustBench WideResNet and load its weights from ``.safetensors``.

    ``depth`` is ``6 n + 4`` for the ``n`` blocks counted in ``block1.layer``, ``widen_factor``
    is ``block1.layer.0.conv1.weight``'s output channels over 16; ``sub_block1`` and the bias of
    ``fc`` are held when the file has them. Checkpoints saved from ``nn.DataParallel`` need
    ``prefix='module.'``.

    Args:
        path: the ``.safetensors`` file (a RobustBench ``state_dict``).
        num_classes, depth, widen_factor, in_channels: overrides; given explicitly they must
            agree with the file.
        strict, prefix: as in :func:`load_torch_state_dict`.

    Returns:
        The loaded :class:`~jaxadv.nn.WideResNet` in eval mode, ready for :func:`jaxadv.from_nnx`.
    """
    tensors = load_safetensors(path)
    conv1, first, fc = _require(
        tensors,
        prefix,
        {"conv1.weight": 4, "block1.layer.0.conv1.weight": 4, "fc.weight": 2},
        "RobustBench WideResNet",
        path,
    )
    if depth is None:
        depth = 6 * _count(tensors, prefix + "block1.layer.{}.") + 4
    if widen_factor is None:
        widen_factor = max(1, int(first.shape[0]) // 16)
    num_classes = int(fc.shape[0]) if num_classes is None else num_classes
    in_channels = int(conv1.shape[1]) if in_channels is None else in_channels
    sub_block1 = any(k.startswith(prefix + "sub_block1.") for k in tensors)
    bias_last = prefix + "fc.bias" in tensors
    return _build_and_load(
        lambda: WideResNet(
            depth,
            widen_factor,
            num_classes,
            in_channels,
            sub_block1=sub_block1,
            bias_last=bias_last,
            rngs=nnx.Rngs(0),
        ),
        tensors,
        strict,
        prefix,
    )


def preact_resnet_from_safetensors(
    path: str | os.PathLike,
    num_classes: int | None = None,
    *,
    shortcut: Shortcut = "input",
    in_channels: int | None = None,
    strict: bool = True,
    prefix: str = "",
) -> PreActResNet:
    """Build a RobustBench PreActResNet (18 for ``(2, 2, 2, 2)``) and load its weights.

    Blocks per stage are counted in the file, ``bn_before_fc`` is whether it has ``bn.weight``.
    ``shortcut`` cannot be read from the weights: ``'input'`` for RobustBench's ``PreActBlock``
    (``PreActResNet18()``), ``'preact'`` for ``PreActBlockV2`` (see :mod:`jaxadv.nn.robustbench`).

    Args:
        path: the ``.safetensors`` file (a RobustBench ``state_dict``).
        num_classes, in_channels: overrides; given explicitly they must agree with the file.
        shortcut: ``'input'`` or ``'preact'``.
        strict, prefix: as in :func:`load_torch_state_dict`.

    Returns:
        The loaded :class:`~jaxadv.nn.PreActResNet` in eval mode, ready for
        :func:`jaxadv.from_nnx`.
    """
    if shortcut not in ("input", "preact"):
        raise ValueError(f"shortcut must be 'input' or 'preact', got {shortcut!r}")
    tensors = load_safetensors(path)
    conv1, fc = _require(
        tensors, prefix, {"conv1.weight": 4, "linear.weight": 2}, "RobustBench PreActResNet", path
    )
    layers = [_count(tensors, f"{prefix}layer{s}.{{}}.") for s in range(1, 5)]
    num_classes = int(fc.shape[0]) if num_classes is None else num_classes
    in_channels = int(conv1.shape[1]) if in_channels is None else in_channels
    bn_before_fc = prefix + "bn.weight" in tensors
    return _build_and_load(
        lambda: PreActResNet(
            layers,
            num_classes,
            in_channels,
            shortcut=shortcut,
            bn_before_fc=bn_before_fc,
            rngs=nnx.Rngs(0),
        ),
        tensors,
        strict,
        prefix,
    )
