"""Experiment configuration: dataclasses for the model, the data and the training run, read
from one flat TOML file per experiment (no inheritance) and changed by dotted overrides.

A config file has top-level keys (name, paper, row, stand_in, seed, out) and the tables
[model] (with [model.layer_args]), [data] (with [data.options]) and [train]; every key must be a
field below. Overrides name a field by its dotted path, e.g. ``model.d_state=64`` or
``train.lr=2e-3``; values are TOML literals (bare words are read as strings). A field that does
not exist is an error naming the nearest one. The two dict fields (`model.layer_args`,
`data.options`) pass keyword arguments through to the layer class and to `lssl.data.load`,
which check them.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .model import NORMS, POOLINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SCHEDULERS = ("plateau", "cosine", "multistep", "constant")
AMP = ("none", "bf16", "fp16")
DTYPES = ("float32", "float64")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelConfig:
    """The `SequenceModel`: layer kind and size (LSSL App. B.4, Liquid-S4 Table S1)."""

    layer: str = "lssl"  # a key of lssl.LAYERS
    d_model: int = 128  # H
    n_layers: int = 4
    d_state: int = 64  # N
    norm: str = "layer"  # one of NORMS
    prenorm: bool = True
    dropout: float = 0.0  # on each residual branch
    pooling: str = "mean"  # one of POOLINGS
    layer_args: dict[str, Any] = field(default_factory=dict)  # further layer keywords


@dataclass
class DataConfig:
    """The data set, by its name in `lssl.data.DATASETS`."""

    name: str = "smnist"
    root: str = ""  # cache directory ("" = the default)
    num_workers: int = 0  # DataLoader worker processes
    options: dict[str, Any] = field(default_factory=dict)  # keywords of lssl.data.load


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one run."""

    epochs: int = 10
    batch_size: int = 50  # global batch (split across processes under DDP)
    lr: float = 1e-3  # global learning rate; SSM parameters keep their hinted rates
    weight_decay: float = 0.0  # AdamW; SSM parameters have none
    scheduler: str = "plateau"  # one of SCHEDULERS
    patience: int = 10  # plateau: epochs without improvement before decaying
    factor: float = 0.2  # plateau: decay factor
    warmup_steps: int = 0  # cosine: linear warmup steps
    milestones: list[int] = field(default_factory=list)  # multistep: epochs
    gamma: float = 0.5  # multistep: decay factor
    grad_clip: float = 0.0  # max gradient norm (0 = off)
    amp: str = "none"  # autocast: one of AMP
    dtype: str = "float32"  # parameter dtype: one of DTYPES
    device: str = "auto"  # one of DEVICES
    max_steps: int = 0  # stop (with a checkpoint) after this many optimizer steps (0 = off)
    checkpoint_every: int = 0  # also checkpoint every this many steps (0 = each epoch only)
    checkpoint_minutes: float = 10.0  # also checkpoint when this many minutes passed since the last one (0 = off)
    progress: bool = True  # progress bar
    tensorboard: bool = False  # also write TensorBoard events to out/name/tensorboard (needs lssl[tensorboard])


@dataclass
class Config:
    """One experiment: where it comes from, and its model, data and training settings."""

    name: str = "run"  # run directory out/name
    paper: str = ""  # the paper the experiment reproduces
    row: str = ""  # the table row it follows
    stand_in: str = ""  # the data actually used, where it stands in for the paper's
    seed: int = 0
    out: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "model.norm": NORMS,
    "model.pooling": POOLINGS,
    "train.scheduler": SCHEDULERS,
    "train.amp": AMP,
    "train.dtype": DTYPES,
    "train.device": DEVICES,
}
POSITIVE = ("model.d_model", "model.n_layers", "model.d_state", "train.epochs", "train.batch_size", "train.lr")
NON_NEGATIVE = (
    "data.num_workers", "train.weight_decay", "train.patience", "train.warmup_steps", "train.grad_clip",
    "train.max_steps", "train.checkpoint_every", "train.checkpoint_minutes", "train.factor", "train.gamma",
)


def fields(cls: type = Config, prefix: str = "") -> dict[str, type]:
    """Every settable dotted path of `cls` with its type (dict fields included, not expanded)."""
    out: dict[str, type] = {}
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(fields(tp, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = tp
    return out


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """`value` as type `tp`, or a UserError naming the field and the expected type."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{path} must be a list of {item.__name__}, got {value!r}")
        return [_coerce(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{path} must be a table of keyword arguments, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool):
        raise UserError(f"{path} must be {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise UserError(f"{path} must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _unknown(path: str, known: list[str]) -> UserError:
    near = difflib.get_close_matches(path, known, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else f"; known fields: {', '.join(known)}"
    return UserError(f"unknown config field {path!r}{hint}")


def _build(cls: type, table: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a (nested) TOML table, checking names and types."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if key not in hints:
            raise _unknown(path, list(fields()))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"{path} must be a table [{path}], got {value!r}")
            kwargs[key] = _build(tp, value, f"{path}.")
        else:
            kwargs[key] = _coerce(path, value, tp)
    return cls(**kwargs)


def validate(config: Config) -> Config:
    """Check choices and ranges of every field; return the config."""
    flat = to_dict(config)

    def get(path: str) -> Any:
        node: Any = flat
        for part in path.split("."):
            node = node[part]
        return node

    for path, choices in CHOICES.items():
        if get(path) not in choices:
            raise UserError(f"{path} must be one of {', '.join(map(repr, choices))}, got {get(path)!r}")
    for path in POSITIVE:
        if not get(path) > 0:
            raise UserError(f"{path} must be > 0, got {get(path)!r}")
    for path in NON_NEGATIVE:
        if not get(path) >= 0:
            raise UserError(f"{path} must be >= 0, got {get(path)!r}")
    if not 0.0 <= config.model.dropout < 1.0:
        raise UserError(f"model.dropout must be in [0, 1), got {config.model.dropout!r}")
    if not config.name or "/" in config.name or config.name.startswith("."):
        raise UserError(f"name must be a plain directory name, got {config.name!r}")
    if config.train.scheduler == "multistep" and not config.train.milestones:
        raise UserError("train.scheduler='multistep' needs train.milestones (epochs), e.g. [100, 200]")
    finite = ("lr", "weight_decay", "grad_clip", "checkpoint_minutes")
    if any(not math.isfinite(getattr(config.train, k)) for k in finite):
        raise UserError(f"{', '.join('train.' + k for k in finite)} must be finite")
    return config


def from_dict(table: dict[str, Any]) -> Config:
    """A validated Config from a nested dict (as read from TOML)."""
    return validate(_build(Config, table))


def to_dict(config: Config) -> dict[str, Any]:
    """The config as a nested dict of TOML/JSON values."""
    return dataclasses.asdict(config)


def parse_override(text: str) -> tuple[str, Any]:
    """'model.d_state=64' (leading dashes allowed) -> ('model.d_state', 64). The value is a TOML
    literal; a bare word that is not one is taken as a string."""
    key, sep, raw = text.lstrip("-").partition("=")
    if not sep or not key:
        raise UserError(f"override {text!r} must look like --section.field=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """A new validated config with each 'path=value' override applied; dict fields take
    sub-keys (``model.layer_args.channels=2``)."""
    table = to_dict(config)
    known = fields()
    for text in overrides:
        path, value = parse_override(text)
        parts = path.split(".")
        dict_field = next((f for f in known if typing.get_origin(known[f]) is dict and path.startswith(f + ".")), None)
        if path not in known and dict_field is None:
            raise _unknown(path, list(known))
        if dict_field is not None and path.count(".") != dict_field.count(".") + 1:
            raise UserError(f"override {path!r} must name one keyword of {dict_field}, e.g. {dict_field}.NAME=VALUE")
        node = table
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return from_dict(table)


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The table of a TOML file; a missing or malformed file is a UserError naming it as `what`
    ('config file', 'grid file')."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {str(path)!r} is not UTF-8 text (byte {e.start}: {e.reason})") from e
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{what} {str(path)!r} is not valid TOML: {e}") from e


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a config TOML file and apply overrides."""
    return apply_overrides(from_dict(read_toml(path, "config file")), overrides or [])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


def dumps(config: Config) -> str:
    """The config as TOML text that `load` reads back to an equal config."""
    lines: list[str] = []

    def table(name: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if name:
            lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{name}.{k}" if name else k, v)

    table("", to_dict(config))
    return "\n".join(lines).lstrip("\n") + "\n"
