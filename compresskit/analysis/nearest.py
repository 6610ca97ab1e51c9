"""The nearest-point searches behind the separation metrics (`compresskit.analysis.separation`):
each sample's nearest class centre (CSI) and its nearest other samples (SI), in float64.

Distances come from the fast expansion ‖a‖² + ‖b‖² − 2a·b on centred features (`_distance_block`,
the one place a block of distances is made); wherever its rounding error could change which
candidates are nearest, the candidates are recomputed exactly as Σ(a − b)² on the original
features, so exact ties are broken the way a plain double loop breaks them (lowest index first).
Features are converted to float64 a bounded chunk at a time through one reused buffer
(`float64_rows`), and SI's search holds at most ``chunk_size``×n distances at a time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import numpy as np
import torch

# Bound on the float64 error of the expansion, relative to ‖a‖² + max‖b‖² of the centred data. The
# rounding error of a d-term float64 dot product is about d·2⁻⁵³ at worst and √d·2⁻⁵³ in practice,
# so 1e-9 is generous for any realistic width and costs only a few exact recomputations.
_REL_TOL = 1e-9
_ABS_TOL = 1e-300

# Streaming CSI converts each batch to float64 this many values at a time, into one reused buffer:
# a fresh n×d float64 copy per batch and layer cost more in first-touch page faults than its
# arithmetic (1 GiB of such copies took ~8 s on a 2-core CPU, the arithmetic well under 1 s).
_CHUNK_VALUES = 1 << 20  # 8 MiB of float64


def _distance_block(
    rows: torch.Tensor, rows_sq: torch.Tensor, others: torch.Tensor, others_sq: torch.Tensor
) -> torch.Tensor:
    """Approximate squared distances m×p between rows m×d and others p×d (float64), by the expansion
    ‖a‖² + ‖b‖² − 2a·b; rows_sq and others_sq are the squared norms. The only place a block of
    distances is made."""
    block = rows @ others.T
    return block.mul_(-2.0).add_(rows_sq[:, None]).add_(others_sq[None, :])


def nearest_centres(x: torch.Tensor, centres: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Index (n, int64) of the nearest of the k centres (k×d float64) for each sample of x n×… (any
    float dtype, d values per sample); ties → lowest index."""
    cc = centres - mean
    c_sq = (cc * cc).sum(1)
    nearest = torch.empty(len(x), dtype=torch.int64, device=centres.device)
    for start, rows in float64_rows(x, copy=True):
        xc = rows.sub_(mean)  # a scratch copy: centred in place
        x_sq = (xc * xc).sum(1)
        approx = _distance_block(xc, x_sq, cc, c_sq)
        best, near = approx.min(1)
        tol = _REL_TOL * (x_sq + c_sq.max()) + _ABS_TOL
        candidates = approx <= (best + tol)[:, None]
        for i in (candidates.sum(1) > 1).nonzero().flatten().tolist():
            js = candidates[i].nonzero().flatten()
            exact = ((centres[js] - x[start + i].reshape(-1).double()) ** 2).sum(1)
            near[i] = js[(exact == exact.min()).nonzero()[0, 0]]
        nearest[start : start + len(near)] = near
    return nearest


class _Scratch(threading.local):
    """One float64 buffer per thread and device, reused by `float64_rows`."""

    buffers: dict[torch.device, torch.Tensor]

    def __init__(self) -> None:
        self.buffers = {}

    def get(self, numel: int, device: torch.device) -> torch.Tensor:
        buffer = self.buffers.get(device)
        if buffer is None or buffer.numel() < numel:
            with torch.inference_mode(False):  # a normal tensor: in-place use inside and outside it
                buffer = self.buffers[device] = torch.empty(numel, dtype=torch.float64, device=device)
        return buffer[:numel]


_SCRATCH = _Scratch()


def float64_rows(x: torch.Tensor, *, copy: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, rows)`` over the samples of x n×… (any layout and float dtype): rows m×d float64,
    each sample's values in row-major (C) order, at most `_CHUNK_VALUES` values per chunk on the CPU.
    The rows are a reused buffer, valid until the next chunk is asked for; with `copy` they are a
    buffer even when x is already float64 (so the caller may change them in place). On other devices
    the whole batch is one chunk (their allocators cache, so there is no page-fault cost to save)."""
    n, dim = len(x), math.prod(x.shape[1:])
    if x.device.type != "cpu":
        rows = x.reshape(n, dim).to(torch.float64, copy=copy)
        yield 0, rows
        return
    if x.dtype == torch.float64 and not copy and x.is_contiguous():
        yield 0, x.reshape(n, dim)
        return
    step = max(1, _CHUNK_VALUES // max(dim, 1))
    buffer = _SCRATCH.get(min(step, n) * dim, x.device)
    for start in range(0, n, step):
        part = x[start : start + step]
        rows = buffer[: len(part) * dim]
        rows.view(part.shape).copy_(part)
        yield start, rows.view(len(part), dim)


def neighbour_agreement(x: torch.Tensor, y: torch.Tensor, order: int, chunk_size: int) -> torch.Tensor:
    """For each sample of x n×d (float64), how many of its `order` nearest other samples (sorted by
    (distance, index)) share its label y: int64, n."""
    n = len(y)
    if n < 2:
        raise ValueError(f"SI needs at least two samples (each is compared with its nearest other), got {n}.")
    _require_two_classes("SI", y)
    if not _is_int(order) or not 1 <= order <= n - 1:
        raise ValueError(
            f"order must be an integer from 1 to n - 1 = {n - 1} (the other samples), got {order!r}."
        )
    if not _is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer (query rows per block), got {chunk_size!r}.")
    order, chunk_size = int(order), int(chunk_size)
    xc = x - x.mean(0)  # translation-invariant; shrinks the norms, hence the expansion's cancellation
    sq = (xc * xc).sum(1)
    sq_max = sq.max()
    agree = torch.empty(n, dtype=torch.int64, device=x.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        local = torch.arange(stop - start, device=x.device)
        block = _distance_block(xc[start:stop], sq[start:stop], xc, sq)
        block[local, local + start] = torch.inf
        kth, neighbours = torch.topk(block, order, dim=1, largest=False)
        tol = _REL_TOL * (sq[start:stop] + sq_max) + _ABS_TOL
        candidates = block <= (kth[:, -1] + tol)[:, None]
        # More candidates than `order` → near-ties at the boundary: settle them on exact distances.
        for i in (candidates.sum(1) > order).nonzero().flatten().tolist():
            js = candidates[i].nonzero().flatten()
            exact = ((x[js] - x[start + i]) ** 2).sum(1)
            neighbours[i] = js[torch.sort(exact, stable=True).indices[:order]]
        agree[start:stop] = (y[neighbours] == y[start:stop, None]).sum(1)
    return agree


def _require_two_classes(metric: str, labels: torch.Tensor) -> None:
    classes = torch.unique(labels)
    if len(classes) < 2:
        raise ValueError(one_class_message(metric, classes))


def one_class_message(metric: str, classes: torch.Tensor) -> str:
    """Why `metric` (CSI, SI) refuses labels of fewer than two classes (`classes`, their values)."""
    return f"{metric} needs at least two classes, but the labels hold only {classes.tolist()}."


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
