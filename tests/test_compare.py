"""lssl.train.compare: the table maths against hand-computed values, grid checks, and a quick
study on generated data sets through the command line (summary files, skipped and resumed
cells, exit codes)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lssl import cli, config
from lssl.errors import UserError
from lssl.train import compare, loop
from lssl.train.compare import Cell, Outcome

# t_{0.975, df} from standard tables (df = 1, 2, 4, 10, 30).
T975 = {1: 12.7062047, 2: 4.30265273, 4: 2.77644511, 10: 2.22813885, 30: 2.04227246}


def test_mean_and_sample_std():
    assert compare.mean([1.0, 2.0, 6.0]) == 3.0
    assert compare.sample_std([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(math.sqrt(32 / 7))  # mean 5, SS 32, n-1 = 7
    assert math.isnan(compare.sample_std([1.0])) and math.isnan(compare.mean([]))


def test_t_distribution_matches_tables():
    for df, q in T975.items():
        assert compare.t_quantile(0.975, df) == pytest.approx(q, abs=1e-7)
    assert compare.t_cdf(0.0, 7) == 0.5
    assert compare.t_cdf(-1.3, 5) == pytest.approx(1 - compare.t_cdf(1.3, 5), abs=1e-15)
    assert compare.t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    assert compare.t_cdf(1.0, 2) == pytest.approx(0.5 + 1 / (2 * math.sqrt(3)))  # 1/2 + t / (2 sqrt(2 + t^2))
    with pytest.raises(ValueError):
        compare.t_quantile(0.4, 3)


def test_t_distribution_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 8, 13, 50, 200):
        for p in (0.6, 0.9, 0.975, 0.995):
            assert compare.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-10)
        for t in (-4.0, -0.3, 0.8, 2.5):
            assert compare.t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12)


def test_mean_interval_and_paired_differences():
    m, low, high = compare.mean_interval([1.0, 2.0, 3.0])  # mean 2, s 1, n 3: 2 -+ 4.30265273 / sqrt(3)
    assert (m, low, high) == pytest.approx((2.0, -0.48413771, 4.48413771))
    m, low, high = compare.mean_interval([0.5])
    assert m == 0.5 and math.isnan(low) and math.isnan(high)
    assert compare.paired_differences({2: 1.0, 0: 3.0, 5: 9.0}, {0: 1.0, 2: 0.5, 7: 0.0}) == {0: 2.0, 2: 0.5}


def outcome(model: str, seed: int, test: float, val: float, seconds: list[float], metric: str = "accuracy") -> Outcome:
    cell = Cell("task", model, seed, dataclasses.replace(config.Config(), seed=seed, name=f"seed{seed}"))
    history = [{"epoch": i + 1.0, f"val_{metric}": val, "seconds": s} for i, s in enumerate(seconds)]
    return Outcome(cell, "done", {"val": {metric: val}, "test": {metric: test}}, history)


def test_task_table_by_hand():
    outcomes = [
        outcome("base", 0, 0.5, 0.40, [10.0, 20.0]), outcome("new", 0, 0.6, 0.50, [15.0, 15.0]),
        outcome("base", 1, 0.6, 0.45, [10.0, 10.0]), outcome("new", 1, 0.8, 0.60, [20.0, 20.0]),
        outcome("base", 2, 0.7, 0.50, [10.0, 10.0]), outcome("new", 2, 0.7, 0.70, [25.0, 25.0]),
        outcome("lone", 1, 0.9, 0.90, [1.0]),
        Outcome(Cell("task", "lone", 0, config.Config()), "new"),
    ]
    t = compare.summarise_task(outcomes, ["base", "new", "lone"], "base")
    assert (t["metric"], t["direction"]) == ("accuracy", "max")
    new = t["models"]["new"]
    assert new["seeds"] == [0, 1, 2] and new["test"] == [0.6, 0.8, 0.7]
    assert new["test_mean"] == pytest.approx(0.7) and new["test_std"] == pytest.approx(0.1)
    # Differences 0.1, 0.2, 0.0: mean 0.1, s 0.1, half width 4.30265273 * 0.1 / sqrt(3) = 0.24841377.
    d = new["diff"]
    assert d["pairs"] == 3 and (d["mean"], d["low"], d["high"]) == pytest.approx((0.1, -0.14841377, 0.34841377))
    assert new["seconds"] == [30.0, 40.0, 50.0] and new["seconds_mean"] == pytest.approx(40.0)
    assert new["val_mean"] == pytest.approx(0.6) and t["models"]["base"]["diff"]["mean"] == 0.0
    lone = t["models"]["lone"]["diff"]
    assert lone["pairs"] == 1 and lone["mean"] == pytest.approx(0.3) and math.isnan(lone["low"])
    assert t["missing"] == ["task / lone / seed 0 (new)"]
    summary = {"name": "s", "grid": "g.toml", "baseline": "base", "seeds": [0, 1, 2], "quick": False,
               "tasks": {"task": t}}
    text = compare.markdown(summary)
    assert "accuracy (higher is better)" in text
    assert "| new | 0.7000 ± 0.1000 | +0.1000 [-0.1484, +0.3484] | 0.6000 ± 0.1000 | 3 | 40 |" in text
    assert "| base | 0.6000 ± 0.1000 | baseline |" in text
    assert "| lone | 0.9000 | +0.3000 [–, –] |" in text
    unrun = [Outcome(Cell("task", "base", seed, config.Config()), "new") for seed in range(9)]
    unrun_table = compare.summarise_task(unrun, ["base"], "base")
    assert len(unrun_table["missing"]) == 9
    assert "No finished cells yet.\n\nNot finished: 9 cells (listed in summary.json)." in compare.markdown(
        {**summary, "tasks": {"task": unrun_table}})
    regression = compare.summarise_task([outcome("base", 0, 2.0, 2.0, [1.0], "rmse")], ["base"], "base")
    assert regression["direction"] == "min"
    assert "rmse (lower is better)" in compare.markdown({**summary, "tasks": {"task": regression}})


def test_epoch_band():
    a = [{"v": 1.0}, {"v": 2.0}, {"v": 3.0}]
    b = [{"v": 3.0}, {"v": 0.0}]
    assert compare.epoch_band([a, b], "v") == ([2.0, 1.0], [1.0, 0.0], [3.0, 2.0])


# ----------------------------------------------------------------------------- grids and a quick study

TASK = """
name = "{name}"
[model]
layer = "s4d"
d_model = 8
n_layers = 1
d_state = 8
[data]
name = "{data}"
[data.options]
length = 16
n_train = 64
n_val = 32
n_test = 32
[train]
epochs = 2
batch_size = 16
lr = 0.01
progress = false
"""

GRID = """
name = "tiny"
seeds = [0, 1]
baseline = "s4d"
out = "runs/tiny"
[tasks.parity]
config = "parity.toml"
[tasks.adding]
config = "adding.toml"
overrides = ["train.lr=0.005"]
[models.s4d]
[models.liquid-kb2]
overrides = ['model.layer="liquid-s4"', 'model.layer_args.liquid="kb"', "model.layer_args.degree=2"]
"""


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A directory with two tiny task configs (classification, regression) and GRID."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "parity.toml").write_text(TASK.format(name="parity", data="parity"))
    (tmp_path / "adding.toml").write_text(TASK.format(name="adding", data="adding"))
    (tmp_path / "grid.toml").write_text(GRID)
    return tmp_path


@pytest.mark.parametrize("edit, message", [
    (lambda g: "colour = 1\n" + g, "unknown key 'colour'; known: name, seeds"),
    (lambda g: g.replace("seeds = [0, 1]", "seeds = []"), "seeds must be a non-empty list"),
    (lambda g: g.replace("seeds = [0, 1]", "seeds = [1, 1]"), "seeds must be distinct"),
    (lambda g: g.replace("seeds = [0, 1]\n", ""), "missing 'seeds'"),
    (lambda g: g.replace('baseline = "s4d"', 'baseline = "s4"'), "baseline 's4' is not among the models: s4d, liquid-kb2"),
    (lambda g: g.replace('"adding.toml"', '"nowhere.toml"'), "[tasks.adding]: config file 'nowhere.toml' not found"),
    (lambda g: g.replace('overrides = ["train.lr=0.005"]', "overrides = 3"), "tasks.adding.overrides must be a list"),
    (lambda g: g.replace("[models.s4d]", "[models.s4d]\nlayer = 's4d'"), "[models.s4d]: unknown key 'layer'"),
    (lambda g: g.replace("[tasks.parity]", '[tasks.".hidden"]'), "must be a plain directory name"),
    (lambda g: g + "[tasks.x\n", "is not valid TOML"),
])
def test_grid_mistakes_are_one_line_errors(study, edit, message):
    (study / "grid.toml").write_text(edit(GRID))
    with pytest.raises(UserError) as e:
        compare.load_grid("grid.toml")
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("model.d_stat=4", "task 'parity', model 's4d': unknown config field 'model.d_stat'"),
    ("model.layer_args.activation=\"wobble\"", "task 'parity', model 's4d': model.layer_args:"),
    ("train.max_steps=3", "train.max_steps stops a run before its results"),
])
def test_cells_are_checked_before_anything_trains(study, monkeypatch, override, message):
    monkeypatch.setattr(loop, "fit", lambda *a, **k: pytest.fail("fit called"))
    with pytest.raises(UserError, match="grid 'grid.toml'") as e:
        compare.compare("grid.toml", overrides=[override])
    assert message in str(e.value)
    with pytest.raises(UserError, match="unknown model 'lstm'; the grid has: s4d, liquid-kb2"):
        compare.compare("grid.toml", models=["lstm"])


def test_quick_overrides_shrink_only_what_the_data_set_takes():
    cfg = config.from_dict({"data": {"name": "smnist", "options": {"n_val": 8}}})
    assert compare.quick_overrides(cfg) == ["train.epochs=1", "data.options.n_train=32", "data.options.n_val=8",
                                            "data.options.n_test=16"]
    assert compare.quick_overrides(config.from_dict({"data": {"name": "basic-motions"}})) == ["train.epochs=1"]


@pytest.mark.slow
def test_quick_study_then_skip_then_resume(study, monkeypatch, capsys):
    assert cli.main(["-q", "compare", "grid.toml", "--quick"]) == 0
    out = study / "runs" / "tiny-quick"
    assert capsys.readouterr().out.strip() == f"summary: {Path('runs/tiny-quick/summary.md')}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] and summary["seeds"] == [0, 1]
    assert summary["tasks"]["parity"]["metric"] == "accuracy" and summary["tasks"]["adding"]["metric"] == "rmse"
    for task in ("parity", "adding"):
        for model in ("s4d", "liquid-kb2"):
            row = summary["tasks"][task]["models"][model]
            assert row["seeds"] == [0, 1] and len(row["test"]) == 2 and row["seconds_mean"] > 0
            for seed in (0, 1):
                run = out / task / model / f"seed{seed}"
                assert config.load(run / "config.toml").train.epochs == 1
                assert len(compare.read_history(run / "metrics.csv")) == 1
    text = (out / "summary.md").read_text()
    assert "## parity" in text and "## adding" in text and "Quick mode" in text
    assert "| liquid-kb2 |" in text and "Not finished" not in text
    pytest.importorskip("matplotlib")
    assert (out / "parity.png").stat().st_size > 0 and "![validation rmse per epoch](adding.png)" in text

    # A second run reads every finished cell and trains nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    monkeypatch.setattr(loop, "fit", lambda *a, **k: pytest.fail("a finished cell was trained again"))
    assert cli.main(["-q", "compare", "grid.toml", "--quick"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("results.json")} == stamps
    assert json.loads((out / "summary.json").read_text())["tasks"] == summary["tasks"]

    # An interrupted cell (a checkpoint, no results) is resumed; the others are still skipped.
    monkeypatch.undo()
    monkeypatch.chdir(study)
    cell = next(c for c in compare.resolve(compare.load_grid("grid.toml"), Path("runs/tiny-quick"), quick=True)
                if (c.task, c.model, c.seed) == ("adding", "s4d", 1))
    (cell.run_dir / "results.json").unlink()
    calls = []
    fit = loop.fit

    def spy(cfg, data=None, resume=False):
        calls.append((cfg.out, resume))
        return fit(cfg, data=data, resume=resume)

    monkeypatch.setattr(loop, "fit", spy)
    assert cli.main(["-q", "compare", "grid.toml", "--quick", "--dry-run"]) == 0
    assert f"partial  adding / s4d / seed 1  ({cell.run_dir})" in capsys.readouterr().out
    assert cli.main(["-q", "compare", "grid.toml", "--quick"]) == 0
    assert calls == [(cell.config.out, True)] and (cell.run_dir / "results.json").is_file()

    # The same directory with another config is refused, naming the field.
    capsys.readouterr()
    assert cli.main(["-q", "compare", "grid.toml", "--quick", "--train.lr=0.02"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lssl: error: ") and "holds a run of another config (train.lr differ)" in err
    assert err.count("\n") == 1


def test_a_diverged_cell_is_reported_and_the_study_goes_on(study, monkeypatch, capsys):
    def diverge(cfg, data=None, resume=False):
        raise loop.Diverged("loss became nan")

    monkeypatch.setattr(loop, "fit", diverge)
    monkeypatch.setattr(loop, "load_data", lambda data: None)
    assert cli.main(["-q", "compare", "grid.toml", "--quick", "--tasks", "adding", "--seeds", "3"]) == 1
    assert "diverged: adding / s4d / seed 3; adding / liquid-kb2 / seed 3" in capsys.readouterr().err
    text = (study / "runs" / "tiny-quick" / "summary.md").read_text()
    assert "Diverged: adding / s4d / seed 3; adding / liquid-kb2 / seed 3." in text
    assert "Not finished: parity / s4d / seed 3 (new)" in text


def test_shipped_study_grids_load_and_resolve(tmp_path):
    """Every grid in configs/studies/ parses, and each of its cells loads as a valid config."""
    root = Path(__file__).resolve().parents[1]
    grids = sorted((root / "configs" / "studies").glob("*.toml"))
    assert grids
    for path in grids:
        grid = compare.load_grid(path)
        assert compare.resolve(grid, tmp_path, quick=True)


def test_liquid_control_is_affine_in_the_input_without_liquid_terms(tmp_path):
    """The positive control's claim, for every model of its cells: without a liquid term the logits
    are affine in the input (no nonlinearity across time anywhere in the model), so S4 and S4D
    see only the class-conditional means, equal by construction; every liquid model is not
    affine. Parameters are perturbed first, so that a liquid term that starts at zero counts."""
    grid = compare.load_grid(Path(__file__).resolve().parents[1] / "configs" / "studies" / "liquid.toml")
    cells = [c for c in compare.resolve(grid, tmp_path, seeds=[0]) if c.task == "control"]
    assert {c.model for c in cells} == {m.name for m in grid.models}
    spec = SimpleNamespace(d_input=1, d_output=2, vocab_size=None, task="classification")
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(2, 4, 128, 1, dtype=torch.float64, generator=gen)
    for cell in cells:
        torch.manual_seed(0)
        model = loop.build_model(loop.model_arguments(cell.config.model, spec)).double()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=gen))
            zero = model(torch.zeros_like(u))
            second = model(u + v) - model(u) - model(v) + zero  # (4, 2): 0 for an affine map
            ratio = float(second.abs().max() / (model(u) - zero).abs().max())
        liquid = cell.config.model.layer == "liquid-s4" and cell.config.model.layer_args.get("degree", 2) > 1
        assert (ratio > 1e-8) if liquid else (ratio < 1e-11), (cell.model, ratio)
