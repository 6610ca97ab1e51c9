"""Index selection: the stratified validation split of a training set and class-balanced subsets.

Both take int64 label tensors and return sorted int64 index tensors; the same seed gives the same
indices (each draws from its own seeded CPU generator, never the global one).
"""

from __future__ import annotations

import torch

from compresskit.errors import ParameterError


def check_val_fraction(fraction: float) -> None:
    """Refuse a validation fraction outside [0, 1)."""
    if not 0.0 <= fraction < 1.0:
        raise ParameterError(f"{{0}} must be in [0, 1); got {fraction}.", "val_fraction")


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices so each class contributes `fraction` of its samples to the second part.

    Returns ``(keep, held_out)``, both sorted int64 index tensors. Each class with at least two
    samples gives at least one sample to each part when ``0 < fraction < 1``. The same seed gives
    the same split.
    """
    check_val_fraction(fraction)
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(len(idx) * fraction)
        if fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        held.append(idx[:k])
        keep.append(idx[k:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def balanced_subset(
    labels: torch.Tensor, size: int, seed: int, *, among: torch.Tensor | None = None
) -> torch.Tensor:
    """Sorted indices of a class-balanced random subset of `size` samples.

    Every class present gives ``size // k`` samples (k classes); the first ``size % k`` classes, in
    a random order, give one more. A class with fewer samples gives all it has, so the subset is
    smaller than `size` only then. The same seed gives the same subset. With `among` (sorted
    indices into `labels`), the subset is drawn from those samples only.
    """
    if among is not None:
        return among[balanced_subset(labels[among], size, seed)]
    classes = torch.unique(labels)
    if size < len(classes):
        raise ParameterError(
            f"{{0}} must be at least the number of classes ({len(classes)}); got {size}.", "samples"
        )
    g = torch.Generator().manual_seed(seed)
    extra = set(classes[torch.randperm(len(classes), generator=g)[: size % len(classes)]].tolist())
    chosen = []
    for c in classes.tolist():
        idx = torch.nonzero(labels == c).flatten()
        take = size // len(classes) + (c in extra)
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:take]])
    return torch.cat(chosen).sort().values
