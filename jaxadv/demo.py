"""The main job on the embedded default: shipped reference CNNs on the shipped PneumoniaMNIST test
images, the white-box suite over an eps grid, and a report (JSON, CSV, plots, a table).

No network, no files outside the package. ``jaxadv demo --out DIR`` calls :func:`run_demo`.
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxadv
from jaxadv import report

log = logging.getLogger(__name__)

DEFAULT_EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
DEFAULT_MODELS = ("small_cnn_clean", "small_cnn_pgdat")


def suite(num_steps: int = 20) -> dict[str, Any]:
    """The white-box suite of the demo, L∞ (eps is set per grid point)."""
    t = jaxadv.LinfBall(eps=0.0)
    return {
        "FGSM": jaxadv.FGSM(threat=t),
        "PGD": jaxadv.PGD(threat=t, num_steps=num_steps),
        "APGD-CE": jaxadv.APGD(threat=t, num_steps=num_steps, loss="ce"),
        # Square's budget scales with num_steps (AutoAttack's own is 50x); 10x keeps the demo
        # within a few minutes on 2 CPU cores (Square-1000 alone costs ~3x APGD-20 there).
        "AutoAttack": jaxadv.AutoAttack.standard(
            t, num_steps=num_steps, square_queries=10 * num_steps
        ),
    }


def stratified_subset(y: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A fixed random subset of ``n`` indices stratified by class (all of them when ``n`` is None)."""
    if n is None or n >= y.shape[0]:
        return np.arange(y.shape[0])
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    take = np.floor(counts / counts.sum() * n).astype(int)
    take[np.argmax(counts)] += n - take.sum()
    idx = [rng.permutation(np.nonzero(y == c)[0])[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(idx))


def run_demo(
    out: str | pathlib.Path,
    *,
    eps: Sequence[float] = DEFAULT_EPS,
    models: Sequence[str] = DEFAULT_MODELS,
    num_examples: int | None = 200,
    num_steps: int = 20,
    attacks: Sequence[str] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the demo and write ``out/results.json``, ``results.csv``, ``robust_accuracy.png`` and
    ``examples.png``. Returns the results dictionary.

    Args:
        out: output folder (created).
        eps: L∞ budgets in [0, 1] pixel units.
        models: names of shipped reference models.
        num_examples: a fixed class-stratified random subset of N test images (None: all 624).
        num_steps: iterations of the iterative attacks.
        attacks: subset of the suite's names (default: all).
        seed: the PRNG seed.
        progress: called with a one-line message after each step (the CLI prints it).
    """
    from jaxadv.checkpoint import REFERENCE_MODELS, load_reference, reference_model
    from jaxadv.data import load_default
    from jaxadv.vocab import reference_name

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg: log.info(msg))
    t_start = time.perf_counter()

    ds = load_default()
    _, y_np = ds.arrays()
    pick = stratified_subset(y_np, num_examples, seed)
    by_lower = {a.lower(): a for a in suite(num_steps)}
    names = list(by_lower.values()) if attacks is None else list(attacks)
    unknown = [a for a in names if a.lower() not in by_lower]
    if unknown:
        raise ValueError(
            f"unknown attack(s) {unknown}; the demo suite has {list(by_lower.values())}"
        )
    names = [by_lower[a.lower()] for a in names]
    refs = [reference_name(m) for m in models]
    bad = [m for m, r in zip(models, refs, strict=True) if r is None]
    if bad:
        raise ValueError(f"unknown model(s) {bad}; the demo has {list(REFERENCE_MODELS)}")
    all_attacks = suite(num_steps)

    rows: list[dict[str, Any]] = []
    curves = []
    model_meta = {}
    example_pick = None
    for mname in refs:
        _, meta = load_reference(mname)
        model = reference_model(mname)
        model_meta[mname] = {k: v for k, v in meta.items() if k not in ("versions",)}
        for aname in names:
            ev = jaxadv.evaluate(
                all_attacks[aname],
                model,
                ds,
                eps,
                key=jax.random.key(seed),
                batch_size=len(pick),
                indices=pick,
                num_adv=8 if example_pick is None and aname.startswith("PGD") else 0,
            )
            rows.extend(
                {"model": mname, "attack": aname, **r, "seconds": ev.seconds} for r in ev.summary()
            )
            acc = ev.robust_accuracy.tolist()
            curves.append((mname, aname, list(map(float, eps)), acc))
            say(
                f"{mname:>16s}  {aname:<14s} robust acc "
                + " ".join(f"{a:.3f}" for a in acc)
                + f"  ({ev.seconds:.1f}s)"
            )
            if ev.adv.shape[0]:
                example_pick = (mname, aname, model, ev)

    results = {
        "manifest": report.manifest(
            seed=seed,
            data="PneumoniaMNIST test split (embedded, 28x28 grey, CC BY 4.0)",
            num_examples=int(pick.shape[0]),
            example_indices=pick.tolist(),
            num_steps=num_steps,
            eps=list(map(float, eps)),
            models=model_meta,
        ),
        "rows": rows,
        "seconds": time.perf_counter() - t_start,
    }
    report.write_json(out / "results.json", results)
    report.write_csv(out / "results.csv", rows)
    report.plot_curves(out / "robust_accuracy.png", curves, title="PneumoniaMNIST, L∞ attacks")
    if example_pick is not None:
        mname, aname, model, ev = example_pick
        y_show = ev.labels[: ev.adv.shape[0]]
        pred = np.asarray(jnp.argmax(model(jnp.asarray(ev.adv)), 1))
        labels = [f"y={int(t)} adv→{int(p)}" for t, p in zip(y_show, pred, strict=True)]
        report.image_grid(
            out / "examples.png",
            ev.clean,
            ev.adv,
            labels=labels,
            title=f"{mname}, {aname}, eps={float(ev.eps[ev.adv_index]) * 255:.0f}/255",
        )
    return results


TABLE_COLS = (
    "model",
    "attack",
    "eps_255",
    "clean_accuracy",
    "robust_accuracy",
    "attack_success_rate",
    "linf_mean",
    "ssim_mean",
    "auc_under_attack",
)
