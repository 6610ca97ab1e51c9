"""Channel pruning: widths, the untouched output layer, round_to, reload equality, the separation
importance, CSI allocation, steps and scopes, refusals, and the SE attention CNNs' gates."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from compresskit.analysis.layers import block_csi
from compresskit.checkpoint import load_checkpoint, save_checkpoint
from compresskit.compress import (
    ChannelPruner,
    PruneConfig,
    SeparationImportance,
    csi_allocation,
    fisher_ratio,
    prune_copy,
)
from compresskit.compress.prune import conv_macs, fit_se_gates, rebuild
from compresskit.errors import CompresskitError
from compresskit.measure import count_macs, measure_model
from compresskit.models import ConvNet, ModelSpec, SqueezeExcite, build_model, count_parameters, make_spec


def vgg(width: float = 0.25, head: str = "linear", name: str = "vgg11_bn"):
    spec = make_spec(name, 10, width=width, head=head)
    model = build_model(spec, seed=0).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a pruning mistake shows in outputs
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 1.5)
    return model, spec


def test_uniform_pruning_halves_every_conv_layer_and_keeps_the_output_layer():
    model, spec = vgg(head="mlp")
    pruned, new = prune_copy(model, spec, PruneConfig(ratio=0.5))
    assert new.conv_widths == [w // 2 for w in spec.conv_widths]
    assert new.head_width == spec.head_width // 2
    output = [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1]
    assert output.out_features == 10
    assert output.in_features == new.head_width
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # the original is untouched
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == spec.conv_widths


def test_round_to_keeps_multiples():
    model, spec = vgg()
    _, new = prune_copy(model, spec, PruneConfig(ratio=0.3, round_to=4))
    assert all(w % 4 == 0 for w in new.conv_widths)
    assert new.conv_widths != spec.conv_widths


def test_max_layer_ratio_caps_global_pruning():
    model, spec = vgg()
    _, free = prune_copy(model, spec, PruneConfig(ratio=0.6, scope="global"))
    _, capped = prune_copy(model, spec, PruneConfig(ratio=0.6, scope="global", max_layer_ratio=0.7))
    assert sum(free.conv_widths) == pytest.approx(0.4 * sum(spec.conv_widths), abs=len(spec.conv_widths))
    assert len(set(free.conv_widths) - set(spec.conv_widths)) > 1
    assert all(p >= 0.3 * w - 1 for p, w in zip(capped.conv_widths, spec.conv_widths, strict=True))


def test_dead_channels_go_first_and_outputs_do_not_change():
    model, spec = vgg()
    dead = {0: [1, 5], 3: [0, 2, 7]}  # conv index → channels whose conv + BN are zeroed
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for layer, channels in dead.items():
            convs[layer].weight[channels] = 0
            bns[layer].weight[channels] = 0
            bns[layer].bias[channels] = 0
    ratios = [len(dead.get(i, [])) / w for i, w in enumerate(spec.conv_widths)]
    pruned, new = prune_copy(model, spec, PruneConfig(ratio=0.5, importance="l1"), layer_ratios=ratios)
    assert new.conv_widths[0] == spec.conv_widths[0] - 2
    assert new.conv_widths[3] == spec.conv_widths[3] - 3
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)


def test_pruned_checkpoint_reloads_exactly_without_torch_pruning(tmp_path):
    model, spec = vgg()
    pruned, new = prune_copy(model, spec, PruneConfig(ratio=0.5, importance="l2"))
    path = save_checkpoint(tmp_path / "pruned.pt", new, pruned)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = pruned(x)
        assert torch.equal(load_checkpoint(path).build()(x), expected)
    torch.save(x, tmp_path / "x.pt")
    torch.save(expected, tmp_path / "y.pt")
    script = (
        "import sys; sys.modules['torch_pruning'] = None\n"  # any import of torch_pruning now fails
        "import torch; from compresskit.checkpoint import load_checkpoint\n"
        f"m = load_checkpoint({str(path)!r}).build()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r}); y = torch.load({str(tmp_path / 'y.pt')!r})\n"
        "with torch.no_grad(): assert torch.equal(m(x), y)\n"
        "assert 'torch_pruning' not in [k for k, v in sys.modules.items() if v is not None]\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_fisher_ratio_matches_a_hand_computation():
    pooled = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 2.0], [10.0, 5.0, 4.0], [14.0, 5.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # channel 0: class means 2 and 12, overall 7 → between 25, within (1+1+4+4)/4 = 2.5 → 10
    # channel 1: constant → 0; channel 2: class means 2 and 2 → between 0 → 0
    expected = torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(fisher_ratio(pooled, labels), expected)


def test_separation_importance_removes_the_noise_channel_first():
    # One conv layer with two channels: channel 0 copies input plane 0 (which carries the label),
    # channel 1 copies input plane 1 (noise, and with larger weights, so magnitude would keep it).
    spec = ModelSpec(name="probe", layers=[2, "M"], batch_norm=False, in_channels=2, num_classes=2)
    model = build_model(spec, seed=0).eval()
    conv = model.features[0][0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.weight[1, 1, 1, 1] = 3.0
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat(32)
    x = torch.rand(64, 2, 32, 32, generator=g)
    x[:, 0] += 2.0 * labels.view(-1, 1, 1).float()
    batches = [(x[:32], labels[:32]), (x[32:], labels[32:])]
    pruned, new = prune_copy(model, spec, PruneConfig(ratio=0.5, importance="separation"), batches)
    assert new.conv_widths == [1]
    assert pruned.features[0][0].weight[0, 0, 1, 1] == 1.0  # the label channel survived
    by_magnitude, _ = prune_copy(model, spec, PruneConfig(ratio=0.5, importance="l1"))
    assert by_magnitude.features[0][0].weight[0, 1, 1, 1] == 3.0  # magnitude keeps the noise


def test_separation_importance_prunes_the_mlp_hidden_layer_by_fisher_ratio():
    # cnn_bn with an mlp head: a third of the hidden units get 10× larger weights but a bias so
    # negative that their ReLU never fires (Fisher ratio 0, yet the largest magnitude). Separation
    # must halve the hidden layer like l1 does, keeping exactly the units of highest Fisher ratio of
    # their post-ReLU activation, and still prune the convs by the Fisher ratio of their channels.
    model, spec = vgg(width=0.25, head="mlp", name="cnn_bn")
    hidden = model.head[1]
    width = spec.head_width
    dead = torch.arange(0, width, 3)
    with torch.no_grad():
        hidden.bias.copy_(torch.linspace(10.0, 11.0, width))  # distinct (kept units show in it), always on
        hidden.weight[dead] *= 10
        hidden.bias[dead] = -1e4
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(6)
    x = torch.randn(60, 3, 32, 32, generator=g) + torch.randn(10, 3, 32, 32, generator=g)[labels]
    batches = [(x[:30], labels[:30]), (x[30:], labels[30:])]
    with torch.no_grad():
        fisher_units = fisher_ratio(torch.relu(hidden(model.head[0](model.features(x)))), labels)
        fisher_conv0 = fisher_ratio(model.features[0](x).mean((2, 3)), labels)
    assert (fisher_units[dead] == 0).all()
    assert (fisher_units > 0).sum() == width - len(dead)
    keep_units = fisher_units.topk(width // 2).indices.sort().values
    keep_conv0 = fisher_conv0.topk(spec.conv_widths[0] // 2).indices.sort().values

    pruned, new = prune_copy(model, spec, PruneConfig(ratio=0.5, importance="separation"), batches)
    assert new.head_width == width // 2
    assert new.conv_widths == [w // 2 for w in spec.conv_widths]
    torch.testing.assert_close(pruned.head[1].bias, hidden.bias[keep_units], rtol=0, atol=0)
    assert not (pruned.head[1].bias == -1e4).any()
    bn0 = model.features[0][1]
    torch.testing.assert_close(pruned.features[0][1].weight, bn0.weight[keep_conv0], rtol=0, atol=0)
    assert pruned(x[:2]).shape == (2, 10)

    by_magnitude, l1_spec = prune_copy(model, spec, PruneConfig(ratio=0.5, importance="l1"))
    assert l1_spec.head_width == new.head_width
    assert (by_magnitude.head[1].bias == -1e4).sum() == len(dead)  # magnitude keeps every dead unit


def test_separation_scores_follow_the_model_between_steps():
    model, spec = vgg(width=0.125)
    x, y = torch.randn(40, 3, 32, 32), torch.arange(10).repeat(4)
    importance = SeparationImportance([(x, y)])
    importance.refresh(model)
    assert [len(s) for s in importance.scores.values()] == spec.conv_widths
    pruner = ChannelPruner(model, PruneConfig(ratio=0.5, importance="separation", steps=2), x[:1], [(x, y)])
    first = pruner.step()
    assert [len(s) for s in pruner.importance.scores.values()] == spec.conv_widths
    second = pruner.step()
    assert first == [w - int(w * 0.25) for w in spec.conv_widths]
    assert second == [w // 2 for w in spec.conv_widths]


def test_csi_allocation_prunes_low_gain_layers_harder_and_hits_the_mac_target():
    model, spec = vgg()
    csi = [0.40, 0.55, 0.58, 0.70, 0.71, 0.80, 0.81, 0.82]  # gains .1 .15 .03 .12 .01 .09 .01 .01
    ratios = csi_allocation(spec, csi, input_csi=0.30, ratio=0.5)
    assert ratios[4] > ratios[3]  # gain .01 pruned harder than gain .12
    assert ratios[1] == min(ratios)  # the largest gain is pruned least
    assert ratios[6] == pytest.approx(ratios[7]) == pytest.approx(max(ratios))
    shape = (3, 32, 32)
    uniform, _ = prune_copy(model, spec, PruneConfig(ratio=0.5))
    allocated, new = prune_copy(model, spec, PruneConfig(ratio=0.5), layer_ratios=ratios)
    assert count_macs(allocated, shape) == pytest.approx(count_macs(uniform, shape), rel=0.03)
    assert new.conv_widths != [w // 2 for w in spec.conv_widths]


def test_conv_macs_by_hand():
    assert conv_macs([4, "M", 8], in_channels=3, input_size=8) == 8 * 8 * 9 * 3 * 4 + 4 * 4 * 9 * 4 * 8


def test_block_csi_reads_every_block():
    model, spec = vgg(width=0.125)
    x, y = torch.randn(20, 3, 32, 32), torch.arange(10).repeat(2)
    csi, pixels = block_csi(model, [(x[:10], y[:10]), (x[10:], y[10:])])
    assert len(csi) == len(spec.conv_widths)
    assert all(0 <= c <= 1 for c in [*csi, pixels])


@pytest.mark.parametrize("importance", ["taylor", "separation"])
def test_data_driven_importance_without_data_is_refused(importance):
    model, spec = vgg()
    with pytest.raises(CompresskitError, match=f"^importance {importance} needs calibration data"):
        prune_copy(model, spec, PruneConfig(importance=importance))


def _two_channel_probe(batch_norm: bool = False):
    """One conv layer, two channels: channel c copies input plane c (centre tap), channel 1 with 3×
    the weight of channel 0, then max-pool and the linear output layer."""
    spec = ModelSpec(name="probe", layers=[2, "M"], batch_norm=batch_norm, in_channels=2, num_classes=2)
    model = build_model(spec, seed=0).eval()
    conv = model.features[0][0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.weight[1, 1, 1, 1] = 3.0
        if conv.bias is not None:
            conv.bias.zero_()
    return model, spec


def _kept_channel(pruned) -> int:
    """Which of the probe's two channels survived (read off the surviving filter's weights)."""
    weight = pruned.features[0][0].weight
    assert weight.shape[0] == 1
    return 0 if weight[0, 0, 1, 1] == 1.0 else 1


def test_taylor_importance_keeps_the_channel_that_matters_on_the_calibration_data():
    # On calibration data where input plane 1 is negative, channel 1's ReLU is always off: its
    # weights are the largest (magnitude keeps it) but get zero gradient, so |w·dL/dw| = 0 and
    # Taylor removes it. Swap the signs of the planes and Taylor's choice must swap with them.
    model, spec = _two_channel_probe()
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat(16)
    positive, negative = torch.rand(32, 1, 32, 32, generator=g) + 0.5, -torch.rand(32, 1, 32, 32, generator=g)
    plane0_on = torch.cat([positive, negative], 1)
    plane1_on = torch.cat([negative, positive], 1)
    cfg = PruneConfig(ratio=0.5, importance="taylor")
    by_magnitude, _ = prune_copy(model, spec, PruneConfig(ratio=0.5, importance="l1"))
    taylor0, new = prune_copy(
        model, spec, cfg, [(plane0_on[:16], labels[:16]), (plane0_on[16:], labels[16:])]
    )
    taylor1, _ = prune_copy(model, spec, cfg, [(plane1_on, labels)])
    assert new.conv_widths == [1]
    assert _kept_channel(by_magnitude) == 1
    assert _kept_channel(taylor0) == 0  # the big channel is dead on this data: Taylor drops it
    assert _kept_channel(taylor1) == 1
    assert all(p.grad is None for p in model.parameters())  # gradients only on the pruned copy


def test_random_importance_is_seeded():
    model, spec = vgg(width=0.125)
    a, _ = prune_copy(model, spec, PruneConfig(importance="random", seed=3))
    b, _ = prune_copy(model, spec, PruneConfig(importance="random", seed=3))
    c, _ = prune_copy(model, spec, PruneConfig(importance="random", seed=4))
    assert torch.equal(a.features[0][0].weight, b.features[0][0].weight)
    assert not torch.equal(a.features[0][0].weight, c.features[0][0].weight)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"ratio": 0.0}, "ratio 0.0"),
        ({"ratio": 1.5}, "ratio 1.5"),
        ({"importance": "weights"}, "importance 'weights'"),
        ({"scope": "layer"}, "scope 'layer'"),
        ({"allocate": "csi", "scope": "global"}, "allocate csi"),
        ({"steps": 0}, "steps 0"),
        ({"round_to": 0}, "round_to 0"),
        ({"max_layer_ratio": 0.0}, "max_layer_ratio"),
    ],
)
def test_bad_configuration_is_refused(changes, fragment):
    with pytest.raises(CompresskitError, match="^" + fragment.replace("(", r"\(")):  # the parameter, no flag
        PruneConfig(**changes).validate()


def test_nothing_left_to_prune():
    spec = make_spec("cnn", 10, width=0.01)
    assert spec.conv_widths == [1, 1, 1]
    with pytest.raises(CompresskitError, match="nothing left to prune"):
        prune_copy(build_model(spec), spec, PruneConfig())


def test_bn_scale_needs_batch_norm():
    spec = make_spec("vgg11", 10, width=0.125)
    with pytest.raises(CompresskitError, match="bn-scale"):
        prune_copy(build_model(spec), spec, PruneConfig(importance="bn-scale"))


# ----------------------------------------------------------------------------- SE attention CNNs


def se_cnn(width: float = 0.5):
    """A cnn_se_bn with non-trivial BN statistics (see `vgg`) and SE biases."""
    model, spec = vgg(width=width, name="cnn_se_bn")
    with torch.no_grad():
        for gate in _gates(model):
            gate.down.bias.uniform_(-0.5, 0.5)
            gate.up.bias.uniform_(-0.5, 0.5)
    return model, spec


def _gates(model) -> list[SqueezeExcite]:
    return [m for m in model.modules() if isinstance(m, SqueezeExcite)]


def _se_widths(model) -> list[tuple[int, int, int]]:
    """(channels in, bottleneck, channels out) of every SE gate."""
    return [(g.down.in_features, g.down.out_features, g.up.out_features) for g in _gates(model)]


@pytest.mark.parametrize("steps", [1, 2])
def test_pruning_cnn_se_bn_halves_the_convs_and_its_gates_follow(steps):
    model, spec = se_cnn(width=0.5)  # 16, 16, 32, 32, 64, 64 channels; gates 4, 4, 4, 4, 8, 8 wide
    x = torch.randn(3, 3, 32, 32)
    work = build_model(spec)
    work.load_state_dict(model.state_dict())
    work.eval()
    pruner = ChannelPruner(work, PruneConfig(ratio=0.5, steps=steps), x[:1])
    for _ in range(steps):
        widths = pruner.step()
        assert all(b == max(c // 8, 4) for c, b, _ in _se_widths(work))  # after every step
    assert widths == [8, 8, 16, 16, 32, 32]
    assert _se_widths(work) == [(8, 4, 8), (8, 4, 8), (16, 4, 16), (16, 4, 16), (32, 4, 32), (32, 4, 32)]
    with torch.no_grad():
        expected = work(x)
    assert expected.shape == (3, 10)

    fresh, new = rebuild(work, spec)
    assert new.conv_widths == [8, 8, 16, 16, 32, 32] and new.se_reduction == 8 and new.batch_norm
    again = ConvNet(ModelSpec.from_dict(json.loads(json.dumps(new.to_dict()))))
    again.load_state_dict(fresh.state_dict())
    again.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
        assert torch.equal(again(x), expected)


@pytest.mark.parametrize(
    ("cfg", "batches"),
    [
        (PruneConfig(ratio=0.5, scope="global"), False),
        (PruneConfig(ratio=0.5, importance="separation"), True),
        (PruneConfig(ratio=0.5, importance="taylor"), True),
        (PruneConfig(ratio=0.3, importance="bn-scale", round_to=4), False),
    ],
)
def test_every_way_of_pruning_cnn_se_bn_gives_a_model_its_spec_rebuilds(cfg, batches):
    model, spec = se_cnn(width=0.5)
    x, y = torch.randn(20, 3, 32, 32), torch.arange(10).repeat(2)
    pruned, new = prune_copy(model, spec, cfg, [(x, y)] if batches else None)
    assert sum(new.conv_widths) < sum(spec.conv_widths)
    assert _se_widths(pruned) == [(c, max(c // 8, 4), c) for c in new.conv_widths]
    again = ConvNet(ModelSpec.from_dict(json.loads(json.dumps(new.to_dict()))))
    again.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(x[:2]), pruned.eval()(x[:2]))


def test_a_gate_loses_the_same_channels_as_its_conv_and_dead_ones_change_nothing():
    # Full width: block1 32 channels (gate 4), block5 128 channels (gate 16). Zero 2 channels of
    # block1 and 8 of block5 (conv + BN, so their activation is 0, and their gate weights, so their
    # L1 group magnitude is 0) and prune exactly those: the gates must lose the same channels
    # (down's inputs, up's outputs), block1's gate keeps its 4 units (max(30 // 8, 4)) and
    # block5's drops to 15 (120 // 8): its unit 5 is made the one of smallest magnitude and does
    # nothing (zero weights), so the outputs must not change.
    model, spec = se_cnn(width=1.0)
    dead = {0: [1, 5], 4: [0, 3, 7, 20, 64, 65, 100, 127]}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    gates = _gates(model)
    with torch.no_grad():
        for layer, channels in dead.items():
            convs[layer].weight[channels] = 0
            bns[layer].weight[channels] = 0
            bns[layer].bias[channels] = 0
            gates[layer].down.weight[:, channels] = 0
            gates[layer].up.weight[channels] = 0
            gates[layer].up.bias[channels] = 0
        gates[4].down.weight[5] = 0
        gates[4].down.bias[5] = 0
        gates[4].up.weight[:, 5] = 0
    ratios = [len(dead.get(i, [])) / w for i, w in enumerate(spec.conv_widths)]
    pruned, new = prune_copy(model, spec, PruneConfig(ratio=0.5, importance="l1"), layer_ratios=ratios)
    assert new.conv_widths == [30, 32, 64, 64, 120, 128]
    assert _se_widths(pruned) == [
        (30, 4, 30),
        (32, 4, 32),
        (64, 8, 64),
        (64, 8, 64),
        (120, 15, 120),
        (128, 16, 128),
    ]
    new_gates = _gates(pruned)
    for layer, channels in dead.items():
        alive = [c for c in range(spec.conv_widths[layer]) if c not in channels]
        units = [u for u in range(gates[layer].down.out_features) if layer != 4 or u != 5]
        torch.testing.assert_close(
            new_gates[layer].down.weight, gates[layer].down.weight[units][:, alive], rtol=0, atol=0
        )
        torch.testing.assert_close(new_gates[layer].up.bias, gates[layer].up.bias[alive], rtol=0, atol=0)
        torch.testing.assert_close(new_gates[layer].down.bias, gates[layer].down.bias[units], rtol=0, atol=0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)


def test_fit_se_gates_keeps_the_units_of_largest_magnitude_and_pruned_spec_checks_them():
    model, spec = se_cnn(width=1.0)
    gate = model.features[6][3]  # block5: 128 channels, 16 units
    with torch.no_grad():
        gate.down.bias.copy_(torch.arange(16.0) / 100)  # tells the kept units apart
        gate.down.weight[::2] *= 0.01  # the even units are the weakest
        gate.up.weight[:, ::2] *= 0.01
    ChannelPruner(model, PruneConfig(ratio=0.5), torch.zeros(1, 3, 32, 32)).pruner.step()  # without fitting
    assert _se_widths(model)[4] == (64, 16, 64)
    with pytest.raises(CompresskitError, match="fit_se_gates"):
        rebuild(model, spec)
    fit_se_gates(model)
    assert _se_widths(model) == [(16, 4, 16), (16, 4, 16), (32, 4, 32), (32, 4, 32), (64, 8, 64), (64, 8, 64)]
    torch.testing.assert_close(gate.down.bias, torch.arange(1.0, 16.0, 2) / 100, rtol=0, atol=0)
    rebuild(model, spec)


def test_pruned_cnn_se_bn_is_measured_with_its_gates():
    model, spec = se_cnn(width=1.0)
    pruned, _ = prune_copy(model, spec, PruneConfig(ratio=0.5))
    shape = (3, 32, 32)
    plain = build_model(make_spec("cnn_bn", 10))
    gate_macs = sum(g.down.in_features * g.down.out_features + g.up.in_features * g.up.out_features
                    for g in _gates(model))  # fmt: skip
    assert count_macs(model, shape) - count_macs(plain, shape) >= gate_macs
    assert count_macs(pruned, shape) < count_macs(model, shape) / 2
    measured = measure_model(pruned, shape, batch_sizes=())
    assert measured.params == count_parameters(pruned) < count_parameters(model) / 2
