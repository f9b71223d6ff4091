"""Peak device memory of an attack, from XLA's own accounting of the compiled program
(``jax.jit(...).lower(...).compile().memory_analysis()``), and the largest batch that fits.

Nothing is executed: each (attack, batch) is only compiled. Peak = arguments + outputs + temporaries
- aliased bytes. The largest batch is extrapolated from a straight line through the measured
batches (memory is affine in the batch for these programs) against the device's memory: on a GPU
its ``bytes_limit``; on the CPU the host RAM, under the stated assumption that one process may use
all of it.
"""

from __future__ import annotations

from typing import Any

import jax
from common import device_memory_bytes, rnd  # benchmarks/ is on sys.path (run.py puts it there)

from jaxadv.attacks.base import example_keys


def peak_bytes(attack: Any, model: Any, x: Any, y: Any) -> dict[str, int] | None:
    keys = example_keys(jax.random.key(0), x.shape[0])
    compiled = (
        jax.jit(lambda a, k, m, x, y: a.run(k, m, x, y).adv)
        .lower(attack, keys, model, x, y)
        .compile()
    )
    ma = compiled.memory_analysis()
    if ma is None:
        return None
    arg = int(ma.argument_size_in_bytes)
    out = int(ma.output_size_in_bytes)
    tmp = int(ma.temp_size_in_bytes)
    alias = int(getattr(ma, "alias_size_in_bytes", 0))
    return {"arguments": arg, "outputs": out, "temporaries": tmp, "peak": arg + out + tmp - alias}


def memory_rows(target: Any, attacks: dict[str, Any], batches: list[int]) -> list[dict]:
    limit, source = device_memory_bytes()
    rows = []
    for name, atk in attacks.items():
        points = []
        for b in batches:
            x, y = target.batch(b)
            m = peak_bytes(atk, target.model, x, y)
            if m is None:
                rows.append({"model": target.name, "attack": name, "batch": b, "note": "n/a"})
                continue
            points.append((b, m["peak"]))
            rows.append(
                {
                    "model": target.name,
                    "attack": name,
                    "batch": b,
                    "peak_MiB": rnd(m["peak"] / 2**20),
                    "temp_MiB": rnd(m["temporaries"] / 2**20),
                }
            )
        if len(points) >= 2:
            (b0, p0), (b1, p1) = points[0], points[-1]
            per = (p1 - p0) / (b1 - b0)
            fixed = p0 - per * b0
            max_b = int((limit - fixed) // per) if per > 0 else None
            rows[-1]["MiB_per_image"] = rnd(per / 2**20)
            rows[-1]["max_batch"] = max_b
            rows[-1]["memory_limit"] = f"{limit / 2**30:.1f} GiB ({source})"
    return rows
