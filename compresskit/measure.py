"""What a model costs: parameters, multiply-accumulates, checkpoint size and latency.

The numbers feed pruning reports (original vs pruned vs fine-tuned), so every function leaves the
model it is given exactly as it found it: same weights, buffers, device and train/eval mode of
every submodule.

Latency is the median of several independent repeats, reported with their spread (`relative_iqr`),
so a speed-up measured on a busy machine shows as noise instead of passing for a result. To compare
models, time them together: `compresskit.latency` interleaves them round by round and pairs the
rounds, so a load that comes and goes does not land on one model only.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.utils import benchmark

from compresskit.models import count_parameters

WARMUP_CALLS = 3
WARMUP_SECONDS = 0.25
REPEATS = 5
NOISY_SPREAD = 0.10  # a latency whose repeats spread more than this (a fraction) is noise


def relative_iqr(values: Sequence[float]) -> float:
    """Spread of repeated measurements as a fraction of their median: (Q3 − Q1) / median, quartiles
    by linear interpolation between the sorted values (numpy's default). 0.2 means the middle half
    of the values lies in a band 20% of the median wide. A single outlier among five values does
    not count (nor does it move the median). 0.0 for fewer than two values or a zero median."""
    if len(values) < 2:
        return 0.0
    q1, median, q3 = np.quantile(np.asarray(values, dtype=np.float64), [0.25, 0.5, 0.75])
    return float((q3 - q1) / median) if median > 0 else 0.0


@dataclass(frozen=True)
class Latency:
    """Time per forward pass of one batch, from `torch.utils.benchmark`.

    The timing is split into independent repeats (``blocked_autorange`` runs); each repeat times
    blocks of back-to-back calls (as many per block as it takes to dwarf the timer overhead) and
    gives the median seconds per call over its blocks, kept in `repeat_medians_s`.

    median_s: median over the repeats of those medians, in seconds per call.
    spread: `relative_iqr` of the repeat medians, a fraction of `median_s` (0.15 = 15%); 0.0 with
    one repeat. iqr_s: interquartile range in seconds of the per-call times of all `runs` timed
    blocks of all repeats together. threads: intra-op CPU threads the timing ran with. device: e.g.
    "cpu" or "cuda:0".
    """

    batch_size: int
    median_s: float
    iqr_s: float
    runs: int
    threads: int
    device: str
    spread: float = 0.0
    repeat_medians_s: tuple[float, ...] = ()
    channels_last: bool = False  # model and input were in channels_last (NHWC) memory format

    @property
    def noisy(self) -> bool:
        """True when the repeats spread by more than `NOISY_SPREAD` (10%) of the median: a speed-up
        computed from this latency is then noise, not a measurement."""
        return self.spread > NOISY_SPREAD

    @property
    def images_per_s(self) -> float:
        """Throughput: images per second at the median time per batch."""
        return self.batch_size / self.median_s


@dataclass(frozen=True)
class Measurement:
    """Cost of one model. macs are for one input (batch size 1); latency is keyed by batch size."""

    params: int
    macs: int
    size_bytes: int | None
    latency: dict[int, Latency]

    def to_row(self) -> dict:
        """One flat table row: params, macs, size_mb (10^6 bytes, None without a checkpoint),
        latency_b{N}_ms (median), latency_b{N}_spread (`Latency.spread`, a fraction) and
        throughput_b{N} (images/s) for each batch size N in increasing order, then threads and
        device (None when no latency was measured)."""
        row: dict = {
            "params": self.params,
            "macs": self.macs,
            "size_mb": None if self.size_bytes is None else self.size_bytes / 1e6,
        }
        for n in sorted(self.latency):
            row[f"latency_b{n}_ms"] = self.latency[n].median_s * 1e3
            row[f"latency_b{n}_spread"] = self.latency[n].spread
            row[f"throughput_b{n}"] = self.latency[n].images_per_s
        first = next(iter(self.latency.values()), None)
        row["threads"] = None if first is None else first.threads
        row["device"] = None if first is None else first.device
        row["memory_format"] = None if first is None else ("channels_last" if first.channels_last else "nchw")
        return row


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in shape):
        raise ValueError(
            f"input_shape {input_shape!r} must be three positive integers (channels, height, width), "
            "without a batch dimension."
        )
    return shape  # type: ignore[return-value]


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, not {value!r}.")


def _resolve_device(device: torch.device | str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}' was asked for, but CUDA is not available here.")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _home(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU float32 for a parameter-less model)."""
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


@contextmanager
def _evaluated_on(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """The model in eval mode on `device`: a copy when any tensor must move, else the model itself
    with every submodule's train/eval flag restored on exit."""
    if any(t.device != device for t in (*model.parameters(), *model.buffers())):
        yield copy.deepcopy(model).to(device).eval()
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Operations of one forward pass on ONE input of shape `input_shape` (C, H, W; no batch dim).

    Counted by torch-pruning's counter, ``torch_pruning.utils.count_ops_and_params`` (an adaptation
    of ptflops), which runs a deep copy of the model in eval mode with forward hooks on modules of
    known types. Per module it counts:

    - Conv2d: out_h·out_w·out_c·(in_c/groups)·k_h·k_w multiply-accumulates, plus out_h·out_w·out_c
      additions for the bias when there is one;
    - Linear: in·out multiply-accumulates, plus out for the bias;
    - BatchNorm2d: 2 per input element (1 without affine); ReLU: 1 per output element;
    - MaxPool2d / AdaptiveAvgPool2d and other pools: 1 per *input* element;
    - Flatten, Dropout, and anything done functionally in ``forward``: nothing.

    So the total is the conv and linear MACs plus small element-wise terms; for VGG-style models
    the convolutions dominate. The input is zeros on the model's device, in its dtype.
    """
    shape = _check_input_shape(input_shape)
    device, dtype = _home(model)
    example = torch.zeros(1, *shape, device=device, dtype=dtype)
    ops, _ = tp.utils.count_ops_and_params(model, example)
    return int(ops)


def file_size(path: str | os.PathLike) -> int:
    """Size of the file at `path` in bytes."""
    return os.path.getsize(path)


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    min_run_time: float = 1.0,
    repeats: int = REPEATS,
    channels_last: bool = False,
) -> Latency:
    """Median wall time of ``model(x)`` for x of shape (batch_size, *input_shape) on `device`, over
    `repeats` independent repeats, with their spread (see `Latency`).

    Uses ``torch.utils.benchmark.Timer`` with `threads` intra-op threads (default: the current
    ``torch.get_num_threads()``), under ``torch.inference_mode()`` with the model in eval mode, after
    warm-up calls and up to `WARMUP_SECONDS` of untimed runs. Then `repeats` runs of
    ``blocked_autorange`` each time blocks of calls for at least ``min_run_time / repeats`` seconds,
    so `min_run_time` is the timing budget in seconds of the whole measurement (each repeat also
    times at least one block, and sizes its blocks first). On CUDA the timer synchronises the
    device around each block. The model is moved (as a copy) only if it is not already on `device`.
    With `channels_last`, a copy of the model and the input are in channels_last (NHWC) memory
    format, as compresskit trains and evaluates them (`train.resolve_precision`); the caller's
    model is left as it is.
    """
    shape = _check_input_shape(input_shape)
    _check_positive("batch_size", batch_size)
    threads = torch.get_num_threads() if threads is None else threads
    _check_positive("threads", threads)
    _check_positive("repeats", repeats)
    if not min_run_time > 0:
        raise ValueError(f"min_run_time must be a positive number of seconds, not {min_run_time!r}.")
    dev = _resolve_device(device)
    _, dtype = _home(model)
    # A private generator keeps the caller's global random state untouched.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *shape, generator=generator, dtype=dtype).to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with _evaluated_on(model, dev) as net:
        timer = benchmark.Timer(
            stmt="with torch.inference_mode():\n    model(x)",
            globals={"torch": torch, "model": net, "x": x},
            num_threads=threads,
        )
        # Warm up for a while, not for a fixed few calls: thread pools and oneDNN's kernel caches
        # take tens of milliseconds to settle after the thread count or the input shape changes.
        timer.timeit(WARMUP_CALLS)
        timer.blocked_autorange(min_run_time=min(WARMUP_SECONDS, min_run_time))
        results = [timer.blocked_autorange(min_run_time=min_run_time / repeats) for _ in range(repeats)]
    medians = tuple(float(r.median) for r in results)
    per_call = [float(t) for r in results for t in r.times]
    q1, q3 = np.quantile(per_call, [0.25, 0.75])
    return Latency(
        batch_size=batch_size,
        median_s=float(np.median(medians)),
        iqr_s=float(q3 - q1),
        runs=len(per_call),
        threads=threads,
        device=str(dev),
        spread=relative_iqr(medians),
        repeat_medians_s=medians,
        channels_last=channels_last,
    )


def measure_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch_sizes: Sequence[int] = (1, 128),
    device: torch.device | str = "cpu",
    threads: int | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    min_run_time: float = 1.0,
    repeats: int = REPEATS,
    channels_last: bool = False,
) -> Measurement:
    """Parameters, MACs per image (`count_macs`), checkpoint size in bytes (None without
    `checkpoint_path`) and latency at each batch size (`measure_latency` with `min_run_time` seconds
    of timing in `repeats` repeats; none if `batch_sizes` is empty)."""
    shape = _check_input_shape(input_shape)
    for n in batch_sizes:
        _check_positive("every batch size", n)
    threads = torch.get_num_threads() if threads is None else threads
    _check_positive("threads", threads)
    _check_positive("repeats", repeats)
    latency = {
        n: measure_latency(
            model,
            shape,
            n,
            device=device,
            threads=threads,
            min_run_time=min_run_time,
            repeats=repeats,
            channels_last=channels_last,
        )
        for n in sorted(set(batch_sizes))
    }
    return Measurement(
        params=count_parameters(model),
        macs=count_macs(model, shape),
        size_bytes=None if checkpoint_path is None else file_size(checkpoint_path),
        latency=latency,
    )
