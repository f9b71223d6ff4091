"""Loop form of the gradient attacks: ``lax.fori_loop`` with ``unroll=`` settings against full
unrolling, compile time beside steady-state time, and the ablation that explains the overhead.

Finding on XLA:CPU (jax 0.10): the cost is not PGD's bookkeeping (projection, best-tracking,
queries) but the while loop itself. Inside a while-loop body the input-gradient convolution
(a convolution with the reversed, loop-invariant kernel) is emitted with the kernel in ``01oi``
layout and runs on XLA's generic loop emitter instead of the Eigen convolution; in straight-line
code the kernel is transposed once and the fast path is used. ``conv_grad_probe`` shows it on one
convolution; ``pgd_ablation`` shows that a bare step loop (gradient, sign step, projection, nothing
else) pays the same price as the full PGD. Partial unrolling does not help (a single while
iteration is enough to trigger it), full unrolling does; an enclosing loop (PGD's restart loop)
also triggers it, which is why PGD no longer wraps a single restart in a loop.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from common import rnd, time_interleaved  # benchmarks/ is on sys.path (run.py puts it there)

import jaxadv
from jaxadv import losses as L
from jaxadv.attacks.base import example_keys
from jaxadv.attacks.gradient import loss_grad


def conv_grad_probe(batch: int = 64, steps: int = 20, repeats: int = 3) -> list[dict]:
    """One 3x3 convolution, forward only and input-gradient, in a fori_loop vs unrolled."""
    k = jax.random.key(0)
    x = jax.random.uniform(k, (batch, 28, 28, 32))
    w = jax.random.normal(k, (3, 3, 32, 32)) * 0.05

    def conv(w, h):
        return jax.lax.conv_general_dilated(
            h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def make(kind, unroll):
        @jax.jit
        def f(w, x):
            def body(_, h):
                if kind == "forward":
                    return jnp.tanh(conv(w, h))
                return jnp.tanh(jax.grad(lambda z: jnp.sum(conv(w, z) ** 2))(h))

            return jax.lax.fori_loop(0, steps, body, x, unroll=unroll)

        return lambda: f(w, x)

    rows = []
    for kind in ("forward", "input-gradient"):
        # Not {1: ..., True: ...}: 1 == True, so such a dict (or a jit cache) holds one entry.
        t = time_interleaved({"loop": make(kind, 1), "unrolled": make(kind, steps)}, repeats)
        rows.append(
            {
                "probe": f"conv3x3 {kind} x{steps}",
                "batch": batch,
                "fori_loop_s": rnd(t["loop"]["min_s"]),
                "unrolled_s": rnd(t["unrolled"]["min_s"]),
                "loop_over_unrolled": rnd(t["loop"]["min_s"] / t["unrolled"]["min_s"], 3),
            }
        )
    return rows


def pgd_ablation(target: Any, batch: int, steps: int, repeats: int) -> list[dict]:
    """Where PGD's time goes: bare gradient calls, a bare step loop (rolled / unrolled), PGD with
    ``unroll`` 1, 5 and full, APGD rolled / unrolled, and ``lax.scan`` for the bare loop."""
    model = target.model
    x, y = target.batch(batch)
    threat = jaxadv.LinfBall(eps=8 / 255)
    step = 2.5 * 8 / 255 / steps

    grad = jax.jit(lambda m, x, y: loss_grad(m, L.ce, x, y)[0])

    def bare_calls():
        out = None
        for _ in range(steps):
            out = grad(model, x, y)
        return out

    def bare_loop(unroll, use_scan=False):
        @jax.jit
        def f(m, x, y):
            def body(xa):
                g = loss_grad(m, L.ce, xa, y)[0]
                return threat.project(x, xa + threat.ascent_step(g, step))

            if use_scan:
                return jax.lax.scan(lambda c, _: (body(c), None), x, None, steps, unroll=unroll)[0]
            return jax.lax.fori_loop(0, steps, lambda _, c: body(c), x, unroll=unroll)

        return lambda: f(model, x, y)

    keys = example_keys(jax.random.key(0), batch)
    run = jax.jit(lambda a, k, m, x, y: a.run(k, m, x, y).adv)

    def attack(a):
        return lambda: run(a, keys, model, x, y)

    fns = {
        f"{steps} separate grad calls (limit)": bare_calls,
        "bare step loop, fori_loop": bare_loop(1),
        "bare step loop, scan unroll=5": bare_loop(5, use_scan=True),
        "bare step loop, unrolled": bare_loop(steps),
        "PGD unroll=1": attack(jaxadv.PGD(threat=threat, num_steps=steps)),
        "PGD unroll=5": attack(jaxadv.PGD(threat=threat, num_steps=steps, unroll=5)),
        "PGD unrolled": attack(jaxadv.PGD(threat=threat, num_steps=steps, unroll=steps)),
        "APGD unroll=1": attack(jaxadv.APGD(threat=threat, num_steps=steps)),
        "APGD unrolled": attack(jaxadv.APGD(threat=threat, num_steps=steps, unroll=steps)),
    }
    t = time_interleaved(fns, repeats)
    base = t[f"{steps} separate grad calls (limit)"]["min_s"]
    return [
        {
            "model": target.name,
            "batch": batch,
            "variant": k,
            "compile_s": rnd(v["compile_s"], 3),
            "steady_s": rnd(v["steady_s"]),
            "min_s": rnd(v["min_s"]),
            "vs_limit": rnd(v["min_s"] / base, 3),
        }
        for k, v in t.items()
    ]
