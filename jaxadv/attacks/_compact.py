"""APGD, APGD-T and FAB-T stages that drop each example at its first success (AutoAttack's host
path).

Inside one jitted attack every row of the batch is computed until the loop ends, whether its
example is broken or not: after APGD-CE's first few steps most of an AutoAttack batch is broken
and the rest of the 100 steps would be spent on them. Called from :meth:`AutoAttack.__call__`
(which already syncs with the host between stages), these runners cut an APGD run into segments
(:data:`SEGMENTS`, fractions of the steps) and, between segments, drop the rows whose best point
already succeeds, compacting the others into a smaller padded block (the engine's
:func:`jaxadv.engine.layout.bucket`). APGD-T likewise runs each target only on the rows no earlier
target broke, as the reference does, and FAB-T runs each target (each restart) only on the rows
no earlier run broke inside ``eps``, as the reference's ``FABAttack.perturb`` does.

What stays the same: a row keeps its state and keys across segments, so a row that is not dropped
runs exactly the steps it runs in :meth:`APGD.run` (one restart); a dropped row has a successful
best point, which stays successful. So each example's verdict is the one of the uncompacted
attack; only the point returned for a broken example (its first successful best point rather than
the last one) and the gradient evaluations charged (the ones spent) differ. FAB's runs are not
cut: a row runs exactly the runs it runs in :meth:`FAB.run`, so its verdict and point are the same.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import losses as L
from jaxadv.attacks.apgd import APGD, APGDT
from jaxadv.attacks.fab import FAB
from jaxadv.engine import layout
from jaxadv.result import AttackResult, finalize

#: Segment ends as fractions of an APGD run's steps: examples broken by then stop there.
SEGMENTS = (0.05, 0.1, 0.2, 0.4)


def segment_ends(num_steps: int) -> list[int]:
    """The steps after which finished rows are dropped, ending with ``num_steps``."""
    ends = {round(f * num_steps) for f in SEGMENTS}
    return sorted({e for e in ends if 0 < e < num_steps} | {num_steps})


def supports(atk) -> bool:
    """Whether :func:`run` can run this stage (APGD / APGD-T with one restart, no unrolling;
    FAB, FAB-T)."""
    if type(atk) is FAB:
        return True
    return type(atk) in (APGD, APGDT) and atk.num_restarts == 1 and atk.unroll == 1


@jax.jit
def _begin(atk, keys, model, x, y, target):
    return atk.begin(keys, model, x, y, target)


@jax.jit
def _advance(atk, run, model, x, y, start, stop, target):
    return atk.advance(run, model, x, y, start, stop, target)


@functools.partial(jax.jit, static_argnames="kappa")
def _targets(model, x, y, kappa):
    """APGD-T's target order (as :meth:`APGDT.run` computes it): ``order[B, C]`` ascending and
    whether ``x`` is already broken (past the success margin ``kappa``)."""
    logits = model(x)
    return jnp.argsort(logits, axis=1), L.is_adversarial(logits, y, success_margin=kappa)


@jax.jit
def _fab_clean(atk, model, x, y):
    """FAB-T's target order ``order[B, C]`` and which rows it attacks (correctly classified)."""
    logits = model(x)
    return jnp.argsort(logits, axis=1), jnp.argmax(logits, axis=1) == y


@jax.jit
def _fab_attempt(atk, keys, model, x, y, tgt, j):
    """FAB's run ``j`` (traced: one program for every target) on every row of ``x``."""
    cand, spent = atk.attempt(keys, model, x, y, tgt, j, jnp.ones((x.shape[0],), bool))
    eps = jnp.asarray(atk.threat.eps, x.dtype)
    return cand.point, cand.success & (-cand.score <= eps), spent


@functools.partial(jax.jit, static_argnames="kappa")
def _misclassified(model, x, y, kappa):
    """Broken, as finalize judges (margin past the threat's ``success_margin`` ``kappa``)."""
    return L.is_adversarial(model(x), y, success_margin=kappa)


@jax.jit
def _finalize(threat, model, x, adv, y, q):
    return finalize(threat, model, x, adv, y, queries=q)


def _take(tree, rows):
    return jax.tree.map(lambda a: a if a.ndim == 0 else a[rows], tree)


def _apgd_rows(atk: APGD, keys, model, x, y, target, cap: int):
    """One APGD run on the rows of ``x`` (no padding), compacted between segments into blocks of
    at most ``cap``: ``(best points, APGD's own success, gradient evaluations)`` per row."""
    n = x.shape[0]
    pos = np.arange(n)  # rows of x still running
    pad = layout.pad_rows(pos, layout.bucket(n, cap))

    def tgt(p):
        return None if target is None else target[p]

    run = _begin(atk, keys[pad], model, x[pad], y[pad], tgt(pad))
    point, succ, q = x, np.zeros(n, bool), np.zeros(n, np.int32)
    start = 0
    for stop in segment_ends(atk.num_steps):
        bounds = jnp.asarray(start, jnp.int32), jnp.asarray(stop, jnp.int32)
        run = _advance(atk, run, model, x[pad], y[pad], *bounds, tgt(pad))
        k = pos.size
        s = np.asarray(run.best.success)[:k]
        done = s | (stop == atk.num_steps)
        fin = np.nonzero(done)[0]
        if fin.size:
            point = point.at[pos[fin]].set(run.best.point[fin])
            succ[pos[fin]] = s[fin]
            q[pos[fin]] = np.asarray(run.queries)[fin]
        keep = np.nonzero(~done)[0]
        if keep.size == 0:
            break
        local = layout.pad_rows(keep, layout.bucket(keep.size, pad.size))
        run = _take(run, local)
        pos, pad = pos[keep], pad[local]
        start = stop
    return point, succ, q


def _apgdt_rows(atk: APGDT, keys, model, x, y, cap: int):
    """APGD-T on the rows of ``x``: target ``j`` only on the rows no earlier target broke."""
    kappa = atk.threat.success_margin
    order, succ = _targets(model, x, y, kappa)
    order, succ = np.asarray(order), np.asarray(succ).copy()
    c = order.shape[1]
    n_t = min(atk.num_target_classes, c - 1)
    inner = atk.inner()
    adv, q = x, np.ones(x.shape[0], np.int32)
    for j in range(n_t):
        rows = np.nonzero(~succ)[0]
        if rows.size == 0:
            break
        # j-th most likely class other than the top one, as APGDT.run picks it
        t = order[rows, c - 2 - j]
        t = np.where(t == np.asarray(y)[rows], order[rows, c - 1], t)
        tkeys = jax.vmap(lambda k, j=j: jax.random.fold_in(k, 1000 + j))(keys[rows])
        point, _, tq = _apgd_rows(inner, tkeys, model, x[rows], y[rows], jnp.asarray(t), cap)
        broke = np.asarray(_misclassified(model, point, y[rows], kappa))
        q[rows] += tq + 1
        won = np.nonzero(broke)[0]
        adv = adv.at[rows[won]].set(point[won])
        succ[rows[won]] = True
    return adv, q


def _fab_rows(atk: FAB, keys, model, x, y, cap: int):
    """FAB (untargeted) or FAB-T on the rows of ``x`` as :meth:`FAB.run` runs it, but run ``j``
    only on the rows no earlier run broke inside ``eps`` (the reference's rule), compacted into
    blocks of at most ``cap``: a row's runs, and so its verdict and point, are those of
    :meth:`FAB.run`."""
    order, todo = _fab_clean(atk, model, x, y)
    order, todo = np.asarray(order), np.asarray(todo).copy()
    c = order.shape[1]
    fab_t = atk.num_target_classes is not None
    n_t = atk.num_targets(c) if fab_t else 1
    adv, q = x, np.ones(x.shape[0], np.int32)
    for j in range(n_t * atk.num_restarts):
        rows = np.nonzero(todo)[0]
        if rows.size == 0:
            break
        pad = layout.pad_rows(rows, layout.bucket(rows.size, cap))
        t = jnp.asarray(order[pad, c - 2 - j // atk.num_restarts]) if fab_t else None
        j_ = jnp.asarray(j, jnp.int32)
        point, won, spent = _fab_attempt(atk, keys[pad], model, x[pad], y[pad], t, j_)
        won = np.asarray(won)[: rows.size]
        q[rows] += np.asarray(spent)[: rows.size]
        hit = np.nonzero(won)[0]
        if hit.size:
            adv = adv.at[rows[hit]].set(point[hit])
            todo[rows[hit]] = False
    return adv, q


def run(atk, keys, model, x, y, n: int) -> AttackResult:
    """The stage ``atk`` (:func:`supports` it) on the first ``n`` rows of the padded block
    ``x``; the padding rows are returned as they are (unattacked)."""
    cap = x.shape[0]
    if isinstance(atk, FAB):
        adv, q = _fab_rows(atk, keys[:n], model, x[:n], y[:n], cap)
    elif isinstance(atk, APGDT):
        adv, q = _apgdt_rows(atk, keys[:n], model, x[:n], y[:n], cap)
    else:
        adv, _, q = _apgd_rows(atk, keys[:n], model, x[:n], y[:n], None, cap)
    adv = jnp.concatenate([adv, x[n:]], axis=0)
    q = layout.pad_rows(q, cap)
    return _finalize(atk.threat, model, x, adv, y, jnp.asarray(q))
