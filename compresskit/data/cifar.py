"""CIFAR-10 and CIFAR-100 (the python-version batches): found in a data folder or downloaded
through torchvision (md5-checked archive), then read by compresskit itself through `safe_pickle`
and validated by structure. Images are uint8 N×3×32×32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compresskit.data.dataset import IMAGE_SIZE, ImageSplit
from compresskit.data.safe_pickle import load_pickle
from compresskit.errors import CompresskitError, ParameterError

CIFAR = {
    # name: (folder, train files, test file, meta file, url)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        "test",
        "meta",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}

# The label sets of each CIFAR dataset: label set -> (label key, class-name key in meta, classes).
# Every other dataset has only "fine" labels (its one label set).
CIFAR_LABELS = {
    "cifar10": {"fine": ("labels", "label_names", 10)},
    "cifar100": {
        "fine": ("fine_labels", "fine_label_names", 100),
        "coarse": ("coarse_labels", "coarse_label_names", 20),
    },
}


def _unpickle(path: Path, what: str) -> dict:
    obj = load_pickle(path, what)  # numpy arrays and plain data only: never runs code
    if not isinstance(obj, dict):
        raise CompresskitError(f"{path} is not a {what} file: expected a pickled dict.")
    return obj


def _read_cifar_batch(path: Path, label_key: str, num_classes: int, what: str, hint: str = "") -> ImageSplit:
    batch = _unpickle(path, what)
    for key in ("data", label_key):
        if key not in batch:
            raise CompresskitError(f"{path} is not a {what} file: it has no '{key}' entry{hint}.")
    data, labels = batch["data"], np.asarray(batch[label_key])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise CompresskitError(f"{path} is not a {what} file: 'data' must be a uint8 N×3072 array.")
    if data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
        raise CompresskitError(
            f"{path} is not a {what} file: 'data' rows have {data.shape[1]} values, not 3072."
        )
    if labels.shape != (data.shape[0],):
        raise CompresskitError(
            f"{path} is not a {what} file: {len(labels)} labels for {data.shape[0]} images."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CompresskitError(f"{path} is not a {what} file: labels must lie in 0..{num_classes - 1}.")
    images = torch.from_numpy(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy())
    return ImageSplit(images, torch.from_numpy(labels.astype(np.int64)))


def load_cifar(
    name: str, root: Path, *, download: bool, label_set: str = "fine"
) -> tuple[ImageSplit, ImageSplit, list[str]]:
    folder, train_files, test_file, meta_file, url = CIFAR[name]
    label_key, names_key, n_classes = CIFAR_LABELS[name][label_set]
    hint = " (needed by the coarse labels)" if label_set == "coarse" else ""
    what = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    base = root if root.name == folder else root / folder
    if not base.is_dir():
        if not download:
            raise ParameterError(
                f"{what} files were not found in {base} and {{1}} is off; download {url} and extract it "
                f"into {root}, or point {{0}} at a folder holding {folder}/.",
                "data_dir", "download",
            )  # fmt: skip
        _download_cifar(name, root, url, folder)
        base = root / folder
    missing = [f for f in [*train_files, test_file, meta_file] if not (base / f).is_file()]
    if missing:
        raise CompresskitError(
            f"{base} is missing the {what} file(s) {', '.join(missing)}; "
            f"expected {', '.join([*train_files, test_file, meta_file])}."
        )
    parts = [_read_cifar_batch(base / f, label_key, n_classes, what, hint) for f in train_files]
    train = ImageSplit(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    test = _read_cifar_batch(base / test_file, label_key, n_classes, what, hint)
    meta = _unpickle(base / meta_file, f"{what} meta")
    classes = meta.get(names_key)
    if not isinstance(classes, list) or len(classes) != n_classes:
        raise CompresskitError(
            f"{base / meta_file} is not a {what} meta file: "
            f"'{names_key}' must list {n_classes} class names{hint}."
        )
    return train, test, [str(c) for c in classes]


def _download_cifar(name: str, root: Path, url: str, folder: str) -> None:
    """Download and extract the archive through torchvision, which verifies its md5. Only the
    archive step: torchvision's CIFAR classes would then read the batches with plain
    ``pickle.load``; compresskit reads them itself (`safe_pickle`)."""
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    except Exception as exc:
        raise ParameterError(
            f"{name} files were not found in {root / folder} and the download failed ({exc}); "
            f"download {url} and extract it into {root}, or point {{0}} at a folder holding {folder}/.",
            "data_dir",
        ) from None
