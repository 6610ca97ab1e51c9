"""One training epoch, same model and recipe, run two ways; prints images/s of each and the ratio.

* compresskit's default: `compresskit.data.Loader` — uint8 images on the model's device,
  crop/flip/normalise on whole batches — and ``--precision auto`` (`train.resolve_precision`:
  channels_last, plus bf16 autocast on CUDA or a CPU with native bf16).
* textbook: fp32, NCHW, and a torch `Dataset` that returns PIL images exactly like
  `torchvision.datasets.CIFAR10.__getitem__` (that class itself refuses the JPEG-derived copy,
  whose md5 differs from the official files), with torchvision transforms RandomCrop(32, padding=4),
  RandomHorizontalFlip, ToTensor, Normalize, through `DataLoader(num_workers=2, shuffle=True)`.

Both sides train the same model with SGD (lr 0.05, momentum 0.9, Nesterov, wd 5e-4) at batch 128,
from the same initial weights. Usage:

    python experiments/bench_train_throughput.py --data-dir data --models vgg11_bn:0.25,vgg16_bn:1.0 \
        --images 20000,3000 [--device cuda]

`--images` caps the epoch per model (one value, or one per model), so that a full-width epoch fits
a CPU time budget; the count used is printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from compresskit.data import Augmentation, ImageSplit, Loader, load_dataset
from compresskit.models import build_model, make_spec
from compresskit.train import Precision, TrainConfig, as_input, make_optimizer, resolve_precision


class PILImages(Dataset):
    """HWC uint8 array + labels → (transform(PIL image), label), as torchvision's CIFAR10 does."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


TEXTBOOK = Precision("fp32", channels_last=False)


def train_epoch(model, optimizer, batches, device: torch.device, precision: Precision) -> tuple[int, float]:
    """Train over `batches`; returns (images seen, seconds) including data loading time."""
    model.train()
    seen = 0
    start = time.perf_counter()
    for x, y in batches:
        x = as_input(x.to(device, non_blocking=True), precision)
        y = y.to(device, non_blocking=True)
        with precision.autocast(device):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen, time.perf_counter() - start


def warm_up(
    name: str, width: float, batches, device: torch.device, precision: Precision, steps: int = 3
) -> None:
    """A few untimed steps, so one-time costs (allocator, kernel selection, worker start-up of a
    first iterator) land on neither side's clock."""
    model, optimizer = fresh_model(name, width, device, precision)
    first = (b for _, b in zip(range(steps), batches, strict=False))
    train_epoch(model, optimizer, first, device, precision)


def fresh_model(name: str, width: float, device: torch.device, precision: Precision):
    model = build_model(make_spec(name, 10, width=width), seed=0).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = TrainConfig(lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, make_optimizer(model.parameters(), cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--models", default="vgg11_bn:0.25,vgg16_bn:1.0", help="NAME:WIDTH,…")
    parser.add_argument("--images", default="50000", help="images per epoch, one or one per model")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    models = [(name, float(width)) for name, width in (m.split(":") for m in args.models.split(","))]
    caps = [int(n) for n in args.images.split(",")]
    caps = caps * len(models) if len(caps) == 1 else caps
    default = resolve_precision("auto", device)
    data = load_dataset("cifar10", args.data_dir, download=False)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"batch {args.batch_size}, DataLoader workers {args.workers}; compresskit's default precision: "
        f"{default.describe()}, textbook: {TEXTBOOK.describe()}"
    )
    print(f"{'model':<15} {'images':>6} {'compresskit img/s':>18} {'textbook img/s':>15} {'ratio':>6}")
    for (name, width), cap in zip(models, caps, strict=True):
        split = ImageSplit(data.train.images[:cap], data.train.labels[:cap])

        loader = Loader(
            split, args.batch_size, mean=data.mean, std=data.std,
            augment=Augmentation(crop_padding=4, flip=True), shuffle=True, seed=0, device=device,
        )  # fmt: skip
        warm_up(name, width, loader, device, default)
        model, optimizer = fresh_model(name, width, device, default)
        n_ck, t_ck = train_epoch(model, optimizer, loader, device, default)

        transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(data.mean, data.std),
        ])  # fmt: skip
        images_hwc = split.images.permute(0, 2, 3, 1).contiguous().numpy()
        textbook = DataLoader(
            PILImages(images_hwc, split.labels.numpy(), transform),
            batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
            pin_memory=device.type == "cuda",
        )  # fmt: skip
        warm_up(name, width, textbook, device, TEXTBOOK)
        model, optimizer = fresh_model(name, width, device, TEXTBOOK)
        n_tb, t_tb = train_epoch(model, optimizer, textbook, device, TEXTBOOK)

        rate_ck, rate_tb = n_ck / t_ck, n_tb / t_tb
        label = f"{name} w{width:g}"
        print(
            f"{label:<15} {n_ck:>6} {rate_ck:>18.1f} {rate_tb:>15.1f} {rate_ck / rate_tb:>5.2f}x", flush=True
        )


if __name__ == "__main__":
    main()
