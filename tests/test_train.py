"""lssl.train: the loop on a toy data set: exact resume, checkpoints (atomic, verified),
divergence, evaluation at another rate, reports, parameter groups and schedules."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch

import lssl
from lssl import config
from lssl.errors import UserError
from lssl.train import Diverged, checkpoint, evaluate, fit, metrics, optim
from lssl.train.batches import Decimated

from .helpers import assert_close, toy_spec


def toy_config(out: Path, name: str = "toy", **train) -> config.Config:
    table = {
        "name": name, "out": str(out), "seed": 3,
        "model": {"layer": "s4d", "d_model": 8, "n_layers": 2, "d_state": 8, "dropout": 0.1},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "progress": False, **train},
    }
    return config.from_dict(table)


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = checkpoint.read(path)
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}


def without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["cosine", "plateau"])
def test_interrupted_and_resumed_run_equals_uninterrupted_bit_for_bit(tmp_path, scheduler):
    spec = toy_spec(n_train=32)  # batch 8: 4 steps per epoch
    sched = {"scheduler": scheduler, "warmup_steps": 3, "patience": 0, "factor": 0.5}
    full = fit(toy_config(tmp_path, "full", **sched), data=spec)
    # Interrupted mid-epoch 2 (step 6 of 8), then resumed from its last checkpoint.
    stopped = fit(toy_config(tmp_path, "resumed", max_steps=6, **sched), data=spec)
    assert stopped["stopped_early"] and stopped["steps"] == 6
    resumed = fit(toy_config(tmp_path, "resumed", **sched), data=spec, resume=True)
    assert resumed["steps"] == full["steps"] == 8
    a = model_tensors(tmp_path / "full/checkpoints/last.safetensors")
    b = model_tensors(tmp_path / "resumed/checkpoints/last.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    _, meta_a = checkpoint.read(tmp_path / "full/checkpoints/last.safetensors")
    _, meta_b = checkpoint.read(tmp_path / "resumed/checkpoints/last.safetensors")
    assert without_time(meta_a["history"]) == without_time(meta_b["history"])
    assert meta_a["scheduler"] == meta_b["scheduler"]
    assert full["test"] == resumed["test"]


@pytest.mark.slow
def test_runs_are_deterministic_and_training_learns(tmp_path):
    spec = toy_spec()
    r1 = fit(toy_config(tmp_path, "one", epochs=4), data=spec)
    fit(toy_config(tmp_path, "two", epochs=4), data=spec)
    w1 = model_tensors(tmp_path / "one/checkpoints/last.safetensors")
    w2 = model_tensors(tmp_path / "two/checkpoints/last.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    _, meta = checkpoint.read(tmp_path / "one/checkpoints/last.safetensors")
    losses = [row["train_loss"] for row in meta["history"]]
    assert losses[-1] < 0.9 * losses[0]
    assert r1["val"]["accuracy"] > 0.5  # three balanced classes: chance is 1/3


def test_load_rebuilds_the_model_from_the_checkpoint_alone(tmp_path):
    spec = toy_spec()
    fit(toy_config(tmp_path, epochs=1), data=spec)
    path = tmp_path / "toy/checkpoints/best.safetensors"
    model = lssl.load(path)
    assert not model.training
    x = torch.stack([x for x, _ in spec.test[:4] if len(x) == len(spec.test[0][0])] or [spec.test[0][0]])
    tensors, _ = checkpoint.read(path)
    fresh = lssl.SequenceModel(d_input=1, d_output=3, d_model=8, n_layers=2, layer="s4d", layer_args={"d_state": 8},
                               dropout=0.1).eval()
    fresh.load_state_dict(checkpoint.prefixed(tensors, "model."))
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))


def test_a_crash_mid_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, {"w": torch.arange(6.0)}, {"note": "first"})

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        checkpoint.save(path, {"w": torch.zeros(6)}, {"note": "second"})
    tensors, meta = checkpoint.read(path)
    assert torch.equal(tensors["w"], torch.arange(6.0)) and meta["note"] == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temporary file left


def test_corrupt_foreign_and_missing_checkpoints_are_refused(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, {"w": torch.arange(64.0)}, {})
    data = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.safetensors"
    data[-10] ^= 0xFF  # inside the tensor bytes
    flipped.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt.*SHA-256"):
        checkpoint.read(flipped)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(UserError, match="corrupt or not a safetensors file"):
        checkpoint.read(truncated)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(UserError, match="corrupt or not a safetensors file"):
        checkpoint.read(text)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="not an lssl checkpoint"):
        checkpoint.read(foreign)
    with pytest.raises(UserError, match="not found"):
        checkpoint.read(tmp_path / "missing.safetensors")


def test_resume_refuses_an_incompatible_config_and_a_fresh_run_refuses_an_existing_one(tmp_path):
    spec = toy_spec()
    fit(toy_config(tmp_path, epochs=1), data=spec)
    with pytest.raises(UserError, match="already holds a run"):
        fit(toy_config(tmp_path, epochs=1), data=spec)
    other = config.apply_overrides(toy_config(tmp_path, epochs=2), ["model.d_model=16"])
    with pytest.raises(UserError, match="incompatible.*model.d_model"):
        fit(other, data=spec, resume=True)
    with pytest.raises(UserError, match="not found"):
        fit(toy_config(tmp_path, "nothing"), data=spec, resume=True)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    spec = toy_spec()
    real_loss, calls = metrics.loss, []

    def loss_nan_at_step_5(task, out, y):
        calls.append(1)
        value = real_loss(task, out, y)
        return value * math.nan if len(calls) == 5 else value

    monkeypatch.setattr(metrics, "loss", loss_nan_at_step_5)
    with pytest.raises(Diverged, match=r"loss became nan at epoch 1, batch 5 \(step 5\); the last good checkpoint is"):
        fit(toy_config(tmp_path, checkpoint_every=2), data=spec)
    tensors, meta = checkpoint.read(tmp_path / "toy/checkpoints/last.safetensors")
    assert meta["progress"]["step"] == 4
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())


def test_evaluate_at_rate_2_decimates_the_test_split(tmp_path):
    spec = toy_spec()
    fit(toy_config(tmp_path, epochs=1), data=spec)
    path = tmp_path / "toy/checkpoints/best.safetensors"
    at_2 = evaluate(path, split="test", rate=2, data=spec)
    # test_half is the test split decimated by 2 with its own rate 2.0: the same evaluation.
    native = evaluate(path, split="test_half", data=spec)
    assert at_2["rate"] == native["rate"] == 2.0 and at_2["n"] == len(spec.test)
    assert at_2["loss"] == pytest.approx(native["loss"], rel=1e-6)
    # By hand: the model on x[::2] at rate 2.
    model = lssl.load(path)
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(x[::2][None], rate=2.0), y[None]) for x, y in spec.test]
    assert at_2["loss"] == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)
    rate_1 = evaluate(path, split="test", data=spec)
    assert rate_1["rate"] == 1.0 and rate_1["loss"] != at_2["loss"]
    with pytest.raises(UserError, match="already sampled at rate 2.0"):
        evaluate(path, split="test_half", rate=3, data=spec)
    with pytest.raises(UserError, match="unknown split 'dev'.*test_half"):
        evaluate(path, split="dev", data=spec)
    with pytest.raises(UserError, match="positive integer"):
        evaluate(path, split="test", rate=1.5, data=spec)


def test_decimated_dataset_keeps_time_stamps_in_new_steps():
    items = [(torch.arange(10.0)[:, None], torch.tensor(1), torch.arange(10.0))]
    x, y, t = Decimated(items, 3)[0]
    assert torch.equal(x[:, 0], torch.tensor([0.0, 3, 6, 9])) and torch.equal(t, torch.tensor([0.0, 1, 2, 3]))
    with pytest.raises(ValueError, match="positive int"):
        Decimated(items, 0)


def test_report_has_metrics_at_every_rate_and_plots(tmp_path):
    spec = toy_spec()
    results = fit(toy_config(tmp_path, epochs=2), data=spec)
    root = Path(results["run_dir"])
    text = (root / "report.md").read_text()
    assert "| test | 1 | 16 |" in text and "| test_half | 2 | 16 |" in text and "| val | 1 | 16 |" in text
    for png in ("curves.png", "dt.png", "kernels.png"):
        assert (root / png).read_bytes()[:4] == b"\x89PNG"
    rows = (root / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,train_loss,train_accuracy,val_loss,val_accuracy,lr") and len(rows) == 3
    assert config.load(root / "config.toml") == toy_config(tmp_path, epochs=2)


def test_regression_reports_rmse(tmp_path):
    spec = toy_spec(task="regression")
    results = fit(toy_config(tmp_path, epochs=1), data=spec)
    for split in ("val", "test", "test_half"):
        r = results[split]
        assert r["rmse"] == pytest.approx(math.sqrt(r["loss"]), rel=1e-6)


def test_final_val_scores_are_the_best_checkpoints(tmp_path):
    """The val scores reported at the end (taken from the best epoch, not recomputed) equal a
    fresh evaluation of the best checkpoint."""
    spec = toy_spec()
    results = fit(toy_config(tmp_path, epochs=2), data=spec)
    fresh = evaluate(Path(results["run_dir"]) / "checkpoints" / "best.safetensors", split="val", data=spec)
    for key in ("loss", "accuracy", "n", "rate"):
        assert results["val"][key] == pytest.approx(fresh[key], rel=1e-6), key


def test_regression_models_predict_standardised_targets(tmp_path):
    """A regression model carries the training targets' mean and std, and the saved checkpoint
    rebuilds them."""
    spec = toy_spec(task="regression")
    y = torch.stack([item[1] for item in spec.train]).double()
    results = fit(toy_config(tmp_path, epochs=1), data=spec)
    model = lssl.load(Path(results["run_dir"]) / "checkpoints" / "best.safetensors")
    assert model.standardised
    assert_close(model.target_mean.double(), y.mean(0), dtype=torch.float32)
    assert_close(model.target_std.double(), y.std(0), dtype=torch.float32)


def test_bf16_autocast_trains_on_cpu_and_fp16_is_refused(tmp_path):
    spec = toy_spec()
    results = fit(toy_config(tmp_path, "bf16", epochs=1, amp="bf16"), data=spec)
    assert math.isfinite(results["test"]["loss"])
    with pytest.raises(UserError, match="fp16.*CUDA"):
        fit(toy_config(tmp_path, "fp16", epochs=1, amp="fp16", device="cpu"), data=spec)


def test_parameter_groups_carry_the_layers_hints():
    model = lssl.SequenceModel(d_input=1, d_output=3, d_model=4, n_layers=2, layer="lssl",
                               layer_args={"d_state": 4, "lr": 1e-4, "lr_dt": 1e-3})
    groups = optim.param_groups(model, lr=5e-3, weight_decay=0.1)
    by_id = {id(p): g for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert len(by_id) == len(params) == sum(len(g["params"]) for g in groups)
    for name, p in params.items():
        g = by_id[id(p)]
        hint = getattr(p, "_optim", None)
        if hint is None:
            assert (g["lr"], g["weight_decay"]) == (5e-3, 0.1), name
        else:
            assert g["weight_decay"] == 0.0, name
            assert g["lr"] == (5e-3 if hint["lr"] is None else hint["lr"]), name
    assert {g["lr"] for g in groups} == {5e-3, 1e-4, 1e-3}
    assert by_id[id(model.blocks[0].layer.kernel.log_dt)]["lr"] == 1e-3
    opt = optim.optimizer(model, config.TrainConfig(lr=5e-3, weight_decay=0.1))
    assert sorted(g["lr"] for g in opt.param_groups) == sorted(g["lr"] for g in groups)


def test_schedules():
    assert optim.cosine_factor(0, warmup=4, total=20) == 0.25
    assert optim.cosine_factor(3, warmup=4, total=20) == 1.0
    assert optim.cosine_factor(4, warmup=4, total=20) == 1.0
    assert optim.cosine_factor(12, warmup=4, total=20) == pytest.approx(0.5)
    assert optim.cosine_factor(20, warmup=4, total=20) == pytest.approx(0.0)
    assert [optim.multistep_factor(s, [10, 20], 0.5) for s in (0, 9, 10, 19, 20, 99)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    model = torch.nn.Linear(2, 2)
    cfg = config.TrainConfig(epochs=5, lr=1.0, scheduler="multistep", milestones=[2], gamma=0.1)
    opt = optim.optimizer(model, cfg)
    sched = optim.scheduler(opt, cfg, steps_per_epoch=3, metric_mode="max")
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0] * 6 + [0.1] * 3)
    plateau_cfg = config.TrainConfig(lr=1.0, scheduler="plateau", patience=1, factor=0.2)
    opt = optim.optimizer(model, plateau_cfg)
    sched = optim.scheduler(opt, plateau_cfg, steps_per_epoch=3, metric_mode="max")
    for metric in (0.5, 0.5, 0.5):
        sched.step(metric)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)


def test_sharded_totals_add_up_to_the_whole():
    torch.manual_seed(1)
    out, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    whole = metrics.Totals("classification")
    whole.add(out, y, metrics.loss("classification", out, y))
    parts = [metrics.Totals("classification") for _ in range(2)]
    for i, part in enumerate(parts):
        part.add(out[i::2], y[i::2], metrics.loss("classification", out[i::2], y[i::2]))
    summed = metrics.Totals.from_tensor("classification", parts[0].as_tensor() + parts[1].as_tensor())
    assert summed.result() == pytest.approx(whole.result())
    assert metrics.better("classification", 0.6, 0.5) and metrics.better("regression", 0.4, 0.5)
    assert metrics.better("regression", 1.0, None) and not metrics.better("regression", math.nan, None)


def test_tensorboard_events_continue_across_a_resume(tmp_path, monkeypatch):
    """train.tensorboard writes per-step, per-epoch and final scalars. A run that dies at step 6
    after logging step 5 (its last checkpoint: step 4, the end of epoch 1) and is resumed from it
    drops the orphaned steps 4-5 and logs every step once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = toy_spec(n_train=32)  # batch 8: 4 steps per epoch
    real_loss, calls = metrics.loss, []

    def loss_nan_at_step_6(task, out, y):
        if torch.is_grad_enabled():  # a training step, not validation
            calls.append(1)
        value = real_loss(task, out, y)
        return value * math.nan if len(calls) == 6 and torch.is_grad_enabled() else value

    with monkeypatch.context() as patch:
        patch.setattr(metrics, "loss", loss_nan_at_step_6)
        with pytest.raises(Diverged):
            fit(toy_config(tmp_path, "tb", tensorboard=True, checkpoint_every=3), data=spec)
    crashed = EventAccumulator(str(tmp_path / "tb/tensorboard"))
    crashed.Reload()
    assert [e.step for e in crashed.Scalars("train/loss_step")] == [1, 2, 3, 4, 5]
    _, meta = checkpoint.read(tmp_path / "tb/checkpoints/last.safetensors")
    assert meta["progress"]["step"] == 4  # the epoch-end checkpoint after step 4
    results = fit(toy_config(tmp_path, "tb", tensorboard=True, checkpoint_every=3), data=spec, resume=True)
    events = EventAccumulator(str(tmp_path / "tb/tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss_step")] == list(range(1, 9))
    assert [e.step for e in events.Scalars("epoch/val_loss")] == [4, 8]
    assert [e.value for e in events.Scalars("final/test_loss")] == pytest.approx([results["test"]["loss"]])


def test_tensorboard_off_writes_no_events(tmp_path):
    fit(toy_config(tmp_path, "plain", epochs=1), data=toy_spec(n_train=16))
    assert not (tmp_path / "plain/tensorboard").exists()


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(UserError, match=r"train.tensorboard=true needs the tensorboard package: pip install"):
        fit(toy_config(tmp_path, "tb", tensorboard=True), data=toy_spec(n_train=16))
