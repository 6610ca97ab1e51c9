"""--ema: the moving average against a hand-rolled float64 reference, what `fit` evaluates and keeps
with it, an exact resume (library and run directory), and the flag's validation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from compresskit.checkpoint import load_checkpoint
from compresskit.data import Augmentation, Loader, load_dataset
from compresskit.ema import EMA
from compresskit.errors import CompresskitError
from compresskit.jobs import DataOptions, ModelOptions, RunInterrupted, resume_train_run, train_run
from compresskit.models import build_model, make_spec
from compresskit.train import TrainConfig, TrainingState, evaluate, fit, resolve_precision
from tests.fakedata import stopping_after_epoch


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def _reference_step(reference: dict, model: nn.Module, decay: float, t: int) -> None:
    """The obvious float64 update after the t-th step (t from 0)."""
    d = min(decay, (1 + t) / (10 + t))
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            reference[name] = d * reference[name] + (1 - d) * value.double()
        else:
            reference[name] = value.clone()


def test_average_follows_the_warm_up_formula_step_by_step():
    model = _small_net()
    decay = 0.5  # (1 + t)/(10 + t) reaches 0.5 at t = 8: both sides of the min are exercised
    ema = EMA.start(model, decay)
    reference = {k: v.double() if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    assert ema.rate() == pytest.approx(0.1)
    g = torch.Generator().manual_seed(1)
    for t in range(20):
        with torch.no_grad():  # an optimizer step, and batch norm's statistics moving with it
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
            model.train()(torch.randn(8, 3, generator=g))
        ema.update(model)
        _reference_step(reference, model, decay, t)
    assert ema.updates == 20
    assert ema.rate() == decay
    for name, value in ema.averages.items():
        if value.is_floating_point():
            assert value.dtype == torch.float32
            torch.testing.assert_close(value.double(), reference[name], rtol=1e-6, atol=1e-6)
        else:  # batch norm's step counter is copied, not averaged
            assert torch.equal(value, reference[name]) and value.item() == 20
    assert "1.running_mean" in ema.averages and "1.running_var" in ema.averages


def test_swapped_in_evaluates_the_average_and_restores_the_raw_weights():
    model = _small_net()
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    ema = EMA.start(model, 0.9)
    for value in ema.averages.values():
        if value.is_floating_point():
            value.add_(1.0)
    with ema.swapped_in(model):
        for name, value in model.state_dict().items():
            assert torch.equal(value, ema.averages[name]), name
    for name, value in model.state_dict().items():
        assert torch.equal(value, raw[name]), name
    weights = ema.weights(model)
    assert all(torch.equal(weights[k], ema.averages[k]) for k in weights)
    again = EMA.from_dict(ema.to_dict(), 0.9)
    assert again.updates == ema.updates and all(torch.equal(again.averages[k], v) for k, v in weights.items())


# --------------------------------------------------------------------------- inside fit


def _setup(seed: int = 0):
    """cnn_bn with dropout on a crop-and-flip augmented, shuffled slice of digits."""
    data = load_dataset("digits")
    spec = make_spec("cnn_bn", 10, in_channels=1, width=0.25, head="mlp", dropout=0.3)
    model = build_model(spec, seed=3 + seed)
    stats = {"mean": data.mean, "std": data.std}
    train = Loader(data.train.subset(torch.arange(192)), 64, augment=Augmentation.parse("crop=2,flip"),
                   shuffle=True, seed=5, **stats)  # fmt: skip
    val = Loader(data.train.subset(torch.arange(256, 384)), 128, **stats)
    return model, train, val


def _cfg(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "lr": 0.05, "schedule": "cosine", "seed": 7, "device": "cpu",
                          "precision": "fp32", "ema": 0.8, **changes})  # fmt: skip


def test_fit_averages_after_every_step_evaluates_and_keeps_the_average_and_trains_the_raw_weights():
    model, train, val = _setup()
    reference: dict = {}
    states: list[TrainingState] = []

    def on_step(step: int, loss: float) -> None:
        if not reference:  # the weights fit starts from (channels_last by then: same values)
            reference.update({k: v.double() if v.is_floating_point() else v for k, v in start.items()})
        _reference_step(reference, model, 0.8, step - 1)

    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, train, val, _cfg(), on_step=on_step, on_epoch=states.append)
    assert states[-1].ema["updates"] == 3 * len(train)
    for name, value in result.averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value.double(), reference[name], rtol=1e-5, atol=1e-6)
    # each epoch's validation numbers are the average's, and so are the best weights
    probe = build_model(model.spec).to(memory_format=torch.channels_last)
    for state in states:
        averaged = {k: v.to(start[k].dtype) for k, v in state.ema["averages"].items()}
        probe.load_state_dict(averaged)
        loss, acc = evaluate(probe, val, precision=resolve_precision("fp32", torch.device("cpu")))
        row = state.history[-1]
        assert row["val_loss"] == pytest.approx(loss, rel=1e-5) and row["val_acc"] == acc
        if state.best_epoch == state.epoch:
            assert all(torch.equal(state.best_state[k], averaged[k]) for k in averaged)
    # training itself never sees the average: the raw weights are those of a run without it
    plain_model, plain_train, plain_val = _setup()
    fit(plain_model, plain_train, plain_val, _cfg(ema=None))
    for name, value in plain_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    assert not all(torch.equal(result.averaged[k], v) for k, v in plain_model.state_dict().items())


def test_resume_with_ema_continues_the_average_exactly(tmp_path):
    model, train, val = _setup()
    whole = fit(model, train, val, _cfg(epochs=4),
                on_epoch=lambda s: torch.save({"model": model.state_dict(), "training": s.to_dict()},
                                              tmp_path / f"state{s.epoch}.pt"))  # fmt: skip
    saved = torch.load(tmp_path / "state2.pt", weights_only=True)
    fresh, train2, val2 = _setup()
    fresh.load_state_dict(saved["model"])
    torch.manual_seed(999)
    resumed = fit(fresh, train2, val2, _cfg(epochs=4), resume=TrainingState.from_dict(saved["training"]))
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in whole.history]
    assert resumed.best_epoch == whole.best_epoch
    for key in whole.averaged:
        assert torch.equal(whole.averaged[key], resumed.averaged[key]), key
        assert torch.equal(whole.best_state[key], resumed.best_state[key]), key
        assert torch.equal(model.state_dict()[key], fresh.state_dict()[key]), key


def test_a_state_saved_without_an_average_resumes():
    old = {"epoch": 1, "history": [], "optimizer": {}, "schedule": {}, "best_state": {}, "best_epoch": 1,
           "best_score": 0.5, "since_best": 0, "seconds": 1.0, "rng": {}, "monitor_best": 0.5}  # fmt: skip
    assert TrainingState.from_dict(old).ema is None


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_ema_outside_zero_one_is_refused(decay):
    with pytest.raises(CompresskitError, match=r"^ema must be in \(0, 1\), a decay such as 0\.999; got "):
        TrainConfig(ema=decay).validate()
    TrainConfig(ema=0.999).validate()


# --------------------------------------------------------------------------- the train job

TRAIN_OPTIONS = (
    ModelOptions(name="cnn_bn", width=0.5, head="mlp", dropout=0.2),
    DataOptions(dataset="synthetic", val_fraction=0.1),
)


def _train_cfg(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 32, "lr": 0.05, "device": "cpu", "precision": "fp32",
                          "ema": 0.9, **changes})  # fmt: skip


@pytest.mark.slow
def test_a_run_with_ema_interrupted_and_resumed_equals_the_run_left_alone(tmp_path, monkeypatch):
    import compresskit.jobs.train as train_job

    alone = tmp_path / "alone"
    train_run(alone, *TRAIN_OPTIONS, _train_cfg())

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(train_job, "EpochRecorder", stopping_after_epoch(train_job.EpochRecorder, 2))
        with pytest.raises(RunInterrupted):
            train_run(run, *TRAIN_OPTIONS, _train_cfg())
    last = load_checkpoint(run / "last.pt")
    assert last.training["epoch"] == 2 and last.training["ema"]["updates"] == 2 * 6
    resume_train_run(run)
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["ema"] == 0.9
    mine, theirs = (json.loads((r / "summary.json").read_text()) for r in (run, alone))
    assert {k: v for k, v in mine.items() if k not in ("run", "train_seconds")} == {
        k: v for k, v in theirs.items() if k not in ("run", "train_seconds")
    }
    assert mine["ema"] == 0.9
    for name in ("checkpoint.pt", "last.pt"):
        a, b = load_checkpoint(run / name).state_dict, load_checkpoint(alone / name).state_dict
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_the_checkpointed_model_is_the_average(tmp_path):
    """Without a validation split the last epoch is the best: checkpoint.pt and the finished
    last.pt are the average after the last step, not the raw weights."""
    run = tmp_path / "run"
    summary = train_run(run, TRAIN_OPTIONS[0], DataOptions(dataset="synthetic", val_fraction=0.0),
                        _train_cfg(epochs=2))  # fmt: skip
    last = load_checkpoint(run / "last.pt")
    averages = last.training["ema"]["averages"]
    best = load_checkpoint(run)
    assert best.meta["epoch"] == 2
    for name, value in best.state_dict.items():
        assert torch.equal(value, averages[name].to(value.dtype)), name
        assert torch.equal(last.state_dict[name], value), name
    assert summary["last_test_acc"] == summary["test_acc"] == last.meta["test_acc"]


def test_ema_with_layerwise_is_refused_in_one_sentence(tmp_path):
    from typer.testing import CliRunner

    from compresskit.cli import app

    result = CliRunner().invoke(app, ["train", "--dataset", "synthetic", "--layerwise", "--ema", "0.99",
                                      "--out", str(tmp_path / "run")])  # fmt: skip
    assert result.exit_code == 2
    assert "--ema" in result.output and "--layerwise" in result.output
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, ["train", "--dataset", "synthetic", "--ema", "1",
                                      "--out", str(tmp_path / "run")])  # fmt: skip
    assert result.exit_code == 2
    assert "--ema must be in (0, 1), a decay such as 0.999; got 1.0" in result.output
