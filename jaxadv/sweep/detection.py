"""Feature-space detectors in sweeps: the ``detectors:`` config key, scoring inside each cell, the
stored scores and the report's detection columns.

A config lists fitted detector files (written by :func:`jaxadv.detect.save`); each entry belongs
to one model of the config (a detector is fitted on one model's features)::

    detectors:
      - {detector: maha_clean.json, model: small_cnn_clean, label: maha}
      - kd_clean.json            # allowed when the config has a single model

Every cell of that model scores its clean images and the adversarials of every eps with each of
its detectors inside the evaluation loop (no image is kept), and stores ``[N]`` clean and
``[E, N]`` adversarial scores. The report recomputes per eps the AUC and TPR at TNR 90 / 95 % with
:func:`jaxadv.detect.rates`: negatives the clean-correct examples, positives the successful
adversarials among them (the protocol of :func:`jaxadv.detect.evaluate`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_ENTRY_KEYS = {"detector", "model", "label"}


# ----------------------------------------------------------------------------- config
def parse(raw: Any, models: Sequence[dict], resolve: Any, *, error: type) -> list[dict]:
    """Normalise the ``detectors:`` list and check every file (exists, is a fitted detector).

    Args:
        raw: the config's value.
        models: the normalised model entries (their labels).
        resolve: config path -> file path (relative to the config's folder).
        error: the exception type to raise (``ConfigError``).
    """
    from jaxadv.detect import read
    from jaxadv.sweep._fields import _keys

    if isinstance(raw, (str, Mapping)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise error(f"detectors: must be a non-empty list of detector files, got {raw!r}")
    labels = [m["label"] for m in models]
    out = []
    for i, d in enumerate(raw):
        where = f"detectors[{i}]"
        d = {"detector": d} if isinstance(d, str) else d
        if not isinstance(d, Mapping):
            raise error(f"{where}: must be a file name or a mapping with 'detector'")
        _keys(d, _ENTRY_KEYS, where)
        spec = d.get("detector")
        if not isinstance(spec, str) or not spec.strip():
            raise error(f"{where}.detector: must be the path of a detector file, got {spec!r}")
        model = d.get("model")
        if model is None:
            if len(labels) != 1:
                raise error(
                    f"{where} ({spec}): say which model it was fitted on, 'model: <label>' "
                    f"(one of {', '.join(labels)}); a detector reads one model's features"
                )
            model = labels[0]
        if model not in labels:
            raise error(
                f"{where}.model: {model!r} is not a model label of this config "
                f"({', '.join(labels)})"
            )
        path = pathlib.Path(resolve(spec))
        if not path.is_file():
            raise error(f"{where}: detector file {path} does not exist")
        try:
            det = read(path)
        except ValueError as e:
            raise error(f"{where}: {e}") from e
        from jaxadv.sweep.config import _label

        label = _label(str(d.get("label") or pathlib.Path(spec).stem))
        out.append({"label": label, "detector": spec, "model": model, "kind": type(det).__name__})
    seen: dict[tuple[str, str], int] = {}
    for i, e in enumerate(out):
        key = (e["model"], e["label"].casefold())
        if key in seen:
            raise error(
                f"detectors[{i}] and detectors[{seen[key]}] share the label {e['label']!r} for "
                f"model {e['model']!r}; give one of them a distinct 'label'"
            )
        seen[key] = i
    return out


def for_model(data: Mapping[str, Any], model_label: str) -> list[dict]:
    """The detector entries of a normalised config that belong to ``model_label``."""
    return [d for d in data.get("detectors") or () if d["model"] == model_label]


# ----------------------------------------------------------------------------- running
def load_for_model(
    entries: Sequence[dict], model: Any, image_shape: Sequence[int], resolve: Any, *, error: type
) -> dict:
    """``{label: detector}`` of ``entries`` with the feature model of ``model`` attached, each
    probed once on a zero image of ``image_shape`` ``(H, W, K)``.

    Raises:
        error: the model exposes no features, lacks a layer the detector reads, or a probe
            score on one zero image fails (feature sizes that do not fit).
    """
    import jax.numpy as jnp

    from jaxadv.detect import attach, read_with_model_id
    from jaxadv.features import with_features

    out = {}
    for e in entries:
        where = f"detector {e['label']!r} ({e['detector']}) on model {e['model']!r}"
        path = resolve(e["detector"])
        try:
            bare, ident = read_with_model_id(path)  # the file is read once
            layers = tuple(getattr(bare, "layers", ()) or ())
            head = getattr(bare, "head_layer", None)
            layers += (head,) if head and head not in layers else ()
            fm = with_features(model, layers=layers or None)
            det = attach(bare, fm, ident, source=path)
            h, w, k = (int(v) for v in image_shape)
            s = det.score(jnp.zeros((1, h, w, k), jnp.float32))
            if s.shape != (1,):
                raise ValueError(f"its score has shape {s.shape}, expected one number per image")
        except (TypeError, ValueError, KeyError) as ex:
            raise error(
                f"{where}: does not fit this model ({ex}); fit the detector on this model's "
                "features (jaxadv.detect, with_features) and save it again"
            ) from ex
        out[e["label"]] = det
    return out


def results(ev: Any) -> dict[str, Any]:
    """The cell record's ``results.detectors``: ``{label: {"clean": [N], "adv": [E, N]}}``."""
    from jaxadv.sweep.storage import encode_array

    if not ev.detector_scores:
        return {}
    return {
        "detectors": {
            n: {
                "clean": encode_array(np.asarray(c, np.float32)),
                "adv": encode_array(np.asarray(a, np.float32)),
            }
            for n, (c, a) in ev.detector_scores.items()
        }
    }


# ----------------------------------------------------------------------------- storage
def check_fields(r: Mapping[str, Any], num_eps: int, n: int) -> str | None:
    """``None`` when ``results.detectors`` (if present) holds ``clean [n]`` and ``adv [E, n]``."""
    from jaxadv.sweep.config import is_label
    from jaxadv.sweep.storage import decode_array

    dets = r.get("detectors")
    if dets is None:
        return None
    if not isinstance(dets, dict) or not dets:
        return "results.detectors must be a non-empty object {label: {clean, adv}}"
    for name, v in dets.items():
        if not is_label(name) or not isinstance(v, dict):
            return f"results.detectors: {name!r} must be a label holding {{clean, adv}}"
        if decode_array(v.get("clean"), np.float32).shape != (n,):
            return f"results.detectors.{name}.clean must be a list of {n} numbers"
        if decode_array(v.get("adv"), np.float32).shape != (num_eps, n):
            return f"results.detectors.{name}.adv must be {num_eps} lists of {n} numbers"
    return None


# ----------------------------------------------------------------------------- report
def columns(name: str) -> tuple[str, str, str]:
    """The report columns of detector ``name``: AUC, TPR at TNR 95 %, positives."""
    return f"det_{name}_auc", f"det_{name}_tpr95", f"det_{name}_n_adv"


def summary_columns(
    r: Mapping[str, Any], success: np.ndarray, clean_correct: np.ndarray
) -> list[dict[str, Any]]:
    """Per eps, each detector's columns (:func:`columns`; ``None`` where undefined: no clean-correct
    example or no successful adversarial among them, e.g. at eps 0), from the stored scores."""
    from jaxadv.detect import rates
    from jaxadv.sweep.storage import decode_array

    rows: list[dict[str, Any]] = [{} for _ in range(success.shape[0])]
    for name, v in (r.get("detectors") or {}).items():
        clean = decode_array(v["clean"], np.float32)[clean_correct]
        adv = decode_array(v["adv"], np.float32)
        c_auc, c_tpr, c_n = columns(name)
        for k, row in enumerate(rows):
            pos = adv[k][clean_correct & success[k]]
            row[c_n] = int(pos.size)
            if pos.size and clean.size:
                got = rates(clean, pos)
                row[c_auc], row[c_tpr] = got["auc"], got["tpr_at_tnr95"]
            else:
                row[c_auc] = row[c_tpr] = None
    return rows


def _labels_in(keys: Any) -> list[str]:
    """The detector labels of the ``det_<label>_auc`` columns among ``keys``, in order (the
    inverse of :func:`columns`)."""
    return [k[4:-4] for k in dict.fromkeys(keys) if k.startswith("det_") and k.endswith("_auc")]


def names(cells: Sequence[Any]) -> list[str]:
    """Detector labels found in the cells' summary rows, in order of appearance."""
    return _labels_in(k for c in cells for k in (c.summary[0] if c.summary else ()))


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Columns of the report's detection table."""
    dets = _labels_in(k for r in rows for k in r)
    return ["model", "dataset", "attack", "seed", "eps_label", "robust_accuracy"] + [
        c for n in dets for c in columns(n)
    ]


TEXT = (
    "Per detector: AUC and TPR at TNR 95 % separating the clean-correct examples (negatives) from "
    "the successful adversarial examples among them (positives, n_adv), recomputed from the "
    "stored per-example scores with jaxadv.detect.rates; empty where no attack succeeded."
)
