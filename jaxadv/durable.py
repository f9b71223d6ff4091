"""Adversarial examples that stay adversarial: saving them exactly, and re-checking them outside
the attack's compiled program.

An attack decides success inside one jitted program (:func:`jaxadv.result.finalize`). A point
that sits on the decision boundary can change label when the same model runs eagerly, in a
separately compiled forward, at float64, in another framework, or on an image that was rounded to
8 bits when saved. Two threat settings make reported successes durable
(:class:`jaxadv.threats.AbstractThreat`): ``success_margin`` (κ, success means margin > κ) and
``grid`` (results quantised to the storage grid inside the attack's final step). This module
adds the two host-side halves:

* :func:`save_examples` / :func:`load_examples`: clean image, adversarial image, label (and the
  reported success) as integer codes in ``.npz``, or as 8-bit PNG files with a ``labels.csv``,
  which reload to exactly the arrays the attack evaluated;
* :func:`recheck`: re-evaluates ``adv`` eagerly (``jax.disable_jit``), in a separately compiled
  forward, or at float64, and reports which reported successes flip.
"""

from __future__ import annotations

import csv
import io
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _io
from jaxadv.models import as_model

Array = jax.Array

#: Evaluation modes of :func:`recheck`.
RECHECK_MODES = ("eager", "jit", "float64")


# ----------------------------------------------------------------------------- grid codes
def _grid(threat: Any) -> tuple[int, float, float]:
    bits = getattr(threat, "grid", None)
    if bits is None:
        raise ValueError(
            "saving needs a storage grid: attack with a threat that has grid=8 (or 12, 16, "
            "'uint8', 'uint16') so the results are quantised before they are saved"
        )
    lo, hi = np.asarray(threat.lo), np.asarray(threat.hi)
    if lo.ndim or hi.ndim:
        raise ValueError("save_examples supports a scalar box (lo, hi), not per-channel bounds")
    return int(bits), float(lo), float(hi)


def encode(v: Any, bits: int, lo: float = 0.0, hi: float = 1.0, *, what: str = "adv") -> np.ndarray:
    """Float images ``[B, H, W, K]`` on the ``bits`` grid of ``[lo, hi]`` -> integer codes.

    The codes are ``uint8`` up to 8 bits, else ``uint16``. Raises ``ValueError`` when a value is
    not exactly a grid value (:func:`decode` of its code), so nothing is silently rounded.
    """
    v = np.asarray(v, np.float32)
    top = 2**bits - 1
    code = np.clip(np.round((v - np.float32(lo)) / np.float32(hi - lo) * top), 0, top)
    code = code.astype(np.uint8 if bits <= 8 else np.uint16)
    bad = decode(code, bits, lo, hi) != v
    if np.any(bad):
        raise ValueError(
            f"{what} has {int(bad.sum())} values off the {bits}-bit grid of [{lo}, {hi}]; "
            f"quantise inside the attack (threat grid={bits}) or load the clean images from "
            f"{bits}-bit files"
        )
    return code


def decode(code: Any, bits: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Integer codes -> float32 images: ``lo + (hi - lo) * (code / (2**bits - 1))``, the values
    :meth:`jaxadv.threats.AbstractThreat.snap` produces (for ``[0, 1]`` and 8 bits,
    ``code / 255``, as the data loaders read 8-bit files).

    Example:
        >>> from jaxadv.durable import decode, encode
        >>> v = decode([0, 3, 255], 8)  # float32 0, 3/255, 1
        >>> encode(v, 8).tolist(), bool(v[1] == np.float32(3) / np.float32(255))
        ([0, 3, 255], True)
    """
    q = np.asarray(code).astype(np.float32) / np.float32(2**bits - 1)
    return np.float32(lo) + np.float32(hi - lo) * q


# ----------------------------------------------------------------------------- save / load
def save_examples(
    path: str | pathlib.Path,
    x: Any,
    adv: Any,
    y: Any,
    *,
    threat: Any,
    success: Any | None = None,
    target: Any | None = None,
) -> pathlib.Path:
    """Save clean images ``x[B, H, W, K]``, adversarials ``adv[B, H, W, K]`` and labels ``y[B]``.

    ``path`` ending in ``.npz``: one archive with ``clean`` and ``adv`` as integer codes
    (uint8 / uint16), ``label``, optional ``success`` and ``target``, and the grid (``bits``,
    ``lo``, ``hi``). Any other ``path`` is a folder of 8-bit PNG files (8-bit grids only):
    ``NNNNN_clean.png`` and ``NNNNN_adv.png`` (grey for 1 channel, RGB for 3) with a
    ``labels.csv`` (index, label, target, success). Both reload exactly with
    :func:`load_examples`.

    Args:
        path: the ``.npz`` file or the PNG folder.
        x, adv: float images on the threat's grid (``adv`` from an attack whose threat has
            ``grid`` set; ``x`` loaded from files of that depth).
        y: integer labels ``[B]``.
        threat: the threat the attack ran under (its ``grid``, ``lo`` and ``hi``).
        success: the reported success flags ``bool[B]`` (stored for later comparison).
        target: target labels ``[B]`` of a targeted attack.

    Returns:
        the path written.

    Raises:
        ValueError: no grid on the threat, images off the grid, PNG for more than 8 bits or for
            channel counts other than 1 and 3, or mismatched shapes.
    """
    bits, lo, hi = _grid(threat)
    x, adv, y = np.asarray(x), np.asarray(adv), np.asarray(y)
    if x.shape != adv.shape or x.ndim != 4 or y.shape != x.shape[:1]:
        raise ValueError(
            f"need x and adv [B, H, W, K] of one shape and y [B], got {x.shape}, {adv.shape}, "
            f"{y.shape}"
        )
    path = pathlib.Path(path)
    if path.suffix != ".npz" and (bits != 8 or x.shape[-1] not in (1, 3)):
        raise ValueError(
            "PNG output holds 8-bit grey or RGB images: use grid=8, or save to a .npz file"
        )
    clean_c = encode(x, bits, lo, hi, what="the clean image x")
    adv_c = encode(adv, bits, lo, hi)
    extra = {} if success is None else {"success": np.asarray(success, bool)}
    if target is not None:
        extra["target"] = np.asarray(target)
    if path.suffix == ".npz":
        buf = io.BytesIO()
        np.savez_compressed(
            buf, clean=clean_c, adv=adv_c, label=y, bits=bits, lo=lo, hi=hi, **extra
        )
        _io.write_atomic(path, buf.getvalue())
        return path
    from PIL import Image

    for i in range(x.shape[0]):
        for name, codes in (("clean", clean_c), ("adv", adv_c)):
            img = codes[i, ..., 0] if codes.shape[-1] == 1 else codes[i]
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            _io.write_atomic(path / f"{i:05d}_{name}.png", buf.getvalue())
    rows = io.StringIO()
    w = csv.writer(rows, lineterminator="\n")
    w.writerow(["index", "label", "target", "success"])
    for i in range(x.shape[0]):
        t = "" if target is None else int(extra["target"][i])
        s = "" if success is None else int(extra["success"][i])
        w.writerow([i, int(y[i]), t, s])
    _io.write_atomic(path / "labels.csv", rows.getvalue())
    return path


def load_examples(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Read what :func:`save_examples` wrote: ``clean`` and ``adv`` float32 ``[B, H, W, K]``,
    ``label`` ``[B]`` and, when saved, ``success`` and ``target``."""
    path = pathlib.Path(path)
    if path.suffix == ".npz":
        with np.load(path) as f:
            bits, lo, hi = int(f["bits"]), float(f["lo"]), float(f["hi"])
            out = {k: f[k] for k in f.files if k not in ("bits", "lo", "hi")}
        out["clean"] = decode(out["clean"], bits, lo, hi)
        out["adv"] = decode(out["adv"], bits, lo, hi)
        return out
    from PIL import Image

    with open(path / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, Any] = {"clean": [], "adv": []}
    for r in rows:
        for name in ("clean", "adv"):
            with Image.open(path / f"{int(r['index']):05d}_{name}.png") as img:
                a = np.asarray(img)
            out[name].append(a[..., None] if a.ndim == 2 else a)
    res = {k: decode(np.stack(v), 8) for k, v in out.items()}
    res["label"] = np.array([int(r["label"]) for r in rows], np.int32)
    if rows and rows[0]["success"] != "":
        res["success"] = np.array([r["success"] == "1" for r in rows])
    if rows and rows[0]["target"] != "":
        res["target"] = np.array([int(r["target"]) for r in rows], np.int32)
    return res


# ----------------------------------------------------------------------------- re-evaluation
def _to_f64(tree: Any) -> Any:
    def cast(a):
        if isinstance(a, (jax.Array, np.ndarray)) and jnp.issubdtype(a.dtype, jnp.floating):
            return jnp.asarray(a, jnp.float64)
        return a

    return jax.tree_util.tree_map(cast, tree)


@jax.jit
def _forward(model: Any, x: Any) -> Any:
    """The model's forward alone, compiled apart from any attack (one cache for every call)."""
    return model(x)


def recheck(
    model: Any,
    adv: Any,
    y: Any,
    success: Any,
    *,
    target: Any | None = None,
    mode: str = "eager",
    success_margin: float = 0.0,
) -> dict[str, Any]:
    """Re-evaluate reported successes outside the attack's compiled program.

    Args:
        model: the attacked model (any model :func:`jaxadv.models.as_model` accepts).
        adv: the adversarial images ``[B, H, W, K]`` (``res.adv``).
        y: true labels ``[B]``.
        success: the reported flags ``bool[B]`` (``res.success``).
        target: target labels ``[B]`` of a targeted attack.
        mode: ``'eager'`` (op by op, ``jax.disable_jit``), ``'jit'`` (the forward alone, compiled
            separately from the attack) or ``'float64'`` (images and the model's float leaves
            cast to float64, eager; weights a plain callable closes over are not leaves and stay
            as they are).
        success_margin: κ of the re-check (default 0: the plain argmax rule, the question "is it
            still adversarial?").

    Returns:
        ``{"success": bool[B], "margin": f32/f64[B], "flipped": bool[B] (reported success now
        rejected), "gained": bool[B] (reported failure now accepted), "num_flipped": int,
        "num_gained": int, "mode": mode}`` (NumPy arrays, host values).

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in RECHECK_MODES:
        raise ValueError(f"mode must be one of {RECHECK_MODES}, got {mode!r}")
    model = as_model(model)
    reported = np.asarray(success, bool)
    y = np.asarray(y, np.int64)
    t = None if target is None else np.asarray(target, np.int64)
    lbl = y if t is None else t
    if mode == "jit":
        logits = np.asarray(_forward(model, jnp.asarray(adv)))
    elif mode == "eager":
        with jax.disable_jit():
            logits = np.asarray(model(jnp.asarray(adv)))
    else:
        with jax.enable_x64(True), jax.disable_jit():
            logits = np.asarray(_to_f64(model)(jnp.asarray(np.asarray(adv), jnp.float64)))
    # the rule in NumPy, at the logits' own precision (float64 logits stay float64)
    yy, lab = np.asarray(y), np.asarray(lbl)
    rows = np.arange(logits.shape[0])
    others = logits.copy()
    others[rows, lab] = -np.inf
    m = others.max(axis=1) - logits[rows, lab]
    m = m if t is None else -m
    finite = np.all(np.isfinite(logits), axis=1)
    if success_margin == 0:
        pred = np.argmax(logits, axis=1)
        won = (pred != yy if t is None else pred == lab) & finite
    else:
        won = (m > success_margin) & finite
    flipped, gained = reported & ~won, ~reported & won
    return {
        "success": won,
        "margin": m,
        "flipped": flipped,
        "gained": gained,
        "num_flipped": int(flipped.sum()),
        "num_gained": int(gained.sum()),
        "mode": mode,
    }


__all__ = [
    "RECHECK_MODES",
    "decode",
    "encode",
    "load_examples",
    "recheck",
    "save_examples",
]
