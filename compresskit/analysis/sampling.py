"""The samples an analysis reads, from any iterable of ``(images, labels)`` batches.

`collect_samples` reads a loader (a torch ``DataLoader``, a list of batches, a generator…) exactly
once, so a shuffled loader or a one-shot generator is fine, and keeps on the host either every
sample or a class-balanced random subset; `SampleBatches` hands them out again, in fixed batches on
the model's device, as often as the analysis's forward passes need them.

The subset follows `data.balanced_subset`'s rule (k classes: ``samples // k`` from each class, one
more from ``samples % k`` classes picked at random, all of a class that has fewer) without holding
the whole loader: every sample gets a random key from a generator seeded with `seed`, and each
class keeps only its samples with the smallest keys, at most ``ceil(samples / classes seen so
far)`` of them, so the host holds about ``2 × (samples + k)`` images at any time. The same loader
order and seed give the same subset; a shuffled loader gives another subset on each call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import overload

import torch

from compresskit.errors import CompresskitError


class SampleBatches(Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """Fixed batches of host-held `images` (n×…) and `labels` (n, int64), each moved to `device`
    when it is read: the same samples in the same order every time (what `analysis.layer_table`
    needs, since it reads its batches once per forward pass)."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device | str = "cpu"
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.device = torch.device(device)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    @overload
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[torch.Tensor, torch.Tensor]]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        start = (index % len(self)) * self.batch_size
        rows = slice(start, start + self.batch_size)
        return self.images[rows].to(self.device), self.labels[rows].to(self.device)


def collect_samples(
    loader: Iterable, *, samples: int | None = None, seed: int = 0, name: str = "loader"
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Read `loader` once: ``(images n×… float, labels n int64, largest batch size)``, on the host,
    in the order the loader yielded them. With `samples`, a class-balanced random subset of that
    size (see the module docstring); without, every sample. `name` is the parameter named in errors.
    """
    try:
        batches = iter(loader)
    except TypeError:
        raise CompresskitError(
            f"{name} must be an iterable of (images, labels) batches, got {type(loader).__name__}."
        ) from None
    pool = _Pool(samples, seed)
    shape: tuple[int, ...] | None = None
    largest = 0
    for batch in batches:
        x, y = _check_batch(batch, name)
        if shape is not None and tuple(x.shape[1:]) != shape:
            raise CompresskitError(
                f"{name} yielded images of shape {tuple(x.shape[1:])} after images of shape {shape}; "
                "every sample must have the same shape."
            )
        shape, largest = tuple(x.shape[1:]), max(largest, len(y))
        pool.add(x.detach().cpu(), y.detach().to("cpu", torch.int64))
    if largest == 0:
        raise CompresskitError(f"{name} yielded no samples; give it at least one batch of images.")
    images, labels = pool.result(name)
    return images, labels, largest


def _check_batch(batch: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise CompresskitError(
            f"{name} must yield (images, labels) pairs, got a {type(batch).__name__}"
            + (f" of {len(batch)} items." if isinstance(batch, (tuple, list)) else ".")
        )
    x, y = batch
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.dim() < 2:
        what = type(x).__name__
        if isinstance(x, torch.Tensor):
            what = f"{x.dtype} tensor of shape {tuple(x.shape)}"
        raise CompresskitError(
            f"{name} must yield images as a floating-point tensor N×… (normalised as the model "
            f"expects), got a {what}."
        )
    integer = isinstance(y, torch.Tensor) and not (y.dtype.is_floating_point or y.dtype.is_complex)
    if not integer or y.dtype == torch.bool:
        what = f"{y.dtype} tensor" if isinstance(y, torch.Tensor) else type(y).__name__
        raise CompresskitError(f"{name} must yield labels as an integer tensor (int64), got a {what}.")
    if y.dim() != 1 or len(y) != len(x):
        raise CompresskitError(
            f"{name} yielded labels of shape {tuple(y.shape)} for {len(x)} images; give one label per image."
        )
    return x, y


class _Pool:
    """Samples kept so far: all of them, or (with `samples`) each class's smallest random keys."""

    def __init__(self, samples: int | None, seed: int) -> None:
        self.samples = samples
        self.generator = torch.Generator().manual_seed(seed)
        self.chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # images, labels, keys
        self.kept = 0
        self.classes = torch.empty(0, dtype=torch.int64)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        keys = torch.rand(len(y), generator=self.generator, dtype=torch.float64)
        self.chunks.append((x, y, keys))
        self.kept += len(y)
        if self.samples is None:
            return
        self.classes = torch.unique(torch.cat([self.classes, y]))
        if self.kept > 2 * (self.samples + len(self.classes)):
            cap = math.ceil(self.samples / len(self.classes))
            self._keep(lambda labels: torch.full_like(labels, cap))

    def result(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.samples is not None:
            k = len(self.classes)
            if self.samples < k:
                raise CompresskitError(
                    f"samples {self.samples} is too small: {name} has {k} classes and each needs one sample."
                )
            extra = self.classes[torch.randperm(k, generator=self.generator)[: self.samples % k]]
            self._keep(lambda labels: self.samples // k + torch.isin(labels, extra).long())
        elif len(self.chunks) > 1:
            images, labels = torch.cat([c[0] for c in self.chunks]), torch.cat([c[1] for c in self.chunks])
            self.chunks = [(images, labels, torch.empty(0))]
        return self.chunks[0][0], self.chunks[0][1]

    def _keep(self, quota) -> None:
        """Consolidate the chunks, keeping per class the samples with the smallest keys, at most
        ``quota(labels)`` of each sample's class, in their original order."""
        x, y, keys = (torch.cat(parts) for parts in zip(*self.chunks, strict=True))
        by_key = torch.argsort(keys, stable=True)
        grouped = by_key[torch.sort(y[by_key], stable=True).indices]  # by class, smallest keys first
        counts = torch.unique_consecutive(y[grouped], return_counts=True)[1]
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        rank = torch.arange(len(grouped)) - first
        chosen = grouped[rank < quota(y[grouped])].sort().values
        self.chunks = [(x[chosen], y[chosen], keys[chosen])]
        self.kept = len(chosen)
