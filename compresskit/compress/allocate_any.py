"""Per-group pruning ratios from CSI gains, for any model (`csi_group_ratios`).

The generalisation of `prune.csi_allocation` (which walks a `ConvNet`'s chain of conv blocks):

* A conv layer's *gain* is the CSI of its activated output (where `taps.find_taps` reads it)
  minus the CSI of its input, both on the calibration batches, negative gains counted as 0. In a
  chain this is the block's CSI minus the previous block's, as in `csi_allocation`; in a general
  graph "the previous layer" is whatever the conv reads.
* torch-pruning prunes *groups* (channels tied together, e.g. every conv feeding one residual sum
  shares its output channels), so a ratio belongs to a group: its gain is the largest gain of the
  conv layers whose outputs it prunes. A group without a conv output (an mlp head's hidden layer)
  keeps `ratio`, as `csi_allocation` keeps an mlp head's.
* As there, a group's ratio is ``s · (1 − gain / (2 · max gain))``, capped at 0.95, with the scale s
  found by bisection so that the multiply-accumulates of every conv and linear layer after pruning
  (`MacModel`) equal those of uniform pruning at `ratio`.

CSI is streamed (`analysis.separation.StreamingCenterSeparation`: two passes over the batches, a
k×d float64 sum per layer output and input for k classes and d values per image), so memory grows
with the layers' output sizes, not with the number of calibration images.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from compresskit.analysis.separation import StreamingCenterSeparation
from compresskit.compress.prune import _kept
from compresskit.compress.taps import Batches, Tap, hooked_forward, run_taps
from compresskit.errors import CompresskitError

ROOT_TYPES = [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM]  # MetaPruner's default roots
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
MAX_GROUP_RATIO = 0.95


def prunable_groups(graph, ignored: Sequence[nn.Module]) -> list:
    """The pruning groups `MetaPruner` would visit with `ignored` layers (and their submodules)."""
    expanded = [sub for module in ignored for sub in module.modules()]
    return list(graph.get_all_groups(ignored_layers=expanded, root_module_types=ROOT_TYPES))


def _conv_outputs(group) -> list[nn.Module]:
    """The conv layers whose output channels `group` prunes, in group order, once each."""
    found = [
        dep.target.module
        for dep, _ in group
        if dep.handler == tp.prune_conv_out_channels
        and isinstance(dep.target.module, nn.modules.conv._ConvNd)
    ]
    return list(dict.fromkeys(found))


@dataclass
class MacModel:
    """MACs per image of every conv and linear layer as a function of the groups' pruning ratios.

    `base`: each layer's MACs at full width (conv: output positions · out · in/groups · k_h·k_w; linear:
    output rows · in · out), measured in one forward pass. Pruning a group of C root channels to
    `_kept` (C, r) channels removes the same fraction of every index the group maps onto a layer's
    output or input dimension; a layer's MACs scale with its kept output fraction times its kept
    input fraction (a depthwise conv: the output fraction only, its groups shrink with it).
    """

    base: dict[nn.Module, float]
    sizes: dict[nn.Module, tuple[int, int]]  # (out, in) channels or features
    depthwise: set[nn.Module]
    channels: list[int]  # root channels of each group
    members: list[list[tuple[nn.Module, int, int]]]  # per group: (layer, 0 = out / 1 = in, indices)

    @classmethod
    def measure(cls, model: nn.Module, graph, groups: list, example_inputs) -> MacModel:
        base: dict[nn.Module, float] = defaultdict(float)

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            per_image = output.numel() / max(1, output.shape[0])
            if isinstance(module, nn.Linear):
                base[module] += per_image * module.in_features
            else:
                assert isinstance(module, nn.modules.conv._ConvNd)
                base[module] += (
                    per_image * (module.in_channels // module.groups) * math.prod(module.kernel_size)
                )

        layers = [m for m in model.modules() if isinstance(m, _LAYERS)]
        hooked_forward(model, example_inputs, layers, hook)
        sizes = {
            m: (m.out_features, m.in_features)
            if isinstance(m, nn.Linear)
            else (m.out_channels, m.in_channels)
            for m in layers
        }
        depthwise = {
            m for m in layers if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups == m.in_channels
        }
        members = []
        for group in groups:
            found = []
            for dep, idxs in group:
                layer = dep.target.module
                if layer in sizes and graph.is_out_channel_pruning_fn(dep.handler):
                    found.append((layer, 0, len(idxs)))
                elif layer in sizes and graph.is_in_channel_pruning_fn(dep.handler):
                    found.append((layer, 1, len(idxs)))
            members.append(found)
        return cls(dict(base), sizes, depthwise, [len(g[0].idxs) for g in groups], members)

    def macs(self, ratios: Sequence[float], round_to: int | None = None) -> float:
        """Conv and linear MACs per image after pruning each group by its ratio."""
        removed: dict[tuple[nn.Module, int], float] = defaultdict(float)
        for channels, found, ratio in zip(self.channels, self.members, ratios, strict=True):
            fraction = (channels - _kept(channels, ratio, round_to)) / channels
            for layer, side, count in found:
                removed[layer, side] += fraction * count
        total = 0.0
        for layer, macs in self.base.items():
            out_size, in_size = self.sizes[layer]
            kept_out = max(0.0, 1 - removed[layer, 0] / out_size)
            kept_in = 1.0 if layer in self.depthwise else max(0.0, 1 - removed[layer, 1] / in_size)
            total += macs * kept_out * kept_in
        return total


def csi_gains(
    model: nn.Module, graph, taps: dict[nn.Module, Tap], layers: Sequence[nn.Module], batches: Batches
) -> dict[nn.Module, float]:
    """Each layer's CSI gain: CSI of its activated output minus CSI of its input (≥ 0), streamed
    over `batches` in two passes. Layers reading the same tensor share one input CSI."""
    chosen = [taps[layer] for layer in layers]
    outputs = {tap: StreamingCenterSeparation() for tap in chosen}
    input_of: dict[Tap, tuple] = {}
    for tap in chosen:
        producers = graph.module2node[tap.layer].inputs
        input_of[tap] = tuple(id(n) for n in producers) if producers else ("model input", id(tap.layer))
    readers = {key: next(tap for tap in chosen if input_of[tap] == key) for key in set(input_of.values())}
    inputs = {key: StreamingCenterSeparation() for key in readers}
    first_reader = {tap: key for key, tap in readers.items()}

    for method in ("add", "score"):

        def on_output(tap: Tap, output: torch.Tensor, y: torch.Tensor, method: str = method) -> None:
            getattr(outputs[tap], method)(output.flatten(1), y)

        def on_input(tap: Tap, x: torch.Tensor, y: torch.Tensor, method: str = method) -> None:
            if tap in first_reader:
                getattr(inputs[first_reader[tap]], method)(x.flatten(1), y)

        try:
            run_taps(model, batches, chosen, on_output, on_input=on_input, purpose="allocate='csi'")
        except ValueError as exc:
            raise CompresskitError(
                f"allocate='csi' cannot compute CSI on the calibration batches: {exc}"
            ) from None
    return {tap.layer: max(0.0, outputs[tap].value() - inputs[input_of[tap]].value()) for tap in chosen}


def csi_group_ratios(
    model: nn.Module,
    graph,
    groups: list,
    taps: dict[nn.Module, Tap],
    batches: Batches,
    example_inputs: torch.Tensor | tuple,
    ratio: float,
    round_to: int | None = None,
) -> dict[nn.Module, float]:
    """The pruning ratio of each group (keyed by its root layer, as `MetaPruner`'s
    ``pruning_ratio_dict`` takes it), from CSI gains; see the module docstring."""
    convs = [_conv_outputs(group) for group in groups]
    if not any(convs):
        raise CompresskitError(
            "allocate='csi' ranks conv layers by the class separation they add, and no prunable group "
            "of this model prunes a conv layer's outputs; use the uniform allocation."
        )
    layer_gains = csi_gains(model, graph, taps, [m for found in convs for m in found], batches)
    gains = [max(layer_gains[m] for m in found) if found else None for found in convs]
    top = max(g for g in gains if g is not None)
    weights = [None if g is None else (1.0 - g / (2 * top) if top > 0 else 1.0) for g in gains]
    cost = MacModel.measure(model, graph, groups, example_inputs)
    target = cost.macs([ratio] * len(groups), round_to)

    def ratios(scale: float) -> list[float]:
        return [ratio if w is None else min(MAX_GROUP_RATIO, scale * w) for w in weights]

    low, high = 0.0, 2.0 / min(w for w in weights if w is not None)
    for _ in range(60):
        mid = (low + high) / 2
        if cost.macs(ratios(mid), round_to) > target:
            low = mid
        else:
            high = mid
    return {group[0].dep.target.module: r for group, r in zip(groups, ratios(high), strict=True)}
