"""Learning-rate schedules, flag validation and the training loop on the tiny synthetic set."""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch
from torch import nn

from compresskit.cli.flags import flag_of
from compresskit.data import Augmentation, Loader, load_dataset, stratified_split
from compresskit.errors import CompresskitError, ParameterError
from compresskit.models import build_model, make_spec
from compresskit.train import TrainConfig, TrainingState, evaluate, fit, lr_factor

# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        # 9 epochs × 10 steps, step_size 0 → every 9 // 3 = 3 epochs (30 steps), gamma 0.1
        (0, 1.0),
        (29, 1.0),
        (30, 0.1),
        (59, 0.1),
        (60, 0.01),
        (89, 0.01),
    ],
)
def test_step_schedule_default_size(step, expected):
    cfg = TrainConfig(epochs=9, schedule="step", gamma=0.1)
    assert lr_factor(cfg, step, 10) == pytest.approx(expected)


def test_step_schedule_explicit_size():
    cfg = TrainConfig(epochs=10, schedule="step", step_size=4, gamma=0.5)
    # 5 steps per epoch: epochs 0-3 → 1, 4-7 → 0.5, 8-9 → 0.25
    assert lr_factor(cfg, 19, 5) == pytest.approx(1.0)
    assert lr_factor(cfg, 20, 5) == pytest.approx(0.5)
    assert lr_factor(cfg, 39, 5) == pytest.approx(0.5)
    assert lr_factor(cfg, 40, 5) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1.0),
        (25, 0.5 * (1 + math.sqrt(0.5))),  # cos(π/4) = √½ → 0.853553…
        (50, 0.5),  # cos(π/2) = 0
        (75, 0.5 * (1 - math.sqrt(0.5))),  # 0.146446…
        (100, 0.0),
        (120, 0.0),  # past the end: stays at the end value
    ],
)
def test_cosine_schedule(step, expected):
    cfg = TrainConfig(epochs=10, schedule="cosine")
    assert lr_factor(cfg, step, 10) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        # 100 steps: warm-up 0.1 → 1 over steps 0..25, then linear to 0 at step 100
        (0, 0.1),
        (10, 0.1 + 0.9 * 0.4),  # 0.46
        (20, 0.1 + 0.9 * 0.8),  # 0.82
        (25, 1.0),
        (50, 0.5 / 0.75),  # 2/3
        (85, 0.15 / 0.75),  # 0.2
        (100, 0.0),
        (130, 0.0),
    ],
)
def test_onecycle_schedule(step, expected):
    cfg = TrainConfig(epochs=4, schedule="onecycle")
    assert lr_factor(cfg, step, 25) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step", [0, 7, 99, 500])
def test_no_schedule(step):
    assert lr_factor(TrainConfig(epochs=5, schedule="none"), step, 20) == 1.0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "parameter"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"target_accuracy": 90.0}, "target_accuracy"),
        ({"target_accuracy": 0.0}, "target_accuracy"),
        ({"patience": 0}, "patience"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"gamma": 0.0}, "gamma"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_validate_rejects(change, parameter):
    """The library names the parameter; the command line spells the same error with its flag."""
    cfg = TrainConfig(**change)
    with pytest.raises(ParameterError) as info:
        cfg.validate()
    assert str(info.value).startswith(parameter + " ")
    assert info.value.spelled(flag_of).startswith("--" + parameter.replace("_", "-") + " ")


def test_validate_accepts_defaults_and_edges():
    TrainConfig().validate()
    TrainConfig(target_accuracy=1.0, patience=1, optimizer="adamw", schedule="none").validate()


# --------------------------------------------------------------------------- evaluate


def test_evaluate_accuracy_and_loss():
    # Logits handed straight through: 8123 of 10000 correct must read as exactly 0.8123, the
    # number a float64 computation (e.g. `compresskit evaluate`) reports for the same predictions.
    labels = torch.zeros(10000, dtype=torch.long)
    logits = torch.zeros(10000, 2)
    logits[:8123, 0] = 1.0
    logits[8123:, 1] = 1.0
    batches = list(zip(logits.split(1000), labels.split(1000), strict=True))
    loss, acc = evaluate(torch.nn.Identity(), batches, torch.device("cpu"))
    assert acc == 8123 / 10000
    p_right = math.e / (math.e + 1)  # softmax of (1, 0)
    expected_loss = -(8123 * math.log(p_right) + 1877 * math.log(1 - p_right)) / 10000
    assert loss == pytest.approx(expected_loss, rel=1e-5)


# --------------------------------------------------------------------------- fit


@cache
def _synthetic():
    return load_dataset("synthetic")


def _loaders(val_fraction: float = 0.25, seed: int = 0, batch_size: int = 32):
    data = _synthetic()
    keep, held = stratified_split(data.train.labels, val_fraction, seed=seed)
    stats = {"mean": data.mean, "std": data.std}
    train = Loader(data.train.subset(keep), batch_size, shuffle=True, seed=seed, **stats)
    val = Loader(data.train.subset(held), 256, **stats) if len(held) else None
    test = Loader(data.test, 256, **stats)
    return train, val, test


def _model(name: str = "cnn_bn", seed: int = 0, **options):
    return build_model(make_spec(name, 4, width=0.5, **options), seed=seed)


def _cfg(**kwargs) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 32, "lr": 0.05, "schedule": "onecycle", "device": "cpu"}
    return TrainConfig(**{**base, **kwargs})


def test_fit_learns_synthetic():
    train, val, test = _loaders()
    model = _model()
    _, before = evaluate(model, test)
    result = fit(model, train, val, _cfg(epochs=4))
    model.load_state_dict(result.best_state)
    _, acc = evaluate(model, test)
    assert acc >= 0.75  # chance is 0.25
    assert acc > before
    assert len(result.history) == 4
    assert result.stop_reason == "epochs"
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    best = max(result.history, key=lambda r: r["val_acc"])
    assert result.best_val_acc == pytest.approx(best["val_acc"])
    assert result.history[result.best_epoch - 1]["val_acc"] == result.best_val_acc
    # history records the learning rate in force during each epoch (onecycle starts at 0.1×)
    assert result.history[0]["lr"] == pytest.approx(0.05 * 0.1)


def test_fit_is_reproducible():
    histories = []
    for _ in range(2):
        train, val, _ = _loaders(seed=5)
        # dropout too: its masks must come from the seed as well
        model = _model(seed=5, head="mlp", dropout=0.3)
        result = fit(model, train, val, _cfg(epochs=2, seed=5))
        histories.append(result)
    a, b = histories
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert [r["val_acc"] for r in a.history] == [r["val_acc"] for r in b.history]
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)
    train, val, _ = _loaders(seed=6)
    c = fit(_model(seed=6, head="mlp", dropout=0.3), train, val, _cfg(epochs=2, seed=6))
    assert [r["train_loss"] for r in c.history] != [r["train_loss"] for r in a.history]


def test_target_accuracy_stops_early():
    train, val, _ = _loaders()
    result = fit(_model(), train, val, _cfg(epochs=5, target_accuracy=1e-6))
    assert result.stop_reason == "target"
    assert len(result.history) == 1
    assert result.best_epoch == 1


def test_patience_stops_when_validation_does_not_improve():
    # A tiny learning rate on a model without BN: validation accuracy never changes, so the
    # first epoch stays best and patience 2 stops after epoch 3.
    train, val, _ = _loaders()
    cfg = _cfg(epochs=6, lr=1e-12, schedule="none", patience=2, weight_decay=0.0)
    result = fit(_model("cnn"), train, val, cfg)
    assert result.stop_reason == "patience"
    assert len(result.history) == 3
    assert result.best_epoch == 1


def test_without_validation_last_epoch_is_best():
    train, _, _ = _loaders(val_fraction=0.0)
    model = _model()
    result = fit(model, train, None, _cfg(epochs=2))
    assert result.best_epoch == 2
    assert result.best_val_acc is None
    assert all(math.isnan(r["val_acc"]) for r in result.history)
    final = model.state_dict()
    assert all(torch.equal(result.best_state[k], final[k].cpu()) for k in final)


def test_early_stopping_needs_validation():
    train, _, _ = _loaders(val_fraction=0.0)
    with pytest.raises(CompresskitError, match=r"^target_accuracy and patience need a validation split"):
        fit(_model(), train, None, _cfg(patience=2))


def test_best_state_is_a_copy_not_a_view():
    train, val, _ = _loaders()
    model = _model()
    result = fit(model, train, val, _cfg(epochs=1))
    snapshot = {k: v.clone() for k, v in result.best_state.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(snapshot[k], result.best_state[k]) for k in snapshot)


def test_parameters_restricts_updates():
    train, val, _ = _loaders()
    model = _model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    fit(model, train, val, _cfg(epochs=1), parameters=model.head.parameters())
    for name, p in model.named_parameters():
        if name.startswith("head."):
            assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), name


def test_tta_logits_average_the_views_they_name():
    from compresskit.train import tta_logits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        plain = model(x)
        mirror = model(x.flip(3))
        assert torch.equal(tta_logits(model, x, "none"), plain)
        torch.testing.assert_close(tta_logits(model, x, "flip"), (plain + mirror) / 2)
        assert not torch.allclose(tta_logits(model, x, "flip"), plain)
        # one-pixel moves by hand: up-left takes rows/cols 1.. and reflects the last; down-right the reverse
        up_left = torch.cat([x[:, :, 1:], x[:, :, -2:-1]], 2)
        up_left = torch.cat([up_left[:, :, :, 1:], up_left[:, :, :, -2:-1]], 3)
        down_right = torch.cat([x[:, :, 1:2], x[:, :, :-1]], 2)
        down_right = torch.cat([down_right[:, :, :, 1:2], down_right[:, :, :, :-1]], 3)

        def both(v):
            return (model(v) + model(v.flip(3))) / 2

        expected = 0.5 * both(x) + 0.25 * both(up_left) + 0.25 * both(down_right)
        torch.testing.assert_close(tta_logits(model, x, "flip-translate"), expected)


def test_unknown_tta_is_refused():
    from compresskit.train import tta_logits

    with pytest.raises(CompresskitError, match=r"^tta must be one of: .*; got 'rotate'"):
        tta_logits(nn.Identity(), torch.zeros(1, 1, 4, 4), "rotate")


def _resumable_setup():
    """A small mlp-head model with dropout and an augmenting, shuffling loader: every random state
    `fit` must carry across a resume (initial weights, batch order, crops and flips, dropout)."""
    data = load_dataset("digits")
    spec = make_spec("cnn_bn", 10, in_channels=1, width=0.25, head="mlp", dropout=0.3)
    model = build_model(spec, seed=3)
    train = Loader(
        data.train.subset(torch.arange(256)),
        64,
        mean=data.mean,
        std=data.std,
        augment=Augmentation.parse("crop=2,flip"),
        shuffle=True,
        seed=5,
    )
    val = Loader(data.train.subset(torch.arange(256, 384)), 128, mean=data.mean, std=data.std)
    return model, train, val


def test_resume_from_a_saved_epoch_matches_the_run_that_never_stopped(tmp_path):
    cfg = TrainConfig(epochs=4, lr=0.05, schedule="cosine", optimizer="adamw", patience=10, seed=7)
    model, train, val = _resumable_setup()
    states: list[TrainingState] = []

    # What a run directory does: save each state to disk and read it back (weights_only).
    def save(state: TrainingState) -> None:
        path = tmp_path / f"state{state.epoch}.pt"
        torch.save({"model": model.state_dict(), "training": state.to_dict()}, path)
        states.append(state)

    whole = fit(model, train, val, cfg, on_epoch=save)
    assert [s.epoch for s in states] == [1, 2, 3, 4]
    saved = torch.load(tmp_path / "state2.pt", weights_only=True)

    fresh, train2, val2 = _resumable_setup()
    torch.manual_seed(999)  # the resumed fit must not depend on the caller's random state
    fresh.load_state_dict(saved["model"])
    resumed = fit(fresh, train2, val2, cfg, resume=TrainingState.from_dict(saved["training"]))

    def strip(rows):  # NaN (the untracked test columns) as None, so that equal rows compare equal
        def same(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        return [{k: same(v) for k, v in row.items() if k != "seconds"} for row in rows]

    assert strip(resumed.history) == strip(whole.history)
    assert resumed.best_epoch == whole.best_epoch and resumed.best_val_acc == whole.best_val_acc
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    for key, value in whole.best_state.items():
        assert torch.equal(value, resumed.best_state[key]), key


# ----------------------------------------------------------------------------- precision


def test_precision_auto_follows_native_bf16_and_bf16_is_refused_where_it_would_be_emulated(monkeypatch):
    import compresskit.train.precision as precision_module
    from compresskit.errors import CompresskitError
    from compresskit.train import Precision, resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == Precision("bf16", True)
    assert resolve_precision("bf16", cpu) == Precision("bf16", True)
    assert resolve_precision("fp32", cpu) == Precision("fp32", True)
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == Precision("fp32", True)
    with pytest.raises(CompresskitError, match=r"^precision bf16: this CPU has no native bf16"):
        resolve_precision("bf16", cpu)
    assert resolve_precision("auto", cuda) == Precision("bf16", True)
    assert resolve_precision("fp32", cuda) == Precision("fp32", True)
    with pytest.raises(CompresskitError, match=r"^precision must be one of: auto, fp32, bf16; got 'fp16'"):
        resolve_precision("fp16", cpu)
    with pytest.raises(CompresskitError, match=r"^precision must be one of: .*; got 'fp16'"):
        TrainConfig(precision="fp16").validate()


def test_fit_computes_in_the_resolved_precision(monkeypatch):
    """bf16 autocast is on exactly when the resolved precision says bf16 (emulated here if the
    CPU lacks it: correctness, not speed), and the model is channels_last."""
    import compresskit.train.precision as precision_module

    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            seen.append((torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                         x.is_contiguous(memory_format=torch.channels_last)))  # fmt: skip
            return self.fc(self.conv(x).mean((2, 3)))

    x = torch.randn(16, 3, 8, 8)
    assert not x.is_contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (16,))
    batches = [(x, y)]
    for name, expected in (("fp32", None), ("bf16", torch.bfloat16)):
        monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: True)
        seen.clear()
        model = Spy()
        fit(model, batches, batches, TrainConfig(epochs=1, precision=name, schedule="none"))
        assert seen and all(dtype == expected and cl for dtype, cl in seen), (name, seen)
        assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("min_delta", "epochs_run", "reason"),
    [(0.05, 4, "patience"), (0.0, 6, "epochs")],
)
def test_patience_on_val_loss_counts_only_improvements_larger_than_min_delta(
    monkeypatch, min_delta, epochs_run, reason
):
    """The layer-wise study's rule: stop after `patience` epochs whose validation loss did not fall
    by more than `min_delta` below the best so far."""
    import compresskit.train.loop as loop_module

    losses = iter([1.0, 0.8, 0.79, 0.785, 0.6, 0.7])
    monkeypatch.setattr(loop_module, "evaluate", lambda *args, **kwargs: (next(losses), 0.5))
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    batches = [(torch.randn(8, 3, 2, 2), torch.randint(0, 2, (8,)))]
    cfg = TrainConfig(epochs=6, patience=2, patience_metric="val_loss", min_delta=min_delta, schedule="none")
    result = fit(model, batches, batches, cfg)
    assert len(result.history) == epochs_run
    assert result.stop_reason == reason


def test_patience_metric_and_min_delta_are_validated():
    with pytest.raises(CompresskitError, match=r"^patience_metric must be one of: .*; got 'train_loss'"):
        TrainConfig(patience_metric="train_loss").validate()
    with pytest.raises(CompresskitError, match=r"^min_delta must be 0 or more; got -0\.1"):
        TrainConfig(min_delta=-0.1).validate()


def test_a_training_state_saved_before_monitor_best_existed_resumes_watching_val_acc():
    from compresskit.train import TrainingState

    old = {"epoch": 2, "history": [], "optimizer": {}, "schedule": {}, "best_state": {}, "best_epoch": 1,
           "best_score": 0.75, "since_best": 1, "seconds": 3.0, "rng": {}}  # fmt: skip
    assert TrainingState.from_dict(old).monitor_best == 0.75


def test_test_loader_records_each_epochs_test_numbers_without_changing_the_training():
    train, val, test = _loaders(seed=3)
    seen = []

    def check(state):  # the model as it stands after the epoch the row describes
        seen.append(evaluate(model, test))

    model = _model(seed=3, head="mlp", dropout=0.3)
    tracked = fit(model, train, val, _cfg(epochs=3, seed=3), test_loader=test, on_epoch=check)
    assert [r["test_loss"] for r in tracked.history] == pytest.approx([loss for loss, _ in seen])
    assert [r["test_acc"] for r in tracked.history] == pytest.approx([acc for _, acc in seen])
    assert len({r["test_loss"] for r in tracked.history}) == 3
    train, val, _ = _loaders(seed=3)
    plain = fit(_model(seed=3, head="mlp", dropout=0.3), train, val, _cfg(epochs=3, seed=3))
    assert all(math.isnan(r["test_acc"]) for r in plain.history)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [r[key] for r in tracked.history] == [r[key] for r in plain.history], key
    assert tracked.best_epoch == plain.best_epoch
    assert all(torch.equal(tracked.best_state[k], plain.best_state[k]) for k in plain.best_state)
