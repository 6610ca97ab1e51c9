"""The MNIST family (``fashion-mnist``, ``mnist``): the four IDX files (optionally gzipped) found
in a data folder, never downloaded. Images are uint8 N×1×28×28, labels 0..9.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from compresskit.data.dataset import ImageSplit
from compresskit.errors import CompresskitError, ParameterError

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) holding unsigned bytes."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise CompresskitError(f"{path} could not be read as an IDX file ({exc}).") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise CompresskitError(f"{path} is not an IDX file: bad magic number.")
    if raw[2] != 0x08:
        raise CompresskitError(f"{path} is not an unsigned-byte IDX file (type code {raw[2]:#x}).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CompresskitError(f"{path} is not an IDX file: header is truncated.")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise CompresskitError(
            f"{path} is not a valid IDX file: {len(raw)} bytes for dimensions {dims} (expected {expected})."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def idx_candidate_dirs(name: str, root: Path, *, include_system: bool) -> list[Path]:
    sub = {"fashion-mnist": ("fashion-mnist", "FashionMNIST"), "mnist": ("mnist", "MNIST")}[name]
    dirs = [root, root / sub[0], root / sub[1] / "raw"]
    if include_system and name == "fashion-mnist":
        dirs.append(DEBIAN_FASHION_MNIST_DIR)
    return dirs


def _find_idx(stem: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / stem, d / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_idx_pair(name: str, dirs: list[Path]) -> tuple[ImageSplit, ImageSplit]:
    splits = []
    for image_stem, label_stem in _IDX_FILES.values():
        image_path, label_path = _find_idx(image_stem, dirs), _find_idx(label_stem, dirs)
        if image_path is None or label_path is None:
            stem = image_stem if image_path is None else label_stem
            hint = " (apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
            raise ParameterError(
                f"{name} file {stem}[.gz] was not found in {dirs[0]}; put the four IDX files "
                f"there or point {{0}} at a folder holding them{hint}.",
                "data_dir",
            )
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3:
            raise CompresskitError(f"{image_path} must hold N×H×W images, not {images.ndim}-D.")
        if labels.ndim != 1 or len(labels) != len(images):
            raise CompresskitError(
                f"{label_path} must hold one label per image of {image_path} ({len(images)})."
            )
        if labels.size and labels.max() >= 10:
            raise CompresskitError(f"{label_path} has labels outside 0..9.")
        splits.append(
            ImageSplit(
                torch.from_numpy(images.copy()).unsqueeze(1),
                torch.from_numpy(labels.astype(np.int64)),
            )
        )
    return splits[0], splits[1]
