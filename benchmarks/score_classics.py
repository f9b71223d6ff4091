"""Score-based classics on the shipped PneumoniaMNIST reference CNN: SimBA (DCT and pixel bases,
Guo et al. 2019) and Sparse-RS (L0 pixels and patches, Croce et al. 2022) at their papers' headline
settings scaled to 28x28 images, with ART's SimBA-DCT beside ours on the same weights (PyTorch
port through safetensors; skipped with the reason when ART or torch is missing).

Settings (the papers' where they carry over): SimBA step 0.2 on [0, 1] images, unconstrained
(``L2Ball(eps=inf)``: only the box clips), DCT block 4x4 then rings of width 1 (ART's defaults for
28x28; the paper's 28-of-224 ratio gives 4 too), 10000 queries; Sparse-RS 10000 queries, alpha_init
0.3 (L0) / 0.4 (patches), untargeted margin loss. Every example stops at its first success.

Queries are those of the attack, the clean check included (jaxadv: ``res.queries - 1``, without
the library's final re-evaluation; ART: the forward passes its ``generate`` makes per image,
counted on the torch model; ``--art-max-iter`` iterations of two queries each, 1000 by default
because its per-image Python loop is slow). Means and
medians are over the successful examples that were classified correctly to begin with.

    python benchmarks/score_classics.py --n 32     # a couple of minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # this checkout's jaxadv, not an installed one

import common  # noqa: E402
import peers  # noqa: E402

import jaxadv  # noqa: E402
from jaxadv.threats import Patch  # noqa: E402


def _summary(name, setting, success, queries, correct, seconds, l2=None) -> dict:
    ok = np.asarray(success, bool) & correct
    q = np.asarray(queries)[ok]
    row = {
        "attack": name,
        "setting": setting,
        "n_correct": int(correct.sum()),
        "success_rate": common.rnd(ok.sum() / max(correct.sum(), 1)),
        "mean_queries": common.rnd(float(q.mean())) if q.size else None,
        "median_queries": common.rnd(float(np.median(q))) if q.size else None,
        "seconds": common.rnd(seconds, 3),
    }
    if l2 is not None:
        row["mean_l2"] = common.rnd(float(np.asarray(l2)[ok].mean())) if q.size else None
    return row


def ours(atk, model, x, y) -> tuple[dict, float, float]:
    """Result, first-call seconds (trace + compile + run) and a second call's seconds."""
    t0 = time.perf_counter()
    res = jax.block_until_ready(atk(jax.random.key(0), model, x, y))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = jax.block_until_ready(atk(jax.random.key(0), model, x, y))
    return res, first, time.perf_counter() - t0


def art_simba(target, x, y, *, max_iter: int, step: float) -> tuple[dict | None, str | None]:
    """ART's SimBA-DCT on the torch port, one image at a time, forward passes counted."""
    why = peers.missing("torch", "peers") or peers.missing("art", "peers")
    if why:
        return None, why
    import torch
    from art.attacks.evasion import SimBA as ArtSimBA
    from art.estimators.classification import PyTorchClassifier

    net, diff = peers.torch_port(target)
    if diff > peers.PORT_ATOL:
        return None, f"torch port differs from the Flax model by {diff:.2e} logits"
    calls = [0]

    class Probs(torch.nn.Module):  # ART's SimBA wants probabilities; count every image seen
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, z):
            calls[0] += z.shape[0]
            return torch.softmax(self.m(z), dim=1)

    h, k = x.shape[1], x.shape[-1]
    clf = PyTorchClassifier(
        model=Probs(net),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(k, h, h),
        nb_classes=2,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    atk = ArtSimBA(
        clf, attack="dct", max_iter=max_iter, epsilon=step, freq_dim=4, stride=1, verbose=False
    )
    xn = np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))
    yn = np.asarray(y)
    np.random.seed(0)  # noqa: NPY002 - ART draws from the legacy global generator
    advs, queries = [], []
    t0 = time.perf_counter()
    for i in range(len(xn)):
        calls[0] = 0
        advs.append(atk.generate(xn[i : i + 1], y=np.eye(2, dtype=np.float32)[yn[i : i + 1]]))
        queries.append(calls[0])
    seconds = time.perf_counter() - t0
    adv = np.concatenate(advs)
    with torch.no_grad():
        pred = net(torch.from_numpy(adv)).argmax(1).numpy()
    l2 = np.sqrt(((adv - xn) ** 2).reshape(len(xn), -1).sum(1))
    return {
        "success": pred != yn,
        "queries": np.asarray(queries),
        "seconds": seconds,
        "l2": l2,
    }, None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="first n test images")
    p.add_argument("--queries", type=int, default=10000)
    p.add_argument(
        "--art-max-iter",
        type=int,
        default=1000,
        help="ART iterations (two queries each; its per-image Python loop is slow on CPU)",
    )
    p.add_argument("--no-peer", action="store_true", help="skip ART")
    p.add_argument("--out", default=str(HERE / "score_classics.json"))
    args = p.parse_args(argv)

    target = common.build_target("small_cnn", n=args.n)
    model = target.model
    x, y = target.batch(args.n)
    correct = np.asarray(jnp.argmax(model(x), axis=1) == y)
    nq = args.queries
    inf = jaxadv.L2Ball(eps=jnp.inf)
    runs = {
        ("SimBA-DCT", "step 0.2, 4x4 block + rings of 1"): jaxadv.SimBA(
            threat=inf, num_queries=nq, basis="dct", freq_dims=4, stride=1
        ),
        ("SimBA-pixel", "step 0.2"): jaxadv.SimBA(threat=inf, num_queries=nq, basis="pixel"),
        ("Sparse-RS L0", "k = 1 pixel"): jaxadv.SparseRS(threat=jaxadv.L0Pixels(eps=1), num_queries=nq),
        ("Sparse-RS L0", "k = 3 pixels"): jaxadv.SparseRS(threat=jaxadv.L0Pixels(eps=3), num_queries=nq),
        ("Sparse-RS L0", "k = 10 pixels"): jaxadv.SparseRS(threat=jaxadv.L0Pixels(eps=10), num_queries=nq),
        ("Sparse-RS patch", "3x3"): jaxadv.SparseRS(threat=Patch(eps=3), num_queries=nq),
        ("Sparse-RS patch", "5x5"): jaxadv.SparseRS(threat=Patch(eps=5), num_queries=nq),
    }  # fmt: skip
    rows = []
    for (name, setting), atk in runs.items():
        res, first, second = ours(atk, model, x, y)
        l2 = np.sqrt(np.sum(np.square(np.asarray(res.adv - x)).reshape(args.n, -1), 1))
        row = _summary(
            f"jaxadv {name}",
            setting,
            res.success,
            np.asarray(res.queries) - 1,
            correct,
            second,
            l2 if name.startswith("SimBA") else None,
        )
        row["first_call_s"] = common.rnd(first, 3)
        rows.append(row)
        print(row, flush=True)
    skipped = None
    if not args.no_peer:
        art, skipped = art_simba(target, x, y, max_iter=args.art_max_iter, step=0.2)
        if art is not None:
            rows.append(
                _summary(
                    "ART SimBA-DCT",
                    f"step 0.2, freq_dim 4, stride 1, max_iter {args.art_max_iter}",
                    art["success"],
                    art["queries"],
                    correct,
                    art["seconds"],
                    art["l2"],
                )
            )
            print(rows[-1], flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    man = {
        "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
        "cpus": len(__import__("os").sched_getaffinity(0)),
        "git_commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "n_images": args.n,
        "num_queries": nq,
        "peer_skipped": skipped,
    }
    pathlib.Path(args.out).write_text(json.dumps({"manifest": man, "rows": rows}, indent=1))
    cols = ["attack", "setting", "n_correct", "success_rate", "mean_queries", "median_queries"]
    cols += ["mean_l2", "seconds", "first_call_s"]
    print(common.md_table(rows, cols))
    print(man)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
