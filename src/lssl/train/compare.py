"""Studies: a grid of tasks × models × seeds trained with `fit`, one run directory per cell,
then one table and one plot per task (`lssl compare GRID.toml`).

A grid is a small TOML file (`configs/studies/*.toml`):

    name = "liquid"                      # default: the file's stem
    seeds = [0, 1, 2]
    baseline = "s4"                      # the model the paired differences are taken against
    out = "runs/studies/liquid"          # default: runs/studies/NAME
    [tasks.bidmc-hr]
    config = "configs/paper/liquid-bidmc-hr.toml"    # relative to the current directory
    overrides = ["train.epochs=4"]
    [models.s4]
    overrides = ['model.layer="s4"']

Cell (task, model, seed) is the task's config with the task's overrides, then the model's,
then the command line's, and `seed` set; it trains into OUT/TASK/MODEL/seedK/. A cell whose
directory holds `results.json` (written by `fit` when a run ends) is finished and only read; one
with a checkpoint is resumed; any other is started. A directory that holds a run of a different
config is an error rather than a silent mix of two studies. Cells run one after another in
this one process (a study is not launched under torchrun).

Per task the table gives, over seeds, the mean ± sample standard deviation of the test metric
(scored by `fit` with the run's best-validation checkpoint), the paired difference
model − baseline per seed with a 95 % t interval over seeds, the validation metric, the number
of seeds and the training time per cell (the sum of the epoch times in `metrics.csv`: training
plus validation, resumed runs included). The plot shows the validation metric per epoch: the
mean over seeds per model, and the band between the lowest and highest seed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config as cfgmod
from ..config import Config
from ..errors import UserError
from ..layer import LAYERS
from . import checkpoint, loop, metrics

log = logging.getLogger("lssl.compare")

GRID_KEYS = ("name", "seeds", "baseline", "out", "tasks", "models")
TASK_KEYS = ("config", "overrides")
MODEL_KEYS = ("overrides",)
# --quick: one epoch on at most this many samples per split, for builders that take the sizes.
QUICK_SIZES = {"n_train": 32, "n_val": 16, "n_test": 16}
# Fields that say where a run lives or how it is shown, not what it computes: a finished cell
# is not refused for a difference in these.
IGNORED_FIELDS = ("name", "out", "train.progress", "train.tensorboard", "data.root", "data.num_workers")
LEVEL = 0.95  # of the paired-difference intervals
MISSING_LISTED = 8  # summary.md names at most this many unfinished cells of a task


# ----------------------------------------------------------------------------- table maths


def mean(xs: Sequence[float]) -> float:
    """Arithmetic mean; nan for no values."""
    return math.fsum(xs) / len(xs) if xs else math.nan


def sample_std(xs: Sequence[float]) -> float:
    """Standard deviation with the n − 1 denominator; nan for fewer than two values."""
    if len(xs) < 2:
        return math.nan
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with an integer number of degrees of freedom df ≥ 1, in closed
    form (Abramowitz and Stegun 26.7.3-4): with θ = atan(t/√df) and c = cos²θ,
    A = 2 P(T ≤ t) − 1 = sin θ Σ_{k<df/2} [(2k−1)!!/(2k)!!] c^k for even df and
    (2/π)(θ + sin θ cos θ Σ_{k<(df−1)/2} [(2k)!!/(2k+1)!!] c^k) for odd df (2θ/π at df = 1)."""
    theta = math.atan(t / math.sqrt(df))
    c = math.cos(theta) ** 2
    term, total = 1.0, 0.0
    if df % 2 == 0:
        for k in range(df // 2):
            if k:
                term *= (2 * k - 1) / (2 * k) * c
            total += term
        a = math.sin(theta) * total
    else:
        for k in range((df - 1) // 2):
            if k:
                term *= (2 * k) / (2 * k + 1) * c
            total += term
        a = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    return (1 + a) / 2


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom (0.5 < p < 1), by bisection on
    `t_cdf` to double precision (no scipy at run time)."""
    if not (0.5 < p < 1 and df >= 1):
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def mean_interval(xs: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided t interval of the mean, mean ± t_{(1+level)/2, n−1} s/√n
    with s the sample standard deviation; low and high are nan for fewer than two values."""
    m, n = mean(xs), len(xs)
    if n < 2:
        return m, math.nan, math.nan
    half = t_quantile((1 + level) / 2, n - 1) * sample_std(xs) / math.sqrt(n)
    return m, m - half, m + half


def paired_differences(values: Mapping[int, float], baseline: Mapping[int, float]) -> dict[int, float]:
    """value − baseline for every seed both have, by seed (seeds sorted)."""
    return {s: values[s] - baseline[s] for s in sorted(values.keys() & baseline.keys())}


# ----------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Task:
    """One task of a grid: an experiment config and overrides of it."""

    name: str
    config: Path
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Model:
    """One model of a grid: overrides applied to every task's config."""

    name: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Grid:
    """A study as read from its TOML file."""

    path: Path
    name: str
    seeds: tuple[int, ...]
    baseline: str
    out: str
    tasks: tuple[Task, ...]
    models: tuple[Model, ...]


def _check_keys(where: str, table: dict[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(known)}")


def _overrides(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}.overrides must be a list of strings like \"train.epochs=4\", got {value!r}")
    return tuple(value)


def _plain_name(where: str, name: str) -> None:
    """Task and model names become directory names."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise UserError(f"{where}: the name {name!r} must be a plain directory name")


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file (one-line UserErrors naming the file and the key)."""
    path = Path(path)
    table = cfgmod.read_toml(path, "grid file")
    where = f"grid {str(path)!r}"
    _check_keys(where, table, GRID_KEYS)
    for key in ("seeds", "baseline", "tasks", "models"):
        if key not in table:
            raise UserError(f"{where}: missing {key!r}")
    seeds = table["seeds"]
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise UserError(f"{where}: seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{where}: seeds must be distinct, got {seeds!r}")
    name = table.get("name", path.stem)
    for key, value in (("name", name), ("baseline", table["baseline"]), ("out", table.get("out", ""))):
        if not isinstance(value, str):
            raise UserError(f"{where}: {key} must be a string, got {value!r}")
    _plain_name(where, name)
    tasks, models = [], []
    for section, known, items in (("tasks", TASK_KEYS, tasks), ("models", MODEL_KEYS, models)):
        entries = table[section]
        if not isinstance(entries, dict) or not entries:
            raise UserError(f"{where}: [{section}.NAME] tables are missing")
        for key, entry in entries.items():
            at = f"{where}: [{section}.{key}]"
            _plain_name(at, key)
            if not isinstance(entry, dict):
                raise UserError(f"{at} must be a table")
            _check_keys(at, entry, known)
            overrides = _overrides(f"{where}: {section}.{key}", entry.get("overrides", []))
            if section == "models":
                items.append(Model(key, overrides))
                continue
            config = entry.get("config")
            if not isinstance(config, str):
                raise UserError(f"{at}: config must be the path of an experiment TOML file, got {config!r}")
            if not Path(config).is_file():
                raise UserError(f"{at}: config file {config!r} not found (paths are relative to the current directory)")
            items.append(Task(key, Path(config), overrides))
    baseline = table["baseline"]
    if baseline not in {m.name for m in models}:
        raise UserError(f"{where}: baseline {baseline!r} is not among the models: {', '.join(m.name for m in models)}")
    return Grid(path, name, tuple(seeds), baseline, table.get("out") or f"runs/studies/{name}", tuple(tasks),
                tuple(models))


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One run of a study: (task, model, seed) and its resolved config."""

    task: str
    model: str
    seed: int
    config: Config

    @property
    def run_dir(self) -> Path:
        return loop.run_paths(self.config)["root"]

    @property
    def label(self) -> str:
        return f"{self.task} / {self.model} / seed {self.seed}"


def quick_overrides(cfg: Config) -> list[str]:
    """Overrides that shrink a cell to seconds: one epoch, and at most QUICK_SIZES samples per
    split where the data set's builder takes the sizes (models keep their size: the smoke test
    is that every model of the grid builds and trains on every task)."""
    from ..data import DATASETS

    out = ["train.epochs=1"]
    builder = DATASETS.get(cfg.data.name)
    defaults = builder.options() if builder is not None else {}
    for key, size in QUICK_SIZES.items():
        if key in defaults:
            current = cfg.data.options.get(key, defaults[key])
            out.append(f"data.options.{key}={size if current is None else min(current, size)}")
    return out


def _check_layer(cfg: Config) -> None:
    """Build one layer of the config's model so that a bad layer option fails before any cell
    trains (fit builds the whole model only when the cell starts, possibly hours in)."""
    if cfg.model.layer not in LAYERS:
        raise UserError(f"model.layer must be one of {', '.join(map(repr, LAYERS))}, got {cfg.model.layer!r}")
    try:
        LAYERS[cfg.model.layer](cfg.model.d_model, **{"d_state": cfg.model.d_state, **cfg.model.layer_args})
    except (TypeError, ValueError) as e:
        raise UserError(f"model.layer_args: {e}") from e


def study_root(grid: Grid, out: str | Path | None, quick: bool) -> Path:
    """The output root: `out`, else the grid's, with '-quick' appended in quick mode so that a
    smoke test never lands among a study's real cells."""
    return Path(out) if out is not None else Path(grid.out + ("-quick" if quick else ""))


def resolve(grid: Grid, root: Path, quick: bool = False, overrides: Sequence[str] = (),
            seeds: Sequence[int] | None = None) -> list[Cell]:
    """Every cell of the grid under `root`, in the order they run: by task, then seed, then model
    (so that a partly run study already has paired seeds). Every config is loaded and every
    distinct layer built once, so that mistakes surface before anything trains."""
    cells, checked = [], set()
    for task in grid.tasks:
        for seed in seeds if seeds is not None else grid.seeds:
            for model in grid.models:
                try:
                    cfg = cfgmod.load(task.config, [*task.overrides, *model.overrides, *overrides])
                    if quick:
                        cfg = cfgmod.apply_overrides(cfg, quick_overrides(cfg))
                    if cfg.train.max_steps:
                        raise UserError("train.max_steps stops a run before its results; size cells with "
                                        "train.epochs and data.options.n_train instead")
                    key = json.dumps(cfgmod.to_dict(cfg)["model"], sort_keys=True)
                    if key not in checked:
                        _check_layer(cfg)
                        checked.add(key)
                except UserError as e:
                    raise UserError(f"grid {str(grid.path)!r}, task {task.name!r}, model {model.name!r}: {e}") from e
                cfg = dataclasses.replace(cfg, seed=seed, name=f"seed{seed}", out=str(root / task.name / model.name))
                cells.append(Cell(task.name, model.name, seed, cfgmod.validate(cfg)))
    return cells


def _flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict by dotted path; the keyword tables (layer_args, options) stay whole."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict) and f"{prefix}{k}" not in ("model.layer_args", "data.options"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def status(cell: Cell) -> str:
    """'done' (results.json written), 'partial' (a checkpoint to resume) or 'new'; a directory
    holding a run of another config is a UserError naming the fields that differ."""
    root = cell.run_dir
    stored = root / "config.toml"
    last = loop.run_paths(cell.config)["last"]
    if stored.is_file():
        previous = cfgmod.to_dict(cfgmod.load(stored))
        if last.is_file():  # a run from before a default changed: its arguments as they were
            model = previous["model"]
            model["layer_args"] = checkpoint.legacy_layer_args(model["layer"], model["layer_args"],
                                                               checkpoint.tensor_names(last))
        old, new = _flat(previous), _flat(cfgmod.to_dict(cell.config))
        differ = [k for k in new if k not in IGNORED_FIELDS and old.get(k) != new[k]]
        if differ:
            raise UserError(f"{root} holds a run of another config ({', '.join(differ)} differ); remove it or pick "
                            f"another --out")
    if (root / "results.json").is_file():
        return "done"
    if last.is_file():
        return "partial"
    return "new"


@dataclass
class Outcome:
    """What a study knows of one cell: its status, and for a finished one the final scores
    (results.json) and the per-epoch history (metrics.csv)."""

    cell: Cell
    status: str  # 'done', 'partial', 'new', 'diverged'
    results: dict[str, Any] | None = None
    history: list[dict[str, float]] | None = None


def read_history(path: Path) -> list[dict[str, float]]:
    """metrics.csv as a list of rows of floats."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read_cell(cell: Cell) -> Outcome:
    """The outcome of a cell from its run directory (scores only when it is done)."""
    state = status(cell)
    if state != "done":
        return Outcome(cell, state)
    root = cell.run_dir
    results = json.loads((root / "results.json").read_text())
    return Outcome(cell, state, results, read_history(root / "metrics.csv"))


def run_cell(cell: Cell, data: Any) -> Outcome:
    """Train (or resume) one cell with `fit`; a diverged cell is recorded, not raised, so that
    one unstable seed does not stop the rest of a study."""
    try:
        loop.fit(cell.config, data=data, resume=status(cell) == "partial")
    except loop.Diverged as e:
        log.warning("%s diverged: %s", cell.label, e)
        return Outcome(cell, "diverged")
    return read_cell(cell)


# ----------------------------------------------------------------------------- summary


def metric_of(results: dict[str, Any]) -> tuple[str, str]:
    """(metric name, 'max' or 'min') of a finished run's results."""
    for task, metric in metrics.METRIC.items():
        if metric in results["test"]:
            return metric, metrics.MODE[task]
    raise UserError(f"results of {results.get('run_dir')} name no known metric")


def summarise_task(outcomes: Sequence[Outcome], models: Sequence[str], baseline: str) -> dict[str, Any]:
    """One task's table as a dict: per model the scores per seed, mean, std, the paired
    difference to the baseline with its interval, and time per cell."""
    done = [o for o in outcomes if o.status == "done"]
    table: dict[str, Any] = {
        "metric": None, "direction": None, "models": {},
        "missing": [f"{o.cell.label} ({o.status})" for o in outcomes if o.status in ("new", "partial")],
        "diverged": [o.cell.label for o in outcomes if o.status == "diverged"],
    }
    if not done:
        return table
    metric, mode = metric_of(done[0].results)
    test = {m: {o.cell.seed: o.results["test"][metric] for o in done if o.cell.model == m} for m in models}
    rows = {}
    for m in models:
        mine = sorted((o for o in done if o.cell.model == m), key=lambda o: o.cell.seed)
        seconds = [sum(row["seconds"] for row in o.history) for o in mine]
        val = [o.results["val"][metric] for o in mine]
        diffs = paired_differences(test[m], test[baseline])
        d_mean, low, high = mean_interval(list(diffs.values()))
        rows[m] = {
            "seeds": sorted(test[m]), "test": [test[m][s] for s in sorted(test[m])],
            "test_mean": mean(list(test[m].values())), "test_std": sample_std(list(test[m].values())),
            "val": val, "val_mean": mean(val), "val_std": sample_std(val),
            "diff": {"pairs": len(diffs), "mean": d_mean, "low": low, "high": high, "level": LEVEL},
            "seconds": seconds, "seconds_mean": mean(seconds),
            "run_dirs": [str(o.cell.run_dir) for o in mine],
        }
    return {**table, "metric": metric, "direction": mode, "models": rows}


def _num(x: float, signed: bool = False) -> str:
    if math.isnan(x):
        return "–"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _spread(m: float, std: float) -> str:
    """'mean ± std', or the mean alone where one seed leaves the std undefined."""
    return _num(m) if math.isnan(std) else f"{_num(m)} ± {_num(std)}"


def markdown(summary: dict[str, Any]) -> str:
    """summary.md: a header saying how the numbers were made, then one table per task."""
    baseline = summary["baseline"]
    lines = [
        f"# Study `{summary['name']}`",
        "",
        f"Grid `{summary['grid']}`; seeds {', '.join(map(str, summary['seeds']))}; baseline `{baseline}`.",
        "",
        *(["**Quick mode**: every cell shrunk to one epoch on a few samples; a smoke test, not results.", ""]
          if summary["quick"] else []),
        "Test metric of each run's best-validation checkpoint, mean ± sample standard deviation over seeds; "
        f"Δ = model − {baseline} on the same seed, mean and {100 * LEVEL:g} % t interval over the paired seeds; "
        "validation metric likewise; time: training + validation seconds per cell (sum of its epoch times), "
        "mean over seeds.",
    ]
    for task, t in summary["tasks"].items():
        lines += ["", f"## {task}", ""]
        if t["metric"] is None:
            lines.append("No finished cells yet.")
        else:
            better = "higher" if t["direction"] == "max" else "lower"
            metric = t["metric"]
            lines += [f"{metric} ({better} is better)", "",
                      f"| model | test {metric} | Δ vs {baseline} [{100 * LEVEL:g} % CI] | val {metric} | seeds | s / cell |",
                      "|---|---|---|---|---|---|"]
            for model, r in t["models"].items():
                if not r["seeds"]:
                    lines.append(f"| {model} | not run | | | 0 | |")
                    continue
                d = r["diff"]
                if model == baseline:
                    delta = "baseline"
                elif d["pairs"] == 0:
                    delta = "no paired seeds"
                else:
                    delta = f"{_num(d['mean'], True)} [{_num(d['low'], True)}, {_num(d['high'], True)}]"
                    if d["pairs"] != len(r["seeds"]):
                        delta += f" ({d['pairs']} pairs)"
                lines.append(f"| {model} | {_spread(r['test_mean'], r['test_std'])} | {delta} | "
                             f"{_spread(r['val_mean'], r['val_std'])} | {len(r['seeds'])} | {r['seconds_mean']:.0f} |")
            lines += ["", f"![validation {metric} per epoch]({t['plot']})" if t.get("plot") else
                      "Plots need matplotlib: `pip install lssl[plot]`."]
        if t.get("diverged"):
            lines += ["", "Diverged: " + "; ".join(t["diverged"]) + "."]
        if len(t["missing"]) > MISSING_LISTED:
            lines += ["", f"Not finished: {len(t['missing'])} cells (listed in summary.json)."]
        elif t["missing"]:
            lines += ["", "Not finished: " + "; ".join(t["missing"]) + "."]
    return "\n".join(lines) + "\n"


def epoch_band(histories: Sequence[list[dict[str, float]]], key: str) -> tuple[list[float], list[float], list[float]]:
    """Per epoch (up to the shortest history): mean, min and max of column `key` over seeds."""
    n = min(len(h) for h in histories)
    columns = [[h[i][key] for h in histories] for i in range(n)]
    return [mean(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns]


def plot_task(path: Path, task: str, outcomes: Sequence[Outcome], models: Sequence[str], metric: str) -> bool:
    """The validation metric per epoch of one task, a line per model (mean over seeds) and a band
    (lowest to highest seed); False when matplotlib is missing."""
    from .report import _plt

    plt = _plt()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for model in models:
        histories = [o.history for o in outcomes if o.status == "done" and o.cell.model == model and o.history]
        if not histories:
            continue
        mid, low, high = epoch_band(histories, f"val_{metric}")
        epochs = list(range(1, len(mid) + 1))
        (line,) = ax.plot(epochs, mid, marker="o", markersize=3, label=f"{model} ({len(histories)} seeds)")
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"{task}: mean over seeds, band from the lowest to the highest seed", fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _nan_to_null(value: Any) -> Any:
    """JSON has no NaN: an undefined statistic (one seed's std, no pairs) is written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_null(v) for v in value]
    return value


def write_summary(root: Path, grid: Grid, seeds: Sequence[int], quick: bool, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """summary.json, summary.md and TASK.png in `root`; returns the summary dict."""
    root.mkdir(parents=True, exist_ok=True)
    models = [m.name for m in grid.models]
    summary: dict[str, Any] = {"name": grid.name, "grid": str(grid.path), "baseline": grid.baseline,
                               "seeds": list(seeds), "quick": quick, "tasks": {}}
    for task in grid.tasks:
        mine = [o for o in outcomes if o.cell.task == task.name]
        t = summarise_task(mine, models, grid.baseline)
        if t["metric"] is not None and plot_task(root / f"{task.name}.png", task.name, mine, models, t["metric"]):
            t["plot"] = f"{task.name}.png"
        summary["tasks"][task.name] = t
    (root / "summary.json").write_text(json.dumps(_nan_to_null(summary), indent=2) + "\n")
    (root / "summary.md").write_text(markdown(summary))
    return summary


# ----------------------------------------------------------------------------- the study


def _selected(kind: str, chosen: Sequence[str] | None, known: Sequence[str]) -> set[str]:
    if chosen is None:
        return set(known)
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise UserError(f"unknown {kind} {unknown[0]!r}; the grid has: {', '.join(known)}")
    return set(chosen)


def compare(grid_path: str | Path, out: str | Path | None = None, quick: bool = False,
            tasks: Sequence[str] | None = None, models: Sequence[str] | None = None,
            seeds: Sequence[int] | None = None, overrides: Sequence[str] = (), dry_run: bool = False) -> dict[str, Any]:
    """Run a study: train every unfinished selected cell, then write the summary.

    Args:
        grid_path: the grid TOML file.
        out: output root (default: the grid's `out`, with '-quick' appended under `quick`).
        quick: shrink every cell to seconds (`quick_overrides`), a smoke test.
        tasks, models: run only these (default all); the summary still covers every finished
            cell of the grid.
        seeds: replace the grid's seeds (run and summary).
        overrides: 'section.field=value' applied to every cell after the task's and model's.
        dry_run: resolve and check every cell, train nothing, write nothing.
    Returns:
        The summary (as in summary.json) with 'out' and 'statuses' ({cell label: status});
        under dry_run only 'out', 'statuses' and 'run_dirs' ({cell label: directory}).
    """
    grid = load_grid(grid_path)
    run_tasks = _selected("task", tasks, [t.name for t in grid.tasks])
    run_models = _selected("model", models, [m.name for m in grid.models])
    root = study_root(grid, out, quick)
    cells = resolve(grid, root, quick, overrides, seeds)
    states = {c.label: status(c) for c in cells}  # refuses foreign run directories before training
    todo = [c for c in cells if c.task in run_tasks and c.model in run_models and states[c.label] != "done"]
    log.info("study %s: %d cells, %d finished, %d to run -> %s", grid.name, len(cells),
             sum(s == "done" for s in states.values()), len(todo), root)
    if dry_run:
        return {"out": str(root), "statuses": states, "run_dirs": {c.label: str(c.run_dir) for c in cells}}
    ran: dict[str, Outcome] = {}
    spec_key, spec = None, None
    for i, cell in enumerate(todo, 1):
        # Cells of one task usually share their data config: load it once, not once per cell.
        key = json.dumps(cfgmod.to_dict(cell.config)["data"], sort_keys=True)
        if key != spec_key:
            spec_key, spec = key, loop.load_data(cell.config.data)
        log.info("[%d/%d] %s (%s)", i, len(todo), cell.label, states[cell.label])
        ran[cell.label] = run_cell(cell, spec)
    outcomes = [ran.get(c.label) or read_cell(c) for c in cells]
    summary = write_summary(root, grid, seeds if seeds is not None else grid.seeds, quick, outcomes)
    log.info("summary: %s", root / "summary.md")
    return {**summary, "out": str(root), "statuses": {o.cell.label: o.status for o in outcomes}}
