"""`Loader`: batches from uint8 images kept on the model's device, augmented there, sharded under
`torch.distributed`; and `balanced_loader`, the plain loader over a class-balanced subset that the
analysis, calibration and CSI jobs read.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from compresskit.data.augment import (
    Augmentation,
    Rows,
    random_crop,
    random_cutout,
    random_flip,
    random_jitter,
    random_rotate,
)
from compresskit.data.dataset import ImageSplit
from compresskit.data.split import balanced_subset
from compresskit.distributed import shard
from compresskit.errors import ParameterError


class Loader:
    """Batches from uint8 images kept on `device`; augmentation runs on whole batches there.

    Yields ``(x, y)``: x float32 B×C×H×W normalised with `mean`/`std`, y int64 B. All randomness
    (order, crops, flips, …) comes from one CPU `torch.Generator` seeded with `seed`, so two
    loaders built alike yield identical batches, epoch after epoch.

    Augmentation order: crop on the uint8 batch; then, as float32 in 0..255 units (before
    normalisation), flip, rotate (zero = black fill) and jitter; normalisation; cutout last (its
    zero is the dataset mean). A part that is off draws nothing from the generator.

    Sharded (`world_size` > 1, one loader per process of `torch.distributed`): `batch_size` is the
    global batch. Every rank draws the same order from the same seed and cuts the same global
    batches; rank `rank` yields its contiguous share of each (`distributed.shard`: disjoint, all
    shares together the global batch, sizes differing by at most one), augmented with the random
    numbers one process would have drawn for those images. A shuffled (training) loader drops a
    last global batch smaller than `world_size`, so every rank takes the same number of steps; an
    unshuffled (evaluation) loader keeps every image and skips a rank's empty share.
    """

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: Augmentation | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size <= 0:
            raise ParameterError(f"{{0}} must be a positive integer; got {batch_size}.", "batch_size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.batch_size = batch_size
        self.augment = augment or Augmentation()
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.generator = torch.Generator().manual_seed(seed)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255.0

    def __len__(self) -> int:
        """Steps per epoch: global batches (the same number on every rank)."""
        return len(self.global_batch_sizes())

    def global_batch_sizes(self) -> list[int]:
        """The size of every global batch of an epoch, over all ranks (see the class notes)."""
        n, b = len(self.labels), self.batch_size
        sizes = [b] * (n // b) + ([n % b] if n % b and not self.drop_last else [])
        if self.world_size > 1 and self.shuffle and sizes and sizes[-1] < self.world_size:
            sizes.pop()
        return sizes

    @property
    def num_samples(self) -> int:
        """Images in the whole split (all ranks together)."""
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        start = 0
        for size in self.global_batch_sizes():
            idx = order[start : start + size]
            start += size
            if self.world_size == 1:
                yield self._prepare(self.images[idx]), self.labels[idx]
                continue
            mine = shard(size, self.rank, self.world_size)
            x = self._prepare(self.images[idx[mine]], Rows(mine.start, mine.stop, size))
            if len(x):
                yield x, self.labels[idx[mine]]

    def _prepare(self, images: torch.Tensor, rows: Rows | None = None) -> torch.Tensor:
        aug, g = self.augment, self.generator
        if aug.crop_padding:
            images = random_crop(images, aug.crop_padding, g, rows)
        x = images.float()
        if aug.flip:
            x = random_flip(x, g, rows)
        if aug.rotate:
            x = random_rotate(x, aug.rotate, g, rows)
        if aug.jitter:
            x = random_jitter(x / 255.0, aug.jitter, g, rows) * 255.0
        x = (x - self.mean) / self.std
        if aug.cutout:
            x = random_cutout(x, aug.cutout, g, rows)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def balanced_loader(
    split: ImageSplit,
    samples: int | None,
    seed: int,
    *,
    batch_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device | str = "cpu",
    among: torch.Tensor | None = None,
) -> Loader:
    """An unshuffled, unaugmented `Loader` over the class-balanced subset of `samples` images of
    `split` that `balanced_subset` picks with `seed` (from the indices `among` only, when given);
    with `samples` None, over every image (of `among`, when given). `mean`/`std` are per channel,
    in [0, 1] units; the loader's `num_samples` is the subset's size."""
    if samples is not None:
        split = split.subset(balanced_subset(split.labels, samples, seed, among=among))
    elif among is not None:
        split = split.subset(among)
    return Loader(split, batch_size, mean=mean, std=std, device=device)
