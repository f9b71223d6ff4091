"""Named intermediate features of a target, in the same call as its logits.

Feature-space detectors (``jaxadv.detect``) and the HFC attack read a classifier's hidden layers.
:func:`with_features` turns a target into a :class:`FeatureModel`: still a plain attack target
(``model(x) -> logits[B, C]``), plus ``model.features(x) -> (logits[B, C], {name: h[B, d_l]})``
where every feature map is global-average-pooled over its spatial axes (a ``[B, d]`` output is
kept as it is). Parameters stay pytree leaves, so both calls are jittable and new weights never
retrace.

Layer names are dotted paths into a Flax NNX module: a submodule (``"conv2"``, ``"layer3.1"``)
names its ``__call__`` output (a list of blocks, ``"layer3"``, its last block's), a method (``"features"``) names that method's output, and a value a
user module stored with ``self.sow(nnx.Intermediate, "name", v)`` is found by its name. Collected
with :func:`flax.nnx.capture` (``method_outputs``), so no change to the module is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxadv._struct import pytree_dataclass, static
from jaxadv.models import Model, from_apply, from_nnx

Array = jax.Array

#: Default feature layers of the shipped architectures (``[B, d_l]`` after pooling).
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    # SmallCNN: both conv blocks (after batch norm) and the penultimate ReLU (dropout output, the
    # identity in eval mode); the last one is what KD / BU read.
    "SmallCNN": ("bn1", "bn2", "drop"),
    # ResNet: the four stages' last blocks, then the pooled penultimate features.
    "ResNet": ("layer1", "layer2", "layer3", "layer4", "features"),
}


def pool(h: Array) -> Array:
    """Global average pool: ``[B, H, W, K] -> [B, K]`` (any rank > 2 averages the middle axes);
    ``[B, d]`` is returned unchanged."""
    if h.ndim <= 2:
        return h
    return jnp.mean(h, axis=tuple(range(1, h.ndim - 1)))


def _captured(inter: Any) -> dict[str, Array]:
    """``nnx.capture`` state -> ``{dotted name: first captured value}``; a module's ``__call__``
    output is filed under the module's own path."""
    out: dict[str, Array] = {}
    for path, v in jax.tree_util.tree_leaves_with_path(inter):
        parts = []
        for k in path:
            if isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value":
                break  # the Variable holding the tuple of sown values
            parts.append(str(getattr(k, "key", getattr(k, "idx", k))))
        if len(parts) >= 2 and parts[-2] == "__call__" and parts[-1].isdigit():
            parts = parts[:-1]  # Linen: intermediates/<path>/__call__/(value,)
        if parts and parts[-1] == "__call__":
            parts.pop()
        out.setdefault(".".join(parts) or "logits", v)
    # A container of blocks (an nnx.List stage such as ResNet's "layer3") is never called itself:
    # its name stands for its last block's output.
    for name in list(out):
        head, _, tail = name.rpartition(".")
        if head and tail.isdigit() and head not in out:
            last = max(
                int(n.rpartition(".")[2])
                for n in out
                if n.rpartition(".")[0] == head and n.rpartition(".")[2].isdigit()
            )
            out[head] = out[f"{head}.{last}"]
    return out


class NNXFeatures:
    """Static feature function of an NNX graphdef: ``(state, x, key) -> (logits, {name: h})``.

    ``key`` (or ``None``) switches every :class:`flax.nnx.Dropout` to training mode with that key
    (Monte Carlo dropout, for :class:`jaxadv.detect.BayesianUncertainty`); batch norm stays in eval
    mode. Hashable by graphdef and layers, so equal models share one compiled program.
    """

    def __init__(self, graphdef: Any, layers: tuple[str, ...]):
        self.graphdef = graphdef
        self.layers = layers

    def __call__(self, state: Any, x: Array, key: Array | None = None):
        from flax import nnx

        module = nnx.merge(self.graphdef, state)
        if key is not None:
            drops = [m for _, m in nnx.iter_modules(module) if isinstance(m, nnx.Dropout)]
            for i, m in enumerate(drops):
                m.deterministic = False
                m.rngs = nnx.Rngs(dropout=jax.random.fold_in(key, i)).dropout
        logits, inter = nnx.capture(module, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
        found = _captured(inter)
        return logits, {name: pool(found[name]) for name in self.layers}

    def available(self, state: Any, x: Array) -> list[str]:
        """Every capturable name for input shape ``x`` (abstract evaluation, no compute)."""
        from flax import nnx

        def names(state, x):
            module = nnx.merge(self.graphdef, state)
            _, inter = nnx.capture(module, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
            return _captured(inter)

        return sorted(jax.eval_shape(names, state, x))

    def has_dropout(self, state: Any) -> bool:
        from flax import nnx

        module = nnx.merge(self.graphdef, state)
        return any(isinstance(m, nnx.Dropout) for _, m in nnx.iter_modules(module))

    def __hash__(self):
        return hash((self.graphdef, self.layers))

    def __eq__(self, other):
        return (
            isinstance(other, NNXFeatures)
            and self.graphdef == other.graphdef
            and self.layers == other.layers
        )


class LinenFeatures:
    """Static feature function of a Linen module (``capture_intermediates``): submodules by their
    auto or given names (``"Conv_0"``, ``"Dense_1"``), ``sow``n values by name. Monte Carlo dropout
    is not supported (``key`` must be ``None``)."""

    def __init__(self, module: Any, kwargs: tuple, layers: tuple[str, ...]):
        self.module, self.kwargs, self.layers = module, kwargs, layers

    def _run(self, variables, x):
        logits, state = self.module.apply(
            variables, x, capture_intermediates=True, mutable=["intermediates"], **dict(self.kwargs)
        )
        return logits, _captured(state["intermediates"])

    def __call__(self, variables: Any, x: Array, key: Array | None = None):
        if key is not None:
            raise ValueError("Monte Carlo dropout is not supported for Linen models")
        logits, found = self._run(variables, x)
        return logits, {name: pool(found[name]) for name in self.layers}

    def available(self, variables: Any, x: Array) -> list[str]:
        return sorted(jax.eval_shape(lambda v, x: self._run(v, x)[1], variables, x))

    def has_dropout(self, variables: Any) -> bool:
        return False

    def __hash__(self):
        return hash((self.module, self.kwargs, self.layers))

    def __eq__(self, other):
        return isinstance(other, LinenFeatures) and (self.module, self.kwargs, self.layers) == (
            other.module,
            other.kwargs,
            other.layers,
        )


@pytree_dataclass
class FeatureModel(Model):
    """A :class:`jaxadv.Model` that also returns named, pooled intermediate features.

    Attributes:
        feature_fn: static ``(params, x_preprocessed, key_or_None) -> (logits[B, C],
            {name: h[B, d_l]})``.
        layers: the feature names, in order (static).
    """

    feature_fn: Callable[..., Any] = static(default=None)
    layers: tuple[str, ...] = static(default=())

    def features(self, x: Array, key: Array | None = None) -> tuple[Array, dict[str, Array]]:
        """``x[B, H, W, K]`` pixels -> ``(logits[B, C], {name: h[B, d_l]})`` in one forward pass.

        ``key`` turns Monte Carlo dropout on (models with dropout layers only).
        """
        logits, feats = self.feature_fn(self.params, self.preprocess(x), key)
        return logits, {n: feats[n].astype(jnp.float32) for n in self.layers}

    def with_params(self, params: Any) -> FeatureModel:
        """Same architecture, new weights (no recompile)."""
        return FeatureModel(
            apply_fn=self.apply_fn,
            params=params,
            mean=self.mean,
            std=self.std,
            grey_to_rgb=self.grey_to_rgb,
            feature_fn=self.feature_fn,
            layers=self.layers,
        )


class _FnFeatures:
    """A user function ``(params, x, key) -> (logits, {name: h})`` pooled to ``[B, d]``."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, params, x, key=None):
        logits, feats = self.fn(params, x, key)
        return logits, {k: pool(v) for k, v in feats.items()}

    def __hash__(self):
        return hash(id(self.fn))

    def __eq__(self, other):
        return isinstance(other, _FnFeatures) and self.fn is other.fn


class _LogitsOnly:
    def __init__(self, feature_fn):
        self.feature_fn = feature_fn

    def __call__(self, params, x):
        return self.feature_fn(params, x, None)[0]

    def __hash__(self):
        return hash(("logits", self.feature_fn))

    def __eq__(self, other):
        return isinstance(other, _LogitsOnly) and self.feature_fn == other.feature_fn


def with_features(
    model: Any,
    layers: Sequence[str] | None = None,
    *,
    example_input: Array | None = None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    grey_to_rgb: bool = False,
) -> FeatureModel:
    """A target exposing named intermediate features.

    Args:
        model: a :class:`jaxadv.Model` built by :func:`jaxadv.from_nnx` (or
            :func:`~jaxadv.checkpoint.reference_model`) or :func:`jaxadv.from_linen`, or a Flax
            NNX module (then ``mean``,
            ``std``, ``grey_to_rgb`` apply as in :func:`jaxadv.from_nnx`).
        layers: dotted layer names (see the module docstring); ``None`` takes
            :data:`DEFAULT_LAYERS` of the shipped SmallCNN / ResNet.
        example_input: ``x[B, H, W, K]`` used once (abstractly) to check that every layer exists;
            without it names are checked at the first call.

    Returns:
        A :class:`FeatureModel`.

    Raises:
        ValueError: an unknown layer name (the message lists the available ones), or no default
            layers for this architecture.
        TypeError: a model that is not an NNX module or an NNX-backed :class:`jaxadv.Model`.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxadv.checkpoint import reference_model
        >>> fm = with_features(reference_model("small_cnn_clean"))
        >>> logits, feats = fm.features(jnp.zeros((2, 28, 28, 1)))
        >>> {k: v.shape for k, v in feats.items()}
        {'bn1': (2, 16), 'bn2': (2, 32), 'drop': (2, 128)}
    """
    from flax import nnx

    if isinstance(model, nnx.Module):
        model = from_nnx(model, mean=mean, std=std, grey_to_rgb=grey_to_rgb)
    is_nnx = isinstance(model, Model) and hasattr(model.apply_fn, "graphdef")
    is_linen = isinstance(model, Model) and hasattr(model.apply_fn, "module")
    if not (is_nnx or is_linen):
        raise TypeError(
            "with_features needs a flax.nnx.Module or a jaxadv.Model from from_nnx / from_linen, "
            f"got {type(model).__name__}; for a plain function use from_feature_fn(fn, params)"
        )
    if layers is None:
        if is_linen:
            arch = type(model.apply_fn.module).__name__
        else:
            arch = type(nnx.merge(model.apply_fn.graphdef, model.params)).__name__
        if arch not in DEFAULT_LAYERS:
            raise ValueError(
                f"no default feature layers for {arch}; pass layers=[...] (dotted submodule "
                "names, e.g. 'conv2' or 'layer3.1')"
            )
        layers = DEFAULT_LAYERS[arch]
    layers = tuple(str(n) for n in layers)
    if not layers:
        raise ValueError("layers must name at least one layer")
    if is_linen:
        ffn = LinenFeatures(model.apply_fn.module, model.apply_fn.kwargs, layers)
    else:
        ffn = NNXFeatures(model.apply_fn.graphdef, layers)
    if example_input is not None:
        x = jax.ShapeDtypeStruct(jnp.shape(example_input), jnp.float32)
        avail = ffn.available(model.params, x)
        missing = [n for n in layers if n not in avail]
        if missing:
            raise ValueError(f"the model has no layer(s) {missing}; available names: {avail}")
    return FeatureModel(
        apply_fn=model.apply_fn,
        params=model.params,
        mean=model.mean,
        std=model.std,
        grey_to_rgb=model.grey_to_rgb,
        feature_fn=_CheckedFeatures(ffn),
        layers=layers,
    )


class _CheckedFeatures:
    """Raises a clear ``ValueError`` (at trace time, before any compute) for a missing layer."""

    def __init__(self, inner: NNXFeatures | LinenFeatures):
        self.inner = inner

    def __call__(self, params, x, key=None):
        try:
            return self.inner(params, x, key)
        except KeyError as e:
            avail = self.inner.available(params, jax.ShapeDtypeStruct(x.shape, x.dtype))
            raise ValueError(
                f"the model has no layer {e.args[0]!r}; available names: {avail}"
            ) from None

    def has_dropout(self, params) -> bool:
        return self.inner.has_dropout(params)

    def __hash__(self):
        return hash(self.inner)

    def __eq__(self, other):
        return isinstance(other, _CheckedFeatures) and self.inner == other.inner


def from_feature_fn(
    fn: Callable[..., Any],
    params: Any,
    layers: Sequence[str],
    *,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    grey_to_rgb: bool = False,
) -> FeatureModel:
    """Wrap a pure ``fn(params, x, key) -> (logits[B, C], {name: h[B, ...]})`` (``key`` is
    ``None`` or a PRNG key for Monte Carlo dropout; ignore it if the model has none). A Linen
    module fits here with ``capture_intermediates=True`` inside ``fn``.

    Example:
        >>> import jax.numpy as jnp
        >>> fn = lambda w, x, key: (x.reshape(len(x), -1) @ w, {"in": x})
        >>> fm = from_feature_fn(fn, jnp.ones((4, 2)), ["in"])
        >>> fm.features(jnp.zeros((3, 2, 2, 1)))[1]["in"].shape
        (3, 1)
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    ffn = _FnFeatures(fn)
    base = from_apply(_LogitsOnly(ffn), params, mean=mean, std=std, grey_to_rgb=grey_to_rgb)
    return FeatureModel(
        apply_fn=base.apply_fn,
        params=params,
        mean=base.mean,
        std=base.std,
        grey_to_rgb=grey_to_rgb,
        feature_fn=ffn,
        layers=tuple(str(n) for n in layers),
    )
