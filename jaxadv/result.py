"""The result every attack returns, and the step that makes it honest."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxadv import losses as L
from jaxadv._batch import bcast
from jaxadv._struct import pytree_dataclass

Array = jax.Array


@pytree_dataclass
class AttackResult:
    """Per-example outcome of an attack (every field has a leading batch axis ``B``).

    Attributes:
        adv: adversarial images ``[B, H, W, K]``, always inside the threat set and the box.
        success: ``bool[B]``, recomputed by the library on ``adv``: misclassified (untargeted) or
            classified as the target (targeted). Clean errors count as successes.
        loss: ``f32[B]`` the logit margin at ``adv``, the same quantity for every attack (whatever
            loss the attack optimised): :func:`jaxadv.losses.margin` (untargeted,
            ``max_{j != y} z_j - z_y``) or :func:`jaxadv.losses.margin_targeted` (targeted,
            ``z_t - max_{j != t} z_j``), computed by :func:`finalize` from the logits on the final
            ``adv``. It is > 0 exactly when the attack succeeded (ties at 0 aside, and NaN logits
            aside: see ``info["nonfinite"]``).
        norm: ``f32[B]`` size of ``adv - x`` in the threat model's norm (pixels changed for L0).
        queries: ``int32[B]`` forward passes spent on that example (gradient attacks count one per
            gradient evaluation).
        info: per-example extras (leading axis ``B``). Every attack has
            ``info["nonfinite"]`` ``bool[B]`` (see :func:`finalize`); others are attack-specific,
            e.g. AutoAttack's ``stage_success[B, S]``.
    """

    adv: Array
    success: Array
    loss: Array
    norm: Array
    queries: Array
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def robust(self) -> Array:
        """``bool[B]``: the example withstood the attack."""
        return ~self.success


def _judged(node) -> bool:
    return hasattr(node, "judging_view")


def judging_view(model):
    """The model as the library judges results with it.

    A randomised model (any node of the model's pytree with a ``judging_view()`` method, e.g.
    :class:`jaxadv.RandomizedModel`) is judged on a draw the attack never queried, as a
    randomised network in another framework draws afresh at every forward pass; judging on the
    draw the attack saw would let it keep a lucky draw. Deterministic models come back as they
    are.
    """
    if not any(_judged(n) for n in jax.tree_util.tree_leaves(model, is_leaf=_judged)):
        return model
    return jax.tree_util.tree_map(
        lambda n: n.judging_view() if _judged(n) else n, model, is_leaf=_judged
    )


def finalize(threat, model, x, adv, y, *, target=None, queries=None, rule=None) -> AttackResult:
    """Enforce the threat model on ``adv`` and re-evaluate the model there (one forward pass).

    The library, not the attack, decides success: whatever an attack returns is projected into the
    threat set and the box, and success is recomputed from the model's logits on that projection.

    Non-finite values never make a success (one rule for every attack):

    * a row whose projected ``adv`` holds a NaN/inf (a diverged attack, a NaN budget under ``vmap``)
      falls back to ``x`` and is evaluated there;
    * a row whose logits at the final ``adv`` are not all finite gets ``success=False``;
    * either case sets ``info["nonfinite"]`` (``bool[B]``) for that row.

    A randomised model is judged on a fresh draw (:func:`judging_view`).

    Durable successes (both settings live on the threat model, so every attack obeys them):

    * ``threat.grid`` set: after the projection ``adv`` is moved onto the storage grid inside the
      threat set (:meth:`jaxadv.threats.AbstractThreat.snap`) and evaluated there; where the
      nearest rounding is not a success, the rounding away from ``x`` is tried (one batched
      forward of ``2B`` images: ``queries`` counts 2);
    * ``threat.success_margin`` κ > 0: success is ``margin > κ`` (and finite logits) instead of
      the argmax rule. With κ = 0 the rule is exactly the argmax rule of
      :func:`jaxadv.losses.is_adversarial`.

    ``res.loss`` is always the margin (see :class:`AttackResult`); an attack that wants to report
    its own loss puts it in ``info``.

    Dense targets (segmentation: ``logits[B, H, W, C]``, masks ``y[B, H, W]``) pass a per-image
    ``rule`` (:class:`jaxadv.segmentation.DenseRule`): success is then the rule on the projected
    ``adv``, ``res.loss`` its margin (``>= 0`` on success), and ``info`` gains the per-image
    ``dice`` / ``iou`` / ``pixel_accuracy`` at ``adv`` (``target_iou`` when targeted) and, for a
    rule that compares with the clean prediction, ``dice_clean`` (one more forward pass, counted
    in ``queries``).
    """
    margin = L.margin if target is None else L.margin_targeted
    model = judging_view(model)
    adv = threat.project(x, adv)
    bad_adv = ~jnp.all(jnp.isfinite(adv.reshape(adv.shape[0], -1)), axis=1)
    b = x.shape[0]
    q = jnp.zeros((b,), jnp.int32) if queries is None else queries.astype(jnp.int32)
    if rule is not None:
        if threat.grid is not None or threat.success_margin != 0:
            raise ValueError(
                "dense (segmentation) results take neither a storage grid nor a success margin "
                "yet; leave grid and success_margin at their defaults"
            )
        adv = jax.lax.stop_gradient(jnp.where(bcast(bad_adv, adv), x, adv))
        logits = model(adv)
        finite = jnp.all(jnp.isfinite(logits.reshape(b, -1)), axis=1)
        return _finalize_dense(threat, model, x, adv, y, target, q, rule, logits, finite, bad_adv)
    adv = jnp.where(bcast(bad_adv, adv), x, adv)
    lbl = y if target is None else target
    kappa = threat.success_margin

    def verdict(logits, reps=1):
        yy, ll = jnp.tile(y, reps), jnp.tile(lbl, reps)
        tt = None if target is None else jnp.tile(target, reps)
        m = margin(logits, ll).astype(jnp.float32)
        won = L.is_adversarial(logits, yy, tt, success_margin=kappa)
        return won & jnp.all(jnp.isfinite(logits), axis=1), m, logits

    if threat.grid is None:
        adv = jax.lax.stop_gradient(adv)
        won, m, logits = verdict(model(adv))
        extra = 1
    else:
        # two roundings in one batched forward: to nearest (or towards x), and away from x where
        # the nearest lost the success (a small perturbation rounded to nearest mostly vanishes)
        cand = jax.lax.stop_gradient(
            jnp.concatenate([threat.snap(x, adv), threat.snap(x, adv, away=True)])
        )
        won2, m2, lg2 = verdict(model(cand), 2)
        use = ~won2[:b] & won2[b:]
        adv = jnp.where(bcast(use, x), cand[b:], cand[:b])
        won, m = jnp.where(use, won2[b:], won2[:b]), jnp.where(use, m2[b:], m2[:b])
        logits = jnp.where(use[:, None], lg2[b:], lg2[:b])
        extra = 2
    finite = jnp.all(jnp.isfinite(logits), axis=1)
    return AttackResult(
        adv=adv,
        success=won,
        loss=m,
        norm=threat.norm(adv - x).astype(jnp.float32),
        queries=q + extra,
        info={"nonfinite": bad_adv | ~finite},
    )


def _finalize_dense(threat, model, x, adv, y, target, q, rule, logits, finite, bad_adv):
    """:func:`finalize` for a dense target under a per-image ``rule``."""
    from jaxadv import segmentation as S

    info = {"nonfinite": bad_adv | ~finite}
    clean = None
    if rule.needs_clean:
        clean = S.scores(jax.lax.stop_gradient(model(x)), y)["dice"]
        info["dice_clean"] = clean
        q = q + 1
    info.update(S.scores(logits, y, target=target))
    margin = rule.margin(logits, y, target, clean).astype(jnp.float32)
    return AttackResult(
        adv=adv,
        success=(margin >= 0) & finite,
        loss=margin,
        norm=threat.norm(adv - x).astype(jnp.float32),
        queries=q + 1,
        info=info,
    )
