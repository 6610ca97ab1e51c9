"""Low-rank factorization of any model (`compress.lowrank_any`) and the generalised
`FactorizedConv2d`: exact at full rank for any conv geometry (float64), grouped convs left alone,
the plan, and the MAC rule."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from compresskit.compress.lowrank import factorize_conv
from compresskit.compress.lowrank_any import lowrank_model
from compresskit.edits import is_edited, recorded_edits
from compresskit.errors import CompresskitError
from compresskit.measure import count_macs
from compresskit.models import FactorizedConv2d, FactorizedLinear

GEOMETRIES = [
    {"kernel_size": 7, "stride": 2, "padding": 3, "dilation": 1},
    {"kernel_size": 7, "stride": 2, "padding": 3, "dilation": 2},
    {"kernel_size": 7, "stride": 2, "padding": 3, "dilation": 3, "padding_mode": "reflect"},
    {"kernel_size": (3, 5), "stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)},
    {"kernel_size": 3, "stride": 1, "padding": "same", "dilation": 2, "bias": False},
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_full_rank_factorization_equals_the_conv(geometry):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 8, **geometry).double()
    x = torch.randn(2, 5, 23, 19, dtype=torch.float64)
    model = nn.Sequential(conv)
    factored, plans = lowrank_model(model, rank_ratio=1.0, only_if_cheaper=False)
    layer = factored[0]
    assert isinstance(layer, FactorizedConv2d) and is_edited(layer)
    assert layer.rank == plans[0].rank == min(8, 5 * conv.kernel_size[0] * conv.kernel_size[1])
    reduce, expand = layer.reduce, layer.expand
    assert (reduce.kernel_size, reduce.stride, reduce.padding, reduce.dilation, reduce.padding_mode) == (
        conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.padding_mode,
    )  # fmt: skip
    assert (expand.kernel_size, expand.stride, expand.padding) == ((1, 1), (1, 1), (0, 0))
    assert reduce.bias is None and (expand.bias is None) == (conv.bias is None)
    assert reduce.weight.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(factored(x), model(x), rtol=0, atol=1e-11)
    assert isinstance(model[0], nn.Conv2d)  # the original is untouched


def test_truncated_factors_are_the_best_rank_r_approximation():
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 10, 7, stride=2, padding=3).double()
    layer = factorize_conv(conv, 3)
    product = layer.expand.weight.flatten(1) @ layer.reduce.weight.flatten(1)
    s = torch.linalg.svdvals(conv.weight.flatten(1))
    error = torch.linalg.matrix_norm(product - conv.weight.flatten(1))
    assert error.item() == pytest.approx(s[3:].pow(2).sum().sqrt().item(), rel=1e-9)


def test_default_factorized_conv_is_todays_3x3():
    layer = FactorizedConv2d(4, 6, 2, bias=True)
    assert (
        layer.reduce.kernel_size == (3, 3)
        and layer.reduce.padding == (1, 1)
        and layer.reduce.stride == (1, 1)
    )
    assert sorted(layer.state_dict()) == ["expand.bias", "expand.weight", "reduce.weight"]
    assert layer(torch.zeros(1, 4, 9, 9)).shape == (1, 6, 9, 9)


def test_mobilenet_v2_leaves_grouped_convs_alone():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    factored, plans = lowrank_model(model, energy=0.9, example_inputs=torch.zeros(1, 3, 32, 32))
    by_name = {p.layer: p for p in plans}
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(by_name[n].action == "kept: grouped conv" for n in depthwise)
    assert all(isinstance(factored.get_submodule(n), nn.Conv2d) for n in depthwise)
    done = [p for p in plans if p.action == "factorized"]
    assert done and all(p.macs_after < p.macs_before for p in done)
    assert {p.action for p in plans} == {"factorized", "kept: grouped conv", "kept: no MAC saving"}
    assert {e["path"] for e in recorded_edits(factored)} == {p.layer for p in done}
    assert count_macs(factored, (3, 32, 32)) < count_macs(model, (3, 32, 32))
    assert factored(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet18_chosen_layers_and_plan():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    chosen = ["conv1", "layer2.0.downsample.0", "layer3.1.conv2", "fc"]
    x = torch.randn(2, 3, 32, 32)
    factored, plans = lowrank_model(
        model, rank_ratio=1.0, layers=chosen, only_if_cheaper=False, example_inputs=torch.zeros(1, 3, 32, 32)
    )
    by_name = {p.layer: p for p in plans}
    assert [n for n in by_name if by_name[n].action == "factorized"] == chosen
    assert by_name["layer1.0.conv1"].action == "kept: not selected"
    # conv1: 7×7 stride 2 on 32×32 → 16×16 positions, 64 outputs, 3·49 inputs each.
    assert by_name["conv1"].macs_before == 16 * 16 * 64 * 3 * 49
    assert by_name["conv1"].macs_after == 16 * 16 * 64 * (3 * 49 + 64)
    assert isinstance(factored.fc, FactorizedLinear)
    with torch.no_grad():
        torch.testing.assert_close(factored(x), model(x), rtol=1e-4, atol=1e-4)
    cheap, cheap_plans = lowrank_model(model, energy=0.5, layers="layer3.1.conv1, layer3.0.conv2")
    actions = {p.layer: p.action for p in cheap_plans if p.action != "kept: not selected"}
    assert actions == {"layer3.1.conv1": "factorized", "layer3.0.conv2": "factorized"}
    _, full_plans = lowrank_model(model, rank_ratio=1.0, layers=["fc"])  # 10·(512 + 10) > 10·512
    assert {p.layer: p.action for p in full_plans}["fc"] == "kept: no MAC saving"
    _, again_plans = lowrank_model(cheap, energy=0.5, layers=["layer3.1.conv1", "fc"])
    assert {p.layer: p.action for p in again_plans}["layer3.1.conv1"] == "kept: already factorized"
    assert "layer3.1.conv1.reduce" not in {p.layer for p in again_plans}


def test_refusals():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(CompresskitError, match="exactly one"):
        lowrank_model(model, energy=0.9, rank_ratio=0.5)
    with pytest.raises(CompresskitError, match="exactly one"):
        lowrank_model(model)
    with pytest.raises(CompresskitError, match=r"^energy must be in \(0, 1\]; got 1\.5"):
        lowrank_model(model, energy=1.5)
    with pytest.raises(CompresskitError, match=r"names no conv or linear layer.*nope"):
        lowrank_model(model, energy=0.9, layers=["0", "nope"])
