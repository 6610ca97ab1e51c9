"""Writers of tiny fake CIFAR pickles and MNIST-style IDX files in the official layouts.

Everything is written by the tests into pytest's tmp_path; nothing here reads data/, the network
or system dataset folders.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


@dataclass
class FakeCifar:
    """What a fake CIFAR writer put on disk, for comparison with what is loaded."""

    folder: Path
    train_data: np.ndarray  # uint8 N×3072, in file order (batch 1 first)
    train_labels: np.ndarray
    test_data: np.ndarray
    test_labels: np.ndarray
    classes: list[str]


def write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 6, seed: int = 0) -> FakeCifar:
    """Write the official python layout: root/cifar-10-batches-py/{data_batch_1..5,test_batch,
    batches.meta}, each batch a pickled dict with 'data' uint8 N×3072 and 'labels' a list."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR10_FOLDER
    datas, labels = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        lab = rng.integers(0, 10, size=per_batch)
        write_pickle(
            folder / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": [int(v) for v in lab],
                "data": data,
                "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
            },
        )
        datas.append(data)
        labels.append(lab)
    test_data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
    test_labels = rng.integers(0, 10, size=per_batch)
    write_pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": [int(v) for v in test_labels],
            "data": test_data,
            "filenames": [f"test_{j}.png" for j in range(per_batch)],
        },
    )
    write_pickle(
        folder / "batches.meta",
        {"num_cases_per_batch": per_batch, "label_names": list(CIFAR10_NAMES), "num_vis": 3072},
    )
    return FakeCifar(
        folder,
        np.concatenate(datas),
        np.concatenate(labels),
        test_data,
        test_labels,
        list(CIFAR10_NAMES),
    )


def write_cifar100(root: Path, n_train: int = 8, n_test: int = 4, seed: int = 0) -> FakeCifar:
    """Write root/cifar-100-python/{train,test,meta} with 'fine_labels' and 'coarse_labels'."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR100_FOLDER
    fine_names = [f"fine{i:02d}" for i in range(100)]
    coarse_names = [f"coarse{i:02d}" for i in range(20)]
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n)
        coarse = rng.integers(0, 20, size=n)
        write_pickle(
            folder / split,
            {
                "filenames": [f"{split}_{j}.png" for j in range(n)],
                "batch_label": f"{split} batch",
                "fine_labels": [int(v) for v in fine],
                "coarse_labels": [int(v) for v in coarse],
                "data": data,
            },
        )
        arrays[split] = (data, fine)
    write_pickle(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names})
    return FakeCifar(folder, *arrays["train"], *arrays["test"], fine_names)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format: 0x00 0x00 0x08 ndim, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write `array` as an IDX file, gzip-compressed when the name ends in .gz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = idx_bytes(array)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx_dataset(
    folder: Path, *, gz: bool, n_train: int = 5, n_test: int = 3, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the four MNIST-style IDX files (28×28 images, labels 0..9) into `folder`."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        image_stem, label_stem = IDX_STEMS[split]
        write_idx(Path(folder) / f"{image_stem}{suffix}", images)
        write_idx(Path(folder) / f"{label_stem}{suffix}", labels)
        written[split] = (images, labels)
    return written
