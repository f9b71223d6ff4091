"""Test set-up: 8 fake CPU devices (before JAX starts), strict promotion, shared fixtures."""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("JAXADV_SHARED_DATA", ROOT.parent / "shared" / "data"))
PNEUMONIA = SHARED_DATA / "pneumoniamnist.npz"

requires_pneumonia = pytest.mark.skipif(
    not PNEUMONIA.exists(),
    reason=f"real-data test: {PNEUMONIA} is absent (CI always has it; set JAXADV_SHARED_DATA)",
)


@pytest.fixture(scope="session")
def pneumonia_path() -> pathlib.Path:
    if not PNEUMONIA.exists():
        pytest.skip(f"real-data test: {PNEUMONIA} is absent (set JAXADV_SHARED_DATA)")
    return PNEUMONIA


def float_images_npz(path: pathlib.Path) -> pathlib.Path:
    """A small MedMNIST-layout file whose images are stored as float32 (no integer grid)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.random((6, 28, 28), dtype=np.float32)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (6, 1))
    np.savez(path, **arrays)
    return path


def linear_model(num_classes: int = 2, shape=(4, 4, 1), seed: int = 0):
    """A linear classifier ``logits = flat(x) @ W + b`` as a jaxadv Model."""
    import jaxadv

    d = int(np.prod(shape))
    k1, k2 = jax.random.split(jax.random.key(seed))
    w = jax.random.normal(k1, (d, num_classes), jnp.float32)
    b = 0.1 * jax.random.normal(k2, (num_classes,), jnp.float32)
    return jaxadv.from_apply(_linear_apply, {"w": w, "b": b})


def _linear_apply(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"][None, :]


def _ulp_apply(params, x):
    """A 2-class affine model whose jitted logits differ from its eager ones: traced, class 1
    gains one ulp (as if XLA's fusion rounded differently)."""
    z = x.reshape(x.shape[0], -1) @ params["w"] + params["b"][None, :]
    if isinstance(x, jax.core.Tracer):
        z1 = jax.lax.stop_gradient(z[:, 1])  # nextafter has no derivative: add the ulp as data
        z = z.at[:, 1].add(jnp.nextafter(z1, jnp.float32(jnp.inf)) - z1)
    return z


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class UlpModel:
    """The model of :func:`_ulp_apply` (used by the durable-success tests)."""

    params: dict

    def __call__(self, x):
        return _ulp_apply(self.params, x)


def ulp_model():
    """2 classes on 4x4x1 images: eager logits tie at x = 0.5 everywhere, jitted ones do not."""
    w = jnp.zeros((16, 2), jnp.float32).at[:, 1].set(1.0 / 16)
    return UlpModel(params={"w": w, "b": jnp.array([0.5, 0.0], jnp.float32)})


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module. Each XLA:CPU executable keeps a few
    memory mappings until it is freed; the whole suite compiles thousands of programs, and one
    process would otherwise reach the kernel's map limit (vm.max_map_count, 65530) and crash
    inside the compiler with a segmentation fault."""
    yield
    import gc

    jax.clear_caches()
    gc.collect()
