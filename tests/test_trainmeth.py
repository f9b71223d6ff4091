"""Training methodology: splits used as meant, imbalance-aware metrics, training options."""

from __future__ import annotations

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxadv.classmetrics import (
    balanced_accuracy,
    classification_metrics,
    macro_auc,
    warn_if_trivial,
)
from jaxadv.data import from_arrays
from jaxadv.engine.summary import summary_rows
from jaxadv.nn import SmallCNN
from jaxadv.splits import stratified_holdout, training_splits
from jaxadv.train import batch_loss, train
from jaxadv.train_options import Augment, class_weight_vector, epoch_order, make_optimizer


def _synthetic(n: int, seed: int, *, p1: float = 0.5, size: int = 12):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < p1).astype(np.int32)
    x = rng.random((n, size, size, 1)) * 0.5 + 0.4 * y[:, None, None, None]
    return x.astype(np.float32), y


def _state(module) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(module, nnx.Not(nnx.RngState)))]


# -------------------------------------------------------------------------------- metrics


def _brute_auc(s: np.ndarray, pos: np.ndarray) -> float:
    sp, sn = s[pos], s[~pos]
    d = sp[:, None] - sn[None, :]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


@pytest.mark.parametrize("c", [2, 3, 5])
def test_metrics_equal_brute_force_references(c):
    rng = np.random.default_rng(c)
    n = 60
    y = rng.choice(c, n, p=np.linspace(1, 3, c) / np.linspace(1, 3, c).sum()).astype(np.int32)
    logits = rng.normal(size=(n, c)).astype(np.float32)
    logits[np.arange(n), y] += 0.8  # better than chance, not perfect
    pred = logits.argmax(1)
    m = classification_metrics(logits, y)
    recalls = [np.mean(pred[y == k] == k) for k in range(c)]
    assert m["recall_per_class"] == pytest.approx(recalls)
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    counts = np.bincount(y, minlength=c)
    assert m["majority_class"] == counts.argmax()
    assert m["majority_baseline"] == pytest.approx(counts.max() / n)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(1, keepdims=True)
    if c == 2:
        assert m["auc"] == pytest.approx(_brute_auc(p[:, 1], y == 1))
    else:
        ref = np.mean([_brute_auc(p[:, k], y == k) for k in range(c)])
        assert m["macro_auc"] == pytest.approx(ref) == macro_auc(logits, y)


def test_balanced_accuracy_ignores_absent_classes_and_constant_scores_half():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    assert balanced_accuracy(np.ones_like(y), y) == 0.5
    assert classification_metrics(np.zeros((10, 2), np.float32), y)["auc"] == 0.5
    m = classification_metrics(np.zeros((3, 3), np.float32), np.array([0, 0, 2]))
    assert np.isnan(m["recall_per_class"][1]) and m["balanced_accuracy"] == 0.5


def test_warning_fires_on_a_constant_model(caplog):
    y = np.array([1] * 30 + [0] * 10)
    const = np.tile(np.array([[0.0, 2.0]], np.float32), (40, 1))  # always the majority class
    m = classification_metrics(const, y)
    assert m["accuracy"] == m["majority_baseline"] == 0.75 and not m["beats_majority"]
    with caplog.at_level(logging.WARNING, logger="jaxadv"):
        assert not warn_if_trivial(m, "val")
    assert "does not beat the majority baseline on val" in caplog.text
    good = classification_metrics(np.eye(2, dtype=np.float32)[y], y)
    caplog.clear()
    assert warn_if_trivial(good) and caplog.text == ""


class _Const(nnx.Module):
    """Logits that ignore the image: a model that learned nothing."""

    def __init__(self):
        self.b = nnx.Param(jnp.array([0.0, 1.0]))

    def __call__(self, x):
        return jnp.zeros((x.shape[0], 1), x.dtype) + self.b[None, :]


class _Linear(nnx.Module):
    def __init__(self, d: int, seed: int = 0):
        self.lin = nnx.Linear(d, 2, rngs=nnx.Rngs(seed))

    def __call__(self, x):
        return self.lin(x.reshape(x.shape[0], -1))


def test_train_warns_when_the_selected_model_is_trivial(caplog):
    x, y = _synthetic(40, 0, p1=0.8)
    xv, yv = _synthetic(20, 1, p1=0.8)
    with caplog.at_level(logging.WARNING, logger="jaxadv"):
        train(_Const(), x, y, epochs=1, batch_size=20, optimizer=optax.sgd(0.0), val=(xv, yv))
    assert "does not beat the majority baseline on val" in caplog.text


def test_summary_rows_report_balanced_accuracies():
    y = np.array([0, 0, 1, 1, 1, 1])
    cc = np.array([True, False, True, True, True, True])
    succ = np.array([[False, True, True, True, False, False]])
    row = summary_rows([0.1], {"success": succ}, cc, labels=y)[0]
    assert row["majority_baseline"] == pytest.approx(4 / 6)
    assert row["balanced_clean_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert row["balanced_robust_accuracy"] == pytest.approx((0.5 + 0.5) / 2)


# -------------------------------------------------------------------------------- options


def test_class_weights_change_the_loss_as_specified():
    x, y = _synthetic(16, 2, p1=0.25)
    net = _Linear(144)
    plain, aux = batch_loss(net, x, y)
    ce = np.asarray(-jax.nn.log_softmax(aux["logits"])[np.arange(16), y], np.float64)
    assert float(plain) == pytest.approx(ce.mean(), rel=1e-5)
    w = np.array([3.0, 0.5])
    weighted, _ = batch_loss(net, x, y, class_weights=w)
    assert float(weighted) == pytest.approx(np.sum(w[y] * ce) / np.sum(w[y]), rel=1e-5)
    uniform, _ = batch_loss(net, x, y, class_weights=[7.0, 7.0])
    assert float(uniform) == pytest.approx(float(plain), rel=1e-6)
    bal = class_weight_vector("balanced", y)
    assert bal.tolist() == pytest.approx([16 / (2 * np.sum(y == 0)), 16 / (2 * np.sum(y == 1))])
    with pytest.raises(ValueError, match="weight >= 0"):
        class_weight_vector([1.0], y)


def test_balanced_sampling_is_deterministic_and_balanced():
    y = np.array([0] * 90 + [1] * 10, np.int32)
    a = epoch_order(jax.random.key(0), y, True)
    assert np.array_equal(a, epoch_order(jax.random.key(0), y, True))
    assert 0.35 < np.mean(y[a]) < 0.65
    perm = epoch_order(jax.random.key(0), y, False)
    assert np.array_equal(np.sort(perm), np.arange(100))


def test_augmentation_identity_when_disabled_and_deterministic_by_key():
    x = jax.random.uniform(jax.random.key(0), (3, 6, 6, 2))
    assert Augment()(jax.random.key(1), x) is x
    assert np.allclose(Augment(rotate=1e-6)(jax.random.key(1), x), x, atol=1e-5)
    aug = Augment(hflip=True, vflip=True, rotate=15.0, crop=2, brightness=0.1, contrast=0.2)
    a, b = aug(jax.random.key(3), x), aug(jax.random.key(3), x)
    assert np.array_equal(a, b) and not np.array_equal(a, aug(jax.random.key(4), x))
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    flips = np.asarray(Augment(hflip=True)(jax.random.key(5), x))
    for f, img in zip(flips, np.asarray(x), strict=True):
        assert np.array_equal(f, img) or np.array_equal(f, img[:, ::-1])
    with pytest.raises(ValueError, match="rotate"):
        Augment(rotate=-1.0)


@pytest.mark.slow
def test_disabled_augmentation_trains_bit_identically():
    x, y = _synthetic(32, 3)
    nets = [SmallCNN(2, 1, width=4, input_size=12, rngs=nnx.Rngs(0)) for _ in range(2)]
    train(nets[0], x, y, epochs=1, batch_size=16, key=1)
    train(nets[1], x, y, epochs=1, batch_size=16, key=1, augment=Augment())
    for a, b in zip(_state(nets[0]), _state(nets[1]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_warmup_schedule_starts_at_zero():
    tx = make_optimizer(0.1, total_steps=10, warmup_steps=4, schedule="cosine", weight_decay=0.01)
    p = {"w": jnp.ones(3)}
    st = tx.init(p)
    with jax.numpy_dtype_promotion("standard"):
        u, st = tx.update({"w": jnp.ones(3)}, st, p)
    assert float(jnp.abs(u["w"]).max()) == 0.0
    with pytest.raises(ValueError, match="schedule"):
        make_optimizer(0.1, total_steps=10, schedule="step")


# -------------------------------------------------------------------------------- selection


def test_best_epoch_is_restored_and_early_stopping_uses_val():
    x, y = _synthetic(48, 4)
    xv, yv = _synthetic(24, 5)
    net = _Linear(144)
    snaps = []
    hist = train(
        net,
        x,
        y,
        epochs=6,
        batch_size=16,
        learning_rate=0.3,  # large: val loss goes up and down
        val=(xv, yv),
        monitor="loss",
        patience=2,
        callback=lambda m, _: snaps.append(_state(m)),
    )
    losses = [h["val_loss"] for h in hist]
    best = int(np.argmin(losses))
    assert [h["best"] for h in hist][best] and hist[best]["epoch"] == best + 1
    assert len(hist) == 6 or len(hist) - 1 - best == 2  # stopped after 2 flat epochs
    for a, b in zip(_state(net), snaps[best], strict=True):
        np.testing.assert_array_equal(a, b)
    assert {"val_balanced_accuracy", "val_auc", "val_majority_baseline"} <= set(hist[0])


def test_stratified_holdout_is_a_seeded_stratified_partition():
    y = np.array([0] * 20 + [1] * 80 + [2] * 3)
    keep, held = stratified_holdout(y, 0.2, seed=7)
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(y.size))
    assert np.bincount(y[held]).tolist() == [4, 16, 1]
    assert np.array_equal(held, stratified_holdout(y, 0.2, seed=7)[1])
    assert not np.array_equal(held, stratified_holdout(y, 0.2, seed=8)[1])


def test_npz_without_val_gets_a_holdout_and_folders_a_three_way_split(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = (rng.random((40, 8, 8)) * 255).astype(np.uint8)
    labels = np.array([0, 1] * 20, np.uint8)[:, None]
    np.savez(tmp_path / "d.npz", train_images=imgs, train_labels=labels,
             test_images=imgs[:6], test_labels=labels[:6])  # fmt: skip
    s = training_splits(str(tmp_path / "d.npz"), seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (34, 6, 6)
    assert s.val_source.startswith("hold-out") and s.test_source == "split"
    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(imgs[i]).save(tmp_path / "f" / c / f"{i}.png")
    s = training_splits(str(tmp_path / "f"), size=8, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (14, 2, 4)
    assert s.test_source.startswith("hold-out") and s.train.num_classes == 2


@pytest.fixture
def guarded_cli(tmp_path, monkeypatch):
    """``jaxadv train`` on small synthetic splits whose test loader raises until training has
    finished. Yields ``(run, state)``: ``run(*flags, out=, rc=0) -> metadata dict`` (None when
    ``rc`` is not 0); ``state['train_kwargs']``: what the CLI passed to ``jaxadv.train.train``."""
    import jaxadv.train
    import jaxadv.vocab
    from jaxadv.cli import main

    state = {"trained": False, "test_reads": 0}
    data = {
        s: _synthetic(n, i) for i, (s, n) in enumerate((("train", 48), ("val", 16), ("test", 20)))
    }

    class Guarded(type(from_arrays(*data["test"]))):
        def _get(self, indices):
            if not state["trained"]:
                raise AssertionError("test split read before training finished")
            state["test_reads"] += 1
            return super()._get(indices)

        def labels(self):
            raise AssertionError("test labels read for training")

    def load(name, split="test", size=None, channels=None):
        ds = from_arrays(*data[split], split=split)
        if split == "test":
            ds.__class__ = Guarded
        return ds

    real_train = jaxadv.train.train

    def tracked(*a, **k):
        state["train_kwargs"] = k
        out = real_train(*a, **k)
        state["trained"] = True
        return out

    monkeypatch.setattr(jaxadv.vocab, "load_dataset", load)
    monkeypatch.setattr(jaxadv.train, "train", tracked)
    fake = tmp_path / "fake.npz"  # only its key names are read (split discovery)
    np.savez(fake, **{f"{s}_{k}": np.zeros(1) for s in data for k in ("images", "labels")})

    def run(*flags: str, out: str = "m.msgpack", rc: int = 0) -> dict | None:
        path = tmp_path / out
        argv = ["train", "--data", str(fake), "--batch-size", "16", "--out", str(path), *flags]
        assert main(argv) == rc
        return json.loads(path.with_suffix(".json").read_text()) if rc == 0 else None

    return run, state


def test_cli_never_touches_test_before_the_final_evaluation(guarded_cli):
    """A test loader that raises until training has finished; the CLI must still report test."""
    run, state = guarded_cli
    meta = run("--epochs", "1", "--class-weights", "balanced", "--hflip", "--warmup-epochs", "1")
    assert state["trained"] and state["test_reads"] >= 1
    assert meta["splits"] == {"train": 48, "val": 16, "test": 20, "val_source": "split",
                              "test_source": "split"}  # fmt: skip
    assert meta["test"]["num_examples"] == 20 and meta["val"]["num_examples"] == 16
    assert meta["augment"]["hflip"] and meta["class_weights"] == "balanced"
    assert meta["optimizer"]["warmup_epochs"] == 1 and len(meta["history"]) == 1


@pytest.mark.slow
def test_cli_adversarial_training_reports_robust_test_metrics(guarded_cli):
    run, state = guarded_cli
    meta = run("--epochs", "1", "--adversarial", "--adv-steps", "2", "--adv-eps", "8")
    rob = meta["test"]["robust"]
    assert state["trained"] and rob["num_examples"] == 20 and rob["eps_255"] == 8
    assert rob["robust_accuracy"] <= rob["clean_accuracy"] == meta["test"]["accuracy"]
    assert 0 <= rob["balanced_robust_accuracy"] <= 1 and "auc_under_attack" in rob


@pytest.mark.slow  # about 10 s each, 30 s for the first in a process (2-core CPU, compiles)
@pytest.mark.parametrize("objective", ["trades", "mart"])
def test_cli_trades_and_mart_reach_train_and_the_metadata(guarded_cli, objective):
    run, state = guarded_cli
    flags = ("--epochs", "1", "--adversarial", "--adv-steps", "1", "--adv-eps", "8")
    meta = run(*flags, "--objective", objective.upper(), "--beta", "3")
    at = state["train_kwargs"]["adversarial"]
    assert at.objective == objective and float(at.beta) == 3.0 and at.attack.num_steps == 1
    assert state["train_kwargs"]["distill"] is None
    assert meta["adversarial"] and meta["objective"] == objective and meta["beta"] == 3.0
    assert meta["temperature"] == 1.0 and meta["distill_from"] is None
    assert meta["test"]["robust"]["num_examples"] == 20


def test_cli_defensive_distillation_teacher_then_student(guarded_cli, tmp_path, caplog):
    run, state = guarded_cli
    teacher = run("--epochs", "1", "--temperature", "5", out="teacher.msgpack")
    assert float(state["train_kwargs"]["temperature"]) == 5.0
    assert teacher["temperature"] == 5.0 and teacher["objective"] is None
    assert teacher["distill_from"] is None and teacher["beta"] is None
    path = str(tmp_path / "teacher.msgpack")
    student = run("--epochs", "1", "--distill-from", path, "--temperature", "5", "--seed", "1")
    kw = state["train_kwargs"]
    assert float(kw["distill"].temperature) == 5.0 and float(kw["temperature"]) == 1.0
    assert kw["adversarial"] is None
    assert student["distill_from"] == path and student["temperature"] == 5.0
    assert student["test"]["num_examples"] == 20 and not student["adversarial"]
    assert "trained at temperature" not in caplog.text  # same T: no warning


def test_cli_distillation_teacher_must_fit_the_data(guarded_cli, tmp_path, capsys, caplog):
    from jaxadv import checkpoint

    run, state = guarded_cli
    three = tmp_path / "three.msgpack"
    kwargs = {"num_classes": 3, "in_channels": 1, "input_size": 12, "width": 4}
    net = SmallCNN(**kwargs, rngs=nnx.Rngs(0))
    checkpoint.save(three, net, {"architecture": "small_cnn", "kwargs": kwargs, "temperature": 5})
    for teacher, msg in ((three, "returns 3 logits"), ("small_cnn_clean", "cannot run on")):
        with caplog.at_level(logging.WARNING, logger="jaxadv"):
            run("--epochs", "1", "--distill-from", str(teacher), "--temperature", "2", rc=2)
        err = capsys.readouterr().err
        assert msg in err and "--distill-from" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "train_kwargs" not in state  # refused before training
    # the teacher's recorded temperature differs from the student's: said, not refused
    assert "trained at temperature 5, the student learns at 2.0" in caplog.text


TRAIN_OBJECTIVE_ERRORS = [
    (["--objective", "trades"], "add --adversarial"),
    (["--adversarial", "--objective", "fgsm-at"], "--objective must be one of"),
    (["--adversarial", "--beta", "3"], "--beta weighs"),
    (["--beta", "3"], "--beta weighs"),
    (["--adversarial", "--objective", "trades", "--beta", "0"], "--beta must be a finite"),
    (["--adversarial", "--objective", "mart", "--beta", "-1"], "--beta must be a finite"),
    (["--adversarial", "--objective", "mart", "--beta", "nan"], "--beta must be a finite"),
    (["--adversarial", "--objective", "trades", "--beta", "inf"], "--beta must be a finite"),
    (["--temperature", "0"], "--temperature must be a finite"),
    (["--temperature", "-3"], "--temperature must be a finite"),
    (["--temperature", "nan"], "--temperature must be a finite"),
    (["--temperature", "inf"], "--temperature must be a finite"),
    (["--adversarial", "--temperature", "5"], "adversarial objectives run at T = 1"),
    (["--distill-from", "small_cnn_clean"], "needs --temperature"),
    (["--distill-from", "MISSING", "--temperature", "5"], "not found"),
    (["--distill-from", "small_cnn_clean", "--adversarial"], "separate objectives"),
]


@pytest.mark.parametrize("flags, msg", TRAIN_OBJECTIVE_ERRORS)
def test_cli_objective_flags_refused_before_reading_data(flags, msg, tmp_path, capsys, monkeypatch):
    import jaxadv.splits
    from jaxadv.cli import main

    def boom(*a, **k):
        raise AssertionError("data read before the user error was reported")

    monkeypatch.setattr(jaxadv.splits, "training_splits", boom)
    flags = [str(tmp_path / "missing.msgpack") if f == "MISSING" else f for f in flags]
    assert main(["train", "--data", "d.npz", "--out", str(tmp_path / "m"), *flags]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_tfds_uses_validation_else_a_holdout(monkeypatch):
    import jaxadv.vocab
    from jaxadv.vocab import SpecError

    have = {"train": 40, "test": 10}

    def load(name, split="test", size=None, channels=None):
        if split not in have:
            raise SpecError(f"no split {split}")
        x, y = _synthetic(have[split], 0, size=4)
        return from_arrays(x, y, split=split)

    monkeypatch.setattr(jaxadv.vocab, "load_dataset", load)
    s = training_splits("tfds:fake", seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (34, 6, 10)
    assert s.val_source.startswith("hold-out") and s.test_source == "split"
    have["validation"] = 8
    s = training_splits("tfds:fake", seed=3)
    assert (len(s.train), len(s.val), s.val_source) == (40, 8, "split")


def test_folder_with_split_subfolders_keeps_them(tmp_path):
    from PIL import Image

    img = np.zeros((6, 6), np.uint8)
    for split, n in (("train", 10), ("test", 3)):
        for c in ("benign", "melanoma"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(img + i).save(tmp_path / split / c / f"{i}.png")
    s = training_splits(str(tmp_path), size=6, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (16, 4, 6)
    assert s.val_source.startswith("hold-out") and s.test_source == "split"
    assert s.test.label_names == ("benign", "melanoma") and s.test.split == "test"
    (tmp_path / "val" / "melanoma").mkdir(parents=True)  # an empty class folder is allowed
    Image.fromarray(img).save(tmp_path / "val" / "melanoma" / "0.png")
    (tmp_path / "val" / "benign").mkdir()
    s = training_splits(str(tmp_path), size=6, seed=0)
    assert (len(s.train), len(s.val), s.val_source) == (20, 1, "split")
    assert s.val.labels().tolist() == [1]


def test_balanced_rate_equals_per_class_means():
    from jaxadv.classmetrics import balanced_rate

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 50)
    y[y == 2] = 3  # class 2 absent: not counted
    ok = rng.random(50) < 0.6
    ref = np.mean([ok[y == c].mean() for c in (0, 1, 3)])
    assert balanced_rate(ok, y) == pytest.approx(ref)
    pred = np.where(ok, y, (y + 1) % 4)
    assert balanced_rate(pred == y, y) == pytest.approx(balanced_accuracy(pred, y))
    with pytest.raises(ValueError, match="ok holds 3 examples"):
        balanced_rate([True, False, True], y)


def _four_class_model():
    import jaxadv

    w = jnp.asarray(np.random.default_rng(0).normal(size=(16, 4)), jnp.float32)
    return jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, w)


def _brute_macro(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    aucs = [
        _brute_auc(p[:, c], y == c) for c in range(logits.shape[1]) if 0 < (y == c).sum() < y.size
    ]
    return float(np.mean(aucs))


def test_multiclass_rows_report_macro_auc_under_attack():
    """The macro AUC of every attack row is the one-vs-rest AUC of the model's scores on the
    adversarial images the attack returned (brute force on the kept images)."""
    import jaxadv

    model = _four_class_model()
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(40, 4, 4, 1)).astype(np.float32)
    y = np.array(jnp.argmax(model(jnp.asarray(x)), 1))
    y[:10] = (y[:10] + 1) % 4  # some clean errors, so the clean AUC is below 1
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=5)
    ev = jaxadv.evaluate(pgd, model, (x, y), [0.0, 0.05], key=0, num_adv=40)
    rows = ev.summary()
    clean = _brute_macro(np.asarray(model(jnp.asarray(x))), y)
    adv = _brute_macro(np.asarray(model(jnp.asarray(ev.adv))), y)
    assert rows[0]["auc_macro"] == pytest.approx(clean) == rows[0]["auc_macro_under_attack"]
    assert rows[1]["auc_macro_under_attack"] == pytest.approx(adv, abs=1e-6)
    assert adv < clean  # the attack moved the scores
    # two-class models keep the binary AUC columns only
    two = jaxadv.evaluate(
        pgd,
        jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(16, 2)),
        (x, y % 2),
        [0.0],
        key=0,
    )
    assert "auc" in two.summary()[0] and "auc_macro" not in two.summary()[0]
    assert two.clean_logits is None


@pytest.mark.slow
def test_multiclass_sweep_cells_store_logits_and_report_macro_auc(tmp_path):
    from jaxadv import checkpoint, sweep
    from jaxadv.sweep.report import decode
    from jaxadv.sweep.storage import SweepDir

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 3), ("test", 9)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).astype(np.uint8)[:, None]
    np.savez_compressed(tmp_path / "three.npz", **arrays)
    net = SmallCNN(3, 1, width=4, rngs=nnx.Rngs(0))
    checkpoint.save(
        tmp_path / "three.msgpack",
        net,
        {"architecture": "small_cnn", "kwargs": {"num_classes": 3, "width": 4}},
    )
    cfg = {
        "models": [str(tmp_path / "three.msgpack")],
        "datasets": [str(tmp_path / "three.npz")],
        "eps": [0, 16],
        "attacks": ["fgsm"],
    }
    res = sweep.run_sweep(sweep.load_config(cfg), tmp_path / "sw", batch_size=4)
    assert res.complete
    (rec,) = SweepDir(tmp_path / "sw").load(strict=True).values()
    assert "clean_logits" in rec["results"] and "logits" in rec["results"]
    rows = decode(rec).summary
    assert all("auc_macro_under_attack" in r for r in rows)
    assert rows[0]["auc_macro"] == pytest.approx(rows[0]["auc_macro_under_attack"])
    assert rec["summary"][1]["auc_macro_under_attack"] == pytest.approx(
        rows[1]["auc_macro_under_attack"]
    )
