"""AutoAttack: the versions' stages and settings (a hand-written table, and the reference package
when installed), the stage rule on a counting model (which points each stage sees, checked by
hand and against the reference's own loop), clean-error handling, the flags, and 'rand'."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv._struct import pytree_dataclass, replace, static
from jaxadv.attacks.autoattack import (
    EOTLogits,
    RandomizedModel,
    build_stages,
    reference_settings,
)
from jaxadv.attacks.base import AbstractAttack, example_keys
from jaxadv.result import finalize, judging_view

HAVE_REF = (
    importlib.util.find_spec("torch") is not None
    and importlib.util.find_spec("pyautoattack") is not None
)
NO_REF = "needs torch and pyautoattack (the official AutoAttack code)"
THREATS = {"Linf": jaxadv.LinfBall, "L2": jaxadv.L2Ball, "L1": jaxadv.L1Ball}


# ------------------------------------------------------------------------- versions
def _describe(atk):
    """(class, steps or queries, restarts, targets, loss) of one of our stages."""
    name = type(atk).__name__
    if name == "Square":
        return ("Square", atk.num_queries, 1, None, None)
    targets = getattr(atk, "num_target_classes", None)
    return (name, atk.num_steps, atk.num_restarts, targets, getattr(atk, "loss", None))


# Written from the reference's _set_version by hand (pyautoattack 0.2.0 / fra31/auto-attack).
EXPECTED = {
    ("standard", "Linf"): [
        ("APGD", 100, 1, None, "ce"),
        ("APGDT", 100, 1, 9, None),
        ("FAB", 100, 1, 9, None),
        ("Square", 5000, 1, None, None),
    ],
    ("standard", "L1"): [  # no Square under L1 here (ours has no L1 version)
        ("APGD", 100, 5, None, "ce"),
        ("APGDT", 100, 1, 5, None),
        ("FAB", 100, 1, 9, None),
    ],
    ("plus", "Linf"): [
        ("APGD", 100, 5, None, "ce"),
        ("APGD", 100, 5, None, "dlr"),
        ("FAB", 100, 5, None, None),
        ("Square", 5000, 1, None, None),
        ("APGDT", 100, 1, 9, None),
        ("FAB", 100, 1, 9, None),
    ],
    ("rand", "Linf"): [("APGD", 100, 1, None, "ce"), ("APGD", 100, 1, None, "dlr")],
}
EXPECTED[("standard", "L2")] = EXPECTED[("standard", "Linf")]
EXPECTED[("plus", "L2")] = EXPECTED[("plus", "Linf")]


@pytest.mark.parametrize(("version", "norm"), sorted(EXPECTED))
def test_versions_build_the_reference_stages(version, norm):
    aa = jaxadv.AutoAttack.standard(THREATS[norm](eps=0.1), version=version)
    assert [_describe(a) for a in aa.attacks] == EXPECTED[(version, norm)]
    assert aa.eot_draws == (20 if version == "rand" else 1)
    fab = [a for a in aa.attacks if isinstance(a, jaxadv.FAB)]
    # ... and no overshoot: the official FAB has none (FAB's own default is 1e-3)
    assert all((f.alpha_max, f.eta, f.beta, f.overshoot) == (0.1, 1.05, 0.9, 0.0) for f in fab)
    sq = [a for a in aa.attacks if isinstance(a, jaxadv.Square)]
    assert all(float(s.p_init) == pytest.approx(0.8) for s in sq)


def test_steps_scale_every_iterative_stage_and_square():
    aa = jaxadv.AutoAttack.standard(jaxadv.LinfBall(eps=0.1), num_steps=10)
    assert [_describe(a)[1] for a in aa.attacks] == [10, 10, 10, 500]
    aa = jaxadv.AutoAttack.standard(jaxadv.LinfBall(eps=0.1), num_steps=10, square_queries=7)
    assert aa.attacks[-1].num_queries == 7


def test_custom_takes_names_and_attacks_and_keeps_the_shared_fab_quirk():
    threat = jaxadv.L2Ball(eps=0.5)
    fmn = jaxadv.FMN(threat=threat, num_steps=4)
    aa = jaxadv.AutoAttack.standard(
        threat, version="custom", attacks=("apgd-ce", fmn, "fab-t", "fab"), num_steps=4
    )
    assert aa.names == ("apgd-ce", "FMN", "fab-t", "fab")
    assert aa.attacks[1] is fmn
    # the reference's constructor defaults: APGD 5 restarts; FAB after FAB-T inherits 1 restart
    assert _describe(aa.attacks[0]) == ("APGD", 4, 5, None, "ce")
    assert _describe(aa.attacks[3]) == ("FAB", 4, 1, None, None)
    assert _describe(build_stages(threat, "custom", attacks=("fab",))[0][0])[2] == 5


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"version": "fast"}, "version must be one of"),
        ({"version": "custom"}, "needs attacks"),
        ({"version": "standard", "attacks": ("apgd-ce",)}, "only for version='custom'"),
        ({"version": "custom", "attacks": ("pgd",)}, "unknown stage"),
    ],
)
def test_bad_versions_raise(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        jaxadv.AutoAttack.standard(jaxadv.LinfBall(eps=0.1), **kwargs)


@pytest.mark.skipif(not HAVE_REF, reason=NO_REF)
@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
@pytest.mark.parametrize("version", ["standard", "plus", "rand"])
def test_reference_settings_match_the_installed_reference(version, norm):
    import torch
    from pyautoattack import AutoAttack as Reference

    ref = Reference(torch.nn.Flatten(), norm=norm, eps=0.1, version=version)
    stages, s = reference_settings(version, norm)
    assert list(stages) == ref.attacks_to_run
    objects = {"apgd": ref.apgd, "apgd_targeted": ref.apgd_targeted, "fab": ref.fab}
    objects["square"] = ref.square
    for obj, settings in s.items():
        for field, value in settings.items():
            attr = "thr_decr" if field == "rho" else field  # the reference stores rho so
            assert getattr(objects[obj], attr) == value, (obj, field)


# ------------------------------------------------------------------------- counting model
@pytree_dataclass
class Scripted(AbstractAttack):
    """A stage that breaks exactly the examples whose code pixel names it, and charges
    ``10**stage`` queries to every example it sees (so the total reveals which stages saw it)."""

    threat: Any
    stage: int = static(default=0)

    def run(self, keys, model, x, y, *, target=None):
        hit = jnp.abs(x[:, 0, 0, 1] - (self.stage / 10 + 0.05)) < 0.01
        adv = x.at[:, 0, 0, 0].set(jnp.where(hit, 1.0, x[:, 0, 0, 0]))
        q = jnp.full((x.shape[0],), 10**self.stage - 1, jnp.int32)
        return finalize(self.threat, model, x, adv, y, queries=q)


def _flag_model():
    """Class 1 wins exactly when pixel (0, 0, 0) is above 0.5."""
    return jaxadv.from_apply(
        lambda w, x: jnp.stack([w * (0.5 - x[:, 0, 0, 0]), w * (x[:, 0, 0, 0] - 0.5)], axis=1),
        jnp.float32(1.0),
    )


def _counting_batch(num_stages, b=14, seed=0):
    rng = np.random.default_rng(seed)
    code = rng.integers(0, num_stages + 1, b)  # num_stages: no stage breaks it
    clean_wrong = rng.random(b) < 0.25
    x = np.full((b, 2, 2, 3), 0.2, np.float32)
    x[:, 0, 0, 0] = np.where(clean_wrong, 0.9, 0.1)
    x[:, 0, 0, 1] = code / 10 + 0.05
    x[:, 0, 0, 2] = np.arange(b) / 100  # the example's id, for the reference's loop
    return x, np.zeros(b, np.int32), code, clean_wrong


def _seen_by_rule(code, clean_wrong, num_stages):
    """The reference's rule: stage s sees the clean-correct points no earlier stage broke."""
    return np.stack([~clean_wrong & ~(code < s) for s in range(num_stages)], axis=1)


NAMES = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
}


def _scripted_autoattack(names):
    threat = jaxadv.LinfBall(eps=1.0)
    stages = tuple(Scripted(threat=threat, stage=s) for s in range(len(names)))
    return jaxadv.AutoAttack(threat=threat, attacks=stages, names=names, version="custom")


@pytest.mark.parametrize("version", ["standard", "plus"])
def test_each_stage_sees_only_the_points_still_robust(version):
    names = NAMES[version]
    n = len(names)
    x, y, code, clean_wrong = _counting_batch(n)
    aa = _scripted_autoattack(names)
    model = _flag_model()
    seen = _seen_by_rule(code, clean_wrong, n)
    expected_q = 2 + seen.astype(np.int64) @ (10 ** np.arange(n))
    broken = clean_wrong[:, None] | (code[:, None] <= np.arange(n)[None])
    for res in (
        aa(jax.random.key(0), model, x, y),  # compacted: later stages on robust points only
        aa.run(example_keys(jax.random.key(0), x.shape[0]), model, jnp.asarray(x), y),
    ):
        np.testing.assert_array_equal(res.queries, expected_q)
        np.testing.assert_array_equal(res.info["stage_success"], broken)
        np.testing.assert_array_equal(res.success, clean_wrong | (code < n))
        # clean errors never attacked: returned as they are
        np.testing.assert_array_equal(np.asarray(res.adv)[clean_wrong], x[clean_wrong])


@pytest.mark.skipif(not HAVE_REF, reason=NO_REF)
@pytest.mark.parametrize("version", ["standard", "plus"])
def test_stage_rule_matches_the_reference_loop(version):
    """The official run_standard_evaluation with its attacks replaced by the scripted stages:
    it shows each stage the same points as ours (identified by their id pixel)."""
    import torch
    from pyautoattack import AutoAttack as Reference

    names = NAMES[version]
    x, y, code, clean_wrong = _counting_batch(len(names), b=20, seed=1)

    def torch_model(xt):
        f = xt[:, 0, 0, 0]
        return torch.stack([0.5 - f, f - 0.5], dim=1)

    ref = Reference(torch_model, norm="Linf", eps=1.0, version=version)
    ref.logger.setLevel(logging.ERROR)
    seen_ref = np.zeros((x.shape[0], len(names)), bool)

    def scripted(get_name):
        def perturb(xt, yt):
            s = names.index(get_name())
            ids = np.rint(xt[:, 2, 0, 0].numpy() * 100).astype(int)
            seen_ref[ids, s] = True
            hit = (xt[:, 1, 0, 0] - (s / 10 + 0.05)).abs() < 0.01
            adv = xt.clone()
            adv[:, 0, 0, 0] = torch.where(hit, torch.ones_like(adv[:, 0, 0, 0]), adv[:, 0, 0, 0])
            return adv

        return perturb

    ref.apgd.perturb = scripted(lambda: "apgd-" + ref.apgd.loss)
    ref.apgd_targeted.perturb = scripted(lambda: "apgd-t")
    ref.fab.perturb = scripted(lambda: "fab-t" if ref.fab.targeted else "fab")
    ref.square.perturb = scripted(lambda: "square")
    xt = torch.from_numpy(x.copy()).permute(0, 3, 1, 2).contiguous()
    ref.run_standard_evaluation(xt, torch.from_numpy(y.astype(np.int64)), batch_size=7)

    res = _scripted_autoattack(names)(jax.random.key(0), _flag_model(), x, y)
    ours = np.asarray(res.queries) - 2
    seen_ours = (ours[:, None] // (10 ** np.arange(len(names)))[None] % 10).astype(bool)
    np.testing.assert_array_equal(seen_ours, seen_ref)
    np.testing.assert_array_equal(seen_ref, _seen_by_rule(code, clean_wrong, len(names)))


# ------------------------------------------------------------------------- flags
def _flags(res):
    return {k: bool(np.any(np.asarray(v))) for k, v in res.info["flags"].items()}


def test_flags_stay_down_on_a_plain_model(caplog):
    x, y, _, _ = _counting_batch(2)
    aa = _scripted_autoattack(("apgd-ce", "fab"))  # 2 classes are enough for these
    with caplog.at_level(logging.WARNING, logger="jaxadv.attacks.autoattack"):
        res = aa(jax.random.key(0), _flag_model(), x, y)
    assert not any(_flags(res).values())
    assert "flag" not in caplog.text


def test_softmax_zero_gradient_square_and_class_count_flags(caplog):
    names = ("apgd-ce", "square")
    x, y, code, clean_wrong = _counting_batch(2, b=14)
    x[:, 0, 0, 1] = np.where(clean_wrong, 0.95, 0.15)  # only the 'square' stage breaks points
    # probabilities, and zero input gradient wherever the flag pixel is saturated by the clip
    model = jaxadv.from_apply(
        lambda w, z: jax.nn.softmax(
            w
            * jnp.stack(
                [
                    0.5 - jnp.clip(z[:, 0, 0, 0], 0.15, 1.0),
                    jnp.clip(z[:, 0, 0, 0], 0.15, 1.0) - 0.5,
                ],
                1,
            )
        ),
        jnp.float32(1.0),
    )
    aa = _scripted_autoattack(names)
    with caplog.at_level(logging.WARNING, logger="jaxadv.attacks.autoattack"):
        res = aa(jax.random.key(0), model, x, y)
    flags = _flags(res)
    assert flags["probabilities"] and flags["square_stronger"] and flags["zero_gradient"]
    assert not flags["too_few_classes"] and not flags["randomized"]
    for k in ("probabilities", "square_stronger", "zero_gradient"):
        assert caplog.text.count(f"flag {k}") == 1  # logged once
    # the pure path computes the same flags (all but the host-side randomness check)
    pure = aa.run(example_keys(jax.random.key(0), x.shape[0]), model, jnp.asarray(x), y)
    for k, v in pure.info["flags"].items():
        np.testing.assert_array_equal(v, res.info["flags"][k])
    # 2 classes: APGD-T / DLR impossible in the reference's terms
    r2 = _scripted_autoattack(("apgd-ce", "apgd-t"))(jax.random.key(0), _flag_model(), x, y)
    assert _flags(r2)["too_few_classes"]


# ------------------------------------------------------------------------- rand
def _noisy_model(scale):
    def apply(w, z, keys):
        noise = jax.vmap(lambda k: jax.random.normal(k, (2,)))(keys)
        clean = jnp.stack([w * (0.5 - z[:, 0, 0, 0]), w * (z[:, 0, 0, 0] - 0.5)], axis=1)
        return clean + scale * noise

    return RandomizedModel(apply=apply, params=jnp.float32(1.0), key=jax.random.key(7))


def test_randomized_model_and_eot():
    model = _noisy_model(0.05)
    x, y, _, _ = _counting_batch(1, b=6)
    z = jnp.asarray(x)
    # a plain call is one draw (pure: the same input, the same draw); EOT averages 20 draws
    np.testing.assert_array_equal(model(z), model(z))
    assert not np.allclose(model(z), model(z + 1e-3), atol=1e-4)
    eot = EOTLogits(model=model, num_draws=20)
    clean = _flag_model()(z)
    assert float(jnp.max(jnp.abs(eot(z) - clean))) < float(jnp.max(jnp.abs(model(z) - clean)))
    other = _scripted_autoattack(("apgd-ce", "fab"))  # any version but 'rand' runs the check
    assert _flags(other(jax.random.key(0), model, x, y))["randomized"]


def test_a_randomised_model_is_judged_on_a_draw_the_attack_never_queried():
    """Logits that are pure noise: under any one draw success is a coin flip. Judged on the draws
    it queried, a random search keeps the first lucky draw and reports nearly every example
    broken; judged on a fresh draw (as a framework with fresh randomness per forward pass would),
    about half."""

    def apply(w, z, keys):
        noise = jax.vmap(lambda k: jax.random.normal(k, (2,)))(keys)
        return w * noise + 0.0 * z.reshape(z.shape[0], -1)[:, :2]

    model = RandomizedModel(apply=apply, params=jnp.float32(1.0), key=jax.random.key(3))
    x = jax.random.uniform(jax.random.key(1), (64, 4, 4, 1))
    y = jnp.zeros((64,), jnp.int32)
    res = jaxadv.Square(threat=jaxadv.LinfBall(eps=0.3), num_queries=30)(
        jax.random.key(0), model, x, y
    )
    judge = judging_view(model)
    np.testing.assert_array_equal(res.success, jnp.argmax(judge(res.adv), axis=1) != y)
    seen = jnp.argmax(model(res.adv), axis=1) != y  # the draw the attack saw at its point
    assert float(jnp.mean(res.success)) < 0.75 < float(jnp.mean(seen))
    det = jaxadv.from_apply(lambda w, z: z.reshape(z.shape[0], -1)[:, :2] * w, jnp.float32(1.0))
    assert judging_view(det) is det
    # an EOT-averaged model is judged on one fresh draw, not on its mean logits
    np.testing.assert_array_equal(
        judging_view(EOTLogits(model=model, num_draws=4))(x), judging_view(model)(x)
    )


@pytest.mark.slow
def test_the_rand_version_attacks_the_expectation_and_judges_one_draw():
    model = _noisy_model(0.05)
    x, y, _, _ = _counting_batch(1, b=6)
    rand = jaxadv.AutoAttack.standard(jaxadv.LinfBall(eps=0.5), version="rand", num_steps=2)
    res = rand(jax.random.key(0), model, x, y)
    assert "randomized" not in res.info["flags"]  # the reference skips the check for 'rand'
    assert bool(jnp.all(res.success))  # eps 0.5 moves the flag pixel across 0.5
    # judged by one fresh draw of the randomised model, as the reference judges by one forward
    # pass
    judge = judging_view(model)
    np.testing.assert_array_equal(res.success, jnp.argmax(judge(res.adv), axis=1) != y)


# ------------------------------------------------------------------------- success margin κ
def _capped_model():
    """3 classes, true class 0 (logit 0). Class 1 (the runner-up, APGD-T's first target) can
    win, but only by at most 0.1; class 2 (the second target) can win by far more."""

    def apply(w, x):
        p, q = x[:, 0, 0, 0], x[:, 0, 1, 0]
        z1 = 0.1 * jnp.tanh(10 * (p - 0.1))
        return jnp.stack([jnp.zeros_like(p), z1, w * (q - 0.2)], axis=1)

    return jaxadv.from_apply(apply, jnp.float32(5.0))


@pytest.mark.parametrize("compact", [True, False])
def test_apgd_t_tries_the_next_target_when_one_breaks_only_below_kappa(compact):
    model = _capped_model()
    x = jnp.zeros((3, 2, 2, 1), jnp.float32)
    y = jnp.zeros((3,), jnp.int32)
    kappa = 0.2
    threat = jaxadv.LinfBall(eps=0.5, success_margin=kappa)
    aa = jaxadv.AutoAttack.standard(threat, version="custom", attacks=("apgd-t",), num_steps=8)
    keys = example_keys(jax.random.key(0), 3)
    res = aa(jax.random.key(0), model, x, y) if compact else aa.run(keys, model, x, y)
    # target 1 alone never clears κ = 0.2 (its APGD run makes class 1 win by <= 0.1); only
    # target 2, run when target 1's point is judged with κ as finalize judges it, breaks them
    assert bool(jnp.all(res.success)) and float(jnp.min(res.loss)) > kappa


@pytest.mark.parametrize("compact", [True, False])
def test_a_clean_error_inside_kappa_is_attacked(compact):
    """A clean misclassification by a margin <= κ is no success yet: the stages must see it."""
    names = ("apgd-ce", "fab")
    x, y, code, _ = _counting_batch(2, b=6, seed=1)
    x[:, 0, 0, 0] = 0.55  # every point clean-misclassified, margin 2 * 0.05 = 0.1
    code[:] = 0
    x[:, 0, 0, 1] = 0.05  # stage 0 breaks every point it sees (to margin 1.0)
    threat = jaxadv.LinfBall(eps=1.0, success_margin=0.2)
    stages = tuple(Scripted(threat=threat, stage=s) for s in range(2))
    aa = jaxadv.AutoAttack(threat=threat, attacks=stages, names=names, version="custom")
    model = _flag_model()
    keys = example_keys(jax.random.key(0), 6)
    res = aa(jax.random.key(0), model, x, y) if compact else aa.run(keys, model, jnp.asarray(x), y)
    np.testing.assert_array_equal(res.queries, np.full(6, 2 + 1))  # stage 0 saw every point
    assert bool(jnp.all(res.success)) and float(jnp.min(res.loss)) > 0.2


@pytest.mark.parametrize("name", ["fab-t", "fab"])
def test_compacted_fab_stages_equal_the_pure_run(name):
    """AutoAttack's host path runs FAB / FAB-T run by run on the rows no earlier run broke
    (_compact): same verdicts, points and queries as the pure FAB.run on the whole batch, with
    examples broken by the first target, by a later one, and by none."""
    k1, k2 = jax.random.split(jax.random.key(3))
    # a linear model whose classes 3 and 4 are the easy ones: some examples resist their first
    # FAB-T target (second-highest logit) and fall to a later one
    w = jax.random.normal(k1, (12, 5)) * jnp.array([[1.0, 1.0, 1.0, 3.0, 3.0]])
    model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, w)
    x = jax.random.uniform(k2, (24, 2, 2, 3))
    y = jnp.argmax(model(x), axis=1)
    threat = jaxadv.LinfBall(eps=0.06)
    aa = jaxadv.AutoAttack.standard(threat, version="custom", attacks=(name,), num_steps=6)
    if name == "fab":  # two runs: a random restart after the first
        aa = replace(aa, attacks=(replace(aa.attacks[0], num_restarts=2),))
    keys = example_keys(jax.random.key(0), x.shape[0])
    pure = aa.run(keys, model, x, y)
    compact = aa(jax.random.key(0), model, x, y)
    np.testing.assert_array_equal(compact.success, pure.success)
    np.testing.assert_array_equal(compact.adv, pure.adv)
    np.testing.assert_array_equal(compact.queries, pure.queries)
    # broken by the first run, by a later one (FAB-T), and never: three query counts (two for
    # FAB's two runs)
    q = np.asarray(pure.queries)
    assert 0 < int(pure.success.sum()) < x.shape[0]
    assert len(set(q.tolist())) == (3 if name == "fab-t" else 2)
