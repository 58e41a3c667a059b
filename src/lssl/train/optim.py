"""Optimizer and learning-rate schedules.

SSM parameters (A, B, P, dt) carry optimizer hints where they are created
(`param._optim = {"lr": ..., "weight_decay": 0.0}`, see `lssl.kernels.base.register`);
`param_groups` turns them into AdamW parameter groups. The official LSSL training script
honours only `_optim`, so LSSL's `_lr` hints were silently ignored there (spec F3); here every
hint is used: its own learning rate (None: the global one) and no weight decay.

Schedules are step-wise `LambdaLR` factors (cosine with linear warmup, multistep at epoch
milestones, constant), or `ReduceLROnPlateau` on the validation metric once per epoch; every
schedule state is plain numbers, so checkpoints store it as JSON.
"""

from __future__ import annotations

import bisect
import functools
import math
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: one per distinct hint (lr, weight_decay), and one for the
    parameters without hints at the global `lr` and `weight_decay`. Parameters that do not
    require grad are left out. Groups are ordered by first appearance in `model.parameters()`,
    so the order is the same in every process."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        hint = getattr(p, "_optim", {})
        key = (
            lr if hint.get("lr") is None else float(hint["lr"]),
            weight_decay if "weight_decay" not in hint else float(hint["weight_decay"]),
        )
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]


def optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, cfg.lr, cfg.weight_decay)`."""
    return torch.optim.AdamW(param_groups(model, cfg.lr, cfg.weight_decay), lr=cfg.lr)


def cosine_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine decay to 0 at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def multistep_factor(step: int, milestones: list[int], gamma: float) -> float:
    """gamma ** (number of milestones (in steps) reached)."""
    return gamma ** bisect.bisect_right(milestones, step)


def scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, metric_mode: str
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The schedule of `cfg.scheduler`. LambdaLR schedules step after every optimizer step;
    the plateau schedule steps once per epoch with the validation metric (`metric_mode`: 'min'
    or 'max')."""
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=metric_mode, factor=cfg.factor, patience=cfg.patience)
    if cfg.scheduler == "cosine":
        factor = functools.partial(cosine_factor, warmup=cfg.warmup_steps, total=total)
    elif cfg.scheduler == "multistep":
        milestones = sorted(m * steps_per_epoch for m in cfg.milestones)
        factor = functools.partial(multistep_factor, milestones=milestones, gamma=cfg.gamma)
    else:
        factor = functools.partial(multistep_factor, milestones=[], gamma=1.0)
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def schedule_state(sched: Any) -> dict[str, Any]:
    """The scheduler's state without its factor function (rebuilt from the config)."""
    state = sched.state_dict()
    state.pop("lr_lambdas", None)
    return state


def load_schedule_state(sched: Any, state: dict[str, Any]) -> None:
    """Inverse of `schedule_state`."""
    if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
        state = {**state, "lr_lambdas": [None] * len(sched.lr_lambdas)}
    sched.load_state_dict(state)
