"""Pre-processing defences as model wrappers, and BPDA to see through them.

A defence is a *stage*: a frozen pytree ``stage(x[B, H, W, K]) -> [B, H, W, K]`` on pixels in
``[0, 1]``. ``stage.wrap(model)`` returns the defended model ``model(stage(x))``, itself a pytree
model that every attack, the engine and :func:`jaxadv.check_model` accept.

Several of these stages mask gradients, which makes a naive gradient attack over-rate them
(Athalye, Carlini & Wagner, 2018):

* :class:`JPEG` (exact, via PIL) and :class:`BitDepth` have zero input gradient: attack them
  through :class:`BPDA` (identity backward, or a differentiable approximation such as
  ``JPEG(differentiable=True)``);
* :class:`RandomResizePad` is random at inference: ``wrap`` returns a
  :class:`jaxadv.RandomizedModel`; attack ``jaxadv.EOTLogits(model=defended, num_draws=...)``.

Example:
    >>> import jax, jax.numpy as jnp, jaxadv
    >>> from jaxadv import defences
    >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(16, 2))
    >>> defended = defences.BitDepth(bits=3).wrap(model)
    >>> x = jnp.full((1, 4, 4, 1), 0.5)
    >>> float(jnp.abs(jax.grad(lambda z: defended(z).sum())(x)).max())  # masked
    0.0
    >>> bpda = defences.BPDA(stage=defences.BitDepth(bits=3)).wrap(model)
    >>> float(jnp.abs(jax.grad(lambda z: bpda(z).sum())(x)).max())
    1.0
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import image_ops as T
from jaxadv._struct import float32_fields, pytree_dataclass, static
from jaxadv.attacks.autoattack import RandomizedModel
from jaxadv.models import as_model

Array = jax.Array


class AbstractDefence:
    """Base of the pre-processing stages: ``__call__(x) -> x'`` (same shape, pixels in [0, 1])."""

    #: the stage draws randomness at inference (``wrap`` then needs a key).
    randomised: ClassVar[bool] = False

    def __call__(self, x: Array) -> Array:
        raise NotImplementedError

    def wrap(self, model: Any, key: Array | None = None) -> Any:
        """The defended model ``model(self(x))`` (a pytree: the stage's and the model's leaves are
        jit arguments). ``key`` is for randomised stages only."""
        if key is not None:
            raise TypeError(f"{type(self).__name__} is deterministic: wrap(model) takes no key")
        return Defended(stage=self, model=as_model(model))


@pytree_dataclass
class Defended:
    """``model(stage(x))``: a defended classifier ``x[B, H, W, K] -> logits[B, C]``.

    Attributes:
        stage: the defence (a pytree stage, e.g. :class:`JPEG` or :class:`BPDA`).
        model: the classifier behind it.
    """

    stage: Any
    model: Any

    def __call__(self, x: Array) -> Array:
        return self.model(self.stage(x))


@pytree_dataclass
class FunctionStage(AbstractDefence):
    """A plain function ``x -> x'`` as a stage (static: hashed by identity)."""

    fn: Callable[[Array], Array] = static()

    def __call__(self, x: Array) -> Array:
        return self.fn(x)


def as_stage(stage: Any) -> Any:
    """A pytree stage from a stage, a plain function or ``None`` (returned as is)."""
    if stage is None or not jax.tree_util.all_leaves([stage]):
        return stage
    if callable(stage):
        return FunctionStage(fn=stage)
    raise TypeError(f"a defence stage must be callable x -> x, got {type(stage).__name__}")


# ----------------------------------------------------------------------------------- BPDA
def _zero_cotangent(leaf: Any) -> Any:
    a = jnp.asarray(leaf)
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return jnp.zeros_like(a)
    return np.zeros(a.shape, jax.dtypes.float0)


@jax.custom_vjp
def _bpda(stage, approx, x):
    return stage(x)


def _bpda_fwd(stage, approx, x):
    return stage(x), (stage, approx, x)


def _bpda_bwd(res, g):
    stage, approx, x = res
    if approx is None:
        gx = g
    else:
        _, vjp = jax.vjp(approx, x)
        (gx,) = vjp(g)
    zero = jax.tree.map(_zero_cotangent, (stage, approx))
    return (*zero, gx)


_bpda.defvjp(_bpda_fwd, _bpda_bwd)


@pytree_dataclass
class BPDA(AbstractDefence):
    """Backward-pass differentiable approximation (Athalye et al., 2018): the forward pass of
    ``stage``, the backward pass of ``approx`` (the identity when ``None``).

    Attributes:
        stage: the (non-differentiable) stage, a pytree stage or a plain function.
        approx: a differentiable stand-in ``x -> x'`` whose vector-Jacobian product replaces the
            stage's, e.g. ``JPEG(quality=q, differentiable=True)``; ``None``: identity.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxadv.defences import BPDA, JPEG
        >>> stage = BPDA(stage=JPEG(quality=50))
        >>> x = jnp.full((1, 8, 8, 1), 0.5)
        >>> bool(jnp.all(jax.grad(lambda z: stage(z).sum())(x) == 1.0))
        True
    """

    stage: Any
    approx: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", as_stage(self.stage))
        object.__setattr__(self, "approx", as_stage(self.approx))
        if getattr(self.stage, "randomised", False):
            raise TypeError(
                f"BPDA wraps deterministic stages; {type(self.stage).__name__} is randomised: "
                "attack its wrapped model through jaxadv.EOTLogits (or wrap the attack in jaxadv.EOT) instead"
            )

    def __call__(self, x: Array) -> Array:
        return _bpda(self.stage, self.approx, x)


# ----------------------------------------------------------------------------------- JPEG
_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    np.float64,
)
_LEVEL_SHIFT = np.array([0.0, 128.0, 128.0], np.float32).reshape(1, 1, 1, 3)
_CHROMA = np.full((8, 8), 99.0)
_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def quant_table(quality: int, *, chroma: bool = False) -> np.ndarray:
    """The IJG (libjpeg) quantisation table at ``quality`` in ``[1, 100]``, baseline (entries
    clipped to ``[1, 255]``), as PIL writes it. Returns ``[8, 8]``."""
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    base = _CHROMA if chroma else _LUMA
    return np.clip(np.floor((base * scale + 50.0) / 100.0), 1, 255).astype(np.float32)


def _dct_matrix() -> np.ndarray:
    n = np.arange(8)
    c = np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16) * np.sqrt(2.0 / 8)
    c[0] /= np.sqrt(2.0)
    return c.astype(np.float32)  # orthonormal DCT-II: JPEG's 8x8 DCT


def soft_round(x: Array) -> Array:
    """``round(x) + (x - round(x))**3`` (Shin & Song, 2017): equal to rounding at integers and
    half-integers, with a non-zero derivative elsewhere."""
    r = jax.lax.stop_gradient(jnp.round(x))
    return r + (x - r) ** 3


def jpeg_jax(x: Array, quality: int, *, rounding: Callable[[Array], Array] = jnp.round) -> Array:
    """JPEG compression and decompression in JAX (baseline, 4:4:4 chroma, IJG tables).

    Args:
        x: images ``[B, H, W, K]`` in ``[0, 1]``, ``K`` 1 (grey) or 3 (RGB, via JFIF YCbCr).
        quality: 1..100 (static).
        rounding: the rounding of the quantised coefficients and of the decoded pixels;
            :func:`soft_round` makes it differentiable.

    Returns:
        ``[B, H, W, K]`` in ``[0, 1]``. Borders are padded to 8 by repeating the edge as libjpeg
        does; the float DCT differs from libjpeg's integer one by at most a grey level or two.
    """
    b, h, w, k = x.shape
    u = x * 255.0
    if k == 3:
        m = jnp.asarray(
            [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
            x.dtype,
        )
        # libjpeg stores 8-bit YCbCr samples (and decodes to them before the colour inverse)
        u = rounding(jnp.clip(u @ m.T + _LEVEL_SHIFT.astype(x.dtype), 0.0, 255.0))
    ph, pw = -h % 8, -w % 8
    u = jnp.pad(u, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge") - 128.0
    hh, ww = h + ph, w + pw
    blocks = u.reshape(b, hh // 8, 8, ww // 8, 8, k)
    d = jnp.asarray(_dct_matrix(), x.dtype)
    coef = jnp.einsum("ui,bhiwjc,vj->bhuwvc", d, blocks, d)
    tabs = [quant_table(quality, chroma=c > 0) for c in range(k)]
    q = jnp.asarray(np.stack(tabs, -1), x.dtype)[None, None, :, None, :, :]
    coef = rounding(coef / q) * q
    u = jnp.einsum("ui,bhuwvc,vj->bhiwjc", d, coef, d).reshape(b, hh, ww, k)[:, :h, :w] + 128.0
    if k == 3:
        u = rounding(jnp.clip(u, 0.0, 255.0))
        m = jnp.asarray(
            [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]], x.dtype
        )
        u = (u - _LEVEL_SHIFT.astype(x.dtype)) @ m.T
    return rounding(jnp.clip(u, 0.0, 255.0)) / 255.0


def pil_jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of every image of ``x[..., H, W, K]`` through PIL (host NumPy; 4:4:4
    chroma). Pixels are quantised to ``round(255 x)`` first, as any 8-bit encoder does."""
    from PIL import Image

    a = np.asarray(x)
    flat = a.reshape(-1, *a.shape[-3:])
    out = np.empty(flat.shape, np.float32)
    for i, img in enumerate(flat):
        u8 = np.clip(np.round(img.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        pic = Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8)
        buf = io.BytesIO()
        pic.save(buf, format="JPEG", quality=int(quality), subsampling=0)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float32) / 255.0
        out[i] = dec.reshape(img.shape)
    return out.reshape(a.shape).astype(a.dtype)


def _jpeg_host(x, quality):
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return jax.pure_callback(lambda a: pil_jpeg(a, quality), spec, x, vmap_method="expand_dims")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _jpeg_exact(x, quality):
    return _jpeg_host(x, quality)


def _jpeg_exact_fwd(x, quality):
    return _jpeg_host(x, quality), None


def _jpeg_exact_bwd(quality, _, g):
    # A real encoder has no derivative: report zero, as a non-differentiable pipeline would mask
    # the gradient (check_model flags it; BPDA is the remedy).
    return (jnp.zeros_like(g),)


_jpeg_exact.defvjp(_jpeg_exact_fwd, _jpeg_exact_bwd)


@pytree_dataclass
class JPEG(AbstractDefence):
    """JPEG compression as a defence (Dziugaite et al., 2016; Guo et al., 2018).

    Attributes:
        quality: 1..100 (static).
        differentiable: ``False`` (default): the exact round trip through PIL (libjpeg), run on the
            host via ``jax.pure_callback``; its input gradient is zero (masked: attack it with
            ``BPDA``). ``True``: :func:`jpeg_jax` with :func:`soft_round`, a differentiable
            approximation (also the natural ``BPDA`` ``approx``).
    """

    quality: int = static(default=75)
    differentiable: bool = static(default=False)

    def __post_init__(self) -> None:
        q = self.quality
        if not isinstance(q, (int, np.integer)) or isinstance(q, bool) or not 1 <= q <= 100:
            raise ValueError(f"JPEG: quality must be an integer in [1, 100], got {q!r}")

    def __call__(self, x: Array) -> Array:
        if x.shape[-1] not in (1, 3):
            raise ValueError(f"JPEG needs 1 (grey) or 3 (RGB) channels, got {x.shape[-1]}")
        if self.differentiable:
            return jpeg_jax(x, self.quality, rounding=soft_round)
        return _jpeg_exact(x, int(self.quality))


# ------------------------------------------------------------------------- other squeezers
@pytree_dataclass
class BitDepth(AbstractDefence):
    """Bit-depth reduction (Xu et al., 2018, feature squeezing): ``round(x (2^bits - 1)) /
    (2^bits - 1)``. Its input gradient is zero: attack it with ``BPDA``.

    Attributes:
        bits: 1..16 (static).
    """

    bits: int = static(default=4)

    def __post_init__(self) -> None:
        b = self.bits
        if not isinstance(b, (int, np.integer)) or isinstance(b, bool) or not 1 <= b <= 16:
            raise ValueError(f"BitDepth: bits must be an integer in [1, 16], got {b!r}")

    def __call__(self, x: Array) -> Array:
        levels = float(2**self.bits - 1)
        return jnp.round(x * levels) / levels


@pytree_dataclass
class MedianFilter(AbstractDefence):
    """Per-channel ``size x size`` median filter (Xu et al., 2018); borders mirrored as
    ``scipy.ndimage.median_filter``'s default ``'reflect'``. Differentiable almost everywhere
    (the gradient flows to the median pixel).

    Attributes:
        size: odd window size (static).
    """

    size: int = static(default=3)

    def __post_init__(self) -> None:
        T.check_odd("MedianFilter: size", self.size)

    def __call__(self, x: Array) -> Array:
        return jnp.median(T.patches(x, self.size, mode="symmetric"), axis=-1)


@pytree_dataclass
class GaussianBlur(AbstractDefence):
    """Per-channel Gaussian blur, as ``scipy.ndimage.gaussian_filter(sigma, truncate=4,
    mode='reflect')`` over the two spatial axes (a simple denoiser; differentiable).

    Attributes:
        sigma: standard deviation in pixels (static: it sets the kernel size).
    """

    sigma: float = static(default=1.0)

    def __post_init__(self) -> None:
        s = self.sigma
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 100:
            raise ValueError(f"GaussianBlur: sigma must be a number in (0, 100), got {s!r}")

    def __call__(self, x: Array) -> Array:
        size = T.scipy_gaussian_size(self.sigma)
        return T.separable_filter(x, T.gaussian_kernel1d(size, self.sigma), mode="symmetric")


# ----------------------------------------------------------------------------- randomised
def _random_stage_apply(params: Any, x: Array, keys: Array) -> Array:
    stage, model = params
    return model(stage.sample(keys, x))


@pytree_dataclass
class RandomResizePad(AbstractDefence):
    """Random resize-and-pad (Xie et al., 2018): each image is shrunk to a random size and
    pasted at a random position on a canvas ``ratio`` times its size, resized back to the input
    size (see :func:`jaxadv.image_ops.random_resize_pad`).

    ``wrap(model, key)`` returns a :class:`jaxadv.RandomizedModel` (one draw per call, keyed by
    ``key`` and the input); attack ``jaxadv.EOTLogits(model=defended, num_draws=n)``, the mean logits of
    ``n`` draws.

    Attributes:
        ratio: canvas / image size (``>= 1``; 331/299 in Xie et al.).
    """

    randomised: ClassVar[bool] = True
    ratio: float | Array = 1.1

    def __post_init__(self) -> None:
        float32_fields(self, "ratio")
        r = self.ratio
        if isinstance(r, (int, float, np.floating)) and not np.asarray(r) >= 1.0:
            raise ValueError(f"RandomResizePad: ratio must be >= 1, got {r!r}")

    def sample(self, keys: Array, x: Array) -> Array:
        """One draw per example (``keys[B]``)."""
        return T.random_resize_pad(keys, x, self.ratio)

    def __call__(self, x: Array) -> Array:
        raise TypeError(
            "RandomResizePad needs keys: use stage.sample(keys, x), or stage.wrap(model, key)"
        )

    def wrap(self, model: Any, key: Array | None = None) -> RandomizedModel:
        if key is None:
            raise TypeError("RandomResizePad.wrap(model, key): a randomised defence needs a key")
        if isinstance(key, int):
            key = jax.random.key(key)
        return RandomizedModel(apply=_random_stage_apply, params=(self, as_model(model)), key=key)


# --------------------------------------------------------------------------- by name (CLI)
#: name -> (constructor from one number, what the number is)
DEFENCE_NAMES: dict[str, tuple[Callable[[float], Any], str]] = {
    "jpeg": (lambda v: JPEG(quality=int(v)), "quality 1..100"),
    "jpeg-diff": (lambda v: JPEG(quality=int(v), differentiable=True), "quality 1..100"),
    "bitdepth": (lambda v: BitDepth(bits=int(v)), "bits 1..16"),
    "median": (lambda v: MedianFilter(size=int(v)), "odd window size"),
    "blur": (lambda v: GaussianBlur(sigma=float(v)), "sigma in pixels"),
    "resize-pad": (lambda v: RandomResizePad(ratio=float(v)), "canvas ratio >= 1"),
}


def from_spec(spec: str) -> Any:
    """A stage from ``NAME:VALUE`` (``jpeg:75``, ``jpeg-diff:75``, ``bitdepth:3``, ``median:3``,
    ``blur:1.0``, ``resize-pad:1.2``); ``ValueError`` naming the choices otherwise."""
    name, _, val = str(spec).strip().lower().partition(":")
    if name not in DEFENCE_NAMES or not val:
        choices = ", ".join(f"{n}:<{d}>" for n, (_, d) in DEFENCE_NAMES.items())
        raise ValueError(f"unknown defence {spec!r}; choose one of {choices}")
    make, what = DEFENCE_NAMES[name]
    try:
        v = float(val)
    except ValueError:
        raise ValueError(f"defence {spec!r}: {val!r} is not a number ({what})") from None
    return make(v)


def defend(model: Any, spec: str, *, bpda: bool = False, eot_draws: int = 0, key: Any = 0) -> Any:
    """``model`` behind the defence ``spec`` (see :func:`from_spec`), as the attacker should see it.

    Args:
        model: the classifier.
        spec: ``NAME:VALUE``.
        bpda: wrap a deterministic stage in :class:`BPDA` (identity backward). The forward pass is
            unchanged, so results are still judged on the real defence.
        eot_draws: for a randomised stage, attack the mean logits of this many draws
            (:class:`jaxadv.EOTLogits`; 0 or 1: a single draw per call). Results are judged on
            one fresh draw either way (:func:`jaxadv.result.judging_view`).
        key: seed or key of a randomised stage's draws.

    Returns:
        A pytree model ``x -> logits``.
    """
    from jaxadv.attacks.autoattack import EOTLogits

    stage = from_spec(spec)
    if stage.randomised:
        if bpda:
            raise ValueError(f"--bpda does not apply to the randomised defence {spec!r}; use EOT")
        rnd = stage.wrap(model, jax.random.key(key) if isinstance(key, int) else key)
        return EOTLogits(model=rnd, num_draws=eot_draws) if eot_draws > 1 else rnd
    if eot_draws > 1:
        raise ValueError(f"EOT needs a randomised defence; {spec!r} is deterministic (use BPDA)")
    return (BPDA(stage=stage) if bpda else stage).wrap(model)


__all__ = [
    "DEFENCE_NAMES",
    "defend",
    "from_spec",
    "BPDA",
    "AbstractDefence",
    "BitDepth",
    "Defended",
    "FunctionStage",
    "GaussianBlur",
    "JPEG",
    "MedianFilter",
    "RandomResizePad",
    "as_stage",
    "jpeg_jax",
    "pil_jpeg",
    "quant_table",
    "soft_round",
]
