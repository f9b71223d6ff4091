"""Benchmark sections that set jaxadv against a reference loop: ``sweep`` (E budgets in one
program against foolbox's per-eps loop) and ``onepixel`` (OnePixel against scipy's
differential_evolution, image by image). Split out of ``run.py``, which runs them."""

from __future__ import annotations

import warnings

import common
import jax
import jax.numpy as jnp
import numpy as np
import peers
from common import key as _key
from common import run_attack as _run_attack
from common import tol as _tol

import jaxadv


def sweep_rows(cfg: dict, repeats: int) -> list[dict]:
    """E budgets three ways in jaxadv (one vmapped program; ``cascade=True`` with an early-stopping
    PGD, which attacks only the survivors of the smaller budgets and leaves the step loop once a
    batch is broken; E separate runs) against foolbox's per-eps loop. The target is met by the
    fastest jaxadv form whose curve agrees with foolbox's."""
    target = common.build_target("small_cnn", n=cfg["batch"])
    x, y = target.batch(cfg["batch"])
    eps = [e / 255 for e in cfg["eps"]]
    steps = cfg["steps"]
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=eps[0]), num_steps=steps)
    pgd_es = jaxadv.PGD(threat=jaxadv.LinfBall(eps=eps[0]), num_steps=steps, early_stop=True)

    def sweep(atk, **kw):
        return jaxadv.sweep_eps(
            atk, eps, key=_key(), model=target.model, x=x, y=y, validate=False, **kw
        ).robust_accuracy

    def ours_loop():
        return [_run_attack(pgd.with_eps(e), target.model, x, y).success for e in eps]

    xh, yh = np.asarray(x), np.asarray(y)

    def engine(atk, **kw):  # the data-set engine under the CLI and sweeps, on the same batch
        return jaxadv.evaluate(
            atk, target.model, (xh, yh), eps, key=_key(), batch_size=len(yh), validate=False, **kw
        ).robust_accuracy

    t = common.time_interleaved(
        {
            "sweep": lambda: sweep(pgd),
            "cascade": lambda: sweep(pgd_es, cascade=True),
            "engine": lambda: engine(pgd),
            "engine_cascade": lambda: engine(pgd_es, cascade=True),
            "loop": ours_loop,
        },
        repeats,
    )
    curve = np.asarray(sweep(pgd))
    curve_c = np.asarray(sweep(pgd_es, cascade=True))
    e_n = len(eps)
    rows = [
        {
            "what": f"jaxadv sweep_eps (vmap over eps), E={e_n}",
            "steady_s": common.rnd(t["sweep"]["steady_s"]),
            "robust_acc": [round(float(v), 3) for v in curve],
        },
        {
            "what": f"jaxadv sweep_eps cascade=True, PGD early_stop, E={e_n}",
            "steady_s": common.rnd(t["cascade"]["steady_s"]),
            "robust_acc": [round(float(v), 3) for v in curve_c],
        },
        {
            "what": f"jaxadv.evaluate (streamed engine, host in and out), E={e_n}",
            "steady_s": common.rnd(t["engine"]["steady_s"]),
            "robust_acc": [round(float(v), 3) for v in engine(pgd)],
        },
        {
            "what": f"jaxadv.evaluate cascade=True, PGD early_stop, E={e_n}",
            "steady_s": common.rnd(t["engine_cascade"]["steady_s"]),
            "robust_acc": [round(float(v), 3) for v in engine(pgd_es, cascade=True)],
        },
        {
            "what": f"jaxadv, E={e_n} separate runs",
            "steady_s": common.rnd(t["loop"]["steady_s"]),
            "speedup_of_sweep": common.rnd(t["loop"]["steady_s"] / t["cascade"]["steady_s"], 3),
            "speedup_of_vmap_sweep": common.rnd(t["loop"]["steady_s"] / t["sweep"]["steady_s"], 3),
        },
    ]
    if r := peers.missing("foolbox", "bench"):
        rows.append({"what": "foolbox LinfPGD, per-eps loop", "skipped": r})
        return rows
    # foolbox's own eps grid: its attack loops over the epsilons in Python.
    fb_runs = {
        e: peers.foolbox_pgd(target.model, eps=e, steps=steps, step_size=2.5 * e / steps)
        for e in eps
    }

    def fb_loop():
        return [fb_runs[e](x, y, [e])[0] for e in eps]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        succ, _, steady = peers.timed(fb_loop, repeats)
    fb_curve = [round(1.0 - float(np.mean(np.asarray(s))), 3) for s in succ]
    tol = _tol(len(x))
    rows.append(
        {
            "what": f"foolbox LinfPGD, E={e_n} per-eps loop",
            "steady_s": common.rnd(steady),
            "robust_acc": fb_curve,
            "speedup_of_sweep": common.rnd(steady / t["cascade"]["steady_s"], 3),
            "speedup_of_vmap_sweep": common.rnd(steady / t["sweep"]["steady_s"], 3),
            "target_speedup": round(0.8 * e_n, 2),
            "agree": bool(
                np.all(np.abs(np.array(fb_curve) - curve_c) <= tol)
                and np.all(np.abs(np.array(fb_curve) - curve) <= tol)
            ),
        }
    )
    return rows


def onepixel_rows(cfg: dict, repeats: int) -> list[dict]:
    """jaxadv's OnePixel (scores reused across repeated images, the default; and without reuse,
    scoring all ``B·P`` trials every generation) against the scipy reference, image by image."""
    target = common.build_target("small_cnn", n=cfg["images"])
    x, y = target.batch(cfg["images"])
    n = len(x)
    if not hasattr(jaxadv, "OnePixel"):
        return [{"what": "jaxadv OnePixel", "skipped": "jaxadv.OnePixel not available"}]
    base = dict(
        population_size=cfg["population"],
        num_generations=cfg["generations"],
        early_stop="success",
    )
    variants = {"ours": ("", jaxadv.OnePixel(**base))}
    if cfg.get("without_reuse", True):
        variants["all"] = (", reuse_scores=False", jaxadv.OnePixel(**base, reuse_scores=False))
    rows, ours = [], {}
    for name, (label, atk) in variants.items():
        t = common.time_interleaved(
            {name: lambda atk=atk: _run_attack(atk, target.model, x, y).success},
            repeats if name == "ours" else max(1, repeats // 3),
        )[name]
        res = _run_attack(atk, target.model, x, y)
        ours[name] = (t, float(jnp.mean(res.success)))
        rows.append(
            {
                "what": f"jaxadv OnePixel (pop {cfg['population']}, {cfg['generations']} gen{label})",
                "images": n,
                "steady_s": common.rnd(t["steady_s"]),
                "compile_s": common.rnd(t["compile_s"], 3),
                "s_per_image": common.rnd(t["steady_s"] / n),
                "queries_per_image": round(float(jnp.mean(res.queries)), 1),
                "success_rate": round(ours[name][1], 3),
            }
        )
    t_ours, ours_sr = ours["ours"]
    if r := peers.missing("scipy.optimize", "bench"):
        rows.append({"what": "scipy differential_evolution reference", "skipped": r})
        return rows
    ref = peers.scipy_one_pixel(
        target.model, population_size=cfg["population"], num_generations=cfg["generations"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref(x[:1], y[:1])  # compiles the reference's jitted model call (same shapes every image)
        (succ, nfev), _, steady = peers.timed(lambda: ref(x, y), max(0, repeats // 3 - 1))
    ref_sr = float(np.mean(succ))
    gpu = jax.default_backend() == "gpu"
    rows.append(
        {
            "what": "scipy differential_evolution, image by image",
            "images": n,
            "steady_s": common.rnd(steady),
            "s_per_image": common.rnd(steady / n),
            "queries_per_image": round(float(np.mean(nfev)), 1),
            "success_rate": round(ref_sr, 3),
            "ref_over_jaxadv": common.rnd(steady / t_ours["steady_s"], 3),
            "ref_over_jaxadv_all": (
                common.rnd(steady / ours["all"][0]["steady_s"], 3) if "all" in ours else None
            ),
            "target_ratio": 20.0 if gpu else 1.5,
            "agree": abs(ref_sr - ours_sr) <= max(0.05, 1.0 / n),
        }
    )
    return rows
