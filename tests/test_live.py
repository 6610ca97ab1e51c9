"""Watching a run: TensorBoard event files read back, and the notebook figure redrawn in place."""

from __future__ import annotations

import sys
import types

import pandas as pd
import pytest
from typer.testing import CliRunner

from compresskit.cli import app


def test_tensorboard_events_hold_every_epoch_and_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--dataset", "synthetic", "--model", "cnn", "--width", "0.25",
                                      "--epochs", "3", "--batch-size", "64", "--out", str(run), "--quiet",
                                      "--tensorboard", "--track-test"])  # fmt: skip
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    history = pd.read_csv(run / "history.csv")
    for tag, column in (("loss/train", "train_loss"), ("accuracy/val", "val_acc"), ("lr", "lr"),
                        ("loss/test", "test_loss"), ("accuracy/test", "test_acc")):  # fmt: skip
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3], tag
        assert [s.value for s in scalars] == pytest.approx(history[column].tolist(), rel=1e-6), tag
    steps = events.Scalars("loss/step")
    assert [s.step for s in steps] == list(range(1, 3 * 3 + 1))  # 172 images in batches of 64: 3 per epoch


def test_tensorboard_missing_is_one_sentence_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--dataset", "synthetic", "--model", "cnn", "--width", "0.25",
                                      "--epochs", "1", "--out", str(run), "--tensorboard"])  # fmt: skip
    assert result.exit_code == 2
    assert "--tensorboard needs the optional tensorboard package" in result.stderr
    assert "compresskit[tensorboard]" in result.stderr
    assert not run.exists()


def test_live_plot_draws_once_then_updates_the_same_output(monkeypatch):
    from compresskit.live import LivePlot
    from compresskit.train import TrainingState

    calls = []

    class Handle:
        def update(self, figure):
            calls.append(("update", figure))

    def display(figure, display_id=False):
        calls.append(("display", figure))
        assert display_id is True
        return Handle()

    fake = types.ModuleType("IPython.display")
    fake.display = display
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", fake)
    plot = LivePlot(title="t")
    rows = []
    for epoch in (1, 2, 3):
        rows.append({"epoch": epoch, "lr": 0.1, "train_loss": 1 / epoch, "train_acc": 0.5, "val_loss": 1.0,
                     "val_acc": 0.4, "seconds": 1.0})  # fmt: skip
        plot(TrainingState(epoch, list(rows), {}, {}, {}, 1, 0.4, 0, 1.0, {}))
    assert [kind for kind, _ in calls] == ["display", "update", "update"]
    last = calls[-1][1]
    loss_axis = last.axes[0]
    assert list(loss_axis.lines[0].get_xdata()) == [1, 2, 3]
    assert list(loss_axis.lines[0].get_ydata()) == pytest.approx([1, 0.5, 1 / 3])
