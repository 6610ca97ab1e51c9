"""Sensitivity of models compresskit did not build: one channel group of torch-pruning's graph pruned
alone (`compress.sensitivity_any`, `prune_model(only=…)`) on torchvision ResNet-18 and MobileNetV2 at
8×8 and a grouped conv, and ``compresskit sensitivity`` on an imported MobileNetV3-small run.

Tiny on purpose: untrained models, 8×8 inputs, the synthetic set at 4×4 pixels for the command.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

from compresskit.cli import app
from compresskit.compress.prune_any import prune_model
from compresskit.compress.sensitivity_any import ChannelGroup, channel_groups, prune_group
from compresskit.errors import ParameterError
from compresskit.model_io import load

X = torch.zeros(1, 3, 8, 8)
SIZE = 4  # --image-size of the command's run, as in test_any_model_cli


def widths(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    """(in, out, groups) of every conv and linear layer, by path."""
    return {
        path: (m.in_channels, m.out_channels, m.groups)
        if isinstance(m, nn.Conv2d)
        else (m.in_features, m.out_features, 1)
        for path, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def changed(before: nn.Module, after: nn.Module) -> dict[str, tuple[int, int, int]]:
    """The layers whose widths differ, with their new widths."""
    old, new = widths(before), widths(after)
    return {path: new[path] for path in old if new[path] != old[path]}


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=4).eval()


def test_resnet_groups_cover_every_conv_once_and_name_a_stream_by_its_first_conv(resnet):
    groups = channel_groups(resnet, X)
    names = [g.name for g in groups]
    assert len(set(names)) == len(names) == 12  # 4 residual streams + 8 blocks' first convs
    assert all(g.layers[0] == g.name for g in groups)
    order = [path for path, _ in resnet.named_modules()]
    assert names == sorted(names, key=order.index)
    covered = [layer for g in groups for layer in g.layers]
    convs = [path for path, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(covered) == sorted(convs)  # every conv once; fc, the output layer, in none
    assert groups[0] == ChannelGroup("conv1", 64, ("conv1", "layer1.0.conv2", "layer1.1.conv2"))
    stream = next(g for g in groups if g.name == "layer2.0.conv2")
    assert stream.layers == ("layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2")
    assert next(g for g in groups if g.name == "layer3.1.conv1").layers == ("layer3.1.conv1",)
    without = channel_groups(resnet, X, ignored_layers=["layer3.1.conv1"])
    assert [g.name for g in without] == [n for n in names if n != "layer3.1.conv1"]


def test_pruning_the_stem_stream_alone_halves_exactly_its_convs(resnet):
    pruned = prune_group(resnet, X, "conv1", 0.5)
    expected = {path: (64, 32, 1) for path in ("layer1.0.conv2", "layer1.1.conv2")}
    expected["conv1"] = (3, 32, 1)
    for reader in ("layer1.0.conv1", "layer1.1.conv1"):  # the stream's readers lose inputs only
        expected[reader] = (32, 64, 1)
    expected["layer2.0.conv1"] = expected["layer2.0.downsample.0"] = (32, 128, 1)
    assert changed(resnet, pruned) == expected
    assert torch.equal(pruned.fc.weight, resnet.fc.weight) and torch.equal(pruned.fc.bias, resnet.fc.bias)
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    assert widths(resnet)["conv1"] == (3, 64, 1)  # the model itself is not changed
    # the channels kept are those uniform pruning keeps in that group (the same l1 scores)
    uniform = prune_model(resnet, X, ratio=0.5)
    assert torch.equal(pruned.conv1.weight, uniform.conv1.weight)


def test_pruning_one_conv_group_alone_touches_only_that_conv_and_its_reader(resnet):
    pruned = prune_group(resnet, X, "layer2.0.conv1", 0.5, "l2")
    assert changed(resnet, pruned) == {"layer2.0.conv1": (64, 64, 1), "layer2.0.conv2": (64, 128, 1)}
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_a_group_with_a_depthwise_conv_prunes_it_with_the_conv_it_reads():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=4, width_mult=0.5).eval()
    groups = {g.name: g for g in channel_groups(model, X)}
    expand = groups["features.2.conv.0.0"]
    assert expand.layers == ("features.2.conv.0.0", "features.2.conv.1.0")  # the 1×1 and its depthwise
    pruned = prune_group(model, X, expand, 0.5, "random", seed=1)
    half = expand.channels // 2
    assert changed(model, pruned) == {
        "features.2.conv.0.0": (8, half, 1),
        "features.2.conv.1.0": (half, half, half),
        "features.2.conv.2": (half, 16, 1),
    }
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    assert "classifier.1" not in {layer for g in groups.values() for layer in g.layers}


def test_a_grouped_conv_keeps_its_groups_and_only_refuses_what_is_not_a_group():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip
    assert [g.name for g in channel_groups(model, X)] == ["0", "3"]
    pruned = prune_group(model, X, "0", 0.5, "bn-scale")
    assert changed(model, pruned) == {"0": (3, 4, 1), "3": (4, 8, 2)}
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    for only, fragment in [({"7": 0.5}, "'7'"), ({"0": 1.0}, "(0, 1)"), ({"9": 0.5}, "not a module")]:
        with pytest.raises(ParameterError, match=r"^only ") as info:
            prune_model(model, X, only=only)
        assert fragment in str(info.value)


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """An untrained torchvision MobileNetV3-small imported as a run on the synthetic set."""
    folder = tmp_path_factory.mktemp("sensitivity-any")
    torch.manual_seed(0)
    weights = folder / "weights.pt"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=4).state_dict(), weights)
    run = folder / "imported"
    result = invoke("import", "--factory", "torchvision.models:mobilenet_v3_small",
                    "--factory-kwargs", '{"num_classes": 4}', "--weights", weights, "--dataset", "synthetic",
                    "--image-size", SIZE, "--out", run)  # fmt: skip
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.slow
def test_sensitivity_of_an_imported_model_has_one_row_per_channel_group(imported):
    result = invoke("sensitivity", "--checkpoint", imported, "--ratios", 0.5, "--samples", 32, "--quiet")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(imported / "sensitivity" / "sensitivity.csv")
    groups = channel_groups(load(imported), torch.zeros(1, 3, SIZE, SIZE))
    assert table["layer"].tolist() == [g.name for g in groups]
    assert table["layers"].tolist() == [len(g.layers) for g in groups]
    assert table["layers"].max() > 1  # the residual streams and squeeze-and-excitation gates
    assert table["channels"].tolist() == [g.channels for g in groups]
    assert (table["channels_kept"] == table["channels"] // 2).all()
    assert (table["ratio"] == 0.5).all() and table["test_acc"].between(0, 1).all()
    assert list(table.columns) == ["layer", "ratio", "channels_kept", "channels", "test_acc", "acc_drop",
                                   "layers"]  # fmt: skip
    assert (imported / "sensitivity" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
