"""Shared pieces of the detectors: batched host loops, logistic regression, save / load."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._struct import pytree_dataclass
from jaxadv.engine.layout import block_size, chunks, pad_rows

Array = jax.Array

#: class name -> detector / fitted-part class (filled by ``serializable``), used by :func:`load`.
CLASSES: dict[str, type] = {}


def serializable(cls: type) -> type:
    """Register a pytree dataclass for :func:`save` / :func:`load`."""
    CLASSES[cls.__name__] = cls
    return cls


def batched(fn: Callable[..., Any], x: Any, *args: Any, batch_size: int = 256) -> Any:
    """Apply the jitted ``fn(x_batch, *args)`` over ``x`` in fixed-size blocks (the last one padded
    by :func:`jaxadv.engine.layout.pad_rows`, so one compiled shape) and concatenate on the host.

    Returns the same pytree as ``fn`` with NumPy leaves of leading size ``len(x)``.
    """
    x = np.asarray(x, np.float32)
    n = x.shape[0]
    if n == 0:
        raise ValueError("no examples given (x has 0 rows)")
    size = block_size(n, batch_size)
    parts = []
    for idx in chunks(n, size):
        out = fn(pad_rows(x[idx], size), *args)
        m = len(idx)
        parts.append(jax.tree.map(lambda a, m=m: np.asarray(a)[:m], out))
    return jax.tree.map(lambda *a: np.concatenate(a, axis=0), *parts)


# -- logistic regression --------------------------------------------------------------------------
@serializable
@pytree_dataclass
class LogisticRegression:
    """``p(adversarial | z) = sigmoid(((z - mean) / scale) @ w + b)`` on features ``z[N, F]``."""

    mean: Array
    scale: Array
    w: Array
    b: Array

    def decision(self, z: Array) -> Array:
        """``z[N, F] -> [N]`` the log-odds of "adversarial"."""
        zs = (z - self.mean[None, :]) / self.scale[None, :]
        return zs @ self.w + self.b


@jax.jit
def _irls(zs: Array, t: Array, l2: Array) -> tuple[Array, Array]:
    n, f = zs.shape
    a = jnp.concatenate([zs, jnp.ones((n, 1), zs.dtype)], axis=1)
    reg = l2 * jnp.diag(jnp.concatenate([jnp.ones((f,), zs.dtype), jnp.zeros((1,), zs.dtype)]))

    def step(_, theta):
        p = jax.nn.sigmoid(a @ theta)
        grad = a.T @ (p - t) / n + reg @ theta
        hess = (a.T * (p * (1.0 - p))[None, :]) @ a / n + reg
        return theta - jnp.linalg.solve(hess + 1e-8 * jnp.eye(f + 1, dtype=zs.dtype), grad)

    theta = jax.lax.fori_loop(0, 100, step, jnp.zeros((f + 1,), zs.dtype))
    return theta[:f], theta[f]


def fit_logistic(z: Any, labels: Any, *, l2: float = 1e-3) -> LogisticRegression:
    """Ridge logistic regression by Newton's method (100 iterations, in JAX; no sklearn).

    Args:
        z: ``[N, F]`` features (standardised internally).
        labels: ``[N]`` 0 (clean) / 1 (adversarial).
        l2: ridge strength on the standardised weights (keeps separable data finite).
    """
    z = np.asarray(z, np.float64)
    t = np.asarray(labels, np.float64)
    if z.ndim != 2 or t.shape != (z.shape[0],):
        raise ValueError(f"z must be [N, F] and labels [N], got {z.shape} and {t.shape}")
    if not (np.any(t == 0) and np.any(t == 1)):
        raise ValueError("logistic regression needs both clean (0) and adversarial (1) examples")
    mean = z.mean(0)
    scale = z.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    zs = jnp.asarray((z - mean) / scale, jnp.float32)
    w, b = _irls(zs, jnp.asarray(t, jnp.float32), jnp.float32(l2))
    return LogisticRegression(
        mean=jnp.asarray(mean, jnp.float32), scale=jnp.asarray(scale, jnp.float32), w=w, b=b
    )


# -- save / load ----------------------------------------------------------------------------------
def _to_plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        out = {"__class__": type(v).__name__}
        for f in dataclasses.fields(v):
            if f.name != "model":
                out[f.name] = _to_plain(getattr(v, f.name))
        return out
    if isinstance(v, dict):
        return {"__dict__": {str(k): _to_plain(x) for k, x in v.items()}}
    if isinstance(v, (tuple, list)):
        return {"__tuple__": [_to_plain(x) for x in v]}
    if isinstance(v, (jax.Array, np.ndarray, np.generic)):
        a = np.asarray(v)
        return {"__array__": a.dtype.str, "shape": list(a.shape), "data": a.tobytes().hex()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"cannot save a value of type {type(v).__name__}")


def _from_plain(v: Any, model: Any) -> Any:
    if isinstance(v, dict):
        if "__class__" in v:
            cls = CLASSES[v["__class__"]]
            kw = {k: _from_plain(x, model) for k, x in v.items() if k != "__class__"}
            if any(f.name == "model" for f in dataclasses.fields(cls)):
                kw["model"] = model
            return cls(**kw)
        if "__dict__" in v:
            return {k: _from_plain(x, model) for k, x in v["__dict__"].items()}
        if "__tuple__" in v:
            return tuple(_from_plain(x, model) for x in v["__tuple__"])
        if "__array__" in v:
            a = np.frombuffer(bytes.fromhex(v["data"]), np.dtype(v["__array__"]))
            return jnp.asarray(a.reshape(v["shape"]))
    return v


def model_fingerprint(model: Any) -> str:
    """SHA-256 of a model's parameters (every array leaf of ``model.params``: dtype, shape and
    bytes, in tree order), the identity :func:`save` records and :func:`load` checks. The
    feature layers picked by :func:`jaxadv.features.with_features` do not enter it, nor PRNG
    key leaves (a dropout layer's RNG state is not a weight and may advance between runs)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(getattr(model, "params", model)):
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                continue
            a = np.ascontiguousarray(np.asarray(leaf))
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def save(detector: Any, path: str | pathlib.Path, *, model_name: str | None = None) -> pathlib.Path:
    """Write a fitted detector (its settings and fitted arrays, not the model) to a JSON file.

    Arrays are stored as their raw bytes, so :func:`load` restores them bit for bit. The file also
    records which model the detector was fitted on: ``model_name`` (free text, e.g. the model's
    name or path; shown in errors) and :func:`model_fingerprint` of the detector's model, which
    :func:`load` compares with the model it is given.
    """
    check_fitted(detector)
    path = pathlib.Path(path)
    ident = {"name": model_name, "params_sha256": model_fingerprint(detector.model)}
    doc = {"jaxadv_detector": 1, "detector": _to_plain(detector), "model": ident}
    path.write_text(json.dumps(doc))
    return path


def load(path: str | pathlib.Path, model: Any) -> Any:
    """Read a detector written by :func:`save` and attach ``model`` (the
    :class:`jaxadv.features.FeatureModel` it was fitted on; its layer names must match and, when
    the file records it, its parameters' fingerprint)."""
    det, ident = read_with_model_id(path)
    return attach(det, model, ident, source=path)


def attach(detector: Any, model: Any, model_id: dict | None, *, source: Any = "detector") -> Any:
    """``detector`` (read by :func:`read_with_model_id`) with ``model`` attached, after checking
    that ``model`` exposes its layers and is the model it was fitted on.

    Raises:
        ValueError: a layer is missing, or the file's fingerprint is not ``model``'s.

    Warns:
        UserWarning: the file predates the recorded model identity (it cannot be checked).
    """
    layers = getattr(detector, "layers", None)
    missing = [n for n in (layers or ()) if n not in model.layers]
    if missing:
        raise ValueError(
            f"the detector reads layers {missing} that the model does not expose "
            f"(model.layers = {model.layers}); build it with with_features(..., layers=...)"
        )
    want = (model_id or {}).get("params_sha256")
    if want is None:
        warnings.warn(
            f"{source} does not record which model it was fitted on (written before jaxadv "
            "recorded it); make sure it is this model's, or fit and save it again",
            UserWarning,
            stacklevel=2,
        )
    elif want != model_fingerprint(model):
        name = (model_id or {}).get("name")
        fitted = f"model {name!r}" if name else "another model"
        raise ValueError(
            f"{source} was fitted on {fitted} (parameter fingerprint {want[:12]}…), not on the "
            "model given here; load it with the model it was fitted on, or fit the detector on "
            "this model's features and save it again"
        )
    return dataclasses.replace(detector, model=model) if _has_model(detector) else detector


def _has_model(det: Any) -> bool:
    return any(f.name == "model" for f in dataclasses.fields(det))


def read(path: str | pathlib.Path, model: Any = None) -> Any:
    """Read a detector file written by :func:`save` and attach ``model`` without checking it
    (``None``: check the file alone, e.g. when a sweep config is loaded).

    Raises:
        ValueError: unreadable, not a detector file, malformed, or not fitted.
    """
    det, _ = read_with_model_id(path, model)
    return det


def read_with_model_id(path: str | pathlib.Path, model: Any = None) -> tuple[Any, dict | None]:
    """:func:`read`, also returning the model identity the file records (``{"name",
    "params_sha256"}``, ``None`` in files written before it was recorded): one read of the file
    for :func:`attach`."""
    path = pathlib.Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read a detector from {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("jaxadv_detector") != 1:
        raise ValueError(f"{path} is not a jaxadv detector file (written by jaxadv.detect.save)")
    try:
        det = _from_plain(doc.get("detector"), model)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} holds a malformed or unknown detector ({e!r})") from None
    if type(det).__name__ not in CLASSES or not hasattr(det, "score"):
        raise ValueError(f"{path} does not hold a detector")
    if not getattr(det, "fitted", False):
        raise ValueError(f"{path} holds a {type(det).__name__} that is not fitted")
    ident = doc.get("model")
    if ident is not None and not (
        isinstance(ident, dict) and isinstance(ident.get("params_sha256"), str)
    ):
        raise ValueError(f"{path} holds a malformed model identity ({ident!r})")
    return det, ident


def check_fitted(detector: Any) -> None:
    """Raise ``ValueError`` when ``detector`` has not been fitted yet."""
    if not getattr(detector, "fitted", False):
        raise ValueError(
            f"{type(detector).__name__} is not fitted; call det = det.fit(x_clean, y_clean, "
            "x_adv) first (fit returns the fitted detector)"
        )
