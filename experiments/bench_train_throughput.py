"""One training epoch, same model and recipe, fed two ways; prints images/s of each and the ratio.

* compresskit: `compresskit.data.Loader` — uint8 images on the model's device, crop/flip/normalise
  on whole batches.
* textbook: a torch `Dataset` that returns PIL images exactly like
  `torchvision.datasets.CIFAR10.__getitem__` (that class itself refuses the JPEG-derived copy,
  whose md5 differs from the official files), with torchvision transforms RandomCrop(32, padding=4),
  RandomHorizontalFlip, ToTensor, Normalize, through `DataLoader(num_workers=2, shuffle=True)`.

Both sides train vgg11_bn with SGD (lr 0.05, momentum 0.9, Nesterov, wd 5e-4) at batch 128, from
the same initial weights. Usage:

    python experiments/bench_train_throughput.py --data-dir data --widths 1.0,0.25 \
        --images 10000,50000 [--device cuda]

`--images` caps the epoch per width (one value, or one per width), so that a full-width epoch fits
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
from compresskit.train import TrainConfig, make_optimizer


class PILImages(Dataset):
    """HWC uint8 array + labels → (transform(PIL image), label), as torchvision's CIFAR10 does."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def train_epoch(model, optimizer, batches, device: torch.device) -> tuple[int, float]:
    """Train over `batches`; returns (images seen, seconds) including data loading time."""
    model.train()
    seen = 0
    start = time.perf_counter()
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen, time.perf_counter() - start


def warm_up(width: float, batches, device: torch.device, steps: int = 5) -> None:
    """A few untimed steps, so one-time costs (allocator, kernel selection, worker start-up of a
    first iterator) land on neither side's clock."""
    model, optimizer = fresh_model(width, device)
    train_epoch(model, optimizer, (b for _, b in zip(range(steps), batches, strict=False)), device)


def fresh_model(width: float, device: torch.device):
    model = build_model(make_spec("vgg11_bn", 10, width=width), seed=0).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    cfg = TrainConfig(lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, make_optimizer(model.parameters(), cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--widths", default="1.0,0.25")
    parser.add_argument("--images", default="50000", help="images per epoch, one or one per width")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    widths = [float(w) for w in args.widths.split(",")]
    caps = [int(n) for n in args.images.split(",")]
    caps = caps * len(widths) if len(caps) == 1 else caps
    data = load_dataset("cifar10", args.data_dir, download=False)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"batch {args.batch_size}, DataLoader workers {args.workers}"
    )
    print(f"{'width':>5} {'images':>6} {'compresskit img/s':>18} {'textbook img/s':>15} {'ratio':>6}")
    for width, cap in zip(widths, caps, strict=True):
        split = ImageSplit(data.train.images[:cap], data.train.labels[:cap])

        loader = Loader(
            split, args.batch_size, mean=data.mean, std=data.std,
            augment=Augmentation(crop_padding=4, flip=True), shuffle=True, seed=0, device=device,
        )  # fmt: skip
        warm_up(width, loader, device)
        model, optimizer = fresh_model(width, device)
        n_ck, t_ck = train_epoch(model, optimizer, loader, device)

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
        warm_up(width, textbook, device)
        model, optimizer = fresh_model(width, device)
        n_tb, t_tb = train_epoch(model, optimizer, textbook, device)

        rate_ck, rate_tb = n_ck / t_ck, n_tb / t_tb
        print(
            f"{width:>5g} {n_ck:>6} {rate_ck:>18.1f} {rate_tb:>15.1f} {rate_ck / rate_tb:>5.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
