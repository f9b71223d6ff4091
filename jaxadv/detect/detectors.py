"""Feature-space detectors of adversarial examples, as fitted pytrees.

Every detector holds a :class:`jaxadv.features.FeatureModel` and, once fitted, its statistics as
arrays (leaves). ``det = det.fit(x_clean, y_clean, x_adv)`` (host code, returns a new value);
``det.score(x) -> f32[B]`` is pure and jittable, higher meaning "more likely adversarial", and
differentiable in ``x`` (the adaptive attack uses that). Definitions follow
``shared/specs/algorithms.md`` §11.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._struct import pytree_dataclass, replace, static
from jaxadv.detect.common import (
    LogisticRegression,
    batched,
    check_fitted,
    fit_logistic,
    serializable,
)

Array = jax.Array


def sq_dists(a: Array, b: Array) -> Array:
    """Squared Euclidean distances ``a[N, d], b[M, d] -> [N, M]`` (clipped at 0)."""
    d2 = jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :] - 2.0 * (a @ b.T)
    return jnp.maximum(d2, 0.0)


def lid_mle(h: Array, reference: Array, k: int) -> Array:
    """Local intrinsic dimensionality (Ma et al. 2018), maximum-likelihood estimate over the ``k``
    nearest neighbours of each row of ``h[B, d]`` in ``reference[R, d]``:
    ``-(1/k Σ_i log(r_i / r_k))^{-1}``. Returns ``[B]``."""
    dist = jnp.sqrt(sq_dists(h, reference) + 1e-12)
    r = -jax.lax.top_k(-dist, k)[0]  # ascending, [B, k]
    r = jnp.maximum(r, 1e-12)
    return -1.0 / jnp.minimum(jnp.mean(jnp.log(r / r[:, -1:]), axis=1), -1e-12)


@partial(jax.jit, static_argnums=2)
def _features_jit(x: Array, model: Any, layers: tuple[str, ...]):
    logits, feats = model.features(x)
    return logits, {n: feats[n] for n in layers}


def _features(model: Any, layers: tuple[str, ...]):
    """Host helper: ``x[N, ...] -> (logits[N, C], {name: h[N, d]})`` as NumPy, in batches."""
    return lambda x, batch_size=256: batched(
        _features_jit, x, model, tuple(layers), batch_size=batch_size
    )


def _check_xy(x: Any, y: Any, name: str = "x_clean") -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32).reshape(-1)
    if x.ndim != 4 or y.shape != (x.shape[0],):
        raise ValueError(f"{name} must be [N, H, W, K] with labels [N], got {x.shape}, {y.shape}")
    return x, y


def _adv(x_adv: Any, cls: str) -> np.ndarray:
    if x_adv is None:
        raise ValueError(f"{cls}.fit needs x_adv (reference-attack examples) to fit its classifier")
    x_adv = np.asarray(x_adv, np.float32)
    if x_adv.ndim != 4 or x_adv.shape[0] == 0:
        raise ValueError(f"x_adv must be a non-empty [N, H, W, K] batch, got {x_adv.shape}")
    return x_adv


class AbstractDetector:
    """Base of the detectors: ``fit`` (host) and ``score`` (pure, jittable)."""

    model: Any

    @property
    def fitted(self) -> bool:
        raise NotImplementedError

    def score(self, x: Array) -> Array:
        """``x[B, H, W, K]`` pixels -> ``f32[B]``, higher = more likely adversarial.

        By default one call of the feature model, then :meth:`score_features`; detectors that
        need more (MC-dropout passes, input pre-processing) override it."""
        check_fitted(self)
        logits, feats = self.model.features(x)
        return self.score_features(logits, feats)

    def score_features(self, logits: Array, feats: dict[str, Array]) -> Array:
        """The score from the model's logits ``[B, C]`` and pooled features ``{layer: [B, d]}``."""
        raise NotImplementedError

    def _layers(self) -> tuple[str, ...]:
        layers = self.layers or tuple(self.model.layers)
        missing = [n for n in layers if n not in self.model.layers]
        if missing:
            raise ValueError(
                f"layers {missing} are not exposed by the model (model.layers = "
                f"{self.model.layers}); build it with with_features(..., layers=...)"
            )
        return layers


@serializable
@pytree_dataclass
class KernelDensity(AbstractDetector):
    """Kernel density of the last feature layer under the predicted class (Feinman et al. 2017).

    ``score = -log((1/n_c) Σ_{i: y_i = c} exp(-||h - h_i||² / (2σ²)))`` with ``c`` the predicted
    class and ``h_i`` the clean training features: low density = adversarial.

    Attributes:
        model: a :class:`~jaxadv.features.FeatureModel`.
        layers: one layer name (static); empty = the model's last layer.
        bandwidth: ``σ``; ``None`` = the median distance between training features (set by fit).
    """

    model: Any
    layers: tuple[str, ...] = static(default=())
    bandwidth: Array | float | None = None
    train_features: Array | None = None
    train_labels: Array | None = None

    @property
    def fitted(self) -> bool:
        return self.train_features is not None

    def _layer(self) -> str:
        return (self.layers or (self.model.layers[-1],))[-1]

    def fit(self, x_clean: Any, y_clean: Any, x_adv: Any = None, *, batch_size: int = 256):
        """Store the clean training features (``x_adv`` is not needed)."""
        x, y = _check_xy(x_clean, y_clean)
        layer = self._layer()
        if layer not in self.model.layers:
            raise ValueError(f"layer {layer!r} is not one of model.layers {self.model.layers}")
        _, feats = _features(self.model, (layer,))(x, batch_size)
        h = feats[layer]
        bw = self.bandwidth
        if bw is None:
            d = np.sqrt(np.asarray(sq_dists(jnp.asarray(h[:500]), jnp.asarray(h[:500]))))
            bw = float(np.median(d[np.triu_indices(d.shape[0], 1)]))
        return replace(
            self,
            layers=(layer,),
            bandwidth=np.float32(bw),
            train_features=jnp.asarray(h),
            train_labels=jnp.asarray(y),
        )

    def score_features(self, logits: Array, feats: dict[str, Array]) -> Array:
        h = feats[self._layer()]
        bw = jnp.asarray(self.bandwidth, jnp.float32)
        logk = -sq_dists(h, self.train_features) / (2.0 * bw * bw)
        pred = jnp.argmax(logits, axis=1)
        same = self.train_labels[None, :] == pred[:, None]
        n = jnp.sum(same, axis=1).astype(jnp.float32)
        logdens = jax.nn.logsumexp(jnp.where(same, logk, -jnp.inf), axis=1) - jnp.log(n)
        return -logdens


@serializable
@pytree_dataclass
class BayesianUncertainty(AbstractDetector):
    """Monte Carlo dropout predictive variance (Feinman et al. 2017):
    ``mean_t Σ_j p_tj² - Σ_j (mean_t p_tj)²`` over ``num_samples`` stochastic passes.

    A model with :class:`flax.nnx.Dropout` layers (the shipped SmallCNN has one) is run with its
    own dropout. A model without dropout gets a *dropout head* (``head_layer``): ``fit`` regresses
    the model's clean logits on that layer's pooled features (ridge least squares, bias not
    penalised), and every stochastic pass applies inverted dropout at ``dropout_rate`` to the
    features before the head. The head's fidelity, the fraction of clean fitting examples on which
    its argmax equals the model's, is kept in ``head_agreement``.

    Attributes:
        num_samples: stochastic forward passes (static).
        key_data: raw PRNG key (``uint32``) of the dropout masks; the same masks for every call, so
            ``score`` is a deterministic function of ``x``.
        head_layer: ``None`` (use the model's dropout) or a name in ``model.layers`` (static).
        dropout_rate: the head's dropout probability, in (0, 1) (static; Feinman et al. use 0.5).
        head: fitted ``{"w": [d, C], "b": [C]}``. head_agreement: fitted scalar.
    """

    model: Any
    num_samples: int = static(default=20)
    key_data: Array | None = None
    is_fitted: bool = static(default=False)
    head_layer: str | None = static(default=None)
    dropout_rate: float = static(default=0.5)
    head: dict | None = None
    head_agreement: Array | None = None

    @property
    def fitted(self) -> bool:
        return self.is_fitted

    def fit(
        self,
        x_clean: Any = None,
        y_clean: Any = None,
        x_adv: Any = None,
        *,
        seed: int = 0,
        l2: float = 1e-4,
        batch_size: int = 256,
    ):
        """Fix the dropout key; with ``head_layer``, also fit the head on ``x_clean`` (labels and
        ``x_adv`` are not used: the head imitates the model, whatever the true labels)."""
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be at least 2, got {self.num_samples}")
        kd = jax.random.key_data(jax.random.key(seed))
        if self.head_layer is None:
            has = getattr(self.model.feature_fn, "has_dropout", None)
            if has is None or not has(self.model.params):
                raise ValueError(
                    "BayesianUncertainty needs a model with nnx.Dropout layers (MC dropout); this "
                    "model has none: pass head_layer=<one of model.layers> to fit a dropout head "
                    "on that layer's features, or use KernelDensity, LID or Mahalanobis"
                )
            return replace(self, key_data=kd, is_fitted=True)
        if self.head_layer not in self.model.layers:
            raise ValueError(
                f"head_layer {self.head_layer!r} is not exposed by the model "
                f"(model.layers = {self.model.layers})"
            )
        if not 0.0 < float(self.dropout_rate) < 1.0:
            raise ValueError(f"dropout_rate must be in (0, 1), got {self.dropout_rate}")
        if x_clean is None:
            raise ValueError("BayesianUncertainty with head_layer needs x_clean to fit its head")
        x = np.asarray(x_clean, np.float32)
        if x.ndim != 4 or x.shape[0] == 0:
            raise ValueError(f"x_clean must be a non-empty [N, H, W, K] batch, got {x.shape}")
        logits, feats = _features(self.model, (self.head_layer,))(x, batch_size)
        z = np.asarray(logits, np.float64)
        h = np.asarray(feats[self.head_layer], np.float64)
        if not (np.all(np.isfinite(z)) and np.all(np.isfinite(h))):
            raise ValueError("the model gives non-finite logits or features on x_clean")
        a = np.concatenate([h, np.ones((len(h), 1))], axis=1)
        reg = l2 * len(h) * np.eye(a.shape[1])
        reg[-1, -1] = 0.0  # the bias is not penalised
        wb = np.linalg.lstsq(a.T @ a + reg, a.T @ z, rcond=None)[0]
        agree = np.mean(np.argmax(a @ wb, axis=1) == np.argmax(z, axis=1))
        head = {"w": jnp.asarray(wb[:-1], jnp.float32), "b": jnp.asarray(wb[-1], jnp.float32)}
        return replace(
            self,
            key_data=kd,
            is_fitted=True,
            head=head,
            head_agreement=jnp.asarray(agree, jnp.float32),
        )

    def score(self, x: Array) -> Array:
        check_fitted(self)
        key = jax.random.wrap_key_data(self.key_data)
        keys = jax.random.split(key, self.num_samples)
        if self.head is None:
            probs = jax.vmap(lambda k: jax.nn.softmax(self.model.features(x, k)[0], axis=-1))(keys)
        else:
            h = self.model.features(x)[1][self.head_layer]
            keep = 1.0 - self.dropout_rate

            def one(k):
                # one mask per pass, shared by the batch: an example's score does not depend on
                # its position in the batch
                m = jax.random.bernoulli(k, keep, (1, h.shape[-1])).astype(h.dtype) / keep
                z = (h * m) @ self.head["w"] + self.head["b"][None, :]
                return jax.nn.softmax(z, axis=-1)

            probs = jax.vmap(one)(keys)
        return jnp.mean(jnp.sum(probs * probs, axis=2), axis=0) - jnp.sum(
            jnp.mean(probs, axis=0) ** 2, axis=1
        )


@serializable
@pytree_dataclass
class LID(AbstractDetector):
    """Local intrinsic dimensionality per layer, combined by logistic regression (Ma et al. 2018).

    The minibatch of the paper is a fixed reference set: the first ``num_reference`` clean
    training examples. Every score (training and test) is the LID estimate against that set, so
    the logistic regression is fitted on the remaining clean examples and the adversarial ones.

    Attributes:
        k: nearest neighbours (static); needs ``k <= num_reference``.
        num_reference: size of the reference minibatch (static).
        layers: layer names (static); empty = all of the model's layers.
    """

    model: Any
    k: int = static(default=20)
    num_reference: int = static(default=100)
    layers: tuple[str, ...] = static(default=())
    reference: dict | None = None
    classifier: LogisticRegression | None = None

    @property
    def fitted(self) -> bool:
        return self.classifier is not None

    def fit(self, x_clean: Any, y_clean: Any, x_adv: Any, *, batch_size: int = 256):
        """Fit on clean and reference-attack examples (see the class docstring)."""
        x, _ = _check_xy(x_clean, y_clean)
        x_adv = _adv(x_adv, "LID")
        if self.k < 1 or self.num_reference < self.k:
            raise ValueError(
                f"LID needs 1 <= k <= num_reference, got k={self.k}, "
                f"num_reference={self.num_reference}"
            )
        if x.shape[0] < self.num_reference + 1:
            raise ValueError(
                f"LID needs more than num_reference={self.num_reference} clean examples (the "
                f"reference set plus at least one to fit on), got {x.shape[0]}; lower "
                "num_reference (and k) or give more examples"
            )
        layers = self._layers()
        feat = _features(self.model, layers)
        _, fc = feat(x, batch_size)
        ref = {n: jnp.asarray(fc[n][: self.num_reference]) for n in layers}
        det = replace(self, layers=layers, reference=ref)
        _, fa = feat(x_adv, batch_size)
        z_clean = det._lids({n: jnp.asarray(fc[n][self.num_reference :]) for n in layers})
        z_adv = det._lids({n: jnp.asarray(fa[n]) for n in layers})
        z = np.concatenate([np.asarray(z_clean), np.asarray(z_adv)])
        t = np.concatenate([np.zeros(len(z_clean)), np.ones(len(z_adv))])
        return replace(det, classifier=fit_logistic(z, t))

    def _lids(self, feats: dict[str, Array]) -> Array:
        return jnp.stack([lid_mle(feats[n], self.reference[n], self.k) for n in self.layers], 1)

    def score_features(self, logits: Array, feats: dict[str, Array]) -> Array:
        return self.classifier.decision(self._lids(feats))


@serializable
@pytree_dataclass
class Mahalanobis(AbstractDetector):
    """Class-conditional Gaussians with a tied covariance per layer (Lee et al. 2018), scored as
    ``M_l(x) = max_c -(h_l - μ_c)ᵀ Σ_l^{-1} (h_l - μ_c)``, combined by logistic regression.

    Attributes:
        layers: layer names (static); empty = all of the model's layers.
        noise: input pre-processing magnitude ``ε``: the score is read at
            ``clip(x + ε·sign(∇_x Σ_l M_l(x)))`` (one gradient for all layers, where the paper
            takes one per layer); 0 turns it off (static: 0 costs no gradient).
    """

    model: Any
    layers: tuple[str, ...] = static(default=())
    noise: float = static(default=0.0)
    means: dict | None = None
    precisions: dict | None = None
    classifier: LogisticRegression | None = None

    @property
    def fitted(self) -> bool:
        return self.classifier is not None

    def fit(self, x_clean: Any, y_clean: Any, x_adv: Any, *, batch_size: int = 256):
        """Class means and tied covariance from the clean examples (true labels), then logistic
        regression on the layer scores of clean (0) and ``x_adv`` (1)."""
        x, y = _check_xy(x_clean, y_clean)
        x_adv = _adv(x_adv, "Mahalanobis")
        layers = self._layers()
        logits, fc = _features(self.model, layers)(x, batch_size)
        c = logits.shape[1]
        if np.any((y < 0) | (y >= c)):
            raise ValueError(f"labels must lie in [0, {c}), got {np.unique(y)[:10]}")
        missing = [k for k in range(c) if not np.any(y == k)]
        if missing:
            raise ValueError(f"Mahalanobis needs clean examples of every class; none of {missing}")
        means, precs = {}, {}
        for n in layers:
            h = fc[n].astype(np.float64)
            mu = np.stack([h[y == k].mean(0) for k in range(c)])
            r = h - mu[y]
            cov = r.T @ r / h.shape[0]
            means[n] = jnp.asarray(mu, jnp.float32)
            precs[n] = jnp.asarray(np.linalg.pinv(cov, hermitian=True), jnp.float32)
        det = replace(self, layers=layers, means=means, precisions=precs)
        z_clean = batched(_maha_layer_scores, x, det, batch_size=batch_size)
        z_adv = batched(_maha_layer_scores, x_adv, det, batch_size=batch_size)
        z = np.concatenate([z_clean, z_adv])
        t = np.concatenate([np.zeros(len(z_clean)), np.ones(len(z_adv))])
        return replace(det, classifier=fit_logistic(z, t))

    def _maha(self, feats: dict[str, Array]) -> Array:
        out = []
        for n in self.layers:
            diff = feats[n][:, None, :] - self.means[n][None, :, :]  # [B, C, d]
            m = jnp.einsum("bcd,de,bce->bc", diff, self.precisions[n], diff)
            out.append(jnp.max(-m, axis=1))
        return jnp.stack(out, axis=1)  # [B, L]

    def _layer_scores(self, x: Array) -> Array:
        def total(xx):
            return jnp.sum(self._maha(self.model.features(xx)[1]))

        if self.noise:
            x = jnp.clip(x + jnp.float32(self.noise) * jnp.sign(jax.grad(total)(x)), 0.0, 1.0)
        return self._maha(self.model.features(x)[1])

    def score(self, x: Array) -> Array:
        check_fitted(self)
        return self.classifier.decision(self._layer_scores(x))


@serializable
@pytree_dataclass
class DNNDetector(AbstractDetector):
    """A small MLP (one hidden ReLU layer) on the standardised, concatenated pooled features,
    trained with Adam on binary cross-entropy (clean 0, adversarial 1), full batch.

    Attributes:
        layers: layer names (static); empty = all of the model's layers.
        hidden: hidden width (static); num_steps: Adam steps (static); learning_rate.
    """

    model: Any
    layers: tuple[str, ...] = static(default=())
    hidden: int = static(default=64)
    num_steps: int = static(default=500)
    learning_rate: float = 1e-2
    mean: Array | None = None
    scale: Array | None = None
    params: dict | None = None

    @property
    def fitted(self) -> bool:
        return self.params is not None

    def fit(self, x_clean: Any, y_clean: Any, x_adv: Any, *, batch_size: int = 256, seed: int = 0):
        """Train on the features of clean (0) and ``x_adv`` (1) examples."""
        x, _ = _check_xy(x_clean, y_clean)
        x_adv = _adv(x_adv, "DNNDetector")
        layers = self._layers()
        feat = _features(self.model, layers)
        zc = np.concatenate([feat(x, batch_size)[1][n] for n in layers], axis=1)
        za = np.concatenate([feat(x_adv, batch_size)[1][n] for n in layers], axis=1)
        z = np.concatenate([zc, za]).astype(np.float64)
        t = jnp.asarray(np.concatenate([np.zeros(len(zc)), np.ones(len(za))]), jnp.float32)
        mean, scale = z.mean(0), z.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        zs = jnp.asarray((z - mean) / scale, jnp.float32)
        k1, k2 = jax.random.split(jax.random.key(seed))
        d = zs.shape[1]
        params = {
            "w1": jax.random.normal(k1, (d, self.hidden), jnp.float32) * np.float32(d**-0.5),
            "b1": jnp.zeros((self.hidden,), jnp.float32),
            "w2": jax.random.normal(k2, (self.hidden,), jnp.float32)
            * np.float32(self.hidden**-0.5),
            "b2": jnp.zeros((), jnp.float32),
        }
        lr = jnp.float32(self.learning_rate)

        def loss(p):
            logit = _mlp(p, zs)
            # binary cross-entropy on logits, written out (numerically stable form)
            return jnp.mean(jax.nn.softplus(logit) - t * logit)

        @jax.jit
        def train(p):
            # Adam (Kingma & Ba), written out: optax's bias correction mixes int32 and float
            # scalars, which jax_numpy_dtype_promotion='strict' refuses.
            b1, b2 = jnp.float32(0.9), jnp.float32(0.999)

            def step(i, carry):
                p, m, v = carry
                g = jax.grad(loss)(p)
                m = jax.tree.map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
                v = jax.tree.map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
                k = (i + 1).astype(jnp.float32)
                c1, c2 = 1 - b1**k, 1 - b2**k
                p = jax.tree.map(
                    lambda q, a, b: q - lr * (a / c1) / (jnp.sqrt(b / c2) + 1e-8), p, m, v
                )
                return p, m, v

            zero = jax.tree.map(jnp.zeros_like, p)
            return jax.lax.fori_loop(0, self.num_steps, step, (p, zero, zero))[0]

        return replace(
            self,
            layers=layers,
            mean=jnp.asarray(mean, jnp.float32),
            scale=jnp.asarray(scale, jnp.float32),
            params=train(params),
        )

    def score_features(self, logits: Array, feats: dict[str, Array]) -> Array:
        z = jnp.concatenate([feats[n] for n in self.layers], axis=1)
        return _mlp(self.params, (z - self.mean[None, :]) / self.scale[None, :])


@jax.jit
def _maha_layer_scores(x: Array, det: Mahalanobis) -> Array:
    return det._layer_scores(x)


def _mlp(p: dict, z: Array) -> Array:
    return jax.nn.relu(z @ p["w1"] + p["b1"][None, :]) @ p["w2"] + p["b2"]
