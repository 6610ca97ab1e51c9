"""Datasets as uint8 tensors, the stratified validation split, augmentation and the batched `Loader`.

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

The modules: `registry` (names, flag checks, `load_dataset`), `dataset` (`ImageSplit`,
`ImageDataset`, statistics, resizing), one per source (`cifar` with `safe_pickle`, `mnist`,
`builtin`, `image_folder`), `split` (`stratified_split`, `balanced_subset`), `augment`
(`Augmentation` and its random parts) and `loader` (`Loader`, `balanced_loader`). The names below
are their public interface; a name is defined, and looked up, in its own module.
"""

from compresskit.data.augment import (
    MAX_ROTATION,
    Augmentation,
    Rows,
    default_augmentation,
    random_crop,
    random_cutout,
    random_flip,
    random_jitter,
    random_rotate,
    rotate_batch,
    rotation_angles,
)
from compresskit.data.dataset import IMAGE_SIZE, ImageDataset, ImageSplit, channel_stats
from compresskit.data.loader import Loader, balanced_loader
from compresskit.data.mnist import FASHION_MNIST_CLASSES, read_idx
from compresskit.data.registry import (
    DATASET_NAMES,
    DEFAULT_DATA_DIR,
    FOLDER_PREFIX,
    LABEL_SETS,
    check_dataset,
    check_image_size,
    check_labels,
    load_dataset,
)
from compresskit.data.split import balanced_subset, check_val_fraction, stratified_split

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_DATA_DIR",
    "FASHION_MNIST_CLASSES",
    "FOLDER_PREFIX",
    "IMAGE_SIZE",
    "LABEL_SETS",
    "MAX_ROTATION",
    "Augmentation",
    "ImageDataset",
    "ImageSplit",
    "Loader",
    "Rows",
    "balanced_loader",
    "balanced_subset",
    "channel_stats",
    "check_dataset",
    "check_image_size",
    "check_labels",
    "check_val_fraction",
    "default_augmentation",
    "load_dataset",
    "random_crop",
    "random_cutout",
    "random_flip",
    "random_jitter",
    "random_rotate",
    "read_idx",
    "rotate_batch",
    "rotation_angles",
    "stratified_split",
]
