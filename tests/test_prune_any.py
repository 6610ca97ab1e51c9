"""Pruning any model (`compress.prune_any`): torchvision ResNet-18 and MobileNetV2 at 32×32, the
generic separation importance against compresskit's ConvNet one and a by-hand reference, CSI
allocation (its MAC model against a count of the pruned model), and the refusals."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from compresskit.analysis.separation import center_separation_index
from compresskit.compress.allocate_any import MacModel, csi_gains, prunable_groups
from compresskit.compress.prune import SeparationImportance, fisher_ratio
from compresskit.compress.prune_any import GraphSeparationImportance, output_layer, prune_model
from compresskit.compress.taps import find_taps
from compresskit.edits import recorded_edits
from compresskit.errors import CompresskitError
from compresskit.measure import count_macs
from compresskit.models import ModelSpec, build_model

X = torch.zeros(1, 3, 32, 32)


def _calibration(seed: int = 0, batches: int = 3, size: int = 20) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.arange(size) % 10) for _ in range(batches)]


def _randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Distinct batch-norm scales and statistics, so channels differ and can be told apart."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_norms(torchvision.models.resnet18(num_classes=10))


def _mobilenet_v2() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_norms(torchvision.models.mobilenet_v2(num_classes=10))


def _conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Reference: Σ over conv layers of out_h·out_w·out_c·(in_c/groups)·k_h·k_w, plus in·out per
    linear layer, for one image."""
    total = 0

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += out.shape[2] * out.shape[3] * m.out_channels * (m.in_channels // m.groups) * kh * kw
        else:
            total += m.in_features * m.out_features

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize(("factory", "head"), [(_resnet18, "fc"), (_mobilenet_v2, "classifier.1")])
def test_prune_half_of_resnet18_and_mobilenet_v2(factory, head):
    model = factory()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_model(model, X, ratio=0.5)
    for key, value in model.state_dict().items():  # a copy was pruned
        assert torch.equal(value, original[key])
    out = pruned(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    logits = pruned.get_submodule(head)
    assert logits.out_features == 10
    assert logits.in_features == model.get_submodule(head).in_features // 2
    # Every conv loses half its outputs (and inputs), so MACs fall to about a quarter; the stem's
    # 3 input channels and the 10 logits keep a few percent more.
    share = count_macs(pruned, (3, 32, 32)) / count_macs(model, (3, 32, 32))
    assert 0.2 < share < 0.35
    originals = dict(model.named_modules())
    for name, conv in pruned.named_modules():
        if isinstance(conv, nn.Conv2d):
            assert conv.out_channels == originals[name].out_channels // 2, name
            if originals[name].groups > 1:  # depthwise stays depthwise, its groups follow its channels
                assert conv.groups == conv.in_channels == conv.out_channels
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    changed = {k.rpartition(".")[0] for k, v in pruned.state_dict().items() if v.shape != shapes[k]}
    assert changed and {e["path"] for e in recorded_edits(pruned)} == changed
    assert pruned.training == model.training


def test_output_layer_is_found_by_the_model_output():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10)
    assert output_layer(resnet, X) is resnet.fc
    # SqueezeNet's classifier is a 1×1 conv followed by ReLU and pooling: the last layer to run.
    squeeze = torchvision.models.squeezenet1_1(num_classes=10)
    assert output_layer(squeeze, X) is squeeze.classifier[1]

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3)
            self.logits = nn.Linear(4, 10)
            self.aux = nn.Linear(4, 2)

        def forward(self, x):
            h = self.body(x).mean((2, 3))
            return {"aux": self.aux(h), "logits": self.logits(h)}

    two = TwoHeads()
    assert output_layer(two, X) is two.logits  # the last one whose output is returned


def test_ignored_layers_and_factorized_ranks_are_kept():
    from compresskit.compress.lowrank_any import lowrank_model

    model = _resnet18()
    pruned = prune_model(model, X, 0.5, ignored_layers=["layer1.0.conv1", model.layer2[0].conv1])
    assert pruned.layer1[0].conv1.out_channels == 64
    assert pruned.layer2[0].conv1.out_channels == 128
    assert pruned.layer3[0].conv1.out_channels == 128
    with pytest.raises(CompresskitError, match="ignored_layers"):
        prune_model(model, X, 0.5, ignored_layers=["no.such.layer"])
    factored, _ = lowrank_model(model, rank_ratio=0.25, layers=["layer3.0.conv1"])
    rank = factored.layer3[0].conv1.rank
    both = prune_model(factored, X, 0.5)
    layer = both.layer3[0].conv1
    assert layer.reduce.out_channels == layer.rank == rank  # the rank is not a pruning group
    assert (layer.in_channels, layer.out_channels) == (64, 128)
    assert both(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_generic_separation_matches_convnet_separation():
    spec = ModelSpec("t", [6, "M", 8, "M"], batch_norm=True, head="mlp", head_width=12, num_classes=10)
    model = _randomise_norms(build_model(spec, seed=0))
    batches = _calibration(1, batches=2, size=30)
    reference = SeparationImportance(batches)
    reference.refresh(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    layers = [b.layer for b in model.named_blocks("block")] + [model.head[1]]
    generic = GraphSeparationImportance(batches, find_taps(model, graph, layers))
    generic.refresh(model)
    assert set(generic.scores) == set(reference.scores) == set(layers)
    for layer in layers:
        torch.testing.assert_close(generic.scores[layer], reference.scores[layer], rtol=1e-9, atol=1e-12)


def test_separation_keeps_the_best_separating_channels_of_resnet18():
    model = _resnet18()
    batches = _calibration(2)
    pruned = prune_model(model, X, 0.5, importance="separation", calibration=batches)
    # By hand: layer1.0.conv1's activated output is relu(bn1(conv1(a))), a = the stem's output.
    block = model.layer1[0]
    with torch.no_grad():
        pooled, labels = [], []
        for x, y in batches:
            a = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            pooled.append(torch.relu(block.bn1(block.conv1(a))).mean((2, 3)))
            labels.append(y)
    scores = fisher_ratio(torch.cat(pooled), torch.cat(labels))
    expected = set(scores.argsort(descending=True)[:32].tolist())
    gammas = pruned.layer1[0].bn1.weight.detach()
    kept = {int((block.bn1.weight.detach() == g).nonzero()[0]) for g in gammas}
    assert kept == expected
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    l1 = prune_model(model, X, 0.5, importance="l1")
    assert not torch.equal(l1.layer1[0].bn1.weight, pruned.layer1[0].bn1.weight)


def test_csi_gains_match_a_by_hand_reference():
    model = _resnet18()
    batches = _calibration(3, batches=2, size=30)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    layers = [model.conv1, model.layer2[0].downsample[0]]
    gains = csi_gains(model, graph, find_taps(model, graph, layers), layers, batches)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        stem = torch.relu(model.bn1(model.conv1(x)))
        block_input = model.layer1(model.maxpool(stem))
        shortcut = model.layer2[0].downsample(block_input)  # conv then batch norm; the sum follows
    expected_stem = max(0.0, center_separation_index(stem, y) - center_separation_index(x, y))
    expected_shortcut = max(
        0.0, center_separation_index(shortcut, y) - center_separation_index(block_input, y)
    )
    assert gains[model.conv1] == pytest.approx(expected_stem, abs=1e-12)
    assert gains[model.layer2[0].downsample[0]] == pytest.approx(expected_shortcut, abs=1e-12)


def test_mac_model_predicts_the_pruned_models_macs():
    model = _resnet18()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    groups = prunable_groups(graph, [model.fc])
    cost = MacModel.measure(model, graph, groups, X)
    assert cost.macs([0.0] * len(groups)) == _conv_linear_macs(model, X)
    g = torch.Generator().manual_seed(0)
    ratios = (torch.rand(len(groups), generator=g) * 0.8).tolist()
    pruner = tp.pruner.MetaPruner(
        model, X, importance=tp.importance.GroupMagnitudeImportance(p=1), ignored_layers=[model.fc],
        pruning_ratio_dict={group[0].dep.target.module: r for group, r in zip(groups, ratios, strict=True)},
    )  # fmt: skip
    predicted = cost.macs(ratios)
    pruner.step()
    assert predicted == pytest.approx(_conv_linear_macs(model, X), rel=1e-9)


def test_csi_allocation_on_resnet18_matches_uniform_macs(monkeypatch):
    model = _resnet18()
    batches = _calibration(4)
    uniform_macs = _conv_linear_macs(prune_model(model, X, 0.5), X)
    csi = prune_model(model, X, 0.5, allocate="csi", calibration=batches)
    assert _conv_linear_macs(csi, X) == pytest.approx(uniform_macs, rel=0.03)
    assert csi(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # Random images of random classes give every layer about the same CSI (near 1 in so many
    # dimensions), hence no gains and uniform ratios; give layer3's convs all the gain instead.
    import compresskit.compress.allocate_any as allocate_any

    def gains(model, graph, taps, layers, batches):
        return {layer: 0.4 if taps[layer].name.startswith("layer3") else 0.0 for layer in layers}

    monkeypatch.setattr(allocate_any, "csi_gains", gains)
    csi = prune_model(model, X, 0.5, allocate="csi", calibration=batches)
    share = {n: m.out_channels / model.get_submodule(n).out_channels
             for n, m in csi.named_modules() if isinstance(m, nn.Conv2d)}  # fmt: skip
    favoured = [1 - share[n] for n in share if n.startswith("layer3")]
    others = [1 - share[n] for n in share if not n.startswith("layer3")]
    assert len(favoured) == 5 and max(favoured) - min(favoured) < 0.02
    assert max(others) - min(others) < 0.02
    assert sum(favoured) / len(favoured) == pytest.approx(sum(others) / len(others) / 2, abs=0.02)
    assert _conv_linear_macs(csi, X) == pytest.approx(uniform_macs, rel=0.03)


class _SharedConv(nn.Module):
    """One conv applied twice: its output has no single value per image."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = self.shared(torch.relu(self.shared(torch.relu(self.stem(x)))))
        return self.fc(h.mean((2, 3)))


def test_refusals():
    model = _resnet18()
    with pytest.raises(CompresskitError, match="calibration"):
        prune_model(model, X, 0.5, importance="separation")
    with pytest.raises(CompresskitError, match="calibration"):
        prune_model(model, X, 0.5, allocate="csi")
    with pytest.raises(CompresskitError, match="ratio"):
        prune_model(model, X, 1.5)
    with pytest.raises(CompresskitError, match="importance 'l3'"):
        prune_model(model, X, 0.5, importance="l3")
    with pytest.raises(CompresskitError, match="round_to"):
        prune_model(model, X, 0.5, round_to=0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(CompresskitError, match="no prunable group"):
        prune_model(mlp, X, 0.5, allocate="csi", calibration=_calibration())
    with pytest.raises(CompresskitError, match=r"'shared'.*2 times"):
        prune_model(_SharedConv(), X, 0.5, allocate="csi", calibration=_calibration())


def test_random_importance_follows_the_seed_and_leaves_the_global_generator():
    model = _mobilenet_v2()
    state = torch.get_rng_state()
    a = prune_model(model, X, 0.5, importance="random", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = prune_model(model, X, 0.5, importance="random", seed=3)
    c = prune_model(model, X, 0.5, importance="random", seed=4)
    key = "features.2.conv.0.1.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])


@pytest.mark.parametrize(
    ("name", "logits"),
    [("squeezenet1_1", "classifier.1"), ("mobilenet_v3_small", "classifier.3")],
    ids=["concatenation", "squeeze-excitation"],
)
def test_concatenations_and_squeeze_excitation_gates_stay_consistent(name, logits, tmp_path):
    """SqueezeNet's Fire modules concatenate two convs into the next one's input, and MobileNetV3's
    squeeze-excitation gates scale the channels of their block: pruned at 0.5, both still run, keep
    their 10 logits, lose MACs, and reload from checkpoint format 2 to the same outputs."""
    from compresskit.model_io import load, save

    torch.manual_seed(0)
    model = _randomise_norms(torchvision.models.get_model(name, weights=None, num_classes=10))
    pruned = prune_model(model, X, ratio=0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = pruned.eval()(x)
    assert out.shape == (2, 10)
    layer = pruned.get_submodule(logits)
    assert (layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features) == 10
    assert count_macs(pruned, (3, 32, 32)) < 0.5 * count_macs(model, (3, 32, 32))
    if name == "mobilenet_v3_small":  # every gate's expand conv gives its block's (pruned) channels back
        for module in pruned.modules():
            if isinstance(module, torchvision.ops.SqueezeExcitation):
                assert module.fc2.out_channels == module.fc1.in_channels
    path = save(pruned, tmp_path / "pruned.pt", factory=f"torchvision.models:{name}",
                factory_kwargs={"num_classes": 10})  # fmt: skip
    with torch.no_grad():
        assert torch.equal(load(path).eval()(x), out)
