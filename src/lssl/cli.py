"""The `lssl` command line (also `python -m lssl`).

    lssl train CONFIG [--resume [CHECKPOINT]] [--section.field=value ...]
    lssl eval CHECKPOINT [--split test] [--rate 2] [--batch-size N] [--device auto]
    lssl compare GRID [--out DIR] [--quick] [--tasks A,B] [--models A,B] [--seeds 0,1] [--dry-run]
                 [--section.field=value ...]
    lssl export CHECKPOINT [--format onnx] [--mode step | --mode forward --length L] [--rate R] [-o FILE]
    lssl bench [kernels|layers|all] [--quick]
    lssl info
    lssl data list | prepare NAME [--root DIR] [-o KEY=VALUE]

`compare` runs a study (`lssl.train.compare`): the grid file's tasks × models × seeds, each cell
a `train` run in OUT/TASK/MODEL/seedK/ (finished cells are read, interrupted ones resumed), then
OUT/summary.md and summary.json (per task: test metric mean ± std over seeds, the paired
difference to the baseline model with a 95 % interval, time per cell) and OUT/TASK.png
(validation metric per epoch). `--quick` shrinks every cell to seconds (one epoch, a few
samples) and writes to OUT-quick by default; overrides apply to every cell.

Mistakes in the input (a missing file, an unknown config field, a bad value, a corrupt
checkpoint) are printed as one line `lssl: error: ...` with exit code 2; failures of the
environment (permissions, a read-only or full disk, a file where a directory should be) as one
line naming the path, exit code 1; a diverged run exits with code 1, naming its last good
checkpoint; SIGINT or SIGTERM during training writes a checkpoint of the current step and exits
with code 130. `lssl --debug ...` (or LSSL_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from .data import cli as data_cli
from .errors import UserError

BENCHMARKS = ("kernels", "layers")


def cmd_train(args: argparse.Namespace) -> int:
    from . import config
    from .train import fit

    cfg = config.load(args.config, args.overrides)
    results = fit(cfg, resume=args.resume)
    _print_results(results)
    return 0


def _print_results(results: dict) -> None:
    print(f"run directory: {results['run_dir']} ({results['epochs']} epochs, {results['steps']} steps)")
    if results["stopped_early"]:
        print("stopped at train.max_steps; continue with --resume")
        return
    for name, r in results.items():
        if isinstance(r, dict):
            shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items())
            print(f"{name}: {shown}")
    print(f"report: {Path(results['run_dir']) / 'report.md'}")


def cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate

    result = evaluate(args.checkpoint, split=args.split, rate=args.rate, batch_size=args.batch_size,
                      device=args.device, progress=True)
    if args.json:
        print(json.dumps(result))
    else:
        print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def cmd_export(args: argparse.Namespace) -> int:
    from . import load
    from .deploy import export

    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError:
        raise UserError("lssl export --format onnx needs onnx and onnxscript: pip install 'lssl[onnx]'") from None
    if args.mode == "forward" and args.length is None:
        raise UserError("--mode forward needs --length L (the sequence length the graph is built for)")
    model = load(args.checkpoint)
    out = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(".onnx")
    path = export(model, out, rate=args.rate, mode=args.mode, length=args.length)
    print(f"onnx: {path}\nstates and shapes: {path.with_suffix('.json')}")
    return 0


def _names(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    from .train.compare import compare

    result = compare(args.grid, out=args.out, quick=args.quick, tasks=args.tasks, models=args.models,
                     seeds=args.seeds, overrides=args.overrides, dry_run=args.dry_run)
    if args.dry_run:
        for label, state in result["statuses"].items():
            print(f"{state:<8} {label}  ({result['run_dirs'][label]})")
        return 0
    print(f"summary: {Path(result['out']) / 'summary.md'}")
    diverged = [label for label, state in result["statuses"].items() if state == "diverged"]
    if diverged:
        print(f"diverged: {'; '.join(diverged)}", file=sys.stderr)
        return 1
    return 0


def benchmark_dir() -> Path:
    """benchmarks/ of the source checkout this package is installed from."""
    path = Path(__file__).resolve().parents[2] / "benchmarks"
    if not (path / "kernels.py").is_file():
        raise UserError("the benchmarks are not installed with the package; run `lssl bench` from a source checkout")
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    root = benchmark_dir()
    names = BENCHMARKS if args.which == "all" else (args.which,)
    for name in names:
        command = [sys.executable, str(root / f"{name}.py"), *(["--quick"] if args.quick else [])]
        if args.out:
            command += ["--out", str(Path(args.out) / f"{name}.md")]
        # Unbuffered: each row shows as it is measured, not when a pipe's buffer fills.
        code = subprocess.call(command, cwd=root.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if code:
            return code
    return 0


def info_lines() -> list[str]:
    """Versions, threads and devices."""
    import torch

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    from . import __version__

    lines = [
        f"lssl {__version__}",
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__}",
        *(f"{name} {version(name)}" for name in ("numpy", "safetensors", "tqdm", "matplotlib")),
        f"threads: torch {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op; "
        f"{os.cpu_count()} CPUs",
        f"cuda: {torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else "cuda: not available",
    ]
    lines += [f"  cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    lines.append(f"distributed: {'available' if torch.distributed.is_available() else 'not available'}")
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    print("\n".join(info_lines()))
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser and its sub-command set (other modules add theirs with `add_parser`)."""
    parser = Parser(
        prog="lssl", description="Train and evaluate linear state-space sequence models (LSSL, S4, S4D, Liquid-S4).")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors in the log")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line (also LSSL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train an experiment config",
                       description="Train CONFIG (a TOML file in configs/); the run goes to OUT/NAME/.",
                       epilog="overrides: --section.field=value, e.g. --model.d_state=64 --train.lr=2e-3 "
                              "--data.options.n_train=1000 --name=smoke (values are TOML literals)")
    p.add_argument("config", help="experiment TOML file")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run from its last checkpoint (or from CHECKPOINT)")
    p.set_defaults(func=cmd_train, takes_overrides=True)

    p = sub.add_parser("eval", help="evaluate a checkpoint", description="Score CHECKPOINT on one split.")
    p.add_argument("checkpoint", help="a .safetensors checkpoint (runs/NAME/checkpoints/best.safetensors)")
    p.add_argument("--split", default="test", help="train, val, test or an extra split such as test_8k (default test)")
    p.add_argument("--rate", type=_positive_float, default=None,
                   help="sampling-rate factor: decimate the split by it (x[::rate]) and run the model at dt*rate")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="default: the training batch size")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="train a study grid (tasks x models x seeds) and tabulate it",
                       description="Train every cell (task, model, seed) of GRID (a TOML file in configs/studies/) "
                                   "into OUT/TASK/MODEL/seedK/, skipping finished cells and resuming interrupted "
                                   "ones, then write OUT/summary.md, OUT/summary.json and OUT/TASK.png.",
                       epilog="overrides: --section.field=value, applied to every cell after the grid's own")
    p.add_argument("grid", help="study TOML file")
    p.add_argument("--out", default=None, help="output root (default: the grid's out; OUT-quick with --quick)")
    p.add_argument("--quick", action="store_true", help="shrink every cell to seconds (smoke test)")
    p.add_argument("--tasks", type=_names, default=None, metavar="A,B", help="run only these tasks")
    p.add_argument("--models", type=_names, default=None, metavar="A,B", help="run only these models")
    p.add_argument("--seeds", type=_seeds, default=None, metavar="0,1", help="replace the grid's seeds")
    p.add_argument("--dry-run", action="store_true", help="check every cell and show its status; train nothing")
    p.set_defaults(func=cmd_compare, takes_overrides=True)

    p = sub.add_parser("export", help="write a checkpoint's streaming step as ONNX",
                       description="Write the recurrent view of CHECKPOINT (a SequenceModel) as "
                                   "an ONNX model of one step: inputs x and every layer's state, outputs y (the "
                                   "output on the sequence so far) and the new states (a JSON sidecar names them "
                                   "and their shapes).")
    p.add_argument("checkpoint", help="a .safetensors checkpoint")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="the output format (onnx)")
    p.add_argument("--mode", default="step", choices=("step", "forward"),
                   help="step: one sample per call, state in and out; forward: whole sequences of --length")
    p.add_argument("--length", type=_positive_int, default=None, help="the sequence length of --mode forward")
    p.add_argument("--rate", type=_positive_float, default=1.0,
                   help="sampling-rate factor the step is frozen at (2: data sampled half as often)")
    p.add_argument("-o", "--output", default=None, help="the .onnx file (default: the checkpoint's name with .onnx)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="run the speed/memory benchmarks",
                       description="Run benchmarks/kernels.py and/or benchmarks/layers.py (source checkout).")
    p.add_argument("which", nargs="?", default="all", choices=(*BENCHMARKS, "all"))
    p.add_argument("--quick", action="store_true", help="only the short shapes")
    p.add_argument("--out", default=None, help="directory for the markdown tables")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="versions, threads and devices")
    p.set_defaults(func=cmd_info)

    data_cli.add_commands(sub)
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    parser, _ = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    bad = [e for e in extra if "=" not in e or not e.startswith("--")]
    if bad:
        parser.error(f"overrides must look like --section.field=value, got {' '.join(bad)}")
    args.overrides = extra
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from .train import Diverged, Interrupted

    if args.debug or os.environ.get("LSSL_DEBUG"):
        return args.func(args)
    try:
        return args.func(args)
    except UserError as e:
        print(f"lssl: error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"lssl: training diverged: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"lssl: interrupted: {e}", file=sys.stderr)
        return 130
    except OSError as e:  # the environment: permissions, read-only or full disks, a file where a folder should be
        where = f": {e.filename}" if e.filename else ""
        print(f"lssl: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lssl: interrupted at once, without a checkpoint of the current step (--resume continues a "
              "training run from its last checkpoint, if it has one)", file=sys.stderr)
        return 130
