"""One channel group of any model pruned alone: the any-model side of ``compresskit sensitivity``.

A compresskit `ConvNet` is pruned one conv block at a time (`prune.prune_copy` with one block's
ratio). Any other model is pruned one *channel group* at a time: a group of torch-pruning's
dependency graph (`allocate_any.prunable_groups`), with the output layer, the ignored layers and
every factorized layer's rank left alone exactly as `prune_any.prune_model` leaves them. A group
holds every layer whose output channels must go together: one plain conv, a conv and the depthwise
conv that reads it, or all the convs writing into one residual stream (the stem, each block's last
conv and its downsampling shortcut). It is named by its first such layer in the model's module
order (`ChannelGroup.name`), and pruned by `prune_model` with ``only={name: ratio}``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from compresskit.compress.allocate_any import prunable_groups
from compresskit.compress.prune_any import group_layers, left_alone, prune_model


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable channel group.

    `name`: the module path of its first layer (conv or linear) in module order; `channels`: how
    many output channels that layer has (the group's width); `layers`: the paths of every conv or
    linear layer whose output channels the group prunes, in module order (``layers[0] == name``).
    """

    name: str
    channels: int
    layers: tuple[str, ...]


def channel_groups(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple,
    ignored_layers: Sequence[nn.Module | str] | None = None,
) -> list[ChannelGroup]:
    """Every channel group `prune_model` would prune, ordered by name in module order.

    - example_inputs: one input batch to trace the graph, e.g. ``torch.zeros(1, 3, 32, 32)``.
    - ignored_layers: modules of `model`, or their paths, never pruned (besides the output layer),
      as `prune_model` takes them.

    The graph is traced on a copy, so `model` (its batch norm statistics included) is not changed.
    """
    work = copy.deepcopy(model)
    ignored = left_alone(model, work, ignored_layers, example_inputs)
    graph = tp.DependencyGraph().build_dependency(work, example_inputs=example_inputs)
    order = {module: i for i, module in enumerate(work.modules())}
    paths = {module: path for path, module in work.named_modules()}
    found: list[tuple[int, ChannelGroup]] = []
    for group in prunable_groups(graph, ignored):
        layers = sorted(group_layers(graph, group), key=order.__getitem__)
        if layers:  # else a group rooted elsewhere (an LSTM's), which no conv or linear names
            name = paths[layers[0]]
            entry = ChannelGroup(name, output_width(work, name), tuple(paths[m] for m in layers))
            found.append((order[layers[0]], entry))
    return [group for _, group in sorted(found, key=lambda item: item[0])]


def prune_group(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple,
    group: str | ChannelGroup,
    ratio: float,
    importance: str = "l1",
    *,
    ignored_layers: Sequence[nn.Module | str] | None = None,
    seed: int = 0,
) -> nn.Module:
    """A copy of `model` with one channel group pruned by `ratio` and every other layer as it was.

    - group: a `ChannelGroup` of `channel_groups`, or the path of any layer whose output channels
      the group prunes (e.g. its name).
    - ratio: the fraction of the group's channels removed, in (0, 1).
    - importance: how channels are ranked (`compresskit.compress.importance`); one that needs
      calibration data (taylor, separation) is refused by `prune_model`. A group the importance
      cannot score (bn-scale on a group without batch norm) keeps every channel.
    - ignored_layers, seed: as `prune_model` takes them.
    """
    name = group.name if isinstance(group, ChannelGroup) else group
    return prune_model(
        model,
        example_inputs,
        importance=importance,
        ignored_layers=ignored_layers,
        seed=seed,
        only={name: ratio},
    )


def output_width(model: nn.Module, path: str) -> int:
    """The output channels (conv) or features (linear) of the layer at `path`."""
    layer = model.get_submodule(path)
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)
