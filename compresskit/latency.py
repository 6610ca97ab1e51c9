"""Latency and speed-ups of several models measured together, in interleaved rounds.

Timing one model after the other lets the machine's load change in between: on a 2-core VM four
reports of the same two models gave batch-128 speed-ups from 1.09× to 2.0×. Here every model is
warmed up first, then `rounds` rounds each time every model once (a block of back-to-back calls of
about ``bench_seconds / rounds`` seconds), in an order rotated every round. A slow spell then
slows every model of the round alike, so the per-round ratio ``baseline time / model time`` holds
still even when the times themselves drift.

- latency of a model: the median over rounds of its seconds per call, with the `relative_iqr` of
  its round times as spread (a `measure.Latency`, so report rows look as before);
- speed-up of a model: the median over rounds of its per-round ratios, with their relative IQR
  (a `Speedup`). The baseline (first model) has speed-up 1 with no spread.

The clock is injectable (`clock`), so the statistics are tested with a fake timer.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compresskit.measure import (
    NOISY_SPREAD,
    WARMUP_CALLS,
    WARMUP_SECONDS,
    Latency,
    Measurement,
    _check_input_shape,
    _check_positive,
    _evaluated_on,
    _home,
    _resolve_device,
    count_macs,
    file_size,
    relative_iqr,
)
from compresskit.models import count_parameters

ROUNDS = 20
MAX_BLOCK_CALLS = 100_000  # a block never grows past this, whatever a (fake) clock says
PRIMED_FROM = 10  # blocks of this many calls or more start with one untimed call
Clock = Callable[[], float]


def round_orders(models: int, rounds: int, seed: int = 0) -> list[tuple[int, ...]]:
    """The order in which `models` models (indices 0…models−1) are timed in each of `rounds` rounds:
    one order shuffled with `seed`, rotated by one place each round. Every round holds every model
    once; over a multiple of `models` rounds every model is timed in every position equally often,
    so none is always the one that runs right after a switch."""
    _check_positive("models", models)
    _check_positive("rounds", rounds)
    base = list(range(models))
    random.Random(seed).shuffle(base)
    return [tuple(base[r % models :] + base[: r % models]) for r in range(rounds)]


@dataclass(frozen=True)
class RoundTimes:
    """Raw result of an interleaved timing.

    order: per round, the model indices in the order they were timed (`round_orders`).
    calls: timed calls per block, per model (sized once, from the warm-up).
    seconds: per model, per round: seconds per call of that round's block.
    """

    order: tuple[tuple[int, ...], ...]
    calls: tuple[int, ...]
    seconds: tuple[tuple[float, ...], ...]


def _block_calls(call: Callable[[], object], warmup_seconds: float, block_seconds: float, clock: Clock,
                 sync: Callable[[], None]) -> int:  # fmt: skip
    """Warm `call` up (`WARMUP_CALLS` calls, then calls for `warmup_seconds`) and return how many
    calls make a block of about `block_seconds`, from the warm-up's time per call."""
    for _ in range(WARMUP_CALLS):
        call()
    sync()
    start, done, elapsed = clock(), 0, 0.0
    while elapsed < warmup_seconds and done < MAX_BLOCK_CALLS:
        call()
        sync()
        done += 1
        elapsed = clock() - start
    per_call = elapsed / done
    if per_call <= 0:
        return MAX_BLOCK_CALLS
    return int(min(MAX_BLOCK_CALLS, max(1, round(block_seconds / per_call))))


def _time_block(call: Callable[[], object], calls: int, clock: Clock, sync: Callable[[], None]) -> float:
    """Seconds per call of `calls` back-to-back calls. A block of `PRIMED_FROM` calls or more starts
    with one untimed call, so that the model whose turn it is finds its weights back in cache,
    whatever ran before it: that matters for short calls, and costs at most a tenth more there; a
    long call hardly feels it, and repeating it would cost as much again."""
    if calls >= PRIMED_FROM:
        call()
        sync()
    start = clock()
    for _ in range(calls):
        call()
    sync()
    return (clock() - start) / calls


def interleaved_times(
    calls: Sequence[Callable[[], object]],
    *,
    bench_seconds: float = 1.0,
    rounds: int = ROUNDS,
    seed: int = 0,
    warmup_seconds: float = WARMUP_SECONDS,
    clock: Clock = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> RoundTimes:
    """Time every callable of `calls` in `rounds` interleaved rounds (see the module docstring).

    Every callable is warmed up first (`warmup_seconds` each, at most `bench_seconds`), which also
    sizes its block to about ``bench_seconds / rounds`` seconds; then each round times one block
    of each, in the round's `round_orders` order. So each callable gets about `bench_seconds` of
    timing (at least one call per round) plus the warm-up. `clock` gives seconds; `sync` runs
    before every clock reading that closes a timed stretch (a CUDA synchronize)."""
    if not calls:
        raise ValueError("calls must hold at least one callable.")
    _check_positive("rounds", rounds)
    if not bench_seconds > 0:
        raise ValueError(f"bench_seconds must be a positive number of seconds, not {bench_seconds!r}.")
    block_seconds = bench_seconds / rounds
    warm = min(warmup_seconds, bench_seconds)
    sizes = tuple(_block_calls(call, warm, block_seconds, clock, sync) for call in calls)
    order = round_orders(len(calls), rounds, seed)
    seconds: list[list[float]] = [[] for _ in calls]
    for turn in order:
        for i in turn:
            seconds[i].append(_time_block(calls[i], sizes[i], clock, sync))
    return RoundTimes(tuple(order), sizes, tuple(tuple(s) for s in seconds))


@dataclass(frozen=True)
class Speedup:
    """How many times faster a model ran than the baseline, from paired rounds.

    ratios: per round, baseline seconds per call / this model's seconds per call in that round.
    median: the median of `ratios` (2.0 = twice as fast). q1, q3: their quartiles (numpy's linear
    interpolation). spread: (q3 − q1) / median, `measure.relative_iqr` of the ratios.
    """

    median: float
    spread: float
    q1: float
    q3: float
    ratios: tuple[float, ...]

    @property
    def noisy(self) -> bool:
        """True when the per-round ratios spread by more than `measure.NOISY_SPREAD` (10%)."""
        return self.spread > NOISY_SPREAD


def paired_speedups(seconds: Sequence[Sequence[float]], baseline: int = 0) -> list[Speedup]:
    """The `Speedup` of every model against model `baseline`, from per-model per-round seconds
    (``seconds[model][round]``, as in `RoundTimes`); every model must have the same rounds."""
    if not seconds or len({len(s) for s in seconds}) != 1 or not len(seconds[0]):
        raise ValueError("seconds must be one non-empty list of round times per model, all as long.")
    times = np.asarray(seconds, dtype=np.float64)
    if (times <= 0).any():
        raise ValueError("every round time must be positive.")
    speedups = []
    for row in times[baseline] / times:
        q1, median, q3 = np.quantile(row, [0.25, 0.5, 0.75])
        ratios = tuple(float(r) for r in row)
        speedups.append(Speedup(float(median), relative_iqr(ratios), float(q1), float(q3), ratios))
    return speedups


def round_latency(seconds: Sequence[float], batch_size: int, *, threads: int, device: str,
                  channels_last: bool = False) -> Latency:  # fmt: skip
    """A `measure.Latency` from one model's round times (seconds per call, one per round): median
    over rounds, `relative_iqr` spread, `iqr_s` the rounds' interquartile range in seconds."""
    values = np.asarray(seconds, dtype=np.float64)
    q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])
    return Latency(
        batch_size=batch_size,
        median_s=float(median),
        iqr_s=float(q3 - q1),
        runs=len(values),
        threads=threads,
        device=device,
        spread=relative_iqr(list(values)),
        repeat_medians_s=tuple(float(v) for v in values),
        channels_last=channels_last,
    )


@dataclass(frozen=True)
class Comparison:
    """Latencies and speed-ups of several models at one batch size, measured together."""

    latencies: tuple[Latency, ...]
    speedups: tuple[Speedup, ...]
    times: RoundTimes


def _shapes(input_shape: Sequence, count: int) -> list[tuple[int, int, int]]:
    """One (C, H, W) per model: `input_shape` is one shape for all or a sequence of one per model."""
    if input_shape and all(isinstance(d, int) for d in input_shape):
        return [_check_input_shape(input_shape)] * count
    shapes = [_check_input_shape(s) for s in input_shape]
    if len(shapes) != count:
        raise ValueError(f"input_shape lists {len(shapes)} shapes for {count} models.")
    return shapes


def compare_latency(
    models: Sequence[nn.Module],
    input_shape: Sequence,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    bench_seconds: float = 1.0,
    rounds: int = ROUNDS,
    seed: int = 0,
    channels_last: bool = False,
    clock: Clock = time.perf_counter,
) -> Comparison:
    """Time ``model(x)`` of every model in `models` (x: batch_size × its input shape, random, in the
    model's dtype) in interleaved rounds (`interleaved_times`), under ``torch.inference_mode()`` in
    eval mode with `threads` intra-op threads (default: the current count; restored after). The
    first model is the baseline of the speed-ups. Models are copied only to move them to `device`
    or (with `channels_last`) to channels_last; the caller's models are left as they were."""
    if not models:
        raise ValueError("models must hold at least one model.")
    shapes = _shapes(input_shape, len(models))
    _check_positive("batch_size", batch_size)
    threads = torch.get_num_threads() if threads is None else threads
    _check_positive("threads", threads)
    dev = _resolve_device(device)
    generator = torch.Generator().manual_seed(0)  # leaves the global random state alone
    before = torch.get_num_threads()
    with ExitStack() as stack:
        calls = []
        for model, shape in zip(models, shapes, strict=True):
            x = torch.randn(batch_size, *shape, generator=generator, dtype=_home(model)[1]).to(dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
                model = copy.deepcopy(model).to(memory_format=torch.channels_last)
            net = stack.enter_context(_evaluated_on(model, dev))
            calls.append(lambda net=net, x=x: net(x))
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                times = interleaved_times(calls, bench_seconds=bench_seconds, rounds=rounds, seed=seed,
                                          clock=clock, sync=sync)  # fmt: skip
        finally:
            torch.set_num_threads(before)
    latencies = tuple(
        round_latency(s, batch_size, threads=threads, device=str(dev), channels_last=channels_last)
        for s in times.seconds
    )
    return Comparison(latencies, tuple(paired_speedups(times.seconds)), times)


@dataclass(frozen=True)
class ComparedMeasurement:
    """A `measure.Measurement` of one model plus its speed-up over the first model measured with
    it, keyed by batch size."""

    measurement: Measurement
    speedup: dict[int, Speedup] = field(default_factory=dict)
    rounds: int = 0

    def to_row(self) -> dict:
        """`Measurement.to_row()` plus speedup_b{N} (median per-round ratio), speedup_b{N}_spread
        (relative IQR of the ratios) per batch size N, and rounds."""
        row = self.measurement.to_row()
        for n in sorted(self.speedup):
            row[f"speedup_b{n}"] = self.speedup[n].median
            row[f"speedup_b{n}_spread"] = self.speedup[n].spread
        row["rounds"] = self.rounds
        return row


def measure_models(
    models: Sequence[nn.Module],
    input_shape: Sequence,
    *,
    batch_sizes: Sequence[int] = (1, 128),
    device: torch.device | str = "cpu",
    threads: int | None = None,
    checkpoint_paths: Sequence[str | Path | None] | None = None,
    bench_seconds: float = 1.0,
    rounds: int = ROUNDS,
    seed: int = 0,
    channels_last: bool = False,
    clock: Clock = time.perf_counter,
) -> list[ComparedMeasurement]:
    """Parameters, MACs per image, checkpoint size (None without a path) of every model, and at each
    batch size their latencies and speed-ups over the first, measured together (`compare_latency`,
    `bench_seconds` of timing per model and batch size). One entry per model, in order."""
    shapes = _shapes(input_shape, len(models))
    paths = list(checkpoint_paths) if checkpoint_paths is not None else [None] * len(models)
    if len(paths) != len(models):
        raise ValueError(f"checkpoint_paths lists {len(paths)} paths for {len(models)} models.")
    for n in batch_sizes:
        _check_positive("every batch size", n)
    options = {"device": device, "threads": threads, "bench_seconds": bench_seconds, "rounds": rounds,
               "seed": seed, "channels_last": channels_last, "clock": clock}  # fmt: skip
    compared = {n: compare_latency(models, shapes, n, **options) for n in sorted(set(batch_sizes))}
    return [
        ComparedMeasurement(
            Measurement(
                params=count_parameters(model),
                macs=count_macs(model, shape),
                size_bytes=None if path is None else file_size(path),
                latency={n: c.latencies[i] for n, c in compared.items()},
            ),
            speedup={n: c.speedups[i] for n, c in compared.items()},
            rounds=rounds,
        )
        for i, (model, shape, path) in enumerate(zip(models, shapes, paths, strict=True))
    ]


def describe(rows: Sequence[dict]) -> str:
    """One sentence for a report's notes on how the latencies and speed-ups of `rows` (with
    ``device``, ``threads``, ``rounds``, ``memory_format`` columns) were measured."""
    first = rows[0] if rows else {}
    layout = "channels_last" if first.get("memory_format") == "channels_last" else "NCHW"
    return (
        f"latency: {first.get('rounds')} interleaved rounds on {first.get('device')} with "
        f"{first.get('threads')} threads, models and inputs {layout}; every model timed once per round "
        "(order rotated each round) after all were warmed up; latency = median over rounds ± relative "
        "IQR; speedup_bN = median over rounds of baseline time / model time in the same round ± "
        "relative IQR of those ratios"
    )
