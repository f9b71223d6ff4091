"""SimBA and Sparse-RS (score-based classics): no gradients, exact per-example query counts
(including clean errors and examples that finish early), SimBA against a NumPy transcription of the
paper's Algorithm 1, the DCT basis against scipy, the sparse threat sets (at most k pixels, one
s x s patch), the alpha schedule at hand-computed points, targeted success, and the CLI names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import _linear_apply, linear_model

import jaxadv
from jaxadv.attacks import example_keys
from jaxadv.attacks.simba import dct_matrix, ring_index
from jaxadv.attacks.sparse_rs import alpha_schedule
from jaxadv.threats import Patch

SHAPE = (4, 4, 3)


def _batch(n=6, seed=1, lo=0.3, hi=0.7, shape=SHAPE):
    return jax.random.uniform(jax.random.key(seed), (n, *shape), jnp.float32, lo, hi)


# ----------------------------------------------------------- a model with no usable gradient
@jax.custom_vjp
def _no_grad(x, p):
    return _linear_apply(p, x)


def _fwd(x, p):
    return _linear_apply(p, x), None


def _bwd(_, g):
    raise RuntimeError("a score-based attack asked for the model's gradient")


_no_grad.defvjp(_fwd, _bwd)
_ROWS: list[int] = []


def _counting_apply(p, x):
    """Linear logits whose gradient raises; every executed call records how many images it saw."""
    jax.debug.callback(lambda n: _ROWS.append(int(n)), jnp.asarray(x.shape[0], jnp.int32))
    return _no_grad(x, p)


def _counting_model(num_classes=2, seed=0):
    return jaxadv.from_apply(_counting_apply, linear_model(num_classes, SHAPE, seed=seed).params)


ATTACKS = {
    "SimBA-pixel": lambda: jaxadv.SimBA(
        threat=jaxadv.L2Ball(eps=jnp.inf), num_queries=60, basis="pixel", step_size=0.05
    ),
    "SimBA-DCT": lambda: jaxadv.SimBA(
        threat=jaxadv.L2Ball(eps=jnp.inf), num_queries=60, step_size=0.1
    ),
    "SimBA-Linf": lambda: jaxadv.SimBA(threat=jaxadv.LinfBall(eps=0.2), num_queries=45),
    "SparseRS-L0": lambda: jaxadv.SparseRS(threat=jaxadv.L0Pixels(eps=2), num_queries=60),
    "SparseRS-patch": lambda: jaxadv.SparseRS(threat=Patch(eps=2), num_queries=60),
}


def test_counting_model_gradient_raises():
    """The control: a gradient attack on this model fails, so the tests below can fail too."""
    with pytest.raises(RuntimeError, match="gradient"):
        jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1), num_steps=2)(
            jax.random.key(0), _counting_model(), _batch(2), jnp.zeros((2,), jnp.int32)
        )


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize(
    "targeted", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["untargeted", "targeted"]
)
def test_no_gradient_and_exact_queries(name, targeted):
    """On a model whose gradient raises: a lone example is charged exactly the images the model
    saw (clean check, tries, final re-evaluation); in a batch it is charged the same; a clean
    error costs the clean check and the final check only and comes back unchanged; success is
    the model's verdict on ``adv``."""
    model = _counting_model(3, seed=2)
    atk = ATTACKS[name]()
    x = _batch(4)
    pred = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    y = pred.at[0].set((pred[0] + 1) % 3)  # example 0 is a clean error
    target = (pred + 2) % 3 if targeted else None
    key = jax.random.key(4)
    singles = {}
    for i in (1, 2, 3):
        _ROWS.clear()
        t = None if target is None else target[i : i + 1]
        r = atk(key, model, x[i : i + 1], y[i : i + 1], target=t, index_offset=i, validate=False)
        jax.block_until_ready(r)
        assert int(r.queries[0]) == sum(_ROWS), (name, i, int(r.queries[0]), sum(_ROWS))
        singles[i] = r
    res = atk(key, model, x, y, target=target, validate=False)
    if not targeted:
        assert int(res.queries[0]) == 2 and bool(res.success[0])
        np.testing.assert_array_equal(res.adv[0], x[0])
    for i, r in singles.items():
        assert int(res.queries[i]) == int(r.queries[0]), (name, i)
        np.testing.assert_allclose(res.adv[i], r.adv[0], atol=1e-6)
    pred_adv = jnp.argmax(model(res.adv), axis=1)
    rule = pred_adv == target if targeted else pred_adv != y
    np.testing.assert_array_equal(res.success, rule)
    assert bool(jnp.all(atk.threat.contains(x, res.adv)))
    # the counts vary: some examples finish early, none exceeds the budget (+ the final check)
    q = np.asarray(res.queries)
    assert q.max() <= atk.num_queries + 1
    assert res.success[1:].any(), "the configuration is too weak to test finishing early"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_failing_example_spends_exactly_the_budget(name):
    """A budget too small to matter: every example spends ``num_queries``, plus the final check."""
    model = linear_model(2, SHAPE)
    x = _batch(3)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    atk = ATTACKS[name]()
    atk = atk.with_eps(0.0 if atk.threat.p == 0 else 1e-5)
    res = atk(jax.random.key(0), model, x, y)
    assert not bool(jnp.any(res.success))
    np.testing.assert_array_equal(res.queries, atk.num_queries + 1)


# ------------------------------------------------------------------------------------ SimBA
def _softmax(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def _simba_reference(w, b, x, y, order, basis_vectors, step, budget, target=None):
    """Algorithm 1 of Guo et al. (2019) for one example, in float64 NumPy: directions in
    ``order`` (cycled); +step then -step; keep the first that lowers p_y (raises p_target) or breaks;
    unconstrained except the [0, 1] box. Returns the final point and the queries spent."""
    lbl = y if target is None else target
    sign = -1.0 if target is None else 1.0

    def query(z):
        p = _softmax(z.reshape(-1) @ w + b)
        adv = p.argmax() != y if target is None else p.argmax() == target
        return sign * p[lbl], adv

    cur = x.astype(np.float64)
    sc, done = query(cur)
    q = 1
    for n in range(budget):  # after the last direction the order starts again
        d = order[n % len(order)]
        if done or q >= budget:
            break
        for j, alpha in enumerate((step, -step)):
            if j == 1 and q + 1 > budget:
                break
            cand = np.clip(cur + alpha * basis_vectors[d].reshape(x.shape), 0.0, 1.0)
            s, adv = query(cand)
            q += 1
            if adv or s > sc:
                cur, sc, done = cand, s, adv
                break
    return cur, q


@pytest.mark.parametrize("basis", ["pixel", "dct"])
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_simba_matches_numpy_algorithm_1(basis, targeted):
    """Same directions (the attack's own per-example order) in a float64 transcription of the
    paper's Algorithm 1: the same final image and the same query count per example."""
    model = linear_model(3, SHAPE, seed=3)
    w, b = (np.asarray(model.params[k], np.float64) for k in ("w", "b"))
    x = _batch(5, lo=0.0, hi=1.0)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    target = (y + 1) % 3 if targeted else None
    atk = jaxadv.SimBA(
        threat=jaxadv.L2Ball(eps=jnp.inf), num_queries=50, basis=basis, step_size=0.25
    )
    keys = example_keys(jax.random.key(7), 5)
    res = jax.jit(lambda k: atk.run(k, model, x, y, target=target))(keys)
    order = np.asarray(atk.permutation(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys), SHAPE))
    d = int(np.prod(SHAPE))
    if basis == "pixel":
        vecs = np.eye(d)
    else:
        h, wd, c = SHAPE
        ch, cw = dct_matrix(h).astype(np.float64), dct_matrix(wd).astype(np.float64)
        vecs = np.einsum("ui,vj,kl->uvkijl", ch, cw, np.eye(c)).reshape(d, d)
    for i in range(5):
        t = None if target is None else int(target[i])
        ref, q = _simba_reference(w, b, np.asarray(x[i]), int(y[i]), order[i], vecs, 0.25, 50, t)
        np.testing.assert_allclose(np.asarray(res.adv[i]), ref, atol=1e-5)
        assert int(res.queries[i]) == q + 1, (i, int(res.queries[i]), q)


def test_simba_moves_on_a_saturated_confident_model():
    """A logit gap of 60: in float32 p_y is exactly 1.0 at x and at every step, so a score on
    probabilities (or log-probabilities) sees no improvement and never moves; log-odds still rank
    the steps."""
    model = linear_model(2, SHAPE, seed=3)
    w = np.asarray(model.params["w"])
    b = np.array([60.0, 0.0], np.float32)
    model = jaxadv.from_apply(_linear_apply, {"w": jnp.asarray(w), "b": jnp.asarray(b)})
    x = _batch(4)
    y = jnp.zeros((4,), jnp.int32)
    assert np.all(np.asarray(jax.nn.softmax(model(x))[:, 0]) == 1.0)  # saturated, as claimed
    atk = jaxadv.SimBA(threat=jaxadv.L2Ball(eps=jnp.inf), num_queries=40, basis="pixel")
    res = atk(jax.random.key(0), model, x, y)
    m0 = np.asarray(jaxadv.losses.margin(model(x), y))
    assert np.all(np.asarray(res.loss) > m0)  # the margin towards success grew on every image


def test_dct_basis_is_scipy_orthonormal_dct():
    from scipy.fft import dct

    for n in (1, 4, 7, 28):
        m = dct_matrix(n)
        np.testing.assert_allclose(m, dct(np.eye(n), norm="ortho", axis=0), atol=1e-6)
        np.testing.assert_allclose(m @ m.T, np.eye(n), atol=1e-5)
    # the attack's directions are unit vectors, mutually orthogonal
    atk = jaxadv.SimBA(threat=jaxadv.L2Ball(eps=1.0))
    x = jnp.zeros((48, *SHAPE))
    q = np.asarray(atk.directions(x, jnp.arange(48, dtype=jnp.int32))).reshape(48, -1)
    np.testing.assert_allclose(q @ q.T, np.eye(48), atol=1e-5)


def test_strided_order_visits_low_frequencies_first():
    """Ring 0 is the freq_dims x freq_dims block; then rings of width stride; every coordinate
    exactly once, groups in order."""
    ring = ring_index((8, 8, 3), "strided", 2, 3)
    u, v = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    expect = np.select([np.maximum(u, v) < 2, np.maximum(u, v) < 5], [0, 1], 2)
    np.testing.assert_array_equal(ring.reshape(8, 8, 3), np.repeat(expect[..., None], 3, 2))
    atk = jaxadv.SimBA(threat=jaxadv.L2Ball(eps=1.0), freq_dims=2, stride=3)
    perm = np.asarray(atk.permutation(example_keys(jax.random.key(0), 3), (8, 8, 3)))
    for p in perm:
        np.testing.assert_array_equal(np.sort(p), np.arange(192))
        assert np.all(np.diff(ring[p]) >= 0)
    assert not np.array_equal(perm[0], perm[1])  # per-example order
    assert np.all(ring_index((8, 8, 3), "random", 2, 3) == 0)


def test_simba_settings_refused():
    with pytest.raises(ValueError, match="basis"):
        jaxadv.SimBA(threat=jaxadv.L2Ball(eps=1.0), basis="wavelet")
    with pytest.raises(ValueError, match="order"):
        jaxadv.SimBA(threat=jaxadv.L2Ball(eps=1.0), order="diag")
    with pytest.raises(ValueError, match="step_size"):
        jaxadv.SimBA(threat=jaxadv.L2Ball(eps=1.0), step_size=0.0)
    with pytest.raises(TypeError, match="L0Pixels"):
        jaxadv.SimBA(threat=jaxadv.L0Pixels(eps=1.0))


# -------------------------------------------------------------------------------- Sparse-RS
def test_alpha_schedule_hand_computed():
    a0 = jnp.asarray(0.8, jnp.float32)

    def at(it, n, patches):
        return float(alpha_schedule(jnp.asarray(it, jnp.int32), n, a0, patches))

    # N = 10000: the rescaled iteration is the iteration itself
    for it, div in [(0, 1), (1, 2), (50, 2), (51, 4), (200, 4), (201, 5), (501, 6), (1001, 8),
                    (2001, 10), (4001, 12), (6001, 15), (8000, 15), (8001, 20), (9999, 20)]:  # fmt: skip
        assert at(it, 10000, False) == pytest.approx(0.8 / div), (it, div)
    for it, div in [(0, 1), (10, 1), (11, 2), (51, 4), (201, 8), (501, 16), (1001, 32),
                    (2001, 32), (4001, 64), (6001, 64), (8001, 128)]:  # fmt: skip
        assert at(it, 10000, True) == pytest.approx(0.8 / div), (it, div)
    # N = 300: floor(10000 it / 300) > 50 first at it = 2 (66), > 200 at it = 7 (233)
    assert at(1, 300, False) == pytest.approx(0.4)
    assert at(2, 300, False) == pytest.approx(0.2)
    assert at(6, 300, False) == pytest.approx(0.2)
    assert at(7, 300, False) == pytest.approx(0.16)


def _bbox_side(delta):
    ch = np.abs(delta).max(-1) > 0
    if not ch.any():
        return 0
    r, c = np.nonzero(ch)
    return max(r.max() - r.min() + 1, c.max() - c.min() + 1)


@pytest.mark.parametrize("k", [pytest.param(1, marks=pytest.mark.slow), 3, pytest.param(7, marks=pytest.mark.slow)])  # fmt: skip
def test_sparse_rs_l0_changes_at_most_k_pixels(k):
    """At most k spatial pixels change (counted here, not by the threat), each to a corner of the
    colour cube; a success is the model's verdict."""
    model = linear_model(3, SHAPE, seed=1)
    x = _batch(8)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    res = jaxadv.SparseRS(threat=jaxadv.L0Pixels(eps=k), num_queries=80)(
        jax.random.key(1), model, x, y
    )
    delta = np.asarray(res.adv - x)
    changed = np.abs(delta).max(-1) > 0
    assert changed.reshape(8, -1).sum(1).max() <= k
    adv = np.asarray(res.adv)
    assert np.all(np.isin(adv[changed], [0.0, 1.0]))
    np.testing.assert_array_equal(res.success, np.asarray(jnp.argmax(model(res.adv), 1)) != y)
    assert res.success.any()


@pytest.mark.parametrize("s", [pytest.param(1, marks=pytest.mark.slow), 2, pytest.param(3, marks=pytest.mark.slow)])  # fmt: skip
def test_sparse_rs_patch_changes_one_square(s):
    """Every changed pixel lies in one s x s square (bounding box counted here)."""
    model = linear_model(3, (6, 6, 3), seed=1)
    x = _batch(8, shape=(6, 6, 3))
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    res = jaxadv.SparseRS(threat=Patch(eps=s), num_queries=80)(jax.random.key(2), model, x, y)
    delta = np.asarray(res.adv - x)
    for i in range(8):
        assert _bbox_side(delta[i]) <= s
    np.testing.assert_array_equal(res.success, np.asarray(jnp.argmax(model(res.adv), 1)) != y)
    assert res.success.any()


@pytest.mark.slow
def test_sparse_rs_breaks_a_one_pixel_model_and_targets():
    """Class 1 needs pixel (1, 1) bright in channel 0 (its weight decays by half per pixel of
    distance, so a patch nearby already helps): one pixel breaks it (L0) and so does a 1x1 patch;
    targeted runs reach the target."""
    i, j = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    w1 = np.zeros(SHAPE, np.float32)
    w1[..., 0] = 10.0 * 0.5 ** (np.abs(i - 1) + np.abs(j - 1))
    w = jnp.stack([jnp.zeros(48), jnp.asarray(w1.reshape(-1))], axis=1)
    bias = jnp.asarray([[0.0, 10.125 + 4.0]])  # clean logit 1 = 0.2 * sum(w1) - bias = -4

    model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w - bias, w)
    x = jnp.full((3, *SHAPE), 0.2)
    y = jnp.zeros((3,), jnp.int32)
    for threat in (jaxadv.L0Pixels(eps=1), Patch(eps=1)):
        atk = jaxadv.SparseRS(threat=threat, num_queries=400)
        res = atk(jax.random.key(0), model, x, y)
        assert bool(jnp.all(res.success)) and float(jnp.max(res.norm)) == 1.0, threat
        np.testing.assert_array_equal(res.adv[:, 1, 1, 0], 1.0)
        tgt = atk(jax.random.key(0), model, x, y, target=jnp.ones((3,), jnp.int32))
        assert bool(jnp.all(tgt.success))
        np.testing.assert_array_equal(jnp.argmax(model(tgt.adv), 1), 1)


def test_patch_threat_norm_and_projection():
    x = jnp.zeros((2, 5, 5, 1))
    z = x.at[0, 0, 0].set(1.0).at[0, 1, 1].set(1.0).at[0, 4, 4].set(1.0)
    z = z.at[1, 2, 2].set(0.5).at[1, 3, 4].set(-2.0)  # outside the box: clipped to 0 = no change
    t = Patch(eps=2)
    np.testing.assert_array_equal(t.norm(jnp.clip(z, 0, 1) - x), [5.0, 1.0])
    p = t.project(x, z)
    np.testing.assert_array_equal(p[0, :, :, 0], np.asarray(z[0, :, :, 0]) * (np.arange(5) < 2)[:, None] * (np.arange(5) < 2)[None, :])  # fmt: skip
    np.testing.assert_array_equal(p[1], jnp.clip(z[1], 0, 1))
    np.testing.assert_array_equal(t.project(x, p), p)  # idempotent
    assert bool(jnp.all(t.contains(x, p)))
    np.testing.assert_array_equal(Patch(eps=0).project(x, z), x)
    np.testing.assert_array_equal(Patch(eps=jnp.inf).project(x, z), jnp.clip(z, 0, 1))
    rng = np.random.default_rng(0)
    for _ in range(5):  # random changes: the projection lands in the set and is idempotent
        zz = jnp.asarray(rng.uniform(0, 1, (2, 5, 5, 1)) * (rng.uniform(size=(2, 5, 5, 1)) < 0.3))
        zz = zz.astype(jnp.float32)
        for s in (1, 3):
            pp = Patch(eps=s).project(x, zz)
            assert max(_bbox_side(np.asarray(pp[i] - x[i])) for i in range(2)) <= s
            np.testing.assert_array_equal(Patch(eps=s).project(x, pp), pp)


@pytest.mark.slow
def test_sparse_rs_budget_sweep_does_not_retrace():
    """k and s are leaves: vmap over a grid of budgets equals a loop and compiles once."""
    model = linear_model(3, SHAPE, seed=1)
    x = _batch(4)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    for threat in (jaxadv.L0Pixels(eps=1), Patch(eps=1)):
        atk = jaxadv.SparseRS(threat=threat, num_queries=30)
        curve = jaxadv.sweep_eps(atk, [1, 2, 3], key=jax.random.key(0), model=model, x=x, y=y)
        for j, e in enumerate([1, 2, 3]):
            r = atk.with_eps(e)(jax.random.key(0), model, x, y)
            np.testing.assert_array_equal(curve.result.success[j], r.success)
            np.testing.assert_array_equal(curve.result.queries[j], r.queries)
            np.testing.assert_allclose(curve.result.adv[j], r.adv, atol=1e-6)


def test_sparse_rs_settings_refused():
    with pytest.raises(ValueError, match="alpha_init"):
        jaxadv.SparseRS(threat=jaxadv.L0Pixels(eps=1), alpha_init=0.0)
    with pytest.raises(ValueError, match="num_queries"):
        jaxadv.SparseRS(threat=jaxadv.L0Pixels(eps=1), num_queries=1)
    with pytest.raises(TypeError, match="LinfBall"):
        jaxadv.SparseRS(threat=jaxadv.LinfBall(eps=0.1))
    assert jaxadv.SparseRS(threat=Patch(eps=3)).alpha_init == pytest.approx(0.4)
    assert jaxadv.SparseRS(threat=jaxadv.L0Pixels(eps=3)).alpha_init == pytest.approx(0.3)


# ------------------------------------------------------------------------------------- CLI
def test_cli_names_and_budget_option():
    from jaxadv import vocab

    names = vocab.attack_names()
    assert "simba" in names and "sparsers" in names
    for name in ("simba", "sparsers"):
        with pytest.raises(vocab.SpecError, match="num_queries"):
            vocab.make_attack(name, norm="l2" if name == "simba" else "l0", num_steps=10)
    atk = vocab.make_attack("sparsers", norm="l0", eps_max=3, options={"num_queries": 50})
    assert isinstance(atk, jaxadv.SparseRS) and atk.num_queries == 50
    atk = vocab.make_attack("simba", norm="l2", options={"num_queries": 50, "basis": "pixel"})
    assert isinstance(atk, jaxadv.SimBA) and atk.basis == "pixel"


# ----------------------------------------------------------------- jit, eager, sharding
CONTRACT = {
    "SimBA-DCT": lambda: jaxadv.SimBA(threat=jaxadv.L2Ball(eps=1.0), num_queries=12),
    "SparseRS-L0": lambda: jaxadv.SparseRS(threat=jaxadv.L0Pixels(eps=2), num_queries=12),
    "SparseRS-patch": lambda: jaxadv.SparseRS(threat=Patch(eps=2), num_queries=12),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_jit_equals_eager_and_sharded_equals_unsharded(name):
    """The jitted run equals the eager one (``jax.disable_jit``), and 8 devices with a batch
    that does not divide evenly equal one device, targeted too."""
    from jaxadv.sharding import attack_sharded

    model = linear_model(3, SHAPE, seed=1)
    atk = CONTRACT[name]()
    x = _batch(3, lo=0.0, hi=1.0)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    keys = example_keys(jax.random.key(0), 3)
    jitted = jax.jit(lambda k: atk.run(k, model, x, y))(keys)
    with jax.disable_jit():
        eager = atk.run(keys, model, x, y)
    np.testing.assert_allclose(jitted.adv, eager.adv, atol=1e-5)
    np.testing.assert_array_equal(jitted.success, eager.success)
    np.testing.assert_array_equal(jitted.queries, eager.queries)
    xs = _batch(13, lo=0.0, hi=1.0)
    ys = jnp.argmax(model(xs), axis=1).astype(jnp.int32)
    for target in (None, (ys + 1) % 3):
        ref = atk(jax.random.key(0), model, xs, ys, target=target)
        sh = attack_sharded(atk, jax.random.key(0), model, xs, ys, target=target)
        np.testing.assert_allclose(sh.adv, ref.adv, atol=1e-6)
        np.testing.assert_array_equal(sh.success, ref.success)
        np.testing.assert_array_equal(sh.queries, ref.queries)


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--attack", "simba", "--num-steps", "5"], "its budget is num_queries"),
        (["--attack", "simba", "--norm", "l0"], "supports norm l2, linf"),
        (["--attack", "sparsers", "--norm", "linf"], "supports norm l0, patch"),
        pytest.param(["--attack", "simba", "--norm", "l2", "--option", "num_queries=6"], None, marks=pytest.mark.slow),
        pytest.param(["--attack", "sparsers", "--norm", "l0", "--eps", "0,2", "--option", "num_queries=6"], None, marks=pytest.mark.slow),
        (["--attack", "sparsers", "--norm", "patch", "--eps", "0,2px", "--option", "num_queries=6"], None),
    ],
)  # fmt: skip
def test_cli_runs_or_refuses(argv, msg, tmp_path, capsys):
    import json

    from jaxadv.cli import main

    base = ["attack", "--num-examples", "3", "--quiet", "--out", str(tmp_path)]
    if "--eps" not in argv:
        base += ["--eps", "0,8"]
    rc = main([*base, *argv])
    if msg is not None:
        assert rc == 2 and msg in capsys.readouterr().err
        return
    assert rc == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert len(rows) == 2 and rows[0]["robust_accuracy"] >= rows[1]["robust_accuracy"]


def test_sweep_config_names_and_pixel_budgets():
    from jaxadv import sweep

    grid = {
        "name": "g",
        "seeds": [0],
        "eps": [0, 8],
        "models": ["small_cnn_clean"],
        "datasets": [{"data": "default", "num_examples": 4}],
        "attacks": [
            {"attack": "simba", "norm": "l2", "options": {"num_queries": 10}},
            {"attack": "sparsers", "norm": "patch", "eps": [2, 4], "options": {"num_queries": 10}},
            {"attack": "sparsers", "norm": "l0", "eps": [1, 3]},
        ],
    }
    a = sweep.load_config(grid).data["attacks"]
    assert [x["label"] for x in a] == ["simba-l2", "sparsers-patch", "sparsers-l0"]
    assert a[1]["eps"] == [2.0, 4.0] and a[2]["eps"] == [1.0, 3.0]  # pixels, not 1/255
    with pytest.raises(sweep.ConfigError, match="num_queries"):
        sweep.load_config(
            {**grid, "num_steps": 2, "attacks": [{**grid["attacks"][0], "num_steps": 3}]}
        )
