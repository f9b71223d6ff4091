"""Feature adapter, detectors (jaxadv.detect), HFC and the adaptive attack (issue 16, item 6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxadv
import jaxadv.detect as D
from jaxadv.attacks.hfc import GMM, HFC, Adaptive, fit_gmm, hfc_prior
from jaxadv.features import from_feature_fn, with_features

SHAPE = (2, 2, 1)  # 4 pixels: features are the pixels themselves


def _fn(p, x, key):
    z = x.reshape(x.shape[0], -1)
    return z @ p["w"], {"in": z, "sq": z * z}


def tiny_model():
    w = jnp.asarray([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0]], jnp.float32)
    return from_feature_fn(_fn, {"w": w}, ["in", "sq"])


def blobs(seed, n, lo, hi):
    rng = np.random.default_rng(seed)
    return rng.uniform(lo, hi, (n, *SHAPE)).astype(np.float32)


def labels(model, x):
    return np.asarray(jnp.argmax(model(jnp.asarray(x)), axis=1)).astype(np.int32)


# -- features -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_features_smallcnn_same_call_and_jittable():
    net = jaxadv.nn.SmallCNN(width=4, rngs=nnx.Rngs(0))
    plain = jaxadv.from_nnx(net)
    fm = with_features(net, example_input=jnp.zeros((2, 28, 28, 1)))
    x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
    logits, feats = jax.jit(lambda m, x: m.features(x))(fm, x)
    np.testing.assert_allclose(logits, plain(x), rtol=1e-5, atol=1e-5)
    assert {k: v.shape for k, v in feats.items()} == {
        "bn1": (2, 4),
        "bn2": (2, 8),
        "drop": (2, 128),
    }
    # MC dropout: a key changes the logits, no key gives the eval-mode logits
    l1, _ = fm.features(x, jax.random.key(1))
    assert not np.allclose(l1, logits)


@pytest.mark.slow
def test_features_resnet18_default_layers():
    net = jaxadv.nn.resnet18(num_classes=2, in_channels=1, rngs=nnx.Rngs(0))
    fm = with_features(net)
    x = jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32)
    logits, feats = jax.eval_shape(lambda m, x: m.features(x), fm, x)  # traced, not compiled
    assert logits.shape == (2, 2)
    want = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512, "features": 512}
    assert {k: v.shape for k, v in feats.items()} == {k: (2, d) for k, d in want.items()}


class Sower(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        z = x.reshape(x.shape[0], -1)
        self.sow(nnx.Intermediate, "pixels", z)
        return self.lin(z)


def test_features_user_nnx_sow_and_layer_names():
    fm = with_features(Sower(nnx.Rngs(0)), ["pixels", "lin"])
    x = jnp.arange(8.0, dtype=jnp.float32).reshape(2, 2, 2, 1)
    logits, feats = fm.features(x)
    np.testing.assert_array_equal(feats["pixels"], x.reshape(2, 4))
    np.testing.assert_allclose(feats["lin"], logits)


def test_features_linen_capture_intermediates():
    from flax import linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            z = x.reshape(x.shape[0], -1)
            h = nn.Dense(3, name="hidden")(z)
            self.sow("intermediates", "pixels", z)
            return nn.Dense(2)(nn.relu(h))

    x = jnp.arange(8.0, dtype=jnp.float32).reshape(2, 2, 2, 1)
    net = Net()
    variables = net.init(jax.random.key(0), x)
    fm = with_features(jaxadv.from_linen(net, variables), ["hidden", "pixels"], example_input=x)
    logits, feats = jax.jit(lambda m, x: m.features(x))(fm, x)
    np.testing.assert_allclose(logits, net.apply(variables, x), rtol=1e-6)
    np.testing.assert_array_equal(feats["pixels"], x.reshape(2, 4))
    assert feats["hidden"].shape == (2, 3)
    with pytest.raises(ValueError, match="available names"):
        with_features(jaxadv.from_linen(net, variables), ["nope"], example_input=x)


def test_features_unknown_layer_is_a_clear_error():
    net = Sower(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"no layer.*'nope'.*available names: .*lin"):
        with_features(net, ["nope"], example_input=jnp.zeros((1, 2, 2, 1)))
    fm = with_features(net, ["nope"])  # unchecked until the first call
    with pytest.raises(ValueError, match="no layer 'nope'"):
        fm.features(jnp.zeros((1, 2, 2, 1)))
    with pytest.raises(ValueError, match="no default feature layers for Sower"):
        with_features(net)
    with pytest.raises(TypeError, match="from_feature_fn"):
        with_features(lambda x: x)


# -- brute-force references -----------------------------------------------------------------------
def np_lid(h, ref, k):
    d = np.sqrt(((h[:, None, :] - ref[None, :, :]) ** 2).sum(-1))
    r = np.sort(d, axis=1)[:, :k]
    return -1.0 / np.mean(np.log(r / r[:, -1:]), axis=1)


def _detectors(model):
    return {
        "LID": D.LID(model=model, k=10, num_reference=60),
        "MAHA": D.Mahalanobis(model=model),
        "DNN": D.DNNDetector(model=model, num_steps=200),
        "KD": D.KernelDensity(model=model, bandwidth=0.3),
    }


@pytest.fixture(scope="module")
def separable():
    """Detectors fitted on clean pixels in [0, 0.3] against 'adversarial' ones in [0.6, 1]."""
    model = tiny_model()
    xc, xa = blobs(0, 200, 0.0, 0.3), blobs(1, 120, 0.6, 1.0)
    yc = labels(model, xc)
    fitted = {n: d.fit(xc, yc, xa) for n, d in _detectors(model).items()}
    return model, xc, yc, fitted


def test_lid_kd_mahalanobis_equal_numpy(separable):
    model, xc, yc, fitted = separable
    xt = blobs(2, 7, 0.0, 1.0)
    hc, ht = xc.reshape(-1, 4).astype(np.float64), xt.reshape(7, 4).astype(np.float64)
    sq_c, sq_t = hc * hc, ht * ht

    lid = fitted["LID"]
    assert lid.layers == ("in", "sq")
    got = np.asarray(D.lid_mle(jnp.asarray(ht, jnp.float32), lid.reference["in"], 10))
    np.testing.assert_allclose(got, np_lid(ht, hc[:60], 10), rtol=2e-3)
    z = np.stack([np_lid(ht, hc[:60], 10), np_lid(sq_t, sq_c[:60], 10)], axis=1)
    lr = lid.classifier
    want = ((z - np.asarray(lr.mean)) / np.asarray(lr.scale)) @ np.asarray(lr.w) + float(lr.b)
    np.testing.assert_allclose(lid.score(jnp.asarray(xt)), want, rtol=2e-3, atol=2e-3)

    kd = fitted["KD"]  # the last layer, "sq"
    pred = labels(model, xt)
    logk = -(((sq_t[:, None, :] - sq_c[None, :, :]) ** 2).sum(-1)) / (2 * 0.3**2)
    ref = []
    for i in range(7):
        lk = logk[i, yc == pred[i]]
        ref.append(-(np.log(np.mean(np.exp(lk - lk.max()))) + lk.max()))
    np.testing.assert_allclose(np.asarray(kd.score(jnp.asarray(xt))), ref, rtol=1e-3, atol=1e-3)

    maha = fitted["MAHA"]
    ms = []
    for h_c, h_t in ((hc, ht), (sq_c, sq_t)):
        mu = np.stack([h_c[yc == c].mean(0) for c in range(2)])
        r = h_c - mu[yc]
        prec = np.linalg.pinv(r.T @ r / len(h_c), hermitian=True)
        diff = h_t[:, None, :] - mu[None]
        ms.append(np.max(-np.einsum("bcd,de,bce->bc", diff, prec, diff), axis=1))
    m = np.stack(ms, axis=1)
    got = np.asarray(maha._layer_scores(jnp.asarray(xt)))
    np.testing.assert_allclose(got, m, rtol=1e-3, atol=1e-2)
    lr = maha.classifier
    want = ((m - np.asarray(lr.mean)) / np.asarray(lr.scale)) @ np.asarray(lr.w) + float(lr.b)
    np.testing.assert_allclose(np.asarray(maha.score(jnp.asarray(xt))), want, rtol=1e-3, atol=1e-2)


def test_auc_separable_is_one_and_identical_is_half(separable):
    model, xc, yc, fitted = separable
    xct, xat = blobs(2, 100, 0.0, 0.3), blobs(3, 100, 0.6, 1.0)
    ok = np.ones(100, bool)
    ok[::10] = False  # failed attacks are not positives: the denominator says so
    rep = D.evaluate(fitted, xct, xat, ok)
    for name, row in rep.items():
        assert row["auc"] > 0.99, (name, row)
        assert row["tpr_at_tnr95"] > 0.95, (name, row)
        assert (row["n_clean"], row["n_adv"]) == (100, 90)

    # identical distributions (same sizes as above: the compiled programs are reused)
    same = {n: d.fit(xc, yc, blobs(4, 120, 0.0, 0.3)) for n, d in _detectors(model).items()}
    del same["KD"]  # KD is fitted on clean data only: nothing to compare
    rep = D.evaluate(same, blobs(5, 100, 0.0, 0.3), blobs(6, 100, 0.0, 0.3), np.ones(100, bool))
    for name, row in rep.items():
        assert 0.35 < row["auc"] < 0.65, (name, row)


def test_tpr_at_tnr_threshold():
    assert D.tpr_at_tnr(np.arange(10), [5.5, 9.5, 10, 11], 0.9) == 0.75
    assert D.tpr_at_tnr(np.arange(20), [17.5, 18.5], 0.95) == 0.5


# -- save / load and errors -----------------------------------------------------------------------
def test_save_load_bit_exact(separable, tmp_path):
    model, _, _, fitted = separable
    x = jnp.asarray(blobs(2, 7, 0.0, 1.0))
    for name, det in fitted.items():
        loaded = D.load(D.save(det, tmp_path / f"{name}.json"), model)
        assert jax.tree.structure(det) == jax.tree.structure(loaded), name
        for u, v in zip(jax.tree.leaves(det), jax.tree.leaves(loaded), strict=True):
            assert np.asarray(u).dtype == np.asarray(v).dtype
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
        np.testing.assert_array_equal(det.score(x), loaded.score(x))
    with pytest.raises(ValueError, match="does not expose"):
        D.load(tmp_path / "LID.json", from_feature_fn(_fn, model.params, ["in"]))


def test_saved_detector_records_its_model(separable, tmp_path):
    """The file records the model a detector was fitted on; another model is refused, a file
    without the record (older jaxadv) still loads with a warning."""
    import json

    model, _, _, fitted = separable
    det = fitted["MAHA"]
    path = D.save(det, tmp_path / "maha.json", model_name="tiny")
    ident = json.loads(path.read_text())["model"]
    assert ident == {"name": "tiny", "params_sha256": D.model_fingerprint(model)}
    # the layers a feature model exposes do not change its identity
    same = from_feature_fn(_fn, model.params, ["in", "sq"])
    assert D.model_fingerprint(same) == ident["params_sha256"]
    other = from_feature_fn(_fn, {"w": model.params["w"] * 2}, ["in", "sq"])
    with pytest.raises(ValueError, match="fitted on model 'tiny'"):
        D.load(path, other)
    np.testing.assert_array_equal(
        D.load(path, same).score(blobs(2, 3, 0, 1)), det.score(blobs(2, 3, 0, 1))
    )
    doc = json.loads(path.read_text())
    del doc["model"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="does not record which model"):
        old = D.load(tmp_path / "old.json", other)
    assert old.model is other


def test_sweep_load_for_model_reads_each_file_once(tmp_path, monkeypatch):
    import pathlib

    from jaxadv.sweep.detection import load_for_model

    nets = [jaxadv.from_nnx(Sower(nnx.Rngs(i))) for i in (0, 1)]
    fm = with_features(nets[0], ["pixels"])
    xc = blobs(0, 40, 0.0, 1.0)
    yc = np.asarray(jnp.argmax(fm.features(jnp.asarray(xc))[0], axis=1)).astype(np.int32)
    kd = D.KernelDensity(model=fm, bandwidth=0.3).fit(xc, yc)
    path = D.save(kd, tmp_path / "kd.json")
    reads = []
    real = pathlib.Path.read_text
    monkeypatch.setattr(
        pathlib.Path, "read_text", lambda self, *a, **k: reads.append(self) or real(self, *a, **k)
    )
    entry = {"label": "kd", "detector": str(path), "model": "m"}
    dets = load_for_model([entry], nets[0], SHAPE, lambda p: p, error=ValueError)
    assert reads == [path]
    np.testing.assert_array_equal(dets["kd"].score(xc[:3]), kd.score(xc[:3]))
    with pytest.raises(ValueError, match="fitted on another model"):
        load_for_model([entry], nets[1], SHAPE, lambda p: p, error=ValueError)


def test_clear_errors(tmp_path):
    model = tiny_model()
    xc, yc = blobs(0, 20, 0.0, 1.0), np.zeros(20, np.int32)
    x = jnp.asarray(xc[:2])
    for det in _detectors(model).values():
        with pytest.raises(ValueError, match="not fitted"):
            det.score(x)
        with pytest.raises(ValueError, match="not fitted"):
            D.save(det, tmp_path / "d.json")
    with pytest.raises(ValueError, match="more than num_reference"):
        D.LID(model=model, k=5, num_reference=30).fit(xc, yc, xc)
    with pytest.raises(ValueError, match="k <= num_reference"):
        D.LID(model=model, k=50, num_reference=10).fit(xc, yc, xc)
    with pytest.raises(ValueError, match="Dropout"):
        D.BayesianUncertainty(model=model).fit()
    with pytest.raises(ValueError, match="not exposed"):
        D.Mahalanobis(model=model, layers=("conv9",)).fit(xc, yc, xc)
    with pytest.raises(ValueError, match="needs x_adv"):
        D.LID(model=model).fit(xc, yc, None)
    (tmp_path / "odd.json").write_text('{"jaxadv_detector": 1, "detector": {"__class__": "os"}}')
    with pytest.raises(ValueError, match="malformed or unknown"):
        D.load(tmp_path / "odd.json", model)
    (tmp_path / "junk.json").write_text("[]")
    with pytest.raises(ValueError, match="not a jaxadv detector"):
        D.load(tmp_path / "junk.json", model)


@pytest.mark.slow
def test_bayesian_uncertainty_mc_dropout():
    net = jaxadv.nn.SmallCNN(width=4, dropout=0.5, rngs=nnx.Rngs(0))
    fm = with_features(net)
    bu = D.BayesianUncertainty(model=fm, num_samples=8).fit()
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    s = jax.jit(lambda d, x: d.score(x))(bu, x)
    assert s.shape == (3,) and np.all(np.asarray(s) >= -1e-6)
    # a fixed dropout key: the score is a function of x (eager equals jitted up to rounding)
    np.testing.assert_allclose(s, bu.score(x), rtol=1e-4, atol=1e-6)


def test_bayesian_uncertainty_dropout_head_on_a_dropout_free_model(tmp_path):
    model = tiny_model()  # linear, no dropout: logits = features["in"] @ w exactly
    xc = blobs(0, 200, 0.0, 1.0)
    bu = D.BayesianUncertainty(model=model, num_samples=16, head_layer="in").fit(xc)
    # the head reproduces the linear model (ridge with a tiny penalty)
    assert float(bu.head_agreement) >= 0.97
    np.testing.assert_allclose(bu.head["w"], model.params["w"], atol=0.05)
    x = jnp.asarray(blobs(1, 6, 0.0, 1.0))
    s = jax.jit(lambda d, x: d.score(x))(bu, x)
    assert s.shape == (6,) and np.all(np.asarray(s) >= -1e-6) and np.any(np.asarray(s) > 1e-4)
    # one mask per pass for the whole batch: an example's score does not depend on its position
    np.testing.assert_allclose(bu.score(x[::-1])[::-1], s, rtol=1e-5, atol=1e-7)
    # differentiable in x (the adaptive attack needs it) and round-trips through save / load
    g = jax.grad(lambda x: jnp.sum(bu.score(x)))(x)
    assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)
    back = D.load(D.save(bu, tmp_path / "bu.json"), model)
    np.testing.assert_array_equal(back.score(x), bu.score(x))
    # errors
    with pytest.raises(ValueError, match="not exposed"):
        D.BayesianUncertainty(model=model, head_layer="conv9").fit(xc)
    with pytest.raises(ValueError, match="needs x_clean"):
        D.BayesianUncertainty(model=model, head_layer="in").fit()
    with pytest.raises(ValueError, match="dropout_rate"):
        D.BayesianUncertainty(model=model, head_layer="in", dropout_rate=1.0).fit(xc)
    with pytest.raises(ValueError, match="head_layer"):
        D.BayesianUncertainty(model=model).fit()


# -- EM and HFC -----------------------------------------------------------------------------------
def test_em_recovers_synthetic_mixture():
    rng = np.random.default_rng(0)
    mus = np.array([[-3.0, 0.0], [3.0, 1.0]])
    covs = np.array([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]]])
    n = [300, 700]
    h = np.concatenate([rng.multivariate_normal(mus[k], covs[k], n[k]) for k in range(2)])
    # extra rows with weight 0 must not matter (this is how one class is selected)
    junk = rng.normal(50.0, 1.0, (100, 2))
    w = np.concatenate([np.ones(1000), np.zeros(100)])
    g = fit_gmm(
        jax.random.key(0),
        jnp.asarray(np.concatenate([h, junk]), jnp.float32),
        jnp.asarray(w, jnp.float32),
        num_components=2,
        num_iters=40,
    )
    order = np.argsort(np.asarray(g.means)[:, 0])
    means = np.asarray(g.means)[order]
    lc = np.asarray(g.prec_chol)[order]
    cov = np.linalg.inv(lc @ np.swapaxes(lc, 1, 2))
    np.testing.assert_allclose(means, mus, atol=0.15)
    np.testing.assert_allclose(cov, covs, atol=0.2)
    np.testing.assert_allclose(np.exp(np.asarray(g.log_weights))[order], [0.3, 0.7], atol=0.03)
    # log_prob is the mixture density
    x = jnp.asarray([[0.0, 0.0]], jnp.float32)
    pdf = sum(
        wk
        * np.exp(-0.5 * (np.zeros(2) - m) @ np.linalg.inv(c) @ (np.zeros(2) - m))
        / (2 * np.pi * np.sqrt(np.linalg.det(c)))
        for wk, m, c in zip([0.3, 0.7], mus, covs, strict=True)
    )
    np.testing.assert_allclose(np.exp(float(g.log_prob(x)[0])), pdf, rtol=0.2)


def test_hfc_feature_term_decreases_and_result_is_honest():
    model = tiny_model()
    xtr = blobs(0, 200, 0.0, 1.0)
    ytr = labels(model, xtr)
    prior = hfc_prior(jax.random.key(0), model, xtr, ytr, num_components=2, layers=["in"])
    assert isinstance(prior["in"], GMM) and prior["in"].means.shape == (2, 2, 4)
    x = blobs(1, 16, 0.0, 1.0)
    y = labels(model, x)
    eps = 0.3
    threat = jaxadv.LinfBall(eps=eps)
    res = HFC(threat=threat, prior=prior, lam=10.0, num_steps=15)(
        jax.random.key(0), model, x, y, target=1 - y
    )
    trace = np.asarray(res.info["hfc"])
    assert trace.shape == (16, 15)
    assert np.mean(trace[:, -1]) < 0.5 * np.mean(trace[:, 0])
    adv = np.asarray(res.adv)
    assert np.all(np.abs(adv - x) <= eps + 1e-6) and adv.min() >= 0.0 and adv.max() <= 1.0
    np.testing.assert_array_equal(res.success, labels(model, adv) == 1 - y)
    assert np.mean(res.success) > 0.5
    # lam = 0 is targeted BIM: it must reach the target (guards the sign of the CE term)
    res0 = HFC(threat=threat, prior=prior, lam=0.0, num_steps=15)(
        jax.random.key(0), model, x, y, target=1 - y
    )
    assert np.mean(res0.success) > 0.9
    with pytest.raises(ValueError, match="targeted"):
        HFC(threat=threat, prior=prior)(jax.random.key(0), model, x, y)


def test_adaptive_attack_lowers_detector_score(separable):
    model, _, _, fitted = separable
    det = fitted["MAHA"]
    x = blobs(7, 16, 0.0, 0.3)
    y = labels(model, x)
    kw = {"threat": jaxadv.LinfBall(eps=0.3), "detector": det, "num_steps": 10}
    plain = Adaptive(lam=0.0, **kw)(jax.random.key(1), model, x, y)
    adaptive = Adaptive(lam=10.0, **kw)(jax.random.key(1), model, x, y)  # lam is a leaf
    assert np.mean(det.score(adaptive.adv)) < np.mean(det.score(plain.adv))
    trace = np.asarray(adaptive.info["detector"])
    assert trace.shape == (16, 10) and trace[:, -1].mean() < trace[:, 0].mean()
    np.testing.assert_array_equal(adaptive.success, labels(model, np.asarray(adaptive.adv)) != y)


def test_mahalanobis_input_preprocessing_raises_the_confidence_score(separable):
    from jaxadv._struct import replace

    maha = separable[3]["MAHA"]
    x = jnp.asarray(blobs(2, 7, 0.0, 1.0))
    plain = np.asarray(maha._layer_scores(x))
    pre = np.asarray(replace(maha, noise=0.01)._layer_scores(x))
    assert np.all(pre.sum(1) >= plain.sum(1) - 1e-4) and np.any(pre > plain + 1e-4)
