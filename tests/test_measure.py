"""MACs against hand-counted formulas, checkpoint size, latency timing (median of repeats and their
spread), no side effects, and the comparison report (Markdown, warnings, the CLI's table)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils import benchmark

from compresskit import cli
from compresskit.checkpoint import save_checkpoint
from compresskit.measure import (
    NOISY_SPREAD,
    Latency,
    Measurement,
    count_macs,
    file_size,
    measure_latency,
    measure_model,
    relative_iqr,
)
from compresskit.models import POOL, ModelSpec, build_model, make_spec
from compresskit.report import comparison_table, latency_warnings, markdown_table, write_report

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
    """Sleeps `seconds` per forward pass, whatever the input (10 ms by default)."""

    def __init__(self, seconds: float = 0.01) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


def test_measure_latency_times_sleeping_models():
    # time.sleep never returns early, so each median is at least its sleep, however busy the
    # machine; a busy machine only adds time. Five times the sleep must measure well over twice as
    # long (that fails only if the short sleep oversleeps by 15 ms more than the long one in the
    # median of the repeats), and nothing is off by orders of magnitude (seconds vs milliseconds).
    short = measure_latency(Sleeper(0.01), (1, 2, 2), 4, threads=1, min_run_time=0.2, repeats=3)
    long = measure_latency(Sleeper(0.05), (1, 2, 2), 4, threads=1, min_run_time=0.2, repeats=3)
    assert short.median_s >= 0.01
    assert long.median_s >= 0.05
    assert long.median_s > 2 * short.median_s
    assert short.median_s < 1.0
    assert len(short.repeat_medians_s) == 3
    assert min(short.repeat_medians_s) >= 0.01
    assert short.images_per_s == pytest.approx(4 / short.median_s)


def _fake_autorange(monkeypatch, per_repeat: list[list[float]]) -> list[float]:
    """Make `blocked_autorange` return blocks of 2 calls with the given raw block times, one list per
    call (the first call is the warm-up); returns the min_run_time of every call."""
    seen: list[float] = []
    blocks = iter(per_repeat)

    def fake_autorange(self, callback=None, min_run_time=0.2):
        seen.append(min_run_time)
        return benchmark.Measurement(number_per_run=2, raw_times=next(blocks), task_spec=self._task_spec)

    monkeypatch.setattr(benchmark.Timer, "blocked_autorange", fake_autorange)
    return seen


def test_measure_latency_reports_the_median(monkeypatch):
    # Four timed blocks of 2 calls per repeat, one of them slow: the median ignores it, the mean
    # would not. min_run_time is the timing budget in all, split evenly over the repeats.
    seen = _fake_autorange(monkeypatch, [[0.02, 0.02, 0.02, 0.2]] * 6)
    lat = measure_latency(Sleeper(), (1, 2, 2), 5, threads=1, min_run_time=0.5, repeats=5)
    assert seen == [0.25, 0.1, 0.1, 0.1, 0.1, 0.1]  # warm-up (at most WARMUP_SECONDS), 5 repeats
    assert lat.median_s == pytest.approx(0.01)
    assert lat.runs == 20
    assert lat.iqr_s == pytest.approx(np.quantile([0.01] * 15 + [0.1] * 5, 0.75) - 0.01)
    assert lat.repeat_medians_s == pytest.approx((0.01,) * 5)
    assert lat.spread == 0.0
    assert not lat.noisy
    assert lat.images_per_s == pytest.approx(500.0)


@pytest.mark.parametrize(
    ("medians_ms", "median_ms", "spread"),
    [
        # one slow repeat: the median and the IQR both ignore it
        ([10, 10, 40, 10, 10], 10, 0.0),
        # sorted 10 10 10 12 40: Q1 = 10, Q3 = 12, median 10 → 20%
        ([10, 12, 10, 40, 10], 10, 0.2),
        # sorted 8 9 10 11 12: Q1 = 9, Q3 = 11 → 20%
        ([12, 8, 11, 9, 10], 10, 0.2),
    ],
)
def test_measure_latency_takes_the_median_of_repeats_and_their_spread(
    monkeypatch, medians_ms, median_ms, spread
):
    blocks = [[0.02]] + [[2 * m / 1e3] * 3 for m in medians_ms]  # blocks of 2 calls: per call m ms
    _fake_autorange(monkeypatch, blocks)
    lat = measure_latency(Sleeper(), (1, 2, 2), 1, threads=1, min_run_time=0.5, repeats=5)
    assert lat.repeat_medians_s == pytest.approx(tuple(m / 1e3 for m in medians_ms))
    assert lat.median_s == pytest.approx(median_ms / 1e3)
    assert lat.spread == pytest.approx(spread)
    assert lat.noisy == (spread > 0.10)
    assert lat.runs == 15


def test_relative_iqr_by_hand():
    assert relative_iqr([5.0]) == 0.0
    assert relative_iqr([]) == 0.0
    assert relative_iqr([1.0, 3.0]) == pytest.approx(0.5)  # Q1 1.5, Q3 2.5, median 2
    assert relative_iqr([8.0, 9.0, 10.0, 11.0, 12.0]) == pytest.approx(0.2)
    assert relative_iqr([0.0, 0.0, 0.0]) == 0.0


def _latency(n: int, median_s: float, spread: float) -> Latency:
    return Latency(batch_size=n, median_s=median_s, iqr_s=0.0, runs=5, threads=1, device="cpu",
                   spread=spread, repeat_medians_s=(median_s,) * 5)  # fmt: skip


def test_latency_is_noisy_only_past_ten_percent():
    assert NOISY_SPREAD == 0.10
    assert not _latency(1, 0.01, 0.10).noisy
    assert _latency(1, 0.01, 0.1001).noisy
    assert not _latency(1, 0.01, 0.0).noisy
    # Older code building a Latency without the new fields still works (one repeat, no spread).
    plain = Latency(batch_size=1, median_s=0.01, iqr_s=0.0, runs=3, threads=1, device="cpu")
    assert plain.spread == 0.0 and not plain.noisy


def test_bad_repeats():
    model = build_model(make_spec("cnn", 10, width=0.25))
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        measure_latency(model, SHAPE, 1, repeats=0, min_run_time=FAST)
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        measure_model(model, SHAPE, repeats=0, min_run_time=FAST)


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
        "latency_b1_ms", "latency_b1_spread", "throughput_b1",
        "latency_b4_ms", "latency_b4_spread", "throughput_b4",
        "threads", "device", "memory_format",
    ]  # fmt: skip
    assert row["size_mb"] is None
    assert row["threads"] == 1
    assert row["device"] == "cpu"
    assert row["memory_format"] == "nchw"
    for n in (1, 4):
        assert row[f"latency_b{n}_ms"] == measured.latency[n].median_s * 1e3
        assert row[f"throughput_b{n}"] == n / measured.latency[n].median_s
        assert row[f"latency_b{n}_spread"] == measured.latency[n].spread
        assert len(measured.latency[n].repeat_medians_s) == 5  # the default number of repeats


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


# ----------------------------------------------------------------------------- the comparison report


def _row(name: str, b1: tuple[float, float], b128: tuple[float, float], *, params: int = 9_231_114,
         macs: int = 153_500_000, acc: float = 0.9345) -> dict:  # fmt: skip
    """A report row as the jobs make it: `Measurement.to_row()` plus name and accuracy; b1 and b128
    are (median seconds, spread)."""
    latency = {1: _latency(1, *b1), 128: _latency(128, *b128)}
    measured = Measurement(params=params, macs=macs, size_bytes=37_000_000, latency=latency)
    return {"model": name, **measured.to_row(), "test_acc": acc, "lineage": "train vgg11_bn (run) → prune"}


def _rows() -> list[dict]:
    return [
        _row("original", (0.00123, 0.02), (1.2345, 0.03)),
        _row("pruned", (0.00052, 0.35), (0.30861, 0.05), params=2_310_000, macs=38_900_000, acc=0.88),
        _row("pruned+fine-tuned", (0.00049, 0.04), (0.3125, 0.12), params=2_310_000, macs=38_900_000),
    ]


def test_comparison_table_keeps_its_columns_and_adds_the_spreads():
    table = comparison_table(_rows())
    assert list(table.columns[:11]) == [
        "model", "params", "macs", "size_mb", "latency_b1_ms", "latency_b1_spread", "latency_b128_ms",
        "latency_b128_spread", "throughput_b1", "throughput_b128", "test_acc",
    ]  # fmt: skip
    assert table["latency_b1_spread"].tolist() == [0.02, 0.35, 0.04]
    assert table["latency_reduction_b1"].tolist() == pytest.approx([1.0, 1.23 / 0.52, 1.23 / 0.49])
    # Rows without spreads (older callers) still make a table, without spread columns.
    old = comparison_table([{"model": "a", "macs": 2, "latency_b1_ms": 2.0}, {"model": "b", "macs": 1,
                                                                          "latency_b1_ms": 1.0}])  # fmt: skip
    assert "latency_b1_spread" not in old
    assert old["latency_reduction_b1"].tolist() == [1.0, 2.0]
    assert latency_warnings(old) == []


def test_latency_warnings_name_the_model_the_batch_and_the_spread():
    table = comparison_table(_rows())
    assert latency_warnings(table) == [
        "latency of pruned at batch 1 varies by 35% between repeats; treat its speed-up as noise",
        "latency of pruned+fine-tuned at batch 128 varies by 12% between repeats; treat its speed-up "
        "as noise",
    ]
    quiet = comparison_table(
        [_row("original", (0.001, 0.10), (0.1, 0.0)), _row("small", (0.0005, 0.0), (0.05, 0.1))]
    )
    assert latency_warnings(quiet) == []  # exactly 10% is not past the threshold
    noisy_base = comparison_table(
        [_row("original", (0.001, 0.5), (0.1, 0.0)), _row("small", (0.0005, 0.0), (0.05, 0))]
    )
    assert latency_warnings(noisy_base) == [
        "latency of original at batch 1 varies by 50% between repeats; treat every speed-up at batch 1 "
        "(relative to it) as noise"
    ]


def test_markdown_report_shows_latency_with_its_spread_and_warns(tmp_path):
    table = comparison_table(_rows())
    markdown = markdown_table(table)
    header = markdown.splitlines()[0]
    assert "latency_b1_ms" in header and "latency_b128_ms" in header
    assert "spread" not in header  # folded into the latency cells
    assert "| 1.23 ± 2% | 1,234 ± 3% |" in markdown.splitlines()[2]
    assert "| 0.52 ± 35% |" in markdown
    paths = write_report(table, tmp_path, "prune of vgg11_bn", ["fine-tuned 10 epochs"])
    assert [p.name for p in paths] == ["report.csv", "report.md"]
    text = (tmp_path / "report.md").read_text()
    assert "- fine-tuned 10 epochs" in text
    assert (
        "- warning: latency of pruned at batch 1 varies by 35% between repeats; treat its speed-up as noise"
        in text
    )
    assert text.count("warning:") == 2
    csv = (tmp_path / "report.csv").read_text().splitlines()[0].split(",")
    assert "latency_b1_spread" in csv and "latency_b128_spread" in csv
    quiet = comparison_table([_row("original", (0.001, 0.01), (0.1, 0.0))])
    write_report(quiet, tmp_path, "quiet", [])
    assert "warning" not in (tmp_path / "report.md").read_text()


def test_cli_report_table_fits_80_columns_with_batch_sizes_and_spreads(monkeypatch):
    recorder = Console(width=80, record=True, force_terminal=False)
    monkeypatch.setattr(cli.render, "console", recorder)  # _print_report prints there
    rows = _rows()
    rows[2]["model"] = "vgg11_bn-demo-pruned-separation+fine-tuned"  # a long run name wraps, is not cut
    cli._print_report(comparison_table(rows), "pruned runs/demo → runs/demo-pruned")
    text = recorder.export_text()
    lines = text.splitlines()
    assert "…" not in text
    assert max(len(line) for line in lines) <= 80
    header = "\n".join(lines[1:3])  # the title, then a two-line header
    for label in ("model", "params", "MACs", "ms", "test", "acc"):
        assert label in header, label
    assert header.count("speed ×") == 2
    assert header.split("\n")[1].split()[-2:] == ["b1", "b128"]  # speed-ups name their batch size
    assert "1.23±2%" in text and "1234±3%" in text and "0.52±35%" in text
    assert "2.37" in text  # speed-up of pruned at batch 1: 1.23 / 0.52
    assert "4.00" in text  # speed-up of pruned at batch 128: 1.2345 / 0.30861
    assert "separation+fine-tuned" in text.replace("\n", "")
    flat = " ".join(text.split())
    for warning in latency_warnings(comparison_table(rows)):
        assert " ".join(warning.split()) in flat


def test_channels_last_latency_times_a_channels_last_copy_and_leaves_the_model_alone():
    import torch.nn.functional as F

    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            seen.append((x.is_contiguous(memory_format=torch.channels_last),
                         self.conv.weight.is_contiguous(memory_format=torch.channels_last)))  # fmt: skip
            return F.relu(self.conv(x)).mean((2, 3))

    model = Spy()
    latency = measure_latency(model, SHAPE, 2, min_run_time=FAST, channels_last=True)
    assert latency.channels_last
    assert seen and all(x_cl and w_cl for x_cl, w_cl in seen)
    assert not model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen.clear()
    assert not measure_latency(model, SHAPE, 2, min_run_time=FAST).channels_last
    assert seen and not any(x_cl for x_cl, _ in seen)
