"""Separation metrics (CSI, SI) against slow double-loop references and scikit-learn.

The references below are deliberately plain: float64 numpy, one pair at a time, ties broken by
strict `<` while scanning in index order. Every comparison is exact (`==`): the data sets with
duplicates and exact ties only have integer features and power-of-two class counts, so every
distance and class mean is exactly representable and there is one right answer.
"""

from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.neighbors import NearestCentroid, NearestNeighbors

from compresskit.analysis import nearest
from compresskit.analysis.separation import (
    StreamingCenterSeparation,
    center_separation_by_class,
    center_separation_index,
    separation_index,
    separation_index_by_class,
)

# ---------------------------------------------------------------- references


@functools.cache
def _ref_distances(name: str) -> np.ndarray:
    x, _ = _dataset(name)
    n = len(x)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = np.sum((x[i] - x[j]) ** 2)
    return d


def _ref_neighbours(name: str, i: int, order: int) -> list[int]:
    """The `order` nearest other samples of sample i: first by strict `<` scan for order 1, else
    sorted by (distance, index)."""
    d = _ref_distances(name)[i]
    others = [j for j in range(len(d)) if j != i]
    if order == 1:
        best = others[0]
        for j in others[1:]:
            if d[j] < d[best]:
                best = j
        return [best]
    return sorted(others, key=lambda j: (d[j], j))[:order]


def _ref_si_per_sample(name: str, order: int, soft: bool) -> list[Fraction]:
    _, y = _dataset(name)
    scores = []
    for i in range(len(y)):
        same = sum(int(y[j] == y[i]) for j in _ref_neighbours(name, i, order))
        scores.append(Fraction(same, order) if soft else Fraction(int(same == order)))
    return scores


def _ref_csi_per_sample(x: np.ndarray, y: np.ndarray, x_eval=None, y_eval=None) -> list[bool]:
    """Centres = class means of (x, y); is each sample of (x_eval, y_eval) nearest its own centre?"""
    x_eval = x if x_eval is None else x_eval
    y_eval = y if y_eval is None else y_eval
    classes = np.unique(y)
    means = [np.mean(x[y == c], axis=0) for c in classes]
    correct = []
    for xi, yi in zip(x_eval, y_eval, strict=True):
        best, best_d = 0, np.sum((xi - means[0]) ** 2)
        for k in range(1, len(means)):
            dk = np.sum((xi - means[k]) ** 2)
            if dk < best_d:
                best, best_d = k, dk
        correct.append(bool(classes[best] == yi))
    return correct


def _mean(values) -> float:
    values = [Fraction(v) for v in values]
    return float(sum(values, Fraction(0)) / len(values))


def _ref_table(y: np.ndarray, per_sample, column: str) -> pd.DataFrame:
    classes = np.unique(y)
    return pd.DataFrame(
        {
            "class": [int(c) for c in classes],
            "samples": [int(np.sum(y == c)) for c in classes],
            column: [_mean([s for s, yi in zip(per_sample, y, strict=True) if yi == c]) for c in classes],
        }
    )


def _assert_tables_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert got["class"].tolist() == want["class"].tolist()
    assert got["samples"].tolist() == want["samples"].tolist()
    assert got.iloc[:, 2].tolist() == want.iloc[:, 2].tolist()


# ---------------------------------------------------------------- data


@functools.cache
def _dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "gaussian":
        return rng.normal(size=(120, 6)), rng.integers(0, 4, 120)
    if name == "blobs":
        y = rng.integers(0, 4, 120)
        centres = rng.normal(scale=3.0, size=(4, 5))
        return centres[y] + rng.normal(size=(120, 5)), y
    if name == "duplicates":
        x = rng.normal(size=(60, 4))
        x = np.concatenate([x, x[:40], x[:10]])  # some points three times, labels drawn independently
        return x, rng.integers(0, 3, len(x))
    if name == "ties":
        # Values in {0,1,2}³ (27 possible points for 64 samples), class counts 32/16/8/8 so the class
        # means are dyadic; label values deliberately not 0..k-1.
        x = rng.integers(0, 3, size=(64, 3)).astype(float)
        return x, rng.permutation(np.repeat([7, -1, 2, 10], [32, 16, 8, 8]))
    if name == "centre_ties":
        # Class 9 is class 5 mirrored through (1,1,1): the two centres are mirror images, so every
        # sample on the bisecting plane (e.g. (1,1,1) itself) is exactly equidistant from both.
        half = np.concatenate([rng.integers(0, 3, size=(12, 3)), np.ones((4, 3))]).astype(float)
        return np.concatenate([half, 2.0 - half]), np.repeat([5, 9], 16)
    if name == "far_clusters":
        # Two integer clusters at ±1e8: the centred norms are ~1e16, so the expansion's rounding error
        # (~1) exceeds the integer distance gaps inside a cluster; only the exact recomputation is right.
        x = rng.integers(0, 3, size=(64, 3)).astype(float)
        x[:32] += 1e8
        x[32:] -= 1e8
        y = np.concatenate([rng.permutation(np.repeat([0, 1], 16)), rng.permutation(np.repeat([2, 3], 16))])
        return x, y
    raise KeyError(name)


DATASETS = ["gaussian", "blobs", "duplicates", "ties", "centre_ties", "far_clusters"]
TIED = ["duplicates", "ties", "centre_ties", "far_clusters"]
ORDERS = [(1, False), (3, False), (3, True)]


# ---------------------------------------------------------------- SI


@pytest.mark.parametrize(("order", "soft"), ORDERS)
@pytest.mark.parametrize("name", DATASETS)
def test_si_matches_double_loop(name: str, order: int, soft: bool) -> None:
    x, y = _dataset(name)
    per_sample = _ref_si_per_sample(name, order, soft)
    assert separation_index(x, y, order, soft) == _mean(per_sample)
    table = separation_index_by_class(x, y, order, soft)
    _assert_tables_equal(table, _ref_table(y, per_sample, "si"))


@pytest.mark.parametrize("name", TIED)
def test_tied_data_really_has_ties(name: str) -> None:
    # Guards the data sets above: without exact ties among nearest neighbours the tie tests are moot.
    d = _ref_distances(name) + np.diag(np.full(len(_dataset(name)[1]), np.inf))
    assert np.sum(d == d.min(axis=1, keepdims=True), axis=1).max() > 1


def test_si_tie_goes_to_lowest_index() -> None:
    # Sample 0 is equidistant from sample 1 (same label) and sample 2: the lowest index wins.
    x, y = np.array([[0.0], [1.0], [-1.0]]), np.array([0, 0, 1])
    assert separation_index(x, y) == 2 / 3


@pytest.mark.parametrize(("order", "soft"), ORDERS)
def test_si_matches_sklearn_nearest_neighbors(order: int, soft: bool) -> None:
    x, y = _dataset("gaussian")
    neighbours = NearestNeighbors().fit(x).kneighbors(n_neighbors=order, return_distance=False)
    same = (y[neighbours] == y[:, None]).sum(axis=1)
    want = int(same.sum()) / (len(y) * order) if soft else int((same == order).sum()) / len(y)
    assert separation_index(x, y, order, soft) == want


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
@pytest.mark.parametrize("name", ["ties", "far_clusters", "gaussian"])
def test_si_chunk_size_does_not_change_result(name: str, chunk_size: int) -> None:
    x, y = _dataset(name)
    for order, soft in ORDERS:
        want = _mean(_ref_si_per_sample(name, order, soft))
        assert separation_index(x, y, order, soft, chunk_size=chunk_size) == want


def test_si_never_builds_an_n_by_n_block(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _dataset("ties")
    n = len(y)
    shapes: list[tuple[int, int]] = []
    real = nearest._distance_block

    def recording(rows, rows_sq, others, others_sq):
        block = real(rows, rows_sq, others, others_sq)
        shapes.append(tuple(block.shape))
        return block

    monkeypatch.setattr(nearest, "_distance_block", recording)
    assert separation_index(x, y, 3, chunk_size=7) == _mean(_ref_si_per_sample("ties", 3, False))
    assert len(shapes) == math.ceil(n / 7)
    assert all(rows <= 7 and cols == n for rows, cols in shapes)
    assert sum(rows for rows, _ in shapes) == n
    shapes.clear()
    separation_index(x, y, chunk_size=n)  # the wrapper does see the real blocks
    assert shapes == [(n, n)]


# ---------------------------------------------------------------- CSI


@pytest.mark.parametrize("name", DATASETS)
def test_csi_matches_double_loop(name: str) -> None:
    x, y = _dataset(name)
    correct = _ref_csi_per_sample(x, y)
    assert center_separation_index(x, y) == _mean(correct)
    _assert_tables_equal(center_separation_by_class(x, y), _ref_table(y, correct, "csi"))


def test_centre_ties_go_to_lowest_class() -> None:
    # Class 0 = {-1, 1} (centre 0), class 1 = {1, 3, 1, 3} (centre 2): every sample at 1 is
    # equidistant from both centres and goes to class 0, so the two class-1 samples there are wrong.
    x = np.array([-1.0, 1.0, 1.0, 3.0, 1.0, 3.0])[:, None]
    y = np.array([0, 0, 1, 1, 1, 1])
    assert center_separation_index(x, y) == 4 / 6
    assert center_separation_by_class(x, y)["csi"].tolist() == [1.0, 0.5]
    # The mirrored data set has such ties too, and they decide its value.
    x, y = _dataset("centre_ties")
    assert sum(np.sum((x - 1.0) ** 2, axis=1) == 0) > 0
    assert center_separation_index(x, y) == _mean(_ref_csi_per_sample(x, y)) < 1.0


@pytest.mark.parametrize("name", ["gaussian", "blobs"])
def test_csi_matches_sklearn_nearest_centroid(name: str) -> None:
    x, y = _dataset(name)
    predicted = NearestCentroid().fit(x, y).predict(x)
    assert center_separation_index(x, y) == int((predicted == y).sum()) / len(y)


def test_translation_does_not_change_tied_results() -> None:
    x, y = _dataset("ties")
    for shift in (1e6, -3e7):
        assert center_separation_index(x + shift, y) == center_separation_index(x, y)
        for order, soft in ORDERS:
            assert separation_index(x + shift, y, order, soft) == separation_index(x, y, order, soft)


# ---------------------------------------------------------------- streaming


def _batches(n: int, sizes: list[int]) -> list[slice]:
    edges = np.cumsum([0, *sizes]).tolist()
    assert edges[-1] == n
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("name", ["ties", "centre_ties", "gaussian", "blobs"])
def test_streaming_equals_in_memory(name: str) -> None:
    x, y = _dataset(name)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    if name in ("gaussian", "blobs"):
        xt = xt.float()
    n = len(y)
    stream = StreamingCenterSeparation()
    for part in _batches(n, [5, n // 2 - 5, 1, n - n // 2 - 1]):
        stream.add(xt[part], yt[part])
    for part in _batches(n, [n // 3, n - n // 3]):
        stream.score(xt[part], yt[part])
    assert stream.classes == sorted(set(y.tolist()))
    assert stream.centres.dtype == torch.float64 and stream.centres.shape == (len(stream.classes), x.shape[1])
    assert stream.value() == center_separation_index(xt, yt)
    pd.testing.assert_frame_equal(stream.by_class(), center_separation_by_class(xt, yt), check_exact=True)
    if name in ("ties", "centre_ties"):  # dyadic class means: the centres themselves are exact
        want = np.stack([x[y == c].mean(axis=0) for c in stream.classes])
        assert torch.equal(stream.centres, torch.from_numpy(want))


@pytest.mark.parametrize("name", [*TIED, "blobs"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_streaming_in_small_chunks_of_any_layout_matches_the_double_loop(
    name: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 7 values per chunk: a 2×2×2 sample (8 values) is one row per chunk, and a batch spans many.
    monkeypatch.setattr(nearest, "_CHUNK_VALUES", 7)
    if dtype == torch.float16 and name == "far_clusters":
        pytest.skip("±1e8 is beyond float16")
    x, y = _dataset(name)
    x = np.tile(x, (1, 3))[:, :8]  # 8 values per sample; repeated columns keep the ties
    x = torch.from_numpy(x).to(dtype).double().numpy()  # the values the dtype can hold, for the reference
    images = torch.from_numpy(x).to(dtype).reshape(len(x), 2, 2, 2).to(memory_format=torch.channels_last)
    assert not images.is_contiguous()
    labels = torch.from_numpy(y)
    stream = StreamingCenterSeparation()
    for part in _batches(len(y), [3, len(y) - 3]):
        stream.add(images[part], labels[part])
    for part in _batches(len(y), [len(y) // 2, len(y) - len(y) // 2]):
        stream.score(images[part], labels[part])
    assert stream.value() == _mean(_ref_csi_per_sample(x, y))
    assert images.dtype == dtype and torch.equal(images.double().reshape(len(x), -1), torch.from_numpy(x))


def test_streaming_runs_inside_and_outside_inference_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nearest, "_SCRATCH", nearest._Scratch())  # its buffer is made below
    x, y = _dataset("blobs")
    features, labels = torch.from_numpy(x).float(), torch.from_numpy(y)
    with torch.inference_mode():
        inside = center_separation_index(features, labels)
    want = _mean(_ref_csi_per_sample(features.double().numpy(), y))
    assert center_separation_index(features, labels) == inside == want


def test_finiteness_is_checked_even_when_a_sum_hides_it() -> None:
    x, y = _dataset("gaussian")
    big = torch.from_numpy(x).float()
    big[0, 0] = 3e38
    big[1, 0] = 3e38  # the float32 sum overflows although every value is finite
    assert center_separation_index(big, torch.from_numpy(y)) == center_separation_index(big.double(), y)
    for bad in (float("nan"), float("inf")):
        nan = big.clone()
        nan[5, 2] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            StreamingCenterSeparation().add(nan, torch.from_numpy(y))


def test_streaming_scores_other_samples_than_it_adds() -> None:
    x, y = _dataset("blobs")
    stream = StreamingCenterSeparation()
    stream.add(x[:80], y[:80])
    stream.score(x[80:100], y[80:100])
    stream.score(x[100:], y[100:])
    correct = _ref_csi_per_sample(x[:80], y[:80], x[80:], y[80:])
    assert stream.value() == _mean(correct)
    assert stream.by_class()["samples"].tolist() == np.bincount(y[80:], minlength=4).tolist()


def test_streaming_keeps_sums_on_first_device() -> None:
    x, y = _dataset("ties")
    stream = StreamingCenterSeparation()
    stream.add(torch.from_numpy(x), torch.from_numpy(y))
    stream.add(x[:3], y[:3])  # numpy later: moved to the first device
    assert stream.centres.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    for name in ("ties", "far_clusters", "gaussian"):
        x, y = _dataset(name)
        xc, yc = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
        assert center_separation_index(xc, yc) == center_separation_index(x, y)
        for order, soft in ORDERS:
            assert separation_index(xc, yc, order, soft, chunk_size=16) == _mean(
                _ref_si_per_sample(name, order, soft)
            )
        stream = StreamingCenterSeparation()
        stream.add(xc, yc)
        stream.add(x, y)  # CPU batch joins the CUDA sums
        assert stream.centres.device.type == "cuda"


# ---------------------------------------------------------------- input forms


def test_any_trailing_shape_and_input_type() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 2, 3, 4)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    flat = x.reshape(40, 24)
    for metric in (center_separation_index, lambda f, lab: separation_index(f, lab, 3, True)):
        want = metric(flat, y)
        assert metric(x, y) == want
        assert metric(torch.from_numpy(x), torch.from_numpy(y)) == want
        assert metric(torch.from_numpy(x), y.astype(np.uint8)) == want
        assert metric(x, torch.from_numpy(y).int()) == want
    xi, yi = _dataset("ties")
    assert separation_index(xi.astype(np.int16), yi.astype(np.int32)) == separation_index(xi, yi)
    assert center_separation_index(torch.from_numpy(xi).to(torch.uint8), yi) == center_separation_index(
        xi, yi
    )


# ---------------------------------------------------------------- validation

ALL = {
    "csi": center_separation_index,
    "csi_by_class": center_separation_by_class,
    "si": separation_index,
    "si_by_class": separation_index_by_class,
}
_X = np.arange(30.0).reshape(10, 3)
_Y = np.array([0, 1] * 5)


@pytest.mark.parametrize("metric", ALL.values(), ids=ALL.keys())
@pytest.mark.parametrize(
    ("features", "labels", "match"),
    [
        (_X, _Y[:9], "10 samples but labels have 9"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "empty"),
        (_X, np.zeros(10, dtype=int), "at least two classes"),
        (np.where(_X == 4.0, np.nan, _X), _Y, "NaN or infinite"),
        (np.where(_X == 4.0, -np.inf, _X), _Y, "NaN or infinite"),
        (_X, _Y[:, None], "labels must be 1-D"),
        (_X, _Y.astype(float), "labels must have an integer dtype"),
        (_X, torch.tensor(_Y, dtype=torch.bool), "labels must have an integer dtype"),
        (_X.astype(complex), _Y, "features must have a float or integer dtype"),
        (torch.ones(10, 3, dtype=torch.bool), _Y, "features must have a float or integer dtype"),
        (np.float64(3.0), _Y, "one row per sample"),
        (np.zeros((10, 0)), _Y, "no values per sample"),
    ],
)
def test_bad_input_is_refused(metric, features, labels, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        metric(features, labels)


@pytest.mark.parametrize("metric", [separation_index, separation_index_by_class])
def test_si_specific_errors(metric) -> None:
    for order in (0, 10, -1, 1.0, True):
        with pytest.raises(ValueError, match=r"order must be an integer from 1 to n - 1 = 9"):
            metric(_X, _Y, order)
    assert metric(_X, _Y, np.int64(9)) is not None  # n - 1 itself is allowed
    with pytest.raises(ValueError, match="at least two samples"):
        metric(_X[:1], _Y[:1])
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        metric(_X, _Y, chunk_size=0)


def test_streaming_errors() -> None:
    stream = StreamingCenterSeparation()
    with pytest.raises(ValueError, match=r"score\(\) was called before add\(\)"):
        stream.score(_X, _Y)
    with pytest.raises(ValueError, match=r"value\(\) needs scored samples"):
        stream.value()
    with pytest.raises(ValueError, match="No centres yet"):
        _ = stream.centres
    stream.add(_X[_Y == 0], _Y[_Y == 0])
    with pytest.raises(ValueError, match="same feature shape"):
        stream.add(_X[:, :2], _Y)
    with pytest.raises(ValueError, match="at least two classes"):
        stream.score(_X[_Y == 0], _Y[_Y == 0])
    stream.add(_X[_Y == 1], _Y[_Y == 1])
    with pytest.raises(ValueError, match="label 7, which add"):
        stream.score(_X, np.array([0, 1, 7, 0, 1, 0, 1, 0, 1, 0]))
    stream.score(_X[:4], _Y[:4])  # the refused batch above counted nothing
    stream.score(_X[4:], _Y[4:])
    assert stream.value() == _mean(_ref_csi_per_sample(_X, _Y))
    with pytest.raises(ValueError, match=r"add\(\) was called after score\(\)"):
        stream.add(_X, _Y)
    with pytest.raises(ValueError, match="empty"):
        stream.score(_X[:0], _Y[:0])
