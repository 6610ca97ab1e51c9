"""Layer analysis of any nn.Module (torchvision ResNet-18, MobileNetV2): selection, the shared-ReLU
case, collected samples, and `ck.analyze` against a slow reference."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compresskit as ck
from compresskit.analysis import (
    TABLE_COLUMNS,
    Layer,
    collect_samples,
    consume_layer_outputs,
    iterate_layer_outputs,
    layer_table,
    probe_layers,
    select_layers,
)
from compresskit.errors import CompresskitError
from compresskit.models import FactorizedConv2d, build_model, make_spec
from tests.test_analysis import _slow_csi

CLASSES = 4


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def mobilenet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2(num_classes=10).eval()


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n normalised 3×32×32 images of CLASSES classes (interleaved), a weak class signal in noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    images = torch.randn(CLASSES, 3, 1, 1, generator=g)[labels] * 0.5 + torch.randn(n, 3, 32, 32, generator=g)
    return images, labels


def _loader(n: int = 48, seed: int = 0, **kwargs) -> DataLoader:
    return DataLoader(TensorDataset(*_data(n, seed)), batch_size=16, **kwargs)


def _leaves(model: nn.Module) -> list[str]:
    return [path for path, m in model.named_modules() if path and not list(m.children())]


def _hooked_outputs(model: nn.Module, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The module's output for every image, from a plain forward hook that keeps the LAST call's
    output of each forward pass (one image batch at a time)."""
    kept: list[torch.Tensor] = []
    batch: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: batch.append(o.detach().clone()))
    try:
        with torch.no_grad():
            for start in range(0, len(images), 16):
                batch.clear()
                model(images[start : start + 16])
                kept.append(batch[-1])
    finally:
        handle.remove()
    return torch.cat(kept)


# ----------------------------------------------------------------------------- selection


def test_resnet_selection_modes(resnet):
    every = select_layers(resnet, "all")
    assert [layer.path for layer in every] == _leaves(resnet)  # no Identity/Dropout in a ResNet
    assert all(layer.name == layer.path and layer.optional for layer in every)
    assert len(every) == 52
    convs = select_layers(resnet, "convs")
    assert [layer.path for layer in convs] == [
        p for p, m in resnet.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    assert len(convs) == 20 + 1 and convs[-1].path == "fc"
    stages = select_layers(resnet, "stages")
    assert [layer.name for layer in stages] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc",
    ]  # fmt: skip
    assert stages[4].module is resnet.layer1
    # a regex is searched anywhere in the path, containers included; anchors make it a full match
    assert [layer.path for layer in select_layers(resnet, r"downsample\.0")] == [
        "layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0",
    ]  # fmt: skip
    assert [layer.path for layer in select_layers(resnet, r"^layer1\.0\.conv\d$")] == [
        "layer1.0.conv1", "layer1.0.conv2",
    ]  # fmt: skip
    assert [layer.path for layer in select_layers(resnet, r"^layer4$")] == ["layer4"]
    chosen = select_layers(resnet, ["fc", "layer2.1", "conv1", "fc"])
    assert [layer.name for layer in chosen] == ["fc", "layer2.1", "conv1"]  # given order, once each
    assert chosen[1].module is resnet.layer2[1] and not chosen[1].optional


def test_mobilenet_selection_modes(mobilenet):
    every = [layer.path for layer in select_layers(mobilenet, "all")]
    assert "classifier.0" not in every  # its Dropout
    assert every == [p for p in _leaves(mobilenet) if p != "classifier.0"]
    assert "features.0.2" in every and "classifier.1" in every  # a ReLU6, the Linear
    convs = [layer.path for layer in select_layers(mobilenet, "convs")]
    assert convs == [p for p, m in mobilenet.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(convs) == 52 + 1
    assert [layer.path for layer in select_layers(mobilenet, "stages")] == ["features", "classifier"]
    assert [layer.path for layer in select_layers(mobilenet, r"^features\.1[78]$")] == [
        "features.17", "features.18",
    ]  # fmt: skip
    assert [layer.path for layer in select_layers(mobilenet, ["features.3.conv.1.0"])] == [
        "features.3.conv.1.0",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("layers", "names"),
    [
        ("layer[", "nor a valid regular expression"),
        ("nothing-matches-this", "matches no module"),
        ("blocks", "matches no module"),  # a ConvNet preset is a regex elsewhere
        (["fc", "layer9.0"], "'layer9.0' is not a module path"),
        ([""], "'' is not a module path"),
        ([], "matches no module"),
        ([3], "list of module paths"),
    ],
)
def test_bad_layers_are_a_compresskit_error_naming_layers_and_valid_paths(resnet, layers, names):
    with pytest.raises(CompresskitError, match="layers") as info:
        select_layers(resnet, layers)
    message = str(info.value)
    assert names in message
    if not isinstance(layers, list) or (layers and isinstance(layers[0], str)):
        assert "conv1, bn1, relu, maxpool, layer1" in message and "more" in message


def test_convnet_keeps_its_presets_and_names_and_takes_a_list_of_paths():
    model = build_model(make_spec("cnn_bn", 4, width=0.25), seed=0)
    assert [layer.name for layer in select_layers(model)] == ["block1", "block2", "block3", "fc1"]
    assert select_layers(model) == select_layers(model, "blocks")
    chosen = select_layers(model, ["features.2", "features.0.1"])
    assert [(layer.name, layer.path) for layer in chosen] == [("block2", "features.2"), ("features.0.1",) * 2]
    with pytest.raises(ValueError, match=r"^layers 'convs' "):  # a ConvNet's bad regex, as it always was
        select_layers(model, "convs")


def test_a_factorized_layer_is_one_unit_and_silent_modules_are_left_out_of_all():
    class Pair(nn.Module):  # a leaf that returns a tuple
        def forward(self, x):
            return x, x

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = FactorizedConv2d(3, 4, 2)
            self.pair = Pair()
            self.unused = nn.Linear(3, 3)
            self.skip = nn.Identity()
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

        def forward(self, x):
            return self.head(self.skip(self.pair(self.conv(x))[0]))

    net = Net().eval()
    chosen = select_layers(net, "all")
    assert [layer.path for layer in chosen] == ["conv", "pair", "unused", "head.0", "head.1"]
    assert [layer.path for layer in select_layers(net, "convs")] == ["conv", "unused", "head.1"]
    probe = probe_layers(net, torch.randn(1, 3, 8, 8), chosen)
    assert [layer.path for layer in probe.layers] == ["conv", "head.0", "head.1"]
    assert probe.shapes == {"conv": (4, 8, 8), "head.0": (256,), "head.1": (3,)}
    assert [path for path, _ in probe.left_out] == ["pair", "unused"]
    assert "not a tensor" in probe.left_out[0][1] and "does not run" in probe.left_out[1][1]
    for path, why in (("pair", "not a tensor"), ("unused", "does not run")):
        with pytest.raises(CompresskitError, match=f"layers: module '{path}' .*{why}"):
            probe_layers(net, torch.randn(1, 3, 8, 8), select_layers(net, [path]))


# ----------------------------------------------------------------------------- a module called twice


def test_a_relu_called_twice_is_captured_at_its_last_call(resnet):
    # torchvision's BasicBlock applies self.relu after bn1 and again after the residual sum; the
    # second call's output is the block's output.
    x, y = _data(32, 1)
    chosen = select_layers(resnet, ["layer1.0.relu", "layer1.0", "layer1.0.bn1"])
    probe = probe_layers(resnet, x[:1], chosen)
    assert [layer.calls for layer in probe.layers] == [2, 1, 1]
    block_out = _hooked_outputs(resnet, resnet.layer1[0], x)
    assert torch.equal(_hooked_outputs(resnet, resnet.layer1[0].relu, x), block_out)
    # copying capture: the last call wins
    captured = list(iterate_layer_outputs(resnet, iter([(x[:16], y[:16]), (x[16:], y[16:])]), probe.layers))
    torch.testing.assert_close(torch.cat([c[0]["layer1.0.relu"] for c in captured]), block_out)
    # consuming capture: handed the last call only, once per batch
    seen: dict[str, list[torch.Tensor]] = {}
    consume_layer_outputs(
        resnet,
        [(x, y)],
        probe.layers,
        lambda name, value, _y, _s: seen.setdefault(name, []).append(value.clone()),
    )
    assert len(seen["layer1.0.relu"]) == 1
    torch.testing.assert_close(seen["layer1.0.relu"][0], block_out)
    # the table: the shared ReLU's metrics are the block output's, not a mix of both calls
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    table = layer_table(resnet, batches, batches, chosen, ("csi", "si"), memory_budget=0)
    relu, block, bn1 = table.to_dict("records")
    assert (relu["csi_train"], relu["si_train"]) == (block["csi_train"], block["si_train"])
    assert relu["csi_train"] == _slow_csi(block_out.numpy(), y.numpy())
    assert relu["output_shape"] == block["output_shape"] == "64×8×8"
    assert bn1["output_shape"] == "64×8×8"


def test_an_unprobed_layer_called_twice_is_refused_not_mixed(resnet):
    x, y = _data(8, 2)
    relu = Layer("layer1.0.relu", "layer1.0.relu", resnet.layer1[0].relu)  # calls=1: not probed
    with pytest.raises(CompresskitError, match="ran 2 time"):
        consume_layer_outputs(resnet, [(x, y)], [relu], lambda *args: None)


# ----------------------------------------------------------------------------- ck.analyze


@pytest.mark.parametrize("model_name", ["resnet", "mobilenet"])
@pytest.mark.parametrize("layers", ["all", "convs", "stages", r"^fc$|\.conv\.1\.0$|^layer3\.1\."])
def test_analyze_every_selection_mode(request, model_name, layers):
    model = request.getfixturevalue(model_name)
    table = ck.analyze(model, _loader(32, 0), _loader(32, 1), layers=layers, metrics="csi")
    modules = dict(model.named_modules())
    assert table["layer"].tolist() == table["module"].tolist()
    assert table["layer"].tolist() == [layer.path for layer in select_layers(model, layers)]
    x = _data(2, 0)[0]
    for row in table.head(3).itertuples():  # shapes as a plain hook sees them, flattened per sample
        shape = _hooked_outputs(model, modules[row.module], x).shape[1:]
        assert row.output_shape == "×".join(map(str, shape)) and row.dims == math.prod(shape)
    assert table[["csi_train", "csi_test"]].stack().between(0, 1).all()
    assert table[["si_train", "probe_test"]].isna().all().all()


def test_analyze_with_a_dataloader_matches_a_slow_reference(resnet):
    train_x, train_y = _data(48, 0)
    test_x, test_y = _data(40, 1)
    train = DataLoader(TensorDataset(train_x, train_y), batch_size=16, shuffle=True)  # read once: fine
    test = DataLoader(TensorDataset(test_x, test_y), batch_size=7)
    resnet.train()
    layers = ["layer2.0.relu", "layer3", "fc"]
    table = ck.analyze(resnet, train, test, layers=layers)
    assert resnet.training and all(m.training for m in resnet.modules())  # modes restored
    resnet.eval()
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert table["layer"].tolist() == layers
    assert table.attrs["samples"] == {"train": 48, "test": 40}
    assert {plan.mode for plan in table.attrs["features"].values()} == {"memory"}  # SI holds them
    modules = dict(resnet.named_modules())
    for row in table.itertuples():
        for split, (x, y) in (("train", (train_x, train_y)), ("test", (test_x, test_y))):
            expected = _slow_csi(_hooked_outputs(resnet, modules[row.module], x).numpy(), y.numpy())
            assert getattr(row, f"csi_{split}") == pytest.approx(expected, abs=1e-12), (row.layer, split)
    assert 0 < table["csi_test"].min() < 1  # not a case every path gets right
    assert table[["si_train", "si_test", "probe_train", "probe_test"]].stack().between(0, 1).all()
    streamed = ck.analyze(resnet, train, test, layers=layers, metrics=("csi",), memory_budget="0")
    assert {plan.mode for plan in streamed.attrs["features"].values()} == {"streaming"}
    assert streamed[["csi_train", "csi_test"]].equals(table[["csi_train", "csi_test"]])


def test_analyze_without_a_test_loader_has_only_train_columns(mobilenet):
    table = ck.analyze(mobilenet, _loader(32), layers="stages", metrics=("csi", "probe"))
    assert list(table.columns) == [c for c in TABLE_COLUMNS if not c.endswith("_test")]
    assert list(table.attrs["features"]) == ["train"]
    assert table["probe_train"].between(0, 1).all() and table["si_train"].isna().all()


def test_analyze_a_convnet_and_a_class_balanced_subset():
    model = build_model(make_spec("cnn_bn", 10, width=0.25), seed=0)
    table = ck.analyze(model, _loader(64, 0), _loader(64, 1), layers="blocks", samples=22, metrics="csi")
    assert table["layer"].tolist() == ["block1", "block2", "block3", "fc1"]
    assert table.attrs["samples"] == {"train": 22, "test": 22}
    assert table[["csi_train", "csi_test"]].stack().between(0, 1).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "resnet"}, "model must be a torch.nn.Module"),
        ({"metrics": "csi,bogus"}, "metrics 'csi,bogus' is not allowed"),
        ({"metrics": ()}, "metrics"),
        ({"samples": 0}, "samples must be a positive integer"),
        ({"samples": True}, "samples must be a positive integer"),
        ({"samples": 3}, "samples 3 is too small"),
        ({"batch_size": -1}, "batch_size must be"),
        ({"memory_budget": "lots"}, "memory_budget 'lots' is not allowed"),
        ({"memory_budget": -1}, "memory_budget -1"),
        ({"device": "tpu"}, "device 'tpu' is not allowed"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"layers": "layer["}, "layers 'layer\\['"),
        ({"train_loader": 5}, "train_loader must be an iterable"),
        (
            {"train_loader": [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 1)]},
            "train_loader must yield",
        ),
        (
            {"train_loader": [(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))]},
            "float",
        ),
        ({"train_loader": [(torch.zeros(2, 3), torch.zeros(2))]}, "labels as an integer tensor"),
        ({"train_loader": [(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))]}, "one label per image"),
        ({"train_loader": []}, "train_loader yielded no samples"),
        ({"train_loader": [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))]}, "at least two classes"),
        ({"test_loader": [(torch.zeros(1, 3, 32, 32), torch.tensor([9]))]}, "test_loader has label 9"),
    ],
)
def test_analyze_validates_its_parameters(resnet, kwargs, message):
    args = {"model": resnet, "train_loader": _loader(8), "layers": "fc", "metrics": "csi", **kwargs}
    with pytest.raises(CompresskitError, match=message):
        ck.analyze(**args)


# ----------------------------------------------------------------------------- collected samples


def _stream(n: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n one-value 'images' holding their own index, classes of sizes 3:2:1 (0, 1, 2), in batches."""
    labels = torch.tensor([0, 0, 0, 1, 1, 2]).repeat(n // 6)[:n]
    images = torch.arange(n, dtype=torch.float32)[:, None]
    return [(images[s : s + batch], labels[s : s + batch]) for s in range(0, n, batch)]


def test_collected_subset_is_the_smallest_keys_per_class_whatever_the_trimming():
    batches = _stream(600, 32)  # 300, 200, 100 samples of classes 0, 1, 2: trimmed many times
    images, labels, largest = collect_samples(iter(batches), samples=31, seed=5)  # a one-shot iterator
    assert largest == 32
    assert torch.bincount(labels).tolist() in ([11, 10, 10], [10, 11, 10], [10, 10, 11])
    index = images[:, 0].long()
    assert torch.equal(index, index.sort().values)  # loader order
    all_labels = torch.cat([y for _, y in batches])
    assert torch.equal(all_labels[index], labels)
    # the slow reference: every key drawn as the pool draws them, nothing trimmed
    g = torch.Generator().manual_seed(5)
    keys = torch.cat([torch.rand(len(y), generator=g, dtype=torch.float64) for _, y in batches])
    extra = torch.randperm(3, generator=g)[: 31 % 3].tolist()
    expected = []
    for c in range(3):
        members = [i for i in range(len(keys)) if all_labels[i] == c]
        members.sort(key=lambda i: float(keys[i]))
        expected += members[: 31 // 3 + (c in extra)]
    assert index.tolist() == sorted(expected)
    again, _, _ = collect_samples(batches, samples=31, seed=5)
    assert torch.equal(again, images)
    other, _, _ = collect_samples(batches, samples=31, seed=6)
    assert not torch.equal(other, images)


def test_collected_subset_takes_all_of_a_small_class_and_everything_without_samples():
    batches = _stream(60, 8)  # 30, 20, 10
    _, labels, _ = collect_samples(batches, samples=45, seed=0)
    assert torch.bincount(labels).tolist() == [15, 15, 10]
    images, labels, _ = collect_samples(batches)
    assert images[:, 0].tolist() == list(range(60)) and len(labels) == 60


def test_importing_compresskit_loads_neither_torch_nor_torch_pruning():
    code = (
        "import sys, compresskit as ck; assert callable(ck.analyze); "
        "assert 'torch' not in sys.modules and 'torch_pruning' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
