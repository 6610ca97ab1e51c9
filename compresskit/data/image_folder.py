"""Image folders (``--dataset folder:PATH``) decoded with Pillow into uint8 tensors.

Layout: ``PATH/train/CLASS/…`` and ``PATH/test/CLASS/…``, one subfolder per class, and optionally
``PATH/val/CLASS/…``, a validation split used instead of one held out of train.

* **Classes** are the sorted names of ``train/``'s subfolders (hidden ones, starting with ".", are
  ignored); ``test/`` and ``val/`` must have exactly the same set. Label i is the i-th name.
* **Images** are the files under a class folder, at any depth and in sorted path order, whose
  extension is one of `IMAGE_EXTENSIONS` (PNG, JPEG, BMP, GIF, TIFF, WebP, PNM); other and hidden
  files are ignored. They are decoded only by the Pillow plugins of those formats (`FORMATS`), so
  a renamed EPS or other file that Pillow would hand to an external program is refused as not an
  image. A file that cannot be decoded is an error naming it; nothing is skipped.
* **Pixels.** Every image is converted to RGB (a grayscale folder too: three equal channels, so the
  channel count never depends on which files a folder happens to hold; alpha is dropped) and
  resized, not cropped, to S×S (``--image-size``) with Pillow's bilinear filter, which antialiases
  when it shrinks; a non-square image is stretched.
* **Memory.** All splits together (N × 3 × S × S bytes) must fit the memory budget (a quarter of
  the RAM, `analysis.memory.default_memory_budget`); a larger set is refused before decoding.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compresskit.data.dataset import ImageDataset, ImageSplit, channel_stats
from compresskit.data.registry import FOLDER_PREFIX
from compresskit.errors import CompresskitError, ParameterError

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
)  # fmt: skip
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
_CHUNK = 256  # images per task of the decoding pool


@dataclass
class FolderSplit:
    """One split of an image folder: `images` uint8 N×3×S×S, `labels` int64 N, `files` N paths."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[Path]


@dataclass
class FolderImages:
    """Everything an image folder holds: its classes and the train, test and (optional) val split."""

    root: Path
    classes: list[str]
    train: FolderSplit
    test: FolderSplit
    val: FolderSplit | None


def load_folder_dataset(name: str, data_dir: str | Path | None, image_size: int) -> ImageDataset:
    """``folder:PATH`` (`data_dir`, when given, replaces PATH: a moved copy) as an `ImageDataset`
    named by the absolute PATH, so a run reloads it from any working directory; its ``val/``
    split, when present, becomes `ImageDataset.val`. Channel statistics come from ``train/``."""
    found = load_image_folder(folder_root(name, data_dir), image_size)
    train = ImageSplit(found.train.images, found.train.labels)
    val = None if found.val is None else ImageSplit(found.val.images, found.val.labels)
    test = ImageSplit(found.test.images, found.test.labels)
    mean, std = channel_stats(train.images)
    label = f"{FOLDER_PREFIX}{found.root.resolve()}"
    return ImageDataset(label, train, test, found.classes, mean, std, val=val)


def folder_root(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder of ``folder:PATH`` (`data_dir` replaces PATH when given)."""
    text = name[len(FOLDER_PREFIX) :]
    if not text:
        raise ParameterError(
            "{0} folder: needs a path, e.g. folder:/data/flowers holding train/CLASS/… and test/CLASS/….",
            "dataset",
        )
    return Path(data_dir) if data_dir is not None else Path(text).expanduser()


def memory_budget() -> int:
    """Bytes the decoded images may take: the project's default budget (a quarter of the RAM)."""
    from compresskit.analysis.memory import default_memory_budget  # lazily: its package loads sklearn

    return default_memory_budget()


def check_fits_memory(count: int, channels: int, size: int, where: str) -> None:
    """Refuse `count` uint8 images of `channels`×`size`×`size` that exceed `memory_budget()`."""
    needed, budget = count * channels * size * size, memory_budget()
    if needed > budget:
        raise ParameterError(
            f"{where} holds {count:,} images that take {needed / 2**30:.3g} GiB as uint8 "
            f"{channels}×{size}×{size} tensors, more than the memory budget of {budget / 2**30:.3g} GiB "
            "(a quarter of the RAM); use a smaller {0} or fewer images.",
            "image_size",
        )


def load_image_folder(root: str | Path, image_size: int, *, workers: int | None = None) -> FolderImages:
    """Decode the image folder `root` (layout and conventions in the module docstring) into uint8
    N×3×`image_size`×`image_size` tensors, with `workers` threads (default: up to 8)."""
    root = Path(root)
    where = f"image folder {root}"
    if not root.is_dir():
        raise CompresskitError(f"{where}: {root} is not a directory.")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise CompresskitError(
                f"{where} has no {split}/ folder; expected PATH/train/CLASS/…, PATH/test/CLASS/… "
                "(and optionally PATH/val/CLASS/…), one subfolder per class."
            )
    classes = _class_names(root / "train")
    if len(classes) < 2:
        raise CompresskitError(f"{where}: {root / 'train'} needs at least two class subfolders.")
    present = [s for s in SPLITS if (root / s).is_dir()]
    for split in present:
        names = _class_names(root / split)
        if names != classes:
            missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
            raise CompresskitError(
                f"{where}: {root / split} must have the class folders of train/ "
                f"(missing: {', '.join(missing) or 'none'}; not in train/: {', '.join(extra) or 'none'})."
            )
    listed = {s: _list_images(root / s, classes, where, every_class=s == "train") for s in present}
    check_fits_memory(sum(len(files) for files, _ in listed.values()), 3, image_size, where)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        splits = {s: _decode_split(files, labels, image_size, pool) for s, (files, labels) in listed.items()}
    return FolderImages(root, classes, splits["train"], splits["test"], splits.get("val"))


def _class_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_images(
    folder: Path, classes: list[str], where: str, *, every_class: bool
) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for label, name in enumerate(classes):
        base = folder / name
        found = sorted(
            p
            for p in base.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(base).parts)
            and p.is_file()
        )
        if every_class and not found:
            raise CompresskitError(
                f"{where}: {folder / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})."
            )
        files += found
        labels += [label] * len(found)
    if not files:
        raise CompresskitError(f"{where}: {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return files, labels


def _decode_split(files: list[Path], labels: list[int], size: int, pool: ThreadPoolExecutor) -> FolderSplit:
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    out = images.numpy()
    futures = [
        pool.submit(_decode_chunk, files, start, min(start + _CHUNK, len(files)), size, out)
        for start in range(0, len(files), _CHUNK)
    ]
    try:
        for future in futures:  # in order: the first bad file in path order is the one reported
            future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return FolderSplit(images, torch.tensor(labels, dtype=torch.int64), list(files))


def _decode_chunk(files: list[Path], start: int, stop: int, size: int, out: np.ndarray) -> None:
    for i in range(start, stop):
        out[i] = decode_image(files[i], size)


def _formats() -> tuple[str, ...]:
    """The `FORMATS` this Pillow build decodes (never all of Pillow's: some run programs)."""
    Image.init()  # registers every plugin once; later calls return at once
    return tuple(f for f in FORMATS if f in Image.OPEN)


def decode_image(path: Path, size: int) -> np.ndarray:
    """The image at `path` as uint8 3×`size`×`size` (RGB, bilinear resize); a `CompresskitError`
    naming the file when Pillow cannot decode it as one of `FORMATS`."""
    try:
        with Image.open(path, formats=_formats()) as image:
            rgb = image.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb).transpose(2, 0, 1)
    except Exception as exc:  # whatever the decoder raises, the file is the thing to fix
        raise CompresskitError(
            f"{path} could not be read as an image ({type(exc).__name__}: {exc}); "
            "replace or remove that file (compresskit does not skip images)."
        ) from None
