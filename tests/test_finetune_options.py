"""prune, lowrank and depth fine-tune alike: the same flags with the same defaults and help (the
fine-tuning of lowrank and depth before they had them all), and a run records what it was given."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from compresskit.cli import app
from compresskit.cli.compression import FINETUNE_FIELDS
from compresskit.train import TrainConfig

COMMANDS = ("prune", "lowrank", "depth")


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def finetune_options(command: str) -> dict[str, tuple]:
    """The fine-tuning options of `command` as click sees them: name → (flags, default, help)."""
    params = typer.main.get_command(app).commands[command].params
    return {
        p.name: (p.opts, p.default.value if isinstance(p.default, Enum) else p.default, p.help)
        for p in params
        if p.name in FINETUNE_FIELDS
    }


def test_prune_lowrank_and_depth_have_the_same_finetuning_options():
    options = {command: finetune_options(command) for command in COMMANDS}
    assert list(options["prune"]) == list(FINETUNE_FIELDS)
    assert options["lowrank"] == options["prune"]
    assert options["depth"] == options["prune"]
    for name, (flags, _, _) in options["prune"].items():
        assert flags == ["--" + name.replace("_", "-")]


def test_the_defaults_fine_tune_as_before():
    """lowrank and depth used SGD on a cosine schedule, 10 epochs at lr 0.01, TrainConfig's other
    defaults; prune's flags had the same defaults."""
    before = TrainConfig(epochs=10, lr=0.01, schedule="cosine").to_dict()
    defaults = {FINETUNE_FIELDS[name]: default for name, (_, default, _) in finetune_options("prune").items()}
    assert defaults == {field: before[field] for field in FINETUNE_FIELDS.values()}


@pytest.mark.parametrize("command", ["lowrank", "depth"])
def test_resume_refuses_a_finetuning_flag(command, tmp_path):
    result = invoke(command, "--resume", tmp_path / "run", "--optimizer", "adamw")
    assert result.exit_code == 2
    assert "--optimizer" in result.stderr


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """One epoch of a small cnn_bn on the synthetic set."""
    run = tmp_path_factory.mktemp("finetune") / "source"
    result = invoke("train", "--dataset", "synthetic", "--model", "cnn_bn", "--width", "0.25",
                    "--epochs", "1", "--out", run, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    return run


def test_lowrank_records_the_finetuning_flags_it_was_given(source_run, tmp_path):
    out = tmp_path / "lowrank"
    result = invoke("lowrank", "--from", source_run, "--out", out, "--rank-ratio", "0.3",
                    "--finetune-epochs", "1", "--batch-size", "16", "--optimizer", "adamw",
                    "--label-smoothing", "0.1", "--bench-seconds", "0.02", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    train = json.loads((out / "config.json").read_text())["train"]
    given = TrainConfig(epochs=1, batch_size=16, lr=0.01, optimizer="adamw", schedule="cosine",
                        label_smoothing=0.1)  # fmt: skip
    assert train == given.to_dict()
