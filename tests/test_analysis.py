"""Layer capture (hooks, one pass), probes, balanced subsets and the per-layer table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from compresskit.analysis import (
    TABLE_COLUMNS,
    FeaturePlan,
    LayerCapture,
    center_separation_index,
    consume_layer_outputs,
    default_memory_budget,
    features_nbytes,
    format_size,
    iterate_layer_outputs,
    layer_csi,
    layer_table,
    linear_probe,
    parse_metrics,
    parse_size,
    plan_features,
    pool_features,
    select_layers,
    separation_index,
)
from compresskit.analysis.memory import total_memory
from compresskit.data import ImageSplit, Loader, balanced_subset
from compresskit.errors import CompresskitError
from compresskit.models import ModelSpec, build_model, make_spec


def vgg11(head: str = "linear") -> nn.Module:
    return build_model(make_spec("vgg11_bn", 10, width=0.125, head=head), seed=0).eval()


# ----------------------------------------------------------------------------- layer selection


def test_blocks_are_every_conv_block_and_linear_layer():
    layers = select_layers(vgg11(), "blocks")
    assert [layer.name for layer in layers] == [f"block{i}" for i in range(1, 9)] + ["fc1"]
    assert [layer.path for layer in layers][:3] == ["features.0", "features.2", "features.4"]
    assert layers[-1].path == "head.1"
    assert all(isinstance(layer.module, nn.Sequential) for layer in layers[:-1])


def test_pools_are_every_max_pool_and_linear_layer():
    layers = select_layers(vgg11(head="mlp"), "pools")
    assert [layer.name for layer in layers] == ["pool1", "pool2", "pool3", "pool4", "pool5", "fc1", "fc2"]
    assert all(isinstance(layer.module, nn.MaxPool2d) for layer in layers[:5])


def test_all_is_every_leaf_module():
    model = vgg11()
    leaves = [path for path, m in model.named_modules() if path and not list(m.children())]
    layers = select_layers(model, "all")
    assert [layer.path for layer in layers] == leaves
    # 8 blocks of conv+bn+relu, 5 pools, flatten, linear
    assert len(layers) == 8 * 3 + 5 + 2


def test_regex_selects_by_module_path_and_keeps_block_names():
    layers = select_layers(vgg11(), r"^features\.(0|4)$")
    assert [(layer.name, layer.path) for layer in layers] == [
        ("block1", "features.0"),
        ("block3", "features.4"),
    ]


def test_a_factorized_model_keeps_the_block_and_fc_names_and_paths():
    spec = make_spec("vgg11_bn", 10, width=0.125, head="mlp")
    factorized = build_model(ModelSpec(**{**spec.to_dict(), "conv_ranks": [None, 3] + [None] * 6,
                                          "linear_ranks": [5, None]}))  # fmt: skip
    for selection in ("blocks", "pools"):
        plain = [(layer.name, layer.path) for layer in select_layers(vgg11("mlp"), selection)]
        assert [(layer.name, layer.path) for layer in select_layers(factorized, selection)] == plain
    inner = select_layers(factorized, r"^features\.2\.0\.|^head\.1\.")
    assert [layer.name for layer in inner] == [
        "features.2.0.reduce", "features.2.0.expand", "head.1.reduce", "head.1.expand",
    ]  # fmt: skip


@pytest.mark.parametrize("selection", ["features\\.(", "nothing-matches-this"])
def test_bad_selection_is_a_clear_value_error(selection):
    with pytest.raises(ValueError, match=r"^layers '"):
        select_layers(vgg11(), selection)


# ----------------------------------------------------------------------------- capture


def test_capture_gives_each_layer_output_in_one_forward_pass():
    model = vgg11()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    layers = select_layers(model, "blocks")
    x = torch.randn(6, 3, 32, 32)
    batches = [(x[:2], torch.zeros(2)), (x[2:4], torch.zeros(2)), (x[4:], torch.zeros(2))]
    seen = list(iterate_layer_outputs(model, iter(batches), layers))
    assert len(calls) == 3  # one forward per batch, not one per layer
    assert len(seen) == 3
    outputs = seen[0][0]
    assert set(outputs) == {layer.name for layer in layers}
    with torch.no_grad():
        block1 = model.features[0](x[:2])
        block2 = model.features[2](model.features[1](block1))
        logits = model(x[:2])
    torch.testing.assert_close(outputs["block1"], block1)
    torch.testing.assert_close(outputs["block2"], block2)
    torch.testing.assert_close(outputs["fc1"], logits)
    assert outputs["block1"].shape == (2, 8, 32, 32)
    assert outputs["block8"].shape == (2, 64, 2, 2)


def test_capture_is_not_changed_by_later_in_place_relu():
    model = vgg11()
    bn = select_layers(model, r"^features\.0\.1$")  # the first BatchNorm; an in-place ReLU follows
    x = torch.randn(4, 3, 32, 32)
    with LayerCapture(bn) as capture, torch.no_grad():
        outputs = capture.forward(model, x)
        expected = model.features[0][1](model.features[0][0](x))
    assert (outputs[bn[0].name] < 0).any()
    torch.testing.assert_close(outputs[bn[0].name], expected)


def test_hooks_are_removed_on_exit():
    model = vgg11()
    layers = select_layers(model, "all")
    with LayerCapture(layers):
        assert sum(len(layer.module._forward_hooks) for layer in layers) == len(layers)
    assert sum(len(layer.module._forward_hooks) for layer in layers) == 0


# ----------------------------------------------------------------------------- probes


def test_pool_features_average_pools_large_maps_only():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    pooled = pool_features(x, size=4)
    assert pooled.shape == (2, 3 * 16)
    assert pooled[0, 0] == x[0, 0, :2, :2].mean()
    assert pooled[1, -1] == x[1, 2, 6:, 6:].mean()
    small = torch.randn(2, 5, 2, 2)
    assert torch.equal(pool_features(small, size=4), small.reshape(2, 20))
    assert torch.equal(pool_features(torch.ones(3, 7), size=4), torch.ones(3, 7))


def test_linear_probe_separates_separable_classes_and_not_random_labels():
    g = np.random.default_rng(0)
    centres = g.normal(size=(3, 20)) * 4
    y_train, y_test = g.integers(0, 3, 300), g.integers(0, 3, 300)
    x_train = centres[y_train] + g.normal(size=(300, 20))
    x_test = centres[y_test] + g.normal(size=(300, 20))
    train_acc, test_acc = linear_probe(x_train, y_train, x_test, y_test)
    assert train_acc == 1.0
    assert test_acc > 0.97
    _, shuffled_acc = linear_probe(x_train, g.permutation(y_train), x_test, y_test)
    assert shuffled_acc < 0.5


def test_linear_probe_refuses_mismatched_or_single_class_input():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="same number"):
        linear_probe(x, np.zeros(3), x, np.zeros(4))
    with pytest.raises(ValueError, match="two classes"):
        linear_probe(x, np.zeros(4), x, np.zeros(4))


# ----------------------------------------------------------------------------- subsets


def test_balanced_subset_takes_the_same_count_from_every_class():
    labels = torch.arange(5).repeat_interleave(40)
    idx = balanced_subset(labels, 23, seed=3)
    counts = torch.bincount(labels[idx], minlength=5).tolist()
    assert sorted(counts) == [4, 4, 5, 5, 5]
    assert len(set(idx.tolist())) == 23
    assert torch.equal(idx, balanced_subset(labels, 23, seed=3))
    assert not torch.equal(idx, balanced_subset(labels, 23, seed=4))


def test_balanced_subset_gives_all_of_a_small_class():
    labels = torch.tensor([0] * 50 + [1] * 3)
    idx = balanced_subset(labels, 20, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [10, 3]


def test_balanced_subset_needs_one_sample_per_class():
    message = r"^samples must be at least the number of classes \(3\); got 2\."
    with pytest.raises(CompresskitError, match=message):
        balanced_subset(torch.arange(3), 2, seed=0)


def test_balanced_subset_among_draws_only_from_the_given_samples():
    labels = torch.arange(4).repeat_interleave(25)
    among = torch.arange(0, 100, 3)
    idx = balanced_subset(labels, 8, seed=1, among=among)
    assert set(idx.tolist()) <= set(among.tolist())
    assert torch.bincount(labels[idx], minlength=4).tolist() == [2, 2, 2, 2]
    assert torch.equal(idx, among[balanced_subset(labels[among], 8, seed=1)])
    assert torch.equal(idx, idx.sort().values)


# ----------------------------------------------------------------------------- the table


def test_parse_metrics():
    assert parse_metrics("csi, probe") == ("csi", "probe")
    assert parse_metrics("none") == ()
    for bad in ("csi,bogus", ""):
        with pytest.raises(CompresskitError, match=f"^metrics must be a comma list of .*; got '{bad}'"):
            parse_metrics(bad)


def _loader(n: int, seed: int) -> Loader:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(n // 4)
    images = (torch.rand(4, 3, 1, 1, generator=g) * 200)[labels] + torch.rand(n, 3, 32, 32, generator=g) * 55
    split = ImageSplit(images.to(torch.uint8), labels)
    return Loader(split, 16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_layer_table_matches_metrics_on_captured_features():
    model = build_model(make_spec("cnn_bn", 4, width=0.25), seed=0).eval()
    train, test = _loader(48, 0), _loader(40, 1)
    layers = select_layers(model, "blocks")
    table = layer_table(model, train, test, layers)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert table["layer"].tolist() == ["block1", "block2", "block3", "fc1"]
    assert table["output_shape"].tolist() == ["8×32×32", "16×16×16", "32×8×8", "4"]
    assert table["dims"].tolist() == [8192, 4096, 2048, 4]
    for split, loader in (("train", train), ("test", test)):
        captured = list(iterate_layer_outputs(model, iter(loader), layers))
        labels = torch.cat([y for _, y in captured])
        for row in table.itertuples():
            features = torch.cat([outputs[row.layer] for outputs, _ in captured])
            assert math.prod(features.shape[1:]) == row.dims
            assert getattr(row, f"csi_{split}") == center_separation_index(features, labels)
            assert getattr(row, f"si_{split}") == separation_index(features, labels)
    assert table[["probe_train", "probe_test"]].stack().between(0, 1).all()


def test_consumed_outputs_are_seen_before_an_in_place_relu_changes_them():
    # cnn_bn's batch norm feeds ReLU(inplace=True): a consumer must get the BN output itself.
    model = build_model(make_spec("cnn_bn", 4, width=0.25), seed=0).eval()
    loader = _mixed_loader(48, 3)
    layers = select_layers(model, "all")
    bn = [layer for layer in layers if isinstance(layer.module, torch.nn.BatchNorm2d)]
    assert bn
    negative: dict[str, bool] = {}

    def consume(name, value, y, start):
        negative[name] = negative.get(name, False) or bool((value < 0).any())

    assert consume_layer_outputs(model, loader, layers, consume) == 48
    assert all(negative[layer.name] for layer in bn)
    csi, _ = layer_csi(model, loader, layers)
    captured = list(iterate_layer_outputs(model, iter(loader), layers))  # detached copies
    labels = torch.cat([y for _, y in captured])
    for layer in layers:
        features = torch.cat([outputs[layer.name] for outputs, _ in captured])
        assert csi[layer.name] == center_separation_index(features, labels), layer.name


def test_layer_table_leaves_unasked_metrics_empty_and_skips_the_second_pass():
    model = build_model(make_spec("cnn", 4, width=0.25), seed=0).eval()
    calls = []  # the batch size of every forward pass
    model.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    train, test = _loader(32, 0), _loader(32, 1)

    def passes() -> int:  # full forward passes, less the one-sample pass per split that sizes the layers
        assert calls.count(1) == 2
        full = sum(1 for size in calls if size > 1)
        calls.clear()
        return full

    table = layer_table(model, train, test, select_layers(model, "pools"), ("si",))
    assert passes() == len(train) + len(test)  # SI alone: one pass per split
    assert table["si_train"].notna().all()
    assert table[["csi_train", "csi_test", "probe_train", "probe_test"]].isna().all().all()
    layer_table(model, train, test, select_layers(model, "pools"), ("csi",), memory_budget=0)
    assert passes() == 2 * (len(train) + len(test))  # streamed CSI: class sums, then nearest centre
    layer_table(model, train, test, select_layers(model, "pools"), ("csi",), memory_budget=2**30)
    assert passes() == len(train) + len(test)  # held CSI: one pass, scored from memory


# ----------------------------------------------------------------------------- memory budget


def _slow_csi(features: np.ndarray, labels: np.ndarray) -> float:
    """CSI by the definition, one sample and one centre at a time in float64."""
    x = features.reshape(len(features), -1).astype(np.float64)
    classes = sorted(set(labels.tolist()))
    centres = [x[labels == c].mean(0) for c in classes]
    hits = 0
    for row, label in zip(x, labels, strict=True):
        distances = [float(((row - centre) ** 2).sum()) for centre in centres]
        hits += classes[distances.index(min(distances))] == label
    return hits / len(x)


def _slow_si(features: np.ndarray, labels: np.ndarray) -> float:
    """SI by the definition: each sample's nearest other sample (ties → lowest index), in float64."""
    x = features.reshape(len(features), -1).astype(np.float64)
    hits = 0
    for i in range(len(x)):
        best, nearest = np.inf, -1
        for j in range(len(x)):
            if j != i and (d := float(((x[i] - x[j]) ** 2).sum())) < best:
                best, nearest = d, j
        hits += labels[nearest] == labels[i]
    return hits / len(x)


def _mixed_loader(n: int, seed: int) -> Loader:
    """Classes in shuffled order with a weak signal, so every batch mixes them and CSI < 1."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 4)[torch.randperm(n, generator=g)]
    images = (torch.rand(4, 3, 1, 1, generator=g) * 60)[labels] + torch.rand(n, 3, 32, 32, generator=g) * 190
    return Loader(ImageSplit(images.to(torch.uint8), labels), 16, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_held_and_streamed_features_give_the_same_csi_and_si():
    model = build_model(make_spec("cnn_bn", 4, width=0.25), seed=0).eval()
    train, test = _mixed_loader(64, 0), _mixed_loader(48, 1)
    layers = select_layers(model, "blocks")
    held = layer_table(model, train, test, layers, ("csi",), memory_budget=2**30)
    streamed = layer_table(model, train, test, layers, ("csi",), memory_budget=0)
    with_si = layer_table(model, train, test, layers, ("csi", "si"), memory_budget=0)
    assert {split: plan.mode for split, plan in held.attrs["features"].items()} == {
        "train": "memory", "test": "memory",
    }  # fmt: skip
    assert {split: plan.passes for split, plan in streamed.attrs["features"].items()} == {
        "train": 2, "test": 2,
    }  # fmt: skip
    assert {plan.mode for plan in streamed.attrs["features"].values()} == {"streaming"}
    # SI needs every sample's features at once, so they are held whatever the budget, and CSI is
    # scored from them without a second pass.
    assert {(plan.mode, plan.passes) for plan in with_si.attrs["features"].values()} == {("memory", 1)}
    for split, loader in (("train", train), ("test", test)):
        captured = list(iterate_layer_outputs(model, iter(loader), layers))
        labels = torch.cat([y for _, y in captured]).numpy()
        for i, layer in enumerate(layers):
            features = torch.cat([outputs[layer.name] for outputs, _ in captured]).numpy()
            expected_csi = _slow_csi(features, labels)
            for table in (held, streamed, with_si):
                assert abs(table[f"csi_{split}"][i] - expected_csi) <= 1e-6
            assert abs(with_si[f"si_{split}"][i] - _slow_si(features, labels)) <= 1e-6
    assert (held[["csi_train", "csi_test"]] < 1).any().all()  # not a case every path gets right
    for budget, mode in ((2**30, "memory"), (0, "streaming")):
        csi, plan = layer_csi(model, test, layers, memory_budget=budget)
        assert plan.mode == mode and list(csi) == [layer.name for layer in layers]
        assert list(csi.values()) == held["csi_test"].tolist()
    assert (
        np.abs(
            held[["csi_train", "csi_test"]].to_numpy() - streamed[["csi_train", "csi_test"]].to_numpy()
        ).max()
        <= 1e-6
    )


def test_a_budget_below_the_features_forces_streaming():
    model = build_model(make_spec("cnn_bn", 4, width=0.25), seed=0).eval()
    train, test = _loader(48, 0), _loader(40, 1)
    layers = select_layers(model, "blocks")
    per_sample = (8192 + 4096 + 2048 + 4) * 4  # float32 of block1..block3 and fc1
    needed = {"train": 48 * per_sample, "test": 40 * per_sample}
    # A budget between the two splits' needs: test is held, train is streamed.
    table = layer_table(model, train, test, layers, ("csi",), memory_budget=needed["test"])
    plans = table.attrs["features"]
    assert (plans["train"].mode, plans["train"].passes) == ("streaming", 2)
    assert (plans["test"].mode, plans["test"].passes) == ("memory", 1)
    assert {split: plan.needed_bytes for split, plan in plans.items()} == needed
    assert plans["train"].budget_bytes == needed["test"]
    assert plan_features(("csi",), 48, [8192, 4096, 2048, 4], needed["train"] - 1).mode == "streaming"
    assert plan_features(("csi",), 48, [8192, 4096, 2048, 4], needed["train"]).mode == "memory"
    assert plan_features(("probe",), 48, [10], 0) == FeaturePlan("streaming", 1, 48 * 40, 0)
    with pytest.raises(ValueError, match="memory_budget"):
        layer_table(model, train, test, layers, ("csi",), memory_budget=-1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024", 1024), (1024, 1024), ("0", 0), ("500MB", 500 * 10**6), ("4GiB", 4 * 2**30),
        ("4 gib", 4 * 2**30), ("1.5KiB", 1536), ("2kb", 2000), ("1e9", 10**9), ("7B", 7),
        (" 3 TB ", 3 * 10**12), (".5MiB", 2**19), ("1.9", 1),
    ],
)  # fmt: skip
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "-1", -1, "4 gigs", "GiB", "4GiB5", "nan", "inf", "1e999", "1,000", True]
)
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_default_budget_is_a_quarter_of_the_total_memory():
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    total = total_memory()
    assert total is not None and abs(total - kib * 1024) <= 0.01 * kib * 1024
    assert default_memory_budget() == total // 4
    assert features_nbytes([10, 6], 3) == 3 * 16 * 4
    assert format_size(1536) == "1.5 KiB" and format_size(6 * 2**30) == "6.0 GiB" and format_size(5) == "5 B"


def test_float16_storage_would_change_csi():
    # Why held features stay float32: a class-1 sample x with class-1 partner 1.0 is nearer its own
    # centre (x + 1)/2 than class 0's centre 0.5 exactly when x > 2/3; 0.6667 is, but float16 (11
    # significant bits) rounds it to 0.66650390625, which is not.
    features = torch.tensor([[0.0], [1.0], [0.6667], [1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert center_separation_index(features, labels) == 0.75
    assert features.half()[2, 0].item() == 0.66650390625
    assert center_separation_index(features.half().float(), labels) == 0.5
