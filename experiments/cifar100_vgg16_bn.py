"""The VGG16-BN CIFAR-100 study in one command: train with global average pooling, weight decay
and dropout, then evaluate (top-1, top-5, per-class recall, the 100-class confusion figure and the
most-confused pairs).

The study trains 200 epochs; this script's default is the same recipe scaled to a 2-core CPU:
vgg16_bn at ``--width`` 0.25 with ``--global-pool``, an mlp head with dropout 0.5 before its last
linear layer, SGD (Nesterov momentum 0.9, weight decay 5e-4), one-cycle peak lr 0.1, batch 128,
crop + flip, ``--epochs`` 30, with ``--track-test`` for the per-epoch test loss. The run is a
live run directory: calling the script again resumes a stopped run and skips a finished one.
Usage (CIFAR-100 from ../shared/data/cifar100/make_cifar100.py):

    python experiments/cifar100_vgg16_bn.py --data-dir data --out results/cifar100-vgg16_bn-w0.25
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plan import compresskit, start_or_resume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--width", default="0.25")
    parser.add_argument("--epochs", default="30")
    parser.add_argument("--labels", default="fine", help="fine (100 classes) or coarse (20 superclasses)")
    parser.add_argument("--out", default="results/cifar100-vgg16_bn-w0.25")
    args = parser.parse_args()
    run = Path(args.out)
    data = ["--data-dir", args.data_dir, "--no-download"]
    flags = ["--dataset", "cifar100", "--labels", args.labels, *data, "--model", "vgg16_bn",
             "--width", args.width, "--global-pool", "--head", "mlp", "--dropout", "0.5",
             "--optimizer", "sgd", "--momentum", "0.9",
             "--weight-decay", "5e-4", "--schedule", "onecycle", "--lr", "0.1", "--batch-size", "128",
             "--augment", "crop=4,flip", "--epochs", args.epochs, "--seed", "0", "--track-test"]  # fmt: skip
    start_or_resume(run, "train", flags, data)
    if not (run / "evaluation").is_dir():
        compresskit("evaluate", "--checkpoint", str(run), *data)
    summary = json.loads((run / "summary.json").read_text())
    print(f"{run}: test top-1 {summary['test_acc']:.4f}, {summary['epochs_run']} epochs, "
          f"{summary['train_seconds'] / 60:.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
