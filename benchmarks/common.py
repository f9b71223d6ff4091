"""Shared pieces of the benchmarks: the three target models, timing, and result tables.

Timing rules, used by every benchmark here: the first call (trace + compile + one run) is reported
apart from the steady state; the steady state is the median of ``repeats`` further calls, each
ending in ``jax.block_until_ready``; the minimum is kept too, because on a shared machine it is the
least noisy estimate of the quiet-machine time. Calls that are compared with each other (an attack
and its gradient limit, jaxadv and a peer) are timed *interleaved*, one repeat of each in turn, so
that load from other processes hits both alike.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent

#: Robust accuracies of two libraries "agree" within this many points (or 2 examples, if more).
AGREE_TOL = 0.05


def tol(batch: int) -> float:
    """The agreement tolerance on a batch of ``batch`` examples."""
    return max(AGREE_TOL, 2.0 / batch)


def key() -> jax.Array:
    """The one PRNG key of every benchmark run (results comparable across runs)."""
    return jax.random.key(0)


def run_attack(attack: Any, model: Any, x: Any, y: Any) -> Any:
    return attack(key(), model, x, y, validate=False)


#: Model name -> (input H = W, channels, classes).
MODELS = {
    "small_cnn": (28, 1, 2),
    "resnet18": (32, 3, 10),
    "resnet50": (224, 3, 1000),
}
MODEL_LABELS = {
    "small_cnn": "SmallCNN 28x28x1",
    "resnet18": "ResNet-18 32x32x3",
    "resnet50": "ResNet-50 224x224x3",
}


@dataclasses.dataclass
class Target:
    """A benchmark target: the jaxadv model, its NNX module, and a batch source."""

    name: str
    model: Any  # jaxadv.Model
    module: Any  # the flax.nnx module (eval mode), for porting to torch
    mean: np.ndarray | None
    std: np.ndarray | None
    x_all: np.ndarray
    y_all: np.ndarray

    def batch(self, b: int) -> tuple[jax.Array, jax.Array]:
        if b > len(self.x_all):
            reps = -(-b // len(self.x_all))
            x = np.concatenate([self.x_all] * reps)[:b]
            y = np.concatenate([self.y_all] * reps)[:b]
        else:
            x, y = self.x_all[:b], self.y_all[:b]
        return jnp.asarray(x), jnp.asarray(y, jnp.int32)


def build_target(name: str, n: int = 64, dtype: str = "float32") -> Target:
    """``small_cnn``: the shipped reference CNN on the shipped PneumoniaMNIST test images.
    ``resnet18`` / ``resnet50``: randomly initialised (seed 0) torchvision-layout ResNets on
    uniform random images labelled with the model's own prediction (clean accuracy 100%), since no
    trained weights can be fetched here; throughput does not depend on the weights.

    ``dtype='bfloat16'`` runs the network in bf16 (parameters and activations) while the attack
    keeps its iterate, projection and loss in float32 (mixed precision).
    """
    from flax import nnx

    import jaxadv
    from jaxadv.checkpoint import load_reference
    from jaxadv.nn import resnet18, resnet50

    if name == "small_cnn":
        from jaxadv.data import load_default

        module, meta = load_reference("small_cnn_clean")
        mean = np.asarray(meta["mean"], np.float32)
        std = np.asarray(meta["std"], np.float32)
        xs, ys = load_default().arrays()
        x_all, y_all = xs[: max(n, 1)], ys[: max(n, 1)].astype(np.int32)
    elif name in ("resnet18", "resnet50"):
        size, k, c = MODELS[name]
        build = resnet18 if name == "resnet18" else resnet50
        module = build(num_classes=c, in_channels=k, rngs=nnx.Rngs(0))
        module.eval()
        mean = std = None
        rng = np.random.default_rng(0)
        x_all = rng.uniform(0, 1, (n, size, size, k)).astype(np.float32)
        y_all = None
    else:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    model = jaxadv.from_nnx(module, mean=mean, std=std)
    if y_all is None:
        logits = jax.jit(lambda m, x: m(x))(model, jnp.asarray(x_all))
        y_all = np.asarray(jnp.argmax(logits, axis=1), np.int32)
    if dtype != "float32":
        model = mixed_precision(model, jnp.dtype(dtype))
    return Target(name, model, module, mean, std, x_all, y_all)


class _CastApply:
    """``apply_fn`` evaluated in ``dtype``, logits returned in float32 (hashable: a static field)."""

    def __init__(self, fn: Callable, dtype: Any):
        self.fn, self.dtype = fn, jnp.dtype(dtype)

    def __call__(self, params, x):
        return self.fn(params, x.astype(self.dtype)).astype(jnp.float32)

    def __hash__(self):
        return hash((self.fn, self.dtype))

    def __eq__(self, other):
        return isinstance(other, _CastApply) and (self.fn, self.dtype) == (other.fn, other.dtype)


def mixed_precision(model: Any, dtype: Any) -> Any:
    """The network in ``dtype`` (e.g. bf16 on a GPU; weights cast once), the attack's iterate,
    projection and loss in float32."""
    from jaxadv.models import Model

    params = jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, model.params
    )
    return Model(
        apply_fn=_CastApply(model.apply_fn, dtype),
        params=params,
        mean=model.mean,
        std=model.std,
        grey_to_rgb=model.grey_to_rgb,
    )


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------


def _once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def time_interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, dict]:
    """First call of each, then ``repeats`` rounds calling each once in turn.

    Returns ``{name: {"first_s", "steady_s" (median), "min_s", "compile_s"}}``, where
    ``compile_s = first_s - steady_s`` (trace + compile; the first run itself is subtracted).
    """
    first = {k: _once(f) for k, f in fns.items()}
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for k, f in fns.items():
            runs[k].append(_once(f))
    out = {}
    for k in fns:
        med = statistics.median(runs[k])
        out[k] = {
            "first_s": first[k],
            "steady_s": med,
            "min_s": min(runs[k]),
            "compile_s": max(first[k] - med, 0.0),
        }
    return out


def rnd(v: Any, digits: int = 4) -> Any:
    if isinstance(v, float):
        return float(f"{v:.{digits}g}")
    return v


# ---------------------------------------------------------------------------------------------
# device facts
# ---------------------------------------------------------------------------------------------


def device_memory_bytes() -> tuple[int, str]:
    """Memory an attack may use on the default device, and where the number comes from."""
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory stats raise various errors
        stats = {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]), f"{dev.device_kind} bytes_limit"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    return int(total), "host RAM (CPU: assumes the whole RAM is available to one process)"


def matmul_peak_flops(n: int, dtype: Any = jnp.float32, repeats: int = 5) -> float:
    """Measured FLOP/s of a jitted ``n x n @ n x n`` matmul: the practical peak of the device."""
    k = jax.random.key(0)
    a = jax.random.normal(k, (n, n), dtype)
    b = jax.random.normal(jax.random.fold_in(k, 1), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    t = time_interleaved({"mm": lambda: f(a, b)}, repeats)["mm"]["min_s"]
    return 2.0 * n**3 / t


def compiled_flops(fn: Callable, *args: Any) -> float | None:
    """FLOPs XLA counts for one call of ``jax.jit(fn)(*args)`` (None if the backend does not say)."""
    try:
        ca = jax.jit(fn).lower(*args).compile().cost_analysis()
    except Exception:  # noqa: BLE001 - cost analysis is best effort on every backend
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca or "flops" not in ca:
        return None
    return float(ca["flops"])


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------


def md_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |\n" for r in rows)
