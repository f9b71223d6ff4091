"""AutoAttack (Croce & Hein, 2020): a parameter-free ensemble, worst case per example."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _validate
from jaxadv import _validate as V
from jaxadv import losses as L
from jaxadv._batch import bsel
from jaxadv._struct import pytree_dataclass, replace
from jaxadv.attacks.apgd import APGD, APGDT
from jaxadv.attacks.base import (
    REGISTRY,
    AbstractAttack,
    example_keys,
    finite_budget,
    register,
    run_jit,
)
from jaxadv.attacks.fmn import FMN
from jaxadv.engine import layout
from jaxadv.models import as_model
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L2Ball, LinfBall

log = logging.getLogger(__name__)
Array = jax.Array


def _stages_for(threat, version: str, num_steps: int, square_queries: int | None = None):
    stages: list[Any] = [
        APGD(threat=threat, num_steps=num_steps, loss="ce"),
        APGDT(threat=threat, num_steps=num_steps, num_target_classes=9),
    ]
    if isinstance(threat, (LinfBall, L2Ball)):
        stages.append(FMN(threat=threat, num_steps=num_steps))
    square = REGISTRY.get("Square")
    if square is not None and version == "standard":
        # AutoAttack's Square runs 5000 queries next to 100-step APGD; cheaper configurations
        # scale the budget with num_steps so the black-box stage does not dominate them.
        nq = 50 * num_steps if square_queries is None else square_queries
        stages.append(square(threat=threat, num_queries=max(int(nq), 2)))
    if version == "fast":
        stages = stages[:1]
    return tuple(stages)


@register
@pytree_dataclass
class AutoAttack(AbstractAttack):
    """The standard robustness-evaluation ensemble, run stage after stage.

    Stages (``version='standard'``): APGD-CE, APGD-T (targeted DLR, 9 targets), FMN (our
    minimum-norm stage in place of FAB-T) and Square. Per example the first successful stage's point
    is kept (worst case over the ensemble). Called directly, later stages run only on the examples
    still robust (compacted into blocks padded with the engine's rule,
    :func:`jaxadv.engine.layout.bucket`: a few sizes per octave, each compiled once); the pure
    :meth:`run` (used by ``jaxadv.evaluate``, ``sweep_eps`` and under ``jit``) runs every stage on
    the whole batch and merges by mask, with identical results.

    ``res.info['stage_success']`` is ``bool[B, S]``: broken after stage ``s``; robust accuracy after
    each stage is ``1 - stage_success.mean(0)``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 3))
        >>> aa = jaxadv.AutoAttack.standard(jaxadv.LinfBall(eps=0.05), num_steps=5)
        >>> res = aa(jax.random.key(0), model, jnp.full((2, 2, 2, 1), 0.5), jnp.array([0, 1]))
        >>> res.info["stage_success"].shape[1] == len(aa.attacks)
        True
    """

    # The stages carry the budgets (AutoAttack.standard(num_steps=...)); none is a field here.
    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = None
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball)
    settings: ClassVar[Mapping[str, V.Range]] = {}

    threat: Any
    attacks: tuple

    @classmethod
    def standard(
        cls,
        threat,
        *,
        version: str = "standard",
        num_steps: int = 100,
        square_queries: int | None = None,
    ) -> AutoAttack:
        """The standard ensemble for ``threat`` (``version='fast'``: APGD-CE only).

        ``square_queries`` is the Square stage's query budget; ``None`` means ``50 * num_steps``
        (5000 at the default 100 steps, as in AutoAttack).
        """
        return cls(threat=threat, attacks=_stages_for(threat, version, num_steps, square_queries))

    def with_eps(self, eps):
        return replace(
            self,
            threat=replace(self.threat, eps=eps),
            attacks=tuple(a.with_eps(eps) for a in self.attacks),
        )

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        if target is not None:
            raise ValueError("AutoAttack is untargeted; pass target=None")
        succ = L.is_adversarial(model(x), y)
        adv = x
        q = jnp.ones((x.shape[0],), jnp.int32)
        stage_success = []
        for i, atk in enumerate(self.attacks):
            skeys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys)
            res = atk.run(skeys, model, x, y)
            q = q + jnp.where(succ, 0, res.queries)
            # The first stage's point is kept for examples no stage breaks (its highest-loss
            # point, better than x for margins and AUC); later stages replace it only on success.
            take = (res.success | (i == 0)) & ~succ
            adv = bsel(take, res.adv, adv)
            succ = succ | res.success
            stage_success.append(succ)
        out = finalize(self.threat, model, x, adv, y, queries=q)
        return replace(out, info={**out.info, "stage_success": jnp.stack(stage_success, axis=1)})

    def __call__(
        self, key, model, x, y, *, target=None, validate=True, index_offset=0
    ) -> AttackResult:
        if target is not None:
            raise ValueError("AutoAttack is untargeted; pass target=None")
        model = as_model(model)
        key, x, y, _ = _validate.normalize_inputs(key, x, y)
        if validate:
            _validate.check_attack_inputs(self.threat, model, x, y)
        b = x.shape[0]
        keys = example_keys(key, b, index_offset)
        bounded = finite_budget(self, x)
        succ = np.asarray(_clean_success(model, x, y))
        adv = x
        q = np.ones((b,), np.int32)
        stage_success = []
        for i, atk in enumerate(bounded.attacks):
            idx = np.nonzero(~succ)[0]
            if idx.size:
                t0 = time.perf_counter()
                pad = layout.pad_rows(idx, layout.bucket(idx.size, b))  # the engine's rule
                skeys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys[pad])
                res = run_jit(atk, skeys, model, x[pad], y[pad], None)
                s = np.asarray(res.success)[: idx.size]
                won = idx[s]
                keep = np.ones_like(s) if i == 0 else s
                adv = adv.at[idx[keep]].set(res.adv[: idx.size][keep])
                q[idx] += np.asarray(res.queries)[: idx.size]
                succ = succ.copy()
                succ[won] = True
                log.info(
                    "AutoAttack stage %d %s: %d of %d robust points broken, robust accuracy "
                    "%.4f (%.1fs)",
                    i,
                    type(atk).__name__,
                    won.size,
                    idx.size,
                    1 - succ.mean(),
                    time.perf_counter() - t0,
                )
            stage_success.append(succ.copy())
        out = _finalize_jit(bounded.threat, model, x, adv, y, jnp.asarray(q))
        stages = jnp.asarray(np.stack(stage_success, axis=1))
        return replace(out, info={**out.info, "stage_success": stages})


@jax.jit
def _clean_success(model, x, y):
    return L.is_adversarial(model(x), y)


@jax.jit
def _finalize_jit(threat, model, x, adv, y, q):
    return finalize(threat, model, x, adv, y, queries=q)
