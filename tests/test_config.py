"""lssl.config: TOML experiment files, dotted overrides, validation with suggestions; every
shipped config loads and builds its model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from lssl import config
from lssl.data import DATASETS
from lssl.errors import UserError
from lssl.train.loop import build_model, model_arguments

ROOT = Path(__file__).resolve().parents[1]
# Experiment configs; configs/studies/ holds `lssl compare` grids (tested in test_compare.py).
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.toml") if "studies" not in p.relative_to(ROOT).parts)


def _param(path: Path):
    return pytest.param(path, id=str(path.relative_to(path.parents[1] if path.parent.name == "paper" else path.parent)))


def test_every_paper_row_has_a_config():
    names = {p.stem for p in CONFIGS if p.parent.name == "paper"}
    assert {"lssl-smnist", "lssl-pmnist", "lssl-scifar-standin", "lssl-bidmc-hr", "lssl-bidmc-rr", "lssl-bidmc-spo2",
            "lssl-speech-raw", "liquid-listops", "liquid-pathfinder", "liquid-pathx", "liquid-speech",
            "liquid-bidmc-hr", "liquid-bidmc-rr", "liquid-bidmc-spo2", "liquid-image"} <= names
    assert len({config.load(p).name for p in CONFIGS}) == len(CONFIGS)


@pytest.mark.parametrize("path", [_param(p) for p in CONFIGS])
def test_shipped_configs_load_name_their_source_and_build(path):
    cfg = config.load(path)
    assert cfg.paper and cfg.row and cfg.stand_in, "each config names its paper, table row and data"
    assert config.load(path) == config.from_dict(config.to_dict(cfg))
    # The model at a small size, with the config's own layer options.
    small = config.apply_overrides(cfg, ["model.d_model=4", "model.n_layers=1", "model.d_state=4"])
    spec = SimpleNamespace(d_input=2, d_output=3, vocab_size=None, task="classification")
    model = build_model(model_arguments(small.model, spec))
    assert model.decoder.out_features == 3


def test_dumps_round_trips(tmp_path):
    cfg = config.apply_overrides(config.Config(), ["model.layer_args.channels=2", "train.milestones=[3, 5]",
                                                   'data.options.target="hr"', "stand_in=quote \" and \\ slash"])
    path = tmp_path / "c.toml"
    path.write_text(config.dumps(cfg))
    assert config.load(path) == cfg


def test_overrides_are_typed_and_checked():
    cfg = config.apply_overrides(config.Config(), [
        "--model.d_state=32", "train.lr=2e-3", "train.lr=1", "model.prenorm=false", "data.name=speech10",
        "model.layer_args.measure=legt", "train.milestones=[10, 20]",
    ])
    assert cfg.model.d_state == 32 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.prenorm is False and cfg.data.name == "speech10"
    assert cfg.model.layer_args == {"measure": "legt"} and cfg.train.milestones == [10, 20]
    with pytest.raises(UserError, match="unknown config field 'model.d_stat'; did you mean 'model.d_state'"):
        config.apply_overrides(cfg, ["--model.d_stat=64"])
    with pytest.raises(UserError, match="unknown config field 'trian.lr'; did you mean 'train.lr'"):
        config.apply_overrides(cfg, ["trian.lr=1e-3"])
    with pytest.raises(UserError, match="model.d_state must be int, got str"):
        config.apply_overrides(cfg, ["model.d_state=big"])
    with pytest.raises(UserError, match="model.prenorm must be bool"):
        config.apply_overrides(cfg, ["model.prenorm=1"])
    with pytest.raises(UserError, match="train.scheduler must be one of 'plateau', 'cosine'"):
        config.apply_overrides(cfg, ["train.scheduler=linear"])
    with pytest.raises(UserError, match="train.lr must be > 0"):
        config.apply_overrides(cfg, ["train.lr=0"])
    with pytest.raises(UserError, match="must look like --section.field=value"):
        config.apply_overrides(cfg, ["train.lr"])
    with pytest.raises(UserError, match="train.milestones must be a list of int"):
        config.apply_overrides(cfg, ["train.milestones=3"])
    with pytest.raises(UserError, match="needs train.milestones"):
        config.apply_overrides(cfg, ["train.scheduler=multistep", "train.milestones=[]"])
    with pytest.raises(UserError, match="must name one keyword of model.layer_args"):
        config.apply_overrides(cfg, ["model.layer_args.a.b=1"])


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        config.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        config.load(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[train]\nepoch = 3\n")
    with pytest.raises(UserError, match="unknown config field 'train.epoch'; did you mean 'train.epochs'"):
        config.load(typo)
    flat = tmp_path / "flat.toml"
    flat.write_text("model = 3\n")
    with pytest.raises(UserError, match=r"model must be a table \[model\]"):
        config.load(flat)


def test_bad_layer_arguments_name_the_config_field():
    spec = SimpleNamespace(d_input=1, d_output=2, vocab_size=None, task="classification")
    cfg = config.apply_overrides(config.Config(), ["model.layer_args.chanels=2", "model.d_model=4", "model.d_state=4"])
    with pytest.raises(UserError, match="model.layer_args.*chanels"):
        build_model(model_arguments(cfg.model, spec))
    cfg = config.apply_overrides(config.Config(), ["model.layer=mamba"])
    with pytest.raises(UserError, match="model config: unknown layer 'mamba'"):
        build_model(model_arguments(cfg.model, spec))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_name_a_known_data_set_and_its_options(path):
    cfg = config.load(path)
    assert cfg.data.name in DATASETS, cfg.data.name
    known = DATASETS[cfg.data.name].options()
    assert set(cfg.data.options) <= set(known), sorted(set(cfg.data.options) - set(known))
