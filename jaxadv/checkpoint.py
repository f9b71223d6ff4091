"""Save and restore Flax NNX classifiers: weights plus a JSON metadata sidecar.

Two formats:

* ``'msgpack'`` (small models, the shipped reference models): one file holding
  ``flax.serialization.msgpack_serialize`` of the module's pure state dict (parameters and batch
  statistics; RNG streams are not saved), with its SHA-256 recorded in the metadata, so a truncated
  or corrupted file is reported as such rather than half-loaded.
* ``'orbax'`` (large or sharded state): an ``orbax.checkpoint.StandardCheckpointer`` directory.

The metadata ``<stem>.json`` beside the weights records the architecture name (a key of
:data:`ARCHITECTURES`) and its constructor keyword arguments, so :func:`load` can rebuild the module,
plus whatever the caller adds (normalisation ``mean``/``std``, test accuracy, seed, ...) and the
library versions. Every write is atomic: a temporary file (or directory) in the same folder is
renamed over the target only once complete.

Example:
    >>> import tempfile, pathlib
    >>> from flax import nnx
    >>> from jaxadv import checkpoint
    >>> from jaxadv.nn import SmallCNN
    >>> net = SmallCNN(2, 1, width=4, rngs=nnx.Rngs(0))
    >>> meta = {"architecture": "small_cnn", "kwargs": {"num_classes": 2, "width": 4}}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = checkpoint.save(pathlib.Path(d) / "net.msgpack", net, meta)
    ...     net2, meta2 = checkpoint.load(pathlib.Path(d) / "net.msgpack")
    >>> type(net2).__name__, meta2["kwargs"]["width"]
    ('SmallCNN', 4)
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization, traverse_util

from jaxadv._io import UnsafePathError, check_inside, is_safe_name, write_atomic

PathLike = str | os.PathLike

#: Format version written into every metadata file.
FORMAT_VERSION = 1

#: Architecture name -> factory ``factory(**kwargs, rngs=nnx.Rngs(0)) -> nnx.Module``.
ARCHITECTURES: dict[str, Callable[..., nnx.Module]] = {}

#: Names of the reference models shipped in ``jaxadv/assets``.
REFERENCE_MODELS = ("small_cnn_clean", "small_cnn_pgdat")
#: Shipped segmentation targets (per-pixel logits; attacked by jaxadv.attacks.dense, not by the
#: classification CLI / sweeps, which read REFERENCE_MODELS).
SEGMENTATION_MODELS = ("unet_isic",)


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used (corrupt, truncated, or the wrong model)."""


def register_architecture(
    name: str, factory: Callable[..., nnx.Module] | None = None
) -> Callable[..., Any]:
    """Register ``factory`` under ``name`` so that :func:`load` can rebuild it from metadata.

    The factory is called as ``factory(**kwargs, rngs=nnx.Rngs(0))`` (its initial weights are then
    overwritten). Usable directly or as a decorator::

        @register_architecture("my_net")
        class MyNet(nnx.Module): ...
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"architecture name must be a non-empty string, got {name!r}")

    def deco(f: Callable[..., nnx.Module]) -> Callable[..., nnx.Module]:
        if not callable(f):
            raise TypeError(f"factory for {name!r} must be callable, got {type(f).__name__}")
        ARCHITECTURES[name] = f
        return f

    return deco if factory is None else deco(factory)


def _register_builtins() -> None:
    from jaxadv.nn import VGG, DenseNet, SmallCNN, UNet, resnet18, resnet50

    register_architecture("small_cnn", SmallCNN)
    register_architecture("vgg", VGG)
    register_architecture("densenet", DenseNet)
    register_architecture("unet", UNet)
    register_architecture("resnet18", resnet18)
    register_architecture("resnet50", resnet50)


_register_builtins()


# --------------------------------------------------------------------------------------------------
# State <-> pure dict
# --------------------------------------------------------------------------------------------------

# RNG streams are training-time state (dropout keys): not part of a saved model.
_SAVED = nnx.Not(nnx.RngState)


def _str_path(path: tuple) -> tuple[str, ...]:
    return tuple(str(p) for p in path)


def state_dict(module: nnx.Module) -> dict[str, Any]:
    """The module's parameters and batch statistics as a nested dict of numpy arrays (string keys).

    This is exactly what the msgpack format stores (RNG streams are left out).
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"expected a flax.nnx.Module, got {type(module).__name__}")
    flat = nnx.to_flat_state(nnx.state(module, _SAVED))
    out = {_str_path(k): np.asarray(jax.device_get(v.get_value())) for k, v in flat}
    return traverse_util.unflatten_dict(out)


def _flat_arrays(tree: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    if not isinstance(tree, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(tree).__name__}, expected a state dict")
    return {_str_path(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def load_state_dict(module: nnx.Module, tree: Mapping[str, Any], *, source: str = "state") -> None:
    """Write a state dict (from :func:`state_dict` or a checkpoint) into ``module`` in place.

    Raises:
        CheckpointError: names, shapes or dtypes do not match the module's state (the message lists
            the first differences).
    """
    template = nnx.state(module, _SAVED)
    want = {_str_path(k): (k, v) for k, v in nnx.to_flat_state(template)}
    got = _flat_arrays(tree)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    problems = [f"missing {'/'.join(p)}" for p in missing[:5]]
    problems += [f"unexpected {'/'.join(p)}" for p in extra[:5]]
    for p in sorted(set(want) & set(got)):
        ref = want[p][1].get_value()
        arr = got[p]
        if tuple(np.shape(arr)) != tuple(ref.shape) or np.dtype(arr.dtype) != np.dtype(ref.dtype):
            problems.append(
                f"{'/'.join(p)}: checkpoint {np.dtype(arr.dtype)}{list(np.shape(arr))}, "
                f"module {np.dtype(ref.dtype)}{list(ref.shape)}"
            )
    if problems:
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: "
            + "; ".join(problems[:10])
            + " (was it saved from another architecture or with other constructor kwargs?)"
        )
    for p, (_, var) in want.items():
        var.set_value(jnp.asarray(got[p]))
    nnx.update(module, template)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def metadata_path(path: PathLike) -> pathlib.Path:
    """Where the metadata of the checkpoint at ``path`` lives: ``<stem>.json`` beside it."""
    return pathlib.Path(path).with_suffix(".json")


_atomic_write_bytes = write_atomic


def _versions() -> dict[str, str]:
    import flax

    import jaxadv

    v = {
        "jaxadv": getattr(jaxadv, "__version__", "unknown"),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }
    return v


def _infer_format(path: pathlib.Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ("msgpack", "orbax"):
            raise ValueError(f"format must be 'msgpack' or 'orbax', got {fmt!r}")
        return fmt
    if path.suffix == ".msgpack":
        return "msgpack"
    if path.suffix in ("", ".orbax"):
        return "orbax"
    raise ValueError(
        f"cannot tell the format from {path.name!r}: name it '*.msgpack' or '*.orbax', or pass "
        "format='msgpack' / 'orbax'"
    )


def save(
    path: PathLike,
    module: nnx.Module,
    meta: Mapping[str, Any] | None = None,
    *,
    format: str | None = None,
) -> pathlib.Path:
    """Save ``module``'s state to ``path`` and its metadata to ``<stem>.json``, atomically.

    Args:
        path: ``*.msgpack`` for a single msgpack file, ``*.orbax`` (or no suffix) for an orbax
            directory; an existing checkpoint there is replaced.
        module: the NNX module (parameters and batch statistics are saved, RNG streams are not).
        meta: JSON-serialisable metadata. For :func:`load` to rebuild the module without a template
            it needs ``'architecture'`` (a name registered in :data:`ARCHITECTURES`) and ``'kwargs'``
            (its constructor keyword arguments). Conventional keys: ``mean``, ``std``,
            ``test_accuracy``, ``seed``. ``format``, ``file``, ``sha256``, ``num_params`` and
            ``versions`` are filled in.
        format: ``'msgpack'`` or ``'orbax'``; inferred from the suffix when ``None``.

    Returns:
        The path of the metadata file.
    """
    path = pathlib.Path(path)
    fmt = _infer_format(path, format)
    meta = dict(meta or {})
    arch = meta.get("architecture")
    if arch is not None and arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)} "
            "(add yours with jaxadv.checkpoint.register_architecture)"
        )
    sd = state_dict(module)
    leaves = list(traverse_util.flatten_dict(sd).values())
    meta.update(
        format=fmt,
        format_version=FORMAT_VERSION,
        file=path.name,
        num_params=int(sum(int(np.prod(v.shape)) for v in leaves)),
        versions=_versions(),
    )
    meta.setdefault("kwargs", {})
    if fmt == "msgpack":
        data = serialization.msgpack_serialize(sd)
        meta["sha256"] = hashlib.sha256(data).hexdigest()
        meta["bytes"] = len(data)
    try:
        meta_bytes = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    except TypeError as e:
        raise TypeError(
            f"meta must be JSON-serialisable (plain lists, numbers, strings): {e}"
        ) from e
    if fmt == "msgpack":
        _atomic_write_bytes(path, data)
    else:
        _orbax_save(path, sd)
    # The metadata goes last: it carries the weights' checksum, so a crash in between is detected.
    mpath = metadata_path(path)
    _atomic_write_bytes(mpath, meta_bytes)
    return mpath


def _orbax_save(path: pathlib.Path, sd: dict) -> None:
    import orbax.checkpoint as ocp

    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = pathlib.Path(
        tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    )
    try:
        staged = tmp_root / "state"
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(staged, sd)
            ckptr.wait_until_finished()
        old = None
        if path.exists():
            old = tmp_root / "old"
            os.replace(path, old)
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def _orbax_restore(path: pathlib.Path, module: nnx.Module) -> dict:
    import orbax.checkpoint as ocp

    template = state_dict(module)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), template)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(path.absolute(), abstract)
    except (FileNotFoundError, CheckpointError):
        raise
    except Exception as e:
        raise CheckpointError(f"cannot restore orbax checkpoint {path}: {e}") from e


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The metadata of a checkpoint (``path`` is the weights path or the ``.json`` itself)."""
    path = pathlib.Path(path)
    mpath = path if path.suffix == ".json" else metadata_path(path)
    if not mpath.exists():
        raise FileNotFoundError(
            f"no checkpoint metadata at {mpath} (expected beside the weights {path}); "
            "save with jaxadv.checkpoint.save"
        )
    try:
        check_inside(path.parent, mpath)
    except UnsafePathError as e:
        raise CheckpointError(f"refusing to read checkpoint metadata: {e}") from e
    return _parse_meta(mpath.read_bytes(), str(mpath))


def _parse_meta(data: bytes, source: str) -> dict[str, Any]:
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"checkpoint metadata {source} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or "format" not in meta:
        raise CheckpointError(f"{source} is not jaxadv checkpoint metadata (no 'format' key)")
    problem = _check_meta(meta)
    if problem:
        raise CheckpointError(f"checkpoint metadata {source}: {problem}; re-save the checkpoint")
    return meta


def _is_numbers(v: Any) -> bool:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return True
    return isinstance(v, list) and all(_is_numbers(x) for x in v)


def _check_meta(meta: dict[str, Any]) -> str | None:
    """``None`` when the fields the loader uses have the right types (the file is untrusted)."""
    if meta["format"] not in ("msgpack", "orbax"):
        return f"'format' must be 'msgpack' or 'orbax', got {meta['format']!r}"
    f = meta.get("file")
    if f is not None and not is_safe_name(f):
        return f"'file' must be a plain file name beside the metadata, got {f!r}"
    if not isinstance(meta.get("kwargs", {}), dict):
        return f"'kwargs' must be an object, got {type(meta['kwargs']).__name__}"
    for k in ("architecture", "sha256"):
        if meta.get(k) is not None and not isinstance(meta[k], str):
            return f"{k!r} must be a string, got {meta[k]!r}"
    for k in ("mean", "std"):
        if meta.get(k) is not None and not _is_numbers(meta[k]):
            return f"{k!r} must be a number or a list of numbers, got {meta[k]!r}"
    return None


def _check_tree_inside(root: pathlib.Path) -> None:
    """Every file and link in an orbax directory stays inside it (no link out)."""
    try:
        check_inside(root.parent, root)
        for p in root.rglob("*"):
            check_inside(root, p)
    except UnsafePathError as e:
        raise CheckpointError(f"refusing to read checkpoint {root}: {e}") from e


def build_module(meta: Mapping[str, Any]) -> nnx.Module:
    """A freshly initialised module of the architecture recorded in ``meta`` (eval mode)."""
    arch = meta.get("architecture")
    if arch is None:
        raise CheckpointError(
            "the metadata names no 'architecture': pass module=<a module of the same shape> to load"
        )
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)} "
            "(register it with jaxadv.checkpoint.register_architecture before loading)"
        )
    kwargs = meta.get("kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"'kwargs' in the metadata must be an object, got {kwargs!r}")
    try:
        module = ARCHITECTURES[arch](**dict(kwargs), rngs=nnx.Rngs(0))
    except TypeError as e:  # unknown or missing constructor keywords
        raise CheckpointError(f"cannot build {arch!r} from the metadata's kwargs: {e}") from e
    module.eval()
    return module


def _restore_msgpack(
    data: bytes, meta: Mapping[str, Any], module: nnx.Module, source: str
) -> nnx.Module:
    want = meta.get("sha256")
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise CheckpointError(
            f"{source} is corrupt or incomplete: its SHA-256 does not match the metadata "
            f"({len(data)} bytes, expected {meta.get('bytes', '?')}); re-save or re-download it"
        )
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:
        raise CheckpointError(f"{source} is not a readable msgpack checkpoint: {e}") from e
    load_state_dict(module, tree, source=source)
    return module


def load(path: PathLike, *, module: nnx.Module | None = None) -> tuple[nnx.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save`.

    Args:
        path: the weights path (``*.msgpack`` file or orbax directory) or its ``.json`` metadata.
        module: optional template of the same architecture to load into (it is copied, not
            modified); by default the module is rebuilt from the metadata's ``architecture`` and
            ``kwargs``.

    Returns:
        ``(module, meta)``; the module is in eval mode (call ``.train()`` to fine-tune).

    Raises:
        FileNotFoundError: the weights or the metadata are missing.
        CheckpointError: they exist but are corrupt or do not fit the architecture.
    """
    path = pathlib.Path(path)
    meta = read_metadata(path)
    if path.suffix == ".json":
        if meta.get("file") is None:
            raise CheckpointError(f"{path} names no weights 'file'; load the weights path instead")
        wpath = path.parent / meta["file"]  # a plain name (checked): never outside this folder
        try:
            check_inside(path.parent, wpath)
        except UnsafePathError as e:
            raise CheckpointError(f"refusing to read checkpoint weights: {e}") from e
    else:
        wpath = path
    if not wpath.exists():
        raise FileNotFoundError(f"checkpoint weights {wpath} are missing (metadata found)")
    if module is None:
        target = build_module(meta)
    else:
        target = nnx.clone(module)
        target.eval()
    fmt = meta["format"]
    if fmt == "msgpack":
        if not wpath.is_file():
            raise CheckpointError(f"{wpath} should be a msgpack file")
        _restore_msgpack(wpath.read_bytes(), meta, target, str(wpath))
    elif fmt == "orbax":
        _check_tree_inside(wpath)
        load_state_dict(target, _orbax_restore(wpath, target), source=str(wpath))
    else:
        raise CheckpointError(f"unknown checkpoint format {fmt!r} in {metadata_path(wpath)}")
    return target, meta


# --------------------------------------------------------------------------------------------------
# Shipped reference models
# --------------------------------------------------------------------------------------------------


def _asset(name: str):
    return importlib.resources.files("jaxadv").joinpath("assets", name)


def load_reference(name: str) -> tuple[nnx.Module, dict[str, Any]]:
    """A reference model shipped with jaxadv, as ``(module, meta)`` (module in eval mode).

    ``name`` is one of :data:`REFERENCE_MODELS`: ``'small_cnn_clean'`` (standard training) or
    ``'small_cnn_pgdat'`` (PGD adversarial training), SmallCNNs trained on PneumoniaMNIST (28×28
    grey, 2 classes); ``meta`` records normalisation, accuracies, seed and provenance (see
    ``jaxadv/assets/MODELS.md``). ``'unet_isic'`` is the segmentation target: a
    :class:`jaxadv.nn.UNet` trained on ISIC 2017 lesion masks (64×64 RGB, logits
    ``[B, 64, 64, 2]``; ``jaxadv/assets/UNET.md``).

    Example:
        >>> from jaxadv.checkpoint import load_reference
        >>> net, meta = load_reference("small_cnn_clean")
        >>> meta["architecture"], meta["dataset"]
        ('small_cnn', 'pneumoniamnist')
    """
    if name not in REFERENCE_MODELS + SEGMENTATION_MODELS:
        raise ValueError(
            f"unknown reference model {name!r}; choose one of "
            f"{REFERENCE_MODELS + SEGMENTATION_MODELS}"
        )
    meta_res, weights_res = _asset(f"{name}.json"), _asset(f"{name}.msgpack")
    if not meta_res.is_file() or not weights_res.is_file():
        raise FileNotFoundError(
            f"reference model {name!r} is not installed (jaxadv/assets/{name}.msgpack/.json); "
            "regenerate it with scripts/train_reference.py (scripts/train_unet.py for unet_isic)"
        )
    meta = _parse_meta(meta_res.read_bytes(), f"assets/{name}.json")
    module = build_module(meta)
    _restore_msgpack(weights_res.read_bytes(), meta, module, f"assets/{name}.msgpack")
    return module, meta


def as_target(module: nnx.Module, meta: dict[str, Any]) -> Any:
    """A loaded checkpoint ``(module, meta)`` as a ready attack target (:class:`jaxadv.Model`,
    eval mode, the normalisation its metadata records baked in): the one rule for every loader."""
    from jaxadv.models import from_nnx

    return from_nnx(module, mean=meta.get("mean"), std=meta.get("std"))


def reference_model(name: str) -> Any:
    """A shipped reference model as a ready attack target (:class:`jaxadv.Model`, eval mode,
    normalisation baked in so inputs are pixels in ``[0, 1]``).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxadv.checkpoint import reference_model
        >>> model = reference_model("small_cnn_pgdat")
        >>> model(jnp.zeros((3, 28, 28, 1))).shape
        (3, 2)
    """
    return as_target(*load_reference(name))


__all__ = [
    "ARCHITECTURES",
    "REFERENCE_MODELS",
    "SEGMENTATION_MODELS",
    "CheckpointError",
    "as_target",
    "build_module",
    "load",
    "load_reference",
    "load_state_dict",
    "metadata_path",
    "read_metadata",
    "reference_model",
    "register_architecture",
    "save",
    "state_dict",
]
