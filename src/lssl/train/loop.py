"""Training and evaluation, top to bottom: `fit(config)` trains a `SequenceModel` and
`evaluate(checkpoint)` scores one.

`fit` reads as the steps of a run: set up processes and device, load the data, build the model
under the config's seed, build AdamW (groups from the layers' hints) and the schedule, restore a
checkpoint if resuming, then loop over epochs and batches, evaluate on the validation split
after every epoch, checkpoint, and finally score the best model on the test split and every
extra split at its sampling rate, and write the report.

Several processes (launched by `torchrun`, which sets RANK, WORLD_SIZE and LOCAL_RANK) train
data-parallel with DistributedDataParallel; the global batch `train.batch_size` is split
evenly, so W processes see the same global batches as one (see `batches`). Process 0 writes
the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .. import config as cfgmod
from ..config import Config, DataConfig, ModelConfig
from ..errors import UserError
from ..layer import LiquidS4
from ..model import SequenceModel
from . import batches, checkpoint, metrics, optim, report

log = logging.getLogger("lssl.train")

Tensor = torch.Tensor
DTYPES = {"float32": torch.float32, "float64": torch.float64}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(RuntimeError):
    """The training loss, a gradient or a weight became NaN or Inf."""


class Interrupted(RuntimeError):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint at the current step."""


# Train settings a resumed run may change: how long it trains and its bookkeeping. The others
# shape the optimisation that the checkpoint continues (its optimizer and schedule states).
RESUMABLE = ("epochs", "max_steps", "checkpoint_every", "checkpoint_minutes", "progress", "tensorboard", "device")


# ----------------------------------------------------------------------------- setup


@dataclass
class Processes:
    """This process's place in a data-parallel job (world 1: a single process)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def process_group(kind: str) -> Iterator[Processes]:
    """This process's place in the job, on devices of `kind` ('cpu' or 'cuda', `device_kind`).
    Launched by torchrun, it joins the process group (gloo on CPU, nccl on CUDA) unless already
    in one, and leaves the group it joined on the way out:
    after a finished run, once every rank is done (a barrier) and the run's DistributedDataParallel
    wrapper is freed (a garbage collection: reference cycles can hold it). A process that exits
    with the group open, or destroys it while a wrapper still holds it, sometimes aborts in the
    transport's teardown ("terminate called without an active exception": 3 of 40 two-process
    gloo runs of a bare DDP script on torch 2.13, none of 40 with the wrapper freed first), which
    fails the whole torchrun job after a finished run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    procs = Processes(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))
    joined = world > 1 and not dist.is_initialized()
    if joined:
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
    try:
        yield procs
        if joined:
            gc.collect()
            dist.barrier()
    finally:
        if joined:
            dist.destroy_process_group()


def device_kind(name: str) -> str:
    """train.device with 'auto' resolved: 'cuda' when a CUDA device is available, else 'cpu'."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def pick_device(name: str, procs: Processes) -> torch.device:
    """'auto' is CUDA (this process's local GPU) when available, else CPU."""
    name = device_kind(name)
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device='cuda' but no CUDA device is available; use train.device='cpu'")
        torch.cuda.set_device(procs.local_rank)
        return torch.device("cuda", procs.local_rank)
    return torch.device("cpu")


def load_data(data: DataConfig) -> Any:
    """The DataSpec of `data` through `lssl.data.load`."""
    from .. import data as lssl_data

    options = dict(data.options)
    if data.root:
        options["root"] = data.root
    return lssl_data.load(data.name, **options)


def target_statistics(dataset: Any) -> tuple[list[float], list[float]]:
    """Mean and standard deviation (d_output,) of a regression training set's targets."""
    y = torch.stack([torch.as_tensor(dataset[i][1], dtype=torch.float64) for i in range(len(dataset))])
    return y.mean(0).tolist(), y.std(0).clamp_min(1e-8).tolist()


def model_arguments(model: ModelConfig, spec: Any) -> dict[str, Any]:
    """`SequenceModel` keyword arguments for a model config on a data set; regression models
    predict targets standardised with the training set's statistics."""
    tokens = getattr(spec, "vocab_size", None)
    stats = {}
    if spec.task == "regression":
        stats = dict(zip(("target_mean", "target_std"), target_statistics(spec.train)))
    return {
        "d_input": None if tokens else spec.d_input,
        "d_output": spec.d_output,
        "vocab_size": tokens,
        "d_model": model.d_model,
        "n_layers": model.n_layers,
        "layer": model.layer,
        "layer_args": {"d_state": model.d_state, **model.layer_args},
        "norm": model.norm,
        "prenorm": model.prenorm,
        "dropout": model.dropout,
        "pooling": model.pooling,
        **stats,
    }


def build_model(args: dict[str, Any]) -> SequenceModel:
    """The model of `model_arguments`; bad settings are a UserError naming the config field."""
    try:
        return SequenceModel(**args)
    except TypeError as e:  # an unknown keyword in layer_args
        raise UserError(f"model.layer_args: {e}") from e
    except ValueError as e:
        raise UserError(f"model config: {e}") from e


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast, or nothing; fp16 needs CUDA (its loss scaling is CUDA's)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise UserError("train.amp='fp16' needs a CUDA device; use train.amp='bf16' on CPU")
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def forward(model: nn.Module, batch: dict[str, Tensor], rate: float = 1.0) -> Tensor:
    """The model on a collated batch; per-step time gaps are passed only when the data has them."""
    kwargs: dict[str, Any] = {"lengths": batch["lengths"]}
    if "dt_scale" in batch:
        kwargs["dt_scale"] = batch["dt_scale"]
    if rate != 1.0:
        kwargs["rate"] = rate
    return model(batch["x"], **kwargs)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def score(model: nn.Module, loader: Any, task: str, device: torch.device, dtype: torch.dtype, procs: Processes,
          rate: float = 1.0, amp: str = "none", desc: str = "eval", progress: bool = False) -> dict[str, float]:
    """Mean loss and metric of `model` over `loader` (summed over all processes)."""
    was_training = model.training
    model.eval()
    totals = metrics.Totals(task)
    for batch in tqdm(loader, desc=desc, disable=not (progress and procs.main), leave=False, unit="batch"):
        batch = batches.to_device(batch, device, dtype)
        with autocast(device, amp):
            out = forward(model, batch, rate)
        out = out if out.dtype in DTYPES.values() else out.float()  # autocast logits in full precision
        totals.add(out, batch["y"], metrics.loss(task, out, batch["y"]))
    model.train(was_training)
    return _result(totals, task, device, procs)


def splits(spec: Any) -> dict[str, Any]:
    """Every split of a DataSpec by name: train, val, test and the extra ones."""
    return {"train": spec.train, "val": spec.val, "test": spec.test, **dict(spec.extra)}


def select_split(spec: Any, split: str, rate: float | None) -> tuple[Any, float]:
    """The dataset to evaluate and the model's rate for it. A split with its own rate (e.g.
    test_8k: 2.0) is read at that rate; `rate` on a split at the training rate decimates it
    (x[::rate], integer rates)."""
    available = splits(spec)
    if split not in available:
        raise UserError(f"unknown split {split!r}; this data set has: {', '.join(available)}")
    native = float(dict(spec.rates).get(split, 1.0))
    if rate is None or rate == native:
        return available[split], native
    if native != 1.0:
        raise UserError(f"split {split!r} is already sampled at rate {native}; evaluate it without --rate")
    if rate != int(rate) or rate < 1:
        raise UserError(f"--rate must be a positive integer to decimate split {split!r}, got {rate}")
    return batches.Decimated(available[split], int(rate)), float(rate)


def evaluate(
    path: str | Path, split: str = "test", rate: float | None = None, data: Any = None,
    batch_size: int | None = None, device: str = "auto", progress: bool = False,
) -> dict[str, Any]:
    """Score a checkpoint on one split.

    Args:
        path: a checkpoint file (runs/NAME/checkpoints/best.safetensors, ...).
        split: 'test', 'val', 'train' or an extra split of the data set (e.g. 'test_8k').
        rate: evaluate at this sampling-rate factor: a split at the training rate is decimated
            by it (x[::rate]); None reads the split at its own rate.
        data: the DataSpec (default: loaded from the checkpoint's config).
        batch_size: default: the training batch size.
    Returns:
        {'split', 'rate', 'loss', metric, 'n'}.
    """
    tensors, meta = checkpoint.read(path)
    cfg = cfgmod.from_dict(meta["config"])
    spec = data if data is not None else load_data(cfg.data)
    dataset, model_rate = select_split(spec, split, rate)
    procs = Processes()
    dev = pick_device(device, procs)
    dtype = DTYPES[cfg.train.dtype]
    model = build_model(checkpoint.model_args_of(meta, tensors)).to(device=dev, dtype=dtype)
    checkpoint.load_weights(model, tensors, path)
    loader = batches.eval_loader(dataset, spec.collate, batch_size or cfg.train.batch_size, 1, 0, cfg.data.num_workers)
    result = score(model, loader, spec.task, dev, dtype, procs, model_rate, cfg.train.amp, desc=f"eval {split}",
                   progress=progress)
    return {"split": split, "rate": model_rate, **result}


# ----------------------------------------------------------------------------- training


@dataclass
class Progress:
    """Where a run is: the next epoch and batch within it, optimizer steps so far, the best
    validation metric, and one history row per finished epoch."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: list[float] = field(default_factory=list)  # this epoch's training totals so far
    steps: list[list[float]] = field(default_factory=list)  # [step, training loss] about 20 times an epoch


@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on run directory `root` (on the file `.NAME.lock` beside it)
    while the block runs. The OS drops the lock when the process dies, so a stale lock file
    never blocks; a second holder fails at once with a UserError naming the first."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): runs are not guarded against each other
        yield
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise UserError(f"run directory {root} is in use by another lssl process (pid {holder}); "
                            "wait for it to finish or pick another --name") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def stop_requests() -> Iterator[list[str]]:
    """While the block runs, SIGINT and SIGTERM append their name to the yielded list instead of
    acting, so that training can finish its step and checkpoint; the handler then puts the
    previous one back, so a second signal of the same kind acts at once (Ctrl-C twice stops
    without a checkpoint). Outside the main thread, where Python cannot set handlers, signals
    act as usual."""
    requested: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        requested.append(signal.Signals(signum).name)
        signal.signal(signum, previous[signum])
        log.warning("%s: stopping after this step with a checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def weights_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def run_paths(cfg: Config) -> dict[str, Path]:
    root = Path(cfg.out) / cfg.name
    return {"root": root, "last": root / "checkpoints" / "last.safetensors",
            "best": root / "checkpoints" / "best.safetensors"}


def rng_state() -> tuple[Tensor, dict[str, Any]]:
    """This process's torch RNG state (tensor) and Python/NumPy states (JSON)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    return torch.get_rng_state(), {"python": [py[0], list(py[1]), py[2]],
                                   "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}


def set_rng_state(torch_state: Tensor, other: dict[str, Any]) -> None:
    torch.set_rng_state(torch_state)
    version, state, gauss = other["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = other["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _gather(obj: Any, procs: Processes) -> list[Any]:
    if procs.world == 1:
        return [obj]
    out: list[Any] = [None] * procs.world
    dist.all_gather_object(out, obj)
    return out


def save_checkpoint(path: Path, cfg: Config, model_args: dict[str, Any], model: nn.Module,
                    opt: torch.optim.Optimizer, sched: Any, prog: Progress, procs: Processes) -> None:
    """Collective: every process contributes its RNG state; process 0 writes the file."""
    torch_rng, other_rng = rng_state()
    cuda_rng = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    states = _gather((torch_rng, cuda_rng, other_rng), procs)
    if not procs.main:
        return
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = checkpoint.optimizer_tensors(opt)
    tensors.update(opt_tensors)
    for r, (t, c, _) in enumerate(states):
        tensors[f"rng.torch.{r}"] = t
        if c is not None:
            tensors[f"rng.cuda.{r}"] = c
    meta = {
        "config": cfgmod.to_dict(cfg), "model_args": model_args, "optimizer": opt_meta,
        "scheduler": optim.schedule_state(sched), "rng": [s[2] for s in states],
        "progress": {"epoch": prog.epoch, "batch": prog.batch, "step": prog.step, "best": prog.best,
                     "best_epoch": prog.best_epoch, "partial": prog.partial, "world": procs.world,
                     "steps": prog.steps},
        "history": prog.history,
    }
    checkpoint.save(path, tensors, meta)


def changed_settings(saved: dict[str, Any], cfg: Config, path: Path) -> dict[str, list[Any]]:
    """The train settings of `cfg` that differ from a checkpoint's config `saved` (its layer
    arguments as `checkpoint.legacy_layer_args` reads them), as {dotted name: [saved, now]}; a
    UserError if anything but `RESUMABLE` settings differ."""
    now = cfgmod.to_dict(cfg)
    differ = [f"{s}.{k}" for s in ("model", "data") for k in now[s] if saved[s].get(k) != now[s][k]]
    differ += [k for k in ("seed",) if saved.get(k) != now[k]]
    if differ:
        raise UserError(f"checkpoint {str(path)!r} is incompatible with this config: {', '.join(differ)} differ")
    changes = {f"train.{k}": [saved["train"].get(k), v] for k, v in now["train"].items() if saved["train"].get(k) != v}
    fixed = [k for k in changes if k.removeprefix("train.") not in RESUMABLE]
    if fixed:
        shown = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in fixed)
        raise UserError(
            f"resuming {str(path)!r} with changed {shown}: a resumed run keeps the settings its optimizer and "
            f"schedule states come from; only {', '.join('train.' + k for k in RESUMABLE)} may change "
            "(start a new run to train with other settings)"
        )
    return changes


def with_legacy_layer_args(cfg: Config, tensors: dict[str, Tensor]) -> Config:
    """`cfg` with the layer arguments its checkpoint's model was built with
    (`checkpoint.legacy_layer_args`): a run from before a default changed resumes as it was."""
    args = checkpoint.legacy_layer_args(cfg.model.layer, cfg.model.layer_args, tensors)
    if args is cfg.model.layer_args:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, layer_args=args))


def restore(path: Path, saved: tuple[dict[str, Tensor], dict[str, Any]], cfg: Config, model: nn.Module,
            opt: torch.optim.Optimizer, sched: Any, procs: Processes) -> tuple[Progress, dict[str, list[Any]]]:
    """Load a checkpoint written by `save_checkpoint` (`saved`: its tensors and meta, as
    `checkpoint.read(path)` returns them) into the run's objects; refuse one from a
    different model, data set, seed or number of processes, or with changed train settings
    outside `RESUMABLE`. Returns the progress and the changed settings ({name: [saved, now]}).
    A step-wise schedule follows the current config from the checkpoint's step on: with more
    (or fewer) epochs, its total length changes, and so does the rate at that step."""
    tensors, meta = saved
    old = meta["config"]
    args = checkpoint.legacy_layer_args(old["model"]["layer"], old["model"].get("layer_args") or {}, tensors)
    changes = changed_settings({**old, "model": {**old["model"], "layer_args": args}}, cfg, path)
    p = meta["progress"]
    if p["world"] != procs.world:
        raise UserError(f"checkpoint {str(path)!r} was written by {p['world']} process(es); resume it with the same number")
    checkpoint.load_weights(model, tensors, path)
    checkpoint.load_optimizer(opt, tensors, meta["optimizer"])
    optim.load_schedule_state(sched, meta["scheduler"])
    if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
        # The rate at the checkpoint's step under this config's schedule: the saved rate when
        # nothing changed (the same arithmetic), the longer or shorter schedule's otherwise.
        for group, base, factor in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * factor(sched.last_epoch)
        sched._last_lr = [group["lr"] for group in opt.param_groups]
    set_rng_state(tensors[f"rng.torch.{procs.rank}"], meta["rng"][procs.rank])
    if f"rng.cuda.{procs.rank}" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{procs.rank}"])
    prog = Progress(p["epoch"], p["batch"], p["step"], p["best"], p["best_epoch"], meta["history"], p["partial"],
                    p.get("steps", []))
    return prog, changes


def tensorboard_writer(cfg: Config, root: Path, start_step: int) -> Any:
    """A TensorBoard SummaryWriter on root/tensorboard, or None if train.tensorboard is off.
    Events an interrupted run logged after `start_step` (the checkpoint's last step) are
    dropped (purge_step), so a resumed run's curves continue without duplicates."""
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UserError("train.tensorboard=true needs the tensorboard package: pip install 'lssl[tensorboard]'") from e
    return SummaryWriter(str(root / "tensorboard"), purge_step=start_step + 1 if start_step else None)


def fit(config: Config, data: Any = None, resume: bool | str | Path = False) -> dict[str, Any]:
    """Train `config` and return its results.

    Args:
        config: the resolved experiment (see `lssl.config`).
        data: its DataSpec (default: `lssl.data.load(config.data.name, **config.data.options)`).
        resume: False (a new run; refuses a run directory that has checkpoints), True (continue
            from the run's last checkpoint) or a checkpoint path.
    Returns:
        {'run_dir', 'epochs', 'steps', 'best_epoch', 'val': {...}, 'test': {...}, <extra split>:
        {...}, 'stopped_early': bool}, each split result with 'rate', 'loss', its metric, 'n'.
    Raises:
        Diverged: the loss became NaN or Inf (the last checkpoint written is still good).
    """
    cfg = cfgmod.validate(config)
    with process_group(device_kind(cfg.train.device)) as procs:
        return run_training(cfg, procs, data, resume)


def run_training(cfg: Config, procs: Processes, data: Any, resume: bool | str | Path) -> dict[str, Any]:
    """The body of `fit` for a validated config, in this process's place in the job: the run
    directory locked (process 0) and SIGINT / SIGTERM turned into a checkpoint and `Interrupted`."""
    root = run_paths(cfg)["root"]
    with run_lock(root) if procs.main else contextlib.nullcontext(), stop_requests() as requested:
        return train_locked(cfg, procs, data, resume, requested)


def resume_source(paths: dict[str, Path], resume: bool | str | Path) -> tuple[Path | None, bool, Any]:
    """The checkpoint to resume from (None for a new run), whether it is a fork (a checkpoint of
    another run directory, continued in this one), and its contents (`checkpoint.read`, read
    once here; None for a new run). Refuses, before anything is written, a new run or a fork
    into a directory that holds a run, and a fork whose source lacks the best checkpoint that
    the run's results come from."""
    if not resume:
        if paths["last"].exists():
            raise UserError(f"{paths['root']} already holds a run; continue it with --resume or pick another --name")
        return None, False, None
    source = paths["last"] if resume is True else Path(resume)
    fork = source.resolve().parent != paths["last"].parent.resolve()
    if fork and paths["last"].exists():
        raise UserError(f"{paths['root']} already holds a run; fork {str(source)!r} into a new --name")
    saved = checkpoint.read(source)
    best = source.parent / "best.safetensors"
    if fork and saved[1]["progress"]["best_epoch"] > 0 and not best.is_file():
        raise UserError(f"cannot fork {str(source)!r}: its run's best checkpoint {str(best)!r} is missing")
    return source, fork, saved


def clean_temporary_files(root: Path) -> None:
    """Remove the temporary files of checkpoint writes that a killed process left behind (the
    caller holds the run's lock, so no write is in progress)."""
    for tmp in (root / "checkpoints").glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


def record_resume(root: Path, source: Path, fork: bool, prog: Progress, changes: dict[str, list[Any]]) -> None:
    """Append one line to root/resumes.jsonl: where the run continued from, at which step, and
    the settings that changed there (config.toml holds the current ones)."""
    entry = {"checkpoint": str(source), "fork": fork, "epoch": prog.epoch, "batch": prog.batch, "step": prog.step,
             "changes": changes}
    with open(root / "resumes.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def train_locked(cfg: Config, procs: Processes, data: Any, resume: bool | str | Path,
                 requested: list[str]) -> dict[str, Any]:
    """`run_training` once the run directory is this process's; `requested` fills with the
    names of stop signals."""
    tc = cfg.train
    device, dtype = pick_device(tc.device, procs), DTYPES[tc.dtype]
    if tc.batch_size % procs.world:
        raise UserError(f"train.batch_size={tc.batch_size} must be divisible by the {procs.world} processes")
    local_batch = tc.batch_size // procs.world
    paths = run_paths(cfg)
    source, fork, saved = resume_source(paths, resume)
    if saved is not None:
        cfg = with_legacy_layer_args(cfg, saved[0])
    if procs.main:
        clean_temporary_files(paths["root"])
    spec = data if data is not None else load_data(cfg.data)
    task = spec.task

    seed_everything(cfg.seed)
    model_args = model_arguments(cfg.model, spec)
    model = build_model(model_args).to(device=device, dtype=dtype)
    for layer in model.modules():
        if isinstance(layer, LiquidS4):
            # PB's default windows (and KB's normalisation) follow the data's length, not the
            # padded length of whichever batch comes first; kept in the checkpoint, and a resumed
            # run's stored value replaces this one.
            layer.liquid.set_length(spec.length)
    seed_everything(cfg.seed + procs.rank)  # per-process stream for dropout
    opt = optim.optimizer(model, tc)
    per_rank = math.ceil(len(spec.train) / procs.world)
    steps_per_epoch = math.ceil(per_rank / local_batch)
    sched = optim.scheduler(opt, tc, steps_per_epoch, metrics.MODE[task])
    record_every = max(1, steps_per_epoch // 20)  # per-step losses kept for the learning curve
    prog, changes = Progress(), {}
    if source is not None:
        prog, changes = restore(source, saved, cfg, model, opt, sched, procs)
        del saved  # the checkpoint's tensors are in the model and optimizer now
        shown = "".join(f", {k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
        log.info("%s %s at epoch %d, batch %d (step %d)%s", "forked from" if fork else "resumed from", source,
                 prog.epoch + 1, prog.batch, prog.step, shown)
    if procs.main:
        paths["root"].mkdir(parents=True, exist_ok=True)
        if fork and prog.best_epoch > 0:
            checkpoint.atomic_write(paths["best"], (source.parent / "best.safetensors").read_bytes())
        if source is not None:
            record_resume(paths["root"], source, fork, prog, changes)
        (paths["root"] / "config.toml").write_text(cfgmod.dumps(cfg))
        report.write_csv(paths["root"] / "metrics.csv", prog.history)
    board = tensorboard_writer(cfg, paths["root"], prog.step) if procs.main else None
    try:
        net = nn.parallel.DistributedDataParallel(model) if procs.world > 1 else model
        scaler = torch.amp.GradScaler(device.type, enabled=tc.amp == "fp16")
        val_loader = batches.eval_loader(spec.val, spec.collate, local_batch, procs.world, procs.rank, cfg.data.num_workers)
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        best_val: dict[str, float] | None = None  # the best epoch's validation scores, when this process saw it
        if prog.best_epoch > 0:
            best_tensors, _ = checkpoint.read(paths["best"])
            best_state = {k: v.to(device=device, dtype=best_state[k].dtype)
                          for k, v in checkpoint.prefixed(best_tensors, "model.").items()}

        last_save = time.monotonic()

        def diverged(what: str) -> Diverged:
            last = paths["last"]
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            return Diverged(f"{what} at epoch {prog.epoch + 1}, batch {prog.batch + 1} (step {prog.step + 1}); "
                            f"{kept}; lower train.lr or set train.grad_clip and resume")

        def checkpoint_to(path: Path) -> None:
            nonlocal last_save
            if not weights_finite(model):  # never overwrite a good checkpoint with NaN weights
                raise diverged("the weights became NaN or Inf")
            save_checkpoint(path, cfg, model_args, model, opt, sched, prog, procs)
            last_save = time.monotonic()

        stopped = False
        while prog.epoch < tc.epochs and not stopped:
            loader = batches.train_loader(spec.train, spec.collate, local_batch, procs.world, procs.rank, cfg.seed,
                                          prog.epoch, prog.batch, cfg.data.num_workers)
            totals = (metrics.Totals.from_tensor(task, torch.tensor(prog.partial, dtype=torch.float64))
                      if prog.batch else metrics.Totals(task))
            seen, t0 = 0, time.perf_counter()
            bar = tqdm(loader, total=steps_per_epoch, initial=prog.batch, desc=f"epoch {prog.epoch + 1}/{tc.epochs}",
                       disable=not (tc.progress and procs.main), unit="batch", dynamic_ncols=True)
            net.train()
            for batch in bar:
                batch = batches.to_device(batch, device, dtype)
                try:
                    with autocast(device, tc.amp):
                        out = forward(net, batch)
                except ValueError as e:  # NaN weights make NaN activations that a layer's input check refuses
                    if not weights_finite(model):
                        raise diverged("the weights became NaN or Inf") from e
                    raise
                out = out if out.dtype in DTYPES.values() else out.float()  # autocast logits in full precision
                loss = metrics.loss(task, out, batch["y"])
                # One collective per step for every process's verdicts: the loss is not finite,
                # a stop signal came, a timed checkpoint is due.
                flags = torch.tensor([not bool(torch.isfinite(loss.detach())), bool(requested),
                                      tc.checkpoint_minutes > 0 and time.monotonic() - last_save >= 60 * tc.checkpoint_minutes],
                                     dtype=torch.int32, device=device)
                if procs.world > 1:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                nonfinite, stop, due = flags.tolist()
                if nonfinite:
                    raise diverged(f"the loss became {loss.item()}")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if tc.grad_clip > 0:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                scaler.step(opt)
                scaler.update()
                if not isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    sched.step()
                totals.add(out, batch["y"], loss)
                if (prog.batch + 1) % record_every == 0:
                    prog.steps.append([prog.step + 1, loss.item()])
                prog.partial = totals.as_tensor().tolist()
                seen += batch["y"].shape[0] * procs.world
                prog.batch += 1
                prog.step += 1
                r = totals.result()
                bar.set_postfix({"loss": f"{r['loss']:.4f}", metrics.METRIC[task]: f"{r[metrics.METRIC[task]]:.4f}",
                                 "samples/s": f"{seen / (time.perf_counter() - t0):.0f}"})
                if board is not None:
                    board.add_scalar("train/loss_step", loss.item(), prog.step)
                    board.add_scalar("train/lr", opt.param_groups[0]["lr"], prog.step)
                if stop:
                    checkpoint_to(paths["last"])
                    signame = requested[0] if requested else "a stop signal (another process)"
                    raise Interrupted(
                        f"{signame} at epoch {prog.epoch + 1}, batch {prog.batch} (step {prog.step}): checkpoint "
                        f"written to {paths['last']}; continue with --resume"
                    )
                if due or (tc.checkpoint_every and prog.step % tc.checkpoint_every == 0):
                    checkpoint_to(paths["last"])
                if tc.max_steps and prog.step >= tc.max_steps:
                    stopped = True
                    break
            bar.close()
            if stopped and prog.batch < steps_per_epoch:
                checkpoint_to(paths["last"])
                break
            train_result = _result(totals, task, device, procs)
            if not weights_finite(model):
                raise diverged("the weights became NaN or Inf")
            val = score(net, val_loader, task, device, dtype, procs, amp=tc.amp, desc="val", progress=tc.progress)
            metric = metrics.METRIC[task]
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(val[metric])
            prog.history.append({
                "epoch": prog.epoch + 1, "step": prog.step, "train_loss": train_result["loss"],
                f"train_{metric}": train_result[metric], "val_loss": val["loss"], f"val_{metric}": val[metric],
                "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
            })
            if metrics.better(task, val[metric], prog.best):
                prog.best, prog.best_epoch = val[metric], prog.epoch + 1
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
                best_val = val
            prog.epoch, prog.batch, prog.partial = prog.epoch + 1, 0, []
            checkpoint_to(paths["last"])
            if prog.best_epoch == prog.epoch:
                checkpoint_to(paths["best"])
            if procs.main:
                report.write_csv(paths["root"] / "metrics.csv", prog.history)
                if board is not None:
                    for key, value in prog.history[-1].items():
                        if key not in ("epoch", "step"):
                            board.add_scalar(f"epoch/{key}", value, prog.step)
                    board.flush()
                log.info("epoch %d: train loss %.4f, val loss %.4f, val %s %.4f", prog.epoch, train_result["loss"],
                         val["loss"], metric, val[metric])

        stopped = prog.epoch < tc.epochs
        results: dict[str, Any] = {"run_dir": str(paths["root"]), "epochs": prog.epoch, "steps": prog.step,
                                   "best_epoch": prog.best_epoch, "stopped_early": stopped}
        if stopped:
            log.info("stopped after %d steps (train.max_steps); continue with --resume", prog.step)
            return results
        model.load_state_dict(best_state)
        for name in ("val", "test", *dict(spec.extra)):
            if name == "val" and best_val is not None:
                # Scored at the end of the best epoch, with these very weights: not again.
                results["val"] = {"rate": 1.0, **best_val}
                continue
            dataset, rate = select_split(spec, name, None)
            loader = batches.eval_loader(dataset, spec.collate, local_batch, procs.world, procs.rank, cfg.data.num_workers)
            results[name] = {"rate": rate, **score(net, loader, task, device, dtype, procs, rate, tc.amp, desc=name,
                                                  progress=tc.progress)}
        if procs.main:
            report.write(paths["root"], cfg, spec, model, prog.history, results, prog.steps)
        if board is not None:
            for name, result in results.items():
                if isinstance(result, dict):
                    for key, value in result.items():
                        board.add_scalar(f"final/{name}_{key}", value, prog.step)
        return results
    finally:
        if board is not None:
            board.close()


def _result(totals: metrics.Totals, task: str, device: torch.device, procs: Processes) -> dict[str, float]:
    """The metrics of `totals`, summed over all processes first."""
    if procs.world == 1:
        return totals.result()
    t = totals.as_tensor().to(device)
    dist.all_reduce(t)
    return metrics.Totals.from_tensor(task, t.cpu()).result()
