"""Datasets by name: `DATASET_NAMES` or ``folder:PATH``, the checks of the dataset name, `labels`
and `image_size`, and `load_dataset`, which hands each name to the module of its source.
"""

from __future__ import annotations

import os
from pathlib import Path

from compresskit.data.builtin import digits_splits, synthetic_splits
from compresskit.data.cifar import CIFAR, CIFAR_LABELS, load_cifar
from compresskit.data.dataset import IMAGE_SIZE, ImageDataset, ImageSplit, channel_stats, to_image_size
from compresskit.data.mnist import FASHION_MNIST_CLASSES, idx_candidate_dirs, load_idx_pair
from compresskit.errors import ParameterError

FOLDER_PREFIX = "folder:"  # the dataset folder:PATH, an image folder (`image_folder`)
DATASET_NAMES = ("cifar10", "cifar100", "fashion-mnist", "mnist", "digits", "synthetic")
DEFAULT_DATA_DIR = Path(os.environ.get("COMPRESSKIT_DATA", "data"))
LABEL_SETS = ("fine", "coarse")


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    labels: str = "fine",
    image_size: int = IMAGE_SIZE,
) -> ImageDataset:
    """Load a dataset by name (one of `DATASET_NAMES`, or ``folder:PATH``: an image folder, read by
    `image_folder.load_image_folder`; `data_dir`, when given, replaces its PATH).

    `data_dir` is where files live (default ``$COMPRESSKIT_DATA`` or ``./data``). CIFAR files found
    there are validated by structure; when absent they are downloaded (with torchvision's checksum
    check) unless `download` is False. MNIST-style IDX files are never downloaded.

    `labels` picks the label set (one of `LABEL_SETS`, see `check_labels`): "fine" (default) gives
    every dataset's usual classes; "coarse" gives CIFAR-100's 20 superclasses (the ``coarse_labels``
    of the train/test files, named by ``coarse_label_names`` in ``meta``) and is refused elsewhere.
    Images, their order and the channel statistics do not depend on `labels`.

    `image_size` (pixels, see `check_image_size`) is the side every image is resized to; a set
    whose resized uint8 images would not fit the memory budget is refused first.
    """
    check_dataset(name)
    check_labels(name, labels)
    check_image_size(image_size)
    if name.startswith(FOLDER_PREFIX):
        from compresskit.data.image_folder import load_folder_dataset  # lazily: Pillow, and this module

        return load_folder_dataset(name, data_dir, image_size)
    explicit_dir = data_dir is not None
    root = Path(data_dir) if explicit_dir else DEFAULT_DATA_DIR
    if explicit_dir and not root.is_dir() and name not in ("digits", "synthetic"):
        raise ParameterError(f"{{0}} {root} is not a directory.", "data_dir")
    if name in CIFAR:
        train, test, classes = load_cifar(name, root, download=download, label_set=labels)
    elif name in ("fashion-mnist", "mnist"):
        candidates = idx_candidate_dirs(name, root, include_system=not explicit_dir)
        train, test = load_idx_pair(name, candidates)
        classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    elif name == "digits":
        train, test, classes = digits_splits()
    else:
        train, test, classes = synthetic_splits()
    if train.images.shape[-2:] != (image_size, image_size):
        from compresskit.data.image_folder import check_fits_memory

        check_fits_memory(len(train) + len(test), train.images.shape[1], image_size, f"dataset {name}")
    train = ImageSplit(to_image_size(train.images, image_size), train.labels)
    test = ImageSplit(to_image_size(test.images, image_size), test.labels)
    mean, std = channel_stats(train.images)
    return ImageDataset(name, train, test, list(classes), mean, std, label_set=labels)


def check_dataset(name: str) -> None:
    """Refuse a dataset name that is neither one of `DATASET_NAMES` nor ``folder:PATH``; the error
    names it ``dataset`` (`load_dataset`'s `name`: "name" is the model's elsewhere)."""
    if (name not in DATASET_NAMES and not name.startswith(FOLDER_PREFIX)) or name == FOLDER_PREFIX:
        raise ParameterError(
            f"{{0}} must be one of: {', '.join(DATASET_NAMES)}, or folder:PATH (an image folder holding "
            f"train/CLASS/… and test/CLASS/…); got '{name}'.",
            "dataset",
        )


def check_image_size(size: int) -> None:
    """Refuse an `image_size` that is not a positive whole number of pixels."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ParameterError(f"{{0}} must be a positive whole number of pixels; got {size}.", "image_size")


def check_labels(dataset: str, labels: str) -> None:
    """Refuse a label set that is not one of `LABEL_SETS` or that `dataset` does not have.

    Only CIFAR-100 has "coarse" labels; every dataset has "fine" ones. Needs no files, so a caller
    can check the flag before touching data or disk.
    """
    if labels not in LABEL_SETS:
        raise ParameterError(f"{{0}} must be one of: {', '.join(LABEL_SETS)}; got '{labels}'.", "labels")
    available = CIFAR_LABELS.get(dataset, {"fine": None})
    if labels not in available:
        having = [n for n, sets in CIFAR_LABELS.items() if labels in sets]
        raise ParameterError(
            f"{{0}} {labels} is only available for {', '.join(having)}; "
            f"{dataset} has {' and '.join(available)} labels only.",
            "labels",
        )
