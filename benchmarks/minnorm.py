"""Minimum-norm attacks beside foolbox 3 on the same model and images: Carlini–Wagner L2, DDN and
DeepFool (L2 and L∞), each at its paper's settings (CW's steps reduced, see ``--cw-steps``).

Target: the shipped ``small_cnn_clean`` on PneumoniaMNIST test images that it classifies
correctly (a class-stratified subset, seed 0). Both libraries run unbounded (jaxadv with
``eps=inf``, foolbox with ``epsilons=None``); per attack the table gives the success rate, the
median and mean norm (L2, or L∞ for DeepFool-L∞) of the successful points, and wall time: jaxadv's
first call (trace + compile + run) and a second call; foolbox's one call after a 2-step call of
the same attack has compiled its jitted model and its eager operations. foolbox runs eagerly
through eagerpy around the same Flax model, jitted (``peers.foolbox_pgd``'s set-up). Success is
recomputed for both with the same model. foolbox's CW starts its best point at an all-zero image,
so an example it never breaks can come back as that (adversarial) black image: such rows count
as successes with a huge norm, in the mean and not the median.

Our median norm above foolbox's is a bug until explained (``verdict`` column).

    python benchmarks/minnorm.py --n 32            # a few minutes on 2 CPU cores
    python benchmarks/minnorm.py --n 32 --md       # also append a dated section to RESULTS.md
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # this checkout's jaxadv, not an installed one

import common  # noqa: E402
import peers  # noqa: E402

import jaxadv  # noqa: E402
from jaxadv import report  # noqa: E402
from jaxadv.demo import stratified_subset  # noqa: E402

#: Allowed excess of our median norm over foolbox's before the row is flagged (relative).
NORM_TOL = 0.01


def _norms(x: np.ndarray, adv: np.ndarray, p: float) -> np.ndarray:
    d = (adv - x).reshape(x.shape[0], -1).astype(np.float64)
    return np.abs(d).max(axis=1) if p == np.inf else np.sqrt((d * d).sum(axis=1))


def _row(lib: str, name: str, x, y, adv, model, p, first_s, steady_s) -> dict[str, Any]:
    adv = np.asarray(adv)
    pred = np.asarray(jnp.argmax(model(jnp.asarray(adv)), axis=1))
    succ = pred != np.asarray(y)
    every = _norms(np.asarray(x), adv, p)
    n = every[succ]
    return {
        "attack": name,
        "library": lib,
        "norm": "linf" if p == np.inf else "l2",
        "success_rate": float(succ.mean()),
        "median_norm": float(np.median(n)) if n.size else None,
        "mean_norm": float(np.mean(n)) if n.size else None,
        "first_s": first_s,
        "steady_s": steady_s,
        # per example (None where the attack failed), for the side-by-side comparison
        "norms": [float(v) if ok else None for v, ok in zip(every, succ, strict=True)],
    }


def attacks(
    cw_steps: int, cw_binary: int, ddn_steps: int, cw_abort: bool = True
) -> dict[str, tuple[Any, Any, float]]:
    """``name -> (jaxadv attack, foolbox attack factory, norm p)`` at matching settings; the
    factory takes a number of steps (a 2-step call warms foolbox's eager operations up)."""
    import foolbox as fb

    inf_l2, inf_linf = jaxadv.L2Ball(eps=np.inf), jaxadv.LinfBall(eps=np.inf)

    def fb_cw(s=cw_steps):
        b = cw_binary if s == cw_steps else 1
        return fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=b, steps=s, abort_early=cw_abort
        )

    return {
        f"CW-L2 ({cw_binary}x{cw_steps}{'' if cw_abort else ', no abort'})": (
            jaxadv.CW(
                threat=inf_l2,
                num_steps=cw_steps,
                num_binary_steps=cw_binary,
                abort_early=cw_abort,
            ),
            fb_cw,
            2.0,
        ),
        f"DDN ({ddn_steps})": (
            jaxadv.DDN(threat=inf_l2, num_steps=ddn_steps),
            lambda s=ddn_steps: fb.attacks.DDNAttack(steps=s),
            2.0,
        ),
        "DeepFool-L2": (
            jaxadv.DeepFool(threat=inf_l2),
            lambda s=50: fb.attacks.L2DeepFoolAttack(steps=s),
            2.0,
        ),
        "DeepFool-Linf": (
            jaxadv.DeepFool(threat=inf_linf),
            lambda s=50: fb.attacks.LinfDeepFoolAttack(steps=s),
            np.inf,
        ),
    }


def run(n, cw_steps, cw_binary, ddn_steps, only=None, no_foolbox=False, cw_abort=True):
    target = common.build_target("small_cnn", n=624)
    model = target.model
    xs, ys = target.x_all, target.y_all
    pred = np.asarray(jax.jit(lambda m, x: jnp.argmax(m(x), axis=1))(model, jnp.asarray(xs)))
    ok = np.flatnonzero(pred == ys)
    pick = ok[stratified_subset(ys[ok], n, 0)]
    x, y = jnp.asarray(xs[pick]), jnp.asarray(ys[pick], jnp.int32)
    why = "--no-foolbox" if no_foolbox else peers.missing("foolbox", "bench")
    fmodel = None
    if why is None:
        import foolbox as fb

        fmodel = fb.JAXModel(jax.jit(lambda z: model(z)), bounds=(0.0, 1.0))
        jax.block_until_ready(fmodel(x))  # compile the peer's forward pass before timing
    rows = []
    for name, (ours, fb_make, p) in attacks(cw_steps, cw_binary, ddn_steps, cw_abort).items():
        if only and not any(name.lower().startswith(o.lower()) for o in only):
            continue
        key = jax.random.key(0)
        t0 = time.perf_counter()
        res = jax.block_until_ready(ours(key, model, x, y, validate=False))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = jax.block_until_ready(ours(key, model, x, y, validate=False))
        steady = time.perf_counter() - t0
        rows.append(_row("jaxadv", name, x, y, res.adv, model, p, first, steady))
        print(rows[-1], flush=True)
        if fmodel is None:
            rows.append({"attack": name, "library": "foolbox", "skipped": why})
            continue
        fb_make(2)(fmodel, x, y, epsilons=None)  # compile its eager operations for this shape
        t0 = time.perf_counter()
        raw, _, _ = fb_make()(fmodel, x, y, epsilons=None)
        raw = jax.block_until_ready(jnp.asarray(raw.raw if hasattr(raw, "raw") else raw))
        t = time.perf_counter() - t0
        rows.append(_row("foolbox", name, x, y, raw, model, p, None, t))
        print(rows[-1], flush=True)
    for ours, theirs in zip(rows[::2], rows[1::2], strict=True):
        a, b = ours.get("median_norm"), theirs.get("median_norm")
        if a is None or b is None:
            continue
        ours["ours_over_foolbox_median"] = a / b
        both = [
            (u, v)
            for u, v in zip(ours["norms"], theirs["norms"], strict=True)
            if u is not None and v is not None
        ]
        ratio = np.asarray([u / v for u, v in both if v > 0])
        # per example: how often each library found the smaller point, and by how much
        ours["ours_smaller"] = int(np.sum(ratio < 1 - 1e-6))
        ours["ours_larger"] = int(np.sum(ratio > 1 + 1e-6))
        ours["ratio_median"] = float(np.median(ratio)) if ratio.size else None
        ours["ratio_min_max"] = [float(ratio.min()), float(ratio.max())] if ratio.size else None
        theirs["time_ratio"] = theirs["steady_s"] / ours["steady_s"]
        worse = a > b * (1 + NORM_TOL) or ours["success_rate"] < theirs["success_rate"]
        ours["verdict"] = "WORSE than foolbox" if worse else "ok"
    return rows, pick


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="correctly classified images")
    p.add_argument("--cw-steps", type=int, default=1000, help="Adam steps per binary step")
    p.add_argument("--cw-binary", type=int, default=9, help="binary search steps (paper: 9)")
    p.add_argument("--ddn-steps", type=int, default=100)
    p.add_argument("--only", default="", help="comma list of attack name prefixes")
    p.add_argument("--no-foolbox", action="store_true", help="jaxadv rows only")
    p.add_argument(
        "--cw-no-abort", action="store_true", help="CW without early abort (both libraries)"
    )
    p.add_argument("--out", default=str(common.HERE / "minnorm.json"))
    p.add_argument("--md", action="store_true", help="append a section to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    rows, pick = run(
        args.n,
        args.cw_steps,
        args.cw_binary,
        args.ddn_steps,
        only,
        args.no_foolbox,
        not args.cw_no_abort,
    )
    man = report.manifest(
        seed=0,
        benchmark="minimum-norm attacks beside foolbox 3",
        model="small_cnn_clean",
        num_examples=len(pick),
        example_indices=pick.tolist(),
        foolbox=_version("foolbox"),
        cpu_count=__import__("os").cpu_count(),
    )
    report.write_json(args.out, {"manifest": man, "rows": rows})
    cols = [
        "attack",
        "library",
        "norm",
        "success_rate",
        "median_norm",
        "mean_norm",
        "first_s",
        "steady_s",
        "time_ratio",
        "ours_over_foolbox_median",
        "ours_smaller",
        "ours_larger",
        "ratio_median",
        "verdict",
        "skipped",
    ]
    table = common.md_table(rows, cols)
    print(table)
    if args.md:
        head = (
            f"\n## Minimum-norm attacks beside foolbox ({time.strftime('%Y-%m-%d')})\n\n"
            f"`python benchmarks/minnorm.py --n {args.n} --cw-steps {args.cw_steps} --cw-binary "
            f"{args.cw_binary} --ddn-steps {args.ddn_steps}`: small_cnn_clean, {len(pick)} "
            "correctly classified PneumoniaMNIST test images (class-stratified, seed 0), eps = inf"
            " / epsilons=None; norms over successful points. jax "
            f"{man['jax']}, foolbox {man['foolbox']}, {man['backend']} ({man['devices'][0]}), "
            f"commit {man['git_commit']}, 2 CPU cores shared with other jobs.\n\n"
        )
        with open(common.HERE / "RESULTS.md", "a") as f:
            f.write(head + table)
    return 0


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001 - a missing peer is reported, not fatal
        return None


if __name__ == "__main__":
    raise SystemExit(main())
