"""What every dataset loads as: `ImageSplit` and `ImageDataset` (uint8 images), their per-channel
statistics, and the bilinear resize to the common image size (conventions in `compresskit.data`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32  # the default side S (pixels); also CIFAR's own size


@dataclass
class ImageSplit:
    """One split: `images` uint8 N×C×S×S, `labels` int64 N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> ImageSplit:
        return ImageSplit(self.images[indices], self.labels[indices])


@dataclass
class ImageDataset:
    """A dataset with its train and test splits, class names and per-channel statistics.

    `label_set` is which labels the splits carry: "fine", or "coarse" (CIFAR-100's 20 superclasses).
    `val` is the dataset's own validation split (an image folder's ``val/``), or None: then a run
    holds its validation images out of `train` (`stratified_split`).
    """

    name: str
    train: ImageSplit
    test: ImageSplit
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    label_set: str = "fine"
    val: ImageSplit | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        """The side S of every (square) image, in pixels."""
        return int(self.train.images.shape[-1])


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images N×C×H×W, in [0, 1] units."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for chunk in images.split(8192):
        x = chunk.to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def to_image_size(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Bring uint8 N×C×H×W images to `size`×`size` (bilinear); see `compresskit.data`."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images.contiguous()
    shrink = size < h or size < w  # antialias only then: upscaling stays exactly as it always was
    out = []
    for chunk in images.split(8192):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=shrink)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)
