"""Training (clean and adversarial), checkpoints, and the shipped reference models."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import linear_model
from flax import nnx

import jaxadv
from jaxadv import checkpoint
from jaxadv import losses as L
from jaxadv.nn import SmallCNN
from jaxadv.train import (
    AdversarialTraining,
    batch_loss,
    evaluate,
    pairwise_distance,
    random_shift,
    train,
)


def _split(path: pathlib.Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as d:
        x = d[f"{name}_images"][..., None].astype(np.float32) / 255
        y = d[f"{name}_labels"].reshape(-1).astype(np.int32)
    return x, y


def _synthetic(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes that differ in brightness: separable, but not trivially at init."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int32)
    x = rng.random((n, 28, 28, 1)) * 0.5 + 0.4 * y[:, None, None, None]
    return x.astype(np.float32), y


def _tiny(seed: int = 0, **kw) -> SmallCNN:
    return SmallCNN(2, 1, width=kw.pop("width", 4), rngs=nnx.Rngs(seed), **kw)


def _arrays(module) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(module, nnx.Not(nnx.RngState)))]


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def test_training_improves_accuracy_on_real_data(pneumonia_path):
    x, y = _split(pneumonia_path, "train")
    xv, yv = _split(pneumonia_path, "val")
    rng = np.random.default_rng(0)
    # The stored train split is sorted by label: sample both classes.
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 150, replace=False) for c in (0, 1)])
    x, y = x[idx], y[idx]
    mean, std = float(x.mean()), float(x.std())
    net = _tiny(width=8)
    before = evaluate(net, xv, yv, mean=mean, std=std)
    hist = train(net, x, y, epochs=2, batch_size=30, key=0, mean=mean, std=std, val=(xv, yv))
    after = evaluate(net, xv, yv, mean=mean, std=std)
    kept = [h for h in hist if h["best"]][-1]  # the best val epoch is restored
    assert len(hist) == 2 and kept["val_accuracy"] == pytest.approx(after)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert after > 0.8 and after > before + 0.05


class _Linear(nnx.Module):
    def __init__(self, seed: int):
        self.fc = nnx.Linear(28 * 28, 2, rngs=nnx.Rngs(seed))

    def __call__(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


def test_second_train_call_does_not_recompile():
    """The jitted step is cached across calls: a second train() with the same structure and
    settings (new module, new key, new but equal optimiser/augmentation/normalisation) reuses the
    compiled step. A fresh jit per call cost 7-12 s per call."""
    from jaxadv.train import _train_step
    from jaxadv.train_options import make_optimizer

    x, y = _synthetic()

    def run(key):
        tx = make_optimizer(1e-3, total_steps=4, schedule="cosine")
        net = _tiny(seed=key)
        train(
            net,
            x,
            y,
            epochs=1,
            batch_size=32,
            key=key,
            optimizer=tx,
            augment=random_shift(1),
            mean=[0.5],
            std=[0.3],
        )

    run(0)
    size = _train_step._cache_size()
    run(1)
    assert _train_step._cache_size() == size, "a second train() call recompiled its step"


def test_unhashable_augmentation_and_schedules_still_train():
    """What worked before the step was cached keeps working: an augmentation object that cannot
    be hashed (compiled for that call only) and an optax schedule as the learning rate."""
    import optax

    class Flip:  # defines __eq__ without __hash__: unhashable
        def __eq__(self, other):
            return isinstance(other, Flip)

        def __call__(self, key, x):
            return x[:, :, ::-1, :]

    x, y = _synthetic()
    hist = train(_tiny(seed=0), x, y, epochs=1, batch_size=32, key=0, augment=Flip())
    assert len(hist) == 1 and np.isfinite(hist[0]["loss"])
    sched = optax.linear_schedule(1e-3, 1e-4, 4)
    hist = train(_tiny(seed=0), x, y, epochs=1, batch_size=32, key=0, learning_rate=sched)
    assert len(hist) == 1 and np.isfinite(hist[0]["loss"])


def test_same_seed_identical_weights_and_mode_untouched():
    x, y = _synthetic()
    nets = [_tiny(), _tiny(), _tiny()]
    for net, key in zip(nets, (1, 1, 2), strict=True):
        train(net, x, y, epochs=1, batch_size=16, key=key, augment=random_shift(1))
    a, b, c = (_arrays(n) for n in nets)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c, strict=True))
    # train() updates weights and batch statistics, not the caller's mode flags.
    assert nets[0].drop.deterministic is False and nets[0].bn1.use_running_average is False
    assert not np.array_equal(_arrays(nets[0])[0], _arrays(_tiny())[0])


def test_train_rejects_bad_inputs():
    x, y = _synthetic(8)
    with pytest.raises(ValueError, match="float images"):
        train(_tiny(), (x * 255).astype(np.uint8), y, epochs=1)
    with pytest.raises(ValueError, match="labels"):
        train(_tiny(), x, y[:4], epochs=1)
    with pytest.raises(TypeError, match="AdversarialTraining"):
        train(_tiny(), x, y, epochs=1, adversarial=jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1)))
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1))
    with pytest.raises(ValueError, match="objective"):
        AdversarialTraining(attack=pgd, objective="free")
    with pytest.raises(ValueError, match="alpha"):
        AdversarialTraining(attack=pgd, objective="mix", alpha=1.5)


# --------------------------------------------------------------------------------------------------
# Adversarial training
# --------------------------------------------------------------------------------------------------


def _train_mode_ce(net, x, y):
    m = nnx.clone(net)
    m.train()
    return jnp.mean(L.ce(m(jnp.asarray(x)), jnp.asarray(y)))


def test_adversarial_loss_is_computed_on_adversarial_points():
    x, y = _synthetic(16)
    net = _tiny(dropout=0.0)  # no dropout: train-mode logits are deterministic
    eps = 8 / 255
    at = AdversarialTraining(attack=jaxadv.PGD(threat=jaxadv.LinfBall(eps=eps), num_steps=3))
    loss, aux = batch_loss(net, x, y, key=0, adversarial=at)
    x_adv = aux["x_adv"]
    delta = np.abs(np.asarray(x_adv) - x)
    assert delta.max() <= eps + 1e-6 and delta.max() > eps / 2
    assert float(loss) == pytest.approx(float(_train_mode_ce(net, x_adv, y)), rel=1e-5)
    clean, _ = batch_loss(net, x, y)
    assert float(clean) == pytest.approx(float(_train_mode_ce(net, x, y)), rel=1e-5)
    assert float(loss) > float(clean)
    # eps = 0: the adversarial objective is the clean one.
    at0 = AdversarialTraining(attack=jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=2))
    assert float(batch_loss(net, x, y, adversarial=at0)[0]) == pytest.approx(float(clean), rel=1e-5)
    # Eq. 1 with D on the inputs: madry loss + λ·mean ||x - x_adv||², same attack points.
    pen = AdversarialTraining(attack=at.attack, objective="penalty", lam=0.5, penalty_on="inputs")
    loss_pen, aux_pen = batch_loss(net, x, y, key=0, adversarial=pen)
    np.testing.assert_array_equal(aux_pen["x_adv"], x_adv)
    d = pairwise_distance("l2sq", jnp.asarray(x), x_adv)
    assert float(loss_pen) == pytest.approx(float(loss) + 0.5 * float(jnp.mean(d)), rel=1e-5)


@pytest.mark.parametrize(
    "objective, extra",
    [
        ("madry", {}),
        ("mix", {"alpha": 0.3}),
        ("penalty", {"lam": 1.0, "distance": "kl"}),
    ],
)
def test_adversarial_training_runs(objective, extra):
    x, y = _synthetic(32)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=4 / 255), num_steps=2)
    at = AdversarialTraining(attack=pgd, objective=objective, **extra)
    net = _tiny()
    w0 = _arrays(net)
    hist = train(net, x, y, epochs=1, batch_size=16, key=0, adversarial=at, mean=0.5, std=0.25)
    assert np.isfinite(hist[0]["loss"])
    assert not all(np.array_equal(u, v) for u, v in zip(w0, _arrays(net), strict=True))


def test_robust_evaluation_does_not_depend_on_batch_size():
    model = linear_model(shape=(4, 4, 1))
    rng = np.random.default_rng(0)
    x = rng.random((13, 4, 4, 1)).astype(np.float32)
    y = np.asarray(jnp.argmax(model(jnp.asarray(x)), axis=1), np.int32)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.05), num_steps=3)
    a = evaluate(model, x, y, attack=pgd, key=3, batch_size=4)
    b = evaluate(model, x, y, attack=pgd, key=3, batch_size=16)
    assert a == b and evaluate(model, x, y) == 1.0


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------

_META = {"architecture": "small_cnn", "kwargs": {"width": 4}, "mean": [0.5], "std": [0.25]}


def _trained_tiny() -> SmallCNN:
    net = _tiny(seed=3)
    # Non-trivial batch statistics, so that a round trip that forgot them would show.
    x, y = _synthetic(16)
    train(net, x, y, epochs=1, batch_size=16, key=0)
    net.eval()
    return net


@pytest.mark.parametrize("name", ["net.msgpack", "net.orbax"])
def test_checkpoint_round_trip_identical_logits(tmp_path, name):
    net = _trained_tiny()
    x = jnp.asarray(_synthetic(8)[0])
    path = tmp_path / name
    mpath = checkpoint.save(path, net, _META)
    assert mpath == tmp_path / "net.json"
    net2, meta = checkpoint.load(path)
    np.testing.assert_array_equal(np.asarray(net2(x)), np.asarray(net(x)))
    assert meta["kwargs"] == {"width": 4} and meta["mean"] == [0.5]
    assert meta["format"] == name.split(".")[1] and meta["versions"]["jax"] == jax.__version__
    # Load into a given template, and via the metadata path.
    net3, _ = checkpoint.load(mpath, module=_tiny(seed=9))
    np.testing.assert_array_equal(np.asarray(net3(x)), np.asarray(net(x)))
    # Overwriting an existing checkpoint works and leaves nothing behind.
    checkpoint.save(path, net2, _META)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "net.json"])


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    net = _tiny()
    path = tmp_path / "m.msgpack"
    checkpoint.save(path, net, _META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.msgpack"]
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, _tiny(seed=5), _META)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.msgpack"]
    assert path.read_bytes() == before  # the old checkpoint is intact


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata"):
        checkpoint.load(tmp_path / "absent.msgpack")
    net = _tiny()
    path = tmp_path / "m.msgpack"
    checkpoint.save(path, net, _META)
    data = path.read_bytes()

    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(path)

    meta = json.loads((tmp_path / "m.json").read_text())
    del meta["sha256"]  # without the checksum, the parser must still refuse cleanly
    (tmp_path / "m.json").write_text(json.dumps(meta))
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(checkpoint.CheckpointError, match="msgpack"):
        checkpoint.load(path)

    checkpoint.save(path, net, _META)
    with pytest.raises(checkpoint.CheckpointError, match="does not fit"):
        checkpoint.load(path, module=_tiny(width=8))

    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="JSON"):
        checkpoint.load(path)

    path.unlink()
    checkpoint.save(tmp_path / "n.msgpack", net, _META)
    (tmp_path / "n.msgpack").unlink()
    with pytest.raises(FileNotFoundError, match="weights"):
        checkpoint.load(tmp_path / "n.msgpack")

    with pytest.raises(ValueError, match="unknown architecture"):
        checkpoint.save(tmp_path / "x.msgpack", net, {"architecture": "nope"})
    with pytest.raises(ValueError, match="format"):
        checkpoint.save(tmp_path / "x.pt", net, _META)


def test_register_architecture(tmp_path):
    class Lin(nnx.Module):
        def __init__(self, d: int, *, rngs: nnx.Rngs):
            self.fc = nnx.Linear(d, 2, rngs=rngs)

        def __call__(self, x):
            return self.fc(x.reshape(x.shape[0], -1))

    checkpoint.register_architecture("test_lin", Lin)
    try:
        net = Lin(16, rngs=nnx.Rngs(4))
        checkpoint.save(
            tmp_path / "l.msgpack", net, {"architecture": "test_lin", "kwargs": {"d": 16}}
        )
        net2, _ = checkpoint.load(tmp_path / "l.msgpack")
        x = jnp.ones((2, 4, 4, 1), jnp.float32)
        np.testing.assert_array_equal(np.asarray(net2(x)), np.asarray(net(x)))
    finally:
        checkpoint.ARCHITECTURES.pop("test_lin")


# --------------------------------------------------------------------------------------------------
# Shipped reference models
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", checkpoint.REFERENCE_MODELS)
def test_reference_models_reach_recorded_accuracy(name, pneumonia_path):
    net, meta = checkpoint.load_reference(name)
    assert meta["architecture"] == "small_cnn" and meta["bytes"] < 1_500_000
    x, y = _split(pneumonia_path, "test")
    acc = evaluate(net, x, y, mean=meta["mean"], std=meta["std"])
    assert abs(acc - meta["test_accuracy"]) <= 0.005
    model = checkpoint.reference_model(name)
    assert isinstance(model, jaxadv.Model)
    assert evaluate(model, x, y) == pytest.approx(acc)


def test_unknown_reference_model():
    with pytest.raises(ValueError, match="small_cnn_clean"):
        checkpoint.load_reference("resnet_imagenet")
