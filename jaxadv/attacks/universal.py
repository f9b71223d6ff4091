"""Universal attacks: one perturbation fitted on a data set, then applied to held-out images.

The shape every universal attack shares (:class:`AbstractUniversal`):

* ``fitted = attack.fit(key, model, data)`` streams ``data`` (a :class:`jaxadv.data.Dataset` or
  ``(x, y)`` arrays) in shuffled minibatches through one jitted optax step (:func:`fit_step`),
  deterministic by ``key``; the batch is sharded over the local devices when it divides evenly.
  With ``checkpoint=path`` the state is saved after every epoch and a later call resumes from it.
* ``fitted`` is a pytree (the perturbation and the attack's settings) that saves and loads
  (:meth:`save` / :func:`load_fitted`: an ``.npz`` and a PNG of the perturbation).
* ``fitted(key, model, x, y)`` applies it to a batch and returns an ordinary
  :class:`~jaxadv.result.AttackResult`; the library renders ``adv`` and recomputes success
  (:func:`~jaxadv.result.finalize`).

:class:`UniversalPerturbation` is the SGD form of Shafahi, Najibi, Xu, Dickerson, Davis &
Goldstein (2020), "Universal adversarial training" (AAAI): minibatch ascent of a clipped
cross-entropy on one ``delta`` projected onto the norm ball after each step. It is chosen over the
DeepFool-based original (Moosavi-Dezfooli et al., 2017) because it is a plain minibatch loop, one
jitted step that shards like every other attack, while the original runs DeepFool image by image.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxadv import _validate
from jaxadv import losses as L
from jaxadv._struct import float32_fields, pytree_dataclass, replace, static
from jaxadv.attacks.base import AbstractAttack
from jaxadv.engine.layout import data_mesh, shard_batch
from jaxadv.models import as_model
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L2Ball, LinfBall

Array = jax.Array
log = logging.getLogger(__name__)

__all__ = [
    "AbstractUniversal",
    "FittedPerturbation",
    "UniversalPerturbation",
    "as_dataset",
    "fit_step",
    "load_fitted",
]

#: name -> fitted class, for :func:`load_fitted`.
FITTED: dict[str, type] = {}


def as_dataset(data: Any) -> Any:
    """A :class:`jaxadv.data.Dataset` as given; ``(x, y)`` arrays wrapped by ``from_arrays``."""
    from jaxadv.data import Dataset, from_arrays

    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return from_arrays(np.asarray(data[0]), np.asarray(data[1]))
    raise TypeError(
        f"data must be a jaxadv.data.Dataset or an (x, y) pair of arrays, got {type(data).__name__}"
    )


def _check_int(name: str, v: Any, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


@jax.jit
def fit_step(attack, params, opt_state, key, model, x, y):
    """One optimiser step of ``attack.fit_loss`` (minimised) on the minibatch ``x[B, H, W, K]``.

    Returns ``(params, opt_state, loss)``; ``params`` are projected into the attack's constraint.
    """
    loss, g = jax.value_and_grad(attack.fit_loss)(params, key, model, x, y)
    # optax's bias correction mixes a Python float with an int32 count, which strict dtype
    # promotion rejects (as in jaxadv.train); standard promotion is scoped to the update
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = attack.optimizer().update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
    params = attack.project_params(params)
    return params, opt_state, loss


class AbstractUniversal:
    """Base of universal attacks (frozen pytree dataclasses). Subclasses implement
    ``init_params(key, image_shape)``, ``fit_loss(params, key, model, x, y)`` (a scalar to
    minimise), ``project_params(params)``, ``optimizer()`` and ``fitted(params)``; and declare the
    fields ``learning_rate``, ``batch_size`` and ``num_epochs``."""

    learning_rate: Any
    batch_size: int
    num_epochs: int

    def check_data(self, ds: Any, num_classes: int) -> None:
        """Raise a clear error for settings that do not fit the data (before any fitting)."""

    def fit(
        self,
        key: Array | int,
        model: Any,
        data: Any,
        *,
        checkpoint: str | os.PathLike | None = None,
        mesh: jax.sharding.Mesh | None = None,
        progress: Callable[[int, int], None] | None = None,
    ):
        """Fit the universal perturbation on ``data`` (``num_epochs`` shuffled passes in
        minibatches of ``batch_size``; the last, smaller minibatch of each pass is dropped so one
        program serves every step).

        Args:
            key: PRNG key or int seed; the fit is a pure function of it.
            model: any jaxadv model or callable ``x -> logits[B, C]``.
            data: a :class:`jaxadv.data.Dataset` or ``(x[N, H, W, K], y[N])`` arrays.
            checkpoint: an ``.npz`` path saved after every epoch; when it exists the fit resumes
                after its last completed epoch.
            mesh: device mesh for the batch axis (default: all local devices, used when
                ``batch_size`` divides evenly over them).
            progress: called as ``progress(steps_done, total_steps)`` after every step (host
                code: a progress bar, a log line).

        Returns:
            The fitted perturbation (a pytree; call it to attack a batch).
        """
        if not isinstance(key, jax.Array):
            key = jax.random.key(int(key))
        elif not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
        model = as_model(model)
        ds = as_dataset(data)
        if len(ds) < self.batch_size:
            raise ValueError(
                f"the data set has {len(ds)} examples, fewer than batch_size={self.batch_size}; "
                "lower batch_size"
            )
        if ds.multi_label:
            raise ValueError(
                f"{type(self).__name__} needs single-label data; {ds.name} is multi-label "
                "(select one finding with jaxadv.data.select_finding)"
            )
        h, w, k = ds.image_shape
        # the first minibatch through the library's input checks (box, labels, model, logits)
        x1, y1 = ds.take(self.batch_size)
        box = getattr(self, "threat", self)
        num_classes = _validate.check_attack_inputs(box, model, jnp.asarray(x1), y1)
        self.check_data(ds, num_classes)
        mesh = mesh or data_mesh()
        shard = mesh.devices.size > 1 and self.batch_size % mesh.devices.size == 0
        params = self.init_params(jax.random.fold_in(key, 0), (h, w, k))
        opt_state = self.optimizer().init(params)
        start = 0
        ckpt = pathlib.Path(checkpoint) if checkpoint is not None else None
        if ckpt is not None and ckpt.exists():
            params, opt_state, start = _load_state(ckpt, params, opt_state)
            log.info("resuming the fit from %s after epoch %d", ckpt, start)
        per_epoch = len(ds) // self.batch_size
        step = start * per_epoch
        total = self.num_epochs * per_epoch
        for epoch in range(start, self.num_epochs):
            seed = int(jax.random.randint(jax.random.fold_in(key, 1 + epoch), (), 0, 2**31 - 1))
            losses = []
            for xb, yb in ds.batches(self.batch_size, shuffle=True, key=seed, drop_remainder=True):
                xb, yb = jnp.asarray(xb), jnp.asarray(yb, jnp.int32)
                if shard:
                    xb, yb = shard_batch((xb, yb), mesh)
                skey = jax.random.fold_in(jax.random.fold_in(key, 2**20), step)
                params, opt_state, loss = fit_step(self, params, opt_state, skey, model, xb, yb)
                losses.append(loss)
                step += 1
                if progress is not None:
                    progress(step, total)
            log.info(
                "%s epoch %d/%d: mean loss %.4f",
                type(self).__name__,
                epoch + 1,
                self.num_epochs,
                float(jnp.mean(jnp.stack(losses))),
            )
            if ckpt is not None:
                _save_state(ckpt, params, opt_state, epoch + 1)
        return self.fitted(params)


def _save_state(path: pathlib.Path, params: Any, opt_state: Any, epoch: int) -> None:
    leaves = jax.tree_util.tree_leaves((params, opt_state))
    arrays = {f"a{i}": np.asarray(a) for i, a in enumerate(leaves)}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, epoch=np.int64(epoch), **arrays)
    os.replace(tmp, path)


def _load_state(path: pathlib.Path, params: Any, opt_state: Any) -> tuple[Any, Any, int]:
    leaves, tree = jax.tree_util.tree_flatten((params, opt_state))
    with np.load(path) as z:
        stored = [z[f"a{i}"] for i in range(len(leaves)) if f"a{i}" in z]
        if len(stored) != len(leaves) or any(
            s.shape != np.shape(a) for s, a in zip(stored, leaves, strict=True)
        ):
            raise ValueError(
                f"checkpoint {path} does not match this attack's state (other settings or image "
                "size?); delete it or pass another checkpoint path"
            )
        epoch = int(z["epoch"])
    new = [jnp.asarray(s, jnp.asarray(a).dtype) for s, a in zip(stored, leaves, strict=True)]
    params, opt_state = jax.tree_util.tree_unflatten(tree, new)
    return params, opt_state, epoch


# ------------------------------------------------------------------------------- saving
def save_png(path: pathlib.Path, img: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """Write ``img[H, W, K]`` in ``[0, 1]`` (and an optional ``alpha[H, W]``) as an 8-bit PNG."""
    from PIL import Image

    a = np.clip(np.asarray(img, np.float64), 0, 1)
    a = a[..., 0] if a.shape[-1] == 1 else a
    u8 = np.round(a * 255).astype(np.uint8)
    if alpha is not None:
        rgb = np.repeat(u8[..., None], 3, axis=-1) if u8.ndim == 2 else u8
        al = np.round(np.clip(np.asarray(alpha, np.float64), 0, 1) * 255).astype(np.uint8)
        u8 = np.concatenate([rgb, al[..., None]], axis=-1)
    Image.fromarray(u8).save(path)


def save_fitted(fitted: Any, path: str | os.PathLike, image: np.ndarray, alpha=None) -> None:
    """Save ``fitted`` as ``path`` (``.npz``: arrays + the settings as JSON) and a PNG beside it."""
    p = pathlib.Path(path)
    if p.suffix != ".npz":
        p = p.with_suffix(".npz")
    leaves = {
        f.name: np.asarray(getattr(fitted, f.name))
        for f in fitted.__dataclass_fields__.values()
        if f.name != "attack" and getattr(fitted, f.name) is not None
    }
    settings = fitted.attack.settings_dict()
    np.savez(
        p,
        kind=np.asarray(type(fitted).__name__),
        settings=np.asarray(json.dumps(settings)),
        **leaves,
    )
    save_png(p.with_suffix(".png"), image, alpha)


def load_fitted(path: str | os.PathLike) -> Any:
    """Load a fitted universal perturbation saved with ``fitted.save(path)``."""
    p = pathlib.Path(path)
    with np.load(p if p.suffix == ".npz" else p.with_suffix(".npz")) as z:
        kind = str(z["kind"])
        if kind not in FITTED:
            raise ValueError(f"{p} holds a {kind!r}, not a fitted universal perturbation")
        cls = FITTED[kind]
        settings = json.loads(str(z["settings"]))
        arrays = {n: jnp.asarray(z[n]) for n in z.files if n not in ("kind", "settings")}
    return cls(attack=cls.attack_from_settings(settings), **arrays)


# ------------------------------------------------------------------------------- UAP
@pytree_dataclass
class UniversalPerturbation(AbstractUniversal):
    """One perturbation ``delta`` for every image (SGD form of Shafahi et al., 2020).

    Maximises ``mean_i min(CE(model(clip(x_i + delta)), y_i), clip_loss)`` over minibatches with
    Adam (the clipped loss stops already-fooled images from dominating), projecting ``delta`` onto
    the threat's ball after every step.

    Attributes:
        threat: ``LinfBall`` or ``L2Ball`` (``eps`` bounds ``delta``).
        learning_rate: Adam step (a leaf); ``None`` means ``eps / 10``.
        clip_loss: the cross-entropy ceiling per example (Shafahi et al.'s ``beta``).
        batch_size: minibatch size (static).
        num_epochs: passes over the data (static).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> x = jax.random.uniform(jax.random.key(1), (32, 2, 2, 1)); y = jnp.zeros(32, jnp.int32)
        >>> uap = jaxadv.UniversalPerturbation(threat=jaxadv.LinfBall(eps=0.1), batch_size=16)
        >>> fitted = uap.fit(jax.random.key(0), model, (x, y))
        >>> fitted(jax.random.key(1), model, x, y).norm.max() <= 0.1 + 1e-6
        Array(True, dtype=bool)
    """

    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball)

    threat: Any
    learning_rate: float | Array | None = None
    clip_loss: float | Array = 10.0
    batch_size: int = static(default=32)
    num_epochs: int = static(default=5)

    def __post_init__(self) -> None:
        if not isinstance(self.threat, self.threats):
            raise TypeError(
                f"UniversalPerturbation supports LinfBall and L2Ball, got {type(self.threat).__name__}"
            )
        float32_fields(self, "learning_rate", "clip_loss")
        _check_int("batch_size", self.batch_size, 1)
        _check_int("num_epochs", self.num_epochs, 1)
        if isinstance(self.learning_rate, np.floating) and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")

    def _lr(self) -> Array:
        if self.learning_rate is None:
            return jnp.asarray(self.threat.eps, jnp.float32) / 10
        return jnp.asarray(self.learning_rate, jnp.float32)

    def optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self._lr())

    def init_params(self, key: Array, image_shape: tuple[int, int, int]) -> Array:
        return jnp.zeros(image_shape, jnp.float32)

    def project_params(self, delta: Array) -> Array:
        return self.threat.project_ball(delta[None])[0]

    def fit_loss(self, delta: Array, key: Array, model: Any, x: Array, y: Array) -> Array:
        adv = self.threat.clip_box(x + delta[None])
        ce = L.ce(model(adv), y)
        return -jnp.mean(jnp.minimum(ce, self.clip_loss))

    def fitted(self, delta: Array) -> FittedPerturbation:
        return FittedPerturbation(attack=self, delta=delta)

    def settings_dict(self) -> dict:
        return {
            "threat": type(self.threat).__name__,
            "eps": float(self.threat.eps),
            "lo": float(np.asarray(self.threat.lo)),
            "hi": float(np.asarray(self.threat.hi)),
            "learning_rate": None if self.learning_rate is None else float(self.learning_rate),
            "clip_loss": float(self.clip_loss),
            "batch_size": self.batch_size,
            "num_epochs": self.num_epochs,
        }


@pytree_dataclass
class FittedPerturbation(AbstractAttack):
    """A fitted universal perturbation ``delta[H, W, K]``: an ordinary attack
    ``fitted(key, model, x, y) -> AttackResult`` (deterministic: the key is not used).

    ``adv = x + delta`` projected into the threat set (the library's :func:`finalize`), success =
    misclassified; ``info["fooled"]`` (``bool[B]``) marks a changed prediction (the fooling rate of
    Moosavi-Dezfooli et al. is its mean). ``with_eps`` re-projects ``delta`` into a smaller ball.
    """

    attack: UniversalPerturbation
    delta: Array

    @property
    def threat(self) -> Any:
        return self.attack.threat

    def with_eps(self, eps: float | Array) -> FittedPerturbation:
        return replace(self, attack=replace(self.attack, threat=replace(self.threat, eps=eps)))

    @staticmethod
    def attack_from_settings(s: Mapping[str, Any]) -> UniversalPerturbation:
        threat = {"LinfBall": LinfBall, "L2Ball": L2Ball}[s["threat"]]
        return UniversalPerturbation(
            threat=threat(eps=s["eps"], lo=s["lo"], hi=s["hi"]),
            learning_rate=s["learning_rate"],
            clip_loss=s["clip_loss"],
            batch_size=s["batch_size"],
            num_epochs=s["num_epochs"],
        )

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        res = finalize(self.threat, model, x, x + self.delta[None], y, target=target)
        clean = jnp.argmax(model(x), axis=-1)
        fooled = jnp.argmax(model(res.adv), axis=-1) != clean
        return replace(res, queries=res.queries + 1, info={**res.info, "fooled": fooled})

    def save(self, path: str | os.PathLike) -> None:
        """``path`` (.npz) and a PNG of ``delta`` scaled to ``[0, 1]`` (0.5 = no change)."""
        d = np.asarray(self.delta)
        m = max(float(np.max(np.abs(d))), 1e-12)
        save_fitted(self, path, 0.5 + 0.5 * d / m)


FITTED["FittedPerturbation"] = FittedPerturbation
