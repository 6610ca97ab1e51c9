"""Separation metrics: how well a layer's features keep the classes apart, as fractions in [0, 1].

* **CSI** (center separation index): the fraction of samples whose nearest class centre is their own
  class's centre. Centres are the class means of the same samples; ties go to the lowest class index
  (classes = the sorted unique label values).
* **SI** (separation index): the fraction of samples whose nearest *other* sample has the same label;
  ties between equidistant neighbours go to the lowest sample index. Of order r: the "r nearest" are
  the first r other samples sorted by (distance, index); hard SI counts samples whose r nearest all
  share its label, soft SI averages the fraction of the r nearest that share it.

Features are n×(anything), flattened per sample; distances are Euclidean, in float64, computed with
torch on the features' device. Distances come from the fast expansion ‖a‖² + ‖b‖² − 2a·b on centred
features; wherever its rounding error could change which candidates are nearest, the candidates are
recomputed exactly as Σ(a − b)² on the original features, so exact ties (duplicates, integer-valued
features) are broken the same way a plain double loop breaks them. SI never holds more than
``chunk_size``×n distances at a time.

Everything is implemented on `StreamingCenterSeparation` for CSI, so the in-memory functions and the
batched one (a network's layer outputs, one loader batch at a time) share one code path. The
nearest-point searches and their float64 chunking are `compresskit.analysis.nearest`'s.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from compresskit.analysis.nearest import float64_rows, nearest_centres, neighbour_agreement, one_class_message

Array = torch.Tensor | np.ndarray


def center_separation_index(features: Array, labels: Array) -> float:
    """CSI of features n×… (float or integer) with integer labels n: a fraction in [0, 1]."""
    return _center_separation(features, labels).value()


def center_separation_by_class(features: Array, labels: Array) -> pd.DataFrame:
    """CSI per class: one row per class (sorted by label) with columns ``class`` (label value),
    ``samples`` (count) and ``csi`` (the fraction of that class's samples nearest their own centre)."""
    return _center_separation(features, labels).by_class()


def separation_index(
    features: Array, labels: Array, order: int = 1, soft: bool = False, *, chunk_size: int = 1024
) -> float:
    """SI of features n×… (float or integer) with integer labels n: a fraction in [0, 1].

    ``order`` r (1 ≤ r ≤ n − 1) looks at each sample's r nearest other samples: with ``soft=False``
    a sample counts when all r share its label, with ``soft=True`` it counts the fraction that do.
    Distances are computed ``chunk_size`` query rows at a time (a chunk_size×n float64 block).
    """
    x, y = _prepare(features, labels)
    agree = neighbour_agreement(x, y, order, chunk_size)
    n, order = len(y), int(order)
    if soft:
        return int(agree.sum()) / (n * order)
    return int((agree == order).sum()) / n


def separation_index_by_class(
    features: Array, labels: Array, order: int = 1, soft: bool = False, *, chunk_size: int = 1024
) -> pd.DataFrame:
    """SI per class: one row per class (sorted by label) with columns ``class`` (label value),
    ``samples`` (count) and ``si`` (the SI of `separation_index` restricted to that class's samples,
    with neighbours still searched among all samples)."""
    x, y = _prepare(features, labels)
    agree = neighbour_agreement(x, y, order, chunk_size)
    per_sample = agree if soft else (agree == order).long()
    classes, index = torch.unique(y, sorted=True, return_inverse=True)
    counts = torch.bincount(index, minlength=len(classes))
    hits = torch.zeros(len(classes), dtype=torch.int64, device=y.device).index_add_(0, index, per_sample)
    per = int(order) if soft else 1
    return pd.DataFrame(
        {
            "class": classes.tolist(),
            "samples": counts.tolist(),
            "si": [h / (c * per) for h, c in zip(hits.tolist(), counts.tolist(), strict=True)],
        }
    )


class StreamingCenterSeparation:
    """CSI over data that arrives in batches, in two passes over the same (or other) batches.

    Pass 1, `add`: accumulate per-class float64 feature sums and counts. Pass 2, `score`: the first
    call fixes the centres (sums / counts), then each call counts the samples whose nearest centre is
    their own. `value` and `by_class` report over everything passed to `score`. The sums live on the
    device of the first features given to `add`; later batches are moved there.
    """

    def __init__(self) -> None:
        self._device: torch.device | None = None
        self._dim: int | None = None
        self._class_values: torch.Tensor | None = None  # k, int64, sorted
        self._sums: torch.Tensor | None = None  # k×d float64
        self._counts: torch.Tensor | None = None  # k int64
        self._centres: torch.Tensor | None = None  # k×d float64, set by the first score()
        self._mean: torch.Tensor | None = None  # d, mean of all added samples (the centring point)
        self._correct: torch.Tensor | None = None  # k int64
        self._scored: torch.Tensor | None = None  # k int64

    @property
    def classes(self) -> list[int]:
        """The label values seen by `add`, sorted (class index i ↔ ``classes[i]``)."""
        return [] if self._class_values is None else self._class_values.tolist()

    @property
    def centres(self) -> torch.Tensor:
        """Class means k×d in float64 (d = features flattened per sample), rows in `classes` order."""
        if self._centres is not None:
            return self._centres
        if self._sums is None or self._counts is None:
            raise ValueError("No centres yet: call add() with some samples first.")
        return self._sums / self._counts[:, None]

    def add(self, features: Array, labels: Array) -> None:
        """Pass 1: add a batch of features n×… with integer labels n to the class sums."""
        if self._centres is not None:
            raise ValueError(
                "add() was called after score(); the centres are fixed at the first score(), "
                "so add every batch before scoring."
            )
        x, y = _prepare(features, labels, self._device, keep_dtype=True)
        dim = math.prod(x.shape[1:])
        self._check_dim(dim)
        classes, inverse = torch.unique(y, sorted=True, return_inverse=True)
        # One-hot matmul rather than index_add_, which uses atomics (run-to-run rounding) on GPU.
        onehot = (inverse[None, :] == torch.arange(len(classes), device=x.device)[:, None]).double()
        sums = torch.zeros(len(classes), dim, dtype=torch.float64, device=x.device)
        for start, rows in float64_rows(x):
            sums.addmm_(onehot[:, start : start + len(rows)], rows)
        counts = torch.bincount(inverse, minlength=len(classes))
        if self._class_values is None or self._sums is None or self._counts is None:
            self._device, self._dim = x.device, dim
            self._class_values, self._sums, self._counts = classes, sums, counts
            return
        both = torch.cat([self._class_values, classes])
        merged, where = torch.unique(both, sorted=True, return_inverse=True)
        if len(merged) == len(self._class_values):  # no new class: add in place
            self._sums.index_add_(0, where[len(self._class_values) :], sums)
            self._counts.index_add_(0, where[len(self._class_values) :], counts)
            return
        self._sums = torch.zeros(len(merged), dim, dtype=torch.float64, device=x.device).index_add_(
            0, where, torch.cat([self._sums, sums])
        )
        self._counts = torch.zeros(len(merged), dtype=torch.int64, device=x.device).index_add_(
            0, where, torch.cat([self._counts, counts])
        )
        self._class_values = merged

    def score(self, features: Array, labels: Array) -> None:
        """Pass 2: count the samples of a batch (features n×…, labels n) nearest their own centre."""
        if self._class_values is None or self._sums is None or self._counts is None:
            raise ValueError(
                "score() was called before add(); add the samples that define the centres first."
            )
        if self._centres is None:
            if len(self._class_values) < 2:
                raise ValueError(one_class_message("CSI", self._class_values))
            self._centres = self._sums / self._counts[:, None]
            self._mean = self._sums.sum(0) / self._counts.sum()
            self._correct = torch.zeros(len(self._class_values), dtype=torch.int64, device=self._device)
            self._scored = torch.zeros_like(self._correct)
        assert self._mean is not None and self._correct is not None and self._scored is not None
        x, y = _prepare(features, labels, self._device, keep_dtype=True)
        self._check_dim(math.prod(x.shape[1:]))
        k = len(self._class_values)
        index = torch.searchsorted(self._class_values, y).clamp_(max=k - 1)
        unknown = self._class_values[index] != y
        if unknown.any():
            raise ValueError(
                f"score() got label {int(y[unknown][0])}, which add() never saw; "
                f"only the classes {self.classes} have a centre."
            )
        nearest = nearest_centres(x, self._centres, self._mean)
        self._scored += torch.bincount(index, minlength=k)
        self._correct += torch.bincount(index[nearest == index], minlength=k)

    def value(self) -> float:
        """CSI: the fraction of all samples passed to `score` that are nearest their own centre."""
        if self._scored is None or self._correct is None or int(self._scored.sum()) == 0:
            raise ValueError("value() needs scored samples: call add() on all batches, then score().")
        return int(self._correct.sum()) / int(self._scored.sum())

    def by_class(self) -> pd.DataFrame:
        """Per class (sorted by label): ``class``, ``samples`` (scored), ``csi`` (NaN for a class with
        no scored samples)."""
        if self._scored is None or self._correct is None:
            raise ValueError("by_class() needs scored samples: call add() on all batches, then score().")
        return pd.DataFrame(
            {
                "class": self.classes,
                "samples": self._scored.tolist(),
                "csi": [
                    c / s if s else float("nan")
                    for c, s in zip(self._correct.tolist(), self._scored.tolist(), strict=True)
                ],
            }
        )

    def _check_dim(self, dim: int) -> None:
        if self._dim is not None and dim != self._dim:
            raise ValueError(
                f"features have {dim} values per sample but the first batch had {self._dim}; "
                "every batch must have the same feature shape."
            )


def _center_separation(features: Array, labels: Array) -> StreamingCenterSeparation:
    x, y = _prepare(features, labels)
    stream = StreamingCenterSeparation()
    stream.add(x, y)
    stream.score(x, y)
    return stream


def _prepare(
    features: Array, labels: Array, device: torch.device | None = None, *, keep_dtype: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and convert to (features n×d float64, labels n int64), both on `device` (default: the
    features' own device).

    With `keep_dtype` a floating-point tensor keeps its dtype and its n×… shape and layout (no copy
    beyond the move to `device`); `float64_rows` then converts it a chunk at a time."""
    if isinstance(features, torch.Tensor):
        if features.dtype == torch.bool or features.dtype.is_complex:
            raise ValueError(f"features must have a float or integer dtype, got {features.dtype}.")
        dtype = features.dtype if keep_dtype and features.dtype.is_floating_point else torch.float64
        x = features.detach().to(device=features.device if device is None else device, dtype=dtype)
    else:
        array = np.asarray(features)
        if array.dtype.kind not in "iuf":
            raise ValueError(f"features must have a float or integer dtype, got {array.dtype}.")
        x = torch.from_numpy(np.array(array, dtype=np.float64)).to("cpu" if device is None else device)
    if isinstance(labels, torch.Tensor):
        if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise ValueError(
                f"labels must have an integer dtype (one class label per sample), got {labels.dtype}."
            )
        y = labels.detach()
    else:
        label_array = np.asarray(labels)
        if label_array.dtype.kind not in "iu":
            raise ValueError(
                f"labels must have an integer dtype (one class label per sample), got {label_array.dtype}."
            )
        y = torch.from_numpy(np.array(label_array, dtype=np.int64))
    if y.dim() != 1:
        raise ValueError(f"labels must be 1-D (one integer per sample), got shape {tuple(y.shape)}.")
    y = y.to(device=x.device, dtype=torch.int64)
    if x.dim() == 0:
        raise ValueError("features must have one row per sample (shape n×...), got a scalar.")
    if len(x) != len(y):
        raise ValueError(
            f"features have {len(x)} samples but labels have {len(y)}; there must be one label per sample."
        )
    if len(y) == 0:
        raise ValueError("features and labels are empty; at least one sample is needed.")
    if math.prod(x.shape[1:]) == 0:
        raise ValueError("features have no values per sample; each sample needs at least one.")
    if not _all_finite(x):
        raise ValueError("features contain NaN or infinite values; every value must be finite.")
    if not keep_dtype:
        x = x.reshape(len(x), -1)
    return x, y


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every value of the float tensor x is finite. A finite sum proves it (a NaN or ±inf
    term makes any sum NaN or ±inf) without `isfinite`'s n-sized mask; only a sum that overflowed
    or met a non-finite value is checked value by value."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())
