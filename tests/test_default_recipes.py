"""`compresskit train` with default flags trains every `--model`: when neither --optimizer nor --lr
is given, a model with batch norm trains with SGD at 0.05 and one without with AdamW (at a lower
rate for the deepest); the values used are recorded in config.json, and what is given wins."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from compresskit.cli import app
from compresskit.jobs.train import ModelOptions, default_recipe
from compresskit.models import MODEL_NAMES, build_model, make_spec
from compresskit.train.config import (
    ADAMW_DEEP_LR,
    ADAMW_LR,
    DEEP_CONV_LAYERS,
    SGD_LR,
    conv_layer_count,
    default_lr,
    default_optimizer,
    has_batch_norm,
)

DEEP = {"vgg16", "vgg19"}  # the plain models of more than DEEP_CONV_LAYERS conv layers


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _adamw_lr(name: str) -> float:
    return ADAMW_DEEP_LR if name.removesuffix("_bn") in DEEP else ADAMW_LR


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_recipe_follows_batch_norm_and_depth(name):
    expected = ("sgd", SGD_LR) if name.endswith("_bn") else ("adamw", _adamw_lr(name))
    assert default_recipe(ModelOptions(name=name), None, None) == expected
    model = build_model(make_spec(name, width=0.0625))
    assert (conv_layer_count(model) > DEEP_CONV_LAYERS) == (name.removesuffix("_bn") in DEEP)
    optimizer = default_optimizer(has_batch_norm(model))
    assert (optimizer, default_lr(optimizer, conv_layer_count(model))) == expected


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_what_is_given_wins(name):
    options = ModelOptions(name=name)
    assert default_recipe(options, None, 0.3) == ("sgd", 0.3)  # --lr alone: SGD, as before
    assert default_recipe(options, "adamw", 0.3) == ("adamw", 0.3)
    assert default_recipe(options, "sgd", None) == ("sgd", SGD_LR)
    assert default_recipe(options, "adamw", None) == ("adamw", _adamw_lr(name))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("torchvision:resnet18", ("sgd", SGD_LR)), ("torchvision:squeezenet1_1", ("adamw", ADAMW_DEEP_LR))],
)
def test_default_recipe_of_torchvision_models(name, expected):
    assert default_recipe(ModelOptions(name=name), None, None) == expected


def test_help_names_the_defaults():
    result = invoke("train", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    assert (
        f"default: {SGD_LR:g} for sgd; for adamw {ADAMW_LR:g}, or {ADAMW_DEEP_LR:g} for a model of more "
        f"than {DEEP_CONV_LAYERS} conv layers" in text
    )
    assert "default: sgd; adamw for a model without batch norm when --lr is not given either" in text


@pytest.mark.parametrize(
    ("model", "flags", "recorded"),
    [
        ("cnn", [], ("adamw", ADAMW_LR)),
        ("cnn_bn", [], ("sgd", SGD_LR)),
        ("cnn", ["--lr", "0.3"], ("sgd", 0.3)),
        ("cnn", ["--optimizer", "sgd"], ("sgd", SGD_LR)),
        ("cnn_bn", ["--optimizer", "adamw"], ("adamw", ADAMW_LR)),
    ],
)
def test_config_records_the_recipe_used(tmp_path, model, flags, recorded):
    run = tmp_path / "run"
    result = invoke("train", "--dataset", "synthetic", "--model", model, "--width", "0.0625", "--epochs", 1,
                    *flags, "--out", run, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    train = json.loads((run / "config.json").read_text())["train"]
    assert (train["optimizer"], train["lr"]) == recorded


@pytest.mark.slow  # every model for 10 epochs: about 20 minutes on 2 busy CPU cores, 2.5 for vgg19
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_learns_digits_with_default_flags(tmp_path, name):
    run = tmp_path / name
    result = invoke("train", "--model", name, "--dataset", "digits", "--epochs", 10, "--out", run, "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_acc"] >= 0.90, f"{name}: {summary['test_acc']:.2%}"
