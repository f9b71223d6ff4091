"""``jaxadv zoo list`` and ``jaxadv zoo build [NAME ...] --data FILE``: the model zoo
(:mod:`jaxadv.zoo`) from the shell."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cmd_list(args: argparse.Namespace) -> int:
    from jaxadv import zoo

    cache = args.cache_dir
    if args.markdown:
        print(zoo.markdown_table(cache), end="")
        return 0
    print(f"zoo cache: {cache if cache is not None else zoo.cache_dir()}")
    print(f"{'name':<16} {'architecture':<12} {'objective':<9} {'epochs':>6}  status")
    for name, e in zoo.ZOO.items():
        status = "not built"
        if zoo.is_built(name, cache):
            meta = json.loads(zoo._located(name, cache).with_suffix(".json").read_text())
            acc = meta.get("test_accuracy") if isinstance(meta, dict) else None
            status = (
                "built"
                if not isinstance(acc, (int, float))
                else f"built, test acc {100 * acc:.2f}%"
            )
        print(f"{name:<16} {e.architecture:<12} {e.objective:<9} {e.epochs:>6}  {status}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from jaxadv import zoo

    names = list(args.names) or list(zoo.ZOO)
    for n in names:
        zoo.entry(n)  # unknown names fail before any training
    cache = args.cache_dir
    for n in names:
        if zoo.is_built(n, cache) and not args.force:
            print(f"{n}: already built (use --force to rebuild)")
            continue
        path = zoo.build(n, args.data, cache)
        meta = json.loads(path.read_text())
        robust = meta.get("robust_accuracy")
        print(
            f"{n}: test acc {100 * meta['test_accuracy']:.2f}%"
            + ("" if robust is None else f", PGD robust acc {100 * robust['value']:.2f}%")
            + f", trained in {meta['training']['seconds']:.0f} s -> {path.with_suffix('.msgpack')}"
        )
    return 0


def add_zoo_parser(sub: Any) -> None:
    """Register ``jaxadv zoo`` on the sub-command parsers of :func:`jaxadv.cli.build_parser`."""
    z = sub.add_parser("zoo", help="the model zoo: list it, build (train and cache) its models")
    zs = z.add_subparsers(dest="zoo_command", required=True)
    ls = zs.add_parser("list", help="the zoo's models and whether they are built")
    ls.add_argument("--cache-dir", default=None, help="zoo cache (default $JAXADV_CACHE/zoo, ...)")
    ls.add_argument("--markdown", action="store_true", help="a Markdown table (benchmarks/ZOO.md)")
    ls.set_defaults(func=_cmd_list)
    b = zs.add_parser("build", help="train zoo models on PneumoniaMNIST and cache them")
    b.add_argument("names", nargs="*", metavar="NAME", help="zoo models (default: all)")
    b.add_argument(
        "--data", required=True, help="PneumoniaMNIST .npz (MedMNIST layout), e.g. from medmnist"
    )
    b.add_argument("--cache-dir", default=None, help="zoo cache (default $JAXADV_CACHE/zoo, ...)")
    b.add_argument("--force", action="store_true", help="rebuild models already in the cache")
    b.set_defaults(func=_cmd_build)


__all__ = ["add_zoo_parser"]
