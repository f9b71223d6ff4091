"""The names shared by the command line and sweep configs: data sets, models and attacks.

``jaxadv attack --data D --model M --attack A`` and a sweep config entry ``{data: D}``,
``{model: M}``, ``{attack: A}`` mean the same thing; both go through these three functions. Every
user error is a :class:`SpecError` (a ``ValueError``) whose message says what to give instead.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping
from typing import Any


class SpecError(ValueError):
    """A data set, model or attack name that cannot be resolved."""


# ----------------------------------------------------------------------------- data sets
def load_dataset(
    name: str,
    split: str = "test",
    size: int | None = None,
    channels: int | None = None,
):
    """A :class:`jaxadv.data.Dataset` from a name: ``'default'`` (the shipped PneumoniaMNIST test
    split), a MedMNIST ``.npz`` file, an image folder (one sub-folder per class, needs ``size``) or
    ``tfds:NAME``. Nothing is converted to float until a batch is asked for."""
    from jaxadv import data

    if name == "default":
        return data.load_default(channels=channels)
    p = pathlib.Path(name)
    if p.suffix == ".npz" or p.is_file():
        return data.load_medmnist(p, split=split, channels=channels)
    if p.is_dir():
        if size is None:
            raise SpecError("--image-size is required for an image folder")
        return data.load_image_folder(p, size=size, channels=channels or 3)
    if name.startswith("tfds:"):
        return data.load_tfds(name[5:], split=split, size=size, channels=channels)
    raise SpecError(
        f"data {name!r} not found: give 'default', a MedMNIST .npz file, an image folder "
        "(one sub-folder per class) or tfds:NAME"
    )


def check_dataset_name(name: str) -> None:
    """Cheap existence check (no loading) for config validation."""
    if name == "default" or name.startswith("tfds:"):
        return
    if not pathlib.Path(name).exists():
        raise SpecError(
            f"data {name!r} not found: give 'default', a MedMNIST .npz file, an image folder "
            "(one sub-folder per class) or tfds:NAME"
        )


# ----------------------------------------------------------------------------- models
def load_model(spec: str):
    """A :class:`jaxadv.Model` from a shipped reference name or a checkpoint path."""
    from jaxadv import checkpoint

    if spec in checkpoint.REFERENCE_MODELS:
        return checkpoint.reference_model(spec)
    check_model_name(spec)
    from jaxadv.models import from_nnx

    try:
        module, meta = checkpoint.load(pathlib.Path(spec))
    except checkpoint.CheckpointError as e:
        raise SpecError(str(e)) from e
    return from_nnx(module, mean=meta.get("mean"), std=meta.get("std"))


def check_model_name(spec: str) -> None:
    """Cheap existence check (no loading) for config validation."""
    from jaxadv import checkpoint

    if spec in checkpoint.REFERENCE_MODELS:
        return
    if not pathlib.Path(spec).exists():
        raise SpecError(
            f"model {spec!r} not found: give a shipped reference model "
            f"({', '.join(checkpoint.REFERENCE_MODELS)}) or a checkpoint saved by `jaxadv train`"
        )


# ----------------------------------------------------------------------------- attacks
NORMS = ("linf", "l2", "l1", "l0")

#: Names of attacks that only query the model's outputs (their success-vs-queries curve is
#: reported); an attack class can also declare ``black_box = True``.
BLACK_BOX = frozenset(
    {"square", "nes", "onepixel", "dgde", "simba", "zoo", "boundary", "hsja", "hopskipjump"}
)


def _threat(norm: str, eps: float):
    import jaxadv

    classes = {
        "linf": jaxadv.LinfBall,
        "l2": jaxadv.L2Ball,
        "l1": jaxadv.L1Ball,
        # at most eps changed pixels (OnePixel, DGDE); looked up lazily so the vocabulary does not
        # depend on which attacks are installed
        "l0": getattr(jaxadv, "L0Pixels", None),
    }
    key = str(norm).lower()
    if key not in classes:
        raise SpecError(f"--norm must be linf, l2, l1 or l0, got {norm!r}")
    if classes[key] is None:
        raise SpecError("norm l0 needs jaxadv.L0Pixels, which this jaxadv does not provide")
    return classes[key](eps=eps)


def eps_label(norm: str, eps: float) -> str:
    """A budget as people write it: ``8/255`` (L-inf), ``0.5`` (L2, L1), ``3 px`` (L0)."""
    if norm == "l0":
        return f"{eps:g} px"
    if norm == "linf":
        return f"{round(eps * 255, 3):g}/255"
    return f"{eps:.4g}"


def _table() -> dict[str, Callable[..., Any]]:
    import jaxadv

    return {
        "fgsm": lambda t, n, r, o: jaxadv.FGSM(threat=t, **o),
        "pgd": lambda t, n, r, o: jaxadv.PGD(threat=t, num_steps=n, num_restarts=r, **o),
        "apgd": lambda t, n, r, o: jaxadv.APGD(threat=t, num_steps=n, num_restarts=r, **o),
        "apgd-dlr": lambda t, n, r, o: jaxadv.APGD(threat=t, num_steps=n, loss="dlr", **o),
        "apgdt": lambda t, n, r, o: jaxadv.APGDT(threat=t, num_steps=n, **o),
        "fmn": lambda t, n, r, o: jaxadv.FMN(threat=t, num_steps=n, **o),
        "autoattack": lambda t, n, r, o: jaxadv.AutoAttack.standard(t, num_steps=n, **o),
    }


def attack_names() -> list[str]:
    """The attack vocabulary: the CLI's short names, then every registered attack class."""
    from jaxadv.attacks import REGISTRY

    names = list(_table())
    names += [c for c in sorted(REGISTRY) if c.lower() not in names]
    return names


def make_attack(
    name: str,
    eps: float = 0.0,
    *,
    norm: str = "linf",
    num_steps: int = 20,
    restarts: int = 1,
    options: Mapping[str, Any] | None = None,
):
    """An attack value from its name.

    Short names (``fgsm``, ``pgd``, ``apgd``, ``apgd-dlr``, ``apgdt``, ``fmn``, ``autoattack``) take
    ``num_steps`` and ``restarts`` the way ``jaxadv attack`` does; any other registered attack class
    (case-insensitive, e.g. ``Square`` once registered) is built as
    ``Class(threat=..., num_steps=..., **options)``, ``num_steps`` only when the class has that
    field. ``options`` are extra constructor keywords (e.g. ``step_size``).
    """
    from jaxadv.attacks import REGISTRY

    opts = dict(options or {})
    t = _threat(norm, eps)
    key = str(name).lower()
    table = _table()
    try:
        if key in table:
            return table[key](t, num_steps, restarts, opts)
        by_lower = {k.lower(): v for k, v in REGISTRY.items()}
        if key in by_lower:
            cls = by_lower[key]
            fields = {f.name for f in dataclasses.fields(cls)}
            if "num_steps" in fields and "num_steps" not in opts:
                opts["num_steps"] = num_steps
            if "num_pixels" in fields and "num_pixels" not in opts and str(norm).lower() == "l0":
                # OnePixel: capacity for the largest budget; each budget uses floor(eps) pixels
                opts["num_pixels"] = max(1, int(eps))
            if "num_restarts" in fields and "num_restarts" not in opts and restarts != 1:
                opts["num_restarts"] = restarts
            return cls(threat=t, **opts)
    except TypeError as e:
        raise SpecError(f"attack {name!r} does not accept these options {sorted(opts)}: {e}") from e
    except ValueError as e:  # the attack's own validation of its settings
        raise SpecError(f"attack {name!r}: {e}") from e
    raise SpecError(f"unknown attack {name!r}; choose from {', '.join(attack_names())}")


def is_black_box(name: str, attack: Any) -> bool:
    """Whether ``attack`` only queries outputs (declared on the class, or a known black-box name)."""
    declared = getattr(type(attack), "black_box", None)
    if isinstance(declared, bool):
        return declared
    return str(name).lower() in BLACK_BOX or type(attack).__name__.lower() in BLACK_BOX
