"""Training images/s of one process against data-parallel processes, in one run; prints the ratio.

* CPU (default): 1 process × 2 threads, then 2 processes × 1 thread (gloo), as
  ``torchrun --nproc_per_node 2 -m compresskit train`` would run them on a 2-core machine.
* ``--device cuda``: 1 process on one GPU, then one process per GPU (NCCL).

Both train the same model (vgg11_bn at width 0.25 by default) from the same weights with
`compresskit.train.fit` (SGD, batch 128 global, crop+flip on the device), 2 epochs of ``--images``
images each; images/s is the second epoch's (the first warms up). Data: CIFAR-10 when
``--data-dir`` holds ``cifar-10-batches-py``, else random 32×32 RGB images (the speed does not
depend on what the pixels show). Usage:

    python experiments/bench_ddp.py --images 20000 [--data-dir data] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from compresskit import distributed
from compresskit.data import Augmentation, ImageSplit, Loader, load_dataset
from compresskit.models import build_model, make_spec
from compresskit.train import TrainConfig, fit


def images(data_dir: str, count: int) -> tuple[ImageSplit, str]:
    """`count` training images: CIFAR-10's first ones when present, else random ones."""
    if (Path(data_dir) / "cifar-10-batches-py").is_dir():
        train = load_dataset("cifar10", data_dir, download=False).train
        pick = torch.arange(min(count, len(train)))
        return ImageSplit(train.images[pick], train.labels[pick]), "CIFAR-10"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (count, 3, 32, 32), generator=g, dtype=torch.uint8)
    return ImageSplit(x, torch.randint(0, 10, (count,), generator=g)), "random images"


def worker(rank: int, world: int, threads: int, port: int, args: argparse.Namespace, results) -> None:
    """One process of a run: `world` processes, `threads` threads each; rank 0 puts the second
    epoch's images/s into `results`."""
    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    device = torch.device(args.device)
    with distributed.session(device):
        if device.type == "cuda":
            device = torch.device("cuda", distributed.local_rank())
        split, _ = images(args.data_dir, args.images)
        loader = Loader(split, args.batch_size, mean=(0.5,) * 3, std=(0.25,) * 3,
                        augment=Augmentation(crop_padding=4, flip=True), shuffle=True, seed=0, device=device,
                        channels_last=device.type == "cuda", rank=distributed.rank(),
                        world_size=distributed.world_size())  # fmt: skip
        name, width = args.model.split(":")
        model = build_model(make_spec(name, 10, in_channels=3, width=float(width)), seed=0).to(device)
        cfg = TrainConfig(epochs=2, batch_size=args.batch_size, lr=0.05, schedule="none", device=args.device)
        result = fit(model, loader, None, cfg)
        if distributed.is_main():
            seen = sum(loader.global_batch_sizes())
            results.put(seen / result.history[-1]["seconds"])


def measure(world: int, threads: int, args: argparse.Namespace) -> float:
    """Images/s of `world` processes with `threads` threads each (spawned fresh)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(world, threads, port, args, results), nprocs=world, join=True)
    return results.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--model", default="vgg11_bn:0.25", help="NAME:WIDTH")
    parser.add_argument("--images", type=int, default=20000, help="images per epoch")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="CPU: threads of the one process")
    args = parser.parse_args()
    if args.device == "cuda":
        one, many, per = (1, 1), (torch.cuda.device_count(), 1), "GPU"
    else:
        one, many, per = (1, args.threads), (args.threads, 1), "thread"
    _, source = images(args.data_dir, 1)
    print(f"{args.model} on {args.images} {source}, global batch {args.batch_size}, {args.device}")
    start = time.perf_counter()
    single = measure(*one, args)
    print(f"1 process × {one[1]} {per}(s):   {single:8.1f} images/s")
    parallel = measure(*many, args)
    print(f"{many[0]} processes × 1 {per} each: {parallel:8.1f} images/s")
    print(f"ratio (processes / one process): {parallel / single:.2f}  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
