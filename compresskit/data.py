"""Datasets as uint8 tensors, the stratified validation split, and the batched `Loader`.

Every dataset loads as an `ImageDataset`: uint8 images of shape N×C×S×S (S = `load_dataset`'s
`image_size`, 32 by default), int64 labels, class names, and the per-channel mean/std of the
training images (in [0, 1] units). ``folder:PATH`` names an image folder (`image_folder`).

Two conventions hold for every dataset, so that one model family serves all of them:

* **Size.** Images of another size (MNIST-style 28×28, digits 8×8, CIFAR's 32×32 when S differs)
  are resized to S×S with bilinear interpolation (`torch.nn.functional.interpolate`,
  ``align_corners=False``; antialiased only when shrinking) and rounded back to uint8. Image
  folders are resized by Pillow while decoding.
* **Grayscale** stays one channel: the model's first convolution takes ``in_channels=1``. Nothing is
  replicated to three channels.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from compresskit.distributed import shard
from compresskit.errors import CompresskitError
from compresskit.safe_pickle import load_pickle

IMAGE_SIZE = 32
FOLDER_PREFIX = "folder:"  # --dataset folder:PATH, an image folder (`image_folder`)
DATASET_NAMES = ("cifar10", "cifar100", "fashion-mnist", "mnist", "digits", "synthetic")
DEFAULT_DATA_DIR = Path(os.environ.get("COMPRESSKIT_DATA", "data"))
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

LABEL_SETS = ("fine", "coarse")

_CIFAR = {
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
_CIFAR_LABELS = {
    "cifar10": {"fine": ("labels", "label_names", 10)},
    "cifar100": {
        "fine": ("fine_labels", "fine_label_names", 100),
        "coarse": ("coarse_labels", "coarse_label_names", 20),
    },
}


@dataclass
class ImageSplit:
    """One split: `images` uint8 N×C×S×S, `labels` int64 N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> ImageSplit:
        return ImageSplit(self.images[indices], self.labels[indices])


@dataclass
class ImageDataset:
    """A dataset with its train and test splits, class names and per-channel statistics.

    `label_set` is which labels the splits carry: "fine", or "coarse" (CIFAR-100's 20 superclasses).
    `val` is the dataset's own validation split (an image folder's ``val/``), or None: then a run
    holds its validation images out of `train` (`stratified_split`).
    """

    name: str
    train: ImageSplit
    test: ImageSplit
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    label_set: str = "fine"
    val: ImageSplit | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        """The side S of every (square) image, in pixels."""
        return int(self.train.images.shape[-1])


# --------------------------------------------------------------------------- loading


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
        from compresskit.image_folder import load_folder_dataset  # it builds on this module

        return load_folder_dataset(name, data_dir, image_size)
    explicit_dir = data_dir is not None
    root = Path(data_dir) if explicit_dir else DEFAULT_DATA_DIR
    if explicit_dir and not root.is_dir() and name not in ("digits", "synthetic"):
        raise CompresskitError(f"--data-dir {root} is not a directory.")
    if name in _CIFAR:
        train, test, classes = _load_cifar(name, root, download=download, label_set=labels)
    elif name in ("fashion-mnist", "mnist"):
        candidates = _idx_candidate_dirs(name, root, include_system=not explicit_dir)
        train, test = _load_idx_pair(name, candidates)
        classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    elif name == "digits":
        train, test, classes = _load_digits()
    else:
        train, test, classes = _make_synthetic()
    if train.images.shape[-2:] != (image_size, image_size):
        from compresskit.image_folder import check_fits_memory

        check_fits_memory(len(train) + len(test), train.images.shape[1], image_size, f"--dataset {name}")
    train = ImageSplit(_to_image_size(train.images, image_size), train.labels)
    test = ImageSplit(_to_image_size(test.images, image_size), test.labels)
    mean, std = channel_stats(train.images)
    return ImageDataset(name, train, test, list(classes), mean, std, label_set=labels)


def check_dataset(name: str) -> None:
    """Refuse a ``--dataset`` that is neither one of `DATASET_NAMES` nor ``folder:PATH``."""
    if (name not in DATASET_NAMES and not name.startswith(FOLDER_PREFIX)) or name == FOLDER_PREFIX:
        raise CompresskitError(
            f"--dataset '{name}' is not known; choose one of: {', '.join(DATASET_NAMES)}, "
            "or folder:PATH (an image folder holding train/CLASS/… and test/CLASS/…)."
        )


def check_image_size(size: int) -> None:
    """Refuse an ``--image-size`` that is not a positive whole number of pixels."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise CompresskitError(f"--image-size {size} must be a positive whole number of pixels.")


def check_labels(dataset: str, labels: str) -> None:
    """Refuse a label set that is not one of `LABEL_SETS` or that `dataset` does not have.

    Only CIFAR-100 has "coarse" labels; every dataset has "fine" ones. Needs no files, so a caller
    can check the flag before touching data or disk.
    """
    if labels not in LABEL_SETS:
        raise CompresskitError(f"--labels '{labels}' is not known; choose one of: {', '.join(LABEL_SETS)}.")
    available = _CIFAR_LABELS.get(dataset, {"fine": None})
    if labels not in available:
        having = [n for n, sets in _CIFAR_LABELS.items() if labels in sets]
        raise CompresskitError(
            f"--labels {labels} is only available for {', '.join(having)}; "
            f"{dataset} has {' and '.join(available)} labels only."
        )


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images N×C×H×W, in [0, 1] units."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for chunk in images.split(8192):
        x = chunk.to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _to_image_size(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Bring uint8 N×C×H×W images to `size`×`size` (bilinear); see the module docstring."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images.contiguous()
    shrink = size < h or size < w  # antialias only then: upscaling stays exactly as it always was
    out = []
    for chunk in images.split(8192):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=shrink)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


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


def _load_cifar(
    name: str, root: Path, *, download: bool, label_set: str = "fine"
) -> tuple[ImageSplit, ImageSplit, list[str]]:
    folder, train_files, test_file, meta_file, url = _CIFAR[name]
    label_key, names_key, n_classes = _CIFAR_LABELS[name][label_set]
    hint = " (needed by --labels coarse)" if label_set == "coarse" else ""
    what = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    base = root if root.name == folder else root / folder
    if not base.is_dir():
        if not download:
            raise CompresskitError(
                f"{what} files were not found in {base} and downloading is off (--no-download); "
                f"download {url} and extract it into {root}, or pass --data-dir DIR holding {folder}/."
            )
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
        raise CompresskitError(
            f"{name} files were not found in {root / folder} and the download failed ({exc}); "
            f"download {url} and extract it into {root}, or pass --data-dir DIR holding {folder}/."
        ) from None


# --------------------------------------------------------------------------- IDX (MNIST family)

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


def _idx_candidate_dirs(name: str, root: Path, *, include_system: bool) -> list[Path]:
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


def _load_idx_pair(name: str, dirs: list[Path]) -> tuple[ImageSplit, ImageSplit]:
    splits = []
    for image_stem, label_stem in _IDX_FILES.values():
        image_path, label_path = _find_idx(image_stem, dirs), _find_idx(label_stem, dirs)
        if image_path is None or label_path is None:
            stem = image_stem if image_path is None else label_stem
            hint = " (apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
            raise CompresskitError(
                f"{name} file {stem}[.gz] was not found in {dirs[0]}; put the four IDX files "
                f"there or pass --data-dir DIR holding them{hint}."
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


# --------------------------------------------------------------------------- embedded data


def _load_digits() -> tuple[ImageSplit, ImageSplit, list[str]]:
    """scikit-learn's 1,797 8×8 digits (0..16) as uint8; a fixed stratified 20% test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8))
    images = images.unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = stratified_split(labels, 0.2, seed=0)
    return (
        ImageSplit(images[train_idx], labels[train_idx]),
        ImageSplit(images[test_idx], labels[test_idx]),
        [str(i) for i in range(10)],
    )


def _make_synthetic(
    num_classes: int = 4, train_per_class: int = 48, test_per_class: int = 16
) -> tuple[ImageSplit, ImageSplit, list[str]]:
    """A tiny learnable RGB set for tests: each class is a smooth random template plus noise."""
    g = torch.Generator().manual_seed(1234)
    templates = torch.rand(num_classes, 3, 4, 4, generator=g) * 2 - 1
    templates = F.interpolate(templates, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")

    def split(per_class: int) -> ImageSplit:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        noise = torch.randn(len(labels), 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        x = 128 + 70 * templates[labels] + 35 * noise
        return ImageSplit(x.round().clamp(0, 255).to(torch.uint8), labels)

    return split(train_per_class), split(test_per_class), [f"class{i}" for i in range(num_classes)]


# --------------------------------------------------------------------------- split


def check_val_fraction(fraction: float) -> None:
    """Refuse a validation fraction outside [0, 1)."""
    if not 0.0 <= fraction < 1.0:
        raise CompresskitError(f"--val-fraction {fraction} is outside the allowed range [0, 1).")


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices so each class contributes `fraction` of its samples to the second part.

    Returns ``(keep, held_out)``, both sorted int64 index tensors. Each class with at least two
    samples gives at least one sample to each part when ``0 < fraction < 1``. The same seed gives
    the same split.
    """
    check_val_fraction(fraction)
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(len(idx) * fraction)
        if fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        held.append(idx[:k])
        keep.append(idx[k:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def balanced_subset(
    labels: torch.Tensor, size: int, seed: int, *, among: torch.Tensor | None = None
) -> torch.Tensor:
    """Sorted indices of a class-balanced random subset of `size` samples.

    Every class present gives ``size // k`` samples (k classes); the first ``size % k`` classes, in
    a random order, give one more. A class with fewer samples gives all it has, so the subset is
    smaller than `size` only then. The same seed gives the same subset. With `among` (sorted
    indices into `labels`), the subset is drawn from those samples only.
    """
    if among is not None:
        return among[balanced_subset(labels[among], size, seed)]
    classes = torch.unique(labels)
    if size < len(classes):
        raise CompresskitError(
            f"--samples {size} is too small: it must be at least the number of classes ({len(classes)})."
        )
    g = torch.Generator().manual_seed(seed)
    extra = set(classes[torch.randperm(len(classes), generator=g)[: size % len(classes)]].tolist())
    chosen = []
    for c in classes.tolist():
        idx = torch.nonzero(labels == c).flatten()
        take = size // len(classes) + (c in extra)
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:take]])
    return torch.cat(chosen).sort().values


# --------------------------------------------------------------------------- augmentation + Loader

_AUGMENT_DEFAULTS = {"crop": 4, "flip": 1, "cutout": 8, "jitter": 0.4, "rotate": 15}
# What each part's value may be, for the error messages.
_AUGMENT_ALLOWED = {
    "crop": "a whole number of pixels, 0 or more",
    "flip": "no value",
    "cutout": "a whole number of pixels, 0 or more",
    "jitter": "a number from 0 up to (not including) 1",
    "rotate": "a number of degrees from 0 to 180",
}
MAX_ROTATION = 180.0


@dataclass(frozen=True)
class Augmentation:
    """Per-sample batch augmentation. Zero/False switches a part off.

    crop_padding: zero-pad by this many pixels, then crop back to H×W at a random offset.
    flip: mirror left-right with probability 1/2.
    cutout: side in pixels of a square set to the dataset mean (0 after normalisation).
    jitter: brightness, contrast and (RGB only) saturation each scaled by a factor in
        [1 - jitter, 1 + jitter].
    rotate: rotate each image about its centre by its own angle drawn uniformly from
        [-rotate, +rotate] degrees (0..180), bilinear, zero padding; see `random_rotate`.
    """

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0
    jitter: float = 0.0
    rotate: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Augmentation:
        """Parse e.g. ``"crop,flip"``, ``"crop=2,flip,cutout=12"``, ``"rotate=10"`` or ``"none"``."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if parts == ["none"]:
            return cls()
        values: dict[str, float] = {}
        for part in parts:
            key, _, value = part.partition("=")
            if key not in _AUGMENT_DEFAULTS:
                raise CompresskitError(
                    f"--augment '{part}' is not known; use a comma list of "
                    f"{', '.join(_AUGMENT_DEFAULTS)} (each optionally =VALUE), or 'none'."
                )
            if key == "flip" and value:
                raise CompresskitError(f"--augment '{part}': flip takes no value.")
            allowed = f"{key} takes {_AUGMENT_ALLOWED[key]}"
            try:
                number = float(value) if value else _AUGMENT_DEFAULTS[key]
            except ValueError:
                raise CompresskitError(f"--augment '{part}': {value!r} is not a number; {allowed}.") from None
            if not math.isfinite(number):
                raise CompresskitError(f"--augment '{part}': {allowed}.")
            if key in ("crop", "cutout") and number != int(number):
                raise CompresskitError(f"--augment '{part}': {key} takes a whole number of pixels.")
            if number < 0:
                raise CompresskitError(f"--augment '{part}': the value must not be negative; {allowed}.")
            if key == "rotate" and number > MAX_ROTATION:
                raise CompresskitError(f"--augment '{part}': {allowed}.")
            values[key] = number
        if values.get("jitter", 0) >= 1:
            raise CompresskitError("--augment jitter must be below 1.")
        return cls(
            crop_padding=int(values.get("crop", 0)),
            flip=bool(values.get("flip", 0)),
            cutout=int(values.get("cutout", 0)),
            jitter=float(values.get("jitter", 0.0)),
            rotate=float(values.get("rotate", 0.0)),
        )

    def describe(self) -> str:
        parts = []
        if self.crop_padding:
            parts.append(f"crop={self.crop_padding}")
        if self.flip:
            parts.append("flip")
        if self.cutout:
            parts.append(f"cutout={self.cutout}")
        if self.jitter:
            parts.append(f"jitter={self.jitter:g}")
        if self.rotate:
            parts.append(f"rotate={_shortest(self.rotate)}")
        return ",".join(parts) or "none"

    @property
    def active(self) -> bool:
        return self.describe() != "none"


def _shortest(value: float) -> str:
    """`value` as ``:g`` text when that reads back exactly, else as its round-trip repr."""
    text = f"{value:g}"
    return text if float(text) == value else repr(value)


def default_augmentation(dataset: str) -> Augmentation:
    """Crop + flip for natural images; crop only for digits, whose mirror images are not digits."""
    if dataset in ("digits", "mnist"):
        return Augmentation(crop_padding=2)
    return Augmentation(crop_padding=4, flip=True)


@dataclass(frozen=True)
class Rows:
    """Which rows ``[start, stop)`` of a batch of `total` images a process holds (its shard of a
    global batch under `torch.distributed`). The augmentations draw their random numbers for all
    `total` images and keep these rows, so every process's generator advances alike and each image
    gets the numbers it would get in one process."""

    start: int
    stop: int
    total: int


def _draw_count(images: torch.Tensor, rows: Rows | None) -> int:
    return images.shape[0] if rows is None else rows.total


def _mine(drawn: torch.Tensor, rows: Rows | None) -> torch.Tensor:
    return drawn if rows is None else drawn[rows.start : rows.stop]


def random_crop(
    images: torch.Tensor, padding: int, generator: torch.Generator, rows: Rows | None = None
) -> torch.Tensor:
    """Zero-pad B×C×H×W images by `padding` and cut each back to H×W at its own random offset."""
    b, c, h, w = images.shape
    n = _draw_count(images, rows)
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = _mine(torch.randint(0, 2 * padding + 1, (n,), generator=generator), rows).to(images.device)
    dx = _mine(torch.randint(0, 2 * padding + 1, (n,), generator=generator), rows).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator, rows: Rows | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    drawn = torch.rand(_draw_count(images, rows), generator=generator)
    flip = (_mine(drawn, rows) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_cutout(
    images: torch.Tensor, size: int, generator: torch.Generator, rows: Rows | None = None
) -> torch.Tensor:
    """Zero a size×size square (clipped at the border) at a random centre in each image."""
    _, _, h, w = images.shape
    n = _draw_count(images, rows)
    cy = _mine(torch.randint(0, h, (n,), generator=generator), rows).to(images.device)
    cx = _mine(torch.randint(0, w, (n,), generator=generator), rows).to(images.device)
    ys = torch.arange(h, device=images.device)[None, :] - (cy[:, None] - size // 2)
    xs = torch.arange(w, device=images.device)[None, :] - (cx[:, None] - size // 2)
    inside = ((ys >= 0) & (ys < size))[:, :, None] & ((xs >= 0) & (xs < size))[:, None, :]
    return images.masked_fill(inside[:, None], 0.0)


def random_jitter(
    images: torch.Tensor, amount: float, generator: torch.Generator, rows: Rows | None = None
) -> torch.Tensor:
    """Brightness, contrast and (3 channels) saturation jitter on B×C×H×W floats in [0, 1]."""
    n = _draw_count(images, rows)

    def factors() -> torch.Tensor:
        f = 1 + (_mine(torch.rand(n, generator=generator), rows) * 2 - 1) * amount
        return f.to(images.device)[:, None, None, None]

    x = images * factors()
    gray = x.mean(dim=1, keepdim=True) if x.shape[1] == 3 else x
    x = (x - gray.mean(dim=(2, 3), keepdim=True)) * factors() + gray.mean(dim=(2, 3), keepdim=True)
    if x.shape[1] == 3:
        gray = x.mean(dim=1, keepdim=True)
        x = (x - gray) * factors() + gray
    return x.clamp(0.0, 1.0)


def rotate_batch(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate image i of a B×C×H×W batch about its centre by ``degrees[i]``, counter-clockwise as
    displayed (row 0 at the top), so +90 equals ``torch.rot90(image, 1, dims=(-2, -1))``.

    One `F.affine_grid` + `F.grid_sample` for the whole batch on its device: bilinear, zero padding
    (corners brought in from outside the image are 0, i.e. black before normalisation),
    ``align_corners=False`` so the centre of rotation is the image centre. Float batches keep their
    dtype; integer (uint8) batches are computed in float32 and rounded and clamped back.
    """
    b, _, h, w = images.shape
    if degrees.shape != (b,):
        raise ValueError(f"rotate_batch needs one angle per image: {b} images, angles {tuple(degrees.shape)}")
    floating = images.is_floating_point()
    x = images if floating else images.to(torch.float32)
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    theta = torch.deg2rad(degrees.to(device=x.device, dtype=torch.float64))
    cos, sin = torch.cos(theta), torch.sin(theta)
    # The output pixel at normalised (u, v) (u right, v down; pixel units are w/2 and h/2 per unit)
    # reads the input at the inverse rotation of that point; for a counter-clockwise turn as
    # displayed (v pointing down) that is [[cos, -sin], [sin, cos]] in pixel units.
    matrix = torch.zeros(b, 2, 3, dtype=torch.float64, device=x.device)
    matrix[:, 0, 0] = cos
    matrix[:, 0, 1] = -sin * (h / w)
    matrix[:, 1, 0] = sin * (w / h)
    matrix[:, 1, 1] = cos
    grid = F.affine_grid(matrix.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if floating:
        return out.to(images.dtype)
    info = torch.iinfo(images.dtype)
    return out.round().clamp(info.min, info.max).to(images.dtype)


def rotation_angles(n: int, degrees: float, generator: torch.Generator) -> torch.Tensor:
    """`n` angles drawn uniformly from [-degrees, +degrees] (float32, CPU) with `generator`."""
    return (torch.rand(n, generator=generator) * 2 - 1) * degrees


def random_rotate(
    images: torch.Tensor, degrees: float, generator: torch.Generator, rows: Rows | None = None
) -> torch.Tensor:
    """Rotate each image by its own angle from [-degrees, +degrees]; see `rotate_batch`.

    Draws exactly `len(images)` numbers (`rows.total` with `rows`) from `generator` (on the CPU,
    like the other parts), so a run that resumes its loader's generator state gets the same angles.
    """
    angles = rotation_angles(_draw_count(images, rows), degrees, generator)
    return rotate_batch(images, _mine(angles, rows))


class Loader:
    """Batches from uint8 images kept on `device`; augmentation runs on whole batches there.

    Yields ``(x, y)``: x float32 B×C×H×W normalised with `mean`/`std`, y int64 B. All randomness
    (order, crops, flips, …) comes from one CPU `torch.Generator` seeded with `seed`, so two
    loaders built alike yield identical batches, epoch after epoch.

    Augmentation order: crop on the uint8 batch; then, as float32 in 0..255 units (before
    normalisation), flip, rotate (zero = black fill) and jitter; normalisation; cutout last (its
    zero is the dataset mean). A part that is off draws nothing from the generator.

    Sharded (`world_size` > 1, one loader per process of `torch.distributed`): `batch_size` is the
    global batch. Every rank draws the same order from the same seed and cuts the same global
    batches; rank `rank` yields its contiguous share of each (`distributed.shard`: disjoint, all
    shares together the global batch, sizes differing by at most one), augmented with the random
    numbers one process would have drawn for those images. A shuffled (training) loader drops a
    last global batch smaller than `world_size`, so every rank takes the same number of steps; an
    unshuffled (evaluation) loader keeps every image and skips a rank's empty share.
    """

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: Augmentation | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size <= 0:
            raise CompresskitError(f"--batch-size {batch_size} must be a positive integer.")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.batch_size = batch_size
        self.augment = augment or Augmentation()
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.generator = torch.Generator().manual_seed(seed)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255.0

    def __len__(self) -> int:
        """Steps per epoch: global batches (the same number on every rank)."""
        return len(self.global_batch_sizes())

    def global_batch_sizes(self) -> list[int]:
        """The size of every global batch of an epoch, over all ranks (see the class notes)."""
        n, b = len(self.labels), self.batch_size
        sizes = [b] * (n // b) + ([n % b] if n % b and not self.drop_last else [])
        if self.world_size > 1 and self.shuffle and sizes and sizes[-1] < self.world_size:
            sizes.pop()
        return sizes

    @property
    def num_samples(self) -> int:
        """Images in the whole split (all ranks together)."""
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        start = 0
        for size in self.global_batch_sizes():
            idx = order[start : start + size]
            start += size
            if self.world_size == 1:
                yield self._prepare(self.images[idx]), self.labels[idx]
                continue
            mine = shard(size, self.rank, self.world_size)
            x = self._prepare(self.images[idx[mine]], Rows(mine.start, mine.stop, size))
            if len(x):
                yield x, self.labels[idx[mine]]

    def _prepare(self, images: torch.Tensor, rows: Rows | None = None) -> torch.Tensor:
        aug, g = self.augment, self.generator
        if aug.crop_padding:
            images = random_crop(images, aug.crop_padding, g, rows)
        x = images.float()
        if aug.flip:
            x = random_flip(x, g, rows)
        if aug.rotate:
            x = random_rotate(x, aug.rotate, g, rows)
        if aug.jitter:
            x = random_jitter(x / 255.0, aug.jitter, g, rows) * 255.0
        x = (x - self.mean) / self.std
        if aug.cutout:
            x = random_cutout(x, aug.cutout, g, rows)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
