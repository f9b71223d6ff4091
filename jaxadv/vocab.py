"""The names shared by every entry point: data sets, models, attacks, threat norms and eps grids.

``jaxadv attack --data D --model M --attack A --eps E``, a sweep config entry ``{data: D}``,
``{model: M}``, ``{attack: A, eps: E}`` and ``jaxadv demo`` mean the same thing; all go through
this module. Names are case-insensitive everywhere. Every user error is a :class:`SpecError` (a
``ValueError``) whose message says what to give instead.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxadv.engine.summary import eps_label  # noqa: F401 - the one label, named with the vocabulary


class SpecError(ValueError):
    """A data set, model, attack or eps grid that cannot be resolved."""


# ----------------------------------------------------------------------------- data sets
_DATA_HINT = (
    "give 'default', a MedMNIST .npz file, an image folder (one sub-folder per class) or tfds:NAME"
)


MEDMNIST_SPLITS = ("train", "val", "test")


def _is_default(name: str) -> bool:
    return str(name).strip().lower() == "default"


def _is_tfds(name: str) -> bool:
    return str(name).lower().startswith("tfds:")


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

    split = str(split).strip().lower()
    try:
        if _is_default(name):
            if split != "test":
                raise SpecError(
                    f"the embedded default holds the test split only, not {split!r}; "
                    "drop --split or give --split test"
                )
            return data.load_default(channels=channels)
        p = pathlib.Path(name)
        if p.suffix == ".npz" or p.is_file():
            if split not in MEDMNIST_SPLITS:
                raise SpecError(
                    f"unknown split {split!r} for a MedMNIST file; give one of "
                    f"{', '.join(MEDMNIST_SPLITS)}"
                )
            return data.load_medmnist(p, split=split, channels=channels)
        if p.is_dir():
            if size is None:
                raise SpecError("--image-size is required for an image folder")
            return data.load_image_folder(p, size=size, channels=channels or 3)
        if _is_tfds(name):
            try:
                return data.load_tfds(name[5:], split=split, size=size, channels=channels)
            except (ImportError, SpecError):
                raise
            except Exception as e:  # noqa: BLE001 - TFDS's own errors (unknown name, no files)
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise SpecError(f"cannot load {name!r}: {first}") from e
    except ImportError as e:
        raise SpecError(
            f"data {name!r} needs an optional dependency ({e.name or e}); install it with "
            "pip install 'jaxadv[tfds]'"
        ) from e
    except (KeyError, OSError) as e:
        raise SpecError(f"cannot read data {name!r} (split {split!r}): {e}") from e
    raise SpecError(f"data {name!r} not found: {_DATA_HINT}")


def check_dataset_name(name: str) -> None:
    """Cheap existence check (no loading) for config validation."""
    if _is_default(name) or _is_tfds(name):
        return
    if not pathlib.Path(name).exists():
        raise SpecError(f"data {name!r} not found: {_DATA_HINT}")


# ----------------------------------------------------------------------------- models
def zoo_path(spec: str) -> str:
    """The checkpoint file of a ``zoo:NAME`` spec (:mod:`jaxadv.zoo`: the cache, else the copy
    shipped with the package); any other spec unchanged.

    Raises:
        SpecError: an unknown zoo name (the message lists them) or a model not built yet (it says
            which command builds it).
    """
    if not str(spec).startswith("zoo:"):
        return spec
    from jaxadv import zoo

    try:
        return str(zoo.locate(str(spec)[4:]))
    except (ValueError, FileNotFoundError) as e:
        raise SpecError(str(e)) from e


def load_model(spec: str):
    """A :class:`jaxadv.Model` from a shipped reference name, a ``zoo:NAME`` or a checkpoint
    path."""
    from jaxadv import checkpoint

    ref = reference_name(spec)
    if ref is not None:
        return checkpoint.reference_model(ref)
    spec = zoo_path(spec)
    check_model_name(spec)
    try:
        return checkpoint.as_target(*checkpoint.load(pathlib.Path(spec)))
    except checkpoint.CheckpointError as e:
        raise SpecError(str(e)) from e


def reference_name(spec: str) -> str | None:
    """The shipped reference model ``spec`` names (case-insensitive), or None."""
    from jaxadv import checkpoint

    by_lower = {m.lower(): m for m in checkpoint.REFERENCE_MODELS}
    return by_lower.get(str(spec).strip().lower())


def check_model_name(spec: str) -> None:
    """Cheap existence check (no loading) for config validation."""
    from jaxadv import checkpoint

    if reference_name(spec) is not None:
        return
    spec = zoo_path(spec)
    if not pathlib.Path(spec).exists():
        raise SpecError(
            f"model {spec!r} not found: give a shipped reference model "
            f"({', '.join(checkpoint.REFERENCE_MODELS)}), zoo:NAME (`jaxadv zoo list`) or a "
            "checkpoint saved by `jaxadv train`"
        )


# ----------------------------------------------------------------------------- threats and eps
NORMS = ("linf", "l2", "l1", "l0", "patch", "bias")
#: Norms whose budgets are pixel counts (L0: changed pixels; patch: the side of the square).
PIXEL_NORMS = ("l0", "patch")

#: The default unit of eps numbers per norm: L-inf / L2 / L1 numbers are in 1/255 (``8`` means
#: 8/255), L0 numbers are pixel counts, bias-field budgets are log-amplitudes as written.
EPS_SCALE = {"linf": 255.0, "l2": 255.0, "l1": 255.0, "l0": 1.0, "patch": 1.0, "bias": 1.0}

#: The eps grid of ``jaxadv attack`` when ``--eps`` is not given, per norm.
DEFAULT_EPS = {"bias": "0,0.1,0.2,0.4"}
DEFAULT_EPS_OTHER = "0,1,2,4,8"

#: The largest bias-field log-amplitude (``e^3 = 20``: beyond that it is no longer a bias field).
MAX_BIAS_AMPLITUDE = 3.0


def default_eps(norm: str) -> str:
    """The eps grid used when none is given, for a norm of :data:`NORMS`."""
    return DEFAULT_EPS.get(check_norm(norm), DEFAULT_EPS_OTHER)


def check_norm(norm: Any) -> str:
    key = str(norm).strip().lower()
    if key not in NORMS:
        raise SpecError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return key


def threat(norm: str, eps: float = 0.0):
    """The threat value of a norm name: ``LinfBall``, ``L2Ball``, ``L1Ball``, ``L0Pixels``,
    ``Patch`` or ``BiasFieldThreat`` (default degree; :func:`make_attack` sets its options)."""
    import jaxadv

    classes = {
        "linf": jaxadv.LinfBall,
        "l2": jaxadv.L2Ball,
        "l1": jaxadv.L1Ball,
        "l0": jaxadv.L0Pixels,
        "patch": jaxadv.Patch,
        "bias": jaxadv.BiasFieldThreat,
    }
    return classes[check_norm(norm)](eps=eps)


_FRACTION = re.compile(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*")
_PIXELS = re.compile(r"\s*([0-9.eE+-]+)\s*px\s*", re.IGNORECASE)


def parse_eps(value: Any, norm: str = "linf", scale: float | None = None) -> list[float]:
    """An eps grid from the command line or a config, in the threat's own units.

    Accepts a number, a list of numbers and strings, or a comma-separated string. Plain numbers
    are divided by ``scale`` (default :data:`EPS_SCALE`: 1/255 units for L-inf/L2/L1, pixel
    counts for L0); ``'a/b'`` strings are read as written (``'8/255'``, ``'1/2'``); ``'3px'`` is a
    pixel count (L0 only). Bias-field budgets (norm ``bias``) are log-amplitudes ``max |B|``
    as written (``0.2`` lets intensities scale by ``e^±0.2``), at most
    :data:`MAX_BIAS_AMPLITUDE`. Values are rounded to float32 precision so hashes are stable.

    Raises:
        SpecError: an empty grid, a value that is not a number, negative, NaN or infinite, a
        repeated value, ``px`` outside L0, or a bias amplitude above 3.
    """
    norm = check_norm(norm)
    if scale is None:
        scale = EPS_SCALE[norm]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise SpecError(f"eps_scale must be a positive number, got {scale!r}")
    if isinstance(value, str):
        items: Sequence[Any] = [s for s in value.split(",") if s.strip()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise SpecError(f"eps must be numbers (e.g. 0,2,8 or 8/255), got {value!r}")
    out = []
    for it in items:
        val = _eps_value(it, norm, float(scale))
        if not math.isfinite(val) or val < 0:
            raise SpecError(f"eps values must be finite and >= 0, got {it!r}")
        if norm == "bias" and val > MAX_BIAS_AMPLITUDE:
            raise SpecError(
                f"bias-field eps values are log-amplitudes in [0, {MAX_BIAS_AMPLITUDE:g}] (0.2 "
                f"scales intensities by at most e^0.2 = 1.22), got {it!r}"
            )
        out.append(float(f"{val:.9g}"))
    if not out:
        raise SpecError("the eps grid is empty; give at least one budget, e.g. 0,2,8")
    if len(set(out)) != len(out):
        raise SpecError(f"the eps grid has repeated values {out}")
    return out


def _eps_value(it: Any, norm: str, scale: float) -> float:
    if isinstance(it, bool):
        raise SpecError(f"eps values must be numbers, got {it!r}")
    if isinstance(it, (int, float)):
        return float(it) / scale
    if not isinstance(it, str):
        raise SpecError(f"eps values must be numbers, got {it!r}")
    m = _FRACTION.fullmatch(it)
    px = _PIXELS.fullmatch(it)
    if px and norm not in PIXEL_NORMS:
        raise SpecError(
            f"eps {it!r}: pixel counts (px) are budgets of norm l0 only (and patch sides)"
        )
    try:
        if m:
            return float(m.group(1)) / float(m.group(2))
        if px:
            return float(px.group(1))
        return float(it) / scale
    except (ValueError, ZeroDivisionError) as e:
        raise SpecError(
            f"cannot read eps {it!r}; use numbers (in 1/{scale:g} units), 'a/b' fractions "
            "such as 8/255, or pixel counts such as 3px (norm l0)"
        ) from e


# ----------------------------------------------------------------------------- attacks
@dataclasses.dataclass(frozen=True)
class AttackName:
    """One entry of the attack vocabulary.

    Attributes:
        name: the lower-case name (``pgd``, ``apgd-dlr``, ``square``, ...).
        cls: the attack class; its declaration (``oracle``, ``budget_field``, ``restarts_field``,
            ``threats``) says what it reads and which options apply.
        preset: constructor keywords this name fixes (``apgd-dlr``: ``loss='dlr'``).
        factory: builds the attack from ``(threat, **options)`` when the class constructor is not
            the way in (AutoAttack's standard ensemble).
        budget: the option that sets the budget (default: the class's ``budget_field``).
        restarts: the option that sets restarts (default: the class's ``restarts_field``).
        kind: one of :data:`ATTACK_KINDS`: ``'attack'`` (per image, any norm it supports),
            ``'parametric'`` (per image under its own threat set, e.g. the bias field, norm
            ``bias``) or ``'universal'`` (fitted on a data set, then applied; not buildable
            as a per-image attack).
        threat_norms: the norms of a non-``'attack'`` entry (the class declares none).
    """

    name: str
    cls: type
    preset: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    factory: Callable[..., Any] | None = None
    budget: str | None = "<class>"
    restarts: str | None = "<class>"
    kind: str = "attack"
    threat_norms: tuple[str, ...] = ()

    @property
    def budget_field(self) -> str | None:
        return self.cls.budget_field if self.budget == "<class>" else self.budget

    @property
    def restarts_field(self) -> str | None:
        return self.cls.restarts_field if self.restarts == "<class>" else self.restarts

    @property
    def oracle(self) -> str:
        return self.cls.oracle

    @property
    def norms(self) -> list[str]:
        from jaxadv.engine import norm_name

        if self.threat_norms or self.kind != "attack":
            return list(self.threat_norms)
        return [norm_name(t) for t in self.cls.threats]


#: ``'attack'``: per image under a norm ball; ``'parametric'``: per image, the attack returns
#: parameters the library renders (:class:`~jaxadv.BiasField`); ``'universal'``: one perturbation
#: fitted on a data set, then applied (:class:`~jaxadv.AdversarialPatch`,
#: :class:`~jaxadv.UniversalPerturbation`).
ATTACK_KINDS = ("attack", "parametric", "universal")

_UNIVERSAL_USE = {
    "patch": "fitted = jaxadv.AdversarialPatch(target=T, scale_min=S, scale_max=S).fit(key, "
    "model, train_data)",
    "uap": "fitted = jaxadv.UniversalPerturbation(threat=jaxadv.LinfBall(eps=E)).fit(key, model, "
    "train_data)",
}


def _bias_field(*, threat: Any, degree: int = 3, noise_eps: float = 0.0, **options: Any):
    """The bias-field attack: ``degree`` and ``noise_eps`` set its threat
    (:class:`~jaxadv.BiasFieldThreat`), the rest (``num_steps``, ``step_size``, ``noise_step``,
    ``decay``, ``loss``) the attack."""
    import jaxadv

    t = jaxadv.BiasFieldThreat(degree=degree, eps=threat.eps, noise_eps=noise_eps)
    return jaxadv.BiasField(threat=t, **options)


def attack_table() -> dict[str, AttackName]:
    """The attack vocabulary: short names, then every registered attack class by its lower-case
    name."""
    import jaxadv
    from jaxadv.attacks import REGISTRY

    table = {
        "fgsm": AttackName("fgsm", jaxadv.FGSM),
        "pgd": AttackName("pgd", jaxadv.PGD),
        "apgd": AttackName("apgd", jaxadv.APGD),
        "apgd-dlr": AttackName("apgd-dlr", jaxadv.APGD, preset={"loss": "dlr"}),
        "apgdt": AttackName("apgdt", jaxadv.APGDT),
        "fmn": AttackName("fmn", jaxadv.FMN),
        # the standard ensemble: its stages take num_steps (APGD) and square_queries (Square)
        "autoattack": AttackName(
            "autoattack",
            jaxadv.AutoAttack,
            factory=jaxadv.AutoAttack.standard,
            budget="num_steps",
            restarts=None,
        ),
    }
    for cname, cls in sorted(REGISTRY.items()):
        table.setdefault(cname.lower(), AttackName(cname.lower(), cls))
    # the attacks outside the per-image contract of REGISTRY, by their short and class names
    medical = [
        AttackName(
            "bias-field",
            jaxadv.BiasField,
            factory=_bias_field,
            kind="parametric",
            threat_norms=("bias",),
        ),
        AttackName("patch", jaxadv.AdversarialPatch, budget=None, restarts=None, kind="universal"),
        AttackName(
            "uap",
            jaxadv.UniversalPerturbation,
            budget=None,
            restarts=None,
            kind="universal",
            threat_norms=("linf", "l2"),
        ),
    ]
    for entry in medical:
        table[entry.name] = entry
        table.setdefault(entry.cls.__name__.lower(), entry)
    return table


def attack_names() -> list[str]:
    """Every attack name :func:`make_attack` accepts."""
    return list(attack_table())


def lookup_attack(name: Any) -> AttackName:
    """The entry of an attack name (case-insensitive; short names and class names)."""
    table = attack_table()
    key = str(name).strip().lower()
    if key not in table:
        raise SpecError(f"unknown attack {name!r}; choose from {', '.join(table)}")
    return table[key]


def check_per_image(entry: AttackName) -> None:
    """Refuse a universal attack where a per-image attack is needed, saying how to use it."""
    if entry.kind != "universal":
        return
    use = _UNIVERSAL_USE[entry.name]
    raise SpecError(
        f"attack {entry.name!r} is universal: one perturbation is fitted on a training split, "
        f"then applied to held-out images, so it cannot run as a per-image attack here. In "
        f"Python: {use}; then fitted(key, model, x, y) or jaxadv.evaluate(fitted, model, "
        "test_data, [0]). A sweep config fits it on a train split: {attack: "
        f"{entry.name}, eps: [...], fit: {{epochs: 5}}}} (docs/sweeps.md)"
    )


def attack_norm(name: str | AttackName, norm: str | None = None) -> str:
    """The norm a per-image attack runs under: ``norm`` when the attack supports it, else a
    :class:`SpecError`; ``None`` means ``linf`` where supported, else the attack's first norm
    (``bias`` for the bias field, ``l0`` for OnePixel)."""
    entry = name if isinstance(name, AttackName) else lookup_attack(name)
    check_per_image(entry)
    if norm is None:
        norm = "linf" if "linf" in entry.norms else entry.norms[0]
    nrm = check_norm(norm)
    if nrm not in entry.norms:
        raise SpecError(
            f"attack {entry.name!r} supports norm {', '.join(entry.norms)}, not {nrm!r}"
        )
    return nrm


def make_attack(
    name: str,
    *,
    norm: str | None = None,
    eps_max: float = 0.0,
    num_steps: int | None = None,
    restarts: int | None = None,
    options: Mapping[str, Any] | None = None,
    default_num_steps: int | None = None,
):
    """An attack value from its name.

    The budgets of a grid are passed at run time (:func:`jaxadv.evaluate`), so the attack is built
    with ``eps = 0`` (norm balls) or ``eps = eps_max`` (L0, whose pixel *capacity*
    ``num_pixels`` is a static setting sized for the largest budget when not given).

    Args:
        name: a name of :func:`attack_names` (case-insensitive); a universal attack (``patch``,
            ``uap``: fitted on a data set first) is refused with how to use it.
        norm: ``linf``, ``l2``, ``l1``, ``l0``, ``patch`` or ``bias``; refused when the attack
            does not support it. ``None``: the attack's first norm (``linf``; ``bias`` for the
            bias field).
        eps_max: the largest budget of the grid (sizes the L0 capacity).
        num_steps: sets the attack's budget where that budget is ``num_steps``; refused (with the
            right option named) for attacks whose budget is queries, iterations or generations.
        restarts: sets ``num_restarts``; refused for attacks without restarts.
        options: other constructor keywords (``{'num_queries': 1000, 'step_size': 0.01}``).
        default_num_steps: used for ``num_steps`` where it applies and none was given.
    """
    entry = lookup_attack(name)
    nrm = attack_norm(entry, norm)
    opts = dict(options or {})
    fixed = sorted(set(opts) & set(entry.preset))
    if fixed:
        raise SpecError(f"attack {entry.name!r} fixes {', '.join(fixed)}; use another name")
    opts.update(entry.preset)
    _budget_option(entry, "num_steps", num_steps, default_num_steps, entry.budget_field, opts)
    _budget_option(entry, "num_restarts", restarts, None, entry.restarts_field, opts)
    fields = {f.name for f in dataclasses.fields(entry.cls)}
    if nrm == "l0" and "num_pixels" in fields and "num_pixels" not in opts:
        # OnePixel: capacity for the largest budget; each budget uses floor(eps) pixels
        opts["num_pixels"] = max(1, int(eps_max))
    t = threat(nrm, float(eps_max) if nrm == "l0" else 0.0)
    build = entry.factory or entry.cls
    try:
        return build(threat=t, **opts)
    except TypeError as e:
        raise SpecError(
            f"attack {entry.name!r} does not accept the options {sorted(opts)}: {e}"
        ) from e
    except ValueError as e:  # the attack's own validation of its settings
        raise SpecError(f"attack {entry.name!r}: {e}") from e


def _budget_option(entry, what, given, default, field, opts) -> None:
    """Map ``--num-steps`` / ``--restarts`` onto the attack's declared field, or refuse them."""
    flag = {"num_steps": "--num-steps / num_steps", "num_restarts": "--restarts / restarts"}[what]
    if given is None:
        if default is not None and field == what and what not in opts:
            opts[what] = default
        return
    if field != what:
        if field is None:
            why = "has no restarts" if what == "num_restarts" else "has no iteration budget"
            raise SpecError(f"attack {entry.name!r} {why}; drop {flag}")
        raise SpecError(
            f"attack {entry.name!r} has no {what}: its budget is {field}; set it with "
            f"--option {field}=N (config: options: {{{field}: N}}) instead of {flag}"
        )
    if what in opts:
        raise SpecError(f"attack {entry.name!r}: {what} given twice ({flag} and options)")
    opts[what] = given


# ----------------------------------------------------------------------------- durable successes
#: ``grid`` value (sweep configs) meaning "the storage dtype of the data set's images".
GRID_FROM_DATA = "dataset"


def parse_durable(success_margin: Any = None, grid: Any = None, *, dataset_ok: bool = False):
    """The durable-success threat settings of ``--success-margin`` / ``--grid`` or a config's
    ``success_margin`` / ``grid``, checked by the threat's own rules
    (:class:`jaxadv.threats.AbstractThreat`); ``None`` means not given.

    ``success_margin``: a finite number >= 0 (logit units; strings such as ``'1e-3'`` are read as
    numbers, since YAML leaves ``1e-3`` a string). ``grid``: a bit depth 1..16 (``8``, ``'12'``),
    ``'uint8'`` / ``'uint16'``, or, with ``dataset_ok``, :data:`GRID_FROM_DATA` (resolved per data
    set by :func:`dataset_grid`).

    Returns:
        ``{"success_margin": float, "grid": int | str}`` holding only the settings given.

    Raises:
        SpecError: a value the threat would refuse, with what to give instead.
    """
    from jaxadv.threats import grid_bits

    out: dict[str, Any] = {}
    if success_margin is not None:
        m = success_margin
        if isinstance(m, str):
            try:
                m = float(m.strip())
            except ValueError:
                m = success_margin
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m < math.inf:
            raise SpecError(
                f"success_margin must be a finite number >= 0 (logit units; 0 is the plain "
                f"argmax rule, e.g. 1e-3 rejects points on the decision boundary), got "
                f"{success_margin!r}"
            )
        out["success_margin"] = float(m)
    if grid is not None:
        g = grid.strip().lower() if isinstance(grid, str) else grid
        if dataset_ok and g == GRID_FROM_DATA:
            out["grid"] = GRID_FROM_DATA
            return out
        if isinstance(g, str) and g.isdigit():
            g = int(g)
        try:
            out["grid"] = grid_bits(g)
        except ValueError:
            data = f", or {GRID_FROM_DATA!r} (the data set's storage dtype)" if dataset_ok else ""
            raise SpecError(
                f"grid must be a bit depth 1..16 (8, 12, 16) or 'uint8' / 'uint16'{data}, got "
                f"{grid!r}"
            ) from None
    return out


def dataset_grid(ds: Any) -> int:
    """The bit depth of a data set's stored images (``uint8`` -> 8, ``uint16`` -> 16).

    Raises:
        SpecError: the images are stored as floats (no uniform grid) or not as an array.
    """
    from jaxadv.threats import GRID_DTYPES

    dtype = getattr(getattr(ds, "storage", None), "dtype", None)
    name = getattr(dtype, "name", str(dtype))
    if name not in GRID_DTYPES:
        raise SpecError(
            f"grid {GRID_FROM_DATA!r}: data {getattr(ds, 'name', '?')!r} is not stored as "
            f"uint8/uint16 images ({'no image array' if dtype is None else name}); give the bit "
            "depth (8, 12, 16) instead"
        )
    return GRID_DTYPES[name]


def with_durable(attack: Any, settings: Mapping[str, Any]) -> Any:
    """``attack`` with the settings of :func:`parse_durable` set on its threat model."""
    from jaxadv._struct import replace

    if not settings:
        return attack
    if not dataclasses.is_dataclass(getattr(attack, "threat", None)):
        raise SpecError(
            f"attack {type(attack).__name__} has no threat model to set "
            f"{' and '.join(sorted(settings))} on; leave them out"
        )
    try:
        return replace(attack, threat=replace(attack.threat, **settings))
    except ValueError as e:
        raise SpecError(str(e)) from e


def is_black_box(attack: Any) -> bool:
    """Whether ``attack`` reads only the model's outputs (its class's declared oracle)."""
    return type(attack).oracle != "gradient"


def attack_config(attack: Any, eps: Sequence[float] | None = None) -> dict[str, Any]:
    """Every field of an attack value as plain data (``type`` names each value's class); with
    ``eps``, the threat's ``eps`` is recorded as that grid (the budgets actually run)."""
    out = _plain(attack)
    if eps is not None and isinstance(out.get("threat"), dict):
        out["threat"]["eps"] = [float(e) for e in eps]
    return out


def _plain(v: Any) -> Any:
    import numpy as np

    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {
            "type": type(v).__name__,
            **{f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)},
        }
    if isinstance(v, (list, tuple)):
        return [_plain(a) for a in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(a) for k, a in v.items()}
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if callable(v):
        return getattr(v, "__qualname__", getattr(v, "__name__", repr(v)))
    try:
        a = np.asarray(v)
    except Exception:  # noqa: BLE001 - anything else is recorded by its repr
        return repr(v)
    if a.dtype.kind in "biuf":
        a = a.tolist()
        return _plain(a) if isinstance(a, (list, float)) else a
    return repr(v)
