"""ResNets in NNX and the torchvision/safetensors importer.

The golden tests compare the imported NNX model with an independent NumPy reference that follows
torch's definitions (NCHW, OIHW weights, symmetric padding, -inf max-pool padding, BN in eval mode),
driven only by torchvision's state-dict names; the weights travel through a real .safetensors file.
"""

from __future__ import annotations

import json
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import jaxadv
from jaxadv.nn import (
    ResNet,
    load_safetensors,
    load_torch_state_dict,
    resnet18,
    resnet50,
    resnet_from_safetensors,
    save_safetensors,
)

EPS = 1e-5
SPECS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}


# ---------------------------------------------------------------------------------------------
# Random torchvision state dicts, built from the architecture spec (not from the NNX module)
# ---------------------------------------------------------------------------------------------


def _torchvision_state_dict(arch, num_classes, in_channels, stem, seed=0):
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(name, o, i, k):
        sd[name + ".weight"] = (
            rng.standard_normal((o, i, k, k)) * np.sqrt(2.0 / (i * k * k))
        ).astype(np.float32)

    def bn(name, c):
        sd[name + ".weight"] = rng.uniform(0.5, 1.0, c).astype(np.float32)
        sd[name + ".bias"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        sd[name + ".running_mean"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        sd[name + ".running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[name + ".num_batches_tracked"] = np.array(7, np.int64)

    kind, layers = SPECS[arch]
    conv("conv1", 64, in_channels, 7 if stem == "imagenet" else 3)
    bn("bn1", 64)
    expansion = 4 if kind == "bottleneck" else 1
    width = 64
    for s, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        for b in range(n):
            stride = 2 if (s > 0 and b == 0) else 1
            p = f"layer{s + 1}.{b}"
            out = planes * expansion
            if kind == "basic":
                conv(p + ".conv1", planes, width, 3)
                bn(p + ".bn1", planes)
                conv(p + ".conv2", planes, planes, 3)
                bn(p + ".bn2", planes)
            else:
                conv(p + ".conv1", planes, width, 1)
                bn(p + ".bn1", planes)
                conv(p + ".conv2", planes, planes, 3)
                bn(p + ".bn2", planes)
                conv(p + ".conv3", out, planes, 1)
                bn(p + ".bn3", out)
            if stride != 1 or width != out:
                conv(p + ".downsample.0", out, width, 1)
                bn(p + ".downsample.1", out)
            width = out
    bound = 1.0 / np.sqrt(width)
    sd["fc.weight"] = rng.uniform(-bound, bound, (num_classes, width)).astype(np.float32)
    sd["fc.bias"] = rng.uniform(-bound, bound, num_classes).astype(np.float32)
    return sd


# ---------------------------------------------------------------------------------------------
# NumPy reference (float64, NCHW, torch semantics)
# ---------------------------------------------------------------------------------------------


def _np_conv2d(x, w, stride, padding):
    """torch.nn.functional.conv2d without bias: x[N, I, H, W], w[O, I, kh, kw]."""
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[
                :, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j], optimize=True)
    return out


def _np_bn_eval(x, sd, name):
    c = (None, slice(None), None, None)
    mean = sd[name + ".running_mean"].astype(np.float64)[c]
    var = sd[name + ".running_var"].astype(np.float64)[c]
    return (x - mean) / np.sqrt(var + EPS) * sd[name + ".weight"][c] + sd[name + ".bias"][c]


def _np_maxpool(x, k=3, stride=2, padding=1):
    n, c, h, w = x.shape
    xp = np.pad(
        x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf
    )
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    out = np.full((n, c, ho, wo), -np.inf)
    for i in range(k):
        for j in range(k):
            out = np.maximum(
                out,
                xp[
                    :,
                    :,
                    i : i + stride * (ho - 1) + 1 : stride,
                    j : j + stride * (wo - 1) + 1 : stride,
                ],
            )
    return out


def _relu(x):
    return np.maximum(x, 0.0)


def _np_resnet(sd, x_nchw, arch, stem):
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    kind, layers = SPECS[arch]
    x = x_nchw.astype(np.float64)
    if stem == "imagenet":
        x = _relu(_np_bn_eval(_np_conv2d(x, sd["conv1.weight"], 2, 3), sd, "bn1"))
        x = _np_maxpool(x)
    else:
        x = _relu(_np_bn_eval(_np_conv2d(x, sd["conv1.weight"], 1, 1), sd, "bn1"))
    for s, n in enumerate(layers):
        for b in range(n):
            stride = 2 if (s > 0 and b == 0) else 1
            p = f"layer{s + 1}.{b}"
            if kind == "basic":
                y = _relu(
                    _np_bn_eval(_np_conv2d(x, sd[p + ".conv1.weight"], stride, 1), sd, p + ".bn1")
                )
                y = _np_bn_eval(_np_conv2d(y, sd[p + ".conv2.weight"], 1, 1), sd, p + ".bn2")
            else:
                y = _relu(_np_bn_eval(_np_conv2d(x, sd[p + ".conv1.weight"], 1, 0), sd, p + ".bn1"))
                y = _relu(
                    _np_bn_eval(_np_conv2d(y, sd[p + ".conv2.weight"], stride, 1), sd, p + ".bn2")
                )
                y = _np_bn_eval(_np_conv2d(y, sd[p + ".conv3.weight"], 1, 0), sd, p + ".bn3")
            if p + ".downsample.0.weight" in sd:
                shortcut = _np_conv2d(x, sd[p + ".downsample.0.weight"], stride, 0)
                shortcut = _np_bn_eval(shortcut, sd, p + ".downsample.1")
            else:
                shortcut = x
            x = _relu(y + shortcut)
    x = x.mean(axis=(2, 3))
    return x @ sd["fc.weight"].T + sd["fc.bias"]


def test_numpy_reference_conv_matches_direct_loops():
    # The reference conv itself against the textbook sextuple loop (stride 2, padding 1, even size).
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 6, 6))
    w = rng.standard_normal((3, 2, 3, 3))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((1, 3, 3, 3))
    for o in range(3):
        for r in range(3):
            for c in range(3):
                want[0, o, r, c] = np.sum(xp[0, :, 2 * r : 2 * r + 3, 2 * c : 2 * c + 3] * w[o])
    np.testing.assert_allclose(_np_conv2d(x, w, 2, 1), want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Golden logits: NNX (imported from .safetensors, eval mode) == NumPy reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "stem", "size", "batch", "in_channels"),
    [
        ("resnet18", "cifar", 32, 2, 3),
        ("resnet18", "imagenet", 40, 2, 1),
        ("resnet50", "imagenet", 224, 1, 3),
    ],
)
def test_golden_logits(tmp_path, arch, stem, size, batch, in_channels):
    num_classes = 10
    sd = _torchvision_state_dict(arch, num_classes, in_channels, stem)
    path = tmp_path / f"{arch}.safetensors"
    save_safetensors(path, sd, metadata={"format": "pt"})

    module = resnet_from_safetensors(path, arch)  # everything inferred from the file
    assert module.stem == stem
    x = np.random.default_rng(2).uniform(0.0, 1.0, (batch, in_channels, size, size))
    x = x.astype(np.float32)
    want = _np_resnet(sd, x, arch, stem)
    got = np.asarray(module(jnp.asarray(x.transpose(0, 2, 3, 1))))
    assert got.shape == (batch, num_classes)
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


# ---------------------------------------------------------------------------------------------
# Batch norm: train vs eval, running statistics, torch momentum
# ---------------------------------------------------------------------------------------------


def test_batchnorm_eval_uses_running_stats_and_train_differs():
    model = _abstract_resnet18(num_classes=5)  # every variable is overwritten below
    sd = _torchvision_state_dict("resnet18", 5, 3, "cifar", seed=3)
    load_torch_state_dict(model, sd)
    x = jnp.asarray(np.random.default_rng(4).uniform(0.0, 1.0, (2, 16, 16, 3)), jnp.float32)

    model.eval()
    eval_logits = model(x)
    # Eval mode normalises each example with the stored statistics: no dependence on the batch.
    np.testing.assert_allclose(model(x[:1]), eval_logits[:1], rtol=1e-5, atol=1e-5)
    # ... and it leaves them untouched.
    np.testing.assert_array_equal(np.asarray(model.bn1.mean[...]), sd["bn1.running_mean"])
    bn_in = model.conv1(x)
    want = (np.asarray(bn_in) - sd["bn1.running_mean"]) / np.sqrt(sd["bn1.running_var"] + EPS)
    want = want * sd["bn1.weight"] + sd["bn1.bias"]
    np.testing.assert_allclose(model.bn1(bn_in), want, rtol=1e-5, atol=1e-5)

    model.train()
    train_logits = model(x)
    assert not np.allclose(train_logits, eval_logits, rtol=1e-3, atol=1e-3)
    # Torch momentum 0.1: running = 0.9 * running + 0.1 * batch mean.
    batch_mean = np.asarray(bn_in).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(
        model.bn1.mean[...], 0.9 * sd["bn1.running_mean"] + 0.1 * batch_mean, rtol=1e-5, atol=1e-6
    )
    assert model.bn1.epsilon == EPS


# ---------------------------------------------------------------------------------------------
# Import errors
# ---------------------------------------------------------------------------------------------


def _abstract_resnet18(num_classes=10):
    return nnx.eval_shape(lambda: resnet18(num_classes=num_classes, rngs=nnx.Rngs(0)))


def test_structure_mirrors_torchvision_names():
    for arch, factory in (("resnet18", resnet18), ("resnet50", resnet50)):
        module = nnx.eval_shape(lambda f=factory: f(num_classes=10, rngs=nnx.Rngs(0)))
        stem = module.stem
        sd = _torchvision_state_dict(arch, 10, 3, stem)
        load_torch_state_dict(module, sd)  # strict: every name matches both ways
        np.testing.assert_array_equal(
            np.asarray(module.layer2[0].downsample[0].kernel[...]),
            sd["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0),
        )
        np.testing.assert_array_equal(np.asarray(module.fc.kernel[...]), sd["fc.weight"].T)


def test_missing_tensor_is_named():
    sd = _torchvision_state_dict("resnet18", 10, 3, "cifar")
    del sd["layer2.0.downsample.1.running_var"]
    with pytest.raises(ValueError, match=r"missing tensors.*layer2\.0\.downsample\.1\.running_var"):
        load_torch_state_dict(_abstract_resnet18(), sd)


def test_wrong_shape_is_named_and_module_untouched():
    module = _abstract_resnet18()
    sd = _torchvision_state_dict("resnet18", 10, 3, "cifar")
    sd["layer1.1.conv2.weight"] = sd["layer1.1.conv2.weight"][:, :, :1]
    with pytest.raises(ValueError, match=r"wrong shapes.*layer1\.1\.conv2\.weight: expected"):
        load_torch_state_dict(module, sd)
    # Checked before anything is written: conv1 is still the abstract placeholder.
    assert isinstance(module.conv1.kernel.get_value(), jax.ShapeDtypeStruct)


def test_unexpected_tensor_is_named_unless_not_strict():
    sd = _torchvision_state_dict("resnet18", 10, 3, "cifar")
    sd["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"unexpected tensors.*layer5\.0\.conv1\.weight"):
        load_torch_state_dict(_abstract_resnet18(), sd)
    load_torch_state_dict(_abstract_resnet18(), sd, strict=False)


def test_prefix_and_wrong_num_classes(tmp_path):
    sd = _torchvision_state_dict("resnet18", 10, 3, "cifar")
    load_torch_state_dict(
        _abstract_resnet18(), {"module." + k: v for k, v in sd.items()}, prefix="module."
    )
    path = tmp_path / "r18.safetensors"
    save_safetensors(path, sd)
    with pytest.raises(ValueError, match=r"fc\.weight: expected \(7, 512\), got \(10, 512\)"):
        resnet_from_safetensors(path, "resnet18", num_classes=7)
    with pytest.raises(ValueError, match="arch must be one of"):
        resnet_from_safetensors(path, "resnet34")


# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------


def test_safetensors_round_trip_all_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    tensors = {
        "f32": f32,
        "f64": rng.standard_normal((2, 1, 3)),
        "f16": rng.standard_normal(5).astype(np.float16),
        "bf16": f32.astype(ml_dtypes.bfloat16),
        "i64": np.array([-(2**40), 0, 2**40 + 3], np.int64),
        "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "u8": np.arange(7, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }
    path = tmp_path / "t.safetensors"
    save_safetensors(path, tensors, metadata={"format": "pt", "note": "test"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    assert json.loads(raw[8 : 8 + n])["__metadata__"] == {"format": "pt", "note": "test"}

    loaded = load_safetensors(path)
    assert list(loaded) == list(tensors)  # __metadata__ skipped, order kept
    expect_dtype = {"f16": np.float32, "bf16": np.float32}
    for name, want in tensors.items():
        got = loaded[name]
        assert got.dtype == expect_dtype.get(name, want.dtype), name
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, np.asarray(want).astype(got.dtype), err_msg=name)


def test_safetensors_reader_against_hand_written_bytes(tmp_path):
    # Written byte by byte from the format description, not by save_safetensors.
    bf16 = struct.pack("<2H", 0x3F80, 0xC040)  # 1.0, -3.0
    f16 = struct.pack("<2H", 0x3C00, 0xB800)  # 1.0, -0.5
    i64 = struct.pack("<q", -5)
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
        "b": {"dtype": "F16", "shape": [1, 2], "data_offsets": [4, 8]},
        "c": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]},
    }
    text = json.dumps(header).encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + bf16 + f16 + i64)
    t = load_safetensors(path)
    np.testing.assert_array_equal(t["a"], np.array([1.0, -3.0], np.float32))
    np.testing.assert_array_equal(t["b"], np.array([[1.0, -0.5]], np.float32))
    assert t["c"].dtype == np.int64 and t["c"] == -5


def test_safetensors_malformed(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ValueError, match="truncated"):
        load_safetensors(path)
    text = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(8))
    with pytest.raises(ValueError, match="'w'"):
        load_safetensors(path)
    text = json.dumps({"q": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(1))
    with pytest.raises(ValueError, match="unsupported safetensors dtype 'F8_E4M3'"):
        load_safetensors(path)
    with pytest.raises(TypeError, match="complex"):
        save_safetensors(path, {"z": np.zeros(2, np.complex64)})


# ---------------------------------------------------------------------------------------------
# As jaxadv targets
# ---------------------------------------------------------------------------------------------


def test_resnet18_as_target_jitted():
    module = resnet18(num_classes=7, in_channels=1, rngs=nnx.Rngs(0))
    model = jaxadv.from_nnx(module, mean=0.5, std=0.25)
    x = jnp.full((3, 32, 32, 1), 0.5, jnp.float32)
    logits = jax.jit(lambda m, v: m(v))(model, x)
    assert logits.shape == (3, 7)
    assert np.all(np.isfinite(logits))
    assert module.bn1.use_running_average is False  # the caller's module keeps its mode


def test_resnet50_as_target_grey_to_rgb(tmp_path):
    sd = _torchvision_state_dict("resnet50", 4, 3, "imagenet", seed=5)
    path = tmp_path / "r50.safetensors"
    save_safetensors(path, sd)
    module = resnet_from_safetensors(path, "resnet50")
    assert isinstance(module, ResNet)
    model = jaxadv.from_nnx(
        module, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), grey_to_rgb=True
    )
    x = jnp.full((2, 64, 64, 1), 0.3, jnp.float32)
    logits = model(x)
    assert logits.shape == (2, 4)
    assert np.all(np.isfinite(logits))


def test_resnet_rejects_bad_config():
    with pytest.raises(ValueError, match="stem"):
        resnet18(stem="tiny", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="NHWC"):
        nnx.eval_shape(lambda: resnet18(rngs=nnx.Rngs(0)))(jnp.zeros((32, 32, 3)))
