"""`compresskit.scratch`'s three-layer CNN (NumPy only) on a 5,000-image CIFAR-10 subset.

conv(32 filters 5×5, pad 2)-ReLU-2×2 max-pool → affine(256)-ReLU → affine(10), Kaiming
initialisation, L2 1e-3, Adam lr 1e-3, batch 50, seeded. Trains on a class-balanced 5,000-image
subset of CIFAR-10's training split, validates on 1,000 other training images, tests on 1,000
test images (class-balanced), and writes under `--out`: ``history.csv`` (loss, train and
validation accuracy per epoch), ``curves.png``, ``filters.png`` (the first layer's filters) and
``summary.json`` (test accuracy, time). Usage (CIFAR-10 from make_cifar10.py):

    python experiments/scratch_cifar10.py --data-dir data --epochs 10 --out results/scratch-cifar10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from compresskit.data import balanced_subset, load_dataset
from compresskit.plots import plot_filters, plt, save_figure
from compresskit.scratch import ThreeLayerConvNet
from compresskit.scratch.solver import accuracy, train


def as_array(images: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 N×C×H×W → float64 normalised with the training set's per-channel statistics."""
    x = images.numpy().astype(np.float64) / 255.0
    return (x - mean[None, :, None, None]) / std[None, :, None, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="results/scratch-cifar10")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("cifar10", args.data_dir, download=False)
    pick = balanced_subset(data.train.labels, args.train_images + 1000, seed=0)
    train_idx, val_idx = pick[: args.train_images], pick[args.train_images :]
    test_idx = balanced_subset(data.test.labels, 1000, seed=0)
    mean, std = np.asarray(data.mean), np.asarray(data.std)
    x_train = as_array(data.train.images[train_idx], mean, std)
    x_val = as_array(data.train.images[val_idx], mean, std)
    x_test = as_array(data.test.images[test_idx], mean, std)
    y_train, y_val, y_test = (
        labels.numpy()
        for labels in (data.train.labels[train_idx], data.train.labels[val_idx], data.test.labels[test_idx])
    )
    model = ThreeLayerConvNet(
        input_dim=(3, 32, 32), num_filters=32, filter_size=5, hidden_dim=256, reg=1e-3, seed=0
    )
    start = time.perf_counter()
    history = train(
        model,
        x_train,
        y_train,
        x_val,
        y_val,
        update="adam",
        lr=1e-3,
        epochs=args.epochs,
        batch_size=50,
        seed=0,
    )
    seconds = time.perf_counter() - start
    table = pd.DataFrame(
        {
            "epoch": range(1, args.epochs + 1),
            "train_loss": history.loss,
            "train_acc": history.train_acc,
            "val_acc": history.val_acc,
        }
    )
    table.to_csv(out / "history.csv", index=False)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(table["epoch"], table["train_loss"], marker=".")
    ax_loss.set_ylabel("training loss (mean over the epoch's batches)")
    ax_acc.plot(table["epoch"], table["train_acc"], marker=".", label="train")
    ax_acc.plot(table["epoch"], table["val_acc"], marker=".", label="validation")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(f"scratch three-layer CNN, {args.train_images} CIFAR-10 images")
    save_figure(fig, out / "curves.png")
    plot_filters(model.params["W1"], out / "filters.png", title="first-layer filters (scratch CNN)")
    test_acc = accuracy(model, x_test, y_test)
    summary = {
        "train_images": args.train_images,
        "val_images": len(val_idx),
        "test_images": len(test_idx),
        "epochs": args.epochs,
        "test_acc": test_acc,
        "best_val_acc": max(history.val_acc),
        "seconds": seconds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table.to_string(index=False))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
