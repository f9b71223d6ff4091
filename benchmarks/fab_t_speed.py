"""FAB-T alone, as AutoAttack's 'standard' runs it, jaxadv against the official code (issue 13).

The digits SmallCNN of ``benchmarks/autoattack.py`` (same training, same torch port), L-inf
``eps = 14/255``: jaxadv's APGD-CE and APGD-T stages pick the points still robust, then both
libraries run only the FAB-T stage on exactly those points (9 targets, 1 restart, ``--steps``),
interleaved, ``--repeats`` times after one warm-up call each. jaxadv is timed through
``AutoAttack.__call__`` with the one stage (the path the full run takes); the official code
through its ``FABAttack_PT.perturb`` as ``run_standard_evaluation`` calls it. ``jaxadv_before``
is the path AutoAttack took before issue 13's fix, in the same process: ``FAB.run`` (every
target on every row of the padded block) jitted whole, traced with ``JAXADV_CANONICAL_CONVS=0``
(FAB's gradients did not go through ``canonical_convs``).

    PYTHONPATH=$PWD:$PWD/benchmarks python benchmarks/fab_t_speed.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
import warnings

import autoattack as bench
import jax
import jax.numpy as jnp
import numpy as np
import peers

import jaxadv
from jaxadv.attacks.base import example_keys, run_jit
from jaxadv.engine import layout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the benchmark's probe)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    target = bench.build_target("digits", a.images)
    net, diff = peers.torch_port(target)
    eps = bench.EPS["digits"]["Linf"]
    threat = jaxadv.LinfBall(eps=eps)
    x, y = jnp.asarray(target.x_all), jnp.asarray(target.y_all)
    key = jax.random.key(0)
    apgd = jaxadv.AutoAttack.standard(
        threat, version="custom", num_steps=a.steps, attacks=("apgd-ce", "apgd-t")
    )
    robust = np.nonzero(~np.asarray(apgd(key, target.model, x, y).success))[0]
    xs, ys = x[robust], y[robust]
    fab_t = jaxadv.AutoAttack.standard(
        threat, version="custom", num_steps=a.steps, attacks=("fab-t",)
    )

    log = logging.getLogger("jaxadv.attacks.autoattack")
    handler = bench._StageTimes()
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    def ours():
        handler.secs.clear()
        res = fab_t(key, target.model, xs, ys)
        jax.block_until_ready(res.adv)
        return handler.secs[0], np.asarray(~res.success)

    stage = fab_t.attacks[0]
    pad = layout.pad_rows(np.arange(robust.size), layout.bucket(robust.size, len(ys)))
    # AutoAttack.__call__'s keys for these rows (the stage sees them as a block of its own)
    keys = example_keys(key, robust.size)[pad]

    def before():
        t0 = time.perf_counter()
        res = run_jit(stage, keys, target.model, xs[pad], ys[pad], None)
        ok = np.asarray(~res.success)[: robust.size]
        return time.perf_counter() - t0, ok

    os.environ["JAXADV_CANONICAL_CONVS"] = "0"  # read when FAB's step is traced
    t0 = time.perf_counter()
    before()
    first_before = time.perf_counter() - t0
    del os.environ["JAXADV_CANONICAL_CONVS"]

    off = bench._official_attack(net, "Linf", eps, 10, a.steps, 0, ["fab-t"]).fab
    off.targeted, off.n_restarts, off.seed, off.verbose = True, 1, 0, False
    xt, yt = peers.to_nchw(np.asarray(xs)), torch.from_numpy(np.asarray(ys, np.int64))

    def official():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adv = off.perturb(xt, yt)
        s = time.perf_counter() - t0
        return s, bench._predict(net, adv) == np.asarray(ys)

    t0 = time.perf_counter()
    ours()
    first = time.perf_counter() - t0
    official()
    times: dict[str, list[float]] = {"jaxadv": [], "jaxadv_before": [], "official": []}
    rob = {}
    for _ in range(a.repeats):
        for name, fn in (("jaxadv", ours), ("jaxadv_before", before), ("official", official)):
            s, r = fn()
            times[name].append(s)
            rob[name] = int(r.sum())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "points_attacked": int(robust.size),
                "port_logit_diff": float(diff),
                "jaxadv_first_call_s": round(first, 2),
                "jaxadv_before_first_call_s": round(first_before, 2),
                "stage_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
                "median_s": {k: round(v, 2) for k, v in med.items()},
                "official_over_jaxadv": round(med["official"] / med["jaxadv"], 2),
                "official_over_jaxadv_before": round(med["official"] / med["jaxadv_before"], 2),
                "still_robust_after_fab_t": rob,
                "jax": jax.__version__,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
