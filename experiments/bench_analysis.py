"""CSI of every block output of a VGG16, computed two ways in one run; prints both times and the ratio.

* reference (the reference studies' way): for each layer, a
  `torchvision.models.feature_extraction.create_feature_extractor` returning that layer, one forward
  pass over all images collecting its n×d features, then CSI in memory (class means, distances to
  every centre, argmin) in float64.
* compresskit: `compresskit.analysis` hooks on all layers at once; pass 1 accumulates class sums
  (`StreamingCenterSeparation.add`), pass 2 scores every sample against the centres. Two forward
  passes in all, whatever the number of layers; no n×d matrix is ever held.

Both use the same model (eval mode), the same images and batch size. The script checks that both
give the same CSI for every layer, and reports the peak resident memory above the starting point
during each way (sampled every 5 ms from /proc/self/statm). Usage:

    python experiments/bench_analysis.py [--samples 2000] [--model vgg16_bn] [--checkpoint RUN]
        [--data-dir data]   # real CIFAR-10 test images instead of random CIFAR-shaped ones
        [--compresskit-only]  # only the streaming way (peak memory on a whole 10,000-image test set)
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch
from torchvision.models.feature_extraction import create_feature_extractor

from compresskit.analysis import StreamingCenterSeparation, iterate_layer_outputs, select_layers
from compresskit.checkpoint import load_checkpoint
from compresskit.data import load_dataset
from compresskit.models import build_model, make_spec


class PeakMemory:
    """Highest resident set size (bytes) seen while the block runs, above its value at entry."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.005)

    def __enter__(self) -> PeakMemory:
        self.base, self.peak = self._rss(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def reference_csi(features: torch.Tensor, labels: torch.Tensor) -> float:
    """CSI in memory: features n×d, class means, distance of every sample to every centre."""
    x = features.reshape(len(features), -1).double()
    classes = torch.unique(labels)
    centres = torch.stack([x[labels == c].mean(0) for c in classes])
    nearest = torch.cdist(x, centres).argmin(1)
    return float((classes[nearest] == labels).double().mean())


def batches(images: torch.Tensor, labels: torch.Tensor, size: int):
    for i in range(0, len(images), size):
        yield images[i : i + size], labels[i : i + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--model", default="vgg16_bn")
    parser.add_argument("--checkpoint", default=None, help="trained weights instead of random ones")
    parser.add_argument("--data-dir", default=None, help="use CIFAR-10 test images from this folder")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument(
        "--compresskit-only", action="store_true", help="skip the reference way (memory at n=10000)"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint).build("cpu")
    else:
        model = build_model(make_spec(args.model, 10), seed=0)
    model.eval()
    if args.data_dir:
        data = load_dataset("cifar10", args.data_dir, download=False)
        mean = torch.tensor(data.mean).view(1, 3, 1, 1)
        std = torch.tensor(data.std).view(1, 3, 1, 1)
        images = (data.test.images[: args.samples].float() / 255 - mean) / std
        labels = data.test.labels[: args.samples]
        source = f"the first {len(labels)} CIFAR-10 test images"
    else:
        images = torch.randn(args.samples, 3, 32, 32)
        labels = torch.randint(0, 10, (args.samples,))
        images += labels.view(-1, 1, 1, 1) * 0.1  # a little class signal so CSI is not at chance
        source = f"{args.samples} random CIFAR-shaped images"
    layers = select_layers(model, "blocks")
    print(
        f"{args.model if not args.checkpoint else args.checkpoint}, {len(layers)} layers "
        f"({', '.join(layer.name for layer in layers)}), {source}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    )

    with torch.inference_mode():
        model(images[: args.batch_size])  # warm-up, so neither side pays for first-call allocations
    with PeakMemory() as mem_ours:
        start = time.perf_counter()
        streams = {layer.name: StreamingCenterSeparation() for layer in layers}
        for outputs, y in iterate_layer_outputs(model, batches(images, labels, args.batch_size), layers):
            for name, value in outputs.items():
                streams[name].add(value, y)
        for outputs, y in iterate_layer_outputs(model, batches(images, labels, args.batch_size), layers):
            for name, value in outputs.items():
                streams[name].score(value, y)
        ours = {name: stream.value() for name, stream in streams.items()}
        t_ours = time.perf_counter() - start

    if args.compresskit_only:
        for layer in layers:
            print(f"{layer.name:8s} csi {ours[layer.name]:.4f}")
        print(f"compresskit (hooks, two passes for all layers): {t_ours:8.2f} s, "
              f"peak memory +{mem_ours.peak / 2**20:,.0f} MiB")  # fmt: skip
        return
    with PeakMemory() as mem_ref:
        start = time.perf_counter()
        reference = {}
        for layer in layers:
            extractor = create_feature_extractor(model, return_nodes={layer.path: "out"}).eval()
            with torch.inference_mode():
                chunks = batches(images, labels, args.batch_size)
                features = torch.cat([extractor(x)["out"] for x, _ in chunks])
            reference[layer.name] = reference_csi(features, labels)
            del features
        t_ref = time.perf_counter() - start

    print(f"{'layer':8s} {'csi (reference)':>16s} {'csi (compresskit)':>18s}")
    for layer in layers:
        print(f"{layer.name:8s} {reference[layer.name]:16.4f} {ours[layer.name]:18.4f}")
    mismatches = [name for name in ours if ours[name] != reference[name]]
    verdict = "yes" if not mismatches else "NO, differs on " + ", ".join(mismatches)
    print(f"same CSI on every layer: {verdict}")
    print(f"reference  (one feature-extractor forward per layer): {t_ref:8.2f} s, "
          f"peak memory +{mem_ref.peak / 2**20:,.0f} MiB")  # fmt: skip
    print(f"compresskit (hooks, two passes for all layers):       {t_ours:8.2f} s, "
          f"peak memory +{mem_ours.peak / 2**20:,.0f} MiB")  # fmt: skip
    print(f"speed-up: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
