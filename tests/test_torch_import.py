"""torch weights into jaxadv: DenseNet, VGG, WideResNet and PreActResNet against torch itself.

Each golden test builds the reference torch module (``tests/torch_reference.py``: torchvision's and
RobustBench's parameter names, random weights, BN statistics far from the identity), writes its
``state_dict`` to a real ``.safetensors`` file under the names ``safetensors.torch.save_file``
uses, lets the loader infer the architecture from the file, and compares logits with torch's on
the same images (NCHW there, NHWC here) to 1e-4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip(
    "torch", reason="torch is an optional extra (jaxadv[peers]); the golden logits need it"
)

import torch_reference as ref  # noqa: E402  (needs torch, imported after the skip)

import jaxadv  # noqa: E402
from jaxadv.nn import (  # noqa: E402
    VGG,
    DenseNet,
    PreActResNet,
    WideResNet,
    densenet_from_safetensors,
    load_torch_state_dict,
    preact_resnet_from_safetensors,
    save_safetensors,
    vgg_from_safetensors,
    wide_resnet_from_safetensors,
)

_forward = jax.jit(lambda model, x: model(x))


def _images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, size, size, 3)).astype(np.float32)


def _save(tmp_path, torch_model, name="m"):
    path = tmp_path / f"{name}.safetensors"
    save_safetensors(path, ref.state_dict_arrays(torch_model), metadata={"format": "pt"})
    return path


def _check_logits(module, torch_model, x):
    want = ref.logits(torch_model, x)
    # Jitted through the adapter: one compilation instead of one per op shape (DenseNet's dense
    # layers all differ in width), and the path an attack takes.
    got = _forward(jaxadv.from_nnx(module), jnp.asarray(x))
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape
    scale = np.max(np.abs(want))
    assert scale > 1e-2  # a dead network would compare equal trivially
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


# ---------------------------------------------------------------------------------------------
# Golden logits
# ---------------------------------------------------------------------------------------------


def test_densenet_small_and_legacy_names(tmp_path):
    tm = ref.randomize(ref.DenseNet(growth=8, blocks=(2, 3, 2), init=16, bn_size=2, classes=14))
    module = densenet_from_safetensors(_save(tmp_path, tm))
    assert isinstance(module, DenseNet)
    assert module.features.num_blocks == 3 and module.features.denseblock2.num_layers == 3
    x = _images(2, 32)
    _check_logits(module, tm, x)

    # CheXNet-era names (denselayer1.norm.1.weight, ...) under a wrapper's prefix.
    legacy = {}
    for k, v in ref.state_dict_arrays(tm).items():
        for new, old in (("norm1", "norm.1"), ("conv1", "conv.1"), ("norm2", "norm.2")):
            if ".denselayer" in k:
                k = k.replace(f".{new}.", f".{old}.")
        legacy["module.densenet121." + k] = v
    assert any(".norm.1.running_var" in k for k in legacy)
    path = tmp_path / "legacy.safetensors"
    save_safetensors(path, legacy)
    module = densenet_from_safetensors(path, prefix="module.densenet121.")
    _check_logits(module, tm, x)


@pytest.mark.slow
def test_densenet121_chexnet_shape(tmp_path):
    tm = ref.randomize(ref.DenseNet(classes=14), seed=1)  # torchvision's densenet121 sizes
    module = densenet_from_safetensors(_save(tmp_path, tm))
    assert [getattr(module.features, f"denseblock{i}").num_layers for i in (1, 2, 3, 4)] == [
        6,
        12,
        24,
        16,
    ]
    assert module.classifier.kernel.shape == (1024, 14)
    _check_logits(module, tm, _images(2, 32, seed=1))


@pytest.mark.parametrize(("batch_norm", "size"), [(False, 32), (True, 64)])
def test_vgg16(tmp_path, batch_norm, size):
    # hidden=64 instead of 4096 keeps the file small; the 64x64 case pools 2x2 -> 7x7 (overlapping
    # adaptive bins), the 32x32 case 1x1 -> 7x7.
    tm = ref.randomize(ref.VGG(batch_norm=batch_norm, classes=5, hidden=64), seed=2)
    module = vgg_from_safetensors(_save(tmp_path, tm))
    assert isinstance(module, VGG)
    assert (module.features[1].__class__.__name__ == "BatchNorm") == batch_norm
    _check_logits(module, tm, _images(2, size, seed=2))


@pytest.mark.slow
def test_vgg16_full_size(tmp_path):
    tm = ref.randomize(ref.VGG(classes=1000), seed=3)  # 138M parameters, torchvision's vgg16
    module = vgg_from_safetensors(_save(tmp_path, tm))
    _check_logits(module, tm, _images(1, 32, seed=3))


@pytest.mark.parametrize(
    ("depth", "widen", "sub_block1", "bias_last"),
    [(10, 2, False, True), (16, 1, True, False)],
)
def test_wide_resnet_small(tmp_path, depth, widen, sub_block1, bias_last):
    tm = ref.WideResNet(depth, widen, classes=10, sub_block1=sub_block1, bias_last=bias_last)
    tm = ref.randomize(tm, seed=4)
    module = wide_resnet_from_safetensors(_save(tmp_path, tm))
    assert isinstance(module, WideResNet)
    assert (module.sub_block1 is not None) == sub_block1
    assert len(module.block1.layer) == (depth - 4) // 6
    _check_logits(module, tm, _images(3, 32, seed=4))


@pytest.mark.parametrize("depth", [28, 34])
def test_wide_resnet_x_10(tmp_path, depth):
    tm = ref.randomize(ref.WideResNet(depth, 10, classes=10, sub_block1=depth == 34), seed=5)
    module = wide_resnet_from_safetensors(_save(tmp_path, tm))
    assert len(module.block2.layer) == (depth - 4) // 6
    assert module.conv1.kernel.shape == (3, 3, 3, 16)
    assert module.block3.layer[0].conv1.kernel.shape == (3, 3, 320, 640)
    _check_logits(module, tm, _images(2, 32, seed=5))


@pytest.mark.parametrize(("shortcut", "bn_before_fc"), [("input", False), ("preact", True)])
def test_preact_resnet18(tmp_path, shortcut, bn_before_fc):
    tm = ref.PreActResNet(classes=10, v2=shortcut == "preact", bn_before_fc=bn_before_fc)
    tm = ref.randomize(tm, seed=6)
    path = _save(tmp_path, tm)
    module = preact_resnet_from_safetensors(path, shortcut=shortcut)
    assert isinstance(module, PreActResNet)
    assert (module.bn is not None) == bn_before_fc
    x = _images(2, 32, seed=6)
    _check_logits(module, tm, x)
    # The two block versions differ only in what the projection sees: the other one is wrong.
    other = preact_resnet_from_safetensors(
        path, shortcut="preact" if shortcut == "input" else "input"
    )
    wrong = _forward(jaxadv.from_nnx(other), jnp.asarray(x))
    assert not np.allclose(np.asarray(wrong), ref.logits(tm, x), rtol=1e-3)


def test_file_written_by_safetensors_save_file(tmp_path):
    # The reference writer itself (not installed by the extras: skipped when absent), with the
    # int64 num_batches_tracked counters a torch state_dict carries.
    st = pytest.importorskip("safetensors.torch", reason="the safetensors package is not installed")
    tm = ref.randomize(ref.PreActResNet(classes=10, bn_before_fc=True), seed=8)
    path = tmp_path / "save_file.safetensors"
    st.save_file(tm.state_dict(), str(path))
    module = preact_resnet_from_safetensors(path)
    _check_logits(module, tm, _images(2, 32, seed=8))


# ---------------------------------------------------------------------------------------------
# Errors name the tensors, before any work
# ---------------------------------------------------------------------------------------------


def _small_wrn_file(tmp_path, edit):
    sd = ref.state_dict_arrays(ref.randomize(ref.WideResNet(10, 1, classes=10)))
    edit(sd)
    path = tmp_path / "edited.safetensors"
    save_safetensors(path, sd)
    return path


def test_renamed_tensor_is_named_with_its_likely_original(tmp_path):
    def rename(sd):
        sd["block2.layer.0.convShortcut.weigth"] = sd.pop("block2.layer.0.convShortcut.weight")

    with pytest.raises(ValueError) as info:
        wide_resnet_from_safetensors(_small_wrn_file(tmp_path, rename))
    msg = str(info.value)
    assert "missing tensors (1): block2.layer.0.convShortcut.weight" in msg
    assert "unexpected tensors (1): block2.layer.0.convShortcut.weigth" in msg
    assert "block2.layer.0.convShortcut.weigth may be block2.layer.0.convShortcut.weight" in msg


def test_wrong_shape_is_named_and_module_untouched(tmp_path):
    def shrink(sd):
        sd["block3.layer.0.bn2.running_var"] = sd["block3.layer.0.bn2.running_var"][:5]

    with pytest.raises(ValueError, match=r"wrong shapes \(1.*block3\.layer\.0\.bn2\.running_var: "):
        wide_resnet_from_safetensors(_small_wrn_file(tmp_path, shrink))

    module = nnx.eval_shape(lambda: WideResNet(10, 1, rngs=nnx.Rngs(0)))
    sd = ref.state_dict_arrays(ref.randomize(ref.WideResNet(10, 1)))
    sd["fc.weight"] = sd["fc.weight"].T
    with pytest.raises(ValueError, match=r"fc\.weight: expected \(10, 64\), got \(64, 10\)"):
        load_torch_state_dict(module, sd)
    # Checked before anything is written: conv1 is still the abstract placeholder.
    assert isinstance(module.conv1.kernel.get_value(), jax.ShapeDtypeStruct)


def test_missing_tensor_is_named(tmp_path):
    def drop(sd):
        del sd["block1.layer.0.bn2.running_mean"]

    with pytest.raises(
        ValueError, match=r"missing tensors \(1\): block1\.layer\.0\.bn2\.running_m"
    ):
        wide_resnet_from_safetensors(_small_wrn_file(tmp_path, drop))


def test_vgg_errors_name_positions(tmp_path):
    sd = ref.state_dict_arrays(ref.randomize(ref.VGG(classes=3, hidden=8)))
    del sd["features.28.bias"]
    sd["features.28.weight"] = sd["features.28.weight"][:, :, :1]
    path = tmp_path / "vgg.safetensors"
    save_safetensors(path, sd)
    with pytest.raises(ValueError) as info:
        vgg_from_safetensors(path)
    msg = str(info.value)
    assert "missing tensors (1): features.28.bias" in msg
    assert "features.28.weight: expected (512, 512, 3, 3), got (512, 512, 1, 3)" in msg


def test_prefix_hint_and_short_lists(tmp_path):
    sd = ref.state_dict_arrays(ref.randomize(ref.PreActResNet(classes=10)))
    path = tmp_path / "dp.safetensors"
    save_safetensors(path, {"module." + k: v for k, v in sd.items()})
    # Not even the architecture can be read without the prefix.
    with pytest.raises(
        ValueError, match=r"needs 4-d conv1\.weight, 2-d linear\.weight \(pass prefix='module\.'\)"
    ):
        preact_resnet_from_safetensors(path)
    module = nnx.eval_shape(lambda: PreActResNet(rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError) as info:
        load_torch_state_dict(module, {"module." + k: v for k, v in sd.items()})
    msg = str(info.value)
    assert "pass prefix='module.'" in msg
    assert "and 80 more" in msg  # 86 missing, six listed
    preact_resnet_from_safetensors(path, prefix="module.")
    # A prefix given where the file has none (or another one) is diagnosed the same way.
    with pytest.raises(ValueError, match=r"pass prefix=''"):
        load_torch_state_dict(module, sd, prefix="model.")


def test_explicit_architecture_must_agree_with_the_file(tmp_path):
    path = _small_wrn_file(tmp_path, lambda sd: None)
    with pytest.raises(ValueError, match=r"missing tensors .*block1\.layer\.1\."):
        wide_resnet_from_safetensors(path, depth=16)
    with pytest.raises(ValueError, match=r"fc\.weight: expected \(7, 64\), got \(10, 64\)"):
        wide_resnet_from_safetensors(path, num_classes=7)
    with pytest.raises(ValueError, match="depth must be 6 n"):
        wide_resnet_from_safetensors(path, depth=12)
    with pytest.raises(ValueError, match="shortcut must be"):
        preact_resnet_from_safetensors(path, shortcut="post")
    with pytest.raises(ValueError, match="config must be one of"):
        vgg_from_safetensors(path, config="vgg15")
    with pytest.raises(ValueError, match="torchvision DenseNet"):
        densenet_from_safetensors(path)


def test_too_small_images_are_refused_not_nan():
    # 28x28 (MedMNIST) would pool DenseNet-121 / VGG-16 down to an empty map: NaN logits.
    dense = nnx.eval_shape(lambda: DenseNet(rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"at least 29x29 .*got 28x28"):
        dense(jnp.zeros((1, 28, 28, 3)))
    nnx.eval_shape(lambda m: m(jnp.zeros((1, 29, 29, 3))), dense)  # the smallest size works
    vgg = nnx.eval_shape(lambda: VGG(hidden=8, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"at least 32x32 .*got 28x31"):
        vgg(jnp.zeros((1, 28, 31, 3)))


# ---------------------------------------------------------------------------------------------
# A loaded model is an attack target
# ---------------------------------------------------------------------------------------------


def test_loaded_model_can_be_attacked(tmp_path):
    # A RobustBench-style target: WideResNet weights plus the wrapper's mu / sigma buffers, which
    # here become from_nnx's mean / std.
    tm = ref.randomize(ref.WideResNet(10, 1, classes=10), seed=7)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    model = jaxadv.from_nnx(wide_resnet_from_safetensors(_save(tmp_path, tm)), mean=mean, std=std)
    x = _images(2, 32, seed=7)
    xn = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    want = ref.logits(tm, xn)
    np.testing.assert_allclose(
        np.asarray(_forward(model, jnp.asarray(x))), want, rtol=1e-4, atol=1e-4 * np.abs(want).max()
    )

    y = jnp.asarray(np.argmax(want, axis=1))
    grad_fn = jax.jit(jax.grad(lambda m, v: jaxadv.losses.margin(m(v), y).sum(), argnums=1))
    grad = grad_fn(model, jnp.asarray(x))
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=8 / 255), num_steps=1)
    res = pgd(jax.random.key(0), model, jnp.asarray(x), y)
    assert np.all(np.isfinite(np.asarray(res.loss)))
    assert np.max(np.abs(np.asarray(res.adv) - x)) <= 8 / 255 + 1e-6
