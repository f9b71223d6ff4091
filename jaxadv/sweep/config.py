"""Sweep configs: parsing, validation with clear errors, hashing, and expansion into cells.

A config is a YAML or JSON mapping (see ``docs/sweeps.md``)::

    name: smoke
    seeds: [0]
    batch_size: 64
    eps: [0, 2, 8]          # in 1/255 units (eps_scale: 255); "8/255" strings also work
    models: [small_cnn_clean, small_cnn_pgdat]
    datasets: [{data: default, num_examples: 64}]
    attacks: [fgsm, {attack: pgd, num_steps: 5}]

A *cell* is one (model, dataset, attack with its whole eps grid, seed); its id is built from the
labels (stable, readable, a file name) and its hash from everything that decides its results.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from jaxadv.cli_segmentation import is_segmentation_model
from jaxadv.sweep import detection as det
from jaxadv.sweep import recheck as rc
from jaxadv.sweep import segmentation as seg
from jaxadv.sweep import transfer as tr
from jaxadv.sweep import universal as univ
from jaxadv.sweep._fields import (  # noqa: F401  (ConfigError, is_label, MAX_LABEL: public here)
    MAX_LABEL,
    ConfigError,
    _as_list,
    _int,
    _keys,
    _label,
    _str,
    _unique,
    is_label,
)
from jaxadv.vocab import (
    EPS_SCALE,
    GRID_FROM_DATA,
    NORMS,
    SpecError,
    attack_norm,
    check_dataset_name,
    check_model_name,
    lookup_attack,
    make_attack,
    parse_durable,
    parse_eps,
    with_durable,
)
from jaxadv.vocab_rules import check_rule_spec

FORMAT = "jaxadv-sweep/1"

#: Settings that change neither which cells exist nor their per-example results: a resumed sweep
#: may change them freely (results do not depend on the batch size, by construction).
UNHASHED = ("name", "description", "batch_size", "num_images")

_TOP = {
    "name": "a short name for the report",
    "description": "free text for the report",
    "seed": "one PRNG seed (or use seeds)",
    "seeds": "list of PRNG seeds: one cell per seed",
    "batch_size": "examples per device per step (default 128)",
    "num_images": "adversarial examples kept per cell for image grids (default 6)",
    "num_examples": "default number of examples per data set (default: all)",
    "split": "default split (default test)",
    "norm": "default threat model: linf, l2, l1, l0, patch or bias (default: each attack's own, "
    "linf where it supports it)",
    "eps": "default eps grid",
    "eps_scale": "eps numbers are divided by this (default 255: 1/255 units; pixel counts and "
    "bias-field log-amplitudes are not scaled)",
    "num_steps": "default iterations of the attacks whose budget is num_steps (default 20)",
    "restarts": "default restarts of the attacks that have restarts (default 1)",
    "success_margin": "default success margin kappa in logit units (default 0: argmax rule)",
    "grid": "default storage grid of the results: 8, 12, 16, uint8, uint16 or dataset",
    "models": "list of models",
    "datasets": "list of data sets",
    "attacks": "list of attacks",
    "detectors": "fitted detector files (jaxadv.detect.save), each with the model it belongs to",
    "surrogate": "models (labels of models:, 'all', or ensembles) every attack is crafted on",
    "recheck": "re-check every success outside the attack's program: eager, jit or float64",
}
_MODEL_KEYS = {"model", "label"}
_DATA_KEYS = {
    "data",
    "label",
    "split",
    "num_examples",
    "subset",
    "subset_seed",
    "image_size",
    "channels",
    "masks",
}
_ATTACK_KEYS = {
    "attack",
    "label",
    "norm",
    "eps",
    "eps_scale",
    "num_steps",
    "restarts",
    "black_box",
    "options",
    "cascade",
    "multilabel",
    "finding",
    "target_set",
    "success_margin",
    "grid",
    "fit",
    "surrogate",
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of work: a model, a data set, an attack with its eps grid, and a seed.

    Attributes:
        id: stable readable id ``model__data__attack__seedS`` (also the result file's name).
        hash: 16 hex digits over everything that decides the cell's results.
        model: the normalised model entry (``label``, ``model``).
        dataset: the normalised data entry (``label``, ``data``, ``split``, ``num_examples``, ...).
        attack: the normalised attack entry (``label``, ``attack``, ``norm``, ``eps``, ...).
        seed: the PRNG seed; example ``i`` of the data set uses ``fold_in(key(seed), i)``.
        detectors: the detector entries of the model (``label``, ``detector``, ``model``,
            ``kind``); empty without ``detectors:``.
        surrogate: the surrogate entry (``label``, ``models``) of a transfer cell, crafted on it
            and evaluated on ``model`` (:mod:`jaxadv.sweep.transfer`); ``None``: white box.
        recheck: the re-check mode of ``recheck:`` (:mod:`jaxadv.sweep.recheck`); ``None``: off.
    """

    id: str
    hash: str
    model: dict
    dataset: dict
    attack: dict
    seed: int
    detectors: tuple[dict, ...] = ()
    surrogate: dict | None = None
    recheck: str | None = None

    def spec(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "hash": self.hash,
            "model": self.model,
            "dataset": self.dataset,
            "attack": self.attack,
            "seed": self.seed,
        }
        if self.detectors:
            out["detectors"] = [dict(d) for d in self.detectors]
        if self.surrogate:
            out["surrogate"] = copy.deepcopy(self.surrogate)
        if self.recheck:
            out["recheck"] = self.recheck
        return out


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated config.

    Attributes:
        data: the normalised config (a JSON-able dict: defaults filled in, eps in pixel units).
        base_dir: folder relative paths in the config are resolved against.
        source: where the config came from (a path or ``builtin:NAME``).
        inputs: content fingerprints of the model and data files by their config entry (as
            recorded in a sweep manifest); ``None``: computed from the files
            (:meth:`input_fingerprints`).
    """

    data: dict
    base_dir: str
    source: str
    inputs: Mapping[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def batch_size(self) -> int:
        return self.data["batch_size"]

    @property
    def num_images(self) -> int:
        return self.data["num_images"]

    @property
    def hash(self) -> str:
        return config_hash(self.data)

    def resolve(self, path_or_name: str) -> str:
        """A relative path in the config, resolved against the config's folder."""
        if path_or_name == "default" or path_or_name.startswith("tfds:"):
            return path_or_name
        from jaxadv import checkpoint

        if path_or_name in checkpoint.REFERENCE_MODELS + checkpoint.SEGMENTATION_MODELS:
            return path_or_name
        if path_or_name.startswith("zoo:"):  # the zoo's file; left as given when not built
            from jaxadv.vocab import zoo_path

            try:
                return zoo_path(path_or_name)
            except SpecError:
                return path_or_name
        p = pathlib.Path(path_or_name).expanduser()
        return str(p if p.is_absolute() else pathlib.Path(self.base_dir) / p)

    def cells(self) -> list[Cell]:
        return expand(self)

    def input_fingerprints(self) -> dict[str, str | None]:
        """Content fingerprint of every model and data file of the config, by config entry.

        The rule (documented in docs/sweeps.md): a file's SHA-256, streamed and cached per process
        by (path, size, mtime, inode); a folder (orbax checkpoint, image folder) hashes every file
        in it (relative path, size, content hash); a checkpoint also covers its ``.json`` metadata
        (normalisation is stored there). Shipped reference models, ``default`` and ``tfds:`` data
        are identified by name (``None``)."""
        if self.inputs is not None:
            return {str(k): v for k, v in self.inputs.items()}
        out: dict[str, str | None] = {}
        for m in self.data["models"]:
            out[m["model"]] = _model_fingerprint(self.resolve(m["model"]))
        for d in self.data["datasets"]:
            out[d["data"]] = _data_fingerprint(self.resolve(d["data"]))
            if d.get("masks") is not None:  # a segmentation mask folder decides results too
                out[d["masks"]] = _data_fingerprint(self.resolve(d["masks"]))
        for d in self.data.get("detectors") or ():  # a refitted detector recomputes its cells
            out[d["detector"]] = _data_fingerprint(self.resolve(d["detector"]))
        return out


# ----------------------------------------------------------------------------- hashing
def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def config_hash(data: Mapping[str, Any]) -> str:
    """Hash of the parts of a normalised config that decide cells and results."""
    return sha256({k: v for k, v in data.items() if k not in UNHASHED})[:16]


def _model_fingerprint(spec: str) -> str | None:
    from jaxadv import _io, checkpoint

    p = pathlib.Path(spec)
    if spec in checkpoint.REFERENCE_MODELS + checkpoint.SEGMENTATION_MODELS or not p.exists():
        return None
    files = {p, p.with_suffix(".json")}
    if p.suffix == ".json":
        files |= {p.with_suffix(".msgpack"), p.with_suffix(".orbax"), p.with_suffix("")}
    parts = [f"{f.name}:{_io.content_sha256(f)}" for f in sorted(files) if f.exists()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _data_fingerprint(spec: str) -> str | None:
    from jaxadv import _io

    p = pathlib.Path(spec)
    if spec == "default" or spec.startswith("tfds:") or not p.exists():
        return None
    return _io.content_sha256(p)[:16]


def diff_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Top-level keys (outside :data:`UNHASHED`) whose values differ."""
    keys = (set(a) | set(b)) - set(UNHASHED)
    return sorted(k for k in keys if a.get(k) != b.get(k))


# ----------------------------------------------------------------------------- loading
def builtin_names() -> list[str]:
    root = resources.files("jaxadv").joinpath("configs")
    try:
        return sorted(p.name.rsplit(".", 1)[0] for p in root.iterdir() if p.name.endswith(".yaml"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def load_config(source: str | pathlib.Path | Mapping[str, Any]) -> SweepConfig:
    """Parse and validate a config: a file path (``.yaml``/``.yml``/``.json``), the name of a
    built-in config (``jaxadv/configs/NAME.yaml``, e.g. ``'smoke'``) or a mapping.

    Raises:
        ConfigError: unreadable file, unknown name, or invalid content (the message names the
            entry, e.g. ``attacks[1].num_steps``).
    """
    if isinstance(source, Mapping):
        return validate(source, base_dir=str(pathlib.Path.cwd()), source="<dict>")
    s = str(source)
    p = pathlib.Path(s).expanduser()
    if p.is_file():
        return validate(_parse(p.read_text(), p.suffix, str(p)), base_dir=str(p.parent), source=s)
    if p.exists():
        raise ConfigError(f"sweep config {s!r} is not a file")
    if re.fullmatch(r"[A-Za-z0-9_-]+", s):
        res = resources.files("jaxadv").joinpath("configs").joinpath(f"{s}.yaml")
        if res.is_file():
            return validate(
                _parse(res.read_text(), ".yaml", f"builtin:{s}"),
                base_dir=str(pathlib.Path.cwd()),
                source=f"builtin:{s}",
            )
    raise ConfigError(
        f"sweep config {s!r} is neither a file nor a built-in config; built-in configs: "
        f"{', '.join(builtin_names()) or '(none installed)'}"
    )


def _parse(text: str, suffix: str, where: str) -> Any:
    try:
        if suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one clear message
        raise ConfigError(f"cannot parse sweep config {where}: {e}") from e


# ----------------------------------------------------------------------------- validation
def validate(raw: Any, *, base_dir: str, source: str) -> SweepConfig:
    """Check a parsed config and fill in defaults. See the module docstring for the format."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"sweep config {source} must be a mapping, got {type(raw).__name__}")
    raw = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(raw) - set(_TOP))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in sweep config: {', '.join(unknown)}; allowed: {', '.join(_TOP)}"
        )
    if "seed" in raw and "seeds" in raw:
        raise ConfigError("give either 'seed' or 'seeds', not both")
    seeds = raw.get("seeds", [raw.get("seed", 0)])
    seeds = [_int(s, f"seeds[{i}]") for i, s in enumerate(_as_list(seeds, "seeds"))]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: repeated values {seeds}")
    scale = raw.get("eps_scale", 255)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise ConfigError(f"eps_scale: must be a positive number, got {scale!r}")
    norm = raw.get("norm")  # None: each attack's own default norm (as on the command line)
    default_eps = raw.get("eps")
    out: dict[str, Any] = {
        "format": FORMAT,
        "name": _str(raw.get("name", pathlib.Path(source).stem or "sweep"), "name"),
        "description": str(raw.get("description", "")),
        "seeds": seeds,
        "batch_size": _int(raw.get("batch_size", 128), "batch_size", lo=1),
        "num_images": _int(raw.get("num_images", 6), "num_images"),
    }
    num_examples = _int(raw.get("num_examples"), "num_examples", lo=1, none_ok=True)
    split = _str(raw.get("split", "test"), "split")
    num_steps = _int(raw.get("num_steps", 20), "num_steps", lo=1)
    restarts = _int(raw.get("restarts", 1), "restarts", lo=1)
    try:
        durable = parse_durable(raw.get("success_margin"), raw.get("grid"), dataset_ok=True)
    except SpecError as e:
        raise ConfigError(str(e)) from e

    models = []
    for i, m in enumerate(_as_list(raw.get("models"), "models")):
        where = f"models[{i}]"
        m = {"model": m} if isinstance(m, str) else m
        if not isinstance(m, Mapping):
            raise ConfigError(f"{where}: must be a name/path or a mapping with 'model'")
        _keys(m, _MODEL_KEYS, where)
        spec = _str(m.get("model"), f"{where}.model")
        label = _label(_str(m.get("label", pathlib.Path(spec).stem), f"{where}.label"))
        models.append({"label": label, "model": spec})
    _unique(models, "models")

    datasets = []
    for i, d in enumerate(_as_list(raw.get("datasets"), "datasets")):
        where = f"datasets[{i}]"
        d = {"data": d} if isinstance(d, str) else d
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: must be a name/path or a mapping with 'data'")
        _keys(d, _DATA_KEYS, where)
        spec = _str(d.get("data"), f"{where}.data")
        dsplit = _str(d.get("split", split), f"{where}.split")
        default_label = "default" if spec == "default" else f"{pathlib.Path(spec).stem}-{dsplit}"
        subset = d.get("subset", "first")
        if subset not in ("first", "random"):
            raise ConfigError(f"{where}.subset: must be 'first' or 'random', got {subset!r}")
        channels = d.get("channels")
        if channels not in (None, 1, 3) or isinstance(channels, bool):
            raise ConfigError(f"{where}.channels: must be 1, 3 or absent, got {channels!r}")
        datasets.append(
            {
                "label": _label(_str(d.get("label", default_label), f"{where}.label")),
                "data": spec,
                "split": dsplit,
                "num_examples": _int(
                    d.get("num_examples", num_examples),
                    f"{where}.num_examples",
                    lo=1,
                    none_ok=True,
                ),
                "subset": subset,
                "subset_seed": _int(d.get("subset_seed", 0), f"{where}.subset_seed"),
                "image_size": _int(d.get("image_size"), f"{where}.image_size", lo=1, none_ok=True),
                "channels": channels,
            }
        )
        if d.get("masks") is not None:  # only when given: configs without it keep their hash
            datasets[-1]["masks"] = _str(d["masks"], f"{where}.masks")
    _unique(datasets, "datasets")

    attacks = []
    for i, a in enumerate(_as_list(raw.get("attacks"), "attacks")):
        where = f"attacks[{i}]"
        a = {"attack": a} if isinstance(a, str) else a
        if not isinstance(a, Mapping):
            raise ConfigError(f"{where}: must be a name or a mapping with 'attack'")
        _keys(a, _ATTACK_KEYS, where)
        name = _str(a.get("attack"), f"{where}.attack").lower()
        uname = univ.universal_name(name)
        if uname is not None:  # fitted on a training split: jaxadv/sweep/universal.py
            entry = univ.attack_entry(
                a,
                where,
                name=uname,
                norm=a.get("norm", norm),
                eps=a.get("eps", default_eps),
                scale=scale,
            )
            entry["label"] = _label(_str(a.get("label", entry["label"]), f"{where}.label"))
            attacks.append(entry)
            continue
        if a.get("fit") is not None:
            raise ConfigError(f"{where}.fit: only universal attacks (patch, uap) are fitted")
        anorm = a.get("norm", norm)
        if anorm is None and seg.is_dense(a):  # segmentation attacks: linf by default
            anorm = "linf"
        elif anorm is None:  # linf where supported, else the attack's own (bias, l0, ...)
            try:
                anorm = attack_norm(name)
            except SpecError as e:
                raise ConfigError(f"{where}: {e}") from e
        anorm = str(anorm).lower()
        if anorm not in NORMS:
            raise ConfigError(f"{where}.norm: must be one of {', '.join(NORMS)}, got {anorm!r}")
        # pixel counts (L0, patch) and bias-field log-amplitudes are read as written: no 1/255
        # units unless the attack entry says so
        ascale = a.get("eps_scale", 1 if EPS_SCALE[anorm] == 1.0 else scale)
        if isinstance(ascale, bool) or not isinstance(ascale, (int, float)) or ascale <= 0:
            raise ConfigError(f"{where}.eps_scale: must be a positive number, got {ascale!r}")
        eps_raw = a.get("eps", default_eps)
        if eps_raw is None:
            raise ConfigError(f"{where}: no eps grid (set 'eps' at the top or on the attack)")
        options = a.get("options", {}) or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"{where}.options: must be a mapping of constructor keywords")
        bb = a.get("black_box")
        if bb is not None and not isinstance(bb, bool):
            raise ConfigError(f"{where}.black_box: must be true or false, got {bb!r}")
        cascade = a.get("cascade", False)
        if not isinstance(cascade, bool):
            raise ConfigError(f"{where}.cascade: must be true or false, got {cascade!r}")
        if seg.is_dense(a):  # a segmentation attack: jaxadv/sweep/segmentation.py
            try:
                eps = parse_eps(eps_raw, anorm, float(ascale))
            except SpecError as e:
                raise ConfigError(f"{where}: {e}") from e
            entry = seg.attack_entry(
                a, where, name=name, norm=anorm, eps=eps, num_steps=num_steps, durable=durable
            )
            default_label = name if anorm == "linf" else f"{name}-{anorm}"
            entry["label"] = _label(_str(a.get("label", default_label), f"{where}.label"))
            attacks.append(entry)
            continue
        try:
            known = lookup_attack(name)
            eps = parse_eps(eps_raw, anorm, float(ascale))
            rule_kind = check_rule_spec(a.get("multilabel"), a.get("finding"), a.get("target_set"))
            own = parse_durable(a.get("success_margin"), a.get("grid"), dataset_ok=True)
        except SpecError as e:
            raise ConfigError(f"{where}: {e}") from e
        # An explicit num_steps / restarts on the attack must apply to it (make_attack refuses it
        # otherwise); the top-level defaults apply only to the attacks that have that setting.
        steps = a.get("num_steps", num_steps if known.budget_field == "num_steps" else None)
        rst = a.get("restarts", restarts if known.restarts_field == "num_restarts" else None)
        entry = {
            "label": "",
            "attack": name,
            "norm": anorm,
            "eps": eps,
            "num_steps": _int(steps, f"{where}.num_steps", lo=1, none_ok=True),
            "restarts": _int(rst, f"{where}.restarts", lo=1, none_ok=True),
            "options": copy.deepcopy(dict(options)),
            "black_box": bb,
            "cascade": cascade,
        }
        if rule_kind is not None:
            # only when given: entries without a rule keep their hash (resumable old sweeps)
            entry["multilabel"] = rule_kind
            for k in ("finding", "target_set"):
                if a.get(k) is not None:
                    entry[k] = copy.deepcopy(a[k])
        # only when they change the rule: entries without them keep their hash
        for k, v in {**durable, **own}.items():
            if v not in (None, 0.0):
                entry[k] = v
        default_label = name if anorm == "linf" else f"{name}-{anorm}"
        if rule_kind is not None:
            tag = f"one{a['finding']}" if rule_kind == "one" else rule_kind
            default_label = f"{default_label}-{tag}"
        if own.get("success_margin"):
            default_label += f"-k{own['success_margin']:g}"
        if own.get("grid") is not None:
            default_label += f"-{own['grid']}" + ("bit" if isinstance(own["grid"], int) else "")
        entry["label"] = _label(_str(a.get("label", default_label), f"{where}.label"))
        if a.get("surrogate") is not None:  # only when given: keeps the hash of other entries
            entry["surrogate"] = tr.parse(
                a["surrogate"], models, f"{where}.surrogate", error=ConfigError
            )
        try:  # build it once now: unknown names and bad options fail before anything runs
            built = make_attack(
                name,
                norm=anorm,
                eps_max=max(entry["eps"]),
                num_steps=entry["num_steps"],
                restarts=entry["restarts"],
                options=entry["options"],
            )
            durable_check = {k: entry[k] for k in ("success_margin", "grid") if k in entry}
            if durable_check.get("grid") == GRID_FROM_DATA:
                durable_check["grid"] = 8  # resolved per data set at run time
            with_durable(built, durable_check)
            if rule_kind is not None:
                from jaxadv.multilabel import check_attack

                check_attack(built)
        except (SpecError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from e
        attacks.append(entry)
    _unique(attacks, "attacks")

    out.update(models=models, datasets=datasets, attacks=attacks)
    if raw.get("surrogate") is not None:  # only when given: configs without it keep their hash
        out["surrogate"] = tr.parse(raw["surrogate"], models, "surrogate", error=ConfigError)
    tr.check(out, error=ConfigError)
    if raw.get("recheck") is not None:  # only when given: configs without it keep their hash
        out["recheck"] = rc.parse(raw["recheck"], attacks, error=ConfigError)
    if raw.get("detectors") is not None:  # only when given: configs without it keep their hash
        resolve = SweepConfig(data=out, base_dir=base_dir, source=source).resolve
        out["detectors"] = det.parse(raw["detectors"], models, resolve, error=ConfigError)
        dense = [i for i, a in enumerate(attacks) if seg.is_dense(a)]
        if dense:
            raise ConfigError(
                f"detectors: attacks[{dense[0]}] is a segmentation attack; detectors score "
                "classifiers' inputs, so give them a classification sweep"
            )
    try:
        canonical_json(out)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sweep config {source}: values must be plain data ({e})") from e
    cfg = SweepConfig(data=out, base_dir=base_dir, source=source)
    for i, m in enumerate(models):
        spec = cfg.resolve(m["model"])
        if is_segmentation_model(spec):
            continue
        try:
            check_model_name(spec)
        except SpecError as e:
            raise ConfigError(f"models[{i}]: {e}") from e
    tr.check_models(cfg, error=ConfigError)  # surrogates: classifiers only
    if seg.check_tasks(cfg):  # one task per config; segmentation data is checked there
        return cfg
    for i, d in enumerate(datasets):
        try:
            check_dataset_name(cfg.resolve(d["data"]))
        except SpecError as e:
            raise ConfigError(f"datasets[{i}]: {e}") from e
    univ.check_config(cfg)  # universal attacks: no detectors, a fit split
    return cfg


# ----------------------------------------------------------------------------- expansion
def expand(cfg: SweepConfig) -> list[Cell]:
    """All cells in a fixed order (models, data sets, attacks, surrogates, then seeds)."""
    d = cfg.data
    _check_normalised(d)
    fps = cfg.input_fingerprints()
    cells = []
    seen: dict[str, str] = {}
    for m in d["models"]:
        for ds in d["datasets"]:
            for a, sur in [(x, t) for x in d["attacks"] for t in tr.for_attack(d, x)]:
                for s in d["seeds"]:
                    cid = tr.cell_id(m["label"], ds["label"], a["label"], s, sur)
                    if cid.casefold() in seen:  # cannot happen for a validated config
                        raise ConfigError(f"cells {seen[cid.casefold()]} and {cid} share an id")
                    seen[cid.casefold()] = cid
                    a_ = {k: v for k, v in a.items() if k != "surrogate"}  # the cell's own below
                    what = {"model": m, "dataset": ds, "attack": a_, "seed": s}
                    inputs = {"model": fps.get(m["model"]), "data": fps.get(ds["data"])}
                    if ds.get("masks") is not None:  # only then: other cells keep their hash
                        inputs["masks"] = fps.get(ds["masks"])
                    if any(inputs.values()):  # the files' content decides the results too
                        what["inputs"] = inputs
                    dets = det.for_model(d, m["label"])
                    if dets:  # only then: cells without detectors keep their hash
                        what["detectors"] = [{**e, "content": fps.get(e["detector"])} for e in dets]
                    if sur:  # only then: white-box cells keep their hash
                        what["surrogate"] = tr.hashed(sur, fps)
                    if d.get("recheck"):  # only then: cells without it keep their hash
                        what["recheck"] = d["recheck"]
                    h = sha256(what)[:16]
                    a_, dets_ = copy.deepcopy(a_), tuple(dets)
                    cells.append(
                        Cell(cid, h, dict(m), dict(ds), a_, int(s), dets_, sur, d.get("recheck"))
                    )
    return cells


def _check_normalised(d: Any) -> None:
    """A normalised config (possibly read back from a manifest, i.e. untrusted) has the shape
    :func:`validate` gives it; labels are normalised (so cell ids are safe file names)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"the config must be a mapping, got {type(d).__name__}")
    seeds = d.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"seeds: must be a non-empty list, got {seeds!r}")
    for i, s in enumerate(seeds):
        _int(s, f"seeds[{i}]")
    for what, key in (("models", "model"), ("datasets", "data"), ("attacks", "attack")):
        entries = d.get(what)
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{what}: must be a non-empty list, got {entries!r}")
        for i, e in enumerate(entries):
            if not isinstance(e, Mapping) or not isinstance(e.get(key), str):
                raise ConfigError(f"{what}[{i}]: must be a mapping with a string {key!r}")
            if not is_label(e.get("label")):
                raise ConfigError(
                    f"{what}[{i}].label: {e.get('label')!r} is not a normalised label "
                    "(A-Z a-z 0-9 . _ -, no '__', at most 48 characters)"
                )
        _unique(list(entries), what)
    if d.get("recheck") is not None:
        rc.parse(d["recheck"], d["attacks"], error=ConfigError)
    for i, e in enumerate(d.get("detectors") or ()):
        if not (
            isinstance(e, Mapping)
            and is_label(e.get("label"))
            and isinstance(e.get("detector"), str)
        ):
            raise ConfigError(
                f"detectors[{i}]: must be a mapping with a label and a 'detector' file"
            )


def shard_cells(cells: Sequence[Cell], num_shards: int, shard_index: int) -> list[Cell]:
    """The cells of shard ``shard_index`` of ``num_shards`` (round robin over the fixed order, so
    every shard gets a mix of models and attacks)."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError(f"--num-shards must be a positive integer, got {num_shards!r}")
    if not isinstance(shard_index, int) or not 0 <= shard_index < num_shards:
        raise ConfigError(f"--shard-index must lie in [0, {num_shards - 1}], got {shard_index!r}")
    return [c for i, c in enumerate(cells) if i % num_shards == shard_index]
