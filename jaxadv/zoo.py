"""A zoo of attack targets on PneumoniaMNIST, built by one deterministic recipe and loaded by name.

Each :class:`ZooEntry` of :data:`ZOO` names an architecture (a key of
:data:`jaxadv.checkpoint.ARCHITECTURES` with its keyword arguments, sized for 28×28 grey images
and a CPU), a training objective (clean, PGD-AT ``'madry'``, ``'trades'``, ``'mart'``), epochs
and a seed. :func:`build` trains an entry with :func:`jaxadv.train.train` on the user's
PneumoniaMNIST file (MedMNIST layout; nothing is downloaded) and saves it in the cache;
:func:`load` / :func:`model` read it back, like :func:`jaxadv.checkpoint.load_reference` /
:func:`~jaxadv.checkpoint.reference_model` do for the shipped models.

The recipe is fixed: AdamW (weight decay 0.01) with cosine decay from ``lr``, batch 128,
random-shift augmentation (2 px), normalisation from the training split, the epoch with the best
validation balanced accuracy kept, PGD with random start for the adversarial objectives (L∞
``eps``, ``at_steps`` steps of ``eps / 2``, eval-mode batch norm while crafting). The same entry,
data and seed give bit-identical weights on CPU (the SHA-256 in the metadata).

Cache folder: ``$JAXADV_CACHE/zoo``, else ``$XDG_CACHE_HOME/jaxadv/zoo``, else
``~/.cache/jaxadv/zoo``. Build from the shell with ``jaxadv zoo build [NAME ...] --data FILE``.

Example:
    >>> from jaxadv import zoo
    >>> zoo.ZOO["vgg_trades"].objective, zoo.ZOO["vgg_trades"].architecture
    ('trades', 'vgg')
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import platform
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

PathLike = str | os.PathLike
logger = logging.getLogger(__name__)

OBJECTIVES = ("clean", "madry", "trades", "mart")
_SUFFIX = {"clean": "clean", "madry": "pgdat", "trades": "trades", "mart": "mart"}


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One zoo model: what to build and how long to train it.

    Attributes:
        name: the name :func:`load` takes.
        architecture: a key of :data:`jaxadv.checkpoint.ARCHITECTURES`.
        kwargs: its constructor keyword arguments (JSON values; ``num_classes``/``in_channels``
            included).
        objective: ``'clean'``, ``'madry'`` (PGD-AT), ``'trades'`` or ``'mart'``.
        epochs: passes over the training split.
        seed: initialisation, shuffling, augmentation and attack starts.
        lr: peak learning rate (cosine decay to 0).
        eps: L∞ training radius of the adversarial objectives (pixel units).
        at_steps: PGD steps of the inner maximiser.
        beta: KL weight of TRADES / MART.
        num_examples: train on a seeded random subset of this size (``None``: all; for tests).
    """

    name: str
    architecture: str
    kwargs: Mapping[str, Any]
    objective: str = "clean"
    epochs: int = 10
    seed: int = 0
    lr: float = 1e-3
    eps: float = 4 / 255
    at_steps: int = 5
    beta: float = 6.0
    num_examples: int | None = None


_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    # the reference SmallCNN (jaxadv/assets/MODELS.md)
    "cnn": ("small_cnn", {"num_classes": 2, "in_channels": 1, "width": 16}),
    # ResNet-18 at full depth, CIFAR stem, narrowed to widths 8-16-32-64 (torchvision: 64-...-512)
    "resnet18": ("resnet18", {"num_classes": 2, "in_channels": 1, "width": 8}),
    # VGG-style: 4 conv + BN layers in two pooled stages, a 64-wide classifier
    "vgg": (
        "vgg",
        {
            "config": [16, 16, "M", 32, 32, "M"],
            "batch_norm": True,
            "hidden": 64,
            "num_classes": 2,
            "in_channels": 1,
        },
    ),
    # DenseNet-BC: growth 12, blocks (4, 4, 4), 16 stem channels
    "densenet": (
        "densenet",
        {
            "growth_rate": 12,
            "block_config": [4, 4, 4],
            "num_init_features": 16,
            "bn_size": 4,
            "num_classes": 2,
            "in_channels": 1,
        },
    ),
}
# Epochs per (architecture, objective): sized so each entry builds in minutes on a 2-core CPU
# (measured times in benchmarks/ZOO.md). Adversarial versions: the SmallCNN and the VGG.
_PLAN = {
    ("cnn", "clean"): 10,
    ("resnet18", "clean"): 6,
    ("vgg", "clean"): 8,
    ("densenet", "clean"): 8,
    ("cnn", "madry"): 6,
    ("vgg", "madry"): 5,
    ("cnn", "trades"): 6,
    ("cnn", "mart"): 6,
    ("vgg", "trades"): 5,
    ("vgg", "mart"): 5,
}


def _entry(arch: str, objective: str, epochs: int) -> ZooEntry:
    name = f"{arch}_{_SUFFIX[objective]}"
    architecture, kwargs = _ARCHS[arch]
    return ZooEntry(name, architecture, kwargs, objective, epochs)


#: The zoo: name -> :class:`ZooEntry`.
ZOO: dict[str, ZooEntry] = {e.name: e for e in (_entry(a, o, n) for (a, o), n in _PLAN.items())}


def cache_dir() -> pathlib.Path:
    """The zoo's cache folder (see the module docstring for the environment variables)."""
    if os.environ.get("JAXADV_CACHE"):
        root = pathlib.Path(os.environ["JAXADV_CACHE"]).expanduser()
    elif os.environ.get("XDG_CACHE_HOME"):
        root = pathlib.Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "jaxadv"
    else:
        root = pathlib.Path.home() / ".cache" / "jaxadv"
    return root / "zoo"


def entry(name: str | ZooEntry) -> ZooEntry:
    """The :class:`ZooEntry` named ``name`` (an entry is returned as is)."""
    if isinstance(name, ZooEntry):
        return name
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; the zoo has {', '.join(ZOO)}")
    return ZOO[name]


def _check_entry(e: ZooEntry) -> None:
    if e.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {e.objective!r}")
    if e.epochs < 1 or e.at_steps < 1 or e.lr <= 0 or e.eps <= 0:
        raise ValueError(
            f"need epochs >= 1, at_steps >= 1, lr > 0 and eps > 0, got {e.epochs}, "
            f"{e.at_steps}, {e.lr}, {e.eps}"
        )


def _path(name: str, cache: PathLike | None) -> pathlib.Path:
    from jaxadv._io import is_safe_name

    if not is_safe_name(name):
        raise ValueError(f"zoo name {name!r} must be a plain file name (letters, digits, _ - .)")
    return pathlib.Path(cache if cache is not None else cache_dir()) / f"{name}.msgpack"


def _adversarial(e: ZooEntry):
    import jaxadv
    from jaxadv.train import AdversarialTraining

    if e.objective == "clean":
        return None
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=e.eps), num_steps=e.at_steps, step_size=e.eps / 2)
    if e.objective == "madry":
        return AdversarialTraining(attack=pgd)
    return AdversarialTraining(attack=pgd, objective=e.objective, beta=e.beta)


def build(
    name: str | ZooEntry,
    data: PathLike,
    cache: PathLike | None = None,
    *,
    robust_steps: int = 10,
) -> pathlib.Path:
    """Train zoo entry ``name`` on ``data`` and save it as ``<cache>/<name>.msgpack`` (+ ``.json``).

    Args:
        name: a key of :data:`ZOO`, or a :class:`ZooEntry` (custom or shortened entries).
        data: a PneumoniaMNIST ``.npz`` in MedMNIST layout (``train``/``val``/``test`` splits;
            other sources follow :func:`jaxadv.splits.training_splits`).
        cache: the folder to write (default :func:`cache_dir`).
        robust_steps: PGD steps of the robust accuracy recorded at the entry's ``eps``
            (0: skip it).

    Returns:
        The path of the metadata file. The metadata records test accuracy, PGD robust accuracy,
        validation metrics of the kept epoch, seconds, the entry, normalisation, versions,
        device and the weights' SHA-256.
    """
    import jax
    from flax import nnx

    import jaxadv
    from jaxadv import checkpoint
    from jaxadv.report import git_commit
    from jaxadv.splits import training_splits
    from jaxadv.train import evaluate, random_shift, train
    from jaxadv.train_options import make_optimizer

    e = entry(name)
    _check_entry(e)
    out = _path(e.name, cache)
    if e.architecture not in checkpoint.ARCHITECTURES:
        raise ValueError(f"unknown architecture {e.architecture!r}")
    if not pathlib.Path(data).exists():
        raise FileNotFoundError(
            f"data file {data} not found: give the PneumoniaMNIST .npz (MedMNIST layout)"
        )
    splits = training_splits(str(data), seed=e.seed)
    x, y = splits.train.arrays()
    xv, yv = splits.val.arrays()
    if splits.test is None:
        raise ValueError(f"{data} has no test split: the zoo records test accuracy")
    xt, yt = splits.test.arrays()
    if e.num_examples is not None and e.num_examples < len(y):
        idx = np.sort(np.random.default_rng(e.seed).permutation(len(y))[: e.num_examples])
        x, y = x[idx], y[idx]
    mean, std = [float(x.mean())], [float(x.std())]
    batch = min(128, len(y))
    tx = make_optimizer(
        e.lr, total_steps=e.epochs * (len(y) // batch), schedule="cosine", weight_decay=1e-2
    )
    net = checkpoint.ARCHITECTURES[e.architecture](**dict(e.kwargs), rngs=nnx.Rngs(e.seed))
    logger.info(
        "zoo %s: %s, %s, %d epochs on %d examples",
        e.name,
        e.architecture,
        e.objective,
        e.epochs,
        len(y),
    )
    t0 = time.perf_counter()
    hist = train(
        net,
        x,
        y,
        epochs=e.epochs,
        batch_size=batch,
        optimizer=tx,
        key=e.seed,
        adversarial=_adversarial(e),
        val=(xv, yv),
        mean=mean,
        std=std,
        augment=random_shift(2),
    )
    seconds = time.perf_counter() - t0
    test_acc = evaluate(net, xt, yt, mean=mean, std=std)
    robust = None
    if robust_steps:
        pgd = jaxadv.PGD(
            threat=jaxadv.LinfBall(eps=e.eps), num_steps=robust_steps, step_size=e.eps / 4
        )
        robust = {
            "value": evaluate(net, xt, yt, mean=mean, std=std, attack=pgd, key=e.seed),
            "attack": f"PGD-{robust_steps} Linf eps={255 * e.eps:g}/255, step eps/4, random "
            "start, key=seed",
            "eps": e.eps,
        }
    best = [h for h in hist if h.get("best")]
    if not best:  # e.g. every validation metric NaN: nothing to keep
        raise ValueError(
            f"zoo build {e.name}: no epoch improved the validation metric (diverged?); try "
            "another learning rate or more epochs"
        )
    kept = max(best, key=lambda h: h["epoch"])
    d = jax.devices()[0]
    meta = {
        "architecture": e.architecture,
        "kwargs": dict(e.kwargs),
        "mean": mean,
        "std": std,
        "input": "float32 [B, 28, 28, 1] pixels in [0, 1] (normalise with mean/std)",
        "dataset": pathlib.Path(data).name,
        "zoo": {k: v for k, v in dataclasses.asdict(e).items() if k != "kwargs"},
        "test_accuracy": test_acc,
        "robust_accuracy": robust,
        "val_balanced_accuracy": kept["val_balanced_accuracy"],
        "kept_epoch": kept["epoch"],
        "seed": e.seed,
        "training": {
            "recipe": "adamw(cosine_decay(lr), weight_decay=0.01), batch 128, random_shift(2), "
            "best val balanced accuracy kept",
            "seconds": round(seconds, 1),
            "final_train_loss": hist[-1]["loss"],
        },
        "device": f"{d.platform} ({platform.machine()}, {os.cpu_count()} cores)",
        "git_commit": git_commit(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    return checkpoint.save(out, net, meta)


def _shipped(name: str) -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parent / "assets" / "zoo" / f"{name}.msgpack"


def _located(name: str, cache: PathLike | None) -> pathlib.Path:
    """Where model ``name`` is: the cache when built there, else the copy shipped in
    ``jaxadv/assets/zoo`` (which may not exist)."""
    e = entry(name)
    p = _path(e.name, cache)
    if p.exists() and p.with_suffix(".json").exists():
        return p
    return _shipped(e.name)


def is_built(name: str, cache: PathLike | None = None) -> bool:
    """Whether zoo model ``name`` is in the cache or shipped with the package."""
    p = _located(name, cache)
    return p.exists() and p.with_suffix(".json").exists()


def locate(name: str, cache: PathLike | None = None) -> pathlib.Path:
    """The checkpoint file of built zoo model ``name`` (the cache's, else the shipped copy).

    Raises:
        ValueError: an unknown name (the message lists the zoo).
        FileNotFoundError: not built yet (the message says which command builds it).
    """
    e = entry(name)
    if not is_built(e.name, cache):
        raise FileNotFoundError(
            f"zoo model {e.name!r} is not built in {_path(e.name, cache).parent}: run "
            f"`jaxadv zoo build {e.name} --data PNEUMONIAMNIST.npz`"
        )
    return _located(e.name, cache)


def markdown_table(cache: PathLike | None = None) -> str:
    """A Markdown table of the built zoo models: test and PGD robust accuracy, size, training time,
    commit and device, read from each model's metadata (nothing is re-measured)."""
    rows = [
        "| model | architecture | objective | epochs | test acc (%) | PGD robust acc (%) | params "
        "| file | train time | commit | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in ZOO.items():
        if not is_built(name, cache):
            rows.append(
                f"| `{name}` | {e.architecture} | {e.objective} | {e.epochs} | not built "
                "| | | | | | |"
            )
            continue
        m = json.loads(_located(name, cache).with_suffix(".json").read_text())
        try:
            r = m.get("robust_accuracy")
            robust = "-" if r is None else f"{100 * r['value']:.2f}"
            rows.append(
                f"| `{name}` | {e.architecture} | {e.objective} | {m['zoo']['epochs']} | "
                f"{100 * m['test_accuracy']:.2f} | "
                f"{robust} | "
                f"{m['num_params']:,} | {m['bytes'] / 1e6:.2f} MB | "
                f"{m['training']['seconds']:.0f} s | {m.get('git_commit')} | {m['device']}, "
                f"JAX {m['versions']['jax']} |"
            )
        except (AttributeError, KeyError, TypeError, ValueError):  # not written by build()
            rows.append(
                f"| `{name}` | {e.architecture} | {e.objective} | {e.epochs} | metadata "
                "incomplete: rebuild with `jaxadv zoo build --force` | | | | | | |"
            )
    return "\n".join(rows) + "\n"


def load(name: str, cache: PathLike | None = None) -> tuple[Any, dict[str, Any]]:
    """A built zoo model as ``(module, meta)`` (module in eval mode): from the cache, else the
    copy shipped in ``jaxadv/assets/zoo``.

    Raises:
        FileNotFoundError: not built yet (the message says which command builds it).
    """
    from jaxadv import checkpoint

    return checkpoint.load(locate(name, cache))


def model(name: str, cache: PathLike | None = None) -> Any:
    """A built zoo model as a ready attack target (:class:`jaxadv.Model`, eval mode,
    normalisation baked in: inputs are pixels in ``[0, 1]``)."""
    from jaxadv import checkpoint

    return checkpoint.as_target(*load(name, cache))


__all__ = [
    "OBJECTIVES",
    "ZOO",
    "ZooEntry",
    "build",
    "cache_dir",
    "entry",
    "is_built",
    "locate",
    "load",
    "model",
]
