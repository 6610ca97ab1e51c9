"""matplotlib figures written to PNG; no computation of their own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from compresskit.errors import CompresskitError


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out, write as PNG (120 dpi) and close `fig`."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_training_curves(history: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, side by side: train, validation and (where the history has
    any, from ``--track-test``) test."""
    return save_figure(curves_figure(history, title), path)


def curves_figure(history: pd.DataFrame, title: str = "") -> plt.Figure:
    """The figure of `plot_training_curves`, not yet written or closed (the caller closes it)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        ax.plot(history["epoch"], history[f"train_{metric}"], marker=".", label="train")
        for split, label in (("val", "validation"), ("test", "test")):
            column = f"{split}_{metric}"
            if column in history and history[column].notna().any():
                ax.plot(history["epoch"], history[column], marker=".", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy loss" if metric == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


ANNOTATE_MAX_CLASSES = 20
"""Counts are written in the cells up to this many classes; beyond, the colour alone tells."""
LABEL_EVERY_MAX_CLASSES = 100
"""Every class is named on both axes up to this many classes; beyond, every k-th so ~100 remain."""


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str = "") -> plt.Figure:
    """The figure of `plot_confusion_matrix`, not yet written or closed (the caller closes it).

    `matrix` is C×C counts (rows: true class, columns: predicted), `classes` the C names. Colour is
    the row-normalised fraction of the true class, with a colour bar. Up to 20 classes each cell also
    shows its count; beyond, the figure grows by 0.16 in per class (up to 150 classes) and names
    every class (every k-th past 100) in a font small enough for one name per row.
    """
    matrix = np.asarray(matrix)
    n = len(classes)
    if matrix.shape != (n, n):
        raise CompresskitError(f"confusion matrix of shape {matrix.shape} does not fit {n} class names.")
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    annotate = n <= ANNOTATE_MAX_CLASSES
    per_class = 0.45 if annotate else 0.16  # inches per row/column
    fontsize = 8.0 if annotate else max(4.0, min(8.0, 0.55 * 72 * per_class))  # 0.16 in → 6.3 pt
    longest = max((len(str(name)) for name in classes), default=1)
    label_room = 0.6 * fontsize / 72 * longest + 0.6  # inches for tick labels and the axis label
    side = max(4.0, per_class * min(n, 150))  # past 150 classes cells shrink, so the PNG stays < 3200 px
    fig, ax = plt.subplots(figsize=(side + label_room + 1.3, side + label_room + (0.4 if title else 0.1)))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    shrink = min(1.0, 8.0 / side)  # a bar at most ~8 in tall, so it stays ~0.4 in wide
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, shrink=shrink, label="fraction of true class")
    step = max(1, int(np.ceil(n / LABEL_EVERY_MAX_CLASSES)))
    ticks = np.arange(0, n, step)
    names = [str(classes[i]) for i in ticks]
    ax.set_xticks(ticks, labels=names, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, labels=names, fontsize=fontsize)
    ax.tick_params(length=2 if not annotate else 3.5, pad=1.5)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if annotate:
        for i in range(n):
            for j in range(n):
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    if title:
        ax.set_title(title)
    return fig


def plot_confusion_matrix(
    matrix: np.ndarray, classes: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts annotated
    when there are at most 20 classes; readable up to 100 classes (see `confusion_figure`)."""
    return save_figure(confusion_figure(matrix, classes, title), path)


def plot_most_confused(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Horizontal bars of the most confused pairs, largest on top: one bar per row of `table`
    (columns true, predicted, count, share, as `evaluation.ClassificationReport.most_confused`
    returns), its length the count, labelled "true → predicted" and the share of the true class."""
    k = len(table)
    fig, ax = plt.subplots(figsize=(7.0, max(2.0, 0.28 * k + 1.0)))
    y = np.arange(k)
    ax.barh(y, table["count"], color="tab:blue")
    labels = [f"{t} → {p}" for t, p in zip(table["true"], table["predicted"], strict=True)]
    ax.set_yticks(y, labels=labels, fontsize=8)
    ax.invert_yaxis()
    for row, (count, share) in enumerate(zip(table["count"], table["share"], strict=True)):
        ax.text(count, row, f" {share:.0%}", va="center", fontsize=7)
    if k:
        ax.set_xlim(0, float(table["count"].max()) * 1.12)
    ax.set_xlabel("samples predicted as the other class (labels: share of the true class)")
    ax.grid(axis="x", alpha=0.3)
    if k == 0:
        ax.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=ax.transAxes)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_per_class_recall(per_class: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Write `per_class_recall_figure` to `path`."""
    return save_figure(per_class_recall_figure(per_class, title), path)


def per_class_recall_figure(per_class: pd.DataFrame, title: str = "") -> plt.Figure:
    """Recall of every class as one horizontal bar, sorted from the best recalled class on top to
    the worst; `per_class` has the columns ``class`` and ``recall`` (in [0, 1]) of
    `evaluation.ClassificationReport.per_class`. A dotted line marks the mean (macro) recall. Past
    20 classes the rows shrink to 0.12 in, so 100 classes still name every class. The caller closes
    the figure."""
    table = per_class.sort_values("recall", ascending=False, kind="stable")
    n = len(table)
    row = 0.28 if n <= ANNOTATE_MAX_CLASSES else 0.12
    fontsize = 8.0 if n <= ANNOTATE_MAX_CLASSES else 5.5
    fig, ax = plt.subplots(figsize=(6.5, max(2.0, row * n + 1.0)))
    y = np.arange(n)
    ax.barh(y, table["recall"], color="tab:blue", height=0.8)
    ax.set_yticks(y, labels=[str(name) for name in table["class"]], fontsize=fontsize)
    ax.set_ylim(n - 0.5, -0.5)
    if n:
        ax.axvline(float(table["recall"].mean()), color="black", ls=":", label="mean recall")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_xlabel("recall (share of the class's test images predicted as that class)")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


def plot_separation(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """CSI, SI and probe accuracy across layers, train vs test: one panel per metric present in
    `table` (the columns ``<metric>_train`` / ``<metric>_test`` of the analysis layer table)."""
    panels = [
        (metric, label)
        for metric, label in (
            ("csi", "center separation index"),
            ("si", "separation index"),
            ("probe", "linear-probe accuracy"),
        )
        if table[f"{metric}_train"].notna().any()
    ]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4), squeeze=False)
    x = np.arange(len(table))
    for ax, (metric, label) in zip(axes[0], panels, strict=False):
        ax.plot(x, table[f"{metric}_train"], marker="o", label="train")
        ax.plot(x, table[f"{metric}_test"], marker="s", label="test")
        ax.set_xticks(x, labels=table["layer"], rotation=60, ha="right")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_filters(weight: np.ndarray, path: str | Path, title: str = "") -> Path:
    """A grid of convolution filters, `weight` of shape out×in×kh×kw (a first layer: in is 1 or 3).

    Each filter is min-max scaled to [0, 1] on its own; 3 input channels are drawn as RGB, any
    other number as the grayscale mean over input channels.
    """
    weight = np.asarray(weight, dtype=np.float64)
    out = weight.shape[0]
    cols = int(np.ceil(np.sqrt(out)))
    rows = int(np.ceil(out / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8 + 0.5, rows * 0.8 + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= out:
            continue
        f = weight[i]
        f = (f - f.min()) / (f.max() - f.min()) if f.max() > f.min() else np.zeros_like(f)
        if f.shape[0] == 3:
            ax.imshow(f.transpose(1, 2, 0), interpolation="nearest")
        else:
            ax.imshow(f.mean(axis=0), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def pareto_front(cost: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower cost and higher accuracy),
    sorted by cost."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -accuracy[i]))
    front, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front


def plot_pareto(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Test accuracy against MACs and against batch-1 latency, one labelled point per row of a
    comparison table (`report.comparison_table`), the Pareto front joined by a line."""
    panels = [("macs", "MACs per image (millions)", 1e-6), ("latency_b1_ms", "latency at batch 1 (ms)", 1.0)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (column, label, scale) in zip(axes, panels, strict=True):
        cost = (table[column] * scale).tolist()
        acc = table["test_acc"].tolist()
        ax.scatter(cost, acc, zorder=3)
        for name, x, y in zip(table["model"], cost, acc, strict=True):
            ax.annotate(str(name), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = pareto_front(cost, acc)
        ax.plot([cost[i] for i in front], [acc[i] for i in front], color="gray", lw=1, zorder=2)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_sensitivity(table: pd.DataFrame, base_acc: float, path: str | Path, title: str = "") -> Path:
    """Test accuracy after pruning one layer (or channel group) alone, per layer, one line per
    ratio; the unpruned accuracy as a dashed line. `table` has columns layer, ratio, test_acc and
    optionally layers (how many layers a row prunes; a group of several says so on its tick)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * table["layer"].nunique() + 2), 4))
    layers = list(dict.fromkeys(table["layer"]))
    x = np.arange(len(layers))
    for ratio, rows in table.groupby("ratio"):
        by_layer = rows.set_index("layer").loc[layers, "test_acc"]
        ax.plot(x, by_layer, marker="o", label=f"{ratio:g} of channels removed")
    ax.axhline(base_acc, color="gray", ls="--", lw=1, label="unpruned")
    counts = table.groupby("layer")["layers"].first() if "layers" in table else {}
    ticks = [f"{name} ({counts[name]} layers)" if counts.get(name, 1) > 1 else name for name in layers]
    ax.set_xticks(x, labels=ticks, rotation=45, ha="right")
    ax.set_ylabel("test accuracy (no fine-tuning)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_stages(
    histories: Sequence[pd.DataFrame], stages: pd.DataFrame, path: str | Path, title: str = ""
) -> Path:
    """Layer-wise training: loss and accuracy per epoch of every stage (train solid, validation
    dashed, one colour per stage), and accuracy against the number of conv blocks."""
    fig, (ax_loss, ax_acc, ax_depth) = plt.subplots(1, 3, figsize=(16, 4.2))
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(histories))))
    for number, (history, colour) in enumerate(zip(histories, colours, strict=True), start=1):
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
            ax.plot(history["epoch"], history[f"train_{metric}"], color=colour, label=f"stage {number}")
            if history[f"val_{metric}"].notna().any():
                ax.plot(history["epoch"], history[f"val_{metric}"], color=colour, ls="--")
    for ax, label in ((ax_loss, "cross-entropy loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch within the stage")
        ax.set_ylabel(label + " (solid: train, dashed: validation)")
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, ncol=2)
    ax_depth.plot(stages["blocks"], stages["best_val_acc"], marker="o", label="best validation")
    ax_depth.plot(stages["blocks"], stages["test_acc"], marker="s", label="test")
    for column, style in (("csi_train", ":"), ("csi_test", "-.")):
        if column in stages:
            label = column.replace("_", " ")
            ax_depth.plot(stages["blocks"], stages[column], ls=style, marker=".", label=label)
    ax_depth.set_xlabel("conv blocks")
    ax_depth.set_ylabel("accuracy / CSI of the last block")
    ax_depth.grid(alpha=0.3)
    ax_depth.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
