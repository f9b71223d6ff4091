"""The ``jaxadv`` command line: ``demo``, ``attack``, ``train``, ``sweep``, ``merge`` and ``report``.

Every sub-command takes its settings from flags or from a YAML/JSON file (``--config``); flags given
explicitly win over the file. Errors in user input exit with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("jaxadv")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- helpers
def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = pathlib.Path(path)
    if not p.is_file():
        raise CLIError(f"config file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            cfg = yaml.safe_load(text)
        else:
            cfg = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes a clear message
        raise CLIError(f"cannot parse config {p}: {e}") from e
    if not isinstance(cfg, dict):
        raise CLIError(f"config {p} must be a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in cfg.items()}


def _merge(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Config file values fill in options not given on the command line."""
    cfg = _load_config(getattr(args, "config", None))
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise CLIError(f"unknown option(s) in config: {', '.join(unknown)}")
    defaults = {a.dest: a.default for a in parser._actions}
    for k, v in cfg.items():
        if getattr(args, k) == defaults.get(k):
            setattr(args, k, v)
    return args


def _eps_list(v: Any, scale: float = 255.0) -> list[float]:
    """'0,1,2,4,8' (in 1/255 units; pixel counts with ``scale=1``) or a list of floats."""
    if isinstance(v, (list, tuple)):
        vals = [float(e) for e in v]
    else:
        try:
            vals = [float(e) / scale for e in str(v).split(",") if e.strip()]
        except ValueError as e:
            raise CLIError(
                f"--eps must be comma-separated numbers in 1/255 units, got {v!r}"
            ) from e
    if not vals or any(e < 0 for e in vals):
        raise CLIError(f"--eps needs at least one non-negative value, got {v!r}")
    return vals


def _progress_enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class _Bar:
    """A rich progress bar with ETA on stderr (only when stderr is a terminal)."""

    def __init__(self, total: int, desc: str):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._p.start()
        self._t = self._p.add_task(desc, total=total)

    def advance(self) -> None:
        self._p.advance(self._t)

    def close(self) -> None:
        self._p.stop()


def _progress_bar(total: int, desc: str, quiet: bool) -> _Bar | None:
    return _Bar(total, desc) if _progress_enabled(quiet) else None


def _say(quiet: bool):
    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    return say


# ----------------------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from jaxadv import report
    from jaxadv.demo import TABLE_COLS, run_demo

    t0 = time.perf_counter()
    res = run_demo(
        args.out,
        eps=_eps_list(args.eps),
        num_examples=args.num_examples or None,
        num_steps=args.num_steps,
        attacks=args.attacks.split(",") if isinstance(args.attacks, str) else args.attacks,
        models=args.models.split(",") if isinstance(args.models, str) else args.models,
        seed=args.seed,
        progress=_say(args.quiet),
    )
    print(report.format_table(res["rows"], TABLE_COLS))
    m = res["manifest"]
    print(
        f"\n{m['num_examples']} images, jax {m['jax']} on {m['backend']} "
        f"({m['device_count']} device(s)), commit {m['git_commit']}, "
        f"{time.perf_counter() - t0:.1f}s. Wrote {args.out}/results.json, results.csv, "
        "robust_accuracy.png, examples.png"
    )
    return 0


# ----------------------------------------------------------------------------- data / models
# The vocabulary lives in jaxadv.sweep.vocab so that sweep configs use the same names.
def _dataset(name: str, split: str, size: int | None, channels: int | None):
    from jaxadv.sweep.vocab import SpecError, load_dataset

    try:
        return load_dataset(name, split, size, channels)
    except SpecError as e:
        raise CLIError(str(e)) from e


def _model(spec: str):
    from jaxadv.sweep.vocab import SpecError, load_model

    try:
        return load_model(spec)
    except SpecError as e:
        raise CLIError(str(e)) from e


def _attack(name: str, eps: float, args: argparse.Namespace):
    from jaxadv.sweep.vocab import SpecError, make_attack

    try:
        return make_attack(
            name, eps, norm=args.norm, num_steps=args.num_steps, restarts=args.restarts
        )
    except SpecError as e:
        raise CLIError(str(e)) from e


def _cmd_attack(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxadv
    from jaxadv import metrics, report

    l0 = str(args.norm).lower() == "l0"  # L0 budgets are pixel counts, not 1/255 units
    eps = _eps_list(args.eps, scale=1.0 if l0 else 255.0)
    ds = _dataset(args.data, args.split, args.image_size, args.channels)
    model = _model(args.model)
    attack = _attack(args.attack, max(eps), args)  # built at the largest budget of the grid
    key = jax.random.key(args.seed)
    n = len(ds) if args.num_examples is None else min(args.num_examples, len(ds))
    say = _say(args.quiet)
    batches = list(range(0, n, args.batch_size))
    successes: list[np.ndarray] = []
    summaries = []
    t0 = time.perf_counter()
    bar = _progress_bar(len(batches), f"{args.attack} on {n} images", args.quiet)
    for bi, start in enumerate(batches):
        idx = np.arange(start, min(start + args.batch_size, n))
        xb, yb = ds.get(idx)
        x, y = jnp.asarray(xb), jnp.asarray(yb, jnp.int32)
        curve = jaxadv.sweep_eps(
            attack,
            eps,
            key=key,
            model=model,
            x=x,
            y=y,
            index_offset=start,
            cascade=args.cascade,
        )
        successes.append(np.asarray(curve.result.success))
        for i in range(len(eps)):
            r = jax.tree_util.tree_map(lambda a, i=i: a[i], curve.result)
            summaries.append((i, len(idx), metrics.summarize(model, x, y, r)))
        if bar is not None:
            bar.advance()
        else:
            say(
                f"batch {bi + 1}/{len(batches)}  {idx[-1] + 1}/{n} images  {time.perf_counter() - t0:.1f}s"
            )
    if bar is not None:
        bar.close()

    succ = np.concatenate(successes, axis=1)
    rows = []
    for i, e in enumerate(eps):
        parts = [(m, s) for j, m, s in summaries if j == i]
        total = sum(m for m, _ in parts)
        row = {"attack": args.attack, "eps": e, "num_examples": n}
        row["max_pixels" if l0 else "eps_255"] = e if l0 else round(e * 255, 3)
        for k in ("clean_accuracy", "l2_mean", "linf_mean", "ssim_mean"):
            vals = [(m, s.get(k)) for m, s in parts if s.get(k) is not None]
            ok = [(m, v) for m, v in vals if np.isfinite(v)]
            row[k] = sum(m * v for m, v in ok) / sum(m for m, _ in ok) if ok else float("nan")
        row["robust_accuracy"] = float(1 - succ[i].mean())
        row["num_robust"] = int((~succ[i]).sum())
        row["examples_total"] = total
        rows.append(row)
    out = pathlib.Path(args.out)
    report.write_json(
        out / "results.json",
        {
            "manifest": report.manifest(
                seed=args.seed, args={k: v for k, v in vars(args).items() if k != "func"}
            ),
            "rows": rows,
        },
    )
    report.write_csv(out / "results.csv", rows)
    print(
        report.format_table(
            rows,
            (
                "attack",
                "max_pixels" if l0 else "eps_255",
                "clean_accuracy",
                "robust_accuracy",
                "linf_mean",
                "ssim_mean",
            ),
        )
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import numpy as np
    from flax import nnx

    import jaxadv
    from jaxadv import checkpoint, train

    if args.data == "default":
        raise CLIError(
            "the embedded default holds only the 624 test images; train on a MedMNIST file, "
            "e.g. --data pneumoniamnist.npz"
        )
    ds = _dataset(args.data, "train", args.image_size, args.channels)
    is_folder = pathlib.Path(args.data).is_dir()
    val = None if is_folder else _dataset(args.data, "test", args.image_size, args.channels)
    if args.num_examples:
        # a fixed random subset: stored splits can be sorted by label
        rng = np.random.default_rng(args.seed)
        pick = np.sort(rng.permutation(len(ds))[: args.num_examples])
        x, y = ds.get(pick)
    else:
        x, y = ds.arrays()
    arch = args.arch
    kwargs = {"num_classes": ds.num_classes, "in_channels": x.shape[-1]}
    if arch == "small_cnn":
        kwargs["input_size"] = x.shape[1]
    if arch not in checkpoint.ARCHITECTURES:
        raise CLIError(f"unknown --arch {arch!r}; choose from {sorted(checkpoint.ARCHITECTURES)}")
    module = checkpoint.ARCHITECTURES[arch](**kwargs, rngs=nnx.Rngs(args.seed))
    mean = [float(np.mean(x[..., c])) for c in range(x.shape[-1])]
    std = [float(np.std(x[..., c])) + 1e-6 for c in range(x.shape[-1])]
    adversarial = None
    if args.adversarial:
        adversarial = train.AdversarialTraining(
            attack=jaxadv.PGD(
                threat=jaxadv.LinfBall(eps=args.adv_eps / 255), num_steps=args.adv_steps
            )
        )
    history = train.train(
        module,
        x,
        y,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        key=args.seed,
        adversarial=adversarial,
        val=None if val is None else val.arrays(),
        mean=mean,
        std=std,
    )
    acc = None
    if val is not None:
        xv, yv = val.arrays()
        acc = float(train.evaluate(module, xv, yv, mean=mean, std=std))
    meta = {
        "architecture": arch,
        "kwargs": kwargs,
        "seed": args.seed,
        "test_accuracy": acc,
        "epochs": args.epochs,
        "adversarial": bool(args.adversarial),
        "mean": mean,
        "std": std,
    }
    checkpoint.save(args.out, module, meta)
    print(
        f"saved {args.out}; final {json.dumps(history[-1] if history else {}, default=str)}"
        + ("" if acc is None else f"; test accuracy {acc:.4f}")
    )
    return 0


# ----------------------------------------------------------------------------- sweeps
def _init_distributed(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` before anything touches a JAX backend."""
    given = [args.coordinator, args.num_processes, args.process_id]
    if not args.distributed and all(v is None for v in given):
        return
    import jax

    if args.coordinator is None:
        if any(v is not None for v in given):
            raise CLIError("--num-processes/--process-id need --coordinator HOST:PORT")
        jax.distributed.initialize()  # cluster auto-detection (SLURM, TPU pods, Kubernetes, ...)
        return
    if args.num_processes is None or args.process_id is None:
        raise CLIError("--coordinator needs --num-processes and --process-id")
    if not 0 <= args.process_id < args.num_processes:
        raise CLIError(
            f"--process-id must lie in [0, {args.num_processes - 1}], got {args.process_id}"
        )
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )


def _sweep_table(root: str) -> str:
    from jaxadv import report
    from jaxadv.sweep.report import load_sweep, summary_rows

    _, cells, _ = load_sweep(root)
    rows = summary_rows(cells)
    cols = ("model", "dataset", "attack", "seed", "eps_label", "clean_accuracy", "robust_accuracy")
    return report.format_table(rows, cols)


def _cmd_sweep(args: argparse.Namespace) -> int:
    _init_distributed(args)
    import jax

    from jaxadv import sweep

    writer = jax.process_index() == 0
    quiet = args.quiet or not writer
    say = _say(quiet)
    try:
        cfg = sweep.load_config(args.spec)
        outcome = sweep.run_sweep(
            cfg,
            args.out,
            num_shards=args.num_shards,
            shard_index=args.shard_index,
            force=args.force,
            batch_size=args.batch_size,
            progress=_progress_enabled(quiet),
            say=say,
        )
    except sweep.SweepError as e:
        raise CLIError(str(e)) from e
    if not writer:
        return 0
    done = len(outcome.computed) + len(outcome.skipped)
    if outcome.interrupted:
        print(
            f"jaxadv sweep: interrupted; {done} of {len(outcome.cells)} cells are saved in "
            f"{args.out}. Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    shard = f" (shard {args.shard_index} of {args.num_shards})" if args.num_shards > 1 else ""
    print(_sweep_table(args.out))
    msg = (
        f"\n{len(outcome.computed)} cells computed, {len(outcome.skipped)} resumed{shard}, "
        f"{outcome.seconds:.1f}s; results in {args.out}"
    )
    if args.num_shards > 1:
        msg += ". Combine the shards with `jaxadv merge DIR... --out MERGED`."
    elif not args.no_report:
        msg += f"; report {sweep.write_report(args.out)}"
    print(msg)
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from jaxadv import sweep

    try:
        res = sweep.merge(args.dirs, args.out, allow_identical=args.allow_duplicates)
    except sweep.SweepError as e:
        raise CLIError(str(e)) from e
    msg = f"merged {res.total - len(res.missing)} of {res.total} cells into {res.out}"
    if res.missing:
        shown = ", ".join(res.missing[:10]) + (" ..." if len(res.missing) > 10 else "")
        print(f"jaxadv merge: warning: {len(res.missing)} cells missing: {shown}", file=sys.stderr)
    elif not args.no_report:
        msg += f"; report {sweep.write_report(res.out)}"
    print(msg)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from jaxadv import sweep

    try:
        path = sweep.write_report(args.dir, args.out)
    except sweep.SweepError as e:
        raise CLIError(str(e)) from e
    print(f"wrote {path} and {path.with_suffix('.md')} (+ CSV/JSONL exports) in {path.parent}")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxadv", description="Adversarial robustness evaluation in JAX"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo", help="the main job on the embedded PneumoniaMNIST default (no network)"
    )
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--config", help="YAML/JSON file with these options")
    d.add_argument("--eps", default="0,1,2,4,8", help="L∞ budgets in 1/255 units, comma-separated")
    d.add_argument(
        "--num-examples",
        type=int,
        default=200,
        help="class-stratified subset of the 624 test images (0: all)",
    )
    d.add_argument("--num-steps", type=int, default=20, help="iterations of the iterative attacks")
    d.add_argument("--attacks", default=None, help="comma-separated subset of the suite")
    d.add_argument("--models", default="small_cnn_clean,small_cnn_pgdat")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_demo)

    a = sub.add_parser("attack", help="attack a model on a data set over an eps grid")
    a.add_argument("--config", help="YAML/JSON file with these options")
    a.add_argument(
        "--data", default="default", help="'default', a MedMNIST .npz, an image folder or tfds:NAME"
    )
    a.add_argument("--split", default="test")
    a.add_argument("--image-size", type=int, default=None)
    a.add_argument("--channels", type=int, default=None)
    a.add_argument(
        "--model", default="small_cnn_clean", help="reference model name or checkpoint path"
    )
    a.add_argument(
        "--attack",
        default="pgd",
        help="fgsm, pgd, apgd, apgd-dlr, apgdt, fmn, autoattack, or any registered attack class "
        "(Square, NES, ZOO, HopSkipJump, OnePixel, DGDE; see jaxadv.attacks.REGISTRY)",
    )
    a.add_argument(
        "--norm",
        default="linf",
        help="linf, l2, l1, or l0 (OnePixel, DGDE: --eps is then a number of pixels)",
    )
    a.add_argument("--eps", default="0,1,2,4,8", help="budgets in 1/255 units, comma-separated")
    a.add_argument("--num-steps", type=int, default=20)
    a.add_argument("--restarts", type=int, default=1)
    a.add_argument(
        "--cascade",
        action="store_true",
        help="budgets in ascending order, each attacking only the images no smaller budget broke "
        "(per-image worst case over the grid; less work when many break early)",
    )
    a.add_argument("--batch-size", type=int, default=256)
    a.add_argument("--num-examples", type=int, default=None)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", default="jaxadv-attack")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=_cmd_attack)

    t = sub.add_parser(
        "train", help="train a model (optionally adversarially) and save a checkpoint"
    )
    t.add_argument("--config", help="YAML/JSON file with these options")
    t.add_argument(
        "--data", default="default", help="a MedMNIST .npz, an image folder or tfds:NAME"
    )
    t.add_argument("--image-size", type=int, default=None)
    t.add_argument("--channels", type=int, default=None)
    t.add_argument("--arch", default="small_cnn", help="small_cnn, resnet18 or resnet50")
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--num-examples", type=int, default=None)
    t.add_argument("--adversarial", action="store_true", help="PGD adversarial training (Madry)")
    t.add_argument("--adv-eps", type=float, default=2.0, help="L∞ eps in 1/255 units")
    t.add_argument("--adv-steps", type=int, default=7)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="checkpoint path (.msgpack)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    from jaxadv.sweep.config import builtin_names

    sw = sub.add_parser(
        "sweep",
        help="run a robustness grid (models x data x attacks x eps x seeds) from a config",
        description="Run a robustness grid from a YAML/JSON config on every local device; "
        "finished cells are saved as they complete, so re-running the command resumes. "
        f"Built-in configs: {', '.join(builtin_names())}. See docs/sweeps.md.",
    )
    sw.add_argument("spec", metavar="CONFIG", help="a YAML/JSON file or a built-in config name")
    sw.add_argument("--out", required=True, help="sweep folder (created; resumed if it exists)")
    sw.add_argument("--num-shards", type=int, default=1, help="split the cells into N shards...")
    sw.add_argument("--shard-index", type=int, default=0, help="...and run shard I (0-based)")
    sw.add_argument(
        "--force",
        action="store_true",
        help="resume although the config changed (keeps "
        "unchanged finished cells, moves the others aside)",
    )
    sw.add_argument(
        "--batch-size", type=int, default=None, help="examples per device per step (overrides)"
    )
    sw.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    sw.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-host)")
    sw.add_argument("--num-processes", type=int, default=None, help="processes in the job")
    sw.add_argument("--process-id", type=int, default=None, help="this process (0 writes)")
    sw.add_argument(
        "--distributed",
        action="store_true",
        help="jax.distributed.initialize() with cluster auto-detection",
    )
    sw.add_argument("--quiet", action="store_true")
    sw.set_defaults(func=_cmd_sweep)

    mg = sub.add_parser("merge", help="combine sweep folders (shards) of one config")
    mg.add_argument("dirs", nargs="+", metavar="DIR", help="sweep folders to combine")
    mg.add_argument("--out", required=True, help="merged folder (new, or one of the DIRs)")
    mg.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="accept a cell present in several folders when its results are identical",
    )
    mg.add_argument("--no-report", action="store_true")
    mg.set_defaults(func=_cmd_merge)

    rp = sub.add_parser("report", help="write the HTML/Markdown report of a sweep folder")
    rp.add_argument("dir", metavar="DIR", help="a sweep folder")
    rp.add_argument("--out", default=None, help="report folder (default DIR/report)")
    rp.set_defaults(func=_cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    try:
        args = _merge(args, sub)
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"jaxadv {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"jaxadv {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxadv {args.command}: interrupted", file=sys.stderr)
        return 130
