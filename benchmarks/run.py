"""jaxadv throughput against peers and against the hardware limit.

Sections (``--only`` picks some; all run by default):

* ``throughput``: per model (SmallCNN 28x28, ResNet-18 32x32, ResNet-50 224x224), attack and batch:
  compile time apart from steady-state time (median of repeats, ``block_until_ready``), images/s,
  and for gradient attacks the **limit ratio** = attack time / time of ``num_steps`` jitted
  forward+backward passes of the same model and batch (same process, timed interleaved), plus
  achieved FLOP/s against a measured matmul peak.
* ``peers``: the same PGD in foolbox 3 (JAX backend, same Flax model), torchattacks and ART
  (PyTorch CPU, same weights through safetensors); time ratios and robust-accuracy agreement.
* ``strength``: the same PGD over several random starts in jaxadv and each peer: mean robust
  accuracy and whether jaxadv is weaker than a peer by more than 2 standard errors.
* ``sweep``: ``jaxadv.sweep_eps`` over E budgets against foolbox's per-eps loop and against E
  separate jaxadv runs.
* ``onepixel``: ``jaxadv.OnePixel`` against a scipy ``differential_evolution`` reference, per image.
* ``loops``: fori_loop / scan / unroll settings and the ablation of PGD's overhead.
* ``memory``: peak device memory per attack and batch on ResNet-50 224x224, and the largest batch.
* ``autoattack``: ``AutoAttack.standard`` against the official AutoAttack code (``pyautoattack``)
  and torchattacks' AutoAttack on the same weights (binary PneumoniaMNIST models and a 10-class
  digits model, L∞ and L2): robust accuracy per stage, disagreements, wall time
  (``benchmarks/autoattack.py``).

Writes JSON (device, JAX version and commit beside every number) and appends Markdown tables and
the verdict on each target to ``benchmarks/RESULTS.md``.

    python benchmarks/run.py --quick     # ~3 min on 2 CPU cores
    python benchmarks/run.py             # full: ~28 min on 2 CPU cores
    python benchmarks/run.py --resume    # after an interruption: keeps the sections saved in --out
    python benchmarks/run.py --dtype bfloat16 --only throughput   # GPU: bf16 network
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# benchmarks/ for its helper modules, and the checkout itself first: the numbers must be those of
# the jaxadv next to this file, not of whichever copy is installed (an editable install elsewhere).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import autoattack as aa_bench  # noqa: E402
import common  # noqa: E402
import loops  # noqa: E402
import memory  # noqa: E402
import peers  # noqa: E402
import vs_reference  # noqa: E402
from common import run_attack as _run_attack  # noqa: E402
from common import tol as _tol  # noqa: E402

import jaxadv  # noqa: E402
from jaxadv import losses as L  # noqa: E402
from jaxadv import report  # noqa: E402
from jaxadv.attacks.gradient import loss_grad  # noqa: E402

SECTIONS = (
    "throughput",
    "peers",
    "strength",
    "sweep",
    "onepixel",
    "loops",
    "memory",
    "autoattack",
)

#: Settings per mode. Steps are reduced on the ResNets so a CPU run stays bounded.
QUICK = {
    "throughput": {
        "small_cnn": {"batches": [64], "steps": 20},
        "resnet18": {"batches": [8], "steps": 5, "attacks": ["FGSM", "PGD", "PGD unrolled"]},
        "resnet50": {"batches": [1], "steps": 2, "attacks": ["FGSM", "PGD"]},
    },
    "repeats": 3,
    "peers": {"model": "small_cnn", "batches": [16, 64], "steps": 10},
    "strength": {"model": "small_cnn", "images": 256, "steps": 10, "seeds": 4},
    "sweep": {"batch": 16, "steps": 10, "eps": [1, 2, 4, 8, 16]},
    # Su et al.'s population and generations (the setting the target is about), few images
    "onepixel": {"images": 8, "population": 400, "generations": 100, "without_reuse": False},
    "loops": {"batch": 64, "steps": 20},
    "memory": {"batches": [1, 2], "steps": 10, "attacks": ["PGD"]},
    "autoattack": {
        "targets": ["pneumonia_pgdat", "digits"],
        "norms": ["Linf", "L2"],
        "images": 128,
        "steps": 20,
        "queries": 500,
        "repeats": 1,
        "peer_repeats": 1,
    },
    "matmul_n": 1024,
}
#: Minimal settings to check that every code path runs (seconds of compute, not a measurement).
SMOKE = {
    "throughput": {
        "small_cnn": {"batches": [4], "steps": 2},
        "resnet18": {"batches": [2], "steps": 1},
    },
    "repeats": 1,
    "peers": {"model": "small_cnn", "batches": [4, 16], "steps": 2},
    "strength": {"model": "small_cnn", "images": 8, "steps": 2, "seeds": 2},
    "sweep": {"batch": 4, "steps": 2, "eps": [2, 8]},
    "onepixel": {"images": 2, "population": 12, "generations": 2},
    "loops": {"batch": 4, "steps": 3},
    "memory": {"batches": [1, 2], "steps": 1, "attacks": ["FGSM", "PGD"]},
    "autoattack": {
        "targets": ["pneumonia_clean", "digits"],
        "norms": ["Linf", "L2"],
        "images": 16,
        "steps": 2,
        "queries": 10,
        "repeats": 1,
        "peer_repeats": 1,
    },
    "matmul_n": 256,
}
FULL = {
    "throughput": {
        "small_cnn": {"batches": [16, 64, 256], "steps": 20},
        "resnet18": {"batches": [16, 64], "steps": 10},
        "resnet50": {"batches": [1, 4], "steps": 5},
    },
    "repeats": 5,
    "peers": {"model": "small_cnn", "batches": [1, 16, 64, 256], "steps": 20},
    "strength": {"model": "small_cnn", "images": 256, "steps": 10, "seeds": 8},
    "sweep": {"batch": 64, "steps": 20, "eps": [0.5, 1, 2, 4, 8, 16]},
    "onepixel": {"images": 32, "population": 400, "generations": 100},
    "loops": {"batch": 256, "steps": 20},
    "memory": {"batches": [1, 8], "steps": 10, "attacks": ["FGSM", "PGD", "APGD"]},
    # the published settings: 100 steps, Square 5000 queries; every test image (624 / 600). The PGD-AT
    # model runs in --quick only: the torch peers' 5000-query Square on its survivors would add
    # about 15 minutes per norm on 2 CPU cores.
    "autoattack": {
        "targets": ["pneumonia_clean", "digits"],
        "norms": ["Linf", "L2"],
        "images": 624,
        "steps": 100,
        "queries": 5000,
        "repeats": 1,
        "peer_repeats": 1,
    },
    "matmul_n": 2048,
}

EPS = 8 / 255
PEER_EPS = 4 / 255
#: Two robust accuracies "agree" when they differ by at most this (absolute), or by 2 examples.


# ---------------------------------------------------------------------------------------------


def gradient_attacks(steps: int) -> dict[str, tuple[Any, int]]:
    """name -> (attack, forward+backward passes it cannot avoid)."""
    t = jaxadv.LinfBall(eps=EPS)
    return {
        "FGSM": (jaxadv.FGSM(threat=t), 1),
        f"PGD-{steps}": (jaxadv.PGD(threat=t, num_steps=steps), steps),
        f"PGD-{steps} unrolled": (jaxadv.PGD(threat=t, num_steps=steps, unroll=steps), steps),
        f"APGD-{steps}": (jaxadv.APGD(threat=t, num_steps=steps), steps),
        f"APGD-{steps} unrolled": (jaxadv.APGD(threat=t, num_steps=steps, unroll=steps), steps),
    }


def throughput(cfg: dict, repeats: int, dtype: str, peak: float) -> list[dict]:
    rows = []
    grad = jax.jit(lambda m, x, y: loss_grad(m, L.ce, x, y)[0])
    for name, mc in cfg.items():
        target = common.build_target(name, n=max(mc["batches"]), dtype=dtype)
        for b in mc["batches"]:
            x, y = target.batch(b)
            g_flops = common.compiled_flops(lambda m, x, y: grad(m, x, y), target.model, x, y)
            for aname, (atk, n) in gradient_attacks(mc["steps"]).items():
                kind = aname.replace(f"-{mc['steps']}", "")
                if "attacks" in mc and kind not in mc["attacks"]:
                    continue

                def limit(n=n, m=target.model, x=x, y=y):
                    out = None
                    for _ in range(n):
                        out = grad(m, x, y)
                    return out

                t = common.time_interleaved(
                    {
                        "attack": lambda atk=atk, m=target.model, x=x, y=y: (
                            _run_attack(atk, m, x, y).adv
                        ),
                        "limit": limit,
                    },
                    repeats,
                )
                a, lim = t["attack"], t["limit"]
                achieved = g_flops * n / a["steady_s"] if g_flops else None
                rows.append(
                    {
                        "model": common.MODEL_LABELS[name],
                        "dtype": dtype,
                        "attack": aname,
                        "batch": b,
                        "compile_s": common.rnd(a["compile_s"], 3),
                        "steady_s": common.rnd(a["steady_s"]),
                        "min_s": common.rnd(a["min_s"]),
                        "images_per_s": common.rnd(b / a["steady_s"]),
                        "grad_passes": n,
                        "limit_s": common.rnd(lim["steady_s"]),
                        "limit_ratio": common.rnd(a["steady_s"] / lim["steady_s"], 3),
                        "limit_ratio_min": common.rnd(a["min_s"] / lim["min_s"], 3),
                        "GFLOP/s": common.rnd(achieved / 1e9) if achieved else None,
                        "of_peak": common.rnd(achieved / peak, 3) if achieved and peak else None,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _peer_runners(target: Any, steps: int) -> tuple[dict[str, Any], dict[str, str]]:
    """``({label: run(x, y) -> success[B]}, {label: why skipped})``: the same L∞ PGD (PEER_EPS,
    step 2.5·eps/steps, random start) in each peer library that is installed."""
    step = 2.5 * PEER_EPS / steps
    runners: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    if r := peers.missing("foolbox", "bench"):
        reasons["foolbox 3 (JAX)"] = r
    else:
        runners["foolbox 3 (JAX)"] = peers.foolbox_pgd(
            target.model, eps=PEER_EPS, steps=steps, step_size=step
        )
    torch_missing = peers.missing("torch", "peers")
    net = None
    if not torch_missing:
        net, diff = peers.torch_port(target)
        print(f"torch port of {target.name}: max |logit diff| = {diff:.2e}", flush=True)
        if diff > peers.PORT_ATOL:
            torch_missing = f"torch port logits differ by {diff:.2e} > {peers.PORT_ATOL}"
    for label, mod, make in (
        ("torchattacks (torch CPU)", "torchattacks", "ta"),
        ("ART (torch CPU)", "art", "art"),
    ):
        r = torch_missing or peers.missing(mod, "peers")
        if r:
            reasons[label] = r
        elif make == "ta":
            runners[label] = peers.torchattacks_pgd(net, eps=PEER_EPS, steps=steps, step_size=step)
        else:
            k = target.x_all.shape[-1]
            h = target.x_all.shape[1]
            runners[label] = peers.art_pgd(
                net,
                eps=PEER_EPS,
                steps=steps,
                step_size=step,
                shape=(k, h, h),
                classes=common.MODELS[target.name][2],
            )
    return runners, reasons


def peer_rows(cfg: dict, repeats: int) -> list[dict]:
    target = common.build_target(cfg["model"], n=max(cfg["batches"]))
    steps = cfg["steps"]
    ours = jaxadv.PGD(threat=jaxadv.LinfBall(eps=PEER_EPS), num_steps=steps, unroll=steps)
    ours_default = jaxadv.PGD(threat=jaxadv.LinfBall(eps=PEER_EPS), num_steps=steps)
    runners, reasons = _peer_runners(target, steps)
    rows = []
    for b in cfg["batches"]:
        x, y = target.batch(b)
        t = common.time_interleaved(
            {
                "unrolled": lambda x=x, y=y: _run_attack(ours, target.model, x, y).success,
                "default": lambda x=x, y=y: _run_attack(ours_default, target.model, x, y).success,
            },
            repeats,
        )
        res = _run_attack(ours_default, target.model, x, y)
        our_ra = float(jnp.mean(~res.success))
        base = {"model": common.MODEL_LABELS[target.name], "batch": b, "steps": steps}
        rows.append(
            {
                **base,
                "library": f"jaxadv PGD (unrolled: {t['unrolled']['steady_s']:.3g} s)",
                "steady_s": common.rnd(t["default"]["steady_s"]),
                "compile_s": common.rnd(t["default"]["compile_s"], 3),
                "robust_acc": round(our_ra, 4),
            }
        )
        for label, run in runners.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                succ, first, steady = peers.timed(lambda run=run, x=x, y=y: run(x, y), repeats)
            ra = float(1.0 - np.mean(np.asarray(succ)))
            rows.append(
                {
                    **base,
                    "library": label,
                    "steady_s": common.rnd(steady),
                    "compile_s": common.rnd(max(first - steady, 0.0), 3),
                    "robust_acc": round(ra, 4),
                    "peer_over_jaxadv": common.rnd(steady / t["default"]["steady_s"], 3),
                    "peer_over_jaxadv_unrolled": common.rnd(steady / t["unrolled"]["steady_s"], 3),
                    "agree": abs(ra - our_ra) <= _tol(b),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        for label, why in reasons.items():
            rows.append({**base, "library": label, "skipped": why})
    return rows


def strength_rows(cfg: dict) -> list[dict]:
    """Attack strength beside the peers: the same PGD run with ``seeds`` different random starts
    per library on the same images; mean robust accuracy, its spread over seeds and standard
    error. One run's robust accuracy moves by a few examples with the random start, so a single
    run cannot tell a weaker attack from an unlucky seed; this can. ``weaker_by_se`` is jaxadv's
    mean minus the peer's, in standard errors of that difference (> 2: jaxadv is weaker)."""
    target = common.build_target(cfg["model"], n=cfg["images"])
    x, y = target.batch(cfg["images"])
    steps, seeds = cfg["steps"], cfg["seeds"]
    runners, reasons = _peer_runners(target, steps)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=PEER_EPS), num_steps=steps)
    runs = {"jaxadv PGD": lambda s: pgd(jax.random.key(s), target.model, x, y).success}
    for label, run in runners.items():
        runs[label] = lambda s, run=run: run(x, y)
    accs: dict[str, list[float]] = {k: [] for k in runs}
    for s in range(seeds):
        if "torch" in sys.modules:
            sys.modules["torch"].manual_seed(s)  # torchattacks' random starts
        np.random.seed(s)  # noqa: NPY002 - ART draws its random starts from numpy's global RNG
        for label, run in runs.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                accs[label].append(1.0 - float(np.mean(np.asarray(run(s)))))
    ours = np.asarray(accs["jaxadv PGD"])
    base = {"model": common.MODEL_LABELS[target.name], "images": len(x), "steps": steps}
    rows = []
    for label, a in accs.items():
        a = np.asarray(a)
        se = float(np.sqrt(np.var(ours, ddof=1) / seeds + np.var(a, ddof=1) / seeds))
        row = {
            **base,
            "library": label,
            "seeds": seeds,
            "robust_acc_mean": round(float(a.mean()), 4),
            "robust_acc_sd": round(float(a.std(ddof=1)), 4),
            "robust_acc_min": round(float(a.min()), 4),
        }
        if label != "jaxadv PGD":
            row["weaker_by_se"] = round(float(ours.mean() - a.mean()) / max(se, 1e-12), 2)
        rows.append(row)
    for label, why in reasons.items():
        rows.append({**base, "library": label, "skipped": why})
    return rows


def memory_section(cfg: dict) -> list[dict]:
    target = common.build_target("resnet50", n=max(cfg["batches"]))
    t = jaxadv.LinfBall(eps=EPS)
    all_attacks = {
        "FGSM": jaxadv.FGSM(threat=t),
        "PGD": jaxadv.PGD(threat=t, num_steps=cfg["steps"]),
        "APGD": jaxadv.APGD(threat=t, num_steps=cfg["steps"]),
    }
    attacks = {
        (k if k == "FGSM" else f"{k}-{cfg['steps']}"): v
        for k, v in all_attacks.items()
        if k in cfg["attacks"]
    }
    return memory.memory_rows(target, attacks, cfg["batches"])


# ---------------------------------------------------------------------------------------------


def verdicts(res: dict) -> list[dict]:
    """Each target of the issue, met or missed, and by how much."""
    out = []
    dev = jax.default_backend()

    def add(target: str, measured: Any, met: bool) -> None:
        out.append({"target": target, "measured": measured, "met": bool(met), "device": dev})

    for r in res.get("throughput", []):
        if r["model"].startswith("SmallCNN") and r["attack"].startswith("PGD"):
            ratio = r["limit_ratio"]
            add(f"{r['attack']} limit ratio <= 1.05 (batch {r['batch']})", ratio, ratio <= 1.05)
    for r in res.get("peers", []):
        if r.get("library", "").startswith("foolbox") and "peer_over_jaxadv" in r:
            need = 2.0 if r["batch"] == 16 else 1.0
            got = r["peer_over_jaxadv"]
            add(f"PGD >= {need:g}x foolbox at batch {r['batch']}", got, got >= need and r["agree"])
    for r in res.get("strength", []):
        if "weaker_by_se" in r:
            what = f"PGD not weaker than {r['library']} (mean of {r['seeds']} seeds, within 2 s.e.)"
            add(what, r["weaker_by_se"], r["weaker_by_se"] <= 2.0)
    for r in res.get("onepixel", []):
        if "ref_over_jaxadv" in r:
            got = r["ref_over_jaxadv"]
            what = f"OnePixel >= {r['target_ratio']:g}x scipy per image, success +-5 pts"
            add(what, got, got >= r["target_ratio"] and r["agree"])
    for r in res.get("sweep", []):
        if "target_speedup" in r:
            got = r["speedup_of_sweep"]
            what = f"sweep_eps (cascade) >= {r['target_speedup']:g}x foolbox per-eps loop, curves agree"
            add(what, got, got >= r["target_speedup"] and r["agree"])
    for target, measured, met in aa_bench.verdicts(res):
        add(target, measured, met)
    return out


TABLE_COLS = {
    "throughput": (
        "model",
        "dtype",
        "attack",
        "batch",
        "compile_s",
        "steady_s",
        "images_per_s",
        "limit_s",
        "limit_ratio",
        "limit_ratio_min",
        "GFLOP/s",
        "of_peak",
    ),
    "peers": (
        "model",
        "batch",
        "steps",
        "library",
        "compile_s",
        "steady_s",
        "robust_acc",
        "peer_over_jaxadv",
        "peer_over_jaxadv_unrolled",
        "agree",
        "skipped",
    ),
    "sweep": (
        "what",
        "steady_s",
        "robust_acc",
        "speedup_of_sweep",
        "speedup_of_vmap_sweep",
        "target_speedup",
        "agree",
        "skipped",
    ),
    "onepixel": (
        "what",
        "images",
        "compile_s",
        "steady_s",
        "s_per_image",
        "queries_per_image",
        "success_rate",
        "ref_over_jaxadv",
        "ref_over_jaxadv_all",
        "target_ratio",
        "agree",
        "skipped",
    ),
    "strength": (
        "model",
        "images",
        "steps",
        "library",
        "seeds",
        "robust_acc_mean",
        "robust_acc_sd",
        "robust_acc_min",
        "weaker_by_se",
        "skipped",
    ),
    "loops_probe": ("probe", "batch", "fori_loop_s", "unrolled_s", "loop_over_unrolled"),
    "loops": ("model", "batch", "variant", "compile_s", "steady_s", "min_s", "vs_limit"),
    "memory": (
        "model",
        "attack",
        "batch",
        "peak_MiB",
        "temp_MiB",
        "MiB_per_image",
        "max_batch",
        "memory_limit",
    ),
    **aa_bench.TABLE_COLS,
    "targets": ("target", "measured", "met", "device"),
}


def markdown(man: dict, res: dict, args: argparse.Namespace) -> str:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    head = (
        f"\n## {time.strftime('%Y-%m-%d')} · {mode} · {man['backend']} {man['devices'][0]} "
        f"({man['device_count']} device(s)) · jax {man['jax']} · commit {man['git_commit']}\n\n"
    )
    if args.note:
        head += f"{args.note}\n\n"
    if "matmul_peak_gflops" in man:
        head += f"Measured matmul peak: {man['matmul_peak_gflops']:.1f} GFLOP/s.\n\n"
    parts = [head]
    for sec, rows in res.items():
        if not rows:
            continue
        parts.append(f"### {sec}\n\n")
        parts.append(common.md_table(rows, TABLE_COLS.get(sec, tuple(rows[0]))) + "\n")
    return "".join(parts)


def _resumable(path: str, man: dict) -> dict[str, list[dict]]:
    """Sections saved by an earlier run of the same mode, dtype and commit ({} otherwise)."""
    try:
        old = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return {}
    m = old.get("manifest", {})
    same = all(m.get(k) == man.get(k) for k in ("mode", "git_commit", "dtype", "repeats"))
    if not same:
        print(f"not resuming {path}: it is from another mode, dtype, repeats or commit", flush=True)
        return {}
    return {k: v for k, v in old.get("results", {}).items() if k != "targets"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small settings (~3 min on 2 CPU cores)")
    p.add_argument("--smoke", action="store_true", help="tiny settings: checks code paths only")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    p.add_argument("--dtype", default="float32", help="network dtype for throughput (bfloat16)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default=str(common.HERE / "results.json"))
    p.add_argument("--results-md", default=str(common.HERE / "RESULTS.md"))
    p.add_argument("--no-md", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--note", default="", help="a line written under the table heading")
    p.add_argument(
        "--aa-targets",
        default=None,
        help="comma list of autoattack targets instead of the mode's "
        f"(from {sorted(aa_bench.TARGETS)})",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the sections already saved in --out by an interrupted run of the same mode, "
        "dtype, repeats and commit, and run only the others (wall_s then counts this part)",
    )
    args = p.parse_args(argv)
    cfg = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.aa_targets:
        targets = [t.strip() for t in args.aa_targets.split(",") if t.strip()]
        if bad := set(targets) - set(aa_bench.TARGETS):
            p.error(f"unknown --aa-targets {sorted(bad)}; choose from {sorted(aa_bench.TARGETS)}")
        cfg = {**cfg, "autoattack": {**cfg["autoattack"], "targets": targets}}
    repeats = args.repeats or cfg["repeats"]
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = set(only) - set(SECTIONS)
    if bad:
        p.error(f"unknown sections {sorted(bad)}; choose from {SECTIONS}")

    t_start = time.perf_counter()
    peak = common.matmul_peak_flops(
        cfg["matmul_n"] if jax.default_backend() == "cpu" else 8192,
        jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32,
    )
    man = report.manifest(
        seed=0,
        benchmark="jaxadv benchmarks/run.py",
        mode="smoke" if args.smoke else "quick" if args.quick else "full",
        dtype=args.dtype,
        repeats=repeats,
    )
    man["matmul_peak_gflops"] = peak / 1e9
    res: dict[str, list[dict]] = {}
    if args.resume:
        res = _resumable(args.out, man)
        if res:
            print(f"resuming {args.out}: sections done: {sorted(res)}", flush=True)
    lc = cfg["loops"]
    aa_tables: dict[str, list[dict]] = {}

    def aa_parts(name: str) -> list[dict]:
        if not aa_tables:
            aa_tables.update(aa_bench.section(cfg["autoattack"]))
        return aa_tables[name]

    sections = {
        "throughput": lambda: throughput(cfg["throughput"], repeats, args.dtype, peak),
        "peers": lambda: peer_rows(cfg["peers"], repeats),
        "strength": lambda: strength_rows(cfg["strength"]),
        "sweep": lambda: vs_reference.sweep_rows(cfg["sweep"], repeats),
        "onepixel": lambda: vs_reference.onepixel_rows(cfg["onepixel"], repeats),
        "loops_probe": lambda: loops.conv_grad_probe(batch=16, steps=lc["steps"], repeats=repeats),
        "loops": lambda: loops.pgd_ablation(
            common.build_target("small_cnn", n=lc["batch"]), lc["batch"], lc["steps"], repeats
        ),
        "memory": lambda: memory_section(cfg["memory"]),
        # one run fills the four autoattack tables (summary, per stage, disagreements, APGD-CE)
        "autoattack": lambda: aa_parts("autoattack"),
        "autoattack_stages": lambda: aa_parts("autoattack_stages"),
        "autoattack_diff": lambda: aa_parts("autoattack_diff"),
        "autoattack_apgd": lambda: aa_parts("autoattack_apgd"),
    }
    for name, run in sections.items():
        if name.split("_")[0] not in only or name in res:
            continue
        res[name] = run()
        # each finished section is saved at once: an interrupted run resumes with --resume
        report.write_json(args.out, {"manifest": {**man, "partial": True}, "results": res})
    res = {k: res[k] for k in sections if k in res}  # the usual order, resumed or not
    res["targets"] = verdicts(res)
    man["wall_s"] = round(time.perf_counter() - t_start, 1)
    report.write_json(args.out, {"manifest": man, "results": res})
    md = markdown(man, res, args)
    print(md)
    if not args.no_md:
        with open(args.results_md, "a") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
