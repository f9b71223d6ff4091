"""Hostile inputs against every registered attack (one table, tiny configuration (``tests/attack_configs.py``)s).

Each edge is tried on every class of ``jaxadv.attacks.REGISTRY``: models that return NaN/inf
logits (on clean inputs: refused by the host checks; only on perturbed inputs: never a success),
``eps=inf`` (the whole box, finite results) and ``eps=NaN`` (refused), every declared setting just
outside its range (generated from the class's ``settings``), NumPy / list inputs, an int seed,
bf16 / f16 / f64 images (one dtype rule) and targeted calls whose target equals the label.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attack_configs import small

import jaxadv
from jaxadv._validate import normalize_inputs
from jaxadv.attacks import REGISTRY

NAMES = sorted(REGISTRY)
B, SHAPE = 4, (4, 4, 1)
D = int(np.prod(SHAPE))

W = jax.random.normal(jax.random.key(3), (D, 3), jnp.float32)
X = jax.random.uniform(jax.random.key(1), (B, *SHAPE), jnp.float32)
Y = jnp.asarray([0, 1, 2, 0], jnp.int32)
# flat images, one grey level each: "perturbed" means "not flat any more"
XF = jnp.broadcast_to(jnp.asarray([0.3, 0.4, 0.5, 0.6], jnp.float32)[:, None, None, None], X.shape)
YF = jnp.full((B,), 2, jnp.int32)  # the class-2 model below gets every flat image right


def _linear(w, x):
    return x.reshape(x.shape[0], -1) @ w


def _class2(w, x):
    """Class 2 on every flat image; NaN (darker) or +inf (brighter) logits as soon as an image is
    not flat. ``argmax`` of such a row is 0, not 2: read naively it would count as a success."""
    f = x.reshape(x.shape[0], -1)
    moved = (jnp.max(f, axis=1) - jnp.min(f, axis=1)) > 1e-6
    bad = jnp.where(jnp.mean(f, axis=1) > 0.45, jnp.inf, jnp.nan)
    return jnp.where(moved[:, None], bad[:, None], f @ w)


def _nan_on_bright(w, x):
    """NaN logits for images brighter than 0.45 on average (clean images included)."""
    f = x.reshape(x.shape[0], -1)
    return jnp.where((jnp.mean(f, axis=1) > 0.45)[:, None], jnp.nan, f @ w)


LIN = jaxadv.from_apply(_linear, W)
CLASS2 = jaxadv.from_apply(_class2, jnp.zeros((D, 3), jnp.float32).at[:, 2].set(1.0))
NAN_BRIGHT = jaxadv.from_apply(_nan_on_bright, W)


def _in_box(adv) -> bool:
    a = np.asarray(adv)
    return bool(np.all(np.isfinite(a)) and a.min() >= 0.0 and a.max() <= 1.0)


def _honest(res, model, x, y):
    """The result's own promises: finite adv in the box, success recomputed on adv."""
    assert res.adv.dtype == jnp.float32
    assert _in_box(res.adv)
    logits = np.asarray(model(res.adv))
    finite = np.all(np.isfinite(logits), axis=1)
    expect = (np.argmax(logits, axis=1) != np.asarray(y)) & finite
    np.testing.assert_array_equal(np.asarray(res.success), expect)
    assert res.info["nonfinite"].shape == (x.shape[0],) and res.info["nonfinite"].dtype == bool


_REF: dict[str, jaxadv.AttackResult] = {}


def _ref(name):
    if name not in _REF:
        _REF[name] = small(name)(jax.random.key(0), LIN, X, Y)
    return _REF[name]


# ------------------------------------------------------------------------------ declarations
@pytest.mark.parametrize("name", NAMES)
def test_declarations(name):
    cls = REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    assert cls.oracle in ("gradient", "scores", "labels")
    assert cls.budget_field is None or cls.budget_field in fields
    assert cls.restarts_field is None or cls.restarts_field in fields
    assert cls.threats and all(isinstance(t, type) for t in cls.threats)
    assert isinstance(small(cls.__name__).threat, cls.threats)
    for path in cls.settings:
        obj = small(cls.__name__)
        for part in path.split("."):
            obj = getattr(obj, part)  # every declared setting names a real field


def _settings_cases():
    for name in NAMES:
        for path, rng in REGISTRY[name].settings.items():
            if math.isfinite(rng.lo):
                yield name, path, rng.lo if rng.lo_open else rng.lo - 1
            if math.isfinite(rng.hi):
                yield name, path, rng.hi if rng.hi_open else rng.hi + 1
            if not rng.integer:
                yield name, path, float("nan")


def _with(atk, path, value):
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(atk, **{head: value})
    return dataclasses.replace(atk, **{head: _with(getattr(atk, head), rest, value)})


@pytest.mark.parametrize(("name", "path", "value"), list(_settings_cases()))
def test_bad_setting_refused(name, path, value):
    atk = small(name)
    with pytest.raises(ValueError, match=path.rsplit(".", 1)[-1]):
        _with(atk, path, value)


def test_bad_settings_generated_for_every_budget():
    """The table above is not empty where it matters: every budget field is declared."""
    for name in NAMES:
        cls = REGISTRY[name]
        if cls.budget_field is not None:
            assert cls.budget_field in cls.settings, name
    with pytest.raises(ValueError, match=r"DGDE: num_generations=0 is outside"):
        jaxadv.DGDE(num_generations=0)
    with pytest.raises(ValueError, match="population_size"):
        jaxadv.OnePixel(population_size=3)


@pytest.mark.parametrize("name", NAMES)
def test_unsupported_threat_refused(name):
    cls = REGISTRY[name]
    other = next(
        t(eps=0.1)
        for t in (jaxadv.L0Pixels, jaxadv.L1Ball, jaxadv.L2Ball, jaxadv.LinfBall)
        if t not in cls.threats
    )
    with pytest.raises((TypeError, ValueError), match=type(other).__name__):
        dataclasses.replace(small(cls.__name__), threat=other)


# -------------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("name", NAMES)
def test_nan_and_per_example_eps_refused(name):
    atk = small(name)
    with pytest.raises(ValueError, match="NaN"):
        atk.with_eps(float("nan"))
    per_example = jnp.full((B,), 0.1, jnp.float32)
    if atk.threat.p == 0:  # L0 projections are per example: a [B] pixel budget is allowed
        atk.with_eps(per_example)
    else:
        with pytest.raises(ValueError, match="sweep_eps"):
            atk.with_eps(per_example)


@pytest.mark.parametrize("name", NAMES)
def test_infinite_eps_is_the_box(name):
    atk = small(name).with_eps(math.inf)
    res = atk(jax.random.key(0), LIN, X, Y)
    _honest(res, LIN, X, Y)
    assert not np.any(np.asarray(res.info["nonfinite"]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [n for n in NAMES if jaxadv.L2Ball in REGISTRY[n].threats and n != "AutoAttack"]
)
def test_infinite_l2_eps_is_the_box(name):
    """L2Ball(eps=inf) turned every result into NaN (inf / inf in the projection)."""
    atk = dataclasses.replace(small(name), threat=jaxadv.L2Ball(eps=math.inf))
    res = atk(jax.random.key(0), LIN, X, Y)
    _honest(res, LIN, X, Y)


# ------------------------------------------------------------------------ non-finite models
@pytest.mark.parametrize("name", NAMES)
def test_nan_logits_on_clean_input_refused(name):
    atk = small(name)
    with pytest.raises(
        ValueError, match=r"NaN/inf logits on 2 of 4 clean images \(first at index 2"
    ):
        atk(jax.random.key(0), NAN_BRIGHT, XF, YF)


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_logits_on_perturbed_input_never_succeed(name):
    res = small(name)(jax.random.key(0), CLASS2, XF, YF)
    assert _in_box(res.adv)
    assert not np.any(np.asarray(res.success))
    # flagged: every row with non-finite logits at adv, and rows whose NaN/inf image fell back to x
    flag = np.asarray(res.info["nonfinite"])
    bad = ~np.all(np.isfinite(np.asarray(CLASS2(res.adv))), axis=1)
    assert np.all(flag[bad])
    at_x = np.all(np.asarray(res.adv == XF).reshape(B, -1), axis=1)
    assert np.all(at_x[flag & ~bad])


def test_finalize_replaces_nonfinite_adv_by_x():
    """An attack that returns NaN/inf pixels gets x back, evaluated there, flagged."""
    from jaxadv.result import finalize

    adv = X.at[1, 0, 0, 0].set(jnp.nan).at[2].set(jnp.inf)
    threat = jaxadv.L2Ball(eps=0.5)
    res = finalize(threat, LIN, X, adv, Y)
    np.testing.assert_array_equal(np.asarray(res.adv)[1:3], np.asarray(X)[1:3])
    assert res.info["nonfinite"].tolist() == [False, True, True, False]
    _honest(res, LIN, X, Y)


# ---------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("name", NAMES)
def test_numpy_list_seed_and_dtypes_behave_alike(name):
    atk, ref = small(name), _ref(name)
    x_np, y_np = np.asarray(X), np.asarray(Y)
    cases = {
        "numpy + int seed": (0, x_np, y_np, X),
        "lists": (jax.random.key(0), x_np.tolist(), y_np.tolist(), X),
        "raw uint32 key": (jax.random.key_data(jax.random.key(0)), X, Y, X),
        "float64 + int64": (jax.random.key(0), x_np.astype(np.float64), y_np.astype(np.int64), X),
    }
    for dt in (jnp.bfloat16, jnp.float16):
        xd = X.astype(dt)
        cases[str(dt.dtype)] = (jax.random.key(0), xd, Y, xd.astype(jnp.float32))
    for label, (key, x, y, as_f32) in cases.items():
        res = atk(key, LIN, x, y)
        assert res.adv.dtype == jnp.float32, label
        want = ref if as_f32 is X else atk(jax.random.key(0), LIN, as_f32, Y)
        for field in ("adv", "success", "queries"):
            np.testing.assert_array_equal(
                np.asarray(getattr(res, field)), np.asarray(getattr(want, field)), err_msg=label
            )


def test_normalize_inputs_rule():
    key, x, y, t = normalize_inputs(7, np.zeros((1, 2, 2, 1), np.float16), [1], np.asarray([0]))
    assert jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    assert x.dtype == jnp.float32 and y.dtype == jnp.int32 and t.dtype == jnp.int32
    _, xb, _, t2 = normalize_inputs(jax.random.key(0), X.astype(jnp.bfloat16), Y)
    assert xb.dtype == jnp.float32 and t2 is None
    _, xi, _, _ = normalize_inputs(0, np.zeros((1, 2, 2, 1), np.uint8), Y[:1])
    assert xi.dtype == jnp.uint8  # left for check_images to refuse with its "/ 255" hint
    with pytest.raises(TypeError, match="key"):
        normalize_inputs("seed", X, Y)


@pytest.mark.parametrize("name", NAMES)
def test_target_equal_to_label_refused(name):
    atk = small(name)
    target = (Y + 1) % 3
    with pytest.raises(ValueError, match="target"):
        atk(jax.random.key(0), LIN, X, Y, target=target.at[2].set(Y[2]))
