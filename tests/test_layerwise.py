"""Greedy layer-wise training: stage shapes and heads, frozen vs trainable blocks, stage files,
the final checkpoint, bad input."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from compresskit.checkpoint import load_checkpoint
from compresskit.cli import app
from compresskit.data import Loader, load_dataset
from compresskit.errors import CompresskitError
from compresskit.layerwise import LayerwiseConfig, freeze_earlier_blocks, grow, stage_spec, unfreeze
from compresskit.models import VGG_LAYERS, make_spec
from compresskit.train import TrainConfig, fit


@pytest.mark.parametrize("name", [n for n in VGG_LAYERS if n != "cnn"])
def test_every_stage_has_the_right_blocks_and_head(name):
    spec = make_spec(name, 10, width=0.125)
    convs = spec.conv_widths
    previous = None
    for stage in range(1, len(convs) + 1):
        model = grow(previous, spec, stage, seed=0)
        s = stage_spec(spec, stage)
        assert s.conv_widths == convs[:stage]
        c, h, w = s.feature_shape()
        linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
        shapes = [(m.in_features, m.out_features) for m in linears]
        assert shapes == [(c * h * w, s.head_width), (s.head_width, 10)]
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
        if previous is not None:  # earlier blocks carried over
            for key, value in previous.features.state_dict().items():
                assert torch.equal(model.features.state_dict()[key], value)
        previous = model
    assert stage_spec(spec, len(convs)).layers == spec.layers


def test_pools_follow_the_config():
    spec = make_spec("vgg11", 10, width=0.125)  # 8 M 16 M 32 32 M 64 64 M 64 64 M
    assert stage_spec(spec, 3).layers == [8, "M", 16, "M", 32]
    assert stage_spec(spec, 4).layers == [8, "M", 16, "M", 32, 32, "M"]


def _digits_loader():
    data = load_dataset("digits")
    split = data.train.subset(torch.arange(64))
    return Loader(split, 32, mean=data.mean, std=data.std)


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_blocks_stay_unchanged_and_unfrozen_ones_train(frozen):
    spec = make_spec("vgg11_bn", 10, in_channels=1, width=0.125)
    stage2 = grow(grow(None, spec, 1, seed=0), spec, 2, seed=0)
    before = copy.deepcopy(stage2.state_dict())
    trainable = freeze_earlier_blocks(stage2, 2) if frozen else list(stage2.parameters())
    loader = _digits_loader()
    x = next(iter(loader))[0]
    # fit trains in channels_last and leaves the model so; the reference output is computed in the
    # same memory format, as some CPUs' batch-norm kernels round differently in the two layouts.
    stage2.to(memory_format=torch.channels_last).train()
    first_output = stage2.features[0](x).detach().clone()
    fit(stage2, loader, None, TrainConfig(epochs=1, lr=0.05, schedule="none"), parameters=trainable)
    after = stage2.state_dict()
    stage2.train()
    if frozen:  # a frozen block gives the same output in training mode, before and after the stage
        assert not stage2.features[0].training
        assert torch.equal(stage2.features[0](x), first_output)
    first_block = [k for k in before if k.startswith("features.0.")]
    assert first_block
    changed = [k for k in first_block if not torch.equal(before[k], after[k])]
    if frozen:
        assert changed == []  # weights and every batch-norm buffer, num_batches_tracked included
    else:
        assert any(k.endswith("weight") for k in changed)
    newest = [k for k in before if k.startswith("features.2.") and k.endswith("weight")]
    assert any(not torch.equal(before[k], after[k]) for k in newest)
    unfreeze(stage2)
    assert all(p.requires_grad for p in stage2.parameters())
    stage2.train()
    assert all(m.training for m in stage2.modules())


def test_stage_epochs_and_aug_switch_must_fit_the_model():
    assert LayerwiseConfig(stage_epochs=[2]).epochs_for(3) == [2, 2, 2]
    assert LayerwiseConfig(stage_epochs=[1, 2, 3]).epochs_for(3) == [1, 2, 3]
    with pytest.raises(CompresskitError, match=r"^stage_epochs lists 2 values"):
        LayerwiseConfig(stage_epochs=[1, 2]).epochs_for(8)
    message = r"^aug_switch must name one of the model's stages 1 to 8; got stage 9\."
    with pytest.raises(CompresskitError, match=message):
        LayerwiseConfig(aug_switch=(9, "jitter")).epochs_for(8)
    with pytest.raises(CompresskitError, match="STAGE:RECIPE"):
        LayerwiseConfig.parse_aug_switch("jitter")
    assert LayerwiseConfig.parse_aug_switch("4:jitter") == (4, "jitter")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_cli_layerwise_writes_stage_files_and_a_usable_checkpoint(tmp_path):
    run = tmp_path / "lw"
    result = invoke("train", "--dataset", "synthetic", "--model", "cnn_bn", "--width", "0.25", "--layerwise",
                    "--stage-epochs", "1,2,1", "--analyze-stages", "--aug-switch", "2:jitter", "--out", run,
                    "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    stages = pd.read_csv(run / "stages.csv")
    assert stages["stage"].tolist() == [1, 2, 3]
    assert stages["epochs"].tolist() == [1, 2, 1]
    assert stages[["best_val_acc", "test_acc", "csi_train", "csi_test"]].notna().all().all()
    for number, epochs in ((1, 1), (2, 2), (3, 1)):
        assert len(pd.read_csv(run / "stages" / f"{number:02d}" / "history.csv")) == epochs
    history = pd.read_csv(run / "history.csv")
    assert history["stage"].tolist() == [1, 2, 2, 3]
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert (run / "stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = load_checkpoint(run)
    assert ckpt.spec.conv_widths == [8, 16, 32]
    assert ckpt.spec.head == "mlp"
    assert ckpt.meta["test_acc"] == pytest.approx(stages["test_acc"].iloc[-1])
    evaluation = invoke("evaluate", "--checkpoint", run)
    assert evaluation.exit_code == 0, evaluation.output
    analysis = invoke("analyze", "--checkpoint", run, "--samples", "40", "--metrics", "csi", "--quiet")
    assert analysis.exit_code == 0, analysis.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--stage-epochs", "1,1"], "--stage-epochs lists 2 values"),
        (["--stage-epochs", "two"], "--stage-epochs must be an integer or a comma list of them; got 'two'"),
        (
            ["--aug-switch", "5:jitter"],
            "--aug-switch must name one of the model's stages 1 to 3; got stage 5",
        ),
        (["--aug-switch", "2:sharpen"], "sharpen"),
    ],
)
def test_cli_layerwise_bad_input(tmp_path, args, fragment):
    result = invoke("train", "--dataset", "synthetic", "--model", "cnn_bn", "--layerwise", "--out",
                    tmp_path / "lw", "--quiet", *args)  # fmt: skip
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "lw").exists()
