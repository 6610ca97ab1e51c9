"""Interleaved latency (`compresskit.latency`): the round order, the per-round statistics checked by
hand with a fake clock, real models end to end, and the report columns it feeds."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pandas as pd
import pytest
import torch

from compresskit import cli
from compresskit.latency import (
    MAX_BLOCK_CALLS,
    PRIMED_FROM,
    ROUNDS,
    ComparedMeasurement,
    describe,
    interleaved_times,
    measure_models,
    paired_speedups,
    round_latency,
    round_orders,
)
from compresskit.measure import WARMUP_CALLS, Latency, Measurement
from compresskit.models import build_model, make_spec
from compresskit.report import comparison_table, latency_warnings, markdown_table, write_report

SHAPE = (3, 32, 32)


class FakeClock:
    """A clock that only moves when a fake model runs: `model(i)` is a callable that advances it by
    model i's cost (seconds) times `load` (the machine's slowness, 1 by default), and logs i."""

    def __init__(self, costs: list[float]) -> None:
        self.now = 0.0
        self.costs = costs
        self.load = 1.0
        self.log: list[int] = []

    def __call__(self) -> float:
        return self.now

    def model(self, i: int):
        def call() -> None:
            self.now += self.costs[i] * self.load
            self.log.append(i)

        return call


def test_round_orders_time_every_model_once_per_round_in_rotated_order():
    orders = round_orders(4, 8, seed=3)
    assert len(orders) == 8
    for order in orders:
        assert sorted(order) == [0, 1, 2, 3]
    for r in range(1, 8):  # each round is the one before, rotated left by one place
        assert orders[r] == orders[r - 1][1:] + orders[r - 1][:1]
    # over a multiple of the model count, every model holds every position equally often
    for position in range(4):
        assert sorted(order[position] for order in orders) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert round_orders(4, 8, seed=3) == orders  # a fixed seed, a fixed order
    assert {round_orders(4, 1, seed=s)[0] for s in range(20)} != {orders[0]}  # the seed shuffles
    assert round_orders(1, 3) == [(0,), (0,), (0,)]
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        round_orders(2, 0)


# Costs that are powers of two add up exactly in floating point, so the call counts below are exact.
COSTS = (1 / 128, 1 / 32, 1 / 64)  # seconds per call of three fake models
WARM = 0.1  # seconds of warm-up: ceil(0.1 / cost) = 13, 4, 7 calls after the WARMUP_CALLS


def test_interleaved_times_runs_the_blocks_in_the_round_order():
    clock = FakeClock(list(COSTS))
    times = interleaved_times(
        [clock.model(i) for i in range(3)],
        bench_seconds=0.4,
        rounds=4,
        seed=1,
        warmup_seconds=WARM,
        clock=clock,
    )
    # blocks of about 0.4 / 4 = 0.1 s: round(12.8), round(3.2), round(6.4) calls
    assert times.calls == (13, 3, 6)
    assert times.order == tuple(round_orders(3, 4, seed=1))
    # first every model is warmed up in turn …
    warmup = [i for i, c in enumerate(COSTS) for _ in range(WARMUP_CALLS + math.ceil(WARM / c))]
    assert clock.log[: len(warmup)] == warmup
    # … then each round runs one block per model in the round's order: the timed calls, after one
    # untimed call in blocks of PRIMED_FROM calls or more (model 0's 13 here)
    primed = [int(n >= PRIMED_FROM) for n in times.calls]
    assert primed == [1, 0, 0]
    blocks = [i for order in times.order for i in order for _ in range(primed[i] + times.calls[i])]
    assert clock.log[len(warmup) :] == blocks
    for i, cost in enumerate(COSTS):
        assert times.seconds[i] == pytest.approx((cost,) * 4)


def test_per_round_ratios_cancel_a_load_that_changes_between_rounds():
    """The machine is two or three times as slow in some rounds: every model's time moves, but
    within a round both move together, so the paired speed-up does not."""
    loads = [1.0, 2.0, 3.0, 1.0, 2.0]
    costs = [1 / 64, 1 / 256]
    sizes = (3, 10)  # blocks of 0.2 / 5 = 0.04 s: round(2.56), round(10.24) calls
    order = round_orders(2, 5)
    # the call count at which each round's first block starts: the load switches there
    position = sum(WARMUP_CALLS + math.ceil(WARM / c) for c in costs)
    switch = {}
    for load, turn in zip(loads, order, strict=True):
        switch[position] = load
        position += sum(int(sizes[i] >= PRIMED_FROM) + sizes[i] for i in turn)
    clock = FakeClock(costs)

    def loaded(i: int):
        run = clock.model(i)

        def call() -> None:
            clock.load = switch.get(len(clock.log), clock.load)
            run()

        return call

    times = interleaved_times([loaded(0), loaded(1)], bench_seconds=0.2, rounds=5, warmup_seconds=WARM,
                              clock=clock)  # fmt: skip
    assert times.calls == sizes
    assert times.seconds[0] == pytest.approx(tuple(costs[0] * load for load in loads))
    assert times.seconds[1] == pytest.approx(tuple(costs[1] * load for load in loads))
    base, fast = paired_speedups(times.seconds)
    assert fast.ratios == pytest.approx((4.0,) * 5)
    assert fast.median == pytest.approx(4.0) and fast.spread == pytest.approx(0.0)
    assert base.median == 1.0 and base.spread == 0.0
    # the latencies themselves move with the load: sorted loads 1 1 2 2 3 → median 2, IQR 1 → 50%
    latency = round_latency(times.seconds[1], 128, threads=1, device="cpu")
    assert latency.median_s == pytest.approx(2 * costs[1])
    assert latency.spread == pytest.approx(0.5)


def test_paired_speedups_by_hand():
    seconds = [
        [0.010, 0.012, 0.020, 0.011, 0.010],  # baseline
        [0.005, 0.004, 0.010, 0.0055, 0.0040],  # ratios 2, 3, 2, 2, 2.5
    ]
    base, other = paired_speedups(seconds)
    assert other.ratios == pytest.approx((2.0, 3.0, 2.0, 2.0, 2.5))
    # sorted 2 2 2 2.5 3: median 2, Q1 2, Q3 2.5 → spread 0.5 / 2 = 25%
    assert other.median == pytest.approx(2.0)
    assert (other.q1, other.q3) == pytest.approx((2.0, 2.5))
    assert other.spread == pytest.approx(0.25)
    assert other.noisy
    # paired by round, not the ratio of the median times: 11 ms / 5 ms = 2.2
    assert np.median(seconds[0]) / np.median(seconds[1]) == pytest.approx(2.2)
    assert base.ratios == (1.0,) * 5 and not base.noisy
    # the baseline can be any model
    assert paired_speedups(seconds, baseline=1)[0].median == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        paired_speedups([[0.01, 0.0], [0.01, 0.01]])
    with pytest.raises(ValueError, match="all as long"):
        paired_speedups([[0.01, 0.01], [0.01]])


def test_round_latency_is_the_median_over_rounds_with_its_spread():
    latency = round_latency([0.012, 0.008, 0.011, 0.009, 0.010], 4, threads=2, device="cpu",
                            channels_last=True)  # fmt: skip
    assert isinstance(latency, Latency)
    assert latency.median_s == pytest.approx(0.010)
    assert latency.spread == pytest.approx(0.2)  # Q1 9, Q3 11 ms
    assert latency.iqr_s == pytest.approx(0.002)
    assert latency.runs == 5 and latency.threads == 2 and latency.channels_last
    assert latency.repeat_medians_s == pytest.approx((0.012, 0.008, 0.011, 0.009, 0.010))


def test_a_clock_that_never_moves_gives_bounded_blocks():
    times = interleaved_times([lambda: None], bench_seconds=0.1, rounds=2, clock=lambda: 0.0)
    assert times.calls == (MAX_BLOCK_CALLS,)
    with pytest.raises(ValueError, match="bench_seconds"):
        interleaved_times([lambda: None], bench_seconds=0.0)
    with pytest.raises(ValueError, match="at least one"):
        interleaved_times([])


def test_measure_models_of_real_models_leaves_them_alone_and_makes_rows():
    big = build_model(make_spec("cnn", 10, width=0.25), seed=0)
    small = build_model(make_spec("cnn", 10, width=0.125), seed=0)
    before = {k: v.clone() for k, v in big.state_dict().items()}
    big.train()
    threads = torch.get_num_threads()
    measured = measure_models([big, small], SHAPE, batch_sizes=(2, 1), threads=1, bench_seconds=0.04,
                              rounds=2, channels_last=True)  # fmt: skip
    assert torch.get_num_threads() == threads
    assert big.training
    assert all(torch.equal(v, big.state_dict()[k]) for k, v in before.items())
    assert not any(
        p.is_contiguous(memory_format=torch.channels_last) for p in big.parameters() if p.ndim == 4
    )
    assert [m.measurement.params for m in measured] == [
        sum(p.numel() for p in model.parameters()) for model in (big, small)
    ]
    assert measured[0].measurement.macs > measured[1].measurement.macs
    row = measured[1].to_row()
    for n in (1, 2):
        assert row[f"latency_b{n}_ms"] > 0
        assert row[f"speedup_b{n}"] > 0 and row[f"speedup_b{n}_spread"] >= 0
        assert len(measured[1].measurement.latency[n].repeat_medians_s) == 2
        assert measured[0].speedup[n].median == 1.0
    assert row["rounds"] == 2 and row["threads"] == 1 and row["memory_format"] == "channels_last"
    with pytest.raises(ValueError, match="2 shapes for 1 models"):
        measure_models([big], [SHAPE, SHAPE], batch_sizes=(1,))
    with pytest.raises(ValueError, match="every batch size"):
        measure_models([big], SHAPE, batch_sizes=(0,))


def _compared_row(name: str, median_ms: float, speedup: tuple[float, float]) -> dict:
    from compresskit.latency import Speedup

    latency = {n: round_latency([median_ms / 1e3] * 3, n, threads=1, device="cpu") for n in (1, 128)}
    measured = ComparedMeasurement(
        Measurement(params=1000, macs=2000, size_bytes=None, latency=latency),
        speedup={n: Speedup(speedup[0], speedup[1], 0.0, 0.0, ()) for n in (1, 128)},
        rounds=3,
    )
    return {"model": name, **measured.to_row(), "test_acc": 0.9}


def test_report_tables_carry_the_paired_speedups_and_their_spread(tmp_path):
    rows = [_compared_row("base", 2.0, (1.0, 0.0)), _compared_row("small", 1.0, (1.8, 0.25))]
    table = comparison_table(rows)
    assert {"speedup_b1", "speedup_b1_spread", "speedup_b128", "speedup_b128_spread"} <= set(table)
    # the old ratio of medians stays, beside the paired speed-up
    assert table["latency_reduction_b1"].tolist() == pytest.approx([1.0, 2.0])
    assert table["speedup_b1"].tolist() == pytest.approx([1.0, 1.8])
    markdown = markdown_table(table)
    assert "| 1.8 ± 25% |" in markdown
    assert "speedup_b1_spread" not in markdown.splitlines()[0]
    assert latency_warnings(table) == [
        "speed-up of small at batch 1 varies by 25% between rounds; treat it as noise",
        "speed-up of small at batch 128 varies by 25% between rounds; treat it as noise",
    ]
    write_report(table, tmp_path, "t", [describe(rows)])
    csv = pd.read_csv(tmp_path / "report.csv")
    for column in ("speedup_b1", "speedup_b1_spread", "speedup_b128", "speedup_b128_spread"):
        assert column in csv, column
    assert "3 interleaved rounds" in (tmp_path / "report.md").read_text()


def test_a_noisy_latency_with_paired_speedups_does_not_condemn_the_speedup():
    rows = [_compared_row("base", 2.0, (1.0, 0.0)), _compared_row("small", 1.0, (2.0, 0.02))]
    rows[1]["latency_b1_spread"] = 0.3
    assert latency_warnings(comparison_table(rows)) == [
        "latency of small at batch 1 varies by 30% between rounds; treat its absolute time as noise "
        "(its speed-up pairs the rounds: see the speed-up's own spread)"
    ]


def test_the_cli_shows_the_paired_speedup_with_its_spread(monkeypatch):
    from rich.console import Console

    recorder = Console(width=80, record=True, force_terminal=False)
    monkeypatch.setattr(cli.render, "console", recorder)  # _print_report prints there
    rows = [_compared_row("base", 2.0, (1.0, 0.0)), _compared_row("small", 1.0, (1.8, 0.04))]
    cli._print_report(comparison_table(rows), "t")
    text = recorder.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "1.80±4%" in text  # not the ratio of medians, 2.00
    assert inspect.signature(cli.report).parameters["rounds"].default.default == ROUNDS
