"""Multi-label targets: the success rules on hand-made logits, every attack under a rule through
the two-class view, the engine with per-finding AUC, ChestMNIST files, the synthetic task, and the
command line / sweep errors."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attack_configs import small

import jaxadv
from jaxadv import losses as L
from jaxadv import metrics
from jaxadv import multilabel as ml
from jaxadv.attacks import REGISTRY
from jaxadv.data import load_chestmnist, synthetic_findings

F = 4  # findings of the synthetic task


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def _rule_from_probs(rule: ml.Rule, z, y) -> np.ndarray:
    """The rule recomputed from sigmoid outputs, independent of the library's margins."""
    present = _sigmoid(z) > 0.5
    y = np.asarray(y).astype(bool)
    if rule.kind == "one":
        return present[:, rule.finding] != y[:, rule.finding]
    if rule.kind == "any":
        return np.any(present != y, axis=1)
    return np.all(present == np.asarray(rule.target).astype(bool)[None], axis=1)


# ----------------------------------------------------------------------------- rules by hand
Z = np.array([[2.0, -1.0, 0.5], [-3.0, 0.25, -0.5], [1.0, 1.0, 1.0]], np.float32)
Y = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]], np.int32)


def test_finding_margins_and_rules_on_hand_made_logits():
    # -(2y - 1) z by hand: present findings negate the logit, absent ones keep it
    want = np.array([[-2.0, 1.0, 0.5], [-3.0, -0.25, 0.5], [-1.0, -1.0, -1.0]])
    np.testing.assert_array_equal(np.asarray(ml.finding_margins(Z, Y)), want)
    # one: finding 2 is flipped in rows 0 and 1 only
    m = ml.one_finding(2).margin(Z, Y)
    np.testing.assert_array_equal(np.asarray(m), [0.5, 0.5, -1.0])
    np.testing.assert_array_equal(np.asarray(ml.one_finding(2).success(Z, Y)), [True, True, False])
    np.testing.assert_array_equal(np.asarray(ml.one_finding(0).success(Z, Y)), [False] * 3)
    # any: the largest flip margin; row 2 agrees with its labels everywhere
    np.testing.assert_array_equal(np.asarray(ml.any_finding().margin(Z, Y)), [1.0, 0.5, -1.0])
    # set [1, 0, 1]: min over (2t - 1) z = min(z0, -z1, z2)
    rule = ml.target_set([1, 0, 1])
    np.testing.assert_array_equal(np.asarray(rule.margin(Z, Y)), [0.5, -3.0, -1.0])
    np.testing.assert_array_equal(np.asarray(rule.success(Z, Y)), [True, False, False])
    # labels play no part in the set rule
    np.testing.assert_array_equal(np.asarray(rule.margin(Z, 1 - Y)), [0.5, -3.0, -1.0])
    # a NaN logit never makes a success, a tie at 0 is no flip
    zn = Z.copy()
    zn[0, 1] = np.nan
    assert not bool(ml.any_finding().success(zn, Y)[0])
    assert not bool(ml.one_finding(0).success(np.zeros((1, 3), np.float32), Y[:1])[0])


@pytest.mark.parametrize(
    "rule", [ml.one_finding(0), ml.one_finding(3), ml.any_finding(), ml.target_set([0, 1, 0, 1])]
)
def test_success_is_the_rule_on_sigmoid_outputs_and_the_margin_sign(rule):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(200, 4)).astype(np.float32) * 3
    y = rng.integers(0, 2, (200, 4)).astype(np.int32)
    m = np.asarray(rule.margin(z, y))
    want = _rule_from_probs(rule, z, y)
    np.testing.assert_array_equal(np.asarray(rule.success(z, y)), want)
    np.testing.assert_array_equal(m > 0, want)
    assert 0 < want.sum() < 200  # both outcomes occur


def test_bce_is_the_binary_cross_entropy():
    p = _sigmoid(Z)
    want = -(Y * np.log(p) + (1 - Y) * np.log(1 - p))
    np.testing.assert_allclose(np.asarray(ml.bce(Z, Y)), want, rtol=1e-6)


def test_the_view_gives_the_attack_losses_one_meaning():
    model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.asarray(Z))
    x = jnp.asarray(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1))  # model(x) = Z
    for rule in (ml.one_finding(2), ml.any_finding(), ml.target_set([1, 0, 1])):
        for i in range(3):
            view = ml.RuleView(model=model, rule=rule, y=jnp.asarray(Y[i]))
            logits = view(x[i : i + 1])
            m = rule.margin(Z[i : i + 1], Y[i : i + 1])
            y0 = jnp.zeros((1,), jnp.int32)
            np.testing.assert_allclose(np.asarray(L.margin(logits, y0)), np.asarray(m))
            np.testing.assert_allclose(np.asarray(L.ce(logits, y0)), np.log1p(np.exp(m)), 1e-6)
            assert bool(L.is_adversarial(logits, y0)[0]) == bool(m[0] > 0)
    # for one finding, the view's cross-entropy is that finding's binary cross-entropy
    view = ml.RuleView(model=model, rule=ml.one_finding(1), y=jnp.asarray(Y[0]))
    ce = L.ce(view(x[:1]), jnp.zeros((1,), jnp.int32))
    np.testing.assert_allclose(np.asarray(ce), np.asarray(ml.bce(Z[:1], Y[:1]))[:, 1], rtol=1e-6)


def test_rule_construction_errors():
    with pytest.raises(ValueError, match="one of"):
        ml.Rule(kind="all")
    with pytest.raises(ValueError, match="give finding"):
        ml.Rule(kind="one")
    with pytest.raises(ValueError, match="needs a target"):
        ml.target_set(None)
    with pytest.raises(ValueError, match="needs a target"):
        ml.Rule(kind="set").check(3)
    with pytest.raises(ValueError, match="0/1"):
        ml.target_set([0, 2, 1])
    with pytest.raises(ValueError, match="takes no finding"):
        ml.Rule(kind="any", finding=1)
    with pytest.raises(ValueError, match="out of range"):
        ml.one_finding(4).check(4)
    with pytest.raises(ValueError, match="3 entries but there are 4"):
        ml.target_set([0, 1, 0]).check(4)


# ----------------------------------------------------------------------------- a trained model
def _apply(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"][None, :]


@pytest.fixture(scope="module")
def task():
    """The synthetic task and a linear multi-label model trained on it (BCE, full batch)."""
    ds = synthetic_findings(192, num_findings=F, size=8, seed=3)
    x, y = ds.arrays()
    xt, yt = jnp.asarray(x[:128]), jnp.asarray(y[:128])
    p = {"w": jnp.zeros((64, F), jnp.float32), "b": jnp.zeros((F,), jnp.float32)}

    @jax.jit
    def train(p):
        def step(_, p):
            g = jax.grad(lambda p: jnp.mean(ml.bce(_apply(p, xt), yt)))(p)
            return jax.tree.map(lambda a, b: a - 2.0 * b, p, g)

        return jax.lax.fori_loop(0, 300, step, p)

    model = jaxadv.from_apply(_apply, train(p))
    xs, ys = x[128:160], y[128:160]
    acc = np.mean((np.asarray(model(jnp.asarray(xs))) > 0) == ys.astype(bool))
    assert acc > 0.95, acc  # the findings are learned
    return model, xs, ys


RULES = [ml.one_finding(1), ml.any_finding(), ml.target_set([0, 0, 0, 0])]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.describe())
@pytest.mark.parametrize(
    "attack",
    [
        jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.5), num_steps=10),
        jaxadv.Square(threat=jaxadv.LinfBall(eps=0.5), num_queries=60),
    ],
    ids=["pgd", "square"],
)
def test_attacks_break_the_model_under_each_rule(task, rule, attack):
    model, x, y = task
    clean = _rule_from_probs(rule, np.asarray(model(jnp.asarray(x))), y)
    res = ml.MultiLabel(attack=attack, rule=rule)(jax.random.key(0), model, x, y)
    z = np.asarray(model(res.adv))
    want = _rule_from_probs(rule, z, y)
    np.testing.assert_array_equal(np.asarray(res.success), want)
    np.testing.assert_allclose(np.asarray(res.loss), np.asarray(rule.margin(z, y)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.info["finding_logits"]), z, atol=1e-5)
    assert np.all(np.asarray(res.norm) <= 0.5 + 1e-6)
    assert np.all(want[clean])  # nothing the rule held on before is lost
    assert want.mean() > max(0.5, clean.mean())  # the attack does break it


def test_the_view_runs_the_attack_unchanged(task):
    """Per example under vmap, the attack does what it does on the equivalent two-class model:
    for one finding and examples without it, the view is the model [0, z_k] with label 0."""
    model, x, y = task
    keep = np.flatnonzero(y[:, 2] == 0)[:6]
    x, y = x[keep], y[keep]
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.2), num_steps=5)
    res = ml.MultiLabel(attack=pgd, rule=ml.one_finding(2))(1, model, x, y)

    def binary(p, xb):
        z = _apply(p, xb)[:, 2]
        return jnp.stack([jnp.zeros_like(z), z], axis=1)

    ref = pgd(1, jaxadv.from_apply(binary, model.params), x, np.zeros(len(x), np.int32))
    np.testing.assert_allclose(np.asarray(res.adv), np.asarray(ref.adv), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(res.success), np.asarray(ref.success))
    np.testing.assert_allclose(np.asarray(res.loss), np.asarray(ref.loss), atol=1e-5)


def test_multilabel_refuses_what_does_not_apply(task):
    model, x, y = task
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1), num_steps=2)
    atk = ml.MultiLabel(attack=pgd, rule=ml.any_finding())
    with pytest.raises(ValueError, match="target_set"):
        atk(0, model, x, y, target=y)
    with pytest.raises(ValueError, match="DLR needs three"):
        ml.MultiLabel(
            attack=jaxadv.APGD(threat=jaxadv.LinfBall(eps=0.1), loss="dlr"), rule=RULES[0]
        )
    with pytest.raises(ValueError, match=r"multi-hot labels y\[B, F\]"):
        atk(0, model, x, y[:, 0])
    with pytest.raises(ValueError, match="model returns 4 logits"):
        atk(0, model, x, np.zeros((len(x), 3), np.int32))
    with pytest.raises(ValueError, match="only 0 and 1"):
        atk(0, model, x, 2 * y)
    with pytest.raises(ValueError, match="out of range"):
        ml.MultiLabel(attack=pgd, rule=ml.one_finding(7))(0, model, x, y)
    with pytest.raises(TypeError, match="Rule"):
        ml.MultiLabel(attack=pgd, rule="any")
    res = atk(0, model, x, y.astype(bool))  # bool labels are multi-hot too
    assert res.success.shape == (len(x),)


def test_no_retrace_on_new_eps_weights_key_or_target():
    traces = []

    def apply(p, x):
        traces.append(1)
        return x.reshape(x.shape[0], -1) @ p

    w = jax.random.normal(jax.random.key(0), (4, 3))
    x = jnp.full((2, 2, 2, 1), 0.5)
    y = jnp.array([[1, 0, 0], [0, 1, 1]])
    model = jaxadv.from_apply(apply, w)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1), num_steps=2)
    atk = ml.MultiLabel(attack=pgd, rule=ml.target_set([0, 0, 1]))
    atk(0, model, x, y, validate=False)
    n0 = len(traces)
    atk.with_eps(0.2)(1, model, x, y, validate=False)
    ml.MultiLabel(attack=pgd, rule=ml.target_set([1, 0, 1]))(0, model, x, y, validate=False)
    atk(0, model.with_params(2 * w), x, y, validate=False)
    assert len(traces) == n0
    ml.MultiLabel(attack=pgd, rule=ml.one_finding(1))(0, model, x, y, validate=False)
    assert len(traces) > n0  # the finding is static: a new program


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_attack_runs_under_a_rule(task, name):
    """Every registered attack, unchanged, under the 'any' rule: the result is honest (success is
    the rule on the model's raw outputs at adv, loss its margin, adv in the threat set)."""
    model, x, y = task
    x, y = x[:5], y[:5]
    atk = small(name)
    res = ml.MultiLabel(attack=atk, rule=ml.any_finding())(0, model, x, y)
    z = np.asarray(model(res.adv))
    want = _rule_from_probs(ml.any_finding(), z, y)
    np.testing.assert_array_equal(np.asarray(res.success), want)
    m = np.asarray(ml.any_finding().margin(z, y))
    np.testing.assert_allclose(np.asarray(res.loss), m, atol=1e-5)
    proj = atk.threat.project(jnp.asarray(x), res.adv)
    np.testing.assert_allclose(np.asarray(proj), np.asarray(res.adv), atol=1e-6)


# ----------------------------------------------------------------------------- the engine and AUC
def test_finding_auc_against_a_hand_computation():
    s = np.array([[0.1, 0.9, 0.3], [0.4, 0.2, 0.3], [0.35, 0.6, 0.3], [0.8, 0.1, 0.3]])
    y = np.array([[0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1]])
    # finding 0: positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs ordered -> 0.75
    # finding 1: positives {0.9, 0.6} above negatives {0.2, 0.1}: 1.0
    # finding 2: all scores tied -> 0.5
    np.testing.assert_allclose(metrics.finding_auc(s, y), [0.75, 1.0, 0.5])
    y1 = y.copy()
    y1[:, 2] = 1  # one class only: undefined
    got = metrics.finding_auc(s, y1)
    assert np.isnan(got[2])
    adv = np.stack([s, s[::-1]])
    out = metrics.finding_auc_under_attack(s, adv, y1)
    assert out["clean_macro"] == pytest.approx(0.875)
    # reversed rows: finding 0 positives {0.4, 0.1} vs negatives {0.8, 0.35}: 1 of 4 pairs
    # ordered (0.4 > 0.35) -> 0.25; finding 1 positives {0.1, 0.2} vs {0.6, 0.9}: 0.0
    np.testing.assert_allclose(out["adv"][1], [0.25, 0.0, np.nan])
    np.testing.assert_allclose(out["adv_macro"], [0.875, 0.125])
    assert out["adv"].shape == (2, 3)


PGD4 = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=4)


@pytest.fixture(scope="module")
def evaluated(task):
    """evaluate() under the 'any' rule on the 8 test devices (one padded step of 40 rows)."""
    model, x, y = task
    return jaxadv.evaluate(
        PGD4, model, (x, y), [0.0, 0.1], key=2, rule=ml.any_finding(), batch_size=5
    )


def test_evaluate_under_a_rule(task, evaluated):
    model, x, y = task
    pgd, rule, ev = PGD4, ml.any_finding(), evaluated
    direct = ml.MultiLabel(attack=pgd.with_eps(0.1), rule=rule)(2, model, x, y)
    np.testing.assert_array_equal(ev.per_eps["success"][1], np.asarray(direct.success))
    np.testing.assert_allclose(ev.per_eps["margin"][1], np.asarray(direct.loss), atol=1e-5)
    np.testing.assert_allclose(
        ev.per_eps["logits"][1], np.asarray(direct.info["finding_logits"]), atol=1e-5
    )
    clean_z = np.asarray(model(jnp.asarray(x)))
    np.testing.assert_array_equal(ev.per_eps["success"][0], _rule_from_probs(rule, clean_z, y))
    np.testing.assert_array_equal(ev.labels, y)
    aucs = ev.finding_auc()
    np.testing.assert_allclose(aucs["clean"], metrics.finding_auc(clean_z, y), atol=1e-6)
    np.testing.assert_allclose(
        aucs["adv"][1], metrics.finding_auc(np.asarray(direct.info["finding_logits"]), y)
    )
    rows = ev.summary()
    assert rows[0]["rule"] == "any" and rows[0]["auc_macro"] == pytest.approx(aucs["clean_macro"])
    assert rows[1]["auc_macro_under_attack"] == pytest.approx(aucs["adv_macro"][1])
    assert rows[0]["auc_macro_under_attack"] == pytest.approx(aucs["clean_macro"])  # eps 0
    assert rows[1]["robust_accuracy"] == pytest.approx(1 - direct.success.mean())


def test_evaluate_under_a_rule_on_one_device_and_cascaded(task, evaluated):
    """Per-example results do not depend on the device count or the batch size; the cascade is
    the same worst case; MultiLabel(attack, rule) is the same as rule=."""
    from jaxadv.engine.layout import data_mesh

    model, x, y = task
    pgd, rule, ev = PGD4, ml.any_finding(), evaluated

    one = jaxadv.evaluate(
        pgd,
        model,
        (x, y),
        [0.0, 0.1],
        key=2,
        rule=rule,
        batch_size=7,
        mesh=data_mesh(jax.devices()[:1]),
    )
    np.testing.assert_array_equal(one.per_eps["success"], ev.per_eps["success"])
    np.testing.assert_allclose(one.per_eps["logits"], ev.per_eps["logits"], atol=1e-5)
    cas = jaxadv.evaluate(
        ml.MultiLabel(attack=pgd, rule=rule), model, (x, y), [0.0, 0.1], key=2, cascade=True
    )
    np.testing.assert_array_equal(cas.per_eps["success"], ev.per_eps["success"])


def test_evaluate_refuses_mismatched_rules_and_data(task):
    model, x, y = task
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=2)
    with pytest.raises(ValueError, match="multi-label .4 findings.; pass a success rule"):
        jaxadv.evaluate(pgd, model, (x, y), [0.1], key=0)
    with pytest.raises(ValueError, match="one integer label per example"):
        jaxadv.evaluate(pgd, model, (x, y[:, 0]), [0.1], key=0, rule=ml.any_finding())
    with pytest.raises(ValueError, match="out of range"):
        jaxadv.evaluate(pgd, model, (x, y), [0.1], key=0, rule=ml.one_finding(4))


# ----------------------------------------------------------------------------- data
def _chest_file(path: pathlib.Path, n=(7, 3, 5), hw=28, findings=14) -> dict[str, np.ndarray]:
    """A small file in the official ChestMNIST layout (uint8 images [N, H, W], labels [N, 14])."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, hw, hw), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (count, findings), dtype=np.uint8)
    np.savez_compressed(path, **arrays)
    return arrays


def test_chestmnist_loader_gives_all_14_findings(tmp_path):
    arrays = _chest_file(tmp_path / "chestmnist.npz")
    for split in ("train", "val", "test"):
        ds = load_chestmnist(tmp_path / "chestmnist.npz", split)
        assert ds.multi_label and ds.num_classes == 14 and ds.image_shape == (28, 28, 1)
        x, y = ds.arrays()
        assert y.dtype == np.int32 and y.shape == (len(ds), 14)
        np.testing.assert_array_equal(y, arrays[f"{split}_labels"])
        np.testing.assert_allclose(x[..., 0], arrays[f"{split}_images"] / np.float32(255))
    assert ds.label_names[0] == "atelectasis" and ds.label_names[13] == "hernia"
    assert len(load_chestmnist(tmp_path, "val")) == 3  # a folder: chestmnist.npz in it
    _chest_file(tmp_path / "chestmnist_64.npz", hw=64)
    assert load_chestmnist(tmp_path, size=64).image_shape == (64, 64, 1)
    one = tmp_path / "other.npz"
    np.savez(one, test_images=arrays["test_images"], test_labels=np.zeros((5, 1), np.uint8))
    with pytest.raises(ValueError, match="one label per example"):
        load_chestmnist(one)
    _chest_file(tmp_path / "bad.npz", findings=13)
    with pytest.raises(ValueError, match="13 findings"):
        load_chestmnist(tmp_path / "bad.npz")


def test_synthetic_findings_are_visible_features():
    ds = synthetic_findings(40, num_findings=5, size=12, seed=1)
    x, y = ds.arrays()
    assert ds.multi_label and ds.num_classes == 5 and x.shape == (40, 12, 12, 1)
    assert x.min() >= 0 and x.max() <= 1 and 0 < y.mean() < 1
    # 3x3 grid of 4-pixel cells: finding k is bright in the middle of cell k
    for k in range(5):
        r, c = divmod(k, 3)
        centre = x[:, r * 4 + 1 : r * 4 + 3, c * 4 + 1 : c * 4 + 3, 0].mean(axis=(1, 2))
        np.testing.assert_array_equal(centre > 0.5, y[:, k] == 1)
    x2, y2 = synthetic_findings(40, num_findings=5, size=12, seed=1).arrays()
    np.testing.assert_array_equal(x, x2)
    with pytest.raises(ValueError, match="size must be"):
        synthetic_findings(4, num_findings=5, size=8)
    with pytest.raises(ValueError, match=">= 2"):
        synthetic_findings(4, num_findings=1)


# ----------------------------------------------------------------------------- CLI and sweeps
@pytest.fixture()
def chest_file(tmp_path) -> pathlib.Path:
    _chest_file(tmp_path / "chestmnist.npz")
    return tmp_path / "chestmnist.npz"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--multilabel", "any"], "needs multi-label data"),
        (["--multilabel", "all"], "must be one of one, any, set"),
        (["--finding", "3"], "apply to a multi-label rule only"),
        (["--multilabel", "set"], "needs a target set"),
        (["--multilabel", "one"], "give --finding"),
        (["--multilabel", "any", "--finding", "2"], "rule 'one' only"),
        (["--multilabel", "any", "--attack", "apgd-dlr"], "DLR needs three"),
    ],
)
def test_cli_rule_errors_on_single_label_data(capsys, extra, message):
    from jaxadv.cli import main

    assert main(["attack", "--data", "default", "--eps", "0", *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "is multi-label (14 findings): give a success rule"),
        (["--multilabel", "one", "--finding", "14"], "finding 14 is out of range"),
        (["--multilabel", "one", "--finding", "fracture"], "unknown finding 'fracture'"),
        (["--multilabel", "set", "--target-set", "2,99"], "target-set finding 99 is out of range"),
        (["--multilabel", "any"], "returns 2 logits but data 'chestmnist' has 14 findings"),
    ],
)
def test_cli_rule_errors_on_chestmnist(capsys, chest_file, extra, message):
    from jaxadv.cli import main

    assert main(["attack", "--data", str(chest_file), "--eps", "0", *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_multilabel_model_on_single_label_data(tmp_path, capsys):
    from jaxadv.cli import main

    ckpt = _chest_net(tmp_path / "chest.msgpack")
    assert main(["attack", "--model", str(ckpt), "--eps", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "returns 14 logits but data 'pneumoniamnist' has 2 classes" in err
    assert "needs multi-label data and --multilabel" in err


@pytest.mark.slow
def test_cli_attack_under_a_rule(tmp_path, chest_file):
    from jaxadv.cli import main

    ckpt = _chest_net(tmp_path / "chest.msgpack")
    out = tmp_path / "out"
    argv = ["attack", "--data", str(chest_file), "--model", str(ckpt), "--attack", "fgsm"]
    argv += ["--eps", "0,16", "--multilabel", "set", "--target-set", "none", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["rule"] for r in rows] == ["set:" + ",".join(["0"] * 14)] * 2
    assert rows[0]["num_examples"] == 5 and "auc_macro_under_attack" in rows[1]
    assert rows[0]["robust_accuracy"] == rows[0]["clean_accuracy"]
    assert 0 <= rows[1]["auc_macro_under_attack"] <= 1 or np.isnan(rows[1]["auc_macro"])


def test_sweep_config_rule_keys(tmp_path):
    from jaxadv import sweep

    base = {"models": ["small_cnn_clean"], "datasets": ["default"], "eps": [0, 2]}
    cfg = sweep.load_config({**base, "attacks": ["fgsm"]})
    assert "multilabel" not in cfg.data["attacks"][0]  # old configs keep their cell hashes
    cfg = sweep.load_config(
        {**base, "attacks": [{"attack": "pgd", "multilabel": "one", "finding": "pneumonia"}]}
    )
    a = cfg.data["attacks"][0]
    assert (a["multilabel"], a["finding"], a["label"]) == ("one", "pneumonia", "pgd-onepneumonia")
    for bad, message in [
        ({"attack": "pgd", "finding": 3}, "apply to a multi-label rule only"),
        ({"attack": "pgd", "multilabel": "set"}, "needs a target set"),
        ({"attack": "pgd", "multilabel": "every"}, "must be one of"),
        ({"attack": "apgd-dlr", "multilabel": "any"}, "DLR needs three"),
    ]:
        with pytest.raises(sweep.ConfigError, match=message):
            sweep.load_config({**base, "attacks": [bad]})


def _chest_net(path: pathlib.Path) -> pathlib.Path:
    """A random 14-logit SmallCNN checkpoint: a multi-label model for ChestMNIST-shaped data."""
    from flax import nnx

    from jaxadv import checkpoint
    from jaxadv.nn import SmallCNN

    net = SmallCNN(14, 1, width=4, rngs=nnx.Rngs(0))
    checkpoint.save(
        path, net, {"architecture": "small_cnn", "kwargs": {"num_classes": 14, "width": 4}}
    )
    return path


@pytest.mark.slow
def test_sweep_under_rules(tmp_path, chest_file):
    from jaxadv import sweep
    from jaxadv.sweep.report import load_sweep, worst_case

    net = _chest_net(tmp_path / "chest.msgpack")
    cfg = {
        "models": [str(net)],
        "datasets": [str(chest_file)],
        "eps": [0, 16],
        "attacks": [
            {"attack": "fgsm", "multilabel": "any"},
            {"attack": "fgsm", "multilabel": "one", "finding": "pneumonia"},
        ],
    }
    res = sweep.run_sweep(sweep.load_config(cfg), tmp_path / "sw", batch_size=4)
    assert res.complete and len(res.computed) == 2
    _, cells, missing = load_sweep(tmp_path / "sw")
    assert not missing and sorted(c.rule for c in cells) == ["any", "one:6"]
    for c in cells:
        assert c.labels.shape == (5, 14)
        assert all("auc_macro_under_attack" in r for r in c.summary)
    rows, _ = worst_case(cells)
    assert sorted(r["rule"] for r in rows) == ["any", "any", "one:6", "one:6"]  # never mixed
    no_rule = {**cfg, "attacks": ["fgsm"]}
    with pytest.raises(sweep.SweepError, match="is multi-label .14 findings.: give a success rule"):
        sweep.run_sweep(sweep.load_config(no_rule), tmp_path / "sw2", batch_size=4)
