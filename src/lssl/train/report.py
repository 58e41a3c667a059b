"""Run records: the metrics CSV (one row per epoch) and `report.md` with PNG plots (learning
curves, the learned timescales dt of every layer against their initial range, and a few learned
kernels), the final metrics at every evaluated rate, and where the data and setup come from.

Plots need matplotlib (`pip install lssl[plot]`); without it the report is written without
them and says so.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..layer import LAYERS
from . import metrics


def write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """The history rows as CSV (header only when empty)."""
    keys = list(history[0]) if history else ["epoch", "step", "train_loss", "val_loss", "lr", "seconds"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: Path, history: list[dict[str, Any]], metric: str, steps: list[list[float]] = ()) -> None:
    """Loss and metric against the optimizer step: the training loss of single batches about 20
    times an epoch (`steps`: [step, loss] pairs), and the epoch means of training and validation
    at each epoch's last step, marked, so that a one-epoch run still shows its curve."""
    plt = _plt()
    at = [row["step"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if steps:
        axes[0].plot([s for s, _ in steps], [v for _, v in steps], linewidth=0.8, alpha=0.6, label="train (batch)")
    for ax, key in zip(axes, ("loss", metric)):
        ax.plot(at, [row[f"train_{key}"] for row in history], marker="o", label="train (epoch)")
        ax.plot(at, [row[f"val_{key}"] for row in history], marker="s", label="validation")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def kernels_of(model: torch.nn.Module) -> list[Any]:
    """The SSM kernel of every block, in order."""
    return [block.layer.kernel for block in model.blocks]


def plot_dt(path: Path, model: torch.nn.Module, dt_range: tuple[float, float] | None) -> None:
    """The learned dt of every feature, sorted, per layer (log scale), with the initial range."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, kernel in enumerate(kernels_of(model)):
        ax.plot(torch.sort(kernel.dt.detach().float().cpu()).values, label=f"layer {i}")
    if dt_range:
        for bound in dt_range:
            ax.axhline(bound, color="gray", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("feature (sorted)")
    ax.set_ylabel("dt")
    ax.set_title("learned timescales (dashed: initial range)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def plot_kernels(path: Path, model: torch.nn.Module, length: int, features: int = 4) -> None:
    """K[0, h, :] of the first and last layer for the first few features h."""
    plt = _plt()
    ks = kernels_of(model)
    chosen = sorted({0, len(ks) - 1})
    fig, axes = plt.subplots(1, len(chosen), figsize=(5 * len(chosen), 3.5), squeeze=False)
    for ax, i in zip(axes[0], chosen):
        K = ks[i](length).float().cpu()  # (C, H, L)
        for h in range(min(features, K.shape[1])):
            ax.plot(K[0, h], linewidth=0.8, label=f"feature {h}")
        ax.set_title(f"layer {i} kernel")
        ax.set_xlabel("lag")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def initial_dt_range(cfg: Config) -> tuple[float, float] | None:
    """(dt_min, dt_max) of the config's layer: its layer_args, else the layer's defaults."""
    params = inspect.signature(LAYERS[cfg.model.layer]).parameters if cfg.model.layer in LAYERS else {}
    bounds = [cfg.model.layer_args.get(k, params[k].default if k in params else None) for k in ("dt_min", "dt_max")]
    return None if None in bounds else (bounds[0], bounds[1])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def write(root: Path, cfg: Config, spec: Any, model: torch.nn.Module, history: list[dict[str, Any]],
          results: dict[str, Any], steps: list[list[float]] = ()) -> Path:
    """Write results.json, the plots and report.md into the run directory `root` (`steps`: the
    per-batch training losses of `plot_curves`)."""
    metric = metrics.METRIC[spec.task]
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    lines = [
        f"# {cfg.name}",
        "",
        f"- paper: {cfg.paper or '-'}; row: {cfg.row or '-'}",
        f"- data: `{spec.name}`, {len(spec.train)} train / {len(spec.val)} val / {len(spec.test)} test, "
        # What the data stands in for comes from the data set itself: the config's stand_in note
        # describes the config's own sizes, which overrides may have changed.
        f"length {spec.length}; {getattr(spec, 'stands_in_for', '') or cfg.stand_in or '-'}",
        f"- model: {cfg.model.layer}, {cfg.model.n_layers} layers, H={cfg.model.d_model}, N={cfg.model.d_state}, "
        f"{n_params:,} parameters",
        f"- training: {len(history)} epochs, best validation epoch {results.get('best_epoch')}, "
        f"{sum(row['seconds'] for row in history):.0f} s",
        "",
        "## Final metrics (best validation checkpoint)",
        "",
        f"| split | rate | samples | loss | {metric} |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if isinstance(r, dict):
            lines.append(f"| {name} | {r['rate']:g} | {r['n']} | {_fmt(r['loss'])} | {_fmt(r[metric])} |")
    lines += ["", "## Plots", ""]
    if _plt() is None:
        lines.append("Plots need matplotlib: `pip install lssl[plot]`.")
    else:
        dt_range = initial_dt_range(cfg)
        plot_curves(root / "curves.png", history, metric, list(steps))
        plot_dt(root / "dt.png", model, dt_range)
        plot_kernels(root / "kernels.png", model, spec.length)
        lines += ["![learning curves](curves.png)", "", "![learned dt per layer](dt.png)", "",
                  "![learned kernels](kernels.png)"]
    lines += ["", "## Config", "", "See `config.toml` (resolved) and `metrics.csv` (one row per epoch)."]
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
