"""Success rules of multi-label data sets by name (``jaxadv attack --multilabel/--finding/
--target-set`` and a sweep attack's ``multilabel`` / ``finding`` / ``target_set``), and the check
that a model's outputs fit a data set; part of the one vocabulary (:mod:`jaxadv.vocab`), every user
error a :class:`~jaxadv.vocab.SpecError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxadv.vocab import SpecError

#: ``--multilabel`` / a sweep attack's ``multilabel``: flip one finding, flip any, reach a set.
MULTILABEL_RULES = ("one", "any", "set")


def check_rule_spec(kind: Any, finding: Any = None, target_set: Any = None) -> str | None:
    """Check a multi-label rule spec without data (config validation, before any loading);
    returns the rule kind (lower case) or ``None``.

    ``kind``: ``'one'`` (needs ``finding``), ``'any'``, ``'set'`` (needs ``target_set``: the
    findings that must be present, every other absent; ``'none'`` or ``[]`` for all absent).
    """
    if kind is None:
        given = [n for n, v in (("finding", finding), ("target_set", target_set)) if v is not None]
        if given:
            raise SpecError(
                f"{' and '.join(given)} apply to a multi-label rule only; add --multilabel "
                "(config: multilabel:) one, any or set"
            )
        return None
    k = str(kind).strip().lower()
    if k not in MULTILABEL_RULES:
        raise SpecError(
            f"multilabel must be one of {', '.join(MULTILABEL_RULES)} (flip one finding, flip "
            f"any finding, reach a target set), got {kind!r}"
        )
    if k == "one" and finding is None:
        raise SpecError(
            "multilabel rule 'one' flips one chosen finding: give --finding K (index or name)"
        )
    if k != "one" and finding is not None:
        raise SpecError(f"--finding applies to multilabel rule 'one' only, not {k!r}")
    if k == "set" and target_set is None:
        raise SpecError(
            "multilabel rule 'set' needs a target set: --target-set with the findings that must "
            "be present (indices or names, e.g. 2,5), or 'none' for every finding absent"
        )
    if k != "set" and target_set is not None:
        raise SpecError(f"--target-set applies to multilabel rule 'set' only, not {k!r}")
    if finding is not None and (isinstance(finding, bool) or not isinstance(finding, (int, str))):
        raise SpecError(f"finding must be an index or a name, got {finding!r}")
    return k


def _finding_index(v: Any, names: Sequence[str] | None, num: int, what: str) -> int:
    """A finding given as an index (int or digits) or a name of the data set's findings."""
    if isinstance(v, bool):
        raise SpecError(f"{what} must be an index or a name, got {v!r}")
    text = str(v).strip()
    if isinstance(v, int) or text.lstrip("-").isdigit():
        i = int(text)
        if not 0 <= i < num:
            raise SpecError(
                f"{what} {i} is out of range: the data set has {num} findings (0..{num - 1})"
            )
        return i
    lower = [n.lower() for n in (names or ())]
    if text.lower() not in lower:
        known = ", ".join(names or ()) or "none (the data set has no finding names)"
        raise SpecError(f"unknown {what} {v!r}; known findings: {known}; or give an index")
    return lower.index(text.lower())


def _target_items(v: Any) -> list[Any]:
    if isinstance(v, str):
        if v.strip().lower() in ("none", ""):
            return []
        return [s for s in v.split(",") if s.strip()]
    if isinstance(v, (list, tuple)):
        return list(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return [v]
    raise SpecError(
        f"target_set must list the findings that must be present (e.g. 2,5 or [2, 5]) or be "
        f"'none', got {v!r}"
    )


def make_rule(kind: Any, finding: Any, target_set: Any, ds: Any):
    """The :class:`jaxadv.multilabel.Rule` of a spec for data set ``ds`` (``None`` without
    ``kind``). Refuses a rule on single-label data, multi-label data without a rule, a finding out
    of range or unknown, and a rule missing its finding or target."""
    from jaxadv import multilabel as ml

    k = check_rule_spec(kind, finding, target_set)
    if k is None:
        if getattr(ds, "multi_label", False):
            raise SpecError(
                f"data {ds.name!r} is multi-label ({ds.num_classes} findings): give a success rule "
                "with --multilabel one|any|set (config: multilabel:)"
            )
        return None
    if not getattr(ds, "multi_label", False):
        raise SpecError(
            f"--multilabel {k} needs multi-label data (multi-hot labels [N, F], e.g. ChestMNIST); "
            f"data {ds.name!r} has one integer label per example: drop --multilabel"
        )
    num, names = ds.num_classes, ds.label_names
    if k == "one":
        return ml.one_finding(_finding_index(finding, names, num, "finding"))
    if k == "any":
        return ml.any_finding()
    t = [0] * num
    for it in _target_items(target_set):
        t[_finding_index(it, names, num, "target-set finding")] = 1
    return ml.target_set(t)


def check_model_fits(model: Any, ds: Any, rule: Any = None, name: str = "the model") -> None:
    """The model's outputs against the data set: one logit per class, or per finding for
    multi-label data. Refuses, before any attack runs, a multi-label model (one logit per finding)
    on single-label data and a classifier on multi-label data. A model that fails on the data's
    image shape is left to the engine's own check."""
    import jax
    import numpy as np

    h, w, k = ds.image_shape
    try:
        out = jax.eval_shape(model, jax.ShapeDtypeStruct((1, h, w, k), np.float32))
    except Exception:  # noqa: BLE001 - reported with context by the engine's input checks
        return
    out = out[0] if isinstance(out, (tuple, list)) else out
    c, n = int(out.shape[-1]), int(ds.num_classes)
    if c == n:
        return
    if getattr(ds, "multi_label", False):
        raise SpecError(
            f"{name} returns {c} logits but data {ds.name!r} has {n} findings; a multi-label model "
            "returns one logit per finding"
        )
    hint = (
        " A multi-label model (one logit per finding) needs multi-label data and --multilabel "
        "(config: multilabel:)."
        if c > n
        else ""
    )
    raise SpecError(f"{name} returns {c} logits but data {ds.name!r} has {n} classes.{hint}")
