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
CIFAR100_FINE_NAMES = [f"fine{i:02d}" for i in range(100)]
CIFAR100_COARSE_NAMES = [f"coarse{i:02d}" for i in range(20)]
# The fake CIFAR-100's fixed fine -> coarse mapping: like the official one, five fine classes per
# superclass, and not simply fine // 5 (7 is coprime to 20, so each residue occurs five times).
CIFAR100_FINE_TO_COARSE = np.array([(7 * i + 3) % 20 for i in range(100)])


@dataclass
class FakeCifar:
    """What a fake CIFAR writer put on disk, for comparison with what is loaded."""

    folder: Path
    train_data: np.ndarray  # uint8 N×3072, in file order (batch 1 first)
    train_labels: np.ndarray
    test_data: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    # CIFAR-100 only (None for CIFAR-10 and when written without them): the superclass labels
    # (CIFAR100_FINE_TO_COARSE of the fine labels) and the 20 superclass names.
    coarse_train_labels: np.ndarray | None = None
    coarse_test_labels: np.ndarray | None = None
    coarse_classes: list[str] | None = None


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


def write_cifar100(
    root: Path, n_train: int = 8, n_test: int = 4, seed: int = 0, *, coarse: bool = True
) -> FakeCifar:
    """Write root/cifar-100-python/{train,test,meta} like the official files: train/test dicts with
    'data', 'fine_labels', 'coarse_labels' (the fine labels mapped by CIFAR100_FINE_TO_COARSE),
    'filenames' and 'batch_label'; meta with 'fine_label_names' and 'coarse_label_names'.
    ``coarse=False`` leaves out both coarse keys (a copy without superclasses)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR100_FOLDER
    arrays, coarse_arrays = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n)
        rng.integers(0, 20, size=n)  # still drawn, so the images and fine labels stay as before
        superclass = CIFAR100_FINE_TO_COARSE[fine]
        batch = {
            "filenames": [f"{split}_{j}.png" for j in range(n)],
            "batch_label": f"{split} batch",
            "fine_labels": [int(v) for v in fine],
            "coarse_labels": [int(v) for v in superclass],
            "data": data,
        }
        if not coarse:
            del batch["coarse_labels"]
        write_pickle(folder / split, batch)
        arrays[split] = (data, fine)
        coarse_arrays[split] = superclass
    meta = {"fine_label_names": list(CIFAR100_FINE_NAMES), "coarse_label_names": list(CIFAR100_COARSE_NAMES)}
    if not coarse:
        del meta["coarse_label_names"]
    write_pickle(folder / "meta", meta)
    return FakeCifar(
        folder,
        *arrays["train"],
        *arrays["test"],
        list(CIFAR100_FINE_NAMES),
        coarse_train_labels=coarse_arrays["train"] if coarse else None,
        coarse_test_labels=coarse_arrays["test"] if coarse else None,
        coarse_classes=list(CIFAR100_COARSE_NAMES) if coarse else None,
    )


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


def write_image(path: Path, array: np.ndarray, **save_options: object) -> Path:
    """Save a uint8 H×W (grayscale) or H×W×C (RGB/RGBA) array with Pillow; the format follows the
    file's extension (``.png``, ``.jpg``, …)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path, **save_options)
    return path


def write_image_folder(
    root: Path,
    classes: list[str],
    counts: dict[str, int],
    *,
    size: tuple[int, int] = (16, 16),
    suffix: str = ".png",
    seed: int = 0,
) -> dict[str, list[tuple[Path, np.ndarray, int]]]:
    """Write an ImageFolder layout: root/SPLIT/CLASS/img_K.SUFFIX, `counts[SPLIT]` RGB images of
    `size` (height, width) per class, each a class-dependent colour plus noise. Returns, per split,
    (path, array, label index among the sorted `classes`) in the order compresskit reads them."""
    rng = np.random.default_rng(seed)
    order = sorted(classes)
    written: dict[str, list[tuple[Path, np.ndarray, int]]] = {}
    for split, count in counts.items():
        rows = []
        for name in order:
            label = order.index(name)
            base = np.array([60 * label % 256, 255 - 50 * label % 256, 40 + 30 * label], dtype=np.int64)
            for k in range(count):
                noise = rng.integers(-30, 31, size=(*size, 3))
                array = np.clip(base + noise, 0, 255).astype(np.uint8)
                path = write_image(Path(root) / split / name / f"img_{k:03d}{suffix}", array)
                rows.append((path, array, label))
        written[split] = rows
    return written


def stopping_after_epoch(recorder: type, epoch: int) -> type:
    """A subclass of a job's `EpochRecorder` that records `epoch` and then interrupts the run as
    Ctrl-C would (patch it over the job module's ``EpochRecorder`` to stop a run mid-way)."""

    class StopAfterEpoch(recorder):
        def __call__(self, state):
            super().__call__(state)
            if state.epoch == epoch:
                raise KeyboardInterrupt

    return StopAfterEpoch
