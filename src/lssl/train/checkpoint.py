"""Checkpoints: one safetensors file per checkpoint, written atomically.

The file holds the model weights (`model.*`), the optimizer's tensors (`optim.*`) and the torch
RNG states of every process (`rng.*`); its metadata holds, as JSON, the resolved config, the
model's constructor arguments (so `load_model` rebuilds the model from the file alone), the
optimizer's parameter groups, the scheduler state, the Python and NumPy RNG states, the
data-order position (epoch and batch: the order itself is a function of the seed and the
epoch), the metric history, and a SHA-256 over every tensor, checked on reading. Nothing is
unpickled when reading.

Writes go to a temporary file in the same directory, are flushed to disk, then renamed over
the target: a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..model import SequenceModel

Tensor = torch.Tensor

FORMAT = "lssl-checkpoint"
VERSION = "1"


def digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of `tensors` (sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write a checkpoint: `tensors` by name, `meta` values as JSON, plus format and digest."""
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {k: json.dumps(v) for k, v in meta.items()}
    metadata.update(format=FORMAT, version=VERSION, sha256=digest(tensors))
    atomic_write(path, st_save(tensors, metadata=metadata))


def read(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and verify a checkpoint: (tensors, meta). A missing, corrupt, foreign or
    newer-format file raises UserError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint {str(path)!r} is corrupt or not a safetensors file ({e})") from e
    if raw.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} is not an lssl checkpoint (no format={FORMAT!r} in its metadata)")
    if raw.get("version") != VERSION:
        raise UserError(f"checkpoint {str(path)!r} has format version {raw.get('version')!r}; this lssl reads {VERSION!r}")
    if raw.get("sha256") != digest(tensors):
        raise UserError(f"checkpoint {str(path)!r} is corrupt: its tensors do not match the recorded SHA-256")
    try:
        meta = {k: json.loads(v) for k, v in raw.items() if k not in ("format", "version", "sha256")}
    except json.JSONDecodeError as e:
        raise UserError(f"checkpoint {str(path)!r} is corrupt: bad metadata ({e})") from e
    return tensors, meta


def prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under `prefix` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_weights(model: torch.nn.Module, tensors: dict[str, Tensor], path: str | Path) -> None:
    """Load `model.*` tensors into `model`, refusing missing, unexpected or reshaped entries."""
    state = prefixed(tensors, "model.")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"shape mismatch in {shapes[:3]}" if shapes else ""]
        raise UserError(f"checkpoint {str(path)!r} does not fit this model: " + "; ".join(p for p in parts if p))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def tensor_names(path: str | Path) -> list[str]:
    """The tensor names of a checkpoint, from its header alone (nothing else is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def legacy_layer_args(layer: str, layer_args: dict[str, Any], tensor_names: Any) -> dict[str, Any]:
    """The layer arguments a checkpoint's model was built with. Before LiquidS4's liquid_gain
    default became 'zero', a Liquid-S4 model without the option had the plain term: a
    checkpoint of one (no 'liquid_gain' in its arguments, no gain tensor) gets 'none'."""
    if (layer != "liquid-s4" or "liquid_gain" in layer_args or layer_args.get("liquid_compat") is not None
            or any(name.endswith("liquid.gain") for name in tensor_names)):
        return layer_args
    return {**layer_args, "liquid_gain": "none"}


def model_args_of(meta: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    """The `SequenceModel` arguments of a checkpoint (`legacy_layer_args` applied)."""
    args = meta["model_args"]
    return {**args, "layer_args": legacy_layer_args(args["layer"], args.get("layer_args") or {}, tensors)}


def load_model(path: str | Path) -> SequenceModel:
    """Rebuild the trained `SequenceModel` from a checkpoint alone (in eval mode)."""
    tensors, meta = read(path)
    model = SequenceModel(**model_args_of(meta, tensors))
    model.to(getattr(torch, meta["config"]["train"]["dtype"]))  # the dtype it was trained in
    load_weights(model, tensors, path)
    return model.eval()


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The optimizer state split into tensors ('optim.<param>.<key>') and JSON (the parameter
    groups and any non-tensor per-parameter values)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Inverse of `optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in prefixed(tensors, "optim.").items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = meta["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in opt.param_groups]:
        raise UserError("the checkpoint's optimizer groups do not match this model's parameters")
    opt.load_state_dict({"state": state, "param_groups": groups})
