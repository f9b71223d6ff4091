"""Model adapters: turn a Flax NNX module, a Linen module with variables, or a pure apply function
into one jaxadv target: a pytree callable ``model(x[B, H, W, K]) -> logits[B, C]``.

Parameters are pytree *leaves* (jit arguments), never closure constants, so new weights reuse the
compiled program. Eval mode is forced (dropout off, batch-norm running statistics). Normalisation
(mean/std) and grey→RGB repetition can be baked in, so that ``eps`` is always measured in the pixel
space ``[0, 1]`` the user sees.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._struct import pytree_dataclass, static

Array = jax.Array


@pytree_dataclass
class Model:
    """A classifier target: ``logits = apply_fn(params, preprocess(x))``.

    Attributes:
        apply_fn: pure function ``(params, x) -> logits[B, C]`` (static: part of the compiled program).
        params: any pytree of arrays (leaves: passed to jit as arguments).
        mean, std: optional per-channel normalisation applied after grey→RGB, in pixel units.
        grey_to_rgb: repeat a single channel three times before normalising.
    """

    apply_fn: Callable[[Any, Array], Array] = static()
    params: Any
    mean: Array | None = None
    std: Array | None = None
    grey_to_rgb: bool = static(default=False)

    def preprocess(self, x: Array) -> Array:
        if self.grey_to_rgb and x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        if self.mean is not None:
            x = x - _expand(jnp.asarray(self.mean, x.dtype), x)
        if self.std is not None:
            x = x / _expand(jnp.asarray(self.std, x.dtype), x)
        return x

    def __call__(self, x: Array) -> Array:
        logits = self.apply_fn(self.params, self.preprocess(x))
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return logits

    def with_params(self, params: Any) -> Model:
        """Same architecture, new weights (no recompile)."""
        return Model(
            apply_fn=self.apply_fn,
            params=params,
            mean=self.mean,
            std=self.std,
            grey_to_rgb=self.grey_to_rgb,
        )


def _expand(v: Array, x: Array) -> Array:
    """Per-channel ``[K]`` (or scalar) statistics shaped to broadcast against NHWC ``x``."""
    return v.reshape((1,) * (x.ndim - v.ndim) + v.shape)


def _norm_arrays(mean, std):
    m = None if mean is None else np.asarray(mean, np.float32)
    s = None if std is None else np.asarray(std, np.float32)
    if s is not None and np.any(s <= 0):
        raise ValueError(f"std must be positive, got {std!r}")
    return m, s


def from_apply(
    fn: Callable[[Any, Array], Array],
    params: Any,
    *,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    grey_to_rgb: bool = False,
) -> Model:
    """Wrap a pure function ``logits = fn(params, x)``.

    Example:
        >>> import jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.ones((4, 2)))
        >>> model(jnp.zeros((3, 2, 2, 1))).shape
        (3, 2)
    """
    if not callable(fn):
        raise TypeError(f"from_apply needs a callable fn(params, x), got {type(fn).__name__}")
    m, s = _norm_arrays(mean, std)
    return Model(apply_fn=fn, params=params, mean=m, std=s, grey_to_rgb=grey_to_rgb)


def _nnx_apply(graphdef, state, x):
    from flax import nnx

    module = nnx.merge(graphdef, state)
    return module(x)


class _NNXApply:
    """Hashable static apply function for an NNX graphdef (equal graphdefs → same compiled program)."""

    def __init__(self, graphdef):
        self.graphdef = graphdef

    def __call__(self, state, x):
        return _nnx_apply(self.graphdef, state, x)

    def __hash__(self):
        return hash(self.graphdef)

    def __eq__(self, other):
        return isinstance(other, _NNXApply) and self.graphdef == other.graphdef


def from_nnx(
    module: Any,
    *,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    grey_to_rgb: bool = False,
) -> Model:
    """Wrap a Flax NNX module. The module is switched to eval mode on a copy (dropout off, batch
    norm uses running statistics); the caller's module is left untouched.
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(
            f"from_nnx needs a flax.nnx.Module, got {type(module).__name__}; "
            "use from_linen(module, variables) for Linen or from_apply(fn, params) for a function"
        )
    module = nnx.clone(module)
    module.eval()
    graphdef, state = nnx.split(module)
    m, s = _norm_arrays(mean, std)
    return Model(apply_fn=_NNXApply(graphdef), params=state, mean=m, std=s, grey_to_rgb=grey_to_rgb)


_EVAL_KWARGS = {
    "train": False,
    "training": False,
    "is_training": False,
    "deterministic": True,
    "use_running_average": True,
}


class _LinenApply:
    def __init__(self, module, kwargs: tuple[tuple[str, Any], ...]):
        self.module = module
        self.kwargs = kwargs

    def __call__(self, variables, x):
        return self.module.apply(variables, x, **dict(self.kwargs))

    def __hash__(self):
        return hash((self.module, self.kwargs))

    def __eq__(self, other):
        return (
            isinstance(other, _LinenApply)
            and self.module == other.module
            and self.kwargs == other.kwargs
        )


def from_linen(
    module: Any,
    variables: Any,
    *,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    grey_to_rgb: bool = False,
    **apply_kwargs: Any,
) -> Model:
    """Wrap a Flax Linen module and its variables.

    Eval mode is forced by passing ``train=False`` / ``deterministic=True`` (whichever the module's
    ``__call__`` accepts); extra keyword arguments for ``module.apply`` can be given explicitly.
    """
    from flax import linen as nn

    if not isinstance(module, nn.Module):
        raise TypeError(f"from_linen needs a flax.linen.Module, got {type(module).__name__}")
    params = inspect.signature(type(module).__call__).parameters
    kw = {k: v for k, v in _EVAL_KWARGS.items() if k in params}
    kw.update(apply_kwargs)
    m, s = _norm_arrays(mean, std)
    return Model(
        apply_fn=_LinenApply(module, tuple(sorted(kw.items()))),
        params=variables,
        mean=m,
        std=s,
        grey_to_rgb=grey_to_rgb,
    )


class _CallableApply:
    """A plain ``x -> logits`` callable used as a static apply function (hashed by identity)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, params, x):
        return self.fn(x)

    def __hash__(self):
        return hash(id(self.fn))

    def __eq__(self, other):
        return isinstance(other, _CallableApply) and self.fn is other.fn


def call_pytree(model: Any, x: Array) -> Array:
    """``model(x)``: the apply function of a callable pytree used as a :class:`Model`."""
    return model(x)


def as_model(model: Any) -> Any:
    """Accept a :class:`Model`, an NNX module, or any callable ``x -> logits`` (a callable pytree,
    such as a :class:`jaxadv.defences.Defended` model, keeps its leaves as parameters)."""
    if isinstance(model, Model):
        return model
    try:
        from flax import nnx

        if isinstance(model, nnx.Module):
            return from_nnx(model)
    except ImportError:  # pragma: no cover - flax is a core dependency
        pass
    if callable(model) and not jax.tree_util.all_leaves([model]):
        # A callable pytree (a defended model, an ensemble, jaxadv.EOT): its leaves are the
        # parameters (jit arguments), the call itself the static apply function.
        return Model(apply_fn=call_pytree, params=model)
    if callable(model):
        return Model(apply_fn=_CallableApply(model), params=None)
    raise TypeError(
        f"model must be a jaxadv.Model, a flax.nnx.Module or a callable x -> logits, got "
        f"{type(model).__name__}"
    )
