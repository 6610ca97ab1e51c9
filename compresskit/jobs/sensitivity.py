"""The sensitivity job: prune each conv layer alone at each ratio, no fine-tuning, and measure
test accuracy, into ``RUN/sensitivity/`` (replaced as a whole, only when it is sensitivity's own
earlier output).

A compresskit ConvNet is pruned one conv block at a time (``block1`` …), as `prune.prune_copy`
prunes it. Any other model (``train --model torchvision:NAME``, ``import``, a ConvNet compressed by
the any-model path) is pruned one channel group of torch-pruning's dependency graph at a time
(`compress.sensitivity_any`), each row named by the group's first layer; a residual stream's group
holds every conv writing into it, so the table says how many layers each row prunes (``layers``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from compresskit.checkpoint import Checkpoint
from compresskit.compress.importance import importance_names
from compresskit.compress.prune import PruneConfig, prune_copy
from compresskit.compress.sensitivity_any import channel_groups, output_width, prune_group
from compresskit.data import balanced_loader
from compresskit.errors import CompresskitError, ParameterError
from compresskit.jobs.anymodel import checkpoint_input_shape, is_convnet, model_name
from compresskit.jobs.common import open_checkpoint
from compresskit.plots import plot_sensitivity
from compresskit.progress import Progress
from compresskit.rundir import check_derived_folder, staged_output
from compresskit.train import evaluate, resolve_device, resolve_precision

FOLDER = "sensitivity"


def sensitivity_run(
    checkpoint: str | Path,
    ratios: Sequence[float],
    *,
    importance: str = "l1",
    samples: int | None = None,
    data_dir: str | None = None,
    download: bool = True,
    batch_size: int = 256,
    device: str = "auto",
    progress: Progress | None = None,
) -> dict:
    """Prune each conv layer (any other model: each channel group) of `checkpoint` alone by each of
    `ratios` and measure test accuracy.

    Writes ``sensitivity.csv`` (layer, ratio, channels_kept, channels, test_acc, acc_drop, layers:
    the conv and linear layers whose output channels the row prunes, 1 for a ConvNet block) and
    ``sensitivity.png`` into ``RUN/sensitivity/``. `samples` limits the test images
    (class-balanced).
    """
    progress = progress or Progress(enabled=False)
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise CompresskitError(f"--ratios {list(ratios)}: every ratio must be strictly between 0 and 1.")
    PruneConfig(importance=importance).validate()
    allowed = importance_names(needs_calibration=False)
    if importance not in allowed:
        named = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        message = f"{{0}} {importance} needs calibration data; sensitivity uses {named}."
        raise ParameterError(message, "importance")
    if batch_size <= 0:
        raise CompresskitError(f"--batch-size {batch_size} must be a positive integer.")
    ckpt, config, data = open_checkpoint(checkpoint, data_dir, download=download)
    folder = ckpt.path.parent / FOLDER
    check_derived_folder(folder, "sensitivity")
    torch_device = resolve_device(device)
    loader = balanced_loader(
        data.test,
        samples or None,  # 0 or None: every test image
        0,
        batch_size=batch_size,
        mean=tuple(config.data.mean),
        std=tuple(config.data.std),
        device=torch_device,
    )
    model = ckpt.build(torch_device)
    precision = resolve_precision(str(config.train.get("precision", "auto")), torch_device)
    _, base_acc = evaluate(model, loader, torch_device, precision=precision)

    def accuracy(pruned: nn.Module) -> float:
        return evaluate(pruned, loader, torch_device, precision=precision)[1]

    if is_convnet(ckpt):
        rows = _convnet_rows(model, ckpt, ratios, importance, accuracy, progress)
    else:
        example = torch.zeros(1, *checkpoint_input_shape(ckpt), device=torch_device)
        rows = _group_rows(model, example, ratios, importance, accuracy, progress)
    table = pd.DataFrame(rows)
    table["acc_drop"] = base_acc - table["test_acc"]
    table = table[["layer", "ratio", "channels_kept", "channels", "test_acc", "acc_drop", "layers"]]
    with staged_output(folder, "sensitivity") as stage:
        table.to_csv(stage / "sensitivity.csv", index=False)
        what = "one layer" if is_convnet(ckpt) else "one channel group"
        title = f"{model_name(ckpt)}: {what} pruned"
        plot_sensitivity(table, base_acc, stage / "sensitivity.png", title=title)
    files = [str(folder / n) for n in ("sensitivity.csv", "sensitivity.png")]
    return {"table": table, "base_acc": base_acc, "files": files, "checkpoint": str(ckpt.path)}


def _convnet_rows(
    model: nn.Module,
    ckpt: Checkpoint,
    ratios: Sequence[float],
    importance: str,
    accuracy: Callable[[nn.Module], float],
    progress: Progress,
) -> list[dict]:
    """One row per conv block and ratio: the block's channels pruned (`prune_copy`), the head kept."""
    assert ckpt.spec is not None
    convs = len(ckpt.spec.conv_widths)
    rows = []
    with progress.task("layers × ratios", total=convs * len(ratios)) as advance:
        for layer in range(convs):
            for ratio in ratios:
                layer_ratios = [ratio if i == layer else 0.0 for i in range(convs)]
                pruned, spec = prune_copy(
                    model,
                    ckpt.spec,
                    PruneConfig(importance=importance),
                    layer_ratios=layer_ratios,
                    prune_head=False,
                )
                rows.append(
                    {
                        "layer": f"block{layer + 1}",
                        "ratio": ratio,
                        "channels_kept": spec.conv_widths[layer],
                        "channels": ckpt.spec.conv_widths[layer],
                        "test_acc": accuracy(pruned),
                        "layers": 1,
                    }
                )
                advance()
    return rows


def _group_rows(
    model: nn.Module,
    example: torch.Tensor,
    ratios: Sequence[float],
    importance: str,
    accuracy: Callable[[nn.Module], float],
    progress: Progress,
) -> list[dict]:
    """One row per channel group and ratio: the group pruned alone (`sensitivity_any.prune_group`),
    the output layer and every other group kept."""
    groups = channel_groups(model, example)
    if not groups:
        raise CompresskitError(
            "sensitivity found nothing to prune: every channel group holds the output layer."
        )
    rows = []
    with progress.task("groups × ratios", total=len(groups) * len(ratios)) as advance:
        for group in groups:
            for ratio in ratios:
                pruned = prune_group(model, example, group, ratio, importance)
                rows.append(
                    {
                        "layer": group.name,
                        "ratio": ratio,
                        "channels_kept": output_width(pruned, group.name),
                        "channels": group.channels,
                        "test_acc": accuracy(pruned),
                        "layers": len(group.layers),
                    }
                )
                advance()
    return rows
