"""MACs against hand-counted formulas, checkpoint size, latency timing, and no side effects."""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch import nn
from torch.utils import benchmark

from compresskit.checkpoint import save_checkpoint
from compresskit.measure import Latency, count_macs, file_size, measure_latency, measure_model
from compresskit.models import POOL, ModelSpec, build_model, make_spec

SHAPE = (3, 32, 32)
FAST = 0.05  # min_run_time in seconds: enough for the assertions below, short enough for CI


def expected_ops(spec: ModelSpec) -> dict[str, int]:
    """What torch-pruning's counter gives a ConvNet on one input, split by kind of operation.

    conv: out_h·out_w·out_c·in_c·3·3 per conv; bias: out_h·out_w·out_c per conv bias (convs have a
    bias only without BN); bn: 2 per element (scale and shift); relu: 1 per output element;
    pool: 1 per *input* element of each max-pool and of the global average pool; linear: in·out
    weights plus out for the bias. Flatten and Dropout count nothing.
    """
    ops = dict.fromkeys(("conv", "bias", "bn", "relu", "pool", "linear"), 0)
    channels, side = spec.in_channels, spec.input_size
    for item in spec.layers:
        if item == POOL:
            ops["pool"] += channels * side * side
            side //= 2
            continue
        out = side * side * int(item)
        ops["conv"] += out * channels * 9
        if spec.batch_norm:
            ops["bn"] += 2 * out
        else:
            ops["bias"] += out
        ops["relu"] += out
        channels = int(item)
    if spec.global_pool:
        ops["pool"] += channels * side * side
        side = 1
    features = channels * side * side
    if spec.head == "mlp":
        ops["linear"] += features * spec.head_width + spec.head_width
        ops["relu"] += spec.head_width
        features = spec.head_width
    ops["linear"] += features * spec.num_classes + spec.num_classes
    return ops


def test_count_macs_small_cnn_by_hand():
    # cnn at width 0.25: 3→8 conv (32×32), pool, 8→16 conv (16×16), pool, 16→32 conv (8×8), pool,
    # Linear 32·4·4 → 10. Convs have biases (no BN).
    spec = make_spec("cnn", 10, width=0.25)
    assert spec.layers == [8, POOL, 16, POOL, 32, POOL]
    conv = 32 * 32 * 8 * 3 * 9 + 16 * 16 * 16 * 8 * 9 + 8 * 8 * 32 * 16 * 9  # 221,184 + 2 × 294,912
    elements = 32 * 32 * 8 + 16 * 16 * 16 + 8 * 8 * 32  # conv outputs: 8,192 + 4,096 + 2,048
    # torch-pruning adds one op per conv-output element for the bias, one for the ReLU, and one
    # per element entering each max-pool (the ReLU outputs), on top of the conv and linear MACs.
    linear = 512 * 10 + 10
    expected = conv + 3 * elements + linear
    assert expected == 859_146
    assert count_macs(build_model(spec), SHAPE) == expected
    assert sum(expected_ops(spec).values()) == expected


@pytest.mark.parametrize(
    "spec",
    [
        make_spec("vgg11", 10, width=0.25),
        make_spec("vgg11_bn", 10, width=0.25),
        make_spec("cnn_bn", 7, width=0.25, head="mlp", dropout=0.5),
        make_spec("vgg13", 10, width=0.25, global_pool=True),
    ],
    ids=["vgg11", "vgg11_bn", "cnn_bn-mlp-dropout", "vgg13-global-pool"],
)
def test_count_macs_matches_formula(spec):
    assert count_macs(build_model(spec), SHAPE) == sum(expected_ops(spec).values())


def test_count_macs_vgg11_convs_dominate():
    # vgg11 at width 0.25: 16, M, 32, M, 64, 64, M, 128, 128, M, 128, 128, M. The conv term is one
    # multiply-accumulate per weight per output position (a MAC count, not 2× for FLOPs), and it
    # is nearly all of the total.
    spec = make_spec("vgg11", 10, width=0.25)
    ops = expected_ops(spec)
    assert ops["conv"] == 9 * (
        32 * 32 * 16 * 3 + 16 * 16 * 32 * 16 + 8 * 8 * (64 * 32 + 64 * 64)
        + 4 * 4 * (128 * 64 + 128 * 128) + 2 * 2 * (128 * 128 + 128 * 128)
    )  # fmt: skip
    total = count_macs(build_model(spec), SHAPE)
    assert total == sum(ops.values())
    assert ops["conv"] / total > 0.97


def test_halving_channels_scales_macs_exactly():
    # Two BN convs (no conv bias) on a 3×8×8 input: a at 8×8, pool, b at 4×4, Linear(16·b → 10).
    def spec(a: int, b: int) -> ModelSpec:
        return ModelSpec(name="half", layers=[a, POOL, b], batch_norm=True, input_size=8)

    def by_hand(a: int, b: int) -> int:
        return (
            64 * a * 3 * 9  # first conv: scales with a
            + 64 * a * (2 + 1 + 1)  # its BN (2/element), ReLU, and the pool reading it
            + 16 * b * a * 9  # inner conv: scales with a·b
            + 16 * b * (2 + 1)  # its BN and ReLU
            + 16 * b * 10  # linear weights scale with b...
            + 10  # ...its bias does not
        )

    full = count_macs(build_model(spec(16, 32)), (3, 8, 8))
    half = count_macs(build_model(spec(8, 16)), (3, 8, 8))
    assert full == by_hand(16, 32)
    assert half == by_hand(8, 16)
    inner = 16 * 32 * 16 * 9
    # Halving every width quarters the inner conv and halves everything else but the linear bias.
    assert half == inner // 4 + (full - inner - 10) // 2 + 10


def test_file_size_of_checkpoint(tmp_path):
    spec = make_spec("cnn", 10, width=0.25)
    model = build_model(spec, seed=0)
    path = save_checkpoint(tmp_path / "checkpoint.pt", spec, model, {"epoch": 1})
    assert file_size(path) == os.path.getsize(path) > 0
    assert file_size(str(path)) == os.path.getsize(path)
    measured = measure_model(model, SHAPE, batch_sizes=(), checkpoint_path=path)
    assert measured.size_bytes == os.path.getsize(path)
    assert measured.to_row()["size_mb"] == pytest.approx(os.path.getsize(path) / 1e6)


def test_measure_latency_fields():
    model = build_model(make_spec("cnn", 10, width=0.25), seed=0)
    threads_before = torch.get_num_threads()
    lat = measure_latency(model, SHAPE, 3, threads=2, min_run_time=FAST)
    assert isinstance(lat, Latency)
    assert lat.batch_size == 3
    assert lat.median_s > 0
    assert lat.iqr_s >= 0
    assert lat.runs >= 1
    assert lat.threads == 2
    assert lat.device == "cpu"
    assert lat.images_per_s == 3 / lat.median_s
    # The timer sets the thread count only while timing.
    assert torch.get_num_threads() == threads_before


def test_measure_latency_defaults_to_current_threads():
    model = build_model(make_spec("cnn", 10, width=0.25), seed=0)
    lat = measure_latency(model, SHAPE, 1, min_run_time=FAST)
    assert lat.threads == torch.get_num_threads()


class Sleeper(nn.Module):
    """Takes 10 ms per forward pass, whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.01)
        return x


def test_measure_latency_times_a_sleeping_model():
    lat = measure_latency(Sleeper(), (1, 2, 2), 4, threads=1, min_run_time=FAST)
    assert 0.01 <= lat.median_s < 0.05
    assert lat.images_per_s == pytest.approx(4 / lat.median_s)


def test_measure_latency_reports_the_median(monkeypatch):
    # Four timed blocks of 2 calls, one of them slow: the median ignores it, the mean would not.
    seen = {}

    def fake_autorange(self, callback=None, min_run_time=0.2):
        seen["min_run_time"] = min_run_time
        return benchmark.Measurement(
            number_per_run=2, raw_times=[0.02, 0.02, 0.02, 0.2], task_spec=self._task_spec
        )

    monkeypatch.setattr(benchmark.Timer, "blocked_autorange", fake_autorange)
    lat = measure_latency(Sleeper(), (1, 2, 2), 5, threads=1, min_run_time=0.123)
    assert seen["min_run_time"] == 0.123
    assert lat.median_s == pytest.approx(0.01)
    assert lat.runs == 4
    assert lat.images_per_s == pytest.approx(500.0)


def test_measure_model_has_no_side_effects():
    model = build_model(make_spec("cnn_bn", 10, width=0.25), seed=0)
    model.train()
    model.head.eval()  # mixed modes must come back exactly, not just the top-level flag
    modes = {name: m.training for name, m in model.named_modules()}
    # In train mode a forward pass would update BN running statistics, which are in the state dict.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    measure_model(model, SHAPE, batch_sizes=(2,), min_run_time=FAST)
    assert {name: m.training for name, m in model.named_modules()} == modes
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_measure_model_keeps_eval_mode():
    model = build_model(make_spec("cnn", 10, width=0.25), seed=0).eval()
    measure_model(model, SHAPE, batch_sizes=(1,), min_run_time=FAST)
    assert not any(m.training for m in model.modules())


def test_measure_model_row():
    spec = make_spec("cnn", 10, width=0.25)
    model = build_model(spec, seed=0)
    measured = measure_model(model, SHAPE, batch_sizes=(4, 1), threads=1, min_run_time=FAST)
    assert measured.params == sum(p.numel() for p in model.parameters())
    assert measured.macs == 859_146
    assert measured.size_bytes is None
    assert sorted(measured.latency) == [1, 4]
    row = measured.to_row()
    assert list(row) == [
        "params", "macs", "size_mb",
        "latency_b1_ms", "throughput_b1", "latency_b4_ms", "throughput_b4",
        "threads", "device",
    ]  # fmt: skip
    assert row["size_mb"] is None
    assert row["threads"] == 1
    assert row["device"] == "cpu"
    for n in (1, 4):
        assert row[f"latency_b{n}_ms"] == measured.latency[n].median_s * 1e3
        assert row[f"throughput_b{n}"] == n / measured.latency[n].median_s


@pytest.mark.parametrize("shape", [(32, 32), (3, 32, 32, 1), (3, 0, 32), (3.0, 32, 32), (True, 32, 32)])
def test_bad_input_shape(shape):
    model = build_model(make_spec("cnn", 10, width=0.25))
    with pytest.raises(ValueError, match=r"input_shape .* must be three positive integers"):
        count_macs(model, shape)
    with pytest.raises(ValueError, match=r"input_shape .* must be three positive integers"):
        measure_latency(model, shape, 1, min_run_time=FAST)
    with pytest.raises(ValueError, match=r"input_shape .* must be three positive integers"):
        measure_model(model, shape, min_run_time=FAST)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": -2}, "batch_size must be a positive integer"),
        ({"batch_size": 1, "threads": 0}, "threads must be a positive integer"),
        ({"batch_size": 1, "min_run_time": 0.0}, "min_run_time must be a positive number"),
    ],
)
def test_bad_latency_arguments(kwargs, message):
    model = build_model(make_spec("cnn", 10, width=0.25))
    with pytest.raises(ValueError, match=message):
        measure_latency(model, SHAPE, **kwargs)


def test_bad_measure_model_arguments():
    model = build_model(make_spec("cnn", 10, width=0.25))
    with pytest.raises(ValueError, match="every batch size must be a positive integer"):
        measure_model(model, SHAPE, batch_sizes=(1, 0))
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        measure_model(model, SHAPE, threads=-1)
