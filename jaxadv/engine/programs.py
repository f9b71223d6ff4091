"""The device programs of the evaluation engine, each a ``shard_map`` over a 1-D device mesh.

Each device runs the program traced at its own block shape, which is the configured per-device
batch whatever the number of devices or processes, so the compiled arithmetic (and every last bit
of the per-example results) is the same on 1 or 256 devices. ``check_vma=False``: attacks are
arbitrary per-example code (while loops whose carries start replicated); nothing here communicates
between devices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxadv import losses, metrics
from jaxadv import segmentation as S

Array = jax.Array

#: Per-example fields ``[E, B]`` that the attack program returns, with their dtypes.
ATTACK_FIELDS = {"success": jnp.bool_, "norm": jnp.float32, "queries": jnp.int32}
#: Per-example fields ``[E, B]`` that the metrics program returns.
METRIC_FIELDS = ("margin", "l2", "linf", "ssim", "score")
#: Per-image scores ``[E, B]`` of a dense (segmentation) result at ``adv``
#: (:func:`jaxadv.segmentation.scores`; ``target_iou`` for targeted attacks only).
DENSE_FIELDS = ("dice", "iou", "pixel_accuracy", "target_iou")


def _attack_block(attack, eps, key, model, idx, x, y, target):
    """One device's block: the attack at every eps (``vmap``), keys ``fold_in(key, index)``.

    A dense attack (its result's ``info`` holds ``dice``) also returns, per image, the rule's
    margin (``res.loss``) and the scores :func:`jaxadv.result.finalize` computed on the projected
    ``adv`` (:data:`DENSE_FIELDS`)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)

    def one(e):
        r = attack.with_eps(e).run(keys, model, x, y, target=target)
        per = {k: getattr(r, k).astype(dt) for k, dt in ATTACK_FIELDS.items()}
        if "dice" in r.info:  # a dense result: known at trace time
            per["margin"] = r.loss.astype(jnp.float32)
            per.update({k: r.info[k].astype(jnp.float32) for k in DENSE_FIELDS if k in r.info})
        return r.adv.astype(x.dtype), per

    return jax.vmap(one)(eps)


@functools.partial(jax.jit, static_argnames=("mesh",))
def attack_step(attack, eps, key, model, idx, x, y, target=None, *, mesh):
    """``adv[E, B, ...]`` and ``{success, norm, queries}[E, B]`` of ``attack`` at every ``eps``
    (dense attacks: also ``margin`` and :data:`DENSE_FIELDS`); ``target``: target masks
    ``[B, H, W]`` of a targeted dense attack."""
    axis = mesh.axis_names[0]
    rep, bat, per_eps = PartitionSpec(), PartitionSpec(axis), PartitionSpec(None, axis)
    return jax.shard_map(
        _attack_block,
        mesh=mesh,
        in_specs=(rep, rep, rep, rep, bat, bat, bat, bat),
        out_specs=(per_eps, per_eps),
        check_vma=False,
    )(attack, eps, key, model, idx, x, y, target)


def _metrics_block(model, x, y, advs, rule, ssim_win: int, dense: bool, keep_logits: bool):
    """Margin, L2, L-inf, SSIM and positive-class score ``[E, b]``, one example at a time.

    Why one at a time: the arithmetic XLA emits for a batched reduction or convolution depends on
    the batch shape and on how the program around it was fused (1 device vs. several), which moved
    the last bits of SSIM and of the attacks' own loss values between device counts. Per example
    the shapes (``[E, ...]``) and the program are the same everywhere, so the stored numbers are.
    The margin ``max_{j != y} z_j - z_y`` (> 0 exactly when fooled) replaces the attacks' own
    losses, which differ between attacks. Under a multi-label ``rule`` the margin and the score
    are the rule's margin and ``logits[E, b, F]`` (one logit per finding) are returned as well.
    ``dense``: only the image metrics (L2, L-inf, SSIM); the dense attack program returned the
    rule's margin and the per-image scores. ``keep_logits``: also return the logits ``[E, b, C]``
    of an integer-label model (for the macro AUC under attack).
    """

    def one(xya):
        xi, yi, ai = xya  # [H, W, K], [] (multi-label: [F]; dense: [H, W]), [E, H, W, K]
        xe = jnp.broadcast_to(xi[None], ai.shape)
        l2 = metrics.l2(xe, ai).astype(jnp.float32)
        linf = metrics.linf(xe, ai).astype(jnp.float32)
        if ssim_win:
            ss = metrics.ssim(xe, ai, win_size=ssim_win).astype(jnp.float32)
        else:  # images smaller than the SSIM window
            ss = jnp.full(l2.shape, jnp.nan, jnp.float32)
        if dense:
            return l2, linf, ss
        logits = model(ai)
        if rule is not None:
            m = rule.margin(logits, jnp.broadcast_to(yi[None], logits.shape)).astype(jnp.float32)
            return m, l2, linf, ss, m, logits.astype(jnp.float32)
        m = losses.margin(logits, jnp.broadcast_to(yi, (ai.shape[0],))).astype(jnp.float32)
        out = (m, l2, linf, ss, metrics.positive_log_odds(logits).astype(jnp.float32))
        return out + (logits.astype(jnp.float32),) if keep_logits else out

    out = jax.lax.map(one, (x, y, jnp.moveaxis(advs, 1, 0)))
    if dense:
        names = ("l2", "linf", "ssim")
    else:
        names = METRIC_FIELDS + (("logits",) if rule is not None or keep_logits else ())
    return dict(zip(names, (jnp.swapaxes(o, 0, 1) for o in out), strict=True))


@functools.partial(jax.jit, static_argnames=("mesh", "ssim_win", "dense", "keep_logits"))
def metrics_step(
    model, x, y, advs, rule=None, *, mesh, ssim_win: int, dense: bool = False, keep_logits=False
):
    """Per-example metrics ``[E, B]`` of the adversarials ``advs[E, B, ...]`` (a second program on
    purpose: fused into the attack's program, XLA's choices moved SSIM by an ulp between shapes).
    ``rule``: a :class:`jaxadv.multilabel.Rule` for multi-label labels ``y[B, F]``; ``dense``:
    masks ``y[B, H, W]``, image metrics only (``l2``, ``linf``, ``ssim``); ``keep_logits``: also
    ``logits[E, B, C]`` (always kept under a rule)."""
    axis = mesh.axis_names[0]
    per_eps = PartitionSpec(None, axis)
    return jax.shard_map(
        functools.partial(_metrics_block, ssim_win=ssim_win, dense=dense, keep_logits=keep_logits),
        mesh=mesh,
        in_specs=(
            PartitionSpec(),
            PartitionSpec(axis),
            PartitionSpec(axis),
            per_eps,
            PartitionSpec(),
        ),
        out_specs=per_eps,
        check_vma=False,
    )(model, x, y, advs, rule)


def _clean_block(model, x, y, rule, keep_logits: bool):
    def one(xy):
        xi, yi = xy
        logits = model(xi[None])
        if rule is not None:  # the rule does not hold on the clean image: "correct"
            m = rule.margin(logits, yi[None]).astype(jnp.float32)[0]
            return ~(m > 0), m, m, logits[0].astype(jnp.float32)
        m = losses.margin(logits, yi[None]).astype(jnp.float32)[0]
        out = (
            jnp.argmax(logits[0]) == yi,
            m,
            metrics.positive_log_odds(logits[0]).astype(jnp.float32),
        )
        return out + (logits[0].astype(jnp.float32),) if keep_logits else out

    out = jax.lax.map(one, (x, y))
    names = ("clean_correct", "clean_margin", "clean_score", "clean_logits")
    return dict(zip(names, out, strict=False))


@functools.partial(jax.jit, static_argnames=("mesh", "keep_logits"))
def clean_step(model, x, y, rule=None, *, mesh, keep_logits: bool = False):
    """``clean_correct``, ``clean_margin`` and ``clean_score`` ``[B]`` (one forward per example);
    under a multi-label ``rule`` also ``clean_logits[B, F]``, and "correct" means the rule does not
    hold (margin and score are the rule's margin); ``keep_logits``: ``clean_logits[B, C]`` of an
    integer-label model."""
    axis = mesh.axis_names[0]
    bat = PartitionSpec(axis)
    return jax.shard_map(
        functools.partial(_clean_block, keep_logits=keep_logits),
        mesh=mesh,
        in_specs=(PartitionSpec(), bat, bat, PartitionSpec()),
        out_specs=bat,
        check_vma=False,
    )(model, x, y, rule)


def _dense_clean_block(model, x, y, target, rule):
    def one(xyt):
        xi, yi, ti = xyt
        logits = model(xi[None])
        t = None if ti is None else ti[None]
        sc = S.scores(logits, yi[None], target=t)
        m = rule.margin(logits, yi[None], t, sc["dice"]).astype(jnp.float32)
        won = rule.success(logits, yi[None], t, sc["dice"])
        out = {"clean_correct": ~won[0], "clean_margin": m[0]}
        out["clean_score"] = jnp.full((), jnp.nan, jnp.float32)  # no positive-class score
        out.update({f"clean_{k}": v[0].astype(jnp.float32) for k, v in sc.items()})
        return out

    return jax.lax.map(one, (x, y, target))


@functools.partial(jax.jit, static_argnames=("mesh",))
def dense_clean_step(model, x, y, target, rule, *, mesh):
    """The clean pass of a dense target under a :class:`jaxadv.segmentation.DenseRule`, one image
    at a time: ``clean_correct`` (the rule does not hold on the clean image), ``clean_margin`` (the
    rule's margin), ``clean_score`` (NaN) and ``clean_<field>`` for each of :data:`DENSE_FIELDS`
    the call yields, all ``[B]``; ``target``: target masks ``[B, H, W]`` or ``None``."""
    axis = mesh.axis_names[0]
    bat = PartitionSpec(axis)
    return jax.shard_map(
        _dense_clean_block,
        mesh=mesh,
        in_specs=(PartitionSpec(), bat, bat, bat, PartitionSpec()),
        out_specs=bat,
        check_vma=False,
    )(model, x, y, target, rule)
