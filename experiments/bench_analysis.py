"""CSI of every graph node of a VGG16, computed two ways, each side in its own process; prints both
times, the ratio, the largest CSI difference and each side's peak memory.

The node set is the reference studies' own: every node that torchvision's
`torchvision.models.feature_extraction.get_graph_node_names` lists for our `ConvNet` (46 for
vgg16_bn: each conv, batch norm and ReLU, the five max-pools, the flatten and the linear layer),
less the input placeholder ``x``, which is no layer's output. Every one of them is a module of the
ConvNet, so our hooks capture exactly the tensors the studies' extractors return.

* per node (the studies' way): for each node, a
  `torchvision.models.feature_extraction.create_feature_extractor` returning that node, one forward
  pass over all images collecting its n×d features, then CSI in memory (class means, distances to
  every centre, argmin) in float64;
* ours (`compresskit.analysis.layer_csi`): hooks on all nodes at once, one forward pass holding
  every node's features when ``images × Σ dims × 4`` bytes fit ``--memory-budget`` (default a
  quarter of the total memory), two streamed passes beyond it. ``--memory-budget`` may list several
  budgets (``default,8GiB``): ours then runs once per budget, each in its own process, against the
  one per-node run, so held and streamed are measured in the same run.

Both sides see the same model (eval mode), the same images in the same batches (one `Loader`). Each
side runs in a fresh subprocess, so its peak memory is its own: ``ru_maxrss`` at the end (the
process's peak resident set, model, images and Python included) and that peak less the resident set
at the start of the timed part. The parent checks that both ways give the same CSI on every node.

The measurement (2,000 images for both ways, then the whole 10,000-image test set for ours). At
width 1 the 46 nodes hold 861,194 values per image: 6.4 GiB of float32 features for 2,000 images,
32.1 GiB for 10,000. The first command runs ours with the default budget (on a 24 GB machine, 5.9
GiB: it streams) and with one that holds them (one pass); at 10,000 images they cannot be held on
a 24 GB machine, so ours streams (two passes):

    python experiments/bench_analysis.py --images 2000 --data-dir data --memory-budget default,8GiB \
        > results/bench_analysis.txt
    python experiments/bench_analysis.py --images 10000 --data-dir data --ours-only \
        > results/bench_analysis_10k.txt

A quick check that it runs (random CIFAR-shaped images, a narrow model):

    python experiments/bench_analysis.py --images 200 --width 0.125
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from compresskit.analysis import Layer, format_size, layer_csi, parse_size, select_layers
from compresskit.checkpoint import load_checkpoint
from compresskit.data import ImageSplit, Loader, load_dataset
from compresskit.models import ConvNet, build_model, make_spec


def graph_nodes(model: ConvNet) -> list[Layer]:
    """The eval-mode graph nodes of `model` as torchvision lists them, less the input ``x``; each
    must be a module (true of every ConvNet), so a hook can capture it."""
    _, nodes = get_graph_node_names(model)
    modules = dict(model.named_modules())
    missing = [node for node in nodes[1:] if node not in modules]
    if nodes[:1] != ["x"] or missing:
        raise SystemExit(f"graph nodes that are not modules, which hooks cannot capture: {missing}")
    return [Layer(node, node, modules[node]) for node in nodes[1:]]


NODE_SETS = {
    "graph": "graph nodes (get_graph_node_names, less the input)",
    "blocks": "layers analyze uses by default (select_layers 'blocks')",
}


def chosen_layers(model: ConvNet, which: str) -> list[Layer]:
    """``graph``: every graph node (`graph_nodes`); ``blocks``: the layers `analyze` uses by default
    (`select_layers(model, "blocks")`: each conv block's output and each linear layer)."""
    return graph_nodes(model) if which == "graph" else select_layers(model, "blocks")


def output_nodes(model: ConvNet, layers: list[Layer]) -> dict[str, str]:
    """For each layer, the graph node whose value is its module's output: the node of that name,
    or the last node inside it (a block's ReLU)."""
    _, nodes = get_graph_node_names(model)
    found = {}
    for layer in layers:
        inside = [node for node in nodes if node == layer.path or node.startswith(layer.path + ".")]
        if not inside:
            raise SystemExit(f"no graph node computes the output of {layer.path}")
        found[layer.name] = inside[-1]
    return found


def reference_csi(features: torch.Tensor, labels: torch.Tensor) -> float:
    """CSI in memory: features n×d, class means, distance of every sample to every centre."""
    x = features.reshape(len(features), -1).double()
    classes = torch.unique(labels)
    centres = torch.stack([x[labels == c].mean(0) for c in classes])
    nearest = torch.cdist(x, centres).argmin(1)
    return float((classes[nearest] == labels).double().mean())


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def setup(args: argparse.Namespace) -> tuple[ConvNet, Loader, str]:
    """The model (eval mode) and one unshuffled loader over the images, and a line saying which."""
    torch.manual_seed(0)
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint).build("cpu")
    else:
        model = build_model(make_spec(args.model, 10, width=args.width), seed=0)
    model.eval()
    if args.data_dir:
        data = load_dataset("cifar10", args.data_dir, download=False)
        split = ImageSplit(data.test.images[: args.images], data.test.labels[: args.images])
        mean, std = tuple(data.mean), tuple(data.std)
        source = f"the first {len(split.labels)} CIFAR-10 test images"
    else:
        g = torch.Generator().manual_seed(0)
        labels = torch.randint(0, 10, (args.images,), generator=g)
        # a little class signal so CSI is not at chance
        images = torch.rand(args.images, 3, 32, 32, generator=g) * 200 + labels.view(-1, 1, 1, 1) * 5
        split = ImageSplit(images.to(torch.uint8), labels)
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
        source = f"{args.images} random CIFAR-shaped images"
    return model, Loader(split, args.batch_size, mean=mean, std=std), source


def run_side(args: argparse.Namespace) -> None:
    """One way, in this process; prints one JSON line: CSI per node, seconds, memory."""
    model, loader, _ = setup(args)
    nodes = chosen_layers(model, args.nodes)
    returned = output_nodes(model, nodes)  # traced once, outside the timed part
    with torch.inference_mode():
        model(next(iter(loader))[0])  # warm-up, so neither side pays for first-call allocations
    start_rss = rss_bytes()
    start = time.perf_counter()
    record: dict = {}
    if args.side == "ours":
        csi, plan = layer_csi(model, loader, nodes, memory_budget=args.memory_budget[0])
        record["plan"] = plan.describe()
    else:
        csi = {}
        labels = torch.cat([y for _, y in loader])
        for node in nodes:
            extractor = create_feature_extractor(model, return_nodes={returned[node.name]: "out"}).eval()
            with torch.inference_mode():
                features = torch.cat([extractor(x)["out"] for x, _ in loader])
            csi[node.name] = reference_csi(features, labels)
            del features
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    record.update(csi=csi, seconds=seconds, peak_rss=peak, start_rss=start_rss)
    print(json.dumps(record))


def budgets(text: str) -> list[int | None]:
    """``"default,8GiB"`` → [None, 8589934592]: one budget per run of ours (None: the default)."""
    return [None if part.strip() == "default" else parse_size(part) for part in text.split(",")]


def spawn(side: str, argv: list[str], budget: int | None = None) -> dict:
    """Run one side in a fresh process with `budget` (the last --memory-budget given wins)."""
    argv = [*argv, "--memory-budget", "default" if budget is None else str(budget)]
    done = subprocess.run(
        [sys.executable, __file__, "--side", side, *argv], stdout=subprocess.PIPE, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(record: dict) -> str:
    above = max(0, record["peak_rss"] - record["start_rss"])
    return f"peak RSS {format_size(record['peak_rss'])} (+{format_size(above)} over its start)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", "--samples", type=int, default=2000)
    parser.add_argument("--model", default="vgg16_bn")
    parser.add_argument(
        "--nodes",
        choices=("graph", "blocks"),
        default="graph",
        help="graph: every graph node (the studies' set); blocks: the layers analyze uses by default",
    )
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    parser.add_argument("--checkpoint", default=None, help="trained weights instead of random ones")
    parser.add_argument("--data-dir", default=None, help="use CIFAR-10 test images from this folder")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument(
        "--memory-budget",
        type=budgets,
        default=[None],
        help="ours: e.g. 8GiB, or a comma list such as default,8GiB (default: a quarter of RAM)",
    )
    parser.add_argument(
        "--ours-only", "--compresskit-only", action="store_true", help="skip the per-node way"
    )
    parser.add_argument("--side", choices=("ours", "per-node"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args)
        return

    model, loader, source = setup(args)
    nodes = chosen_layers(model, args.nodes)
    argv = [a for a in sys.argv[1:] if a != "--ours-only" and a != "--compresskit-only"]
    name = args.checkpoint or (args.model + (f" width {args.width}" if args.width != 1 else ""))
    print(
        f"{name}, {len(nodes)} {NODE_SETS[args.nodes]}, {source}, "
        f"batch {args.batch_size}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    )
    del model, loader
    ours_runs = [spawn("ours", argv, budget) for budget in args.memory_budget]
    if args.ours_only:
        for ours in ours_runs:
            for node in nodes:
                print(f"{node.name:14s} csi {ours['csi'][node.name]:.4f}")
            print(f"ours (features {ours['plan']}): {ours['seconds']:8.2f} s, {memory(ours)}")
        return
    reference = spawn("per-node", argv)
    print(f"{'node':14s} {'csi (per node)':>15s} " + " ".join(f"{f'csi (ours {i + 1})':>12s}" for i in
          range(len(ours_runs))) + f" {'max |diff|':>10s}")  # fmt: skip
    diffs = []
    for node in nodes:
        a = reference["csi"][node.name]
        theirs = [ours["csi"][node.name] for ours in ours_runs]
        diffs.append(max(abs(a - b) for b in theirs))
        print(f"{node.name:14s} {a:15.4f} " + " ".join(f"{b:12.4f}" for b in theirs) + f" {diffs[-1]:10.1e}")
    print(f"max |CSI difference| over {len(nodes)} nodes: {max(diffs):.1e}"
          f" ({'the same on every node' if max(diffs) <= 1e-6 else 'NOT the same'})")  # fmt: skip
    print(f"per node (one feature-extractor forward per node): {reference['seconds']:8.2f} s, "
          f"{memory(reference)}")  # fmt: skip
    for i, ours in enumerate(ours_runs, 1):
        print(f"ours {i} (hooks on all layers; features {ours['plan']}):")
        print(f"{'':51s}{ours['seconds']:8.2f} s, {memory(ours)}")
        print(f"speed-up of ours {i}: {reference['seconds'] / ours['seconds']:.2f}x")
    if max(diffs) > 1e-6:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
