"""Model shapes, hand-counted parameter numbers, spec round trips, seeding, and the
squeeze-and-excitation (SE) attention CNNs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from compresskit.analysis.capture import LayerCapture, select_layers
from compresskit.errors import CompresskitError
from compresskit.models import (
    MODEL_NAMES,
    ConvNet,
    FactorizedConv2d,
    FactorizedLinear,
    ModelSpec,
    SqueezeExcite,
    build_model,
    conv_sides,
    count_parameters,
    make_spec,
)


def _params(model: torch.nn.Module) -> int:
    # Counted here rather than with count_parameters, which is itself checked below.
    return sum(p.numel() for p in model.parameters())


def _conv(cin: int, cout: int, bn: bool) -> int:
    """3×3 conv: weights cin*cout*9, plus a bias of cout without BN or BN's scale+shift 2*cout."""
    return cin * cout * 9 + (2 * cout if bn else cout)


def test_model_names_cover_every_family():
    assert set(MODEL_NAMES) == {
        "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn",
        "vgg19", "vgg19_bn", "cnn", "cnn_bn", "cnn_deep", "cnn_deep_bn", "cnn_se", "cnn_se_bn",
    }  # fmt: skip


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("in_channels", [3, 1])
def test_forward_shape(name, in_channels):
    spec = make_spec(name, 7, in_channels=in_channels, width=0.25)
    model = build_model(spec, seed=0).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert model.spec.batch_norm == name.endswith("_bn")
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert has_bn == name.endswith("_bn")


def test_vgg11_parameter_count():
    # 8 convs with bias: 3→64, 64→128, 128→256, 256→256, 256→512, 512→512 ×3; 5 pools: 512×1×1.
    convs = (
        (3 * 64 * 9 + 64)  # 1,792
        + (64 * 128 * 9 + 128)  # 73,856
        + (128 * 256 * 9 + 256)  # 295,168
        + (256 * 256 * 9 + 256)  # 590,080
        + (256 * 512 * 9 + 512)  # 1,180,160
        + 3 * (512 * 512 * 9 + 512)  # 3 × 2,359,808
    )
    assert convs == 9_220_480  # torchvision's vgg11().features has the same count
    head = 512 * 10 + 10
    model = ConvNet(make_spec("vgg11", 10))
    assert _params(model) == convs + head == 9_225_610
    assert count_parameters(model) == 9_225_610


def test_vgg11_bn_parameter_count():
    # Same convs without their biases (64+128+256+256+512·4 = 2,752) plus BN scale+shift (2·2,752).
    biases = 64 + 128 + 256 + 256 + 512 * 4
    expected = 9_225_610 - biases + 2 * biases
    assert expected == 9_228_362
    assert _params(ConvNet(make_spec("vgg11_bn", 10))) == expected


def test_vgg16_bn_half_width_parameter_count():
    # Width 0.5: 32,32,M,64,64,M,128,128,128,M,256,256,256,M,256,256,256,M on 3 input channels.
    pairs = [
        (3, 32), (32, 32),
        (32, 64), (64, 64),
        (64, 128), (128, 128), (128, 128),
        (128, 256), (256, 256), (256, 256),
        (256, 256), (256, 256), (256, 256),
    ]  # fmt: skip
    convs = sum(_conv(a, b, bn=True) for a, b in pairs)
    head = 256 * 100 + 100  # 5 pools: 256×1×1 features, 100 classes
    spec = make_spec("vgg16_bn", 100, width=0.5)
    assert spec.layers == [
        32,
        32,
        "M",
        64,
        64,
        "M",
        128,
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        256,
        256,
        256,
        "M",
    ]
    assert _params(ConvNet(spec)) == convs + head


def test_cnn_bn_mlp_head_parameter_count():
    # cnn at width 0.5 on grey images: 1→16, M, 16→32, M, 32→64, M → 64×4×4 = 1024 features;
    # mlp head 1024→256 (512·0.5)→10.
    convs = (1 * 16 * 9 + 2 * 16) + (16 * 32 * 9 + 2 * 32) + (32 * 64 * 9 + 2 * 64)
    assert convs == 176 + 4_672 + 18_560
    head = (1024 * 256 + 256) + (256 * 10 + 10)
    spec = make_spec("cnn_bn", 10, in_channels=1, width=0.5, head="mlp", dropout=0.2)
    assert spec.head_width == 256
    model = ConvNet(spec)
    assert _params(model) == convs + head == 288_378
    assert any(isinstance(m, torch.nn.Dropout) for m in model.head)


def test_cnn_full_width_mlp_parameter_count():
    # 3→32, 32→64, 64→128 with biases; 128×4×4 = 2048 → 512 → 10.
    convs = (3 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 128 * 9 + 128)
    head = (2048 * 512 + 512) + (512 * 10 + 10)
    assert _params(ConvNet(make_spec("cnn", 10, head="mlp"))) == convs + head == 1_147_466


def test_custom_spec_parameter_count():
    # layers [5, M, 7, 3, M] on 2 channels, 4 classes, no BN: 2→5, 5→7, 7→3 (all with bias).
    convs = (2 * 5 * 9 + 5) + (5 * 7 * 9 + 7) + (7 * 3 * 9 + 3)
    assert convs == 95 + 322 + 192
    pooled = ModelSpec("custom", [5, "M", 7, 3, "M"], in_channels=2, num_classes=4, global_pool=True)
    assert _params(ConvNet(pooled)) == convs + (3 * 4 + 4)  # global pool: 3 features
    flat = ModelSpec("custom", [5, "M", 7, 3, "M"], in_channels=2, num_classes=4)
    assert _params(ConvNet(flat)) == convs + (3 * 8 * 8 * 4 + 4)  # two pools: 3×8×8 features
    with torch.no_grad():
        assert ConvNet(pooled)(torch.randn(2, 2, 32, 32)).shape == (2, 4)
        assert ConvNet(flat)(torch.randn(2, 2, 32, 32)).shape == (2, 4)


def test_width_rounding_keeps_at_least_one_channel():
    spec = make_spec("cnn", 10, width=0.01)
    assert spec.layers == [1, "M", 1, "M", 1, "M"]  # round(32·0.01)=0 → 1, etc.
    assert spec.head_width == 5  # round(512·0.01) = round(5.12)
    spec = make_spec("vgg11", 10, width=0.3)
    # round(64·.3)=19, round(128·.3)=38, round(256·.3)=77, round(512·.3)=154
    assert spec.layers == [19, "M", 38, "M", 77, 77, "M", 154, 154, "M", 154, 154, "M"]


def _roundtrip(spec: ModelSpec) -> ModelSpec:
    return ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))


@pytest.mark.parametrize(
    "spec",
    [
        make_spec("vgg11_bn", 10, width=0.25),
        make_spec("cnn", 5, in_channels=1, width=0.5, head="mlp", dropout=0.3, global_pool=True),
        ModelSpec("pruned", [13, 5, "M", 9, "M", 3, "M"], batch_norm=True, num_classes=6),
        ModelSpec("pruned", [7, "M", 2, 11, "M"], in_channels=1, head="mlp", head_width=17),
        make_spec("cnn_se_bn", 10, width=0.5, head="mlp"),
        ModelSpec("pruned_se", [13, "M", 30, "M"], batch_norm=True, num_classes=6, se_reduction=4),
    ],
)
def test_spec_json_roundtrip_rebuilds_same_model(spec):
    again = _roundtrip(spec)
    assert again == spec
    original = build_model(spec, seed=1)
    with torch.no_grad():  # give BN non-trivial running statistics
        for m in original.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    rebuilt = build_model(again, seed=2)
    rebuilt.load_state_dict(original.state_dict())
    x = torch.randn(3, spec.in_channels, 32, 32)
    original.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(original(x), rebuilt(x))
    convs = [m for m in rebuilt.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [c for c in spec.layers if c != "M"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"name": "x", "layers": [4, "M"], "colour": "red"}, "colour"),
        ({"name": "x", "layers": [4, 0, "M"]}, "positive"),
        ({"name": "x", "layers": [4, -3]}, "positive"),
        ({"name": "x", "layers": [4, 2.5]}, "positive"),
        ({"name": "x", "layers": [4, True]}, "positive"),
        ({"name": "x", "layers": ["M", "M"]}, "at least one"),
        ({"name": "x", "layers": [4], "head": "transformer"}, "^head "),
        ({"name": "x", "layers": [4, "M", "M", "M", "M", "M", "M"]}, "max-pools"),
        ({"name": "x", "layers": [4], "dropout": 1.0}, "^dropout "),
        ({"name": "x", "layers": [4], "se_reduction": 0}, "se_reduction"),
        ({"name": "x", "layers": [4], "se_reduction": -8}, "se_reduction"),
        ({"name": "x", "layers": [4], "se_reduction": 2.5}, "se_reduction"),
        ({"name": "x", "layers": [4], "se_reduction": True}, "se_reduction"),
    ],
)
def test_invalid_specs(data, fragment):
    with pytest.raises(CompresskitError, match=fragment):
        ModelSpec.from_dict(data)


def test_five_pools_are_allowed_six_are_not():
    ConvNet(ModelSpec("x", [2, "M", "M", "M", "M", "M"]))
    spec = ModelSpec("x", [2, "M", "M", "M", "M", "M", "M"])
    with pytest.raises(CompresskitError):
        ConvNet(spec)


def test_from_dict_rejects_non_mapping():
    with pytest.raises(CompresskitError):
        ModelSpec.from_dict(["name", "layers"])


def test_build_model_seeded():
    spec = make_spec("cnn_bn", 10, width=0.25, head="mlp")
    a, b, c = build_model(spec, seed=3), build_model(spec, seed=3), build_model(spec, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_build_model_seed_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(make_spec("cnn", 10, width=0.25), seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_init_weights():
    model = build_model(make_spec("cnn_bn", 10, width=0.5, head="mlp"), seed=0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if isinstance(m, torch.nn.Linear):
            assert torch.all(m.bias == 0)
    last = model.head[-1]
    assert last.weight.std() < 0.02  # N(0, 0.01) output layer


@pytest.mark.parametrize("name", ["vgg12", "resnet18", "VGG11", ""])
def test_make_spec_unknown_name(name):
    with pytest.raises(CompresskitError, match=f"^name must be one of: .*; got '{name}'"):
        make_spec(name)


@pytest.mark.parametrize("width", [0, -0.5, float("nan")])
def test_make_spec_bad_width(width):
    with pytest.raises(CompresskitError, match=r"^width must be a positive number; got "):
        make_spec("vgg11", width=width)


def test_make_spec_bad_head():
    with pytest.raises(CompresskitError, match=r"^head must be one of: linear, mlp; got 'attention'"):
        make_spec("cnn", head="attention")


# ----------------------------------------------------------------------------- named blocks


def test_named_blocks_of_vgg11_bn_are_eight_blocks_five_pools_and_fc1_in_forward_order():
    model = build_model(make_spec("vgg11_bn", 10, width=0.125))
    blocks = model.named_blocks()
    assert [b.name for b in blocks] == [
        "block1", "pool1", "block2", "pool2", "block3", "block4", "pool3",
        "block5", "block6", "pool4", "block7", "block8", "pool5", "fc1",
    ]  # fmt: skip
    assert [b.path for b in blocks] == [f"features.{i}" for i in range(13)] + ["head.1"]
    modules = dict(model.named_modules())
    assert all(modules[b.path] is b.module for b in blocks)
    convs = model.named_blocks("block")
    assert [b.index for b in convs] == list(range(8))
    assert [b.layer.out_channels for b in convs] == model.spec.conv_widths
    assert all(isinstance(b.layer, torch.nn.Conv2d) and modules[b.layer_path] is b.layer for b in convs)
    assert all(isinstance(b.module, torch.nn.MaxPool2d) for b in model.named_blocks("pool"))
    (fc,) = model.named_blocks("fc")
    assert (fc.name, fc.index, fc.layer, fc.layer_path) == ("fc1", 0, model.head[1], "head.1")


def test_named_blocks_of_cnn_and_of_an_mlp_head():
    cnn = build_model(make_spec("cnn", 10, width=0.25))
    assert [b.name for b in cnn.named_blocks()] == [
        "block1", "pool1", "block2", "pool2", "block3", "pool3", "fc1",
    ]  # fmt: skip
    mlp = build_model(make_spec("cnn_bn", 10, width=0.25, head="mlp", dropout=0.5, global_pool=True))
    fcs = mlp.named_blocks("fc")  # head: avgpool, flatten, linear, relu, dropout, linear
    assert [(b.name, b.path) for b in fcs] == [("fc1", "head.2"), ("fc2", "head.5")]
    assert [b.module.out_features for b in fcs] == [mlp.spec.head_width, 10]


def test_a_factorized_layer_is_still_one_block_or_one_fc():
    spec = ModelSpec("f", [8, "M", 16, "M"], batch_norm=True, head="mlp", head_width=12,
                     conv_ranks=[None, 4], linear_ranks=[3, None])  # fmt: skip
    model = build_model(spec)
    blocks = model.named_blocks()
    assert [(b.name, b.path) for b in blocks] == [
        ("block1", "features.0"), ("pool1", "features.1"), ("block2", "features.2"),
        ("pool2", "features.3"), ("fc1", "head.1"), ("fc2", "head.3"),
    ]  # fmt: skip
    assert isinstance(blocks[2].layer, FactorizedConv2d) and blocks[2].layer_path == "features.2.0"
    assert isinstance(blocks[4].module, FactorizedLinear) and blocks[4].layer is blocks[4].module
    assert isinstance(blocks[5].module, torch.nn.Linear)


def test_named_blocks_refuses_an_unknown_kind_and_a_pool_has_no_layer():
    model = build_model(make_spec("cnn", 10, width=0.25))
    with pytest.raises(ValueError, match="kind 'conv'"):
        model.named_blocks("conv")
    pool = model.named_blocks("pool")[0]
    with pytest.raises(ValueError, match="pool1"):
        _ = pool.layer


def test_conv_sides_halve_at_every_pool():
    assert conv_sides([64, "M", 128, "M", 256, 256, "M"], 32) == [32, 16, 8, 8]
    assert make_spec("vgg11", width=0.125).conv_sides() == [32, 16, 8, 8, 4, 4, 2, 2]


# ----------------------------------------------------------------------------- SE attention CNNs


def _se_reference(x, w1, b1, w2, b2):
    """x · sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2), one number at a time."""
    batch, channels, height, width = x.shape
    out = torch.empty_like(x)
    for b in range(batch):
        means = [sum(float(x[b, c, i, j]) for i in range(height) for j in range(width)) / (height * width)
                 for c in range(channels)]  # fmt: skip
        hidden = [max(0.0, sum(float(w1[k, c]) * means[c] for c in range(channels)) + float(b1[k]))
                  for k in range(w1.shape[0])]  # fmt: skip
        for c in range(channels):
            z = sum(float(w2[c, k]) * hidden[k] for k in range(len(hidden))) + float(b2[c])
            gate = 1.0 / (1.0 + math.exp(-z))
            for i in range(height):
                for j in range(width):
                    out[b, c, i, j] = float(x[b, c, i, j]) * gate
    return out


def test_se_block_matches_a_slow_reference():
    g = torch.Generator().manual_seed(0)
    se = SqueezeExcite(6, 2).double()  # bottleneck max(6 // 2, 4) = 4
    assert (se.down.in_features, se.down.out_features, se.up.out_features) == (6, 4, 6)
    with torch.no_grad():
        for p in se.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(2, 6, 3, 5, generator=g, dtype=torch.float64) + 0.3
    expected = _se_reference(
        x, *(p.detach() for p in (se.down.weight, se.down.bias, se.up.weight, se.up.bias))
    )
    torch.testing.assert_close(se(x), expected, rtol=1e-12, atol=1e-12)
    # channels_last (how training runs) computes the same thing
    torch.testing.assert_close(se(x.to(memory_format=torch.channels_last)), expected, rtol=1e-12, atol=1e-12)


def test_se_bottleneck_is_a_reduction_of_the_width_with_at_least_four_units():
    assert [SqueezeExcite(c, 8).down.out_features for c in (1, 16, 32, 40, 64, 128, 512)] == [
        4, 4, 4, 5, 8, 16, 64,
    ]  # fmt: skip
    assert SqueezeExcite(64, 4).down.out_features == 16


def _se_widths(model: ConvNet) -> list[tuple[int, int]]:
    """(channels, bottleneck) of every SE gate, in block order."""
    return [(m.up.out_features, m.down.out_features) for m in model.modules() if isinstance(m, SqueezeExcite)]


def test_cnn_se_specs_follow_the_deeper_cnn_plan_and_width():
    full = make_spec("cnn_se", 10)
    assert make_spec("cnn", 10).layers == [32, "M", 64, "M", 128, "M"]
    assert full.layers == make_spec("cnn_deep", 10).layers == [32, 32, "M", 64, 64, "M", 128, 128, "M"]
    assert (full.se_reduction, full.batch_norm) == (8, False)
    half = make_spec("cnn_se_bn", 10, width=0.5)
    assert (half.layers, half.se_reduction, half.batch_norm) == (
        [16, 16, "M", 32, 32, "M", 64, 64, "M"],
        8,
        True,
    )
    assert _se_widths(ConvNet(full)) == [(32, 4), (32, 4), (64, 8), (64, 8), (128, 16), (128, 16)]
    assert _se_widths(ConvNet(half)) == [(16, 4), (16, 4), (32, 4), (32, 4), (64, 8), (64, 8)]
    for name in MODEL_NAMES:
        assert (make_spec(name).se_reduction is not None) == ("_se" in name)
        assert bool(_se_widths(ConvNet(make_spec(name, width=0.125)))) == ("_se" in name)


def test_cnn_se_bn_parameter_count():
    # cnn_deep_bn's convs, then per block of C channels an SE of h = max(C // 8, 4): C·h + h + h·C + C.
    pairs = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
    convs = sum(_conv(i, o, bn=True) for i, o in pairs)
    se = sum(2 * c * h + h + c for c, h in [(32, 4), (32, 4), (64, 8), (64, 8), (128, 16), (128, 16)])
    assert se == 2 * (292 + 1_096 + 4_240)
    head = 128 * 4 * 4 * 10 + 10
    assert _params(ConvNet(make_spec("cnn_se_bn", 10))) == convs + se + head
    assert _params(ConvNet(make_spec("cnn_se_bn", 10))) - _params(ConvNet(make_spec("cnn_deep_bn", 10))) == se


def test_cnn_se_spec_round_trip_reloads_the_same_weights_and_outputs():
    spec = make_spec("cnn_se_bn", 10, width=0.5)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["se_reduction"] == 8
    original = build_model(spec, seed=0)
    with torch.no_grad():  # non-trivial BN statistics and SE biases
        for m in original.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, SqueezeExcite):
                m.down.bias.uniform_(-0.5, 0.5)
                m.up.bias.uniform_(-0.5, 0.5)
    rebuilt = ConvNet(ModelSpec.from_dict(data))
    assert rebuilt.spec == spec
    rebuilt.load_state_dict(original.state_dict())
    a, b = original.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert any(".3.down.weight" in k for k in a)  # the SE weights are part of the state dict
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(original.eval()(x), rebuilt.eval()(x))


def test_an_old_spec_without_se_reduction_loads_without_attention():
    old = make_spec("cnn_bn", 10, width=0.25).to_dict()
    del old["se_reduction"]
    spec = ModelSpec.from_dict(json.loads(json.dumps(old)))
    assert spec.se_reduction is None
    assert _se_widths(ConvNet(spec)) == []
    assert spec == make_spec("cnn_bn", 10, width=0.25)


def test_named_blocks_of_cnn_se_leave_the_gates_inside_their_blocks():
    model = build_model(make_spec("cnn_se_bn", 10, width=0.5), seed=0)
    blocks = model.named_blocks()
    assert [(b.name, b.path) for b in blocks] == [
        ("block1", "features.0"), ("block2", "features.1"), ("pool1", "features.2"),
        ("block3", "features.3"), ("block4", "features.4"), ("pool2", "features.5"),
        ("block5", "features.6"), ("block6", "features.7"), ("pool3", "features.8"), ("fc1", "head.1"),
    ]  # fmt: skip
    assert [b.module.out_features for b in model.named_blocks("fc")] == [10]
    for block in model.named_blocks("block"):
        assert isinstance(block.layer, torch.nn.Conv2d) and block.layer_path == f"{block.path}.0"
        assert isinstance(block.module[-1], SqueezeExcite)
    names = [layer.name for layer in select_layers(model, "blocks")]
    assert names == ["block1", "block2", "block3", "block4", "block5", "block6", "fc1"]


def test_capturing_a_cnn_se_block_gives_the_gated_output_the_next_layer_sees():
    model = build_model(make_spec("cnn_se_bn", 10, width=0.25), seed=0).eval()
    x = torch.randn(4, 3, 32, 32)
    first = model.features[0]
    with torch.no_grad():
        activated = first[2](first[1](first[0](x)))  # conv → BN → ReLU, before the gate
        gated = first[3](activated)
        with LayerCapture(select_layers(model, "blocks")) as capture:
            capture.forward(model, x)
        with LayerCapture(select_layers(model, "pools")) as capture_pools:
            capture_pools.forward(model, x)
    assert torch.equal(capture.outputs["block1"], gated)
    assert not torch.allclose(capture.outputs["block1"], activated)  # the gate does scale it
    pooled = torch.nn.functional.max_pool2d(capture.outputs["block2"], 2)
    assert torch.equal(capture_pools.outputs["pool1"], pooled)


def test_cnn_se_trains_one_step():
    model = build_model(make_spec("cnn_se_bn", 10, width=0.25), seed=0).train()
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=g).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), generator=g)
    gate = model.features[4][3]
    before = gate.down.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert gate.down.weight.grad.abs().sum() > 0  # the gradient reaches the gate
    optimizer.step()
    assert not torch.equal(gate.down.weight, before)


def test_torch_init_keeps_pytorchs_layer_defaults_and_kaiming_replaces_them():
    spec = make_spec("vgg11", 10, width=0.25)
    torch.manual_seed(3)
    plain = ConvNet(spec)  # what PyTorch's constructors draw
    default = build_model(spec, seed=3, init="torch")
    kaiming = build_model(spec, seed=3)
    for (name, a), b in zip(plain.state_dict().items(), default.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    conv = "features.0.0.weight"
    assert not torch.equal(default.state_dict()[conv], kaiming.state_dict()[conv])
    # Kaiming fan-out for a 3×3 conv with C_out channels: std = sqrt(2 / (9·C_out))
    weight = kaiming.state_dict()[conv]
    assert weight.std().item() == pytest.approx((2 / (9 * weight.shape[0])) ** 0.5, rel=0.25)
    with pytest.raises(CompresskitError, match=r"^init must be one of: kaiming, torch; got 'xavier'"):
        build_model(spec, init="xavier")
