"""The ``separation`` importance of a `ConvNet`: a channel (or an mlp head's hidden unit) matters as
much as it separates the classes on its own, by the Fisher ratio of its activated output on
calibration batches (`fisher_ratio`, which the any-model path's `prune_any.GraphSeparationImportance`
shares). Registered in `compresskit.compress.importance`; `prune.ChannelPruner` refreshes it before
each step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from compresskit.errors import ParameterError
from compresskit.models import ConvNet

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def channel_outputs(model: ConvNet) -> dict[nn.Module, nn.Module]:
    """Each conv layer (in order) → the module whose output is that conv's activated output: its
    conv block ``Sequential(conv, [bn], relu)`` (`ConvNet.named_blocks` kind ``block``)."""
    return {block.layer: block.module for block in model.named_blocks("block")}


def unit_outputs(model: ConvNet) -> dict[nn.Module, nn.Module]:
    """Each hidden linear layer of the head (every fc block but the output layer, `prune.output_layer`)
    → the module whose output is that layer's activated output: the `nn.ReLU` right after it in the
    head when there is one (an mlp head's ``Linear → ReLU``), else the linear layer itself."""
    head = list(model.head)
    found: dict[nn.Module, nn.Module] = {}
    for fc in model.named_blocks("fc")[:-1]:
        position = head.index(fc.module)
        after = head[position + 1] if position + 1 < len(head) else None
        found[fc.module] = after if isinstance(after, nn.ReLU) else fc.module
    return found


def fisher_ratio(pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-channel class separation of pooled activations n×C (labels n): between-class variance
    of the channel's value divided by its within-class variance (both population variances, so
    they sum to the total variance). A constant channel scores 0. Returns C float64."""
    x = pooled.double()
    classes, index = torch.unique(labels, return_inverse=True)
    counts = torch.bincount(index, minlength=len(classes)).double()
    sums = torch.zeros(len(classes), x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, index, x)
    class_means = sums / counts[:, None]
    mean = x.mean(0)
    between = (counts[:, None] * (class_means - mean) ** 2).sum(0) / len(x)
    within = ((x - class_means[index]) ** 2).mean(0)
    total = between + within
    return torch.where(total > 0, between / (within + 1e-12 * total + 1e-30), torch.zeros_like(total))


class SeparationImportance(tp.importance.Importance):
    """A channel matters as much as it separates the classes on its own.

    For conv channel c: take the channel's activated output (after its batch norm and ReLU),
    average it over the spatial positions (one number per image), and score the channel by the
    Fisher ratio of that number over the calibration images: between-class variance / within-class
    variance (`fisher_ratio`). A hidden unit of an mlp head (the ``Linear → ReLU`` before the output
    layer) is scored the same way by its post-ReLU activation, one number per image already
    (`unit_outputs`). A channel or unit whose value moves with the label scores high; one that is
    noise, or dead, scores near 0 and is removed first. Call `refresh(model)` before each pruning
    step (channels and weights change); the torch-pruning pruner then asks for each group's scores.
    """

    def __init__(self, batches: Batches) -> None:
        if not batches:
            raise ParameterError("{0} separation needs calibration data; none was given.", "importance")
        self.batches = batches
        self.scores: dict[nn.Module, torch.Tensor] = {}

    @torch.no_grad()
    def refresh(self, model: ConvNet) -> None:
        """Recompute every conv channel's and hidden unit's Fisher ratio on the calibration batches
        (one forward pass over them, the model in eval mode and left in the mode it was in)."""
        outputs: dict[nn.Module, nn.Module] = {**channel_outputs(model), **unit_outputs(model)}
        pooled: dict[nn.Module, list[torch.Tensor]] = {layer: [] for layer in outputs}

        def record(layer: nn.Module, out: torch.Tensor) -> None:
            # n×C×H×W → n×C by a spatial mean; n×units is already one number per unit. The copy
            # matters: an in-place ReLU after a hooked linear layer would overwrite its output.
            values = out.detach().flatten(2).mean(2) if out.dim() > 2 else out.detach().clone()
            pooled[layer].append(values.cpu())

        hooks = [
            holder.register_forward_hook(lambda module, inputs, out, layer=layer: record(layer, out))
            for layer, holder in outputs.items()
        ]
        was_training = model.training
        model.eval()
        try:
            labels = []
            for x, y in self.batches:
                model(x)
                labels.append(y.cpu())
        finally:
            for hook in hooks:
                hook.remove()
            model.train(was_training)
        y = torch.cat(labels)
        self.scores = {layer: fisher_ratio(torch.cat(values), y) for layer, values in pooled.items()}

    def __call__(self, group) -> torch.Tensor | None:
        for dep, idxs in group:
            if (
                dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
                and dep.target.module in self.scores
            ):
                return self.scores[dep.target.module][list(idxs)].float()
        return None
