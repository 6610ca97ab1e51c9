"""Confusion-matrix figures: valid and readable from 10 to 100 classes (and beyond)."""

from __future__ import annotations

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from compresskit.errors import CompresskitError
from compresskit.plots import (
    confusion_figure,
    per_class_recall_figure,
    plot_confusion_matrix,
    plot_most_confused,
)

CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew",
    "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower",
    "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train", "trout",
    "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm"
]  # fmt: skip

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _confusion(c: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, 4, (c, c)) + np.diag(rng.integers(20, 40, c))
    matrix[c // 2] = 0  # a class with no test samples: its row must stay 0, not NaN
    return matrix


def _tick_texts(labels) -> list[str]:
    return [label.get_text() for label in labels]


def test_100_classes_write_a_readable_png(tmp_path):
    assert len(CIFAR100_CLASSES) == 100
    path = plot_confusion_matrix(_confusion(100), CIFAR100_CLASSES, tmp_path / "c.png", title="t")
    assert path == tmp_path / "c.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) >= 0.16 * 100 * 120  # 120 dpi
    assert pixels[..., :3].std() > 0.05  # not a blank image


def test_100_classes_figure_names_every_class_small_and_has_no_cell_counts():
    fig = confusion_figure(_confusion(100), CIFAR100_CLASSES)
    try:
        ax, colour_bar = fig.axes  # the matrix and its colour bar
        assert colour_bar.get_ylabel() == "fraction of true class"
        assert len(ax.texts) == 0  # no per-cell counts beyond 20 classes
        assert _tick_texts(ax.get_xticklabels()) == CIFAR100_CLASSES
        assert _tick_texts(ax.get_yticklabels()) == CIFAR100_CLASSES
        sizes = {label.get_fontsize() for label in [*ax.get_xticklabels(), *ax.get_yticklabels()]}
        assert len(sizes) == 1 and 5 <= sizes.pop() <= 8
        width, height = fig.get_size_inches()
        assert min(width, height) >= 0.16 * 100  # room for one name per row and column
    finally:
        plt.close(fig)


def test_10_classes_annotate_counts_and_normalise_rows():
    matrix = _confusion(10, seed=1)
    names = [f"class{i}" for i in range(10)]
    fig = confusion_figure(matrix, names, title="ten")
    try:
        ax = fig.axes[0]
        assert len(fig.axes) == 2
        assert ax.get_title() == "ten"
        cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
        assert len(ax.texts) == 100
        assert cells == {(i, j): str(matrix[i, j]) for i in range(10) for j in range(10)}
        assert _tick_texts(ax.get_xticklabels()) == names
        shown = np.asarray(ax.images[0].get_array())
        for i in range(10):
            total = matrix[i].sum()
            expected = matrix[i] / total if total else np.zeros(10)
            np.testing.assert_allclose(shown[i], expected)
    finally:
        plt.close(fig)


def test_more_than_100_classes_name_every_kth():
    names = [f"n{i}" for i in range(250)]
    fig = confusion_figure(_confusion(250), names)
    try:
        ax = fig.axes[0]
        assert _tick_texts(ax.get_yticklabels()) == names[::3]
        assert max(fig.get_size_inches()) < 27  # bounded, not 0.16 in × 250
        assert len(ax.texts) == 0
    finally:
        plt.close(fig)


def test_shape_must_fit_the_names():
    with pytest.raises(CompresskitError, match="does not fit 3 class names"):
        confusion_figure(np.zeros((4, 4)), ["a", "b", "c"])


def test_plot_most_confused(tmp_path):
    table = pd.DataFrame(
        {"true": ["aquarium_fish", "oak_tree"], "predicted": ["flatfish", "maple_tree"],
         "count": [7, 3], "share": [0.07, 0.03]}
    )  # fmt: skip
    path = plot_most_confused(table, tmp_path / "mc.png", title="most confused")
    assert path.read_bytes()[:8] == PNG_MAGIC
    empty = plot_most_confused(table.iloc[:0], tmp_path / "none.png")
    assert empty.read_bytes()[:8] == PNG_MAGIC


def test_recall_figure_names_every_class_best_first():
    rng = np.random.default_rng(0)
    recall = rng.random(100)
    table = pd.DataFrame({"class": CIFAR100_CLASSES, "recall": recall})
    fig = per_class_recall_figure(table, title="recall")
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    order = np.argsort(-recall, kind="stable")
    assert names == [CIFAR100_CLASSES[i] for i in order]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == pytest.approx(recall[order].tolist())
    assert ax.lines[0].get_xdata()[0] == pytest.approx(recall.mean())
    assert fig.get_figheight() >= 0.12 * 100  # a row per class that a 5.5 pt name fits
    plt.close(fig)
