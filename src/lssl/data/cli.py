"""The `data` command: `lssl data list` and `lssl data prepare NAME [--root DIR] [--option KEY=VALUE ...]`."""

from __future__ import annotations

import argparse
import ast

from ..errors import UserError
from .base import cache_dir, cached_entries
from .registry import DATASETS, load


def _value(text: str) -> object:
    """A Python literal (int, float, bool, None) when it parses as one, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def list_command(args: argparse.Namespace) -> int:
    entries = cached_entries(args.root)
    print(f"cache: {cache_dir(args.root)}")
    print(f"{'name':<18} {'cached':>10}  size  (cached '-': generated in memory or read from files on each load)")
    for name, builder in DATASETS.items():
        found = [e for key in builder.cache for e in entries.get(key, [])]
        cached = f"{sum(s for _, s in found) / 2**20:.1f} MiB" if found else "no" if builder.cache else "-"
        print(f"{name:<18} {cached:>10}  {builder.size}")
    return 0


def prepare_command(args: argparse.Namespace) -> int:
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--option expects KEY=VALUE, got {item!r}")
        options[key] = _value(value)
    spec = load(args.name, root=args.root, **options)
    print(f"{spec.name}: train {len(spec.train)}, val {len(spec.val)}, test {len(spec.test)}, "
          f"length {spec.length}, d_input {spec.d_input}, d_output {spec.d_output} ({spec.task}); source: {spec.source}")
    return 0


def add_commands(subparsers) -> None:
    """Register `data list` and `data prepare` on an argparse sub-parsers object."""
    data = subparsers.add_parser("data", help="list, fetch or generate the benchmark data sets")
    sub = data.add_subparsers(dest="data_command", required=True)
    ls = sub.add_parser("list", help="the data sets, their sizes, and whether each is cached")
    ls.add_argument("--root", default=None, help="cache folder (default: $LSSL_DATA or ~/.cache/lssl)")
    ls.set_defaults(func=list_command)
    prep = sub.add_parser("prepare", help="fetch or generate a data set into the cache")
    prep.add_argument("name", help=f"one of: {', '.join(DATASETS)}")
    prep.add_argument("--root", default=None, help="cache folder (default: $LSSL_DATA or ~/.cache/lssl)")
    prep.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                      help="a builder option, e.g. -o n_train=1000 -o seed=1 (repeatable)")
    prep.set_defaults(func=prepare_command)
