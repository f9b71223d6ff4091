"""The ``jaxadv`` command line: ``demo``, ``attack``, ``train``, ``sweep``, ``merge`` and ``report``.

Every sub-command takes its settings from flags or from a YAML/JSON file (``--config``); flags given
explicitly win over the file. Errors in user input exit with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from jaxadv import cli_defence, cli_durable

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
    """Config file values fill in options not given on the command line, converted and checked
    with the option's own type (a config value means what the same flag would)."""
    cfg = _load_config(getattr(args, "config", None))
    actions = {a.dest: a for a in parser._actions}
    unknown = sorted(set(cfg) - set(actions))
    if unknown:
        raise CLIError(f"unknown option(s) in config: {', '.join(unknown)}")
    for k, v in cfg.items():
        act = actions[k]
        if getattr(args, k) != act.default:
            continue  # given on the command line: the flag wins
        if act.type is not None and v is not None:
            try:
                if isinstance(v, bool) or (act.type is int and isinstance(v, float)):
                    raise ValueError
                v = act.type(v)
            except (TypeError, ValueError) as e:
                raise CLIError(f"config option {k}: expected {act.type.__name__}, got {v!r}") from e
        elif act.nargs == 0 and not isinstance(v, bool):  # store_true flags
            raise CLIError(f"config option {k}: expected true or false, got {v!r}")
        setattr(args, k, v)
    return args


def _spec(fn, *args, **kwargs):
    """Call a vocabulary function, turning its SpecError into a CLI error."""
    from jaxadv.vocab import SpecError

    try:
        return fn(*args, **kwargs)
    except SpecError as e:
        raise CLIError(str(e)) from e


def _durable_unsupported(args: argparse.Namespace, what: str) -> None:
    if getattr(args, "success_margin", None) is not None or getattr(args, "grid", None) is not None:
        raise CLIError(
            f"--success-margin and --grid are not supported for {what} yet; leave them out"
        )


def _eps_list(v: Any, norm: str = "linf", scale: float | None = None) -> list[float]:
    """The eps grid of ``--eps`` (or a config's ``eps``), through the one parser."""
    from jaxadv.vocab import parse_eps

    return _spec(parse_eps, v, norm, scale)


def _positive(v: Any, flag: str, *, zero_ok: bool = False) -> int | None:
    if v is None:
        return None
    if v < 0 or (v == 0 and not zero_ok):
        raise CLIError(f"{flag} must be a positive integer{' or 0' if zero_ok else ''}, got {v}")
    return v


def _out_dir(path: str, flag: str = "--out") -> pathlib.Path:
    """An output folder that exists (created) and is writable, checked before any work."""
    p = pathlib.Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"{flag} {p} is an existing file; give a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create {flag} folder {p}: {e.strerror or e}") from e
    if not os.access(p, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} folder {p} is not writable; give another folder")
    return p


def _out_file(path: str, flag: str = "--out") -> pathlib.Path:
    """An output file path whose folder exists (created) and is writable."""
    p = pathlib.Path(path)
    if p.is_dir():
        raise CLIError(f"{flag} {p} is a folder; give a file path such as {p / 'model.msgpack'}")
    _out_dir(str(p.parent) if str(p.parent) else ".", flag=f"{flag} folder")
    return p


# public names for the sub-command modules (jaxadv/cli_*.py)
positive_int = _positive
output_file = _out_file


def _names(v: Any) -> list[str]:
    """A comma-separated string or a list of names."""
    items = v.split(",") if isinstance(v, str) else list(v)
    return [str(i).strip() for i in items if str(i).strip()]


def _progress_enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


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
    _positive(args.num_examples, "--num-examples", zero_ok=True)
    _positive(args.num_steps, "--num-steps")
    out = _out_dir(args.out)
    res = run_demo(
        out,
        eps=_eps_list(args.eps),
        num_examples=args.num_examples or None,
        num_steps=args.num_steps,
        attacks=None if args.attacks is None else _names(args.attacks),
        models=_names(args.models),
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


# ----------------------------------------------------------------------------- attack
def _dataset(name: str, split: str, size: int | None, channels: int | None):
    from jaxadv.vocab import load_dataset

    return _spec(load_dataset, name, split, size, channels)


def _model(spec: str):
    from jaxadv.vocab import load_model

    return _spec(load_model, spec)


def _options(items: Sequence[str] | None) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs (values read as YAML scalars: 1000, 0.01, true, ce)."""
    import yaml

    out: dict[str, Any] = {}
    for it in items or []:
        if isinstance(it, dict):  # from a config file: options: {num_queries: 500}
            out.update(it)
            continue
        key, sep, val = str(it).partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--option takes KEY=VALUE (e.g. num_queries=1000), got {it!r}")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(val)
        except yaml.YAMLError as e:
            raise CLIError(f"--option {it!r}: cannot read the value") from e
    return out


def _evaluate(args: argparse.Namespace, attack, model, ds, eps, n: int, **kwargs: Any):
    """The one :func:`jaxadv.evaluate` call of ``jaxadv attack`` (classifiers and segmentation
    models): the first ``n`` examples, key ``--seed``, ``--batch-size``, ``--cascade`` and the
    progress bar; ``kwargs`` go to :func:`jaxadv.evaluate` (``rule``, ``target``, ...)."""
    import jax

    import jaxadv
    from jaxadv._progress import Progress

    label = f"{args.attack} on {n} images"
    ui = Progress(_progress_enabled(args.quiet), _say(args.quiet))

    def progress(done: int, total: int) -> None:
        if done == 1:
            ui.start(1, total)
            ui.start_cell(label, total)
        ui.batch()

    try:
        return jaxadv.evaluate(
            attack,
            model,
            ds,
            eps,
            key=jax.random.key(args.seed),
            cascade=args.cascade,
            batch_size=args.batch_size,
            indices=list(range(n)),
            progress=progress,
            **kwargs,
        )
    finally:
        ui.close()


def _cmd_attack(args: argparse.Namespace) -> int:
    from jaxadv import report
    from jaxadv.vocab import attack_config, attack_norm, default_eps, lookup_attack, make_attack
    from jaxadv.vocab_rules import check_model_fits, check_rule_spec, make_rule

    _spec(check_rule_spec, args.multilabel, args.finding, args.target_set)
    _positive(args.batch_size, "--batch-size")
    _positive(args.num_examples, "--num-examples")
    cli_defence.check(args)
    from jaxadv import cli_segmentation as seg

    if seg.is_segmentation_model(args.model):  # per-pixel logits: jaxadv/cli_segmentation.py
        _durable_unsupported(args, "segmentation models")
        if args.defence is not None:
            raise CLIError("--defence is not supported for segmentation models yet; leave it out")
        args.norm = norm = args.norm or "linf"
        args.eps = _spec(default_eps, norm) if args.eps is None else args.eps  # as recorded
        eps = _eps_list(args.eps, norm, args.eps_scale)
        options = _options(args.option)
        attack = seg.check(args, options=options)
        out = _out_dir(args.out)
        job = seg.load(args, attack, options=options)
        ev = _evaluate(
            args,
            attack,
            job["model"],
            job["data"],
            eps,
            job["num_examples"],
            target=job["target"],
        )
        rows = seg.write_results(ev, args, attack, out)
        targeted = "target_iou" in rows[0]  # ASMA: how close the prediction came to the target
        print(report.format_table(rows, seg.TABLE_COLUMNS + (("target_iou",) if targeted else ())))
        return 0
    entry = _spec(lookup_attack, args.attack)
    args.norm = norm = _spec(attack_norm, entry, args.norm)
    args.eps = default_eps(norm) if args.eps is None else args.eps  # the manifest records it
    eps = _eps_list(args.eps, norm, args.eps_scale)
    if entry.kind == "parametric":
        _durable_unsupported(args, f"the {entry.name} attack")
    attack = _spec(
        make_attack,
        entry.name,
        norm=norm,
        eps_max=max(eps),
        num_steps=args.num_steps,
        restarts=args.restarts,
        options=_options(args.option),
        default_num_steps=20,
    )
    if entry.kind == "attack":
        attack = cli_durable.apply(attack, args)
    if args.multilabel is not None:
        from jaxadv.multilabel import check_attack

        check_attack(attack)  # e.g. apgd-dlr: refused before any loading
    out = _out_dir(args.out)
    ds = _dataset(args.data, args.split, args.image_size, args.channels)
    attack = _spec(cli_durable.apply_data_grid, attack, args, ds)  # --grid dataset
    rule = _spec(make_rule, args.multilabel, args.finding, args.target_set, ds)
    model = _model(args.model)
    _spec(check_model_fits, model, ds, rule, f"model {args.model!r}")
    model = cli_defence.apply(args, model)
    n = len(ds) if args.num_examples is None else min(args.num_examples, len(ds))
    ev = _evaluate(
        args, attack, model, ds, eps, n, rule=rule, **cli_durable.evaluate_kwargs(args, n)
    )
    rows = [{"attack": args.attack, **r} for r in ev.summary()]
    recheck = cli_durable.recheck_report(ev)
    report.write_json(
        out / "results.json",
        {
            "manifest": report.manifest(
                seed=args.seed,
                args={k: v for k, v in vars(args).items() if k != "func"},
                attack_config=attack_config(attack, eps),
            ),
            "rows": rows,
            **({"recheck": recheck} if recheck else {}),
        },
    )
    report.write_csv(out / "results.csv", rows)
    cols = ["attack", "eps_label", "clean_accuracy", "robust_accuracy", "linf_mean", "ssim_mean"]
    if norm != "linf":
        cols[4] = "norm_mean"
    print(report.format_table(rows, tuple(cols + ["queries_median"])))
    if recheck:
        print(
            f"recheck ({recheck['mode']}, eps {recheck['eps']:.6g}): "
            f"{recheck['num_flipped']} of {recheck['num_success']} successes flip"
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
    from jaxadv.sweep.report import cell_table_rows, load_sweep

    _, cells, _ = load_sweep(root)
    rows = cell_table_rows(cells)
    cols = ("model", "dataset", "attack", "seed", "eps_label", "clean_accuracy", "robust_accuracy")
    if any("dice" in r for r in rows):  # segmentation cells: the attack's rule, and Dice
        cols += ("clean_dice", "dice")
    if any("surrogate" in r for r in rows):  # transfer cells: crafted on the surrogate
        cols = cols[:3] + ("surrogate",) + cols[3:]
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
            handle_sigint=True,
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
    cli_defence.add_arguments(a)
    a.add_argument(
        "--attack",
        default="pgd",
        help="fgsm, pgd, apgd, apgd-dlr, apgdt, fmn, autoattack, or any registered attack class "
        "(Square, NES, ZOO, HopSkipJump, OnePixel, DGDE, SimBA, SparseRS; see "
        "jaxadv.attacks.REGISTRY); bias-field (norm bias; --eps: field log-amplitudes, e.g. "
        "0,0.2,0.4; --option degree=3, noise_eps=0.02, warp=1.5). patch and uap are universal "
        "(fitted on a data set first): use them from Python",
    )
    a.add_argument(
        "--norm",
        default=None,
        help="linf (default where supported), l2, l1, l0 (OnePixel, DGDE, SparseRS: --eps is "
        "then a number of pixels), patch (SparseRS: --eps is the side of the square patch in "
        "pixels) or bias (bias-field, its only norm)",
    )
    a.add_argument(
        "--eps",
        default=None,
        help="budgets, comma-separated: numbers in 1/255 units (pixel counts for l0, "
        "log-amplitudes for bias), fractions such as 8/255, or 3px (l0); default 0,1,2,4,8 "
        "(bias: 0,0.1,0.2,0.4)",
    )
    a.add_argument(
        "--eps-scale",
        type=float,
        default=None,
        help="divide plain eps numbers by this (default 255; 1 for l0): --eps-scale 1 for L2 "
        "budgets in pixel units",
    )
    a.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help="iterations of attacks whose budget is num_steps (default 20); other attacks name "
        "their budget (Square: num_queries, ...): set it with --option",
    )
    a.add_argument(
        "--restarts", type=int, default=None, help="random restarts (attacks that have them)"
    )
    a.add_argument(
        "--option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="any other setting of the attack, e.g. --option num_queries=1000 (repeatable)",
    )
    a.add_argument(
        "--cascade",
        action="store_true",
        help="budgets in ascending order, each attacking only the images no smaller budget broke "
        "(per-image worst case over the grid; less work when many break early)",
    )
    a.add_argument(
        "--multilabel",
        default=None,
        metavar="RULE",
        help="multi-label data and model (one logit per finding): success rule 'one' (flip "
        "--finding), 'any' (flip any finding) or 'set' (every finding equals --target-set)",
    )
    a.add_argument(
        "--finding", default=None, help="the finding of --multilabel one: an index or a name"
    )
    a.add_argument(
        "--target-set",
        default=None,
        help="--multilabel set: the findings that must be present, comma-separated indices or "
        "names (every other finding must be absent); 'none' for all absent",
    )
    a.add_argument("--batch-size", type=int, default=256)
    a.add_argument("--num-examples", type=int, default=None)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", default="jaxadv-attack")
    a.add_argument("--quiet", action="store_true")
    cli_durable.add_arguments(a)
    a.set_defaults(func=_cmd_attack)

    from jaxadv.cli_train import add_train_parser

    add_train_parser(sub)

    from jaxadv.cli_zoo import add_zoo_parser

    add_zoo_parser(sub)

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
    except (OSError, ValueError, TypeError) as e:
        # user input reached a library check (bad file, bad value): one line, no traceback;
        # -v logs the traceback for a bug report
        log.debug("error", exc_info=True)
        print(f"jaxadv {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxadv {args.command}: interrupted", file=sys.stderr)
        return 130
