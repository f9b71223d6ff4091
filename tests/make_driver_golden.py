"""Write ``tests/data/driver_golden.npz``: the outputs of every registered attack on fixed tiny
models, recorded before the attacks were ported onto the shared loop driver
(``jaxadv/attacks/driver.py``). ``tests/test_driver.py`` recomputes the same runs and compares.

Run from the repository root (only when an attack's arithmetic changes on purpose, and say why in
the commit)::

    python tests/make_driver_golden.py

Cases (see :func:`cases`): every attack in ``REGISTRY`` with its tiny configuration (``tests/attack_configs.py``) on a
4-class linear model and on a 4-class 2-layer ReLU MLP (so the loss surface is not linear), plus
PGD with ``early_stop=True``, with restarts and unrolled, APGD with restarts and DLR, other
norms / modes / stopping rules of the black-box and evolutionary attacks (:func:`_extra`), and a
targeted run for every
attack that accepts ``target=``. Per case the file holds ``adv, success, norm, queries, loss``
stacked over cases (``cases`` holds the case names; :func:`load` reads it back). The JAX configuration matches ``tests/conftest.py`` (8 fake CPU
devices, strict promotion), so the numbers are those the tests see.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's jaxadv, not an installed one
    os.environ.setdefault("XLA_FLAGS", "")

import jax  # noqa: E402

if __name__ == "__main__":
    jax.config.update("jax_num_cpu_devices", 8)
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from attack_configs import small  # noqa: E402

import jaxadv  # noqa: E402
from jaxadv.attacks import REGISTRY  # noqa: E402

PATH = ROOT / "tests" / "data" / "driver_golden.npz"
SHAPE = (4, 4, 1)
NUM_CLASSES = 4
FIELDS = ("adv", "success", "norm", "queries", "loss")
# Attacks that choose their own targets (or are untargeted by definition).
UNTARGETED_ONLY = {"APGDT", "AutoAttack", "DeepFool"}
# Attacks written on the driver from the start: there is no pre-driver result to pin.
BORN_ON_DRIVER = {"CW", "DDN", "DeepFool", "FAB", "MIFGSM", "SimBA", "SparseRS"}


def _linear_apply(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"][None, :]


def _mlp_apply(p, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"][None, :])
    return h @ p["w2"] + p["b2"][None, :]


def models():
    """``{"linear": ..., "mlp": ...}``: fixed-seed 4-class models on 4x4x1 images."""
    d = int(np.prod(SHAPE))
    k = jax.random.split(jax.random.key(0), 6)
    lin = {
        "w": jax.random.normal(k[0], (d, NUM_CLASSES), jnp.float32),
        "b": 0.1 * jax.random.normal(k[1], (NUM_CLASSES,), jnp.float32),
    }
    mlp = {
        "w1": jax.random.normal(k[2], (d, 16), jnp.float32) / 2.0,
        "b1": 0.1 * jax.random.normal(k[3], (16,), jnp.float32),
        "w2": jax.random.normal(k[4], (16, NUM_CLASSES), jnp.float32) / 2.0,
        "b2": 0.1 * jax.random.normal(k[5], (NUM_CLASSES,), jnp.float32),
    }
    return {
        "linear": jaxadv.from_apply(_linear_apply, lin),
        "mlp": jaxadv.from_apply(_mlp_apply, mlp),
    }


def data(model):
    """Four images in [0, 1], their predicted labels, and targets ``(y + 1) % C``."""
    x = jax.random.uniform(jax.random.key(1), (4, *SHAPE), jnp.float32, 0.0, 1.0)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    return x, y, (y + 1) % NUM_CLASSES


def cases():
    """``[(case_name, model_name, attack, targeted)]``, in a fixed order."""
    out = []
    for name in sorted(set(REGISTRY) - BORN_ON_DRIVER):
        atk = small(name)
        variants = [(name, atk)]
        if name == "PGD":
            variants += [
                ("PGD-early", jaxadv.PGD(threat=atk.threat, num_steps=6, early_stop=True)),
                ("PGD-restarts", jaxadv.PGD(threat=atk.threat, num_steps=3, num_restarts=2)),
            ]
        if name == "PGD":
            variants.append(
                ("PGD-unrolled", jaxadv.PGD(threat=atk.threat, num_steps=3, unroll=True))
            )
        variants += _extra(name, atk)
        if name == "APGD":
            variants += [
                ("APGD-restarts", jaxadv.APGD(threat=atk.threat, num_steps=4, num_restarts=2)),
                ("APGD-dlr", jaxadv.APGD(threat=atk.threat, num_steps=4, loss="dlr")),
            ]
        for model_name in ("linear", "mlp"):
            for case, a in variants:
                out.append((f"{case}@{model_name}", model_name, a, False))
                if name not in UNTARGETED_ONLY:
                    out.append((f"{case}@{model_name}@targeted", model_name, a, True))
    return out


def _extra(name, atk):
    """Option combinations that take other loop paths (other norms and modes, no early stop,
    no score reuse, DGDE without history, the minimality sweep)."""
    rep = dataclasses.replace
    if name == "Square":
        return [("Square-l2", rep(atk, threat=jaxadv.L2Ball(eps=0.5)))]
    if name == "NES":
        return [
            ("NES-partial", rep(atk, mode="partial_info", init_tries=5)),
            ("NES-label", rep(atk, mode="label_only", init_tries=5, label_only_samples=3)),
        ]
    if name == "ZOO":
        return [("ZOO-noearly", rep(atk, early_stop=False, patience=2))]
    if name == "HopSkipJump":
        return [
            ("HopSkipJump-linf", rep(atk, threat=jaxadv.LinfBall(eps=0.1))),
            ("HopSkipJump-noearly", rep(atk, early_stop=False)),
        ]
    if name == "OnePixel":
        return [("OnePixel-noreuse", rep(atk, reuse_scores=False))]
    if name == "DGDE":
        opts = rep(atk.options, minimality_sweep=True)
        return [("DGDE-nohist-sweep", rep(atk, record_history=False, options=opts))]
    return []


def run_case(model, attack, targeted):
    x, y, t = data(model)
    return attack(jax.random.key(7), model, x, y, target=t if targeted else None)


def load() -> dict[str, dict[str, np.ndarray]]:
    """``{case: {field: array}}`` from the golden file."""
    z = np.load(PATH)
    names = [str(n) for n in z["cases"]]
    return {n: {f: z[f][i] for f in FIELDS} for i, n in enumerate(names)}


def main() -> None:
    ms = models()
    names, rows = [], {f: [] for f in FIELDS}
    for case, model_name, atk, targeted in cases():
        t0 = time.perf_counter()
        res = run_case(ms[model_name], atk, targeted)
        names.append(case)
        for f in FIELDS:
            rows[f].append(np.asarray(getattr(res, f)))
        print(f"{case:40s} {time.perf_counter() - t0:6.2f}s")
    PATH.parent.mkdir(parents=True, exist_ok=True)
    # One stacked array per field (not one entry per case and field: the zip headers dominated).
    np.savez_compressed(PATH, cases=np.array(names), **{f: np.stack(v) for f, v in rows.items()})
    print(f"wrote {len(names)} cases to {PATH} ({PATH.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
