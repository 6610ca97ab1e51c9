"""The datasets that need no files: ``digits`` (scikit-learn's embedded 8×8 digits) and
``synthetic`` (a tiny generated RGB set for tests).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from compresskit.data.dataset import IMAGE_SIZE, ImageSplit
from compresskit.data.split import stratified_split


def digits_splits() -> tuple[ImageSplit, ImageSplit, list[str]]:
    """scikit-learn's 1,797 8×8 digits (0..16) as uint8; a fixed stratified 20% test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8))
    images = images.unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = stratified_split(labels, 0.2, seed=0)
    return (
        ImageSplit(images[train_idx], labels[train_idx]),
        ImageSplit(images[test_idx], labels[test_idx]),
        [str(i) for i in range(10)],
    )


def synthetic_splits(
    num_classes: int = 4, train_per_class: int = 48, test_per_class: int = 16
) -> tuple[ImageSplit, ImageSplit, list[str]]:
    """A tiny learnable RGB set for tests: each class is a smooth random template plus noise."""
    g = torch.Generator().manual_seed(1234)
    templates = torch.rand(num_classes, 3, 4, 4, generator=g) * 2 - 1
    templates = F.interpolate(templates, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")

    def split(per_class: int) -> ImageSplit:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        noise = torch.randn(len(labels), 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        x = 128 + 70 * templates[labels] + 35 * noise
        return ImageSplit(x.round().clamp(0, 255).to(torch.uint8), labels)

    return split(train_per_class), split(test_per_class), [f"class{i}" for i in range(num_classes)]
