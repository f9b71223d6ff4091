"""Multi-label targets: one sigmoid per finding (ChestX-ray14 / ChestMNIST style).

A multi-label model maps images ``x[B, H, W, K]`` to one logit per finding ``z[B, F]``; finding
``k`` is predicted present when ``z_k > 0`` (``sigmoid(z_k) > 0.5``). Labels are multi-hot
``y`` in ``{0, 1}[B, F]``.

**Success rules** (a :class:`Rule`), each with a per-example signed margin ``m`` that is > 0
exactly when the rule holds (the library's one sign convention):

* ``one_finding(k)``: finding ``k``'s decision disagrees with its label,
  ``m = -(2 y_k - 1) z_k``;
* ``any_finding()``: some finding disagrees with its label, ``m = max_k -(2 y_k - 1) z_k``;
* ``target_set(t)``: every finding's decision equals the target vector ``t`` in ``{0, 1}[F]``,
  ``m = min_k (2 t_k - 1) z_k``.

At ``z_k = 0`` exactly a finding counts as unchanged (``m = 0`` is no success).

**Every attack runs under a rule without knowing about multi-label**: :class:`MultiLabel` wraps an
attack and shows it, per example, the two-class model :class:`RuleView` with logits ``[0, m]`` and
the true class fixed to 0 ("the rule does not hold"). On that view

* the margin loss and ``res.loss`` are ``m``; ``res.success`` is ``m > 0`` on the final ``adv``;
* cross-entropy is ``softplus(m)``; for ``one_finding(k)`` that is the finding's binary
  cross-entropy, the loss it was trained with;
* score-based attacks read ``softmax([0, m]) = (1 - sigmoid(m), sigmoid(m))``, label-only attacks
  read whether the rule holds;
* DLR needs three classes (its scale comes from the third logit); on the two-class view it would
  be the plain margin, so an attack *configured* with ``loss='dlr'`` is refused. APGD-T and
  AutoAttack (whose APGD-T stage uses DLR internally) are accepted: with two classes APGD-T is
  targeted APGD toward the only other class, i.e. the targeted margin ``m``, exactly as on any
  binary model;
* class targets (``target=``) do not apply: the multi-label target is the rule
  :func:`target_set`, and a call with ``target=`` is refused.

The view needs the labels of the example it scores, and attacks may query the model with any
number of rows per example (populations, sample batches), so :class:`MultiLabel` runs the
attack on one example at a time under ``jax.vmap``; every row the attack scores then belongs to
that example. Attacks are per example by contract, so this changes nothing but the labels the
model sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _validate
from jaxadv._struct import is_concrete, pytree_dataclass, replace, static
from jaxadv.result import AttackResult

Array = jax.Array

#: The rule kinds: flip one chosen finding, flip any finding, reach a target set.
RULES = ("one", "any", "set")


# ----------------------------------------------------------------------------- losses per finding
def finding_margins(logits: Array, y: Array) -> Array:
    """Per-finding signed margins ``-(2 y - 1) z`` ``[B, F]``: > 0 where the decision ``z > 0``
    disagrees with the label ``y`` (the finding is flipped).

    Example:
        >>> import jax.numpy as jnp
        >>> finding_margins(jnp.array([[2.0, -1.0]]), jnp.array([[1, 1]])).tolist()
        [[-2.0, 1.0]]
    """
    z = jnp.asarray(logits)
    return (1 - 2 * jnp.asarray(y).astype(z.dtype)) * z


def bce(logits: Array, y: Array) -> Array:
    """Binary cross-entropy per finding ``[B, F]``, ``-log sigmoid((2 y - 1) z)``, computed stably
    as ``softplus(finding_margins(z, y))``. The training loss of a multi-label model; attacks
    maximise it."""
    return jax.nn.softplus(finding_margins(logits, y))


# ----------------------------------------------------------------------------- rules
_NEED_TARGET = (
    "rule 'set' needs a target vector: target_set([0, 1, 0, ...]) with one 0/1 entry per finding"
)


@pytree_dataclass
class Rule:
    """A multi-label success rule (build it with :func:`one_finding`, :func:`any_finding` or
    :func:`target_set`).

    Attributes:
        kind: ``'one'``, ``'any'`` or ``'set'`` (static).
        finding: the finding of ``'one'`` (static).
        target: the target vector ``{0, 1}[F]`` of ``'set'`` (a leaf: a new target never
            retraces).
    """

    kind: str = static()
    finding: int | None = static(default=None)
    target: Any = None

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise ValueError(f"multi-label rule must be one of {RULES}, got {self.kind!r}")
        if self.kind == "one":
            f = self.finding
            if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 0:
                raise ValueError(
                    f"rule 'one' flips one chosen finding: give finding=K (an index >= 0), got "
                    f"{f!r}"
                )
            object.__setattr__(self, "finding", int(f))
        elif self.finding is not None:
            raise ValueError(f"rule {self.kind!r} takes no finding (only rule 'one' does)")
        # A missing target is reported by check() / margin(), not here: JAX rebuilds pytrees with
        # placeholder leaves (None, tracers) through this constructor.
        if self.kind == "set":
            if is_concrete(self.target):
                t = np.asarray(self.target)
                if t.ndim != 1 or t.size == 0 or not np.all((t == 0) | (t == 1)):
                    raise ValueError(
                        f"the target set must be a vector of 0/1 with one entry per finding, got "
                        f"{t.tolist()!r}"
                    )
                if not isinstance(self.target, jax.Array):  # keep placed device arrays
                    object.__setattr__(self, "target", t.astype(np.int32))
        elif self.target is not None:
            raise ValueError(f"rule {self.kind!r} takes no target (only rule 'set' does)")

    def describe(self) -> str:
        """A short name: ``one:3``, ``any``, ``set:0,1,0,...``."""
        if self.kind == "one":
            return f"one:{self.finding}"
        if self.kind == "set" and is_concrete(self.target):
            return "set:" + ",".join(str(int(v)) for v in np.asarray(self.target))
        return self.kind

    def check(self, num_findings: int) -> None:
        """Refuse a finding index or target length that does not fit ``num_findings``."""
        self._need_target()
        if self.kind == "one" and not self.finding < num_findings:
            raise ValueError(
                f"finding {self.finding} is out of range: the model has {num_findings} findings "
                f"(indices 0..{num_findings - 1})"
            )
        if self.kind == "set" and np.shape(self.target) != (num_findings,):
            raise ValueError(
                f"the target set has {np.shape(self.target)[0]} entries but there are "
                f"{num_findings} findings; give one 0/1 entry per finding"
            )

    def _need_target(self) -> None:
        if self.kind == "set" and self.target is None:
            raise ValueError(_NEED_TARGET)

    def margin(self, logits: Array, y: Array) -> Array:
        """The rule's signed margin ``[B]`` from ``logits[B, F]`` and labels ``y[B, F]``: > 0
        exactly when the rule holds."""
        z = jnp.asarray(logits)
        if self.kind == "one":
            return finding_margins(z, y)[:, self.finding]
        if self.kind == "any":
            return jnp.max(finding_margins(z, y), axis=1)
        self._need_target()
        t = jnp.broadcast_to(jnp.asarray(self.target)[None, :], z.shape)
        return jnp.min(-finding_margins(z, t), axis=1)

    def success(self, logits: Array, y: Array) -> Array:
        """``bool[B]``: the rule holds (``margin > 0``; never where a logit is NaN/inf)."""
        z = jnp.asarray(logits)
        return (self.margin(z, y) > 0) & jnp.all(jnp.isfinite(z), axis=1)


def one_finding(finding: int) -> Rule:
    """Success when finding ``finding``'s decision disagrees with its label (flip it).

    Example:
        >>> import jax.numpy as jnp
        >>> r = one_finding(1)
        >>> r.success(jnp.array([[3.0, 0.5], [3.0, -0.5]]), jnp.array([[1, 1], [1, 1]])).tolist()
        [False, True]
    """
    return Rule(kind="one", finding=finding)


def any_finding() -> Rule:
    """Success when at least one finding's decision disagrees with its label."""
    return Rule(kind="any")


def target_set(target: Sequence[int] | np.ndarray) -> Rule:
    """Success when every finding's decision equals ``target`` (``{0, 1}[F]``, shared by the
    batch): e.g. all zeros hides every finding."""
    if target is None:
        raise ValueError(_NEED_TARGET)
    return Rule(kind="set", target=np.asarray(target))


# ----------------------------------------------------------------------------- the attack view
@pytree_dataclass
class RuleView:
    """One example's two-class view of a multi-label model under a rule:
    ``x[N, ...] -> [0, m][N, 2]`` with ``m`` the rule's margin, every row scored against the same
    labels ``y[F]``. The true class of the view is 0 ("the rule does not hold")."""

    model: Any
    rule: Rule
    y: Array

    def __call__(self, x: Array) -> Array:
        z = self.model(x)
        yb = jnp.broadcast_to(self.y[None, :], z.shape)
        m = self.rule.margin(z, yb)
        return jnp.stack([jnp.zeros_like(m), m], axis=1)


_NO_TARGET = (
    "a multi-label attack takes no class target: its target is the rule; use "
    "jaxadv.multilabel.target_set(t) to reach a set of findings"
)


@pytree_dataclass
class MultiLabel:
    """Run any attack against a multi-label model under a :class:`Rule`.

    ``MultiLabel(attack, rule)(key, model, x, y)`` takes the multi-label ``model`` (``x ->
    logits[B, F]``) and multi-hot labels ``y[B, F]``; the result is an ordinary
    :class:`~jaxadv.AttackResult`: ``success`` is the rule on the final ``adv`` (a clean example
    that already satisfies it counts, like a clean error), ``loss`` the rule's margin ``m``, and
    ``info['finding_logits']`` the per-finding logits ``[B, F]`` at ``adv``. ``jaxadv.evaluate``
    takes it (or ``rule=``) for multi-label data sets. See the module docstring for what each loss
    means on the rule's view, and what is refused.

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> from jaxadv import multilabel as ml
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 3))
        >>> x, y = jnp.full((2, 2, 2, 1), 0.5), jnp.array([[1, 0, 0], [0, 1, 1]])
        >>> pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.6), num_steps=5)
        >>> res = ml.MultiLabel(attack=pgd, rule=ml.any_finding())(0, model, x, y)
        >>> res.success.tolist(), res.info["finding_logits"].shape
        ([True, True], (2, 3))
    """

    attack: Any
    rule: Rule

    def __post_init__(self) -> None:
        if isinstance(self.attack, MultiLabel):
            raise TypeError("MultiLabel wraps a plain attack, not another MultiLabel")
        if not callable(getattr(self.attack, "run", None)) or not hasattr(self.attack, "threat"):
            raise TypeError(
                f"MultiLabel needs an attack value (jaxadv.PGD(...), ...), got "
                f"{type(self.attack).__name__}"
            )
        if not isinstance(self.rule, Rule):
            raise TypeError(
                f"rule must be a jaxadv.multilabel.Rule (one_finding(k), any_finding(), "
                f"target_set(t)), got {type(self.rule).__name__}"
            )
        check_attack(self.attack)

    @property
    def threat(self) -> Any:
        return self.attack.threat

    def with_eps(self, eps: float | Array) -> MultiLabel:
        """The same attack and rule with a new budget (no retrace)."""
        return replace(self, attack=self.attack.with_eps(eps))

    def run(self, keys: Array, model: Any, x: Array, y: Array, *, target=None) -> AttackResult:
        """The pure, jittable attack: per example ``attack.run`` on the rule's view."""
        if target is not None:
            raise ValueError(_NO_TARGET)

        def one(k, xi, yi):
            view = RuleView(model=model, rule=self.rule, y=yi)
            return self.attack.run(k[None], view, xi[None], jnp.zeros((1,), jnp.int32))

        # every leaf of a result has a leading batch axis (here 1): drop it
        res = jax.tree.map(lambda a: a[:, 0], jax.vmap(one)(keys, x, y))
        z = jax.lax.stop_gradient(model(res.adv))
        return replace(res, info={**res.info, "finding_logits": z.astype(jnp.float32)})

    def __call__(
        self,
        key: Any,
        model: Any,
        x: Any,
        y: Any,
        *,
        target: Any = None,
        validate: bool = True,
        index_offset: int = 0,
    ) -> AttackResult:
        """Attack ``x[B, H, W, K]`` with multi-hot labels ``y[B, F]`` (see the class docstring;
        arguments as for any attack's ``__call__``)."""
        from jaxadv.attacks.base import example_keys, finite_budget, run_jit
        from jaxadv.models import as_model

        if target is not None:
            raise ValueError(_NO_TARGET)
        model = as_model(model)
        key, x, y, _ = _validate.normalize_inputs(key, x, labels(y))
        if validate:
            check_inputs(self.threat, model, x, y, self.rule)
        keys = example_keys(key, x.shape[0], index_offset)
        return run_jit(finite_budget(self, x), keys, model, x, y, None)


# ----------------------------------------------------------------------------- input checks
def check_attack(attack: Any) -> None:
    """Refuse an attack configuration that does not apply under a multi-label rule: an explicit
    ``loss='dlr'`` (see the module docstring)."""
    if getattr(attack, "loss", None) == "dlr":
        raise ValueError(
            f"{type(attack).__name__}(loss='dlr') does not apply to a multi-label rule: DLR needs "
            "three or more classes, and a rule's view has two (the rule holds or not), where DLR "
            "would silently be the plain margin. Use loss='margin' (the rule's margin m) or "
            "loss='ce' (softplus(m))"
        )


def labels(y: Any) -> Any:
    """Multi-hot labels as an integer array (bool becomes int32); other dtypes are left for
    :func:`check_labels` to refuse."""
    a = y if hasattr(y, "dtype") else np.asarray(y)
    if a.dtype == np.bool_:
        return jnp.asarray(a).astype(jnp.int32)
    return a


def num_findings(model: Any, x: Any) -> int:
    """Trace (no compile) ``model`` on ``x``'s shape: it must return one logit per finding
    ``[B, F]``; returns ``F``."""
    out = _validate.trace_output(model, x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"a multi-label model must return one logit per finding [B, F]; for input batch "
            f"{x.shape[0]} it returned shape {tuple(out.shape)}"
        )
    return int(out.shape[1])


def check_labels(y: Any, batch: int, num_findings: int, *, name: str = "y") -> None:
    """Multi-hot labels ``{0, 1}[B, F]`` matching the batch and the model's findings."""
    shape = getattr(y, "shape", None)
    if shape is None or len(shape) != 2:
        got = "no array" if shape is None else f"shape {tuple(shape)}"
        raise ValueError(
            f"a multi-label rule needs multi-hot labels {name}[B, F] (one 0/1 per finding), got "
            f"{got}; for integer class labels [B] drop the multi-label rule"
        )
    if shape[0] != batch:
        raise ValueError(f"{name} has {shape[0]} rows but x has {batch} images")
    if shape[1] != num_findings:
        raise ValueError(
            f"{name} has {shape[1]} findings per example but the model returns {num_findings} "
            "logits; a multi-label model returns one logit per finding"
        )
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"{name} must hold 0/1 integers or bools, got dtype {y.dtype}")
    if is_concrete(y):
        v = np.asarray(y)
        if v.size and not np.all((v == 0) | (v == 1)):
            raise ValueError(f"{name} must hold only 0 and 1 (multi-hot), found {np.unique(v)[:5]}")


def check_inputs(threat: Any, model: Any, x: Any, y: Any, rule: Rule) -> int:
    """Every call-time check of a multi-label attack (images in the threat's box, labels, the
    rule against the model's findings, finite clean logits); returns the number of findings."""
    if not isinstance(rule, Rule):
        raise TypeError(f"rule must be a jaxadv.multilabel.Rule, got {type(rule).__name__}")
    lo = 0.0 if threat is None else float(np.min(np.asarray(threat.lo)))
    hi = 1.0 if threat is None else float(np.max(np.asarray(threat.hi)))
    _validate.check_images(x, lo=lo, hi=hi)
    f = num_findings(model, x)
    check_labels(y, x.shape[0], f)
    rule.check(f)
    _validate.check_logits(model, x)
    return f


__all__ = [
    "RULES",
    "MultiLabel",
    "Rule",
    "RuleView",
    "any_finding",
    "bce",
    "check_attack",
    "check_inputs",
    "finding_margins",
    "one_finding",
    "target_set",
]
