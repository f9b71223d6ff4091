"""Evolutionary sparse attacks (OnePixel, DGDE), their DE population engine and the L0 threat.

Tiny models only: a planted few-pixel trigger, a linear "bright pixel" model. Every test checks a
property that a plausible bug breaks (counts off by one, a growing support, a gradient call, a
batch-dependent key).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxadv
from jaxadv.attacks import example_keys
from jaxadv.attacks import population as pop_lib
from jaxadv.attacks.dgde import exact_subset
from jaxadv.sharding import attack_sharded

TRIGGER = 3  # pixels the planted model needs to flip


def _top_mean(x, k):
    flat = jnp.max(x, axis=-1).reshape(x.shape[0], -1)
    return jax.lax.top_k(flat, k)[0].mean(axis=1)


def _trigger_apply(scale, x):
    """Class 1 ("positive") unless the mean of the ``TRIGGER`` brightest pixels exceeds 0.8.

    On a flat 0.3 image at least 3 pixels must be raised (two at 1.0 give (2 + 0.3) / 3 < 0.8), so
    the minimal adversarial support has exactly ``TRIGGER`` pixels.
    """
    top = _top_mean(x, TRIGGER)
    return jnp.stack([scale * (top - 0.8), jnp.zeros_like(top)], axis=1)


@jax.custom_vjp
def _no_grad(x):
    return x


def _no_grad_fwd(x):
    return x, None


def _no_grad_bwd(_, g):
    raise AssertionError("a score-based attack asked for a gradient")


_no_grad.defvjp(_no_grad_fwd, _no_grad_bwd)


def _trap_apply(scale, x):
    return _trigger_apply(scale, _no_grad(x))


def trigger_model(trap: bool = True):
    return jaxadv.from_apply(_trap_apply if trap else _trigger_apply, jnp.float32(50.0))


def _bright_apply(w, x):
    """Linear 3-class model: class 1 iff pixel 5 is bright, class 2 iff pixel 10 is bright."""
    return x.reshape(x.shape[0], -1) @ w - jnp.asarray([[0.0, 7.0, 7.0]])


def bright_model():
    w = jnp.zeros((16, 3), jnp.float32).at[5, 1].set(10.0).at[10, 2].set(10.0)
    return jaxadv.from_apply(_bright_apply, w)


def _flat(b, shape=(6, 6, 1), v=0.3):
    return jnp.full((b, *shape), v, jnp.float32)


def _recount(x, adv):
    """Changed spatial pixels, counted in numpy."""
    d = np.abs(np.asarray(adv, np.float64) - np.asarray(x, np.float64)).max(axis=-1)
    return (d > 0).reshape(d.shape[0], -1).sum(axis=1)


DGDE_FAST = dict(num_tries=10, tries_per_call=5, num_generations=80, patience=25)


# ------------------------------------------------------------------------- DGDE: trigger
def test_dgde_finds_planted_trigger_and_never_grows():
    model = trigger_model()
    x, y = _flat(2), jnp.ones((2,), jnp.int32)
    res = jaxadv.DGDE(**DGDE_FAST)(jax.random.key(0), model, x, y)
    assert res.success.tolist() == [True] * 2
    assert res.info["phase0_success"].tolist() == [True] * 2
    # no larger than the trigger (and, by construction of the model, not smaller)
    assert np.all(np.asarray(res.norm) <= TRIGGER), res.norm
    assert np.all(np.asarray(res.norm) >= TRIGGER), res.norm
    # the reported norm is an independent recount, and matches the support and its percentage
    np.testing.assert_array_equal(np.asarray(res.norm), _recount(x, res.adv))
    np.testing.assert_array_equal(np.asarray(res.norm), res.info["mask"].sum(axis=(1, 2)))
    np.testing.assert_allclose(res.info["pct_pixels"], 100 * res.norm / 36, rtol=1e-6)
    # pixel count never increases, starts from a reduction of the full image, ends at the result
    hist = np.asarray(res.info["history_pixels"])
    assert hist.shape == (2, 80)
    assert np.all(np.diff(hist, axis=1) <= 0), hist
    assert np.all(hist[:, 0] < 36) and np.all(hist[:, -1] == np.asarray(res.norm))
    # every recorded state was adversarial: p_true < 0.5 on the 2-class model
    assert np.all(np.asarray(res.info["history_prob"]) < 0.5)
    # the result really differs from x only on its support
    changed = np.abs(np.asarray(res.adv - x))[..., 0] > 0
    np.testing.assert_array_equal(changed, np.asarray(res.info["mask"]))


def test_dgde_support_is_nested_across_generations():
    """Block variant, one generation at a time: the new support is a subset of the old one, the
    live count is its size and never grows, and every state is adversarial."""
    atk = jaxadv.DGDE(**DGDE_FAST)
    model = trigger_model()
    b = 2
    x, y = _flat(b), jnp.ones((b,), jnp.int32)

    def p_true(mask, vals):
        return jax.nn.softmax(model(atk.apply(x, mask, vals)), axis=1)[:, 1]

    mask = jnp.ones((b, 6, 6), bool)
    vals = jax.random.uniform(jax.random.key(0), x.shape)
    p0 = p_true(mask, vals)
    assert bool(jnp.all(p0 < 0.5))  # a full-image noise start, as Phase 0 leaves it
    full = lambda v: jnp.full((b,), v, jnp.int32)
    s = dict(mask=mask, vals=vals, n=full(36), fit=p0, p=p0, delta=full(18), fails=full(0))
    s["queries"] = full(0)
    step = jax.jit(lambda k, st: atk._generation(k, model, x, y, None, st))
    for g in range(25):
        new = step(example_keys(jax.random.key(g), b), s)
        m_old, m_new = np.asarray(s["mask"]), np.asarray(new["mask"])
        assert np.all(~m_new | m_old)
        np.testing.assert_array_equal(new["n"], m_new.sum(axis=(1, 2)))
        assert np.all(np.asarray(new["n"]) <= np.asarray(s["n"]))
        np.testing.assert_allclose(new["p"], p_true(new["mask"], new["vals"]), rtol=1e-5)
        assert bool(jnp.all(new["p"] < 0.5))
        np.testing.assert_array_equal(new["queries"], s["queries"] + 3)
        s = new
    assert np.all(np.asarray(s["n"]) < 12)


# ------------------------------------------------------------------------- query counts
class _Counter:
    """Images the model was called on, call by call (and how many were distinct in each call)."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def __call__(self, x):
        x = np.asarray(x)
        self.calls.append((len(x), len({row.tobytes() for row in x})))

    @property
    def images(self) -> int:
        return sum(n for n, _ in self.calls)


def _counting(apply, counter):
    def f(p, x):
        jax.debug.callback(counter, x)
        return apply(p, x)

    return f


@pytest.mark.parametrize("attack", ["DGDE", "OnePixel", "OnePixel-reuse"])
def test_queries_equal_images_sent_to_the_model(attack):
    """One example: every image the model sees is charged to it, exactly once. With reused
    scores the model may also see padding rows (repeats of a row of the same call): then the
    charge is the number of distinct images per call, and fewer than without reuse."""
    counter = _Counter()
    if attack == "DGDE":
        model = jaxadv.from_apply(_counting(_trigger_apply, counter), jnp.float32(50.0))
        x, y = _flat(1), jnp.ones((1,), jnp.int32)
        atk = jaxadv.DGDE(**DGDE_FAST)
    else:
        w = bright_model().params
        model = jaxadv.from_apply(_counting(_bright_apply, counter), w)
        x, y = _flat(1, (4, 4, 1), 0.2), jnp.zeros((1,), jnp.int32)
        # chunked evaluation (lax.map over 3 chunks of 4) and the paper's early stop; with
        # reuse one call per generation (chunks would split a padding row from its original)
        reuse = attack == "OnePixel-reuse"
        atk = jaxadv.OnePixel(
            population_size=12,
            num_generations=15,
            eval_chunk=None if reuse else 4,
            reuse_scores=reuse,
        )
    res = jax.jit(lambda k: atk.run(k, model, x, y))(example_keys(jax.random.key(0), 1))
    jax.effects_barrier()
    assert bool(res.success[0])
    if attack == "OnePixel-reuse":
        # the initial population and the final check are charged whole; in between each call's
        # padding repeats one of its own rows, so the charge is the distinct images per call
        (n0, _), *mid, (n_last, _) = counter.calls
        assert int(res.queries[0]) == n0 + sum(d for _, d in mid) + n_last
        assert int(res.queries[0]) <= counter.images
    else:
        assert int(res.queries[0]) == counter.images


@pytest.mark.parametrize("case", ["none", "success", "per-example-budget"])
def test_reused_scores_same_search_fewer_queries(case):
    """reuse_scores only skips images already scored: the DE takes the same path (same adversarial,
    best fitness and generations per example) and charges fewer queries once trials repeat images
    (a 4x4 image has only 16 positions x 256 colours). Chunked scoring changes nothing; early stop
    and per-example pixel budgets (gathered rows keep their own budget) neither."""
    model = bright_model()
    x = jnp.concatenate([_flat(3, (4, 4, 1), 0.2), _flat(1, (4, 4, 1), 0.9)])
    y = jnp.array([0, 0, 0, 1], jnp.int32)
    kw = dict(population_size=16, num_generations=40, early_stop="threshold")
    if case == "none":
        kw["early_stop"] = "none"
    if case == "per-example-budget":
        kw.update(num_pixels=2, threat=jaxadv.L0Pixels(eps=jnp.asarray([0.0, 1.0, 2.0, 1.0])))
    a = jaxadv.OnePixel(**kw, reuse_scores=False)(jax.random.key(3), model, x, y)
    b = jaxadv.OnePixel(**kw, reuse_scores=True, eval_chunk=5)(jax.random.key(3), model, x, y)
    np.testing.assert_array_equal(a.adv, b.adv)
    np.testing.assert_array_equal(a.success, b.success)
    np.testing.assert_array_equal(a.info["fitness"], b.info["fitness"])
    np.testing.assert_array_equal(a.info["generations"], b.info["generations"])
    gens = np.asarray(a.info["generations"])
    np.testing.assert_array_equal(a.queries, 16 * (gens + 1) + 1)
    moved = gens > 2  # the clean error (example 3) stops at once: nothing to save there
    assert moved.any() and np.all(np.asarray(b.queries)[moved] < np.asarray(a.queries)[moved])
    if case == "per-example-budget":
        np.testing.assert_array_equal(np.asarray(b.norm) <= np.array([0, 1, 2, 1]), True)


def test_reused_scores_under_vmap_never_score_more():
    """sweep_eps vmaps the attack over budgets, so each generation's number of new trials is
    batched: the model must still see no more images than without reuse (a counting model)."""
    counts = {}
    x = jnp.concatenate([_flat(3, (4, 4, 1), 0.2), _flat(1, (4, 4, 1), 0.9)])
    y = jnp.array([0, 0, 0, 1], jnp.int32)
    for reuse in (False, True):
        counter = _Counter()
        model = jaxadv.from_apply(_counting(_bright_apply, counter), bright_model().params)
        atk = jaxadv.OnePixel(
            num_pixels=2, population_size=16, num_generations=10, reuse_scores=reuse
        )
        curve = jaxadv.sweep_eps(atk, [1.0, 2.0], key=jax.random.key(0), model=model, x=x, y=y)
        jax.effects_barrier()
        counts[reuse] = (counter.images, int(jnp.sum(curve.result.queries)))
    assert counts[True][0] <= counts[False][0], counts
    assert counts[True][1] < counts[False][1], counts


def test_dgde_query_schedule_per_example():
    """Examples finishing at different times: each is charged only while it is active."""
    # DGDE with additive noise (A1 switch): two flat 0.3 images are flipped by noise of half-width
    # 0.6, a black image cannot be (pixels stay <= 0.6: Phase 0 fails), a bright one is already wrong
    dg = jaxadv.DGDE(
        num_tries=6,
        tries_per_call=4,
        num_generations=30,
        patience=5,
        options=jaxadv.DGDEOptions(noise_mode="additive", noise_amp=0.6),
    )
    xs = jnp.concatenate([_flat(2), _flat(1, v=0.0), _flat(1, v=0.95)])
    r = dg(jax.random.key(2), trigger_model(), xs, jnp.ones((4,), jnp.int32))
    assert r.info["phase0_success"].tolist() == [True, True, False, False]
    assert r.success.tolist() == [True, True, False, True]
    tries = np.asarray(r.info["tries_used"])
    charged = np.minimum(np.ceil(tries / 4) * 4, 6)
    expect = 1 + charged + 3 * np.asarray(r.info["generations"]) + 1
    np.testing.assert_array_equal(r.queries, expect)
    assert int(r.queries[2]) == 1 + 6 + 1  # every try spent, then given up: x returned
    assert int(r.queries[3]) == 2  # clean error: checked, not attacked
    np.testing.assert_array_equal(r.adv[2:], xs[2:])
    np.testing.assert_array_equal(r.norm[2:], [0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(r.norm), _recount(xs, r.adv))


# ---------------------------------------------------------------------- score-based only
def test_black_box_never_differentiates():
    """The trap model raises as soon as anything asks for its gradient (at trace time)."""
    model = trigger_model(trap=True)
    x, y = _flat(2), jnp.ones((2,), jnp.int32)
    with pytest.raises(AssertionError, match="gradient"):  # the trap works
        jaxadv.FGSM(threat=jaxadv.LinfBall(eps=0.1))(jax.random.key(0), model, x, y)
    for atk in (jaxadv.DGDE(**DGDE_FAST), jaxadv.OnePixel(population_size=8, num_generations=6)):
        res = atk(jax.random.key(0), model, x, y)
        assert res.adv.shape == x.shape


# ------------------------------------------------------------------------- OnePixel
def test_one_pixel_untargeted_targeted_and_query_schedule():
    model = bright_model()
    x = jax.random.uniform(jax.random.key(5), (4, 4, 4, 1), jnp.float32, 0.0, 0.3)
    y = jnp.asarray([0, 0, 0, 1], jnp.int32)  # the last is a clean error (pixel 5 is dark)
    atk = jaxadv.OnePixel(population_size=24, num_generations=20)
    res = atk(jax.random.key(0), model, x, y)
    assert res.success.tolist() == [True] * 4
    np.testing.assert_array_equal(res.norm, _recount(x, res.adv))
    assert np.all(np.asarray(res.norm)[:3] == 1.0)
    # the paper's untargeted stop rule: true-class probability below 5 %
    done = np.asarray(res.info["early_stopped"])
    assert np.all(np.asarray(res.info["fitness"])[done] < 0.05)
    # charged P per generation while active: the clean error stops at the initial population
    g = np.asarray(res.info["generations"])
    np.testing.assert_array_equal(res.queries, 24 * (g + 1) + 1)
    assert g[3] == 0 and np.all(g[~done] == 20)

    target = jnp.asarray([2, 2, 1, 2], jnp.int32)
    res_t = atk(jax.random.key(0), model, x, y, target=target)
    assert res_t.success.tolist() == [True] * 4
    np.testing.assert_array_equal(jnp.argmax(model(res_t.adv), axis=1), target)
    flat = np.asarray(res_t.adv).reshape(4, -1)
    assert flat[0, 10] > 0.7 and flat[2, 5] > 0.7  # the pixel each target needs
    # targeted stop rule: target probability above 50 %
    assert np.all(np.asarray(res_t.info["fitness"])[np.asarray(res_t.info["early_stopped"])] < 0.5)


# -------------------------------------------------------------------- determinism, sharding
@pytest.mark.parametrize("attack", ["DGDE", "OnePixel"])
def test_same_key_same_result_and_sharded_equals_unsharded(attack):
    assert jax.device_count() == 8
    model = trigger_model(trap=True)
    x = jax.random.uniform(jax.random.key(4), (5, 6, 6, 1), jnp.float32, 0.2, 0.4)
    y = jnp.ones((5,), jnp.int32)
    if attack == "DGDE":
        atk = jaxadv.DGDE(num_tries=4, tries_per_call=2, num_generations=20, patience=5)
    else:
        atk = jaxadv.OnePixel(num_pixels=3, population_size=8, num_generations=6)
    a = atk(jax.random.key(7), model, x, y)
    b = atk(jax.random.key(7), model, x, y)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)
    c = atk(jax.random.key(8), model, x, y)
    assert not np.array_equal(np.asarray(a.adv), np.asarray(c.adv))
    # 5 examples on 8 devices, padded to 8: per-example keys make each result independent of the
    # slot and of the other examples in the batch
    sh = attack_sharded(atk, jax.random.key(7), model, x, y)
    np.testing.assert_array_equal(sh.adv, a.adv)
    np.testing.assert_array_equal(sh.success, a.success)
    np.testing.assert_array_equal(sh.queries, a.queries)
    np.testing.assert_array_equal(sh.norm, a.norm)
    np.testing.assert_array_equal(np.asarray(a.norm), _recount(x, a.adv))
    if attack == "OnePixel":  # k = 3 pixels per individual: never more than 3 changed
        assert np.all(np.asarray(a.norm) <= 3)


# ------------------------------------------------------------------------ DGDE switches
@pytest.mark.parametrize(
    "cfg",
    [
        dict(variant="individual", compact_size=16, grey=True),
        dict(
            num_subsets=2,
            keep_close_tol=0.5,
            l0_target=6,
            record_history=False,
            quantize=None,
            success_rule="prob_threshold",
            tau=0.4,
            minimality_sweep=True,
            compact_size=36,
        ),
    ],
    ids=["individual-grey", "subsets-l0target-threshold-sweep"],
)
def test_dgde_switches_keep_invariants(cfg):
    model = trigger_model()
    x, y = _flat(2, (6, 6, 2)), jnp.ones((2,), jnp.int32)
    top = {k: cfg[k] for k in ("record_history",) if k in cfg}
    opts = jaxadv.DGDEOptions(**{k: v for k, v in cfg.items() if k not in top})
    atk = jaxadv.DGDE(**dict(DGDE_FAST, num_generations=40, options=opts, **top))
    res = atk(jax.random.key(0), model, x, y)
    assert bool(jnp.all(res.success))
    np.testing.assert_array_equal(np.asarray(res.norm), _recount(x, res.adv))
    assert np.all(np.asarray(res.norm) <= np.asarray(res.info["support_size"]))
    assert np.all(np.asarray(res.norm) >= TRIGGER)
    if cfg.get("l0_target"):
        assert np.all(np.asarray(res.info["support_size"]) <= 6)
    if cfg.get("variant") == "individual":
        assert np.all(np.asarray(res.norm) <= 6)
    if cfg.get("minimality_sweep"):
        p = jax.nn.softmax(model(res.adv), axis=1)[:, 1]
        assert bool(jnp.all(p < 0.4))
        assert np.all(np.asarray(res.norm) == TRIGGER)  # 1-minimal is minimal for this model
    if cfg.get("grey"):
        d = np.asarray(res.adv)
        np.testing.assert_array_equal(d[..., 0], d[..., 1])
    assert ("history_pixels" in res.info) == cfg.get("record_history", True)


def test_dgde_targeted_three_classes():
    model = bright_model()
    x = _flat(2, (4, 4, 1), 0.2)
    y = jnp.zeros((2,), jnp.int32)
    target = jnp.asarray([1, 2], jnp.int32)
    res = jaxadv.DGDE(**DGDE_FAST)(jax.random.key(0), model, x, y, target=target)
    pred = jnp.argmax(model(res.adv), axis=1)
    ok = np.asarray(res.info["phase0_success"])
    assert ok.any()
    np.testing.assert_array_equal(np.asarray(pred)[ok], np.asarray(target)[ok])
    np.testing.assert_array_equal(res.success, pred == target)
    assert np.all(np.asarray(res.norm)[ok] <= 2)


def test_rejects_bad_config():
    with pytest.raises(ValueError, match="block"):
        jaxadv.DGDEOptions(evolve_positions=True)
    with pytest.raises(ValueError, match="noise_mode"):
        jaxadv.DGDEOptions(noise_mode="gauss")
    with pytest.raises(TypeError, match="L0Pixels"):
        jaxadv.DGDE(threat=jaxadv.LinfBall(eps=0.1))
    with pytest.raises(ValueError, match="num_pixels"):
        jaxadv.OnePixel(num_pixels=0)


def test_one_pixel_budget_sets_live_pixel_count_in_one_compilation():
    """num_pixels is the capacity; each budget of a sweep_eps grid uses floor(eps) pixels, so the
    planted 3-pixel trigger is out of reach at budgets 1 and 2 and found at 3."""
    model = trigger_model(trap=False)
    x = _flat(2)
    y = jnp.ones((2,), jnp.int32)
    atk = jaxadv.OnePixel(num_pixels=3, population_size=40, num_generations=60)
    curve = jaxadv.sweep_eps(atk, [0, 1, 2, 3], key=jax.random.key(0), model=model, x=x, y=y)
    succ = np.asarray(curve.result.success)
    norms = np.asarray(curve.result.norm)
    for i, eps in enumerate([0, 1, 2, 3]):
        assert np.all(norms[i] <= eps)
        np.testing.assert_array_equal(norms[i], _recount(x, curve.result.adv[i]))
    assert not succ[:3].any() and succ[3].all()
    # the budget equal to the capacity is the plain attack
    alone = atk(jax.random.key(0), model, x, y)
    np.testing.assert_array_equal(alone.adv, curve.result.adv[3])


# ---------------------------------------------------------------------- engine pieces
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(4, 40))
def test_rand1_donors_distinct_and_live(seed, n):
    rank = jnp.arange(40, dtype=jnp.int32) % n
    r1, r2, r3 = jax.jit(pop_lib.rand1_donors)(jax.random.key(seed), rank, jnp.int32(n))
    a = np.stack([np.asarray(rank), np.asarray(r1), np.asarray(r2), np.asarray(r3)])
    assert a.min() >= 0 and a.max() < n
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.all(a[i] != a[j])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 40))
def test_exact_subset_size(seed, k):
    mask = jax.random.bernoulli(jax.random.key(seed), 0.5, (6, 6))
    sub = exact_subset(jax.random.key(seed + 1), mask, jnp.int32(k))
    assert int(sub.sum()) == min(k, int(mask.sum()))
    assert bool(jnp.all(~sub | mask))


def test_probabilities_chunked_equals_single_call():
    model = bright_model()
    imgs = jax.random.uniform(jax.random.key(0), (3, 10, 4, 4, 1))
    full = pop_lib.probabilities(model, imgs, chunk=None)
    for chunk in (3, 4, 10):
        np.testing.assert_allclose(pop_lib.probabilities(model, imgs, chunk=chunk), full, atol=1e-6)


def test_greedy_select_treats_nan_as_worst():
    pop = jnp.zeros((3, 1))
    trial = jnp.ones((3, 1))
    fit = jnp.asarray([1.0, jnp.nan, 0.5])
    tfit = jnp.asarray([jnp.nan, 2.0, 0.5])
    new, nf = pop_lib.greedy_select(pop, fit, trial, tfit)
    np.testing.assert_array_equal(new[:, 0], [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(nf, [1.0, 2.0, 0.5])


def test_minimize_sphere_and_early_exit():
    """DE on a shifted sphere per example; examples whose tolerance is met stop and stop paying."""
    b, p, d = 3, 16, 4
    centre = jnp.asarray([[0.1] * d, [0.5] * d, [0.9] * d])
    tol = jnp.asarray([1e-1, 1e-3, -1.0])  # the last can never finish

    def evaluate(pop):
        f = jnp.sum((pop - centre[:, None]) ** 2, axis=-1)
        return f, f < tol[:, None]

    keys = example_keys(jax.random.key(0), b)
    pop0 = jax.random.uniform(jax.random.key(1), (b, p, d))
    s = jax.jit(
        lambda k, p0: pop_lib.minimize(
            k,
            evaluate,
            p0,
            num_generations=60,
            mutation_factor=0.5,
            crossover_rate=0.9,
            lower=0.0,
            upper=1.0,
        )
    )(keys, pop0)
    g = np.asarray(s.generations)
    np.testing.assert_array_equal(s.queries, p * (g + 1))
    assert s.done.tolist() == [True, True, False]
    assert g[0] < g[1] <= 60 and g[2] == 60
    assert float(s.best_fit[0]) < 1e-1 and float(s.best_fit[1]) < 1e-3
    assert float(s.best_fit[2]) < 1e-2  # it still converges
    np.testing.assert_allclose(jnp.sum((s.best - centre) ** 2, axis=1), s.best_fit, rtol=1e-5)


# ------------------------------------------------------------------------- L0 threat
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 20))
def test_l0_projection_invariants(seed, k):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(0, 1, (2, 4, 4, 3)), jnp.float32)
    z = x + jnp.asarray(rng.normal(0, 0.5, x.shape) * (rng.uniform(size=(2, 4, 4, 1)) < 0.6))
    t = jaxadv.L0Pixels(eps=k)
    p = t.project(x, z.astype(jnp.float32))
    assert np.all(_recount(x, p) <= k)
    np.testing.assert_array_equal(np.asarray(t.norm(p - x)), _recount(x, p))
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    np.testing.assert_array_equal(t.project(x, p), p)
    if k >= 16:
        np.testing.assert_array_equal(p, jnp.clip(z, 0.0, 1.0))
