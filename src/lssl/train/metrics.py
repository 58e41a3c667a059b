"""Losses and metrics by task: classification (cross-entropy, accuracy) and regression (mean
squared error, RMSE). Sums are accumulated over batches so that a sharded evaluation reduces
exactly (sum of sums) across processes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

Tensor = torch.Tensor

TASKS = ("classification", "regression")
METRIC = {"classification": "accuracy", "regression": "rmse"}
# Direction in which the metric improves ('max' or 'min'), for model selection and plateaus.
MODE = {"classification": "max", "regression": "min"}


def loss(task: str, out: Tensor, y: Tensor) -> Tensor:
    """Mean loss of a batch: cross-entropy of logits out (B, classes) against y (B,) int64, or
    mean squared error of out (B, d_output) against y (B, d_output)."""
    if task == "classification":
        return F.cross_entropy(out, y)
    return F.mse_loss(out, y.to(out.dtype))


@dataclass
class Totals:
    """Running sums over a split: loss (per sample), correct predictions (classification) or
    squared error summed over targets (regression), and counts."""

    task: str
    loss_sum: float = 0.0
    score_sum: float = 0.0
    n: int = 0
    n_targets: int = 0

    def add(self, out: Tensor, y: Tensor, batch_loss: Tensor) -> None:
        """Add one batch: out and y as for `loss`, batch_loss its mean loss."""
        out, b = out.detach().double(), y.shape[0]
        self.loss_sum += batch_loss.item() * b
        self.n += b
        if self.task == "classification":
            self.score_sum += (out.argmax(-1) == y).sum().item()
            self.n_targets += b
        else:
            self.score_sum += (out - y.double()).square().sum().item()
            self.n_targets += y.numel()

    def as_tensor(self) -> Tensor:
        """The sums as a float64 tensor, for an all-reduce."""
        return torch.tensor([self.loss_sum, self.score_sum, self.n, self.n_targets], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, task: str, t: Tensor) -> Totals:
        loss_sum, score_sum, n, n_targets = t.tolist()
        return cls(task, loss_sum, score_sum, int(n), int(n_targets))

    def result(self) -> dict[str, float]:
        """{'loss': mean loss, METRIC[task]: accuracy in [0, 1] or RMSE, 'n': samples}."""
        if self.n == 0:
            return {"loss": math.nan, METRIC[self.task]: math.nan, "n": 0}
        if self.task == "classification":
            metric = self.score_sum / self.n_targets
        else:
            metric = math.sqrt(self.score_sum / self.n_targets)
        return {"loss": self.loss_sum / self.n, METRIC[self.task]: metric, "n": self.n}


def better(task: str, new: float, best: float | None) -> bool:
    """Whether `new` improves on `best` (None: nothing yet) for the task's metric."""
    if best is None or math.isnan(best):
        return not math.isnan(new)
    return new > best if MODE[task] == "max" else new < best
